//! End to end, the whole quickstart on the real control plane, as a user's local
//! cluster runs it: the five manifests of `examples/quickstart/` applied at once,
//! and every pod the operator creates run by the `local-node` binary (the real
//! `trainer` for prepare, prepare, pretrain and finetune, the real `server` for
//! the ModelDeployment). Each kind waits for the one before it, and the lineage
//! chains by digest from the served model back to the data. A pod whose command
//! the local node cannot run is reported as the kubelet reports an image it
//! cannot pull.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use llmops_crds::{Dataset, FineTune, ModelDeployment, PretrainJob};
use llmops_tests::local::http;
use llmops_tests::node::LocalNode;
use llmops_tests::operator::Operator;
use llmops_tests::probe::pod_ready;
use llmops_tests::replay::tail;
use llmops_tests::{Cluster, TestNamespace, eventually, workspace_root};
use serde_json::{Value, json};

use crate::e2e_dataset::{CHILD_TIMEOUT, TRAINER_TIMEOUT, has_condition, wait_for};

fn digest(object: &Value, pointer: &str) -> anyhow::Result<String> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_string)
        .with_context(|| format!("no digest at {pointer}: {}", object["status"]))
}

/// The error, with what the local node printed and the tail of each Job pod's
/// log.
fn with_node_log(err: anyhow::Error, node: &LocalNode, namespace: &str) -> anyhow::Error {
    let mut text = format!("{err:#}\nlocal-node:\n{}", tail(&node.log(), 40));
    for pod in std::fs::read_dir(node.pods_dir().join(namespace))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = pod.file_name().to_string_lossy().to_string();
        text.push_str(&format!(
            "\n--- {name}:\n{}",
            tail(&node.pod_log(namespace, &name), 15)
        ));
    }
    anyhow::anyhow!(text)
}

#[tokio::test]
async fn the_quickstart_runs_from_data_to_a_served_model() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-pipeline").await?;
    let mut operator = Operator::start(cluster, &ns).await?;
    let node = LocalNode::start(cluster, ns.name())?;
    let client = cluster.client().await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let pretrains: Api<PretrainJob> = Api::namespaced(client.clone(), ns.name());
    let finetunes: Api<FineTune> = Api::namespaced(client.clone(), ns.name());
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());

    let examples = workspace_root().join("examples/quickstart");
    ns.apply(cluster, &examples).await?;
    let explain = |e: anyhow::Error| with_node_log(e, &node, ns.name());

    // Data: the corpus, then the Q&A set with the corpus's tokenizer.
    let ready = |o: &Value| has_condition(o, "Ready", "True");
    let stories = wait_for(
        &mut operator,
        &datasets,
        "quickstart-stories",
        "the corpus Ready",
        TRAINER_TIMEOUT,
        ready,
    )
    .await
    .map_err(explain)?;
    let qa = wait_for(
        &mut operator,
        &datasets,
        "quickstart-qa",
        "the Q&A set Ready",
        TRAINER_TIMEOUT,
        ready,
    )
    .await
    .map_err(explain)?;

    // The base model, then the fine-tune on top of it.
    let base = wait_for(
        &mut operator,
        &pretrains,
        "quickstart-base",
        "the base model Ready",
        TRAINER_TIMEOUT,
        ready,
    )
    .await
    .map_err(explain)?;
    let tuned = wait_for(
        &mut operator,
        &finetunes,
        "quickstart-qa",
        "the fine-tune Ready",
        TRAINER_TIMEOUT,
        |o| {
            has_condition(o, "Ready", "True")?;
            ensure!(
                o.pointer("/status/gate/passed") == Some(&json!(true)),
                "gate: {}",
                o["status"]["gate"]
            );
            Ok(())
        },
    )
    .await
    .map_err(explain)?;

    // It learned: the held-out perplexity fell well below the base model's.
    let scores = &tuned["status"]["evaluation"];
    let (tuned_ppl, base_ppl) = (
        scores["perplexity"].as_f64().context("no perplexity")?,
        scores["basePerplexity"]
            .as_f64()
            .context("no basePerplexity")?,
    );
    ensure!(
        tuned_ppl * 5.0 < base_ppl,
        "fine-tuned perplexity {tuned_ppl} vs the base model's {base_ppl}"
    );

    // Served: the ModelDeployment picks up the fine-tune's artifact; its pod runs
    // the real server, Ready once it has loaded the model.
    let tuned_digest = digest(&tuned, "/status/artifact/digest")?;
    let served = wait_for(
        &mut operator,
        &deployments,
        "quickstart",
        "the fine-tuned model served",
        CHILD_TIMEOUT,
        |o| {
            has_condition(o, "Ready", "True")?;
            ensure!(
                o.pointer("/status/model/current/digest") == Some(&json!(tuned_digest)),
                "serving {}",
                o["status"]["model"]
            );
            Ok(())
        },
    )
    .await
    .map_err(explain)?;

    // Lineage, by digest, from the served model back to the data.
    ensure!(digest(&served, "/status/model/current/digest")? == tuned_digest);
    ensure!(
        digest(&tuned, "/status/lineage/baseModel/digest")?
            == digest(&base, "/status/artifact/digest")?,
        "the fine-tune's base is not the pretrained model"
    );
    ensure!(
        digest(&tuned, "/status/lineage/dataset/digest")?
            == digest(&qa, "/status/artifact/digest")?,
        "the fine-tune's data is not the Q&A set"
    );
    ensure!(
        digest(&base, "/status/dataset/digest")? == digest(&stories, "/status/artifact/digest")?,
        "the base model's data is not the corpus"
    );

    // The real server answers a completion at the ready pod's IP, as the
    // quickstart asks it.
    let serving = pods
        .list(&ListParams::default().labels("llmops.dev/modeldeployment=quickstart"))
        .await?
        .items
        .into_iter()
        .find(pod_ready)
        .context("no ready serving pod")
        .map_err(explain)?;
    let address = serving_address(&serving)?;
    let answer = eventually("the server to answer", Duration::from_secs(60), || async {
        let (status, body) = http(
            address,
            "POST",
            "/v1/completions",
            None,
            Some(&json!({"model": "quickstart", "prompt": "Q: Where did Cleo go in the morning?\nA: ",
                    "max_tokens": 8, "temperature": 0})),
        )?;
        ensure!(status == 200, "/v1/completions: {status} {body}");
        Ok(serde_json::from_str::<Value>(&body)?)
    })
    .await
    .map_err(explain)?;
    ensure!(
        answer["usage"]["completion_tokens"]
            .as_i64()
            .is_some_and(|n| n > 0),
        "{answer}"
    );

    // Each object that ran trainer pods confined them with a NetworkPolicy of
    // its own (a Dataset and a FineTune share the name quickstart-qa).
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns.name());
    let mut names: Vec<String> = policies
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    ensure!(
        names
            == [
                "quickstart-base-pretrainjob-trainer",
                "quickstart-qa-dataset-trainer",
                "quickstart-qa-finetune-trainer",
                "quickstart-server",
                "quickstart-stories-dataset-trainer",
            ],
        "NetworkPolicies {names:?}"
    );

    // The ModelDeployment's Service answers at its ClusterIP: local-node forwards
    // it to the ready pod, as kube-proxy would.
    let services: Api<Service> = Api::namespaced(client.clone(), ns.name());
    let service = services.get("quickstart").await?;
    let spec = service.spec.context("the Service has no spec")?;
    let cluster_ip = spec.cluster_ip.context("the Service has no ClusterIP")?;
    let port = spec
        .ports
        .and_then(|p| p.first().map(|p| p.port))
        .context("the Service has no port")?;
    let at_service: std::net::SocketAddr = format!("{cluster_ip}:{port}").parse()?;
    eventually(
        "the Service's ClusterIP to answer",
        Duration::from_secs(30),
        || async {
            let (status, body) = http(at_service, "GET", "/v1/models", None, None)?;
            ensure!(
                status == 200 && body.contains("quickstart"),
                "/v1/models: {status} {body}"
            );
            Ok(())
        },
    )
    .await
    .map_err(explain)?;

    // A pod that is none of the operator's: reported, not run.
    let foreign: Pod = serde_json::from_value(json!({
        "metadata": {"name": "not-ours"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "shell", "image": "busybox", "command": ["sh", "-c", "true"],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }
    }))?;
    pods.create(&PostParams::default(), &foreign).await?;
    eventually(
        "the foreign pod reported as an image that cannot be pulled",
        CHILD_TIMEOUT,
        || async {
            let pod = pods.get("not-ours").await?;
            let waiting = pod
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.into_iter().next())
                .and_then(|c| c.state)
                .and_then(|s| s.waiting)
                .context("not waiting")?;
            ensure!(
                waiting.reason.as_deref() == Some("ErrImagePull"),
                "{waiting:?}"
            );
            ensure!(
                waiting
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("\"sh\"")),
                "{waiting:?}"
            );
            Ok(())
        },
    )
    .await
    .map_err(explain)?;

    let mut node = node;
    node.stop()?;
    drop(operator);
    ns.delete(cluster).await
}

/// `podIP:port` of a serving pod's first declared port.
fn serving_address(pod: &Pod) -> anyhow::Result<std::net::SocketAddr> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .context("the serving pod has no IP")?;
    let port = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.ports.as_ref())
        .and_then(|p| p.first())
        .context("the serving pod declares no port")?
        .container_port;
    Ok(format!("{ip}:{port}").parse()?)
}
