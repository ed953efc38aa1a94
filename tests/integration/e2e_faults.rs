//! Faults of the operator itself, on the real control plane: the process
//! SIGKILLed at each stage of a Dataset → PretrainJob pipeline and started again,
//! and two replicas under leader election whose leader is SIGKILLed. A crash
//! must cost no more than the time to start again: no child made twice, no
//! status going backwards, the same end state as a run without faults.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::{Resource, ResourceExt};
use llmops_crds::{Dataset, PretrainJob};
use llmops_tests::local::http;
use llmops_tests::operator::{Operator, Process};
use llmops_tests::replay::tail;
use llmops_tests::{Cluster, FIELD_MANAGER, TestNamespace, eventually, workspace_root};
use serde_json::{Value, json};

use crate::e2e_dataset::{
    CHILD_TIMEOUT, TRAINER_TIMEOUT, condition, has_condition, job_pod, ready_with_artifact,
    wait_for, wait_for_job,
};

pub const DATASET: &str = "quickstart-stories";
pub const PREPARE_JOB: &str = "quickstart-stories-prepare-g1";
pub const PRETRAIN: &str = "faults";
pub const PRETRAIN_JOB: &str = "faults-pretrain";

/// The operator's leader-election Lease and how long it stays valid after a
/// renewal (`LEASE_NAME` and `LeaseTiming::default().duration` of
/// `operator/src/runtime`).
const LEASE_NAME: &str = "llmops-operator-leader";
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A standby looks at the Lease every 2 s and just after it would expire; the
/// rest is the apiserver and a busy machine.
const TAKEOVER_SLACK: Duration = Duration::from_secs(5);

/// The quickstart corpus, named `name`.
pub fn dataset(name: &str) -> anyhow::Result<Dataset> {
    let path = workspace_root().join("examples/quickstart/01-dataset.yaml");
    let mut manifest: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path)?)?;
    manifest["metadata"]["name"] = json!(name);
    Ok(serde_json::from_value(manifest)?)
}

/// A model small enough to train in seconds on a busy CPU, without GPUs.
pub fn pretrain_job() -> anyhow::Result<PretrainJob> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": PRETRAIN},
        "spec": {
            "datasetRef": {"name": DATASET},
            "model": {"family": "llama", "layers": 1, "heads": 2, "kvHeads": 1,
                      "hidden": 32, "contextLength": 64},
            "training": {"maxSteps": 20, "batchSize": 8, "microBatchSize": 4,
                         "learningRate": 3.0e-3, "warmupSteps": 5,
                         "evalEvery": 10, "checkpointEvery": 10},
            "resources": {"cpu": "1", "memory": "1Gi"},
        }
    }))?)
}

async fn apply<K>(api: &Api<K>, object: &K) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    api.patch(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(object),
    )
    .await
    .with_context(|| format!("applying {}", object.name_any()))?;
    Ok(())
}

/// The value of the sample `series` (name and labels, as exposed) in a
/// Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn metrics(process: &Process) -> anyhow::Result<String> {
    let (status, body) = http(process.metrics_address(), "GET", "/metrics", None, None)?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(body)
}

fn reconciles(text: &str, kind: &str) -> f64 {
    sample(
        text,
        &format!("llmops_operator_reconciles_total{{kind=\"{kind}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Wait until `process` has finished a reconcile of `kind`: a fresh process
/// counts from zero, so this says it took over the object after a restart.
async fn reconciled(process: &mut Process, kind: &str) -> anyhow::Result<()> {
    let result = eventually(
        &format!("the operator to reconcile a {kind}"),
        CHILD_TIMEOUT,
        || async {
            let text = metrics(process)?;
            ensure!(reconciles(&text, kind) >= 1.0, "no {kind} reconciled yet");
            Ok(())
        },
    )
    .await;
    result.map_err(|e| anyhow!("{e:#}\n{}", process.log_tail(40)))
}

/// Wait until `process` answers /readyz (its caches synced, or standing by).
async fn ready(process: &mut Process) -> anyhow::Result<()> {
    let result = eventually("the operator ready", CHILD_TIMEOUT, || async {
        let (status, _) = http(process.metrics_address(), "GET", "/readyz", None, None)?;
        ensure!(status == 200, "/readyz answered {status}");
        Ok(())
    })
    .await;
    result.map_err(|e| anyhow!("{e:#}\n{}", process.log_tail(40)))
}

/// Everything the watches saw of the objects a test follows, and what broke the
/// rules: an object deleted or made again (another uid), `status.observedGeneration`
/// going down, Ready=True for a generation turning into anything else.
#[derive(Default)]
struct History {
    violations: Vec<String>,
    uids: BTreeMap<String, String>,
    observed: BTreeMap<String, i64>,
    ready: BTreeMap<String, i64>,
    /// Each object's distinct states, in order, for the failure message.
    trail: BTreeMap<String, Vec<String>>,
}

impl History {
    fn see(&mut self, key: &str, object: Option<&Value>) {
        let Some(object) = object else {
            if self.uids.contains_key(key) {
                self.violations.push(format!("{key} was deleted"));
            }
            return;
        };
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
        match self.uids.get(key) {
            Some(first) if first != uid => self
                .violations
                .push(format!("{key} was made again: uid {first}, then {uid}")),
            Some(_) => {}
            None => {
                self.uids.insert(key.to_string(), uid.to_string());
            }
        }
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
        let observed = object
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64);
        if let Some(observed) = observed {
            let highest = self.observed.entry(key.to_string()).or_insert(observed);
            if observed < *highest {
                self.violations.push(format!(
                    "{key}: status.observedGeneration went from {highest} down to {observed}"
                ));
            }
            *highest = (*highest).max(observed);
        }
        let ready = condition(object, "Ready");
        if has_condition(object, "Ready", "True").is_ok() {
            self.ready.insert(key.to_string(), generation);
        } else if self.ready.get(key) == Some(&generation) {
            self.violations.push(format!(
                "{key}: Ready=True for generation {generation} turned into {}",
                ready.map_or_else(|| "no Ready condition".to_string(), Value::to_string)
            ));
        }
        let state = format!(
            "generation {generation}, observed {observed:?}, phase {}, Ready {}/{}",
            object["status"]["phase"],
            ready.map_or(&Value::Null, |c| &c["status"]),
            ready.map_or(&Value::Null, |c| &c["reason"]),
        );
        let trail = self.trail.entry(key.to_string()).or_default();
        if trail.last() != Some(&state) {
            trail.push(state);
        }
    }
}

/// Watches of single objects, each event recorded in a [`History`].
#[derive(Default)]
struct Monitor {
    history: Arc<Mutex<History>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Monitor {
    /// Record every version of object `name` the apiserver sends, from now on.
    fn watch<K>(&mut self, api: &Api<K>, name: &str)
    where
        K: Resource<DynamicType = ()>
            + Clone
            + Debug
            + DeserializeOwned
            + Serialize
            + Send
            + Sync
            + 'static,
    {
        let key = format!("{} {name}", K::kind(&()));
        let history = self.history.clone();
        let api = api.clone();
        let name = name.to_string();
        self.tasks.push(tokio::spawn(async move {
            loop {
                let (history, key) = (history.clone(), key.clone());
                let never = move |object: Option<&K>| {
                    let value = object.and_then(|o| serde_json::to_value(o).ok());
                    history.lock().unwrap().see(&key, value.as_ref());
                    false
                };
                // Only a broken watch ends this; start it again (it lists first).
                let _ = await_condition(api.clone(), &name, never).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    /// Stop watching; the violations, each with the trail of its object.
    fn finish(self) -> anyhow::Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        let history = self.history.lock().unwrap();
        if history.violations.is_empty() {
            return Ok(());
        }
        let trails: Vec<String> = history
            .trail
            .iter()
            .map(|(key, states)| format!("{key}:\n  {}", states.join("\n  ")))
            .collect();
        bail!(
            "{}\nwhat the watches saw:\n{}",
            history.violations.join("\n"),
            trails.join("\n")
        )
    }
}

/// Statuses and Job uids as they are now, to compare after another restart.
async fn snapshot(
    datasets: &Api<Dataset>,
    pretrains: &Api<PretrainJob>,
    jobs: &Api<Job>,
) -> anyhow::Result<Value> {
    let job_uids: BTreeMap<String, String> = jobs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|j| (j.name_any(), j.uid().unwrap_or_default()))
        .collect();
    Ok(json!({
        "dataset": serde_json::to_value(datasets.get(DATASET).await?)?["status"],
        "pretrain": serde_json::to_value(pretrains.get(PRETRAIN).await?)?["status"],
        "jobs": job_uids,
    }))
}

#[tokio::test]
async fn a_pipeline_survives_the_operator_killed_at_every_stage() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-faults-kill").await?;
    let mut operator = Operator::start(cluster, &ns).await?;
    let replayer = cluster.replayer().await?;
    let client = cluster.client().await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let pretrains: Api<PretrainJob> = Api::namespaced(client.clone(), ns.name());
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());
    let mut monitor = Monitor::default();
    monitor.watch(&datasets, DATASET);
    monitor.watch(&pretrains, PRETRAIN);
    monitor.watch(&jobs, PREPARE_JOB);
    monitor.watch(&jobs, PRETRAIN_JOB);
    ready(operator.process()).await?;

    // Killed in its first pass, as soon as it has written the Dataset's first
    // status: that pass may have made some of its children and not others.
    apply(&datasets, &dataset(DATASET)?).await?;
    apply(&pretrains, &pretrain_job()?).await?;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    while datasets.get(DATASET).await?.status.is_none() {
        ensure!(
            Instant::now() < deadline,
            "no first status\n{}",
            operator.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    operator.restart()?;

    // Killed the moment the prepare Job exists.
    wait_for_job(&mut operator, &client, PREPARE_JOB).await?;
    operator.restart()?;
    reconciled(operator.process(), "Dataset").await?;

    // Killed while the prepare pod runs (held stopped, so the new operator meets
    // it running), then killed again just after the pod's final status is
    // written, before the operator can have recorded it.
    let pod = job_pod(&mut operator, &replayer, PREPARE_JOB).await?;
    let run = replayer.start(&pod).await?;
    run.pause()?;
    wait_for(
        &mut operator,
        &datasets,
        DATASET,
        "the Dataset preparing",
        CHILD_TIMEOUT,
        |d| {
            has_condition(d, "Ready", "False")?;
            ensure!(
                d.pointer("/status/job/name") == Some(&json!(PREPARE_JOB)),
                "status.job is {}",
                d["status"]["job"]
            );
            Ok(())
        },
    )
    .await?;
    operator.restart()?;
    reconciled(operator.process(), "Dataset").await?;
    run.resume()?;
    let exit = run.finish(TRAINER_TIMEOUT).await?;
    ensure!(
        exit.code == 0 && exit.status_written,
        "trainer prepare failed ({}):\n{}",
        exit.code,
        tail(&exit.log, 40)
    );
    operator.restart()?;
    let prepared = wait_for(
        &mut operator,
        &datasets,
        DATASET,
        "the Dataset Ready with an artifact",
        CHILD_TIMEOUT,
        ready_with_artifact,
    )
    .await?;

    // Killed while the trainer of the PretrainJob runs.
    wait_for_job(&mut operator, &client, PRETRAIN_JOB).await?;
    let pod = job_pod(&mut operator, &replayer, PRETRAIN_JOB).await?;
    let run = replayer.start(&pod).await?;
    run.pause()?;
    wait_for(
        &mut operator,
        &pretrains,
        PRETRAIN,
        "the PretrainJob Running",
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
    operator.restart()?;
    reconciled(operator.process(), "PretrainJob").await?;
    run.resume()?;
    let exit = run.finish(TRAINER_TIMEOUT).await?;
    ensure!(
        exit.code == 0 && exit.status_written,
        "trainer pretrain failed ({}):\n{}",
        exit.code,
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

    // The end state of an uninterrupted run.
    let dataset_digest = &prepared["status"]["artifact"]["digest"];
    ensure!(
        dataset_digest
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "the Dataset's digest {dataset_digest}"
    );
    ensure!(
        trained.pointer("/status/dataset/digest") == Some(dataset_digest),
        "the model's data {} is not the Dataset's {dataset_digest}",
        trained["status"]["dataset"]
    );
    ensure!(
        trained["status"]["restarts"].as_i64().unwrap_or(0) == 0,
        "the operator's restarts counted as the trainer's: {}",
        trained["status"]
    );
    for (object, file) in [
        (&prepared, "manifest.json"),
        (&trained, "model.safetensors"),
    ] {
        let uri = object["status"]["artifact"]["uri"]
            .as_str()
            .unwrap_or_default();
        let dir = uri
            .strip_prefix("file://")
            .with_context(|| format!("{uri} is not in the file:// store"))?;
        let path = std::path::Path::new(dir).join(file);
        ensure!(path.exists(), "no {}", path.display());
    }

    // A fresh operator meeting the finished pipeline changes nothing.
    let before = snapshot(&datasets, &pretrains, &jobs).await?;
    operator.restart()?;
    reconciled(operator.process(), "Dataset").await?;
    reconciled(operator.process(), "PretrainJob").await?;
    // Past the controller's debounce, so any write of that pass has landed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = snapshot(&datasets, &pretrains, &jobs).await?;
    ensure!(
        before == after,
        "a restart after the end changed the state:\nbefore {before}\nafter  {after}"
    );

    // One Job per kind and generation, each the one first made.
    let names: BTreeSet<String> = after["jobs"]
        .as_object()
        .map(|jobs| jobs.keys().cloned().collect())
        .unwrap_or_default();
    ensure!(
        names == BTreeSet::from([PREPARE_JOB.to_string(), PRETRAIN_JOB.to_string()]),
        "Jobs {names:?}"
    );
    for name in [PREPARE_JOB, PRETRAIN_JOB] {
        let job = jobs.get(name).await?;
        let status = job.status.clone().unwrap_or_default();
        ensure!(
            status.succeeded == Some(1) && status.failed.unwrap_or(0) == 0,
            "Job {name}: {status:?}"
        );
    }
    monitor.finish()?;
    drop(operator);
    ns.delete(cluster).await
}

/// The holder of the leader Lease, when it has one.
async fn holder(leases: &Api<Lease>) -> anyhow::Result<Option<(String, i32, i32)>> {
    let Some(lease) = leases.get_opt(LEASE_NAME).await? else {
        return Ok(None);
    };
    let spec = lease.spec.unwrap_or_default();
    Ok(spec.holder_identity.filter(|h| !h.is_empty()).map(|h| {
        (
            h,
            spec.lease_duration_seconds.unwrap_or(0),
            spec.lease_transitions.unwrap_or(0),
        )
    }))
}

fn both_logs(a: &mut Process, b: &mut Process) -> String {
    format!("{}\n{}", a.log_tail(30), b.log_tail(30))
}

#[tokio::test]
async fn a_standby_takes_over_within_the_lease_when_the_leader_is_killed() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-faults-leader").await?;
    let mut operator = Operator::start_leader_elected(cluster, &ns, "replica-a").await?;
    let mut second = operator.replica("replica-b")?;
    let replayer = cluster.replayer().await?;
    let client = cluster.client().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns.name());
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());

    // One of the two takes the Lease; its duration is the operator's.
    let first = operator.process();
    let elected = eventually("a holder of the leader Lease", CHILD_TIMEOUT, || async {
        holder(&leases).await?.context("no holder")
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", both_logs(first, &mut second)))?;
    let (leader_name, duration, transitions) = elected;
    ensure!(
        i64::from(duration) == LEASE_DURATION.as_secs() as i64,
        "leaseDurationSeconds {duration}, the operator's is {LEASE_DURATION:?}"
    );
    let (leader, standby, standby_name) = match leader_name.as_str() {
        "replica-a" => (first, &mut second, "replica-b"),
        "replica-b" => (&mut second, first, "replica-a"),
        other => bail!("the Lease is held by {other}"),
    };
    ready(standby).await?;

    // Only the leader reconciles: a Dataset gets its Job, and the standby has
    // not run a single reconcile nor started its controllers.
    apply(&datasets, &dataset("before")?).await?;
    let result = eventually("the Job of the first Dataset", CHILD_TIMEOUT, || async {
        jobs.get("before-prepare-g1").await?;
        Ok(())
    })
    .await;
    result.map_err(|e| anyhow!("{e:#}\n{}", both_logs(leader, standby)))?;
    // The counter moves when a reconcile ends, after the Job was made.
    reconciled(leader, "Dataset").await?;
    let leading = metrics(leader)?;
    ensure!(
        sample(&leading, "llmops_operator_leader") == Some(1.0),
        "the Lease holder {leader_name} does not lead:\n{leading}"
    );
    let standing_by = metrics(standby)?;
    ensure!(
        sample(&standing_by, "llmops_operator_leader") == Some(0.0)
            && reconciles(&standing_by, "Dataset") == 0.0,
        "the standby {standby_name} leads or reconciled:\n{standing_by}"
    );
    ensure!(
        !standby.log().contains("leading: starting controllers"),
        "the standby started its controllers:\n{}",
        standby.log_tail(40)
    );
    let still = holder(&leases).await?;
    ensure!(
        still.as_ref().map(|h| (&h.0, h.2)) == Some((&leader_name, transitions)),
        "the Lease moved without a fault: {still:?}"
    );

    // SIGKILL: no release, so the standby must wait out the Lease, and no longer.
    leader.kill()?;
    let killed = Instant::now();
    let result = eventually(
        "the standby holding the Lease",
        LEASE_DURATION + TAKEOVER_SLACK * 2,
        || async {
            let now = holder(&leases).await?;
            ensure!(
                now.as_ref().is_some_and(|h| h.0 == standby_name),
                "held as {now:?}"
            );
            Ok(now)
        },
    )
    .await;
    let took = killed.elapsed();
    let taken = result.map_err(|e| anyhow!("{e:#}\n{}", standby.log_tail(40)))?;
    eprintln!("{standby_name} took over {took:?} after {leader_name} was killed");
    ensure!(
        took <= LEASE_DURATION + TAKEOVER_SLACK,
        "the takeover took {took:?}, more than the Lease's {LEASE_DURATION:?} and {TAKEOVER_SLACK:?}"
    );
    ensure!(
        taken.is_some_and(|h| h.2 == transitions + 1),
        "the Lease changed hands other than once"
    );

    // A Dataset made after the kill is prepared under the new leader.
    apply(&datasets, &dataset("after")?).await?;
    let selector = "batch.kubernetes.io/job-name=after-prepare-g1";
    let pod = replayer
        .running_pod(ns.name(), selector, CHILD_TIMEOUT)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", standby.log_tail(40)))?;
    let exit = replayer.start(&pod).await?.finish(TRAINER_TIMEOUT).await?;
    ensure!(
        exit.code == 0 && exit.status_written,
        "trainer prepare failed ({}):\n{}",
        exit.code,
        tail(&exit.log, 40)
    );
    let result = eventually("the second Dataset Ready", CHILD_TIMEOUT, || async {
        let object = serde_json::to_value(datasets.get("after").await?)?;
        has_condition(&object, "Ready", "True")?;
        ensure!(
            object
                .pointer("/status/artifact/digest")
                .and_then(Value::as_str)
                .is_some_and(|d| d.starts_with("sha256:")),
            "no artifact: {}",
            object["status"]
        );
        Ok(())
    })
    .await;
    result.map_err(|e| anyhow!("{e:#}\n{}", standby.log_tail(40)))?;
    let now_leading = metrics(standby)?;
    ensure!(
        sample(&now_leading, "llmops_operator_leader") == Some(1.0)
            && reconciles(&now_leading, "Dataset") >= 1.0,
        "the new leader's metrics:\n{now_leading}"
    );
    drop(second);
    drop(operator);
    ns.delete(cluster).await
}
