//! End to end, serving under real traffic: the real operator on the real control
//! plane, every serving pod replayed with the real `server` listening on its pod
//! IP (loopback), readiness probed as the kubelet does ([`PodRunner`]), and
//! clients spreading requests over the ready pods as kube-proxy would
//! ([`Traffic`]). The operator reads the pods' `/metrics` exactly as in a
//! cluster (`podIP:8000`).
//!
//! - `status.metrics` agrees with what the clients measured, and an autoscaled
//!   deployment scales up to `replicas.max` under load from 16 clients and back
//!   down once the load stops and the stabilization window has passed;
//! - canary rollouts: a good model walks every step and is promoted without one
//!   client request failing; a model whose logits are NaN is rolled back on its
//!   error rate; a model that cannot load is rolled back at its progress
//!   deadline; the stable model serves throughout;
//! - with `trafficRouting.httpRoute`, each step's exact weight is written on the
//!   HTTPRoute (clients send by its weights, as a Gateway would), and the stable
//!   Service gets everything back after a promotion and after a rollback.
//!
//! The operator runs with a 1 s scrape interval, a 10 s window and status
//! writes at most every 2 s, so each phase takes seconds, not minutes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use llmops_crds::ModelDeployment;
use llmops_tests::local::tiny_model_with;
use llmops_tests::operator::Operator;
use llmops_tests::runner::PodRunner;
use llmops_tests::traffic::{
    Backends, Load, Report, Request, StopSignal, Traffic, http_route_resource, route_backends,
};
use llmops_tests::{Cluster, TestNamespace, eventually};
use serde_json::{Value, json};

use crate::e2e_dataset::{has_condition, wait_for};

const NAME: &str = "chat";
const MONITORING: [&str; 3] = [
    "--metrics-interval=1s",
    "--metrics-window=10s",
    "--metrics-status-interval=2s",
];
/// Loading a tiny model takes a second; a busy machine gets more.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A completion of at most 12 tokens, greedy.
fn completion() -> Request {
    Request::post(
        "/v1/completions",
        json!({"model": NAME, "prompt": "the old man sees a red house", "max_tokens": 12,
               "temperature": 0}),
    )
}

fn model_deployment(uri: &str, spec: Value) -> Value {
    let mut md = json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": uri},
            "server": {"maxBatch": 4, "maxContext": 128, "maxNewTokens": 16, "threads": 1},
            "resources": {"cpu": "1", "memory": "1Gi"},
        }
    });
    if let (Some(base), Some(extra)) = (md["spec"].as_object_mut(), spec.as_object()) {
        for (key, value) in extra {
            base.insert(key.clone(), value.clone());
        }
    }
    md
}

/// A namespace with the operator, the serving pods' kubelet and a store of
/// tiny models.
struct Setup {
    ns: TestNamespace,
    operator: Operator,
    client: Client,
    pods: PodRunner,
    deployments: Api<ModelDeployment>,
}

impl Setup {
    async fn start(cluster: &'static Cluster, prefix: &str) -> anyhow::Result<Setup> {
        let ns = TestNamespace::create(cluster, prefix).await?;
        let operator = Operator::start_with(cluster, &ns, &MONITORING).await?;
        let client = cluster.client().await?;
        let replayer = Arc::new(cluster.replayer().await?);
        let pods = PodRunner::start(
            replayer,
            ns.name(),
            &format!("llmops.dev/modeldeployment={NAME}"),
        );
        let deployments = Api::namespaced(client.clone(), ns.name());
        Ok(Setup {
            ns,
            operator,
            client,
            pods,
            deployments,
        })
    }

    /// A tiny model in the store (`args` for `tiny_model.py`); its URI.
    fn model(&self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        let dir = self.operator.store().join("models").join(name);
        tiny_model_with(&dir, args)?;
        Ok(format!("file://{}", dir.display()))
    }

    async fn apply(&self, md: Value) -> anyhow::Result<()> {
        let apply = PatchParams::apply(llmops_tests::FIELD_MANAGER).force();
        self.deployments
            .patch(NAME, &apply, &Patch::Apply(md))
            .await
            .context("applying the ModelDeployment")?;
        Ok(())
    }

    async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<Value> {
        let result = wait_for(
            &mut self.operator,
            &self.deployments,
            NAME,
            what,
            timeout,
            check,
        )
        .await;
        result.map_err(|e| anyhow::anyhow!("{e:#}\nserving pods:\n{}", self.pods.describe()))
    }

    async fn status(&self) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.deployments.get(NAME).await?)?["status"].clone())
    }

    /// `concurrency` clients sending completions to the Service's ready pods
    /// for `duration`, in the background.
    fn traffic(
        &self,
        concurrency: usize,
        duration: Duration,
    ) -> tokio::task::JoinHandle<anyhow::Result<Report>> {
        self.traffic_to(Backends::service(NAME), concurrency, duration, None, None)
    }

    /// [`Setup::traffic`] to `backends`, each client starting a request at most
    /// every `pace` when given (so a long run stays within the traffic's request
    /// cap), ended early by `stop` when given.
    fn traffic_to(
        &self,
        backends: Backends,
        concurrency: usize,
        duration: Duration,
        pace: Option<Duration>,
        stop: Option<&StopSignal>,
    ) -> tokio::task::JoinHandle<anyhow::Result<Report>> {
        let mut load = Load::new(completion())
            .concurrency(concurrency)
            .duration(duration)
            .timeout(Duration::from_secs(30));
        if let Some(pace) = pace {
            load = load.interval(pace);
        }
        if let Some(stop) = stop {
            load = load.stop_on(stop);
        }
        let (client, namespace) = (self.client.clone(), self.ns.name().to_string());
        tokio::spawn(async move { Traffic::run(client, &namespace, backends, load).await })
    }

    /// Serve `uri` under `spec` from two ready pods.
    async fn serve_first(&mut self, uri: &str, spec: Value) -> anyhow::Result<()> {
        self.apply(model_deployment(uri, spec)).await?;
        self.pods.wait_ready(2, READY_TIMEOUT).await?;
        self.wait("the first model to serve", READY_TIMEOUT, |md| {
            serving(md, uri)
        })
        .await?;
        Ok(())
    }

    /// Roll `uri` out under `spec` (a canary) while 6 clients send through
    /// `backends`, showing `poll` the status every 200 ms, until the canary is
    /// promoted and its Deployment gone; not one request may fail meanwhile.
    /// Returns the status once promoted.
    async fn promote(
        &mut self,
        uri: &str,
        spec: Value,
        backends: Backends,
        mut poll: impl AsyncFnMut(&Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<Value> {
        let stop = StopSignal::new();
        // 6 clients at most every 150 ms: about 40 requests/s, so the run's
        // request cap lasts the whole rollout even on a slow machine.
        let pace = Some(Duration::from_millis(150));
        let load = self.traffic_to(backends, 6, Duration::from_secs(300), pace, Some(&stop));
        self.apply(model_deployment(uri, spec)).await?;
        let deadline = Instant::now() + Duration::from_secs(180);
        let promoted = loop {
            let status = self.status().await?;
            poll(&status).await?;
            if status.pointer("/model/current/uri") == Some(&json!(uri))
                && status.pointer("/model/canary").is_none()
            {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "the canary was not promoted in 180 s: rollout {}\n{}\nserving pods:\n{}",
                status["rollout"],
                self.operator.log_tail(60),
                self.pods.describe()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The canary goes once the stable pods serve its model.
        self.canary_gone().await?;
        stop.raise();
        let report = load.await??;
        ensure!(
            report.failed.is_empty() && report.ok > 0,
            "requests failed during the rollout: {report}"
        );
        Ok(promoted)
    }

    /// Waits until the canary Deployment is gone.
    async fn canary_gone(&self) -> anyhow::Result<()> {
        eventually(
            "the canary Deployment to go",
            Duration::from_secs(60),
            || async {
                let apps: Api<Deployment> = Api::namespaced(self.client.clone(), self.ns.name());
                ensure!(
                    apps.get_opt(&format!("{NAME}-canary")).await?.is_none(),
                    "still there"
                );
                Ok(())
            },
        )
        .await
    }

    /// Waits until the stable Deployment asks for `wanted` replicas.
    async fn wait_replicas(&self, wanted: i32, timeout: Duration) -> anyhow::Result<()> {
        eventually(&format!("{wanted} replica(s)"), timeout, || async {
            let replicas = self.replicas().await?;
            ensure!(replicas == wanted, "{replicas} replicas");
            Ok(())
        })
        .await
    }

    async fn replicas(&self) -> anyhow::Result<i32> {
        let apps: Api<Deployment> = Api::namespaced(self.client.clone(), self.ns.name());
        let live = apps.get(&format!("{NAME}-server")).await?;
        Ok(live.spec.and_then(|s| s.replicas).unwrap_or(0))
    }

    async fn finish(self, cluster: &'static Cluster) -> anyhow::Result<()> {
        let Setup {
            ns, operator, pods, ..
        } = self;
        pods.stop().await;
        drop(operator);
        ns.delete(cluster).await
    }
}

/// `model.current` is `uri`, and Ready is True for the current generation.
fn serving(status: &Value, uri: &str) -> anyhow::Result<()> {
    ensure!(
        status.pointer("/status/model/current/uri") == Some(&json!(uri)),
        "not serving {uri}"
    );
    has_condition(status, "Ready", "True")
}

#[tokio::test]
async fn serving_figures_match_the_clients_and_autoscaling_follows_the_load() -> anyhow::Result<()>
{
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let mut setup = Setup::start(cluster, "e2e-serving").await?;
    let uri = setup.model("a", &[])?;
    setup.apply(model_deployment(&uri, json!({}))).await?;
    setup.pods.wait_ready(1, READY_TIMEOUT).await?;
    setup
        .wait("the first model to serve", READY_TIMEOUT, |md| {
            serving(md, &uri)
        })
        .await?;

    // Steady load on one pod: the status agrees with the clients.
    let load = setup.traffic(4, Duration::from_secs(24));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let figures = setup.status().await?["metrics"].clone();
    let report = load.await??;
    ensure!(report.failed.is_empty(), "requests failed: {report}");
    let measured = figures["requestsPerSecond"].as_f64().unwrap_or(0.0);
    let sent = report.rate();
    ensure!(
        (measured - sent).abs() <= 0.2 * sent,
        "status.metrics.requestsPerSecond {measured} is not within 20% of the {sent:.2}/s the clients sent: {figures}"
    );
    let p95 = figures["p95LatencyMs"].as_f64().unwrap_or(0.0);
    let client_p95 = report.p95().context("no latency")?.as_secs_f64() * 1000.0;
    // The server's buckets double: one bucket either way is a factor of two.
    ensure!(
        p95 >= client_p95 / 2.0 && p95 <= client_p95 * 2.0,
        "status.metrics.p95LatencyMs {p95} is more than one bucket from the clients' p95 {client_p95:.1} ms: {figures}"
    );
    ensure!(
        figures["errorRate"] == json!(0.0) && figures["windowSeconds"] == json!(10),
        "{figures}"
    );

    // Autoscaling on in-flight requests: 16 clients push it to max, and it comes
    // back to min once the load is gone and the window has passed.
    setup
        .apply(model_deployment(
            &uri,
            json!({"replicas": {"min": 1, "max": 3},
                   "autoscaling": {"metric": "inFlightRequests", "target": 2, "stabilizationWindow": "15s"}}),
        ))
        .await?;
    let load = setup.traffic(16, Duration::from_secs(40));
    let started = Instant::now();
    setup.wait_replicas(3, Duration::from_secs(40)).await?;
    let up = started.elapsed();
    setup.pods.wait_ready(3, READY_TIMEOUT).await?;
    let report = load.await??;
    let status = setup.status().await?;
    ensure!(
        status["lastScaleReason"]
            .as_str()
            .is_some_and(|r| r.contains("→ 3")),
        "{status}"
    );
    ensure!(report.failed.is_empty(), "requests failed: {report}");
    ensure!(
        report.per_pod.len() >= 2,
        "the load never reached the new pods: {report}"
    );
    let idle = Instant::now();
    setup.wait_replicas(1, Duration::from_secs(60)).await?;
    let down = idle.elapsed();
    ensure!(
        down >= Duration::from_secs(10),
        "scaled down {down:?} after the load stopped, inside the 15 s window"
    );
    eprintln!(
        "scaled up in {up:?} under {} requests at {:.1}/s; down {down:?} after the load stopped",
        report.sent,
        report.rate()
    );
    setup.finish(cluster).await
}

/// The canary settings of the rollout tests: two stable pods, a step at 25%
/// (one canary pod: a third of the traffic) and one at 50% (two).
fn canary_spec() -> Value {
    json!({
        "replicas": {"min": 2, "max": 2},
        "rollout": {
            "strategy": "Canary",
            "canary": {"steps": [{"weight": 25, "pause": "5s"}, {"weight": 50, "pause": "5s"}]},
            "analysis": {"maxErrorRate": 0.05, "minRequests": 20},
            "progressDeadlineSeconds": 20
        }
    })
}

/// The pods a request went to that failed, by name.
fn failing_pods(report: &Report) -> std::collections::BTreeSet<String> {
    report
        .failed
        .iter()
        .map(|f| f.pod.clone().unwrap_or_else(|| "(no ready pod)".into()))
        .collect()
}

#[tokio::test]
async fn canaries_are_promoted_or_rolled_back_on_their_own_figures() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let mut setup = Setup::start(cluster, "e2e-canary").await?;
    let first = setup.model("first", &[])?;
    setup.serve_first(&first, canary_spec()).await?;

    // A good model walks both steps and is promoted; no request fails.
    let second = setup.model("second", &["--seed", "1"])?;
    let mut steps_seen = std::collections::BTreeSet::new();
    let mut weights_seen = std::collections::BTreeSet::new();
    let promoted = setup
        .promote(
            &second,
            canary_spec(),
            Backends::service(NAME),
            async |status: &Value| {
                let rollout = |field: &str| status.pointer(&format!("/rollout/{field}"));
                steps_seen.extend(rollout("step").and_then(Value::as_i64));
                weights_seen.extend(rollout("weight").and_then(Value::as_i64));
                Ok(())
            },
        )
        .await?;
    ensure!(
        promoted.pointer("/model/previous/uri") == Some(&json!(first)),
        "{promoted}"
    );
    ensure!(
        steps_seen.contains(&1) && steps_seen.contains(&2),
        "steps seen: {steps_seen:?}"
    );
    ensure!(
        weights_seen.contains(&33) && weights_seen.contains(&50),
        "effective weights seen: {weights_seen:?}"
    );

    // A model with NaN logits answers 500: rolled back on its error rate while
    // the stable pods keep answering.
    let broken = setup.model("nan", &["--defect", "non-finite"])?;
    let load = setup.traffic(6, Duration::from_secs(60));
    setup
        .apply(model_deployment(&broken, canary_spec()))
        .await?;
    let aborted = setup
        .wait(
            "the NaN canary to be rolled back",
            Duration::from_secs(120),
            |md| {
                ensure!(
                    md.pointer("/status/rollout/phase") == Some(&json!("RolledBack")),
                    "rollout: {}",
                    md["status"]["rollout"]
                );
                has_condition(md, "Stalled", "True")?;
                has_condition(md, "Ready", "True")
            },
        )
        .await?;
    let message = aborted["status"]["rollout"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        message.contains("error rate") && message.contains("> maxErrorRate 5%"),
        "{message}"
    );
    ensure!(
        aborted.pointer("/status/model/current/uri") == Some(&json!(second)),
        "{}",
        aborted["status"]["model"]
    );
    let report = load.await??;
    let stable: std::collections::BTreeSet<String> =
        setup.pods.ready().into_iter().map(|p| p.name).collect();
    ensure!(
        failing_pods(&report).is_disjoint(&stable),
        "the stable pods failed requests: {report}"
    );
    ensure!(report.ok > 0, "{report}");

    // A model that cannot load never gets ready: rolled back at its deadline,
    // and the clients never see it.
    let unloadable = setup.model("unloadable", &["--defect", "unloadable"])?;
    let load = setup.traffic(2, Duration::from_secs(90));
    setup
        .apply(model_deployment(&unloadable, canary_spec()))
        .await?;
    let aborted = setup
        .wait(
            "the unloadable canary to be rolled back",
            Duration::from_secs(120),
            |md| {
                ensure!(
                    md.pointer("/status/rollout/aborted/model/uri") == Some(&json!(unloadable)),
                    "rollout: {}",
                    md["status"]["rollout"]
                );
                has_condition(md, "Ready", "True")
            },
        )
        .await?;
    let message = aborted["status"]["rollout"]["message"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        message.contains("did not become ready within 20s"),
        "{message}"
    );
    load.abort();
    serving(&aborted, &second)?;
    setup.finish(cluster).await
}

/// The weights of the stable and the canary Service on the HTTPRoute's first
/// rule.
async fn route_weights(client: &Client, namespace: &str) -> anyhow::Result<(u32, u32)> {
    let backends = route_backends(client, namespace, NAME).await?;
    let weight = |service: &str| {
        backends
            .iter()
            .filter(|(name, _, _)| name == service)
            .map(|(_, _, w)| *w)
            .sum::<u32>()
    };
    Ok((
        weight(&format!("{NAME}-stable")),
        weight(&format!("{NAME}-canary")),
    ))
}

fn routed_canary_spec() -> Value {
    let mut spec = canary_spec();
    spec["rollout"]["canary"]["trafficRouting"] = json!({"httpRoute": {"name": NAME}});
    spec
}

#[tokio::test]
async fn canary_weights_are_written_on_an_httproute_and_restored_on_rollback() -> anyhow::Result<()>
{
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let mut setup = Setup::start(cluster, "e2e-route").await?;
    // The user's route: everything under /v1 to the stable Service. No Gateway
    // runs; the test's clients send as one would, by the route's weights.
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": NAME},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                "backendRefs": [{"name": format!("{NAME}-stable"), "port": 80}]
            }]
        }
    });
    let routes: Api<DynamicObject> = Api::namespaced_with(
        setup.client.clone(),
        setup.ns.name(),
        &http_route_resource(),
    );
    routes
        .patch(
            NAME,
            &PatchParams::apply(llmops_tests::FIELD_MANAGER),
            &Patch::Apply(route),
        )
        .await
        .context("creating the HTTPRoute (tests/cluster/up installs the Gateway API CRDs)")?;
    let first = setup.model("first", &[])?;
    setup.serve_first(&first, routed_canary_spec()).await?;
    let (client, ns) = (setup.client.clone(), setup.ns.name().to_string());
    let weights = async || route_weights(&client, &ns).await;
    ensure!(weights().await? == (100, 0), "{:?}", weights().await?);

    // A good canary: the route carries each step's exact weight (not a share
    // of pods), no request through it fails, and after promotion the stable
    // Service takes everything again.
    let second = setup.model("second", &["--seed", "1"])?;
    let mut route_seen = std::collections::BTreeSet::new();
    let mut status_seen = std::collections::BTreeSet::new();
    setup
        .promote(
            &second,
            routed_canary_spec(),
            Backends::http_route(NAME),
            async |status: &Value| {
                let (stable, canary) = weights().await?;
                ensure!(stable + canary == 100, "route weights {stable}/{canary}");
                route_seen.insert(canary);
                status_seen.extend(status.pointer("/rollout/weight").and_then(Value::as_i64));
                Ok(())
            },
        )
        .await?;
    ensure!(
        route_seen.contains(&25) && route_seen.contains(&50),
        "canary weights seen on the route: {route_seen:?}"
    );
    ensure!(
        status_seen.contains(&25) && status_seen.contains(&50),
        "weights in status: {status_seen:?}"
    );
    ensure!(weights().await? == (100, 0), "not restored after promotion");

    // A NaN canary gets its step's weight, fails its analysis, and the route
    // goes back to the stable Service alone.
    let broken = setup.model("nan", &["--defect", "non-finite"])?;
    let load = setup.traffic_to(
        Backends::http_route(NAME),
        6,
        Duration::from_secs(60),
        None,
        None,
    );
    setup
        .apply(model_deployment(&broken, routed_canary_spec()))
        .await?;
    let mut canary_weighted = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, canary) = weights().await?;
        canary_weighted |= canary == 25;
        let status = setup.status().await?;
        if status.pointer("/rollout/phase") == Some(&json!("RolledBack")) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the NaN canary was not rolled back in 120 s: rollout {}",
            status["rollout"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        canary_weighted,
        "the NaN canary never got its 25% on the route"
    );
    ensure!(
        weights().await? == (100, 0),
        "not restored after the rollback"
    );
    setup.canary_gone().await?;
    let report = load.await??;
    let stable: std::collections::BTreeSet<String> =
        setup.pods.ready().into_iter().map(|p| p.name).collect();
    ensure!(
        failing_pods(&report).is_disjoint(&stable),
        "the stable pods failed requests: {report}"
    );
    let status = setup.status().await?;
    ensure!(
        status.pointer("/model/current/uri") == Some(&json!(second)),
        "{}",
        status["model"]
    );
    setup.finish(cluster).await
}
