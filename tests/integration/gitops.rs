//! How GitOps tools judge the live objects of all four kinds at each phase: Argo CD
//! through the health checks of `deploy/argocd/resource_customizations/`, run by
//! Argo CD's own Lua evaluation, and Flux through kstatus, both in
//! `tests/gitops/` (a Go program built from the upstream modules, like the control
//! plane). The objects are the real ones the operator writes while it runs a small
//! pipeline with every pod run by the local node:
//!
//! | phase | Argo CD | kstatus |
//! |---|---|---|
//! | just applied, waiting or preparing (Reconciling) | Progressing | InProgress |
//! | Stalled (an invalid spec) | Degraded | Failed |
//! | `spec.suspend: true`, no pod left (no condition) | Suspended | Current |
//! | Ready for its generation | Healthy | Current |

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use llmops_crds::{Dataset, FineTune, ModelDeployment, PretrainJob};
use llmops_tests::node::LocalNode;
use llmops_tests::operator::Operator;
use llmops_tests::replay::tail;
use llmops_tests::{Cluster, TestNamespace, workspace_root};
use serde_json::{Value, json};
use std::fmt::Debug;

use crate::e2e_dataset::{CHILD_TIMEOUT, TRAINER_TIMEOUT, condition, has_condition, wait_for};

/// Builds `tests/gitops` (nothing to do when it is up to date) and returns the
/// checker.
fn checker() -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("tests/gitops");
    let out = Command::new(dir.join("build"))
        .output()
        .context("running tests/gitops/build")?;
    ensure!(
        out.status.success(),
        "tests/gitops/build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dir.join("bin/gitops-health"))
}

/// The live objects and the verdicts expected of them.
struct Snapshots {
    dir: tempfile::TempDir,
    cases: Vec<Value>,
}

impl Snapshots {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            cases: Vec::new(),
        })
    }

    fn add(
        &mut self,
        phase: &str,
        object: &Value,
        argo: &str,
        kstatus: &str,
    ) -> anyhow::Result<()> {
        let file = self.dir.path().join(format!(
            "{}-{}-{phase}.json",
            object["kind"].as_str().unwrap_or("object"),
            object["metadata"]["name"].as_str().unwrap_or("unnamed"),
        ));
        std::fs::write(&file, serde_json::to_vec_pretty(object)?)?;
        self.cases
            .push(json!({"file": file, "argo": argo, "kstatus": kstatus}));
        Ok(())
    }

    /// Runs the checker on every snapshot: its report, or the error with it.
    fn check(&self, checker: &Path) -> anyhow::Result<String> {
        let cases = self.dir.path().join("cases.json");
        std::fs::write(&cases, serde_json::to_vec_pretty(&self.cases)?)?;
        let customizations = workspace_root().join("deploy/argocd/resource_customizations");
        let out = Command::new(checker)
            .arg(&customizations)
            .arg(&cases)
            .output()
            .context("running gitops-health")?;
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(out.status.success(), "verdicts differ:\n{report}");
        Ok(report)
    }
}

/// Applies `object` (server-side, as the tests' field manager).
async fn apply<K>(api: &Api<K>, object: Value) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let typed: K = serde_json::from_value(object)?;
    api.patch(
        &typed.name_any(),
        &PatchParams::apply("llmops-tests"),
        &Patch::Apply(&typed),
    )
    .await?;
    Ok(())
}

/// Reconciling=True for the current generation (kstatus: InProgress).
fn reconciling(object: &Value) -> anyhow::Result<()> {
    has_condition(object, "Reconciling", "True")
}

fn stalled(object: &Value) -> anyhow::Result<()> {
    has_condition(object, "Stalled", "True")
}

fn ready(object: &Value) -> anyhow::Result<()> {
    has_condition(object, "Ready", "True")
}

/// Suspended with no pod left: observed, phase Suspended, and no condition (neither
/// Ready nor Reconciling nor Stalled).
fn suspended(object: &Value) -> anyhow::Result<()> {
    ensure!(
        object["status"]["observedGeneration"] == object["metadata"]["generation"]
            && object["status"]["phase"] == "Suspended",
        "status {}",
        object["status"]
    );
    ensure!(
        ["Ready", "Reconciling", "Stalled"]
            .iter()
            .all(|type_| condition(object, type_).is_none()),
        "conditions {}",
        object["status"]["conditions"]
    );
    Ok(())
}

fn pretrain_job(name: &str, dataset: &str, suspend: bool) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": name},
        "spec": {
            "datasetRef": {"name": dataset},
            "model": {"family": "llama", "layers": 1, "heads": 2, "kvHeads": 1, "hidden": 32, "contextLength": 64},
            "training": {
                "maxSteps": 20, "batchSize": 8, "microBatchSize": 8, "learningRate": 3.0e-3,
                "warmupSteps": 2, "evalEvery": 10, "checkpointEvery": 10,
            },
            "resources": {"cpu": "1", "memory": "1Gi"},
            "suspend": suspend,
        }
    })
}

fn fine_tune(name: &str, base_model: Value, suspend: bool) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": name},
        "spec": {
            "baseModel": base_model,
            "datasetRef": {"name": "quickstart-qa"},
            "method": {"type": "lora", "lora": {"rank": 2, "alpha": 4, "targetModules": ["q_proj", "v_proj"]}},
            "training": {"epochs": 1, "batchSize": 8, "microBatchSize": 8, "learningRate": 1.0e-2},
            "evaluation": {"metrics": ["perplexity"], "samples": 2, "generation": {"maxNewTokens": 4}},
            "resources": {"cpu": "1", "memory": "1Gi"},
            "suspend": suspend,
        }
    })
}

fn model_deployment(name: &str, fine_tune: &str, service: &str) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"fineTuneRef": {"name": fine_tune}},
            "replicas": {"min": 1, "max": 1},
            "server": {"maxBatch": 2, "maxContext": 64, "maxNewTokens": 8, "threads": 1},
            "resources": {"cpu": "1", "memory": "1Gi"},
            "service": {"type": service},
        }
    })
}

#[tokio::test]
async fn argo_cd_health_and_kstatus_follow_every_phase() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let checker = checker()?;
    let ns = TestNamespace::create(cluster, "gitops").await?;
    let mut operator = Operator::start(cluster, &ns).await?;
    let client = cluster.client().await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let pretrains: Api<PretrainJob> = Api::namespaced(client.clone(), ns.name());
    let finetunes: Api<FineTune> = Api::namespaced(client.clone(), ns.name());
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    let mut snapshots = Snapshots::new()?;

    // Everything at once, before any pod runs: the corpus and the Q&A set of the
    // quickstart, a small pipeline on them, and one object of each kind that stalls.
    let examples = workspace_root().join("examples/quickstart");
    for manifest in ["01-dataset.yaml", "02-dataset-qa.yaml"] {
        ns.apply(cluster, &examples.join(manifest)).await?;
    }
    apply(
        &pretrains,
        pretrain_job("base", "quickstart-stories", false),
    )
    .await?;
    apply(
        &pretrains,
        pretrain_job("paused", "quickstart-stories", true),
    )
    .await?;
    apply(
        &finetunes,
        fine_tune("tuned", json!({"pretrainJobRef": {"name": "base"}}), false),
    )
    .await?;
    apply(
        &deployments,
        model_deployment("serve", "tuned", "ClusterIP"),
    )
    .await?;
    // Stalls: a prepare Job name over 63 characters, pretraining on an
    // instruction set, a fine-tune of itself, a model exposed without an API key.
    let long_name = format!("name-too-long-for-its-prepare-job-{}", "x".repeat(24));
    let mut long = serde_yaml_ng::from_str::<Value>(&std::fs::read_to_string(
        examples.join("01-dataset.yaml"),
    )?)?;
    long["metadata"]["name"] = json!(long_name);
    apply(&datasets, long).await?;
    apply(&pretrains, pretrain_job("on-qa", "quickstart-qa", false)).await?;
    apply(
        &finetunes,
        fine_tune("itself", json!({"fineTuneRef": {"name": "itself"}}), false),
    )
    .await?;
    apply(
        &deployments,
        model_deployment("exposed", "tuned", "NodePort"),
    )
    .await?;

    // Progressing: preparing (its pod not run yet) or waiting for what it needs.
    let what = "Reconciling for its generation";
    let object = wait_for(
        &mut operator,
        &datasets,
        "quickstart-stories",
        what,
        CHILD_TIMEOUT,
        reconciling,
    )
    .await?;
    snapshots.add("applied", &object, "Progressing", "InProgress")?;
    let object = wait_for(
        &mut operator,
        &pretrains,
        "base",
        what,
        CHILD_TIMEOUT,
        reconciling,
    )
    .await?;
    snapshots.add("applied", &object, "Progressing", "InProgress")?;
    let object = wait_for(
        &mut operator,
        &finetunes,
        "tuned",
        what,
        CHILD_TIMEOUT,
        reconciling,
    )
    .await?;
    snapshots.add("applied", &object, "Progressing", "InProgress")?;
    let object = wait_for(
        &mut operator,
        &deployments,
        "serve",
        what,
        CHILD_TIMEOUT,
        reconciling,
    )
    .await?;
    snapshots.add("applied", &object, "Progressing", "InProgress")?;

    // Degraded: Stalled=True, without any pod.
    let what = "Stalled for its generation";
    let object = wait_for(
        &mut operator,
        &datasets,
        &long_name,
        what,
        CHILD_TIMEOUT,
        stalled,
    )
    .await?;
    snapshots.add("stalled", &object, "Degraded", "Failed")?;
    let object = wait_for(
        &mut operator,
        &pretrains,
        "on-qa",
        what,
        CHILD_TIMEOUT,
        stalled,
    )
    .await?;
    snapshots.add("stalled", &object, "Degraded", "Failed")?;
    let object = wait_for(
        &mut operator,
        &finetunes,
        "itself",
        what,
        CHILD_TIMEOUT,
        stalled,
    )
    .await?;
    snapshots.add("stalled", &object, "Degraded", "Failed")?;
    let object = wait_for(
        &mut operator,
        &deployments,
        "exposed",
        what,
        CHILD_TIMEOUT,
        stalled,
    )
    .await?;
    snapshots.add("stalled", &object, "Degraded", "Failed")?;

    // Now the pods run: every kind of the pipeline becomes Ready, and the
    // suspended PretrainJob gets its Job, suspended, and no pod.
    let node = LocalNode::start(cluster, ns.name())?;
    let explain =
        |e: anyhow::Error| anyhow::anyhow!("{e:#}\nlocal-node:\n{}", tail(&node.log(), 40));
    let what = "Ready for its generation";
    let object = wait_for(
        &mut operator,
        &datasets,
        "quickstart-stories",
        what,
        TRAINER_TIMEOUT,
        ready,
    )
    .await
    .map_err(explain)?;
    snapshots.add("ready", &object, "Healthy", "Current")?;
    let object = wait_for(
        &mut operator,
        &pretrains,
        "paused",
        "Suspended with no pod",
        CHILD_TIMEOUT,
        suspended,
    )
    .await
    .map_err(explain)?;
    snapshots.add("suspended", &object, "Suspended", "Current")?;
    let object = wait_for(
        &mut operator,
        &pretrains,
        "base",
        what,
        TRAINER_TIMEOUT,
        ready,
    )
    .await
    .map_err(explain)?;
    snapshots.add("ready", &object, "Healthy", "Current")?;
    let object = wait_for(
        &mut operator,
        &finetunes,
        "tuned",
        what,
        TRAINER_TIMEOUT,
        ready,
    )
    .await
    .map_err(explain)?;
    snapshots.add("ready", &object, "Healthy", "Current")?;
    let object = wait_for(
        &mut operator,
        &deployments,
        "serve",
        what,
        TRAINER_TIMEOUT,
        ready,
    )
    .await
    .map_err(explain)?;
    snapshots.add("ready", &object, "Healthy", "Current")?;

    let report = snapshots.check(&checker)?;
    eprintln!("{report}");
    ns.delete(cluster).await
}
