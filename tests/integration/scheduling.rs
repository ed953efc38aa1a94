//! Pods of Deployments and Jobs are scheduled onto kwok's simulated nodes.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use llmops_tests::{Cluster, TestNamespace, eventually};
use serde_json::{Value, json};

/// A container the `restricted` Pod Security level admits.
fn restricted_container(resources: Value) -> Value {
    json!({
        "name": "main",
        "image": "registry.k8s.io/pause:3.10",
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

/// The pods matching `selector` once `count` of them are in `phases` on a node.
async fn placed_pods(
    pods: &Api<Pod>,
    selector: &str,
    count: usize,
    phases: &[&str],
) -> anyhow::Result<Vec<Pod>> {
    eventually(
        &format!("{count} pods {selector} in {phases:?}"),
        Duration::from_secs(90),
        || async {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await?
                .items;
            let placed: Vec<Pod> = list
                .into_iter()
                .filter(|p| {
                    let phase = p
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .unwrap_or_default();
                    let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
                    phases.contains(&phase) && node.is_some()
                })
                .collect();
            ensure!(placed.len() >= count, "{} of {count} so far", placed.len());
            Ok(placed)
        },
    )
    .await
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

#[tokio::test]
async fn deployment_pods_run_on_simulated_nodes() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let client = cluster.client().await?;
    let ns = TestNamespace::create(cluster, "deployment").await?;
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [restricted_container(json!({"requests": {"cpu": "100m"}}))]}
            }
        }
    }))?;
    Api::<Deployment>::namespaced(client.clone(), ns.name())
        .create(&PostParams::default(), &deployment)
        .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let placed = placed_pods(&pods, "app=web", 2, &["Running"]).await?;
    let nodes: Api<Node> = Api::all(client);
    for pod in &placed {
        let node = nodes
            .get(node_of(pod))
            .await
            .with_context(|| format!("node {}", node_of(pod)))?;
        let labels = node.metadata.labels.unwrap_or_default();
        ensure!(
            labels.get("type").map(String::as_str) == Some("kwok"),
            "{} is not a kwok node",
            node_of(pod)
        );
    }
    ns.delete(cluster).await
}

#[tokio::test]
async fn gpu_job_pod_lands_on_a_gpu_node() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let client = cluster.client().await?;
    let ns = TestNamespace::create(cluster, "gpu-job").await?;
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "train"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [restricted_container(json!({"limits": {"nvidia.com/gpu": "1"}}))]
                }
            }
        }
    }))?;
    Api::<Job>::namespaced(client.clone(), ns.name())
        .create(&PostParams::default(), &job)
        .await?;

    // Running by default; Succeeded when the cluster runs with LLMOPS_KWOK_JOB_COMPLETE=1.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let placed = placed_pods(&pods, "app=train", 1, &["Running", "Succeeded"]).await?;
    let node = Api::<Node>::all(client).get(node_of(&placed[0])).await?;
    let labels = node.metadata.labels.unwrap_or_default();
    ensure!(
        labels.get("llmops.dev/gpu").map(String::as_str) == Some("true"),
        "the GPU pod landed on {}, not a GPU node",
        node_of(&placed[0])
    );
    ns.delete(cluster).await
}
