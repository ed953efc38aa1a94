//! End to end, LoRA adapters beside a served model: the real operator, the real
//! `trainer` fine-tuning two adapters (`output.mergeAdapter: false`) on a tiny
//! base model, and the real `server` replayed for the ModelDeployment's pod.
//!
//! The deployment serves the base and one adapter (each a model in
//! `/v1/models`, the adapter with the base as `parent`); a second adapter is
//! then added to `spec.adapters` and served by the same pod, never restarted
//! (same UID, `restartCount` 0, the Deployment unchanged): the operator writes
//! the adapters into a ConfigMap the pod mounts, the local node updates the
//! mounted file as the kubelet does, and the server loads what it names.
//! `status.adapters` carries each adapter's digest, FineTune and lineage, and
//! that the pod has it loaded.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use llmops_crds::{Dataset, FineTune, ModelDeployment};
use llmops_tests::local::{http, tiny_model};
use llmops_tests::operator::Operator;
use llmops_tests::replay::{Replayer, tail};
use llmops_tests::runner::PodRunner;
use llmops_tests::{Cluster, TestNamespace, workspace_root};
use serde_json::{Value, json};

use crate::e2e_dataset::{CHILD_TIMEOUT, has_condition, replay_job, wait_for, wait_for_job};

const NAME: &str = "chat";
const DATASET: &str = "qa-set";
/// Fast scrapes and status writes, so a loaded adapter shows in seconds.
const MONITORING: [&str; 3] = [
    "--metrics-interval=1s",
    "--metrics-window=10s",
    "--metrics-status-interval=2s",
];
const READY_TIMEOUT: Duration = Duration::from_secs(120);

fn fine_tune(name: &str, base_model: &str, seed: u64) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": base_model},
            "datasetRef": {"name": DATASET},
            "method": {"type": "lora", "lora": {"rank": 4, "alpha": 8}},
            "training": {"epochs": 1, "batchSize": 8, "microBatchSize": 8,
                         "learningRate": 5.0e-2, "seed": seed},
            "evaluation": {"metrics": ["perplexity"], "samples": 4,
                           "gates": {"maxPerplexity": 1.0e9}},
            "output": {"mergeAdapter": false},
            "resources": {"cpu": "2", "memory": "2Gi"},
        }
    })
}

fn model_deployment(base_model: &str, adapters: Value) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": base_model},
            "adapters": adapters,
            "server": {"maxBatch": 4, "maxContext": 128, "maxNewTokens": 16, "threads": 1},
            "resources": {"cpu": "1", "memory": "1Gi"},
        }
    })
}

/// Prepares the quickstart's Q&A set with the base model's tokenizer; its digest.
async fn prepare_dataset(
    operator: &mut Operator,
    client: &Client,
    replayer: &Replayer,
    base_model: &str,
) -> anyhow::Result<String> {
    let path = workspace_root().join("examples/quickstart/02-dataset-qa.yaml");
    let mut dataset: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path)?)?;
    dataset["metadata"] = json!({"name": DATASET});
    dataset["spec"]["tokenizer"] = json!({"uri": format!("{base_model}/tokenizer.json")});
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), operator.namespace());
    let dataset: Dataset = serde_json::from_value(dataset)?;
    datasets
        .patch(
            DATASET,
            &PatchParams::apply(llmops_tests::FIELD_MANAGER),
            &Patch::Apply(&dataset),
        )
        .await?;
    let prepare = format!("{DATASET}-prepare-g1");
    wait_for_job(operator, client, &prepare).await?;
    let exit = replay_job(operator, replayer, &prepare).await?;
    ensure!(
        exit.code == 0,
        "trainer prepare failed:\n{}",
        tail(&exit.log, 40)
    );
    let prepared = wait_for(
        operator,
        &datasets,
        DATASET,
        "the Dataset Ready",
        CHILD_TIMEOUT,
        |d| has_condition(d, "Ready", "True"),
    )
    .await?;
    prepared["status"]["artifact"]["digest"]
        .as_str()
        .map(str::to_string)
        .context("the Dataset has no digest")
}

/// Trains FineTune `name` for real; its adapter's artifact (uri, digest).
async fn train_adapter(
    operator: &mut Operator,
    client: &Client,
    replayer: &Replayer,
    name: &str,
    base_model: &str,
    seed: u64,
) -> anyhow::Result<(String, String)> {
    let fine_tunes: Api<FineTune> = Api::namespaced(client.clone(), operator.namespace());
    let ft: FineTune = serde_json::from_value(fine_tune(name, base_model, seed))?;
    fine_tunes
        .patch(
            name,
            &PatchParams::apply(llmops_tests::FIELD_MANAGER),
            &Patch::Apply(&ft),
        )
        .await?;
    let job = format!("{name}-finetune");
    wait_for_job(operator, client, &job).await?;
    let exit = replay_job(operator, replayer, &job).await?;
    ensure!(
        exit.code == 0,
        "trainer finetune {name} failed:\n{}",
        tail(&exit.log, 40)
    );
    let ready = wait_for(
        operator,
        &fine_tunes,
        name,
        &format!("FineTune {name} Ready"),
        CHILD_TIMEOUT,
        |f| has_condition(f, "Ready", "True"),
    )
    .await?;
    let artifact = &ready["status"]["artifact"];
    let uri = artifact["uri"].as_str().context("no artifact uri")?;
    ensure!(
        std::path::Path::new(uri.trim_start_matches("file://"))
            .join("adapter_config.json")
            .exists(),
        "FineTune {name} did not export an adapter at {uri}"
    );
    Ok((
        uri.to_string(),
        artifact["digest"].as_str().unwrap_or_default().to_string(),
    ))
}

/// The one serving pod: (name, UID, restart count).
async fn serving_pod(client: &Client, namespace: &str) -> anyhow::Result<(String, String, i32)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("llmops.dev/modeldeployment={NAME}")))
        .await?;
    let live: Vec<&Pod> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let [pod] = live.as_slice() else {
        anyhow::bail!("{} serving pods, not one", live.len());
    };
    let restarts = pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| c.restart_count)
        .sum();
    Ok((pod.name_any(), pod.uid().unwrap_or_default(), restarts))
}

/// `status.adapters[name]` serving the artifact on the one pod, with its lineage.
fn adapter_served(
    md: &Value,
    name: &str,
    fine_tune: &str,
    artifact: &(String, String),
    base_model: &str,
    dataset_digest: &str,
) -> anyhow::Result<()> {
    let adapters = md["status"]["adapters"]
        .as_array()
        .context("no status.adapters")?;
    let adapter = adapters
        .iter()
        .find(|a| a["name"] == name)
        .with_context(|| format!("no {name} in status.adapters: {adapters:?}"))?;
    ensure!(
        adapter["uri"] == artifact.0.as_str() && adapter["digest"] == artifact.1.as_str(),
        "{name} resolved to {adapter}"
    );
    ensure!(adapter["fineTuneRef"]["name"] == fine_tune, "{adapter}");
    let lineage = &adapter["lineage"];
    ensure!(
        lineage["baseModel"]["uri"] == base_model && lineage["dataset"]["digest"] == dataset_digest,
        "{name}'s lineage is {lineage}"
    );
    ensure!(
        adapter["ready"] == true && adapter["loaded"] == 1,
        "{name} not loaded on the pod: {adapter}"
    );
    Ok(())
}

/// The ids in `/v1/models` with their parents.
fn models(address: std::net::SocketAddr) -> anyhow::Result<Vec<(String, Value)>> {
    let (status, body) = http(address, "GET", "/v1/models", None, None)?;
    ensure!(status == 200, "/v1/models: {status} {body}");
    let body: Value = serde_json::from_str(&body)?;
    Ok(body["data"]
        .as_array()
        .context("no data")?
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or_default().to_string(),
                m["parent"].clone(),
            )
        })
        .collect())
}

/// A greedy completion from `model`: (status, body).
fn complete(address: std::net::SocketAddr, model: &str) -> anyhow::Result<(u16, Value)> {
    let request = json!({"model": model, "prompt": "the old man sees a red house",
        "max_tokens": 8, "temperature": 0});
    let (status, body) = http(address, "POST", "/v1/completions", None, Some(&request))?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn adapters_are_added_to_a_serving_pod_without_restarting_it() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-adapters").await?;
    let mut operator = Operator::start_with(cluster, &ns, &MONITORING).await?;
    let client = cluster.client().await?;
    let namespace = ns.name().to_string();
    let jobs = cluster
        .replayer()
        .await?
        .with_env("RUST_LOG", "llmops_trainer=info");

    let base_dir = operator.store().join("models/tiny");
    tiny_model(&base_dir)?;
    let base_model = format!("file://{}", base_dir.display());
    let dataset_digest = prepare_dataset(&mut operator, &client, &jobs, &base_model).await?;
    let support =
        train_adapter(&mut operator, &client, &jobs, "ft-support", &base_model, 1).await?;
    let legal = train_adapter(&mut operator, &client, &jobs, "ft-legal", &base_model, 2).await?;

    let replayer = Arc::new(cluster.replayer().await?);
    let serving_pods = PodRunner::start(
        replayer,
        &namespace,
        &format!("llmops.dev/modeldeployment={NAME}"),
    );
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &namespace);
    let apply = PatchParams::apply(llmops_tests::FIELD_MANAGER).force();
    let one = json!([{"name": "support", "fineTuneRef": {"name": "ft-support"}}]);
    deployments
        .patch(
            NAME,
            &apply,
            &Patch::Apply(model_deployment(&base_model, one)),
        )
        .await
        .context("applying the ModelDeployment")?;
    serving_pods.wait_ready(1, READY_TIMEOUT).await?;
    let describe =
        |e: anyhow::Error| anyhow::anyhow!("{e:#}\nserving pods:\n{}", serving_pods.describe());
    wait_for(
        &mut operator,
        &deployments,
        NAME,
        "the support adapter served, with its lineage",
        READY_TIMEOUT,
        |md| {
            adapter_served(
                md,
                "support",
                "ft-support",
                &support,
                &base_model,
                &dataset_digest,
            )
        },
    )
    .await
    .map_err(describe)?;
    let address = serving_pods
        .ready()
        .into_iter()
        .find_map(|p| p.address)
        .context("no ready serving pod")?;
    ensure!(
        models(address)?
            == [
                (NAME.to_string(), Value::Null),
                ("support".into(), json!(NAME))
            ],
        "/v1/models: {:?}",
        models(address)?
    );
    let (status, base_answer) = complete(address, NAME)?;
    ensure!(
        status == 200,
        "the base model answered {status}: {base_answer}"
    );
    let (status, answer) = complete(address, "support")?;
    ensure!(
        status == 200,
        "the support adapter answered {status}: {answer}"
    );
    ensure!(answer["model"] == "support", "{answer}");
    let (status, body) = complete(address, "legal")?;
    ensure!(
        status == 404 && body["error"]["code"] == "model_not_found",
        "an adapter not yet added answered {status}: {body}"
    );
    let before = serving_pod(&client, &namespace).await?;
    let apps: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let generation = apps
        .get(&format!("{NAME}-server"))
        .await?
        .metadata
        .generation;

    // The second adapter: into the ConfigMap, onto the same pod.
    let two = json!([
        {"name": "support", "fineTuneRef": {"name": "ft-support"}},
        {"name": "legal", "fineTuneRef": {"name": "ft-legal"}},
    ]);
    deployments
        .patch(
            NAME,
            &apply,
            &Patch::Apply(model_deployment(&base_model, two)),
        )
        .await?;
    wait_for(
        &mut operator,
        &deployments,
        NAME,
        "the legal adapter served too",
        READY_TIMEOUT,
        |md| {
            adapter_served(
                md,
                "support",
                "ft-support",
                &support,
                &base_model,
                &dataset_digest,
            )?;
            adapter_served(
                md,
                "legal",
                "ft-legal",
                &legal,
                &base_model,
                &dataset_digest,
            )
        },
    )
    .await
    .map_err(describe)?;
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .get(&format!("{NAME}-adapters"))
        .await?;
    let file: Value = serde_json::from_str(
        config_map
            .data
            .as_ref()
            .and_then(|d| d.get("adapters.json"))
            .context("no adapters.json")?,
    )?;
    ensure!(
        file["adapters"][1] == json!({"name": "legal", "uri": legal.0, "digest": legal.1}),
        "the ConfigMap holds {file}"
    );
    let (status, legal_answer) = complete(address, "legal")?;
    ensure!(
        status == 200,
        "the legal adapter answered {status}: {legal_answer}"
    );
    ensure!(legal_answer["model"] == "legal", "{legal_answer}");
    ensure!(
        complete(address, "support")?.1["choices"] == answer["choices"],
        "the support adapter answers differently after the second joined"
    );
    let mut listed: Vec<String> = models(address)?.into_iter().map(|(id, _)| id).collect();
    listed.sort();
    ensure!(
        listed == ["chat", "legal", "support"],
        "/v1/models: {listed:?}"
    );

    let after = serving_pod(&client, &namespace).await?;
    ensure!(
        after.1 == before.1 && after.2 == 0,
        "the pod changed: {before:?} then {after:?}"
    );
    ensure!(
        apps.get(&format!("{NAME}-server"))
            .await?
            .metadata
            .generation
            == generation,
        "the Deployment changed when an adapter was added"
    );
    eprintln!(
        "base: {}\nsupport: {}\nlegal: {}",
        base_answer["choices"][0]["text"],
        answer["choices"][0]["text"],
        legal_answer["choices"][0]["text"]
    );
    serving_pods.stop().await;
    drop(operator);
    Ok(())
}
