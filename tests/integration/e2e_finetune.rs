//! End to end, FineTune: the real operator and the real `trainer prepare` and
//! `trainer finetune`, replayed from the operator's pod specs, on the real
//! control plane: waiting for the Dataset, the lineage in the trainer's resource,
//! a restricted Job, and a gated, evaluated model, in one trace from apply to
//! Ready.

use anyhow::{Context, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use llmops_crds::{Dataset, FineTune};
use llmops_tests::local::tiny_model;
use llmops_tests::operator::Operator;
use llmops_tests::otlp::{ReceivedSpan, Receiver};
use llmops_tests::replay::tail;
use llmops_tests::{Cluster, TestNamespace, workspace_root};
use serde_json::{Value, json};

use crate::e2e_dataset::{
    CHILD_TIMEOUT, TRAINER_TIMEOUT, condition, ensure_restricted, has_condition, replay_job,
    wait_for, wait_for_job,
};

const DATASET: &str = "qa-set";
const NAME: &str = "qa";
const JOB: &str = "qa-finetune";

fn fine_tune(base_model: &str) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": NAME},
        "spec": {
            "baseModel": {"uri": base_model},
            "datasetRef": {"name": DATASET},
            "method": {"type": "lora", "lora": {"rank": 4, "alpha": 8}},
            "training": {"epochs": 1, "batchSize": 8, "microBatchSize": 8,
                         "learningRate": 1.0e-2},
            "evaluation": {"metrics": ["perplexity", "rougeL", "exactMatch"], "samples": 4,
                           "generation": {"maxNewTokens": 8},
                           "gates": {"maxPerplexity": 1.0e9}},
            "resources": {"cpu": "2", "memory": "2Gi"},
        }
    })
}

/// The quickstart's Q&A set, tokenized with the base model's own tokenizer.
fn dataset(tokenizer: &str) -> anyhow::Result<Value> {
    let path = workspace_root().join("examples/quickstart/02-dataset-qa.yaml");
    let mut dataset: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path)?)?;
    dataset["metadata"] = json!({"name": DATASET});
    dataset["spec"]["tokenizer"] = json!({"uri": tokenizer});
    Ok(dataset)
}

#[tokio::test]
async fn finetune_waits_for_its_dataset_records_lineage_and_publishes_a_gated_model()
-> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-finetune").await?;
    // Spans of the operator, and (passed on) of its trainer pods, to a receiver.
    let receiver = Receiver::start().await?;
    let otlp = format!("--otlp-endpoint={}", receiver.grpc_endpoint());
    let mut operator = Operator::start_with(cluster, &ns, &[&otlp]).await?;
    let replayer = cluster
        .replayer()
        .await?
        .with_env("RUST_LOG", "llmops_trainer=info");
    let client = cluster.client().await?;
    let fine_tunes: Api<FineTune> = Api::namespaced(client.clone(), ns.name());
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let apply = PatchParams::apply("llmops-tests");

    let model_dir = operator.store().join("models/tiny");
    tiny_model(&model_dir)?;
    let base_model = format!("file://{}", model_dir.display());

    // Before its Dataset exists, the FineTune says what it waits for.
    let ft: FineTune = serde_json::from_value(fine_tune(&base_model))?;
    fine_tunes.patch(NAME, &apply, &Patch::Apply(&ft)).await?;
    wait_for(
        &mut operator,
        &fine_tunes,
        NAME,
        "Ready=False WaitingForDataset",
        CHILD_TIMEOUT,
        |f| {
            has_condition(f, "Ready", "False")?;
            let ready = condition(f, "Ready").unwrap();
            ensure!(ready["reason"] == "WaitingForDataset", "Ready is {ready}");
            ensure!(
                f["status"]["phase"] == "Waiting",
                "phase {}",
                f["status"]["phase"]
            );
            ensure!(
                condition(f, "Stalled").is_none_or(|c| c["status"] != "True"),
                "a missing Dataset is no reason to stall"
            );
            ensure!(
                ready["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(DATASET),
                "the message does not name the Dataset: {ready}"
            );
            Ok(())
        },
    )
    .await?;
    ensure!(
        Api::<Job>::namespaced(client.clone(), ns.name())
            .get_opt(JOB)
            .await?
            .is_none(),
        "a Job before the Dataset is Ready"
    );

    // The Dataset, prepared for real with the base model's tokenizer.
    let ds: Dataset = serde_json::from_value(dataset(&format!("{base_model}/tokenizer.json"))?)?;
    datasets.patch(DATASET, &apply, &Patch::Apply(&ds)).await?;
    let prepare = format!("{DATASET}-prepare-g1");
    wait_for_job(&mut operator, &client, &prepare).await?;
    let exit = replay_job(&mut operator, &replayer, &prepare).await?;
    ensure!(
        exit.code == 0,
        "trainer prepare failed:\n{}",
        tail(&exit.log, 40)
    );
    let prepared = wait_for(
        &mut operator,
        &datasets,
        DATASET,
        "the Dataset Ready",
        CHILD_TIMEOUT,
        |d| has_condition(d, "Ready", "True"),
    )
    .await?;
    let digest = prepared["status"]["artifact"]["digest"].clone();

    // The lineage, recorded and handed to the trainer; the Job is restricted.
    wait_for(
        &mut operator,
        &fine_tunes,
        NAME,
        "status.lineage recorded",
        CHILD_TIMEOUT,
        |f| {
            let lineage = &f["status"]["lineage"];
            ensure!(lineage["dataset"]["digest"] == digest, "lineage {lineage}");
            ensure!(
                lineage["baseModel"]["uri"] == base_model.as_str(),
                "lineage {lineage}"
            );
            Ok(())
        },
    )
    .await?;
    let job = wait_for_job(&mut operator, &client, JOB).await?;
    ensure_restricted(&job)?;
    let args =
        serde_json::to_value(&job)?["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    ensure!(args[0] == "finetune", "the pod runs {args}");
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), ns.name())
        .get(JOB)
        .await?;
    let resource: FineTune = serde_yaml_ng::from_str(
        config_map
            .data
            .as_ref()
            .and_then(|d| d.get("resource.yaml"))
            .context("no resource.yaml")?,
    )?;
    let lineage = resource
        .status
        .and_then(|s| s.operator.lineage)
        .context("the trainer's resource has no lineage")?;
    ensure!(
        lineage.dataset.as_ref().map(|a| a.digest.as_str()) == digest.as_str()
            && lineage.base_model.as_ref().map(|a| a.uri.as_str()) == Some(base_model.as_str()),
        "the trainer's lineage is {lineage:?}"
    );
    ensure!(
        resource
            .spec
            .output
            .location
            .uri
            .is_some_and(|uri| uri.ends_with(&format!("/finetunes/{}/{NAME}", ns.name()))),
        "the output URI is not defaulted to the store"
    );

    // The real trainer fine-tunes, evaluates and passes its gate: Ready with the model.
    let exit = replay_job(&mut operator, &replayer, JOB).await?;
    ensure!(
        exit.code == 0,
        "trainer finetune failed ({}):\n{}",
        exit.code,
        tail(&exit.log, 40)
    );
    let ready = wait_for(
        &mut operator,
        &fine_tunes,
        NAME,
        "Ready=True with the evaluated model",
        TRAINER_TIMEOUT,
        |f| {
            has_condition(f, "Ready", "True")?;
            ensure!(
                f["status"]["phase"] == "Succeeded",
                "phase {}",
                f["status"]["phase"]
            );
            ensure!(
                f["status"]["gate"]["passed"] == true,
                "gate {}",
                f["status"]["gate"]
            );
            let evaluation = &f["status"]["evaluation"];
            ensure!(
                evaluation["perplexity"].is_number() && evaluation["rougeL"].is_number(),
                "evaluation {evaluation}"
            );
            ensure!(
                f.pointer("/status/artifact/digest").is_some(),
                "no artifact"
            );
            Ok(())
        },
    )
    .await?;
    let uri = ready["status"]["artifact"]["uri"]
        .as_str()
        .unwrap_or_default();
    let dir = std::path::PathBuf::from(uri.strip_prefix("file://").context("not file://")?);
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        ensure!(
            dir.join(file).exists(),
            "the model lacks {file} in {}",
            dir.display()
        );
    }

    // One trace from the first reconcile to Ready: the operator's passes over
    // this generation and the trainer's run, a child of the Job's traceparent.
    let traceparent = job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("llmops.dev/traceparent"))
        .context("the Job's pods carry no traceparent")?
        .clone();
    let [_, trace_id, parent_id, _] = traceparent.split('-').collect::<Vec<_>>()[..] else {
        anyhow::bail!("traceparent {traceparent:?}");
    };
    let object = format!("FineTune.v1alpha1.llmops.dev/{NAME}.{}", ns.name());
    let in_trace = |s: &ReceivedSpan| s.trace_id == trace_id && s.parent_span_id == parent_id;
    let spans = receiver
        .wait_for(
            "the FineTune's trace",
            std::time::Duration::from_secs(30),
            |spans| {
                spans.iter().any(|s| {
                    in_trace(s) && s.name == "trainer" && s.service() == Some("llmops-trainer")
                }) && spans.iter().any(|s| {
                    in_trace(s) && s.name == "reconcile" && s.service() == Some("llmops-operator")
                })
            },
        )
        .await?;
    let reconciles: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "reconcile" && s.trace_id == trace_id)
        .collect();
    ensure!(
        reconciles.len() >= 2
            && reconciles
                .iter()
                .all(|s| in_trace(s) && s.attributes.get("object") == Some(&object)),
        "the FineTune's reconciles in its trace: {reconciles:#?}"
    );
    // The generation's root, recorded when the FineTune turned Ready: the parent
    // of them all, from the apply (the object's creation) to Ready.
    let spans = receiver
        .wait_for(
            "the generation's root span",
            std::time::Duration::from_secs(30),
            |spans| {
                spans
                    .iter()
                    .any(|s| s.span_id == parent_id && s.trace_id == trace_id)
            },
        )
        .await?;
    let root = spans
        .iter()
        .find(|s| s.span_id == parent_id)
        .context("no root")?;
    ensure!(
        root.name == format!("FineTune {}/{NAME}", ns.name())
            && root.parent_span_id.is_empty()
            && root.status_code != 2
            && root.service() == Some("llmops-operator")
            && root.attributes.get("llmops.outcome").map(String::as_str) == Some("Ready")
            && root.attributes.get("llmops.reason").map(String::as_str) == Some("Trained"),
        "root span {root:#?}"
    );
    let children: Vec<&ReceivedSpan> = spans.iter().filter(|s| in_trace(s)).collect();
    let first = children
        .iter()
        .map(|s| s.start_unix_nanos)
        .min()
        .unwrap_or_default();
    let trainer_end = children
        .iter()
        .filter(|s| s.name == "trainer")
        .map(|s| s.end_unix_nanos)
        .max()
        .unwrap_or_default();
    ensure!(
        root.start_unix_nanos <= first && root.end_unix_nanos >= trainer_end,
        "the root ({}..{}) does not cover the first reconcile ({first}) to the trainer's end ({trainer_end})",
        root.start_unix_nanos,
        root.end_unix_nanos
    );
    ensure!(
        !spans.iter().any(|s| s.name == "reconciling object"),
        "kube-runtime's own per-reconcile spans are exported as traces of their own"
    );
    let trainer = spans
        .iter()
        .find(|s| s.name == "trainer" && s.trace_id == trace_id)
        .context("no trainer span")?;
    ensure!(
        trainer.attributes.get("command").map(String::as_str) == Some("finetune")
            && trainer
                .resource
                .get("llmops.owner.name")
                .map(String::as_str)
                == Some(NAME),
        "trainer span {trainer:#?}"
    );
    drop(operator);
    ns.delete(cluster).await
}
