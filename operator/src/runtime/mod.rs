//! The runtime every controller shares: the reconcile [`Context`], leader election,
//! metrics and health endpoints, conditions, server-side apply, events and shutdown.

pub mod apply;
pub mod backoff;
pub mod conditions;
pub mod controller;
pub mod events;
pub mod http;
pub mod invalid;
pub mod leader;
pub mod metrics;
pub mod status;
pub mod stop;

use std::sync::Arc;

use anyhow::Context as _;
use futures::future::join_all;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

use crate::config::OperatorConfig;
use backoff::Backoff;
use controller::Scope;
use events::EventPublisher;
use http::Readiness;
use leader::{Elector, LeaseTiming, Reign};
use metrics::Metrics;
use stop::{Stop, stop_signal};

/// Name of the leader-election Lease in the operator's namespace.
pub const LEASE_NAME: &str = "llmops-operator-leader";

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub config: Arc<OperatorConfig>,
    pub events: EventPublisher,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    /// What the operator remembers of the serving pods it monitors.
    pub monitor: Arc<crate::controller::deployment::Monitor>,
}

/// Leader election settings: the Lease lives in `namespace`, held as `identity`.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub identity: String,
}

/// Everything `run` needs besides the cluster connection.
pub struct Settings {
    pub config: OperatorConfig,
    pub scope: Scope,
    pub metrics_port: u16,
    /// `None` runs the controllers right away (a single replica).
    pub leader_election: Option<LeaderElection>,
    /// This replica's name (the pod name), reported in Events.
    pub instance: Option<String>,
}

/// The controllers of every kind, started in `scope`.
pub type StartControllers = fn(&Arc<Context>, &Scope, &Stop) -> Vec<controller::ControllerRun>;

/// Run the operator until SIGTERM or SIGINT.
pub async fn run(settings: Settings, start_controllers: StartControllers) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("failed to configure a Kubernetes client (in-cluster or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    let ctx = Arc::new(Context {
        client: client.clone(),
        config: Arc::new(settings.config),
        events: EventPublisher::new(client.clone(), settings.instance),
        metrics: metrics.clone(),
        backoff: Backoff::default(),
        monitor: Arc::default(),
    });
    let listener = http::bind(settings.metrics_port).await?;
    let shutdown = stop::on_termination_signal();
    let server = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    match settings.leader_election {
        None => {
            metrics.set_leader(true);
            lead(
                &ctx,
                &settings.scope,
                &readiness,
                shutdown.clone(),
                start_controllers,
            )
            .await;
        }
        Some(election) => {
            let leases: Api<Lease> = Api::namespaced(client, &election.namespace);
            let elector = Elector::new(
                leases,
                LEASE_NAME,
                &election.identity,
                LeaseTiming::default(),
            );
            lead_while_elected(
                &ctx,
                &settings.scope,
                &readiness,
                &shutdown,
                &elector,
                start_controllers,
            )
            .await;
        }
    }
    server.await.context("the metrics server panicked")?
}

/// Stand by until elected, lead until shutdown or until the Lease is lost, and
/// stand by again after a loss. On shutdown the Lease is released.
async fn lead_while_elected(
    ctx: &Arc<Context>,
    scope: &Scope,
    readiness: &Readiness,
    shutdown: &Stop,
    elector: &Elector,
    start_controllers: StartControllers,
) {
    loop {
        readiness.set(true);
        if !elector.acquire(shutdown).await {
            return;
        }
        ctx.metrics.set_leader(true);
        let (stop_controllers, controllers_stop) = stop_signal();
        let controllers = tokio::spawn(lead(
            ctx,
            scope,
            readiness,
            controllers_stop,
            start_controllers,
        ));
        let reign = elector.hold(shutdown).await;
        stop_controllers.fire();
        let _ = controllers.await;
        ctx.metrics.set_leader(false);
        match reign {
            Reign::Shutdown => {
                if let Err(err) = elector.release().await {
                    tracing::warn!(error = %err, "failed to release the leader Lease; a standby takes over when it expires");
                }
                return;
            }
            Reign::Lost => tracing::warn!("lost the leader Lease; controllers stopped"),
        }
    }
}

/// Run every controller until `stop`, marking readiness once their caches synced.
fn lead(
    ctx: &Arc<Context>,
    scope: &Scope,
    readiness: &Readiness,
    stop: Stop,
    start_controllers: StartControllers,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let runs = start_controllers(ctx, scope, &stop);
    let (runs, synced): (Vec<_>, Vec<_>) = runs.into_iter().map(|r| (r.run, r.synced)).unzip();
    readiness.set(false);
    let readiness = readiness.clone();
    let sync_stop = stop.clone();
    async move {
        tracing::info!(controllers = runs.len(), "leading: starting controllers");
        let mark_ready = async move {
            join_all(synced).await;
            if !sync_stop.is_stopped() {
                tracing::info!("caches synced");
                readiness.set(true);
            }
        };
        let (_, _) = futures::join!(join_all(runs), mark_ready);
        tracing::info!("controllers stopped");
    }
}
