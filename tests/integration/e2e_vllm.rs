//! A ModelDeployment with `spec.server.runtime: vllm`, through the real operator
//! on the real control plane, in a namespace enforcing Pod Security
//! `restricted`: the Deployment runs `trainer fetch-model` as the init container
//! and vLLM tensor parallel over the pod's two GPUs with the API key from the
//! Secret; its pod is admitted as `restricted` and scheduled on a GPU node of
//! the simulated cluster; the built-in server given two GPUs is refused naming
//! `spec.resources.gpus`, and the vLLM Deployment is left as it was.
//!
//! vLLM itself does not run here (no GPU, and the local node runs only the
//! project's `trainer` and `server` binaries), so this stops where its process
//! would start: serving, rollouts and `status.metrics` on vLLM's own metric
//! names are covered by the unit tests of `controller::deployment::vllm` and
//! `monitor::vllm` (on a `/metrics` text in vLLM's format), not end to end.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use llmops_crds::ModelDeployment;
use llmops_tests::operator::Operator;
use llmops_tests::{Cluster, TestNamespace, eventually};
use serde_json::{Value, json};

use crate::e2e_dataset::{CHILD_TIMEOUT, condition, wait_for};

const NAME: &str = "big";
const KEYS_SECRET: &str = "big-keys";

fn model_deployment(runtime: &str) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": "hf://org/big@v1"},
            "server": {"runtime": runtime, "dtype": "bf16", "maxBatch": 32, "maxContext": 4096},
            "resources": {"gpus": 2, "cpu": "4", "memory": "32Gi"},
            "auth": {"apiKeySecretRef": {"name": KEYS_SECRET}},
        }
    })
}

fn flag<'a>(args: &'a Value, name: &str) -> Option<&'a str> {
    let args = args.as_array()?;
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.as_str()
}

#[tokio::test]
async fn vllm_deployment_is_built_admitted_restricted_and_scheduled_on_gpus() -> anyhow::Result<()>
{
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-vllm").await?;
    let mut operator = Operator::start(cluster, &ns).await?;
    let client = cluster.client().await?;
    let namespace = ns.name().to_string();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(KEYS_SECRET.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "api-key".to_string(),
            ByteString(b"sk-vllm".to_vec()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;

    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &namespace);
    let apply = PatchParams::apply(llmops_tests::FIELD_MANAGER).force();
    deployments
        .patch(NAME, &apply, &Patch::Apply(model_deployment("vllm")))
        .await
        .context("applying the ModelDeployment")?;

    let apps: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let live = wait_for(
        &mut operator,
        &apps,
        "big-server",
        "Deployment big-server",
        CHILD_TIMEOUT,
        |_| Ok(()),
    )
    .await?;
    let pod = &live["spec"]["template"]["spec"];
    let fetch = &pod["initContainers"][0];
    ensure!(
        fetch["name"] == "fetch-model"
            && fetch["command"] == json!(["trainer"])
            && flag(&fetch["args"], "--uri") == Some("hf://org/big@v1"),
        "init container: {fetch}"
    );
    let server = &pod["containers"][0];
    ensure!(
        server["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("vllm/vllm-openai:")),
        "server image: {}",
        server["image"]
    );
    for (name, value) in [
        ("--tensor-parallel-size", "2"),
        ("--served-model-name", NAME),
        ("--dtype", "bfloat16"),
        ("--max-model-len", "4096"),
        ("--max-num-seqs", "32"),
    ] {
        ensure!(
            flag(&server["args"], name) == Some(value),
            "{name} is not {value}: {}",
            server["args"]
        );
    }
    ensure!(
        server["resources"]["limits"]["nvidia.com/gpu"] == "2",
        "resources: {}",
        server["resources"]
    );
    let key = server["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "VLLM_API_KEY"))
        .context("no VLLM_API_KEY")?;
    ensure!(
        key.get("value").is_none() && key["valueFrom"]["secretKeyRef"]["name"] == KEYS_SECRET,
        "VLLM_API_KEY: {key}"
    );
    ensure!(
        server["readinessProbe"]["httpGet"]["path"] == "/health",
        "probes: {server}"
    );

    // The ReplicaSet's pod passed the namespace's `restricted` admission and
    // was placed on a node with the GPUs.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = format!("llmops.dev/modeldeployment={NAME}");
    let node = eventually("the vLLM pod on a node", CHILD_TIMEOUT, || {
        let pods = pods.clone();
        let selector = selector.clone();
        async move {
            let list = pods.list(&ListParams::default().labels(&selector)).await?;
            let node = list
                .items
                .iter()
                .find_map(|p| p.spec.as_ref()?.node_name.clone())
                .context("no pod scheduled yet")?;
            Ok(node)
        }
    })
    .await?;
    let node = Api::<Node>::all(client.clone()).get(&node).await?;
    let gpus = node
        .status
        .and_then(|s| s.allocatable)
        .and_then(|a| a.get("nvidia.com/gpu").cloned())
        .map(|q| q.0);
    ensure!(
        gpus.as_deref().is_some_and(|g| g != "0"),
        "the vLLM pod landed on {}, which has no GPUs",
        node.metadata.name.unwrap_or_default()
    );

    // The built-in server would leave one of the two GPUs idle: refused, and
    // what served before is kept.
    deployments
        .patch(NAME, &apply, &Patch::Apply(model_deployment("builtin")))
        .await?;
    wait_for(
        &mut operator,
        &deployments,
        NAME,
        "Stalled naming spec.resources.gpus",
        CHILD_TIMEOUT,
        |object| {
            let stalled = condition(object, "Stalled").context("no Stalled condition")?;
            ensure!(
                stalled["status"] == "True"
                    && stalled["reason"] == "InvalidSpec"
                    && stalled["observedGeneration"] == object["metadata"]["generation"]
                    && stalled["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("spec.resources.gpus")
                            && m.contains("spec.server.runtime: vllm")),
                "Stalled: {stalled}"
            );
            Ok(())
        },
    )
    .await?;
    let kept = apps.get("big-server").await?;
    let image = kept
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.first().and_then(|c| c.image.clone()))
        .unwrap_or_default();
    ensure!(
        image.starts_with("vllm/vllm-openai:"),
        "the refused spec replaced the serving pods: {image}"
    );
    ns.delete(cluster).await
}
