//! End to end, PretrainJob: the real operator and the real `trainer prepare` and
//! `trainer pretrain`, replayed from the operator's pod specs, on the real control
//! plane: waiting for the Dataset, lineage, a preemption, suspend and resume.
//! The pod asks for two GPUs, so each replayed pod runs the trainer's launcher
//! with one rank per GPU (on CPU here, over TCP), as on a multi-GPU node.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use llmops_crds::{Dataset, PretrainJob};
use llmops_tests::operator::Operator;
use llmops_tests::replay::{Replay, tail};
use llmops_tests::{Cluster, TestNamespace, workspace_root};
use serde_json::{Value, json};

use crate::e2e_dataset::{
    CHILD_TIMEOUT, TRAINER_TIMEOUT, condition, ensure_restricted, has_condition, replay_job,
    wait_for, wait_for_job,
};

const DATASET: &str = "quickstart-stories";
const NAME: &str = "tiny";
const JOB: &str = "tiny-pretrain";
/// Enough steps (a few per second on a busy CPU) that each interruption lands
/// mid-run, yet the whole run takes about a minute.
const STEPS: i64 = 300;

fn pretrain_job() -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": NAME},
        "spec": {
            "datasetRef": {"name": DATASET},
            "model": {"family": "llama", "layers": 1, "heads": 2, "kvHeads": 1,
                      "hidden": 32, "contextLength": 64},
            "training": {"maxSteps": STEPS, "batchSize": 8, "microBatchSize": 4,
                         "learningRate": 3.0e-3, "warmupSteps": 5,
                         "evalEvery": 100, "checkpointEvery": 100},
            "resources": {"gpusPerReplica": 2, "cpu": "2", "memory": "2Gi"},
        }
    })
}

/// The trainer's `status.progress.step`, if written.
fn step(object: &Value) -> Option<i64> {
    object.pointer("/status/progress/step")?.as_i64()
}

/// Wait until the replayed trainer has written progress beyond `after`, then
/// pause it there: a tiny model on an idle CPU trains hundreds of steps a second,
/// so the interruption that follows must not race the end of the run. Polls
/// tightly to pause within a few steps of the write.
async fn pause_once_beyond(
    operator: &mut Operator,
    jobs: &Api<PretrainJob>,
    replay: &Replay,
    after: i64,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + TRAINER_TIMEOUT;
    loop {
        let seen = step(&serde_json::to_value(jobs.get(NAME).await?)?);
        if let Some(at) = seen.filter(|s| *s > after) {
            replay.pause()?;
            return Ok(at);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "no progress beyond step {after} within {TRAINER_TIMEOUT:?} (last {seen:?})\ntrainer log:\n{}\n{}",
                tail(&replay.log(), 20),
                operator.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The step of the checkpoint an interrupted trainer reports.
fn interrupted_step(message: &str) -> anyhow::Result<i64> {
    let result: Value = serde_json::from_str(message.trim())
        .with_context(|| format!("the interrupted trainer's message {message:?}"))?;
    result
        .pointer("/interrupted/step")
        .and_then(Value::as_i64)
        .with_context(|| format!("no interrupted.step in {result}"))
}

async fn ensure_no_restarts(
    client: &Client,
    namespace: &str,
    object: &Value,
) -> anyhow::Result<()> {
    ensure!(
        object["status"]["restarts"].as_i64().unwrap_or(0) == 0,
        "an interruption counted as a restart: {}",
        object["status"]
    );
    let job = Api::<Job>::namespaced(client.clone(), namespace)
        .get(JOB)
        .await?;
    let failed = job.status.and_then(|s| s.failed).unwrap_or(0);
    ensure!(failed == 0, "the Job counted {failed} failed pod(s)");
    Ok(())
}

#[tokio::test]
async fn pretrain_lifecycle_with_preemption_and_suspend() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-pretrain").await?;
    let mut operator = Operator::start(cluster, &ns).await?;
    let replayer = cluster
        .replayer()
        .await?
        .with_env("RUST_LOG", "llmops_trainer=info");
    let client = cluster.client().await?;
    let jobs: Api<PretrainJob> = Api::namespaced(client.clone(), ns.name());
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let apply = PatchParams::apply("llmops-tests");

    // Before its Dataset exists, the PretrainJob says what it waits for.
    let job: PretrainJob = serde_json::from_value(pretrain_job())?;
    jobs.patch(NAME, &apply, &Patch::Apply(&job)).await?;
    wait_for(
        &mut operator,
        &jobs,
        NAME,
        "Ready=False WaitingForDataset",
        CHILD_TIMEOUT,
        |p| {
            has_condition(p, "Ready", "False")?;
            let ready = condition(p, "Ready").unwrap();
            ensure!(ready["reason"] == "WaitingForDataset", "Ready is {ready}");
            ensure!(
                p["status"]["phase"] == "Waiting",
                "phase {}",
                p["status"]["phase"]
            );
            ensure!(
                condition(p, "Stalled").is_none_or(|c| c["status"] != "True"),
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

    // The Dataset, prepared for real; then the lineage is recorded.
    let manifest = workspace_root().join("examples/quickstart/01-dataset.yaml");
    ns.apply(cluster, &manifest).await?;
    let prepare = format!("{DATASET}-prepare-g1");
    wait_for_job(&mut operator, &client, &prepare).await?;
    let exit = replay_job(&mut operator, &replayer, &prepare).await?;
    ensure!(
        exit.code == 0,
        "trainer prepare failed:\n{}",
        tail(&exit.log, 40)
    );
    let dataset = wait_for(
        &mut operator,
        &datasets,
        DATASET,
        "the Dataset Ready",
        CHILD_TIMEOUT,
        |d| has_condition(d, "Ready", "True"),
    )
    .await?;
    let digest = dataset["status"]["artifact"]["digest"].clone();
    wait_for(
        &mut operator,
        &jobs,
        NAME,
        "status.dataset recorded",
        CHILD_TIMEOUT,
        |p| {
            ensure!(
                p.pointer("/status/dataset/digest") == Some(&digest),
                "status.dataset {} is not the Dataset's {digest}",
                p["status"]["dataset"]
            );
            Ok(())
        },
    )
    .await?;

    // The Job: GPUs from the operator's resource name, one trainer process per
    // GPU, restricted, disruption-aware.
    let job = wait_for_job(&mut operator, &client, JOB).await?;
    ensure_restricted(&job)?;
    let spec = serde_json::to_value(job.spec.as_ref().context("Job without spec")?)?;
    let container = &spec["template"]["spec"]["containers"][0];
    ensure!(
        container["resources"]["limits"]["nvidia.com/gpu"] == "2",
        "no GPU limit: {}",
        container["resources"]
    );
    ensure!(
        container["env"].as_array().is_some_and(|env| env
            .iter()
            .any(|e| e["name"] == llmops_contract::env::PROCS_PER_POD && e["value"] == "2")),
        "no process per GPU: {}",
        container["env"]
    );
    ensure!(
        spec["podFailurePolicy"]["rules"]
            .as_array()
            .is_some_and(|rules| rules.iter().any(|r| r["action"] == "Ignore"
                && r["onPodConditions"][0]["type"] == "DisruptionTarget")),
        "disruptions are not ignored: {}",
        spec["podFailurePolicy"]
    );
    ensure!(
        spec["template"]["spec"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["emptyDir"]["medium"] == "Memory")),
        "no memory-backed /dev/shm"
    );

    // Run 1, preempted: the scheduler marks the pod a DisruptionTarget and deletes it.
    let selector = format!("batch.kubernetes.io/job-name={JOB}");
    let pod = replayer
        .running_pod(ns.name(), &selector, CHILD_TIMEOUT)
        .await?;
    wait_for(
        &mut operator,
        &jobs,
        NAME,
        "phase Running once the pod runs",
        CHILD_TIMEOUT,
        |p| {
            ensure!(
                p["status"]["phase"] == "Running",
                "phase {}",
                p["status"]["phase"]
            );
            Ok(())
        },
    )
    .await?;
    let run = replayer.start(&pod).await?;
    let before = pause_once_beyond(&mut operator, &jobs, &run, 0).await?;
    let disruption = json!({"status": {"conditions": [{
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "PreemptionByScheduler",
        "message": "preempted by a higher-priority pod (e2e)",
        "lastTransitionTime": Timestamp::now().to_string(),
    }]}});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(disruption),
    )
    .await?;
    pods.delete(&pod.name_any(), &DeleteParams::default())
        .await?;
    let exit = run.finish(TRAINER_TIMEOUT).await?;
    ensure!(
        exit.code == i32::from(llmops_contract::exit::INTERRUPTED),
        "the preempted trainer exited {}:\n{}",
        exit.code,
        tail(&exit.log, 30)
    );
    ensure!(
        // Pods log JSON lines (text only on a terminal).
        exit.log.contains(r#""rank":1,"world":2"#),
        "the pod did not run a second rank:\n{}",
        tail(&exit.log, 30)
    );
    let preempted_at = interrupted_step(&exit.message)?;
    ensure!(
        preempted_at >= before,
        "checkpoint at {preempted_at}, progress was {before}"
    );

    // Run 2 resumes from that checkpoint, with no restart counted; then suspend.
    let pod = replayer
        .running_pod(ns.name(), &selector, CHILD_TIMEOUT)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", operator.log_tail(40)))?;
    let run = replayer.start(&pod).await?;
    pause_once_beyond(&mut operator, &jobs, &run, preempted_at).await?;
    ensure!(
        run.log().contains("resuming"),
        "run 2 did not resume from a checkpoint:\n{}",
        tail(&run.log(), 20)
    );
    ensure_no_restarts(
        &client,
        ns.name(),
        &serde_json::to_value(jobs.get(NAME).await?)?,
    )
    .await?;
    jobs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await?;
    let exit = run.finish(TRAINER_TIMEOUT).await?;
    ensure!(
        exit.code == i32::from(llmops_contract::exit::INTERRUPTED),
        "the suspended trainer exited {}:\n{}",
        exit.code,
        tail(&exit.log, 30)
    );
    let suspended_at = interrupted_step(&exit.message)?;
    let suspended = wait_for(
        &mut operator,
        &jobs,
        NAME,
        "phase Suspended with no pod left",
        CHILD_TIMEOUT,
        |p| {
            ensure!(
                p["status"]["phase"] == "Suspended",
                "phase {}",
                p["status"]["phase"]
            );
            // Settled (kstatus: Current) but not Ready: no condition at all.
            ensure!(
                ["Ready", "Reconciling", "Stalled"]
                    .iter()
                    .all(|type_| condition(p, type_).is_none()),
                "conditions {}",
                p["status"]["conditions"]
            );
            Ok(())
        },
    )
    .await?;
    let live = Api::<Job>::namespaced(client.clone(), ns.name())
        .get(JOB)
        .await?;
    ensure!(
        live.spec.as_ref().and_then(|s| s.suspend) == Some(true),
        "the Job is not suspended"
    );
    ensure_no_restarts(&client, ns.name(), &suspended).await?;

    // Run 3: resumed, it finishes; Ready with the model.
    jobs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await?;
    let pod = replayer
        .running_pod(ns.name(), &selector, CHILD_TIMEOUT)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", operator.log_tail(40)))?;
    let run = replayer.start(&pod).await?;
    let exit = run.finish(TRAINER_TIMEOUT).await?;
    ensure!(
        exit.code == 0,
        "the last run failed ({}):\n{}",
        exit.code,
        tail(&exit.log, 30)
    );
    ensure!(
        exit.log.contains("resuming"),
        "run 3 did not resume from step {suspended_at}:\n{}",
        tail(&exit.log, 20)
    );
    let ready = wait_for(
        &mut operator,
        &jobs,
        NAME,
        "Ready=True with the model",
        CHILD_TIMEOUT,
        |p| {
            has_condition(p, "Ready", "True")?;
            ensure!(
                p["status"]["phase"] == "Succeeded",
                "phase {}",
                p["status"]["phase"]
            );
            ensure!(
                p.pointer("/status/artifact/digest").is_some(),
                "no artifact"
            );
            Ok(())
        },
    )
    .await?;
    ensure!(
        step(&ready) == Some(STEPS),
        "final progress {}",
        ready["status"]["progress"]
    );
    ensure_no_restarts(&client, ns.name(), &ready).await?;
    let trainer_owns_progress = ready["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| {
            m["manager"] == llmops_contract::TRAINER_FIELD_MANAGER
                && m["subresource"] == "status"
                && m.pointer("/fieldsV1/f:status/f:progress").is_some()
        });
    ensure!(
        trainer_owns_progress,
        "status.progress was not written by llmops-trainer: {}",
        ready["metadata"]["managedFields"]
    );
    let uri = ready["status"]["artifact"]["uri"]
        .as_str()
        .unwrap_or_default();
    let dir = std::path::PathBuf::from(uri.strip_prefix("file://").context("not file://")?);
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "llmops.json",
        "manifest.json",
    ] {
        ensure!(
            dir.join(file).exists(),
            "the model lacks {file} in {}",
            dir.display()
        );
    }
    // Each export has a directory of its own, named by its digest, with the
    // checkpoints beside it rather than in it.
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let hex = ready["status"]["artifact"]["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .unwrap_or_default();
    ensure!(
        !hex.is_empty() && name == format!("model-{}", &hex[..16]),
        "the model's directory {name} is not named by its digest {hex}"
    );
    ensure!(
        !dir.join("checkpoints").exists()
            && dir.parent().is_some_and(|p| p.join("checkpoints").exists()),
        "checkpoints are not beside the model in {}",
        dir.display()
    );
    let lineage = std::fs::read_to_string(dir.join("llmops.json"))?;
    ensure!(
        lineage.contains(digest.as_str().unwrap_or("?")),
        "llmops.json does not name the dataset digest: {lineage}"
    );
    drop(operator);
    ns.delete(cluster).await
}

/// `output.deletionPolicy: Delete`: the PretrainJob holds a finalizer, and its
/// deletion deletes its whole output — the exported models and the checkpoints
/// beside them — through a `trainer clean` Job before it lets the PretrainJob go.
#[tokio::test]
async fn deleting_a_pretrain_job_with_deletion_policy_delete_removes_its_models_and_checkpoints()
-> anyhow::Result<()> {
    use crate::e2e_dataset::{delete_through_clean, local_dir, ready_with_artifact};
    use crate::e2e_faults::{PREPARE_JOB, PRETRAIN, PRETRAIN_JOB, dataset, pretrain_job};

    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-pretrain-delete").await?;
    let mut operator = Operator::start(cluster, &ns).await?;
    let replayer = cluster.replayer().await?;
    let client = cluster.client().await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let pretrains: Api<PretrainJob> = Api::namespaced(client.clone(), ns.name());
    let apply = PatchParams::apply("llmops-tests");
    datasets
        .patch(DATASET, &apply, &Patch::Apply(&dataset(DATASET)?))
        .await?;
    wait_for_job(&mut operator, &client, PREPARE_JOB).await?;
    let exit = replay_job(&mut operator, &replayer, PREPARE_JOB).await?;
    ensure!(
        exit.code == 0,
        "trainer prepare failed:\n{}",
        tail(&exit.log, 40)
    );
    wait_for(
        &mut operator,
        &datasets,
        DATASET,
        "the Dataset Ready",
        CHILD_TIMEOUT,
        ready_with_artifact,
    )
    .await?;

    let mut job = pretrain_job()?;
    job.spec.output.deletion_policy = llmops_crds::DeletionPolicy::Delete;
    pretrains
        .patch(PRETRAIN, &apply, &Patch::Apply(&job))
        .await?;
    wait_for_job(&mut operator, &client, PRETRAIN_JOB).await?;
    let exit = replay_job(&mut operator, &replayer, PRETRAIN_JOB).await?;
    ensure!(
        exit.code == 0,
        "trainer pretrain failed:\n{}",
        tail(&exit.log, 40)
    );
    let trained = wait_for(
        &mut operator,
        &pretrains,
        PRETRAIN,
        "the PretrainJob Ready with a model",
        TRAINER_TIMEOUT,
        ready_with_artifact,
    )
    .await?;
    ensure!(
        trained["metadata"]["finalizers"] == json!(["llmops.dev/artifact-cleanup"]),
        "finalizers: {}",
        trained["metadata"]["finalizers"]
    );
    let model = local_dir(
        trained["status"]["artifact"]["uri"]
            .as_str()
            .unwrap_or_default(),
    )?;
    let output = model
        .parent()
        .context("the model has no output")?
        .to_path_buf();
    for owned in [".llmops-owner.json", "checkpoints"] {
        ensure!(
            output.join(owned).exists(),
            "no {owned} in {}",
            output.display()
        );
    }

    delete_through_clean(&mut operator, &replayer, &client, &pretrains, PRETRAIN).await?;
    ensure!(
        !output.exists(),
        "the output {} outlived its PretrainJob",
        output.display()
    );
    drop(operator);
    ns.delete(cluster).await
}
