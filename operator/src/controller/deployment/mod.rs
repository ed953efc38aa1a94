//! The ModelDeployment controller: serves a model with `server` pods behind a
//! Service, watches what they serve, and rolls out model changes so that a bad
//! model leaves the old one serving.
//!
//! resolve (`spec.model` → artifact) → validate → read (the live Deployments,
//! the pods' metrics) → decide (replicas, rollout) → build (Deployments,
//! Service, PodDisruptionBudget, NetworkPolicy) → apply (server-side apply,
//! orphans deleted) → status.
//!
//! - **Monitoring** ([`monitor`]): every pass that is due (each
//!   `--metrics-interval`, 15 s by default) reads each ready serving pod's
//!   `/metrics` at its pod IP and keeps the samples in memory; `status.metrics`
//!   summarises the last `--metrics-window` (1 min): requests/s, 5xx share (4xx
//!   apart), p50/p95 latency, p95 time to first token, time per output token,
//!   tokens/s, in flight, queue depth. It is written at most every 30 s, and
//!   only when a figure changed at the precision shown.
//! - **Replicas** are fixed at `replicas.min` (at least one) when
//!   `replicas.max` equals it. With a range, [`autoscale`] follows
//!   `inFlightRequests`, `queueDepth` or `tokensPerSecond`: up at once, down to
//!   the highest recommendation over `stabilizationWindow` (the HPA's rule),
//!   never on missing metrics, and `lastScaleTime`/`lastScaleReason` record
//!   each change. With `replicas.min: 0` and `scaleToZeroAfter`, [`zero`]
//!   takes an idle deployment to no pods and wakes it when the gateway holds a
//!   request for it ([`wake`] polls the gateway for those at zero).
//! - **Rollouts**: `RollingUpdate` is a Deployment rolling update
//!   (`maxUnavailable: 0`, `maxSurge: 1`): a new pod takes traffic once
//!   `/readyz` says its model is loaded, and an old pod goes only after.
//!   `Canary` ([`canary`]) runs the new model in a Deployment of its own
//!   beside the stable one, step by step, analyses its own figures, promotes it
//!   or rolls it back automatically. Its traffic follows replicas behind the
//!   one Service, or exact weights on an HTTPRoute the user names ([`route`]).
//! - **Failed rollouts**: when the Deployment reports `ProgressDeadlineExceeded`
//!   (`rollout.progressDeadlineSeconds`, 600 s by default), the status says the
//!   new model failed to become ready (Stalled=True, `RolloutFailed`) while
//!   Ready stays True for the old model, whose pods keep serving. A canary is
//!   rolled back instead (Stalled=True, `RolloutAborted`, with its figures
//!   against their limits).
//! - **Models**: a `uri` is served as given; a `pretrainJobRef` waits
//!   (`WaitingForModel`) until the PretrainJob is Ready and serves its
//!   `status.artifact` (a re-trained PretrainJob rolls out its new artifact);
//!   a `fineTuneRef` likewise waits for the FineTune to be Ready (one whose model
//!   failed its quality gates has no artifact, so it is never served). While
//!   waiting, or stalled on a spec this version cannot run, the Deployment of
//!   the last good spec is left as it is, serving.
//! - **Adapters** ([`adapters`]): `spec.adapters` are served beside the model
//!   from ConfigMap `<name>-adapters`, which the pods read while running, so
//!   adapters come and go without a restart; each FineTune named is watched.
//! - **Secrets**: the API keys reach the pods as `LLMOPS_API_KEYS` and the model
//!   store's credentials as `LLMOPS_CRED_<SECRET>_<KEY>`, both through
//!   `secretKeyRef`; the operator never reads a Secret.

mod adapters;
mod autoscale;
mod build;
mod canary;
mod isolation;
pub mod monitor;
pub(crate) mod reason;
mod resolve;
mod route;
mod status;
mod validate;
pub mod vllm;
mod wake;
mod zero;

pub use autoscale::parse_duration;
pub use monitor::gateway::GatewayMetrics;
pub use monitor::{Monitor, Monitoring};

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use llmops_crds::deployment::RolloutStrategy;
use llmops_crds::{Artifact, FineTune, LocalObjectRef, ModelDeployment, PretrainJob};

use crate::runtime::Context;
use crate::runtime::apply::{
    ApplyChildError, DeleteOrphansError, apply_child, children_selector, delete_orphans,
};
use crate::runtime::conditions::{self, Outcome};
use crate::runtime::controller::{
    ControllerRun, ReconcileError, Scope, controller_for, owned_children, referrers, scoped_api,
    start,
};
use crate::runtime::status::{WriteStatusError, first_sight};
use crate::runtime::stop::Stop;
use build::Children;
use resolve::Resolution;
use status::Observed;

/// The kind label of metrics and logs.
pub const KIND: &str = "ModelDeployment";

/// How often a settled ModelDeployment is looked at again without a change.
const RESYNC: Duration = Duration::from_secs(600);
/// How often one rolling out is looked at without a change to its Deployment.
const ROLLOUT_RESYNC: Duration = Duration::from_secs(60);
/// How often one waiting for its model looks again (the PretrainJob and
/// FineTune watches usually trigger it sooner).
const WAIT_RETRY: Duration = Duration::from_secs(30);

/// Why a ModelDeployment reconcile failed; all are transient and retried with
/// backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {kind} {name} (spec.model): {source}")]
    ReadModel {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error(transparent)]
    ApplyChild(#[from] ApplyChildError),
    #[error("failed to read Deployment {name}: {source}")]
    ReadDeployment { name: String, source: kube::Error },
    #[error("failed to list the serving pods: {0}")]
    ListPods(kube::Error),
    #[error(transparent)]
    DeleteOrphans(#[from] DeleteOrphansError),
    #[error(transparent)]
    WriteStatus(#[from] WriteStatusError),
    #[error(transparent)]
    Route(#[from] route::RouteError),
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::ReadModel { .. } => "ReadModel",
            Error::ApplyChild(_) => "ApplyChild",
            Error::ReadDeployment { .. } => "ReadDeployment",
            Error::ListPods(_) => "ListPods",
            Error::DeleteOrphans(_) => "DeleteOrphans",
            Error::WriteStatus(_) => "WriteStatus",
            Error::Route(_) => "HTTPRoute",
        }
    }
}

/// One ModelDeployment controller per namespace in `scope`, each watching
/// ModelDeployments, their Deployments, Services, PodDisruptionBudgets and
/// NetworkPolicies, and
/// the PretrainJobs and FineTunes they serve (a new artifact starts a rollout,
/// and a first one ends the wait for it).
pub fn controllers(ctx: &Arc<Context>, scope: &Scope, stop: &Stop) -> Vec<ControllerRun> {
    let client = &ctx.client;
    scope.start_each(|ns| {
        let controller = controller_for::<ModelDeployment>(client, ns);
        let (for_pretrain, for_finetune) = (controller.store(), controller.store());
        let controller = controller
            .owns(scoped_api::<Deployment>(client, ns), owned_children())
            .owns(scoped_api::<Service>(client, ns), owned_children())
            .owns(
                scoped_api::<PodDisruptionBudget>(client, ns),
                owned_children(),
            )
            .owns(scoped_api::<NetworkPolicy>(client, ns), owned_children())
            .watches(
                scoped_api::<PretrainJob>(client, ns),
                watcher::Config::default(),
                move |pt| {
                    let artifact = pt
                        .status
                        .as_ref()
                        .and_then(|s| s.operator.artifact.as_ref());
                    serving_other_than(&for_pretrain.state(), &pt, artifact, |md| {
                        md.spec.model.pretrain_job_ref.as_ref()
                    })
                },
            )
            .watches(
                scoped_api::<FineTune>(client, ns),
                watcher::Config::default(),
                move |ft| {
                    let artifact = ft
                        .status
                        .as_ref()
                        .and_then(|s| s.operator.artifact.as_ref());
                    let deployments = for_finetune.state();
                    let mut refs = serving_other_than(&deployments, &ft, artifact, |md| {
                        md.spec.model.fine_tune_ref.as_ref()
                    });
                    refs.extend(adapters::referrers(&deployments, &ft));
                    refs
                },
            )
            .reconcile_on(wake::triggers(ctx.clone(), ns.map(String::from)));
        start(KIND, controller, ctx.clone(), stop.clone(), reconcile)
    })
}

/// The ModelDeployments referencing `producer` (through `reference`) that do not
/// serve its `artifact` yet. Only a producer with an artifact matters: a
/// PretrainJob's frequent progress updates while it trains trigger nothing.
fn serving_other_than<P: ResourceExt>(
    deployments: &[Arc<ModelDeployment>],
    producer: &P,
    artifact: Option<&Artifact>,
    reference: impl Fn(&ModelDeployment) -> Option<&LocalObjectRef>,
) -> Vec<ObjectRef<ModelDeployment>> {
    let Some(artifact) = artifact else {
        return Vec::new();
    };
    referrers(deployments, producer, reference, |md| {
        md.status
            .as_ref()
            .and_then(|s| s.operator.model.as_ref())
            .and_then(|m| m.current.as_ref())
            != Some(artifact)
    })
}

async fn reconcile(md: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if md.metadata.deletion_timestamp.is_some() {
        // Children go with their owner.
        ctx.monitor.forget(&md);
        return Ok(Action::await_change());
    }
    let api: Api<ModelDeployment> =
        Api::namespaced(ctx.client.clone(), &md.namespace().unwrap_or_default());
    // Status writes below update this copy, so later steps compare against them.
    let mut md = (*md).clone();

    if first_sight(&md) {
        let observed = status::without_apply(&md, Outcome::FirstSight, None);
        write_status(&mut md, &api, &ctx, observed).await?;
    }

    if let Err(invalid) = validate::validate(&md, ctx.config.require_auth) {
        let outcome = Outcome::stalled(reason::INVALID_SPEC, invalid.to_string());
        return hold(&mut md, &api, &ctx, outcome, Action::await_change()).await;
    }
    let model = match resolve::resolve(&md, &ctx).await? {
        Resolution::Resolved(model) => model,
        Resolution::Waiting(outcome) => {
            return hold(&mut md, &api, &ctx, outcome, Action::requeue(WAIT_RETRY)).await;
        }
    };
    if let Err(invalid) = validate::validate_model(&model) {
        let outcome = Outcome::stalled(reason::INVALID_SPEC, invalid.to_string());
        return hold(&mut md, &api, &ctx, outcome, Action::await_change()).await;
    }
    let served_adapters = match adapters::resolve(&md, &ctx, &model).await? {
        Ok(resolved) => resolved,
        Err(invalid) => {
            let outcome = Outcome::stalled(reason::INVALID_SPEC, invalid.to_string());
            return hold(&mut md, &api, &ctx, outcome, Action::await_change()).await;
        }
    };
    apply_child(
        &ctx.client,
        &adapters::build_config_map(&md, &served_adapters),
    )
    .await?;

    let live = Live::read(&md, &ctx.client).await?;
    let observation = monitor::observe(&md, &ctx.client, &ctx.monitor, &monitoring(&ctx)).await?;
    let plan = autoscale_plan(&md, &ctx, &live, &observation).await;
    let replicas = plan
        .as_ref()
        .map_or_else(|| build::replicas(&md), |p| p.replicas);
    ctx.monitor
        .with(&md, |memory| memory.at_zero = replicas == 0);
    let rollout = rollout_pass(&md, &model, &live, &observation, replicas);
    let mut children =
        build::build_with_replicas(&md, &rollout.stable_model, &ctx.config, replicas);
    children.canary = rollout
        .canary_replicas
        .map(|n| build::build_canary(&md, &model, &ctx.config, n));
    if children.canary.is_some() && children.route_services.is_empty() {
        // The gateway reads a canary's pods from its own Service.
        children.route_services = build::revision_services(&md);
    }
    stamp_telemetry(&md, &mut children, &live, &ctx.config);
    let deployment = apply_children(&ctx.client, &children).await?;
    // Weights first: a canary goes only once the route no longer sends to it,
    // so nothing is deleted while the route cannot be written.
    let routed = weigh_route(&ctx.client, &md, rollout.canary.as_ref()).await;
    if routed.is_ok() {
        delete_outdated(&ctx.client, &md, &children).await?;
    }

    let mut observed = status::observe_with(
        &md,
        &deployment,
        build::endpoint(&md),
        plan.as_ref().map(|p| p.note.as_str()),
    );
    if let Some(canary) = rollout.canary {
        observed = with_canary(observed, canary, &model, &observation, &ctx);
    }
    if let Some(reason) = plan.and_then(|p| p.change) {
        tracing::info!(replicas, %reason, "scaled");
        observed.last_scale = Some((conditions::now(), reason));
    }
    observed.metrics = metrics_update(&md, &ctx, &observation);
    observed.adapters = Some(adapters::with_loaded(served_adapters, &observation.stable));
    // A route the user must fix is told in the status; an API failure is
    // retried once the status is written.
    let routed = match routed {
        Err(problem) if problem.is_users() => {
            tracing::warn!(%problem, "the HTTPRoute cannot be weighted");
            observed = status::with_route_problem(observed, &problem.to_string());
            Ok(())
        }
        other => other,
    };
    let settled = matches!(observed.outcome, Outcome::Ready { .. });
    write_status(&mut md, &api, &ctx, observed).await?;
    routed?;
    let resync = if settled { RESYNC } else { ROLLOUT_RESYNC };
    // Serving pods are watched through their figures: look again when the next
    // scrape is due.
    Ok(Action::requeue(resync.min(monitoring(&ctx).interval)))
}

/// The autoscaler's plan when the spec gives a range, from the figures and the
/// recommendations remembered for this ModelDeployment, and scale to zero's
/// part when the spec asks for it.
async fn autoscale_plan(
    md: &ModelDeployment,
    ctx: &Context,
    live: &Live,
    observation: &monitor::Observation,
) -> Option<autoscale::Plan> {
    if !autoscale::active(md) {
        return None;
    }
    let current = live
        .stable
        .as_ref()
        .map(|d| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1));
    let gateway = match zero::after(md) {
        Some(_) => gateway_demand(md, ctx).await,
        None => zero::Gateway::Unconfigured,
    };
    let now = monitor::now();
    Some(ctx.monitor.with(md, |memory| {
        let scaling = autoscale::plan(md, current, observation, &mut memory.recommendations, now);
        let idle = memory.idle.tick(observation, &gateway, now);
        zero::plan(md, current, observation, &gateway, idle, scaling)
    }))
}

/// What the gateway says of `md`'s demand.
async fn gateway_demand(md: &ModelDeployment, ctx: &Context) -> zero::Gateway {
    let Some(gateway) = &ctx.config.gateway_metrics else {
        return zero::Gateway::Unconfigured;
    };
    let timeout = ctx.config.monitoring.scrape_timeout;
    match ctx.monitor.gateway.read(gateway, timeout).await {
        Ok(demands) => {
            let key = (md.namespace().unwrap_or_default(), md.name_any());
            zero::Gateway::Read(demands.get(&key).copied().unwrap_or_default())
        }
        Err(why) => zero::Gateway::Unreadable(why),
    }
}

/// Write the canary's weight (none outside a canary) on the HTTPRoute the spec
/// names, if it names one.
async fn weigh_route(
    client: &Client,
    md: &ModelDeployment,
    canary: Option<&canary::Decision>,
) -> Result<(), route::RouteError> {
    let Some(name) = route::route_name(md) else {
        return Ok(());
    };
    let weight = canary.map_or(0, canary::Decision::routed_weight);
    route::set_canary_weight(client, md, name, weight).await
}

/// `observed` with a canary's part: its rollout status with its own figures,
/// and the model it serves unless it was rolled back.
fn with_canary(
    observed: Observed,
    canary: canary::Decision,
    model: &resolve::Model,
    observation: &monitor::Observation,
    ctx: &Context,
) -> Observed {
    let mut rollout = canary.rollout;
    rollout.canary_metrics = monitor::serving_metrics(&observation.canary, monitoring(ctx).window);
    if canary.aborted {
        tracing::warn!(message = %canary.message, "canary rolled back");
    }
    let serving_canary = (!canary.aborted).then(|| model.artifact.clone());
    status::with_canary(
        observed,
        rollout,
        &canary.message,
        canary.aborted,
        serving_canary,
    )
}

/// The serving pods' owner, trace and OTLP settings, keeping each live
/// template's trace while nothing else in it changes
/// ([`crate::workload::telemetry::stamp_deployment`]).
fn stamp_telemetry(
    md: &ModelDeployment,
    children: &mut Children,
    live: &Live,
    config: &crate::config::OperatorConfig,
) {
    use crate::workload::telemetry::stamp_deployment;
    let env = &config.pod_export_env;
    stamp_deployment(md, &mut children.deployment, live.stable.as_ref(), env);
    if let Some(canary) = children.canary.as_mut() {
        stamp_deployment(md, canary, live.canary.as_ref(), env);
    }
}

/// The live stable and canary Deployments of a ModelDeployment.
struct Live {
    stable: Option<Deployment>,
    canary: Option<Deployment>,
}

impl Live {
    async fn read(md: &ModelDeployment, client: &Client) -> Result<Live, Error> {
        let api =
            Api::<Deployment>::namespaced(client.clone(), &md.namespace().unwrap_or_default());
        let get = |name: String| {
            let api = api.clone();
            async move {
                api.get_opt(&name)
                    .await
                    .map_err(|source| Error::ReadDeployment { name, source })
            }
        };
        Ok(Live {
            stable: get(build::deployment_name(&md.name_any())).await?,
            canary: get(build::canary_deployment_name(&md.name_any())).await?,
        })
    }
}

/// What the rollout asks of this pass: the model of the stable pods, the canary
/// pods (none: no canary), and the canary's decision when one runs.
struct RolloutPass {
    stable_model: resolve::Model,
    canary_replicas: Option<i32>,
    canary: Option<canary::Decision>,
}

/// The rollout part of a pass. Under `strategy: Canary` a model other than the
/// one the stable pods serve runs as a canary ([`canary::decide`]); a canary
/// that was rolled back is not tried again until the spec changes. Otherwise the
/// stable Deployment serves the model (a rolling update), and a promoted canary
/// stays until the stable pods all serve its model.
fn rollout_pass(
    md: &ModelDeployment,
    model: &resolve::Model,
    live: &Live,
    observation: &monitor::Observation,
    stable_replicas: i32,
) -> RolloutPass {
    let serving = live.stable.as_ref().and_then(build::served_model);
    let canary_model = live.canary.as_ref().and_then(build::served_model);
    let generation = md.metadata.generation.unwrap_or_default();
    let previous = md.status.as_ref().and_then(|s| s.operator.rollout.as_ref());
    let is_canary = md.spec.rollout.strategy == RolloutStrategy::Canary;
    match serving {
        // At zero replicas nothing serves to compare a canary with: the new
        // model is taken as a rolling update would, by the next pod to start.
        Some(serving) if is_canary && serving.artifact != model.artifact && stable_replicas > 0 => {
            if canary::refused(previous, &model.artifact, generation) {
                let rollout = previous.cloned().unwrap_or_default();
                let message = rollout.message.clone().unwrap_or_default();
                return RolloutPass {
                    stable_model: serving,
                    canary_replicas: None,
                    canary: Some(canary::Decision {
                        action: canary::Action::Abort,
                        rollout,
                        message,
                        aborted: true,
                    }),
                };
            }
            let stable_ready = live
                .stable
                .as_ref()
                .and_then(|d| d.status.as_ref())
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            let decision = canary::decide(&canary::Inputs {
                md,
                stable: &serving.artifact,
                new: &model.artifact,
                stable_replicas,
                stable_ready,
                canary: live.canary.as_ref(),
                canary_model: canary_model.as_ref().map(|m| &m.artifact),
                figures: &observation.canary,
                now: &conditions::now(),
            });
            let (stable_model, canary_replicas) = match decision.action {
                canary::Action::Run { replicas } => (serving, Some(replicas)),
                canary::Action::Promote { replicas } => (model.clone(), Some(replicas)),
                canary::Action::Abort => (serving, None),
            };
            RolloutPass {
                stable_model,
                canary_replicas,
                canary: Some(decision),
            }
        }
        _ => {
            // A promoted canary keeps serving until the stable pods serve its model.
            let promoted = canary_model.is_some_and(|m| m.artifact == model.artifact)
                && live.stable.as_ref().is_some_and(|d| {
                    !status::rolled_out(d)
                        || build::served_model(d).map(|m| m.artifact)
                            != Some(model.artifact.clone())
                });
            let canary_replicas = promoted
                .then(|| live.canary.as_ref().and_then(|d| d.spec.as_ref()?.replicas))
                .flatten();
            RolloutPass {
                stable_model: model.clone(),
                canary_replicas,
                canary: None,
            }
        }
    }
}

fn monitoring(ctx: &Context) -> Monitoring {
    ctx.config.monitoring
}

/// The `status.metrics` this pass writes (none keeps what status says), and
/// when, in the monitor's memory.
fn metrics_update(
    md: &ModelDeployment,
    ctx: &Context,
    observation: &monitor::Observation,
) -> Option<llmops_crds::deployment::ServingMetrics> {
    let settings = monitoring(ctx);
    let fresh = monitor::serving_metrics(&observation.stable, settings.window);
    let current = md.status.as_ref().and_then(|s| s.operator.metrics.as_ref());
    let now = monitor::now();
    ctx.monitor.with(md, |memory| {
        let update = monitor::metrics_to_write(
            current,
            fresh,
            now,
            memory.metrics_written,
            settings.status_interval,
        );
        if update.is_some() {
            memory.metrics_written = Some(now);
        }
        update
    })
}

/// A pass that leaves the children as they are (waiting for the model, or a spec
/// this version cannot run): the last good Deployment keeps serving.
async fn hold(
    md: &mut ModelDeployment,
    api: &Api<ModelDeployment>,
    ctx: &Context,
    outcome: Outcome,
    action: Action,
) -> Result<Action, Error> {
    let name = build::deployment_name(&md.name_any());
    let deployments: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &md.namespace().unwrap_or_default());
    let live = deployments
        .get_opt(&name)
        .await
        .map_err(|source| Error::ReadDeployment { name, source })?;
    let observed = status::without_apply(md, outcome, live.as_ref());
    write_status(md, api, ctx, observed).await?;
    Ok(action)
}

/// Apply the Services, the PodDisruptionBudget and the Deployments; returns the
/// live stable Deployment.
async fn apply_children(client: &Client, children: &Children) -> Result<Deployment, Error> {
    apply_child(client, &children.service).await?;
    for service in &children.route_services {
        apply_child(client, service).await?;
    }
    if let Some(pdb) = &children.pdb {
        apply_child(client, pdb).await?;
    }
    if let Some(policy) = &children.network_policy {
        apply_child(client, policy).await?;
    }
    if let Some(canary) = &children.canary {
        apply_child(client, canary).await?;
    }
    Ok(apply_child(client, &children.deployment).await?)
}

/// Delete the children labelled as this ModelDeployment's that this pass did not
/// produce (the PodDisruptionBudget once the Deployment runs one replica).
async fn delete_outdated(
    client: &Client,
    md: &ModelDeployment,
    children: &Children,
) -> Result<(), Error> {
    let namespace = md.namespace().unwrap_or_default();
    let selector = children_selector(md);
    let tag = |kind: &'static str| move |source| DeleteOrphansError { kind, source };
    let deployments: Vec<String> = std::iter::once(&children.deployment)
        .chain(&children.canary)
        .map(|d| d.name_any())
        .collect();
    let services: Vec<String> = std::iter::once(&children.service)
        .chain(&children.route_services)
        .map(|s| s.name_any())
        .collect();
    let mut deleted = delete_orphans::<Deployment>(client, &namespace, &selector, &deployments)
        .await
        .map_err(tag("Deployment"))?;
    deleted.extend(
        delete_orphans::<Service>(client, &namespace, &selector, &services)
            .await
            .map_err(tag("Service"))?,
    );
    let pdbs: Vec<String> = children.pdb.iter().map(|p| p.name_any()).collect();
    deleted.extend(
        delete_orphans::<PodDisruptionBudget>(client, &namespace, &selector, &pdbs)
            .await
            .map_err(tag("PodDisruptionBudget"))?,
    );
    let policies: Vec<String> = children
        .network_policy
        .iter()
        .map(|p| p.name_any())
        .collect();
    deleted.extend(
        delete_orphans::<NetworkPolicy>(client, &namespace, &selector, &policies)
            .await
            .map_err(tag("NetworkPolicy"))?,
    );
    if !deleted.is_empty() {
        tracing::info!(?deleted, "deleted children no longer produced");
    }
    Ok(())
}

/// Write the operator's status fields for `observed` (see
/// [`crate::runtime::status::write`]).
async fn write_status(
    md: &mut ModelDeployment,
    api: &Api<ModelDeployment>,
    ctx: &Context,
    observed: Observed,
) -> Result<(), Error> {
    let desired = status::desired_status(md, observed, &conditions::now());
    Ok(crate::runtime::status::write(md, api, &ctx.events, desired).await?)
}
