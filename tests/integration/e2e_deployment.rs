//! End to end, ModelDeployment: the real operator (as the chart's ServiceAccount)
//! on the real control plane serves a model given by URI, in a namespace that
//! enforces Pod Security "restricted": the Deployment, its Service and budget, the
//! status once kwok reports the pods ready, and a rolling update to a new model.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use llmops_crds::ModelDeployment;
use llmops_tests::operator::Operator;
use llmops_tests::{Cluster, TestNamespace};
use serde_json::{Value, json};

use crate::e2e_dataset::{CHILD_TIMEOUT, ensure_restricted_template, has_condition, wait_for};

const NAME: &str = "chat";
const KEYS_SECRET: &str = "chat-keys";
const PORT: i64 = 8080;

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
    let mut operator = Operator::start(cluster, &ns).await?;
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
            ByteString(b"sk-e2e-one\n".to_vec()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;

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

    // kwok reports the pods ready: the ModelDeployment is Ready and says where.
    let ready = wait_for(
        &mut operator,
        &deployments,
        NAME,
        "the ModelDeployment to serve the first model",
        CHILD_TIMEOUT,
        |md| serving(md, &first),
    )
    .await?;
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
    ensure!(
        message.contains("autoscaling is not active"),
        "the Ready message hides that autoscaling is off: {message}"
    );
    ensure!(
        !serde_json::to_string(&ready)?.contains("sk-e2e-one"),
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
        CHILD_TIMEOUT,
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
    Ok(())
}
