//! End to end, ModelDeployment: the real operator (as the chart's ServiceAccount)
//! on the real control plane serves a model given by URI, in a namespace that
//! enforces Pod Security "restricted": the Deployment, its Service and budget, the
//! status once the pods are ready, and a rolling update to a new model. Every
//! serving pod is replayed with the real `server` binary (on tiny random models
//! from `tests/python/tiny_model.py`), listening on its pod IP and made Ready by
//! its readiness probe ([`PodRunner`]); a pod of the new model answers
//! `/v1/models` with the API key from the Secret. The servers' start spans
//! reach a loopback OTLP receiver in the trace of the generation that rolled
//! them out, and a new generation that changes nothing about the pods leaves
//! the Deployment's template as it runs.
//!
//! Needs the `server` binary (`cargo build -p llmops-server`) and the project venv
//! (`scripts/setup-venv`), or `LLMOPS_PYTHON` naming a Python with `torch`,
//! `tokenizers` and `transformers`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use llmops_crds::ModelDeployment;
use llmops_tests::local::{http, tiny_model};
use llmops_tests::operator::Operator;
use llmops_tests::otlp::Receiver;
use llmops_tests::runner::PodRunner;
use llmops_tests::{Cluster, TestNamespace};
use serde_json::{Value, json};

use crate::e2e_dataset::{CHILD_TIMEOUT, ensure_restricted_template, has_condition, wait_for};

const NAME: &str = "chat";
const KEYS_SECRET: &str = "chat-keys";
const PORT: i64 = 8080;
const API_KEY: &str = "sk-e2e-one";
/// Loading a tiny model takes a second; a busy machine gets more.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

fn model_deployment(uri: &str) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": uri},
            "replicas": {"min": 2, "max": 4},
            "server": {"maxBatch": 4, "maxContext": 128, "maxNewTokens": 16, "threads": 1},
            "resources": {"cpu": "1", "memory": "1Gi"},
            "auth": {"apiKeySecretRef": {"name": KEYS_SECRET}},
            "service": {"port": PORT},
        }
    })
}

/// Ready=True for the current generation, serving `uri` on every replica.
fn serving(object: &Value, uri: &str) -> anyhow::Result<()> {
    has_condition(object, "Ready", "True")?;
    let status = &object["status"];
    ensure!(
        status.pointer("/model/current/uri") == Some(&json!(uri)),
        "not serving {uri} yet"
    );
    ensure!(
        status["replicas"] == json!({"desired": 2, "ready": 2}),
        "replicas are {}",
        status["replicas"]
    );
    Ok(())
}

#[tokio::test]
async fn model_deployment_serves_and_rolls_out_a_new_model() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-deploy").await?;
    let receiver = Receiver::start().await?;
    let otlp = format!("--otlp-endpoint={}", receiver.grpc_endpoint());
    let mut operator = Operator::start_with(cluster, &ns, &[&otlp]).await?;
    let client = cluster.client().await?;
    let namespace = ns.name().to_string();
    let first = format!("file://{}/models/chat-a", operator.store().display());
    let second = format!("file://{}/models/chat-b", operator.store().display());

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(KEYS_SECRET.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "api-key".to_string(),
            ByteString(format!("{API_KEY}\n").into_bytes()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    tiny_model(&operator.store().join("models/chat-a"))?;
    tiny_model(&operator.store().join("models/chat-b"))?;
    let replayer = std::sync::Arc::new(cluster.replayer().await?);
    let serving_pods = PodRunner::start(
        replayer,
        &namespace,
        &format!("llmops.dev/modeldeployment={NAME}"),
    );

    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &namespace);
    let apply = PatchParams::apply(llmops_tests::FIELD_MANAGER).force();
    deployments
        .patch(NAME, &apply, &Patch::Apply(model_deployment(&first)))
        .await
        .context("applying the ModelDeployment")?;

    // The Deployment: restricted, probed, the key only through a secretKeyRef.
    let apps: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let live = wait_for(
        &mut operator,
        &apps,
        "chat-server",
        "Deployment chat-server",
        CHILD_TIMEOUT,
        |_| Ok(()),
    )
    .await?;
    let deployment: Deployment = serde_json::from_value(live)?;
    let spec = deployment
        .spec
        .as_ref()
        .context("Deployment without spec")?;
    ensure_restricted_template(&spec.template)?;
    let template = serde_json::to_value(&spec.template)?;
    let pod = &template["spec"];
    ensure!(
        pod["automountServiceAccountToken"] == false,
        "the server pod mounts an API token: {pod}"
    );
    let container = &pod["containers"][0];
    ensure!(
        container["readinessProbe"]["httpGet"]
            == json!({"path": "/readyz", "port": "http", "scheme": "HTTP"})
            && container["livenessProbe"]["httpGet"]["path"] == "/healthz",
        "probes: {container}"
    );
    let keys = container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "LLMOPS_API_KEYS"))
        .context("no LLMOPS_API_KEYS variable")?;
    ensure!(
        keys.get("value").is_none()
            && keys["valueFrom"]["secretKeyRef"]["name"] == KEYS_SECRET
            && keys["valueFrom"]["secretKeyRef"]["key"] == "api-key",
        "LLMOPS_API_KEYS is not a secretKeyRef to {KEYS_SECRET}: {keys}"
    );
    ensure!(
        spec.strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .is_some_and(|r| { serde_json::to_value(&r.max_unavailable).ok() == Some(json!(0)) }),
        "the rolling update may take serving pods away: {:?}",
        spec.strategy
    );

    // The Service and the budget.
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let service = services.get(NAME).await.context("Service chat")?;
    let port = &service
        .spec
        .context("Service without spec")?
        .ports
        .unwrap_or_default()[0];
    ensure!(
        i64::from(port.port) == PORT && serde_json::to_value(&port.target_port)? == json!("http"),
        "Service port: {port:?}"
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
    pdbs.get("chat-server")
        .await
        .context("PodDisruptionBudget chat-server")?;
    // The serving port is open to the namespace only (the test operator runs
    // outside the cluster, so there is no operator namespace to open it to).
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
    let policy = policies
        .get("chat-server")
        .await
        .context("NetworkPolicy chat-server")?;
    let policy = serde_json::to_value(policy.spec.context("NetworkPolicy without spec")?)?;
    ensure!(
        policy["podSelector"]["matchLabels"]["llmops.dev/modeldeployment"] == json!(NAME)
            && policy["policyTypes"] == json!(["Ingress"])
            && policy["ingress"]
                == json!([{"from": [{"podSelector": {}}], "ports": [{"port": "http", "protocol": "TCP"}]}]),
        "NetworkPolicy chat-server: {policy}"
    );

    // The replayed servers load the model and pass their readiness probes: the
    // ModelDeployment is Ready and says where.
    let ready = wait_for(
        &mut operator,
        &deployments,
        NAME,
        "the ModelDeployment to serve the first model",
        LOAD_TIMEOUT,
        |md| serving(md, &first),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", serving_pods.describe()))?;
    let status = &ready["status"];
    ensure!(
        status["endpoint"] == format!("http://{NAME}.{namespace}.svc:{PORT}/v1"),
        "endpoint: {}",
        status["endpoint"]
    );
    let message = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["message"].to_string())
        .unwrap_or_default();
    // Idle servers: the autoscaler reads their metrics and keeps replicas.min.
    ensure!(
        message.contains("autoscaling on inFlightRequests"),
        "the Ready message does not say what the autoscaler does: {message}"
    );
    ensure!(
        status.get("lastScaleTime").is_none(),
        "scaled without load: {status}"
    );
    ensure!(
        !serde_json::to_string(&ready)?.contains(API_KEY),
        "the API key leaked into the object"
    );

    // A new model rolls out; the old one becomes the previous.
    deployments
        .patch(NAME, &apply, &Patch::Apply(model_deployment(&second)))
        .await?;
    let rolled = wait_for(
        &mut operator,
        &deployments,
        NAME,
        "the rollout of the second model",
        LOAD_TIMEOUT,
        |md| serving(md, &second),
    )
    .await?;
    ensure!(
        rolled.pointer("/status/model/previous/uri") == Some(&json!(first)),
        "previous model: {}",
        rolled["status"]["model"]
    );
    let live: Deployment = apps.get("chat-server").await?;
    let args = live
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default();
    ensure!(
        args.windows(2).any(|w| w[0] == "--model" && w[1] == second),
        "the Deployment does not run the second model: {args:?}"
    );

    // The real server, run from a pod of the new model as the kubelet would,
    // answers with the key from the Secret and only with it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = format!("llmops.dev/modeldeployment={NAME}");
    let pod = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.spec
                    .as_ref()
                    .and_then(|s| s.containers[0].args.as_ref())
                    .is_some_and(|a| a.contains(&second))
        })
        .context("no pod of the second model")?;
    let address = serving_pods
        .ready()
        .into_iter()
        .find(|p| p.name == pod.name_any())
        .and_then(|p| p.address)
        .with_context(|| {
            format!(
                "pod {} is not ready\n{}",
                pod.name_any(),
                serving_pods.describe()
            )
        })?;
    let (status, body) = http(address, "GET", "/v1/models", Some(API_KEY), None)?;
    ensure!(status == 200, "/v1/models with the key: {status} {body}");
    let models: Value = serde_json::from_str(&body)?;
    ensure!(
        models["data"][0]["id"] == NAME,
        "/v1/models does not list the served model name {NAME}: {body}"
    );
    let (status, _) = http(address, "GET", "/v1/models", None, None)?;
    ensure!(status == 401, "/v1/models without a key answered {status}");

    // Every pod of the second model started in the trace of the generation
    // that rolled it out: the template's traceparent.
    let traceparent = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("llmops.dev/traceparent"))
            .cloned()
            .unwrap_or_default()
    };
    let rolled_out = traceparent(&apps.get("chat-server").await?);
    let [_, trace_id, parent_id, _] = rolled_out.split('-').collect::<Vec<_>>()[..] else {
        anyhow::bail!("the template's traceparent is {rolled_out:?}");
    };
    receiver
        .wait_for(
            "the servers' start spans",
            Duration::from_secs(30),
            |spans| {
                spans
                    .iter()
                    .filter(|s| {
                        s.name == "server.start"
                            && s.trace_id == trace_id
                            && s.parent_span_id == parent_id
                            && s.service() == Some("llmops-server")
                            && s.resource.get("llmops.owner.name").map(String::as_str) == Some(NAME)
                    })
                    .count()
                    >= 2
            },
        )
        .await?;

    // A new generation that changes nothing about the pods (an analysis
    // setting) leaves the template, its traceparent included, as it runs: no
    // rollout.
    let before = apps.get("chat-server").await?;
    deployments
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rollout": {"analysis": {"maxErrorRate": 0.5}}}})),
        )
        .await?;
    let generation = deployments.get(NAME).await?.metadata.generation;
    wait_for(
        &mut operator,
        &deployments,
        NAME,
        "the new generation observed",
        CHILD_TIMEOUT,
        |md| {
            ensure!(
                md["status"]["observedGeneration"] == json!(generation),
                "observedGeneration {}",
                md["status"]["observedGeneration"]
            );
            Ok(())
        },
    )
    .await?;
    let after = apps.get("chat-server").await?;
    ensure!(
        after.metadata.generation == before.metadata.generation
            && traceparent(&after) == rolled_out,
        "the Deployment changed (generation {:?} → {:?}, traceparent {rolled_out} → {})",
        before.metadata.generation,
        after.metadata.generation,
        traceparent(&after)
    );
    serving_pods.stop().await;
    drop(operator);
    ns.delete(cluster).await
}
