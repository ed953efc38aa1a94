//! ModelDeployments with `spec.server.runtime: vllm`, through the real operator
//! on the real control plane.
//!
//! `vllm_deployment_is_built_admitted_restricted_and_scheduled_on_gpus`, in a
//! namespace enforcing Pod Security `restricted`: the Deployment runs `trainer
//! fetch-model` as the init container and vLLM tensor parallel over the pod's
//! two GPUs with the API key from the Secret; its pod is admitted as
//! `restricted` and scheduled on a GPU node of the simulated cluster; the
//! built-in server given two GPUs is refused naming `spec.resources.gpus`, and
//! the vLLM Deployment is left as it was.
//!
//! `vllm_lifecycle_through_the_init_container_and_the_stand_in`: the lifecycle,
//! with the pods run by the `local-node` binary. A tiny model in two revisions
//! on a Hub on loopback (`llmops_store::test_hub`; `HF_ENDPOINT` given to the
//! pods by `local-node --env`, the route a cluster's pods would have); the pod
//! (two GPUs of a simulated GPU node) gets ready through its init container,
//! the real `trainer fetch-model` downloading the model into the pod's
//! emptyDir; requests need the Secret's key (401 without, or with another);
//! `/metrics` shows vLLM's metric names only and `status.metrics` is filled from
//! them under traffic through the Service; a new revision rolls the pods
//! (RollingUpdate) with not one request through the Service failing, and the
//! new pod, initialised by its own download, answers with the new weights; a
//! revision the Hub lacks leaves the new pod's init container failing and
//! restarted with back-off (`Init:CrashLoopBackOff`), its server never started,
//! while the old pod serves on.
//!
//! The stand-in, exactly: vLLM cannot run here (no GPU, no vLLM), so the
//! container `python3 -m vllm.entrypoints.openai.api_server ...` that the
//! operator builds runs as the project's `server` binary, its flags translated
//! by `local-node`'s `vllm_standin` (`--tensor-parallel-size` checked against
//! the pod's two GPUs and otherwise ignored, the server running on the CPU)
//! and told to render its `/metrics` under vLLM's names and answer vLLM's
//! `/health` (`--metrics-names vllm`). So what answers the requests, and what
//! the metric values measure, is the built-in engine, not vLLM's; the pod
//! spec, the init container, the probes, the API key, the metric names the
//! monitor reads, and the rollouts are the real ones. vLLM's own `/metrics`
//! format is checked by the unit tests of `monitor::vllm` on a text in vLLM's
//! format.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use llmops_crds::ModelDeployment;
use llmops_local_node::probe::pod_ready;
use llmops_local_node::replay::tail;
use llmops_store::hub::RepoKind;
use llmops_store::test_hub::{TestHub, TestRepo};
use llmops_tests::local::{http, tiny_model_with};
use llmops_tests::node::LocalNode;
use llmops_tests::operator::Operator;
use llmops_tests::{Cluster, TestNamespace, eventually};
use serde_json::{Value, json};

use crate::e2e_dataset::{CHILD_TIMEOUT, condition, has_condition, wait_for};

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

/// The lifecycle's ModelDeployment: the Hub model at `revision`, two GPUs
/// (two tensor-parallel ranks), small enough for the stand-in on a CPU.
fn lifecycle_deployment(revision: &str) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": LIFECYCLE},
        "spec": {
            "model": {"uri": format!("hf://org/tiny@{revision}")},
            "server": {"runtime": "vllm", "maxBatch": 4, "maxContext": 128, "maxNewTokens": 16},
            "resources": {"gpus": 2, "cpu": "1", "memory": "1Gi"},
            "auth": {"apiKeySecretRef": {"name": KEYS_SECRET}},
        }
    })
}

const LIFECYCLE: &str = "tiny";
const API_KEY: &str = "sk-vllm-e2e";
/// The operator's monitoring, fast enough for a test (as e2e_serving's).
const MONITORING: [&str; 3] = [
    "--metrics-interval=1s",
    "--metrics-window=10s",
    "--metrics-status-interval=2s",
];
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(180);

/// A greedy completion of `model`'s pods.
fn completion() -> Value {
    json!({"model": LIFECYCLE, "prompt": "the old man sees a red house", "max_tokens": 8,
           "temperature": 0})
}

/// The tiny model's files (`tiny_model.py` with `args`).
fn tiny_files(args: &[&str]) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let dir = tempfile::tempdir()?;
    tiny_model_with(dir.path(), args)?;
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        let name = path.file_name().context("a file without a name")?;
        files.insert(name.to_string_lossy().into_owned(), std::fs::read(&path)?);
    }
    Ok(files)
}

fn downloads(hub: &TestHub) -> usize {
    hub.requests()
        .iter()
        .filter(|r| r.contains("/resolve/"))
        .count()
}

/// The one pod of the deployment that is Ready and not being deleted, with
/// its address (`podIP:8000`).
async fn ready_pod(pods: &Api<Pod>) -> anyhow::Result<(Pod, SocketAddr)> {
    let list = pods
        .list(&ListParams::default().labels(&format!("llmops.dev/modeldeployment={LIFECYCLE}")))
        .await?;
    let ready: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
        .collect();
    let [pod] = <[Pod; 1]>::try_from(ready)
        .map_err(|found| anyhow::anyhow!("{} ready pods", found.len()))?;
    let ip: IpAddr = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .context("no pod IP")?
        .parse()?;
    Ok((pod, SocketAddr::new(ip, 8000)))
}

async fn call(
    address: SocketAddr,
    method: &'static str,
    path: &'static str,
    key: Option<&'static str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, String)> {
    tokio::task::spawn_blocking(move || http(address, method, path, key, body.as_ref())).await?
}

/// The completion's text, from a 200 answer.
fn text(answer: &(u16, String)) -> anyhow::Result<String> {
    ensure!(answer.0 == 200, "answered {}: {}", answer.0, answer.1);
    let body: Value = serde_json::from_str(&answer.1)?;
    body["choices"][0]["text"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no choices[0].text: {body}"))
}

/// The pod got ready through its init container, which downloaded the model
/// into the pod's emptyDir (a directory, not a link).
fn check_initialised(pod: &Pod, node: &LocalNode, namespace: &str) -> anyhow::Result<()> {
    let value = serde_json::to_value(pod)?;
    let init = &value["status"]["initContainerStatuses"][0];
    ensure!(
        init["name"] == "fetch-model"
            && init["state"]["terminated"]["exitCode"] == 0
            && init["state"]["terminated"]["reason"] == "Completed"
            && init["ready"] == true,
        "init container status: {init}"
    );
    condition(&value, "Initialized")
        .filter(|c| c["status"] == "True")
        .with_context(|| format!("not Initialized: {}", value["status"]))?;
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let model = node
        .pods_dir()
        .join(namespace)
        .join(name)
        .join("volumes/models/model");
    let meta = std::fs::symlink_metadata(&model)
        .with_context(|| format!("no model at {}", model.display()))?;
    ensure!(
        meta.is_dir() && model.join("config.json").is_file(),
        "{} is not the downloaded model directory",
        model.display()
    );
    let log = node.pod_log(namespace, name);
    ensure!(
        log.starts_with("local-node: vLLM stand-in:"),
        "the server log does not say it is the stand-in:\n{}",
        tail(&log, 5)
    );
    Ok(())
}

/// `client` requests with the key to the Service, until `stop`; returns
/// (answered 200, failures).
fn traffic(
    service: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::task::spawn_blocking(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            match http(
                service,
                "POST",
                "/v1/completions",
                Some(API_KEY),
                Some(&completion()),
            ) {
                Ok((200, _)) => ok += 1,
                Ok((status, body)) => failed.push(format!("{status}: {body}")),
                Err(e) => failed.push(format!("{e:#}")),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (ok, failed)
    })
}

#[tokio::test]
async fn vllm_lifecycle_through_the_init_container_and_the_stand_in() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-vllm-life").await?;
    let mut operator = Operator::start_with(cluster, &ns, &MONITORING).await?;
    let client = cluster.client().await?;
    let namespace = ns.name().to_string();

    // The Hub on loopback: two revisions of a tiny model, different weights.
    let hub = TestHub::start().await?;
    let mut repo = TestRepo::new();
    repo.commit("v1", tiny_files(&[])?);
    repo.commit("v2", tiny_files(&["--seed", "1"])?);
    hub.add(RepoKind::Model, "org/tiny", repo);

    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(KEYS_SECRET.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "api-key".to_string(),
            ByteString(API_KEY.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    let node = LocalNode::start_with_env(cluster, &namespace, &[("HF_ENDPOINT", &hub.endpoint)])?;

    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let apply = PatchParams::apply(llmops_tests::FIELD_MANAGER).force();
    let outcome = async {
        deployments
            .patch(LIFECYCLE, &apply, &Patch::Apply(lifecycle_deployment("v1")))
            .await
            .context("applying the ModelDeployment")?;
        let serving = |uri: &'static str| {
            move |object: &Value| {
                ensure!(
                    object.pointer("/status/model/current/uri") == Some(&json!(uri)),
                    "not serving {uri}"
                );
                has_condition(object, "Ready", "True")
            }
        };
        wait_for(
            &mut operator,
            &deployments,
            LIFECYCLE,
            "serving v1",
            LIFECYCLE_TIMEOUT,
            serving("hf://org/tiny@v1"),
        )
        .await?;
        let (first, address) = eventually("one ready pod", LIFECYCLE_TIMEOUT, || {
            let pods = pods.clone();
            async move { ready_pod(&pods).await }
        })
        .await?;
        check_initialised(&first, &node, &namespace)?;
        let fetched = downloads(&hub);
        ensure!(fetched > 0, "the init container downloaded nothing from the Hub");

        // The API key from the Secret: 401 without it, answers with it.
        let refused = call(address, "POST", "/v1/completions", None, Some(completion())).await?;
        ensure!(refused.0 == 401, "without the key: {} {}", refused.0, refused.1);
        let wrong =
            call(address, "POST", "/v1/completions", Some("sk-wrong"), Some(completion())).await?;
        ensure!(wrong.0 == 401, "with a wrong key: {} {}", wrong.0, wrong.1);
        let before = text(
            &call(address, "POST", "/v1/completions", Some(API_KEY), Some(completion())).await?,
        )?;
        let health = call(address, "GET", "/health", None, None).await?;
        ensure!(health.0 == 200, "/health: {health:?}");
        let exposition = call(address, "GET", "/metrics", None, None).await?.1;
        for series in [
            "vllm:num_requests_running{model_name=\"tiny\",engine=\"0\"}",
            "vllm:e2e_request_latency_seconds_bucket{",
            "vllm:time_to_first_token_seconds_bucket{",
            "http_requests_total{handler=\"/v1/completions\",method=\"POST\",status=\"2xx\"}",
        ] {
            ensure!(exposition.contains(series), "no {series} in /metrics:\n{exposition}");
        }
        // Only vLLM's names: status.metrics below can come from no other.
        ensure!(
            !exposition.contains("llmops_server_"),
            "the server's own names in /metrics:\n{exposition}"
        );

        // Traffic through the Service; status.metrics from vLLM's names.
        let service = Api::<Service>::namespaced(client.clone(), &namespace)
            .get(LIFECYCLE)
            .await?;
        let spec = service.spec.context("the Service has no spec")?;
        let ip: IpAddr = spec.cluster_ip.as_deref().context("no clusterIP")?.parse()?;
        let port = spec.ports.iter().flatten().next().context("no port")?.port;
        let service = SocketAddr::new(ip, u16::try_from(port)?);
        let stop = Arc::new(AtomicBool::new(false));
        let load = traffic(service, stop.clone());
        let figures = wait_for(
            &mut operator,
            &deployments,
            LIFECYCLE,
            "status.metrics from the vLLM names",
            Duration::from_secs(60),
            |object| {
                let m = &object["status"]["metrics"];
                ensure!(
                    m["requestsPerSecond"].as_f64().is_some_and(|r| r > 0.0)
                        && m["p95LatencyMs"].as_f64().is_some_and(|l| l > 0.0)
                        && m["p95TimeToFirstTokenMs"].as_f64().is_some_and(|l| l > 0.0)
                        && m["tokensPerSecond"].as_f64().is_some_and(|t| t > 0.0),
                    "status.metrics: {m}"
                );
                Ok(())
            },
        )
        .await?["status"]["metrics"]
            .clone();
        eprintln!("status.metrics under traffic through the stand-in: {figures}");
        ensure!(figures["errorRate"] == json!(0.0), "errorRate: {figures}");

        // A new model rolls the pods while the traffic goes on; the new pod
        // fetches v2 through its own init container.
        let rolling = Api::<Deployment>::namespaced(client.clone(), &namespace)
            .get(&format!("{LIFECYCLE}-server"))
            .await?;
        let strategy = rolling.spec.and_then(|s| s.strategy).and_then(|s| s.type_);
        ensure!(strategy.as_deref() == Some("RollingUpdate"), "strategy: {strategy:?}");
        deployments
            .patch(LIFECYCLE, &apply, &Patch::Apply(lifecycle_deployment("v2")))
            .await?;
        wait_for(
            &mut operator,
            &deployments,
            LIFECYCLE,
            "serving v2",
            LIFECYCLE_TIMEOUT,
            serving("hf://org/tiny@v2"),
        )
        .await?;
        let (second, address) = eventually("the new pod alone ready", LIFECYCLE_TIMEOUT, || {
            let pods = pods.clone();
            let first = first.metadata.name.clone();
            async move {
                let (pod, address) = ready_pod(&pods).await?;
                ensure!(pod.metadata.name != first, "the old pod is still the ready one");
                Ok((pod, address))
            }
        })
        .await?;
        stop.store(true, Ordering::SeqCst);
        let (answered, failed) = load.await?;
        ensure!(
            failed.is_empty(),
            "{} of {} requests through the Service failed during the rollout: {:?}",
            failed.len(),
            answered + failed.len(),
            &failed[..failed.len().min(5)]
        );
        check_initialised(&second, &node, &namespace)?;
        ensure!(
            downloads(&hub) > fetched,
            "the new pod's init container downloaded nothing"
        );
        let after = text(
            &call(address, "POST", "/v1/completions", Some(API_KEY), Some(completion())).await?,
        )?;
        ensure!(
            after != before,
            "the new model answers as the old one did: {after:?}"
        );
        eprintln!(
            "rollout v1 -> v2: {answered} requests through the Service answered, none failed; greedy text {before:?} -> {after:?}"
        );

        // A revision the Hub lacks: the new pod's init container fails, and is
        // restarted with back-off, as the kubelet's; its server never starts,
        // and the v2 pod goes on serving.
        deployments
            .patch(LIFECYCLE, &apply, &Patch::Apply(lifecycle_deployment("v9")))
            .await?;
        let serving_pod = second.metadata.name.clone();
        let failing = eventually(
            "the v9 pod in Init:CrashLoopBackOff",
            LIFECYCLE_TIMEOUT,
            || {
                let pods = pods.clone();
                let serving_pod = serving_pod.clone();
                async move {
                    let list = pods
                        .list(&ListParams::default().labels(&format!(
                            "llmops.dev/modeldeployment={LIFECYCLE}"
                        )))
                        .await?;
                    let pod = list
                        .items
                        .into_iter()
                        .find(|p| p.metadata.name != serving_pod)
                        .context("no new pod yet")?;
                    let value = serde_json::to_value(&pod)?;
                    let init = &value["status"]["initContainerStatuses"][0];
                    let failed = &init["lastState"]["terminated"];
                    ensure!(
                        init["restartCount"].as_i64().is_some_and(|n| n >= 2)
                            && failed["reason"] == "Error"
                            && failed["exitCode"].as_i64().is_some_and(|c| c != 0)
                            && failed["message"].as_str().is_some_and(|m| !m.is_empty()),
                        "init container: {init}"
                    );
                    ensure!(!pod_ready(&pod), "the failing pod is ready");
                    Ok(pod)
                }
            },
        )
        .await?;
        let name = failing.metadata.name.clone().unwrap_or_default();
        ensure!(
            node.pod_log(&namespace, &name).is_empty(),
            "the server of a pod whose init container failed started:\n{}",
            node.pod_log(&namespace, &name)
        );
        let still = text(
            &call(address, "POST", "/v1/completions", Some(API_KEY), Some(completion())).await?,
        )?;
        ensure!(still == after, "the v2 pod answers differently: {still:?}");
        let init = serde_json::to_value(&failing)?["status"]["initContainerStatuses"][0].clone();
        eprintln!(
            "missing revision: init container restarted {} times, last exit {}: {}",
            init["restartCount"], init["lastState"]["terminated"]["exitCode"],
            init["lastState"]["terminated"]["message"]
        );
        anyhow::Ok(())
    }
    .await;
    outcome.map_err(|e| anyhow::anyhow!("{e:#}\nlocal-node:\n{}", tail(&node.log(), 30)))?;
    drop(node);
    ns.delete(cluster).await
}
