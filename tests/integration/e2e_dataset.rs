//! End to end, Dataset: the real operator (as the chart's ServiceAccount) and the
//! real `trainer prepare`, replayed from the pod spec the operator generated,
//! against the real control plane.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodTemplateSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use llmops_crds::Dataset;
use llmops_tests::operator::Operator;
use llmops_tests::replay::{Exit, Replayer, tail};
use llmops_tests::{Cluster, TestNamespace, eventually, workspace_root};
use serde_json::{Value, json};

/// Generous: two cores are shared with compilers.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
pub const TRAINER_TIMEOUT: Duration = Duration::from_secs(600);

const QUICKSTART: &str = "quickstart-stories";

/// The condition `type` of an object's status.
pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// `Ok` when condition `type` has `status` for the object's current generation.
pub fn has_condition(object: &Value, type_: &str, status: &str) -> anyhow::Result<()> {
    let found = condition(object, type_).with_context(|| format!("no {type_} condition"))?;
    ensure!(
        found["status"] == status
            && found["observedGeneration"] == object["metadata"]["generation"],
        "{type_} is {found} (generation {})",
        object["metadata"]["generation"]
    );
    Ok(())
}

/// Ready for its generation, with a published artifact.
pub fn ready_with_artifact(object: &Value) -> anyhow::Result<()> {
    has_condition(object, "Ready", "True")?;
    ensure!(
        object.pointer("/status/artifact/digest").is_some(),
        "no artifact"
    );
    Ok(())
}

/// Poll object `name` until `check` accepts it (as JSON); the error carries the
/// last object seen and the operator's log tail.
pub async fn wait_for<K>(
    operator: &mut Operator,
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<Value>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let check = &check;
    let result = eventually(what, timeout, || async move {
        let object = serde_json::to_value(api.get(name).await?)?;
        check(&object).with_context(|| format!("status: {}", object["status"]))?;
        Ok(object)
    })
    .await;
    result.map_err(|e| anyhow!("{e:#}\n{}", operator.log_tail(60)))
}

/// Wait for Job `name` to exist.
pub async fn wait_for_job(
    operator: &mut Operator,
    client: &Client,
    name: &str,
) -> anyhow::Result<Job> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), operator.namespace());
    let value = wait_for(
        operator,
        &jobs,
        name,
        &format!("Job {name}"),
        CHILD_TIMEOUT,
        |_| Ok(()),
    )
    .await?;
    Ok(serde_json::from_value(value)?)
}

/// The pod of Job `job`, once the scheduler has placed it.
pub async fn job_pod(
    operator: &mut Operator,
    replayer: &Replayer,
    job: &str,
) -> anyhow::Result<Pod> {
    let selector = format!("batch.kubernetes.io/job-name={job}");
    replayer
        .running_pod(operator.namespace(), &selector, CHILD_TIMEOUT)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", operator.log_tail(40)))
}

/// Replay the running pod of Job `job` to its end.
pub async fn replay_job(
    operator: &mut Operator,
    replayer: &Replayer,
    job: &str,
) -> anyhow::Result<Exit> {
    let pod = job_pod(operator, replayer, job).await?;
    let exit = replayer.start(&pod).await?.finish(TRAINER_TIMEOUT).await?;
    ensure!(
        exit.status_written,
        "pod {} vanished before its status was written",
        exit.pod
    );
    Ok(exit)
}

/// Delete `name`, whose `deletionPolicy: Delete` holds it for its artifact's
/// cleanup: replay Job `<name>-clean` to success and wait until `name` is gone.
pub async fn delete_through_clean<K>(
    operator: &mut Operator,
    replayer: &Replayer,
    client: &Client,
    api: &Api<K>,
    name: &str,
) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    api.delete(name, &DeleteParams::background()).await?;
    let clean = format!("{name}-clean");
    wait_for_job(operator, client, &clean).await?;
    let exit = replay_job(operator, replayer, &clean).await?;
    ensure!(
        exit.code == 0,
        "trainer clean failed ({}): {}",
        exit.code,
        exit.message
    );
    let gone = eventually(&format!("{name} gone"), CHILD_TIMEOUT, || async {
        ensure!(api.get_opt(name).await?.is_none(), "still there");
        Ok(())
    })
    .await;
    gone.map_err(|e| anyhow!("{e:#}\n{}", operator.log_tail(40)))
}

/// The pod template runs as Pod Security "restricted" requires.
pub fn ensure_restricted(job: &Job) -> anyhow::Result<()> {
    ensure_restricted_template(&job.spec.as_ref().context("Job without spec")?.template)
}

/// A pod template (a Job's, a Deployment's) runs as Pod Security "restricted" requires.
pub fn ensure_restricted_template(template: &PodTemplateSpec) -> anyhow::Result<()> {
    let pod = serde_json::to_value(template)?;
    let spec = &pod["spec"];
    let container = &spec["containers"][0]["securityContext"];
    let checks = [
        (
            spec["securityContext"]["runAsNonRoot"] == true || container["runAsNonRoot"] == true,
            "runAsNonRoot",
        ),
        (
            container["allowPrivilegeEscalation"] == false,
            "allowPrivilegeEscalation: false",
        ),
        (
            container["capabilities"]["drop"] == json!(["ALL"]),
            "capabilities.drop [ALL]",
        ),
        (
            spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
                || container["seccompProfile"]["type"] == "RuntimeDefault",
            "seccompProfile RuntimeDefault",
        ),
        (
            container["readOnlyRootFilesystem"] == true,
            "readOnlyRootFilesystem",
        ),
    ];
    for (ok, what) in checks {
        ensure!(ok, "the pod lacks {what}: {pod}");
    }
    Ok(())
}

/// The directory of a `file://` URI.
pub fn local_dir(uri: &str) -> anyhow::Result<std::path::PathBuf> {
    uri.strip_prefix("file://")
        .map(Into::into)
        .with_context(|| format!("{uri} is not a file:// URI"))
}

async fn children_left(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<String>> {
    let selector = format!("llmops.dev/dataset={name}");
    let params = ListParams::default().labels(&selector);
    let mut left = Vec::new();
    macro_rules! count {
        ($kind:ty) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), namespace);
            for item in api.list(&params).await?.items {
                left.push(format!(
                    "{} {}",
                    <$kind as Resource>::kind(&()),
                    item.metadata.name.unwrap_or_default()
                ));
            }
        }};
    }
    count!(Job);
    count!(ConfigMap);
    count!(ServiceAccount);
    count!(Role);
    count!(RoleBinding);
    Ok(left)
}

#[tokio::test]
async fn dataset_lifecycle_with_the_real_trainer() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-dataset").await?;
    let mut operator = Operator::start(cluster, &ns).await?;
    let replayer = cluster.replayer().await?;
    let client = cluster.client().await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());

    let manifest = workspace_root().join("examples/quickstart/01-dataset.yaml");
    ns.apply(cluster, &manifest).await?;

    // Generation 1: a Job under Pod Security "restricted", run for real.
    let job = wait_for_job(&mut operator, &client, &format!("{QUICKSTART}-prepare-g1")).await?;
    ensure_restricted(&job)?;
    let preparing = wait_for(
        &mut operator,
        &datasets,
        QUICKSTART,
        "Ready=False while preparing",
        CHILD_TIMEOUT,
        |d| has_condition(d, "Ready", "False"),
    )
    .await?;
    ensure!(
        preparing.pointer("/status/job/name") == Some(&json!(format!("{QUICKSTART}-prepare-g1"))),
        "status.job does not name the Job: {}",
        preparing["status"]
    );
    let exit = replay_job(
        &mut operator,
        &replayer,
        &format!("{QUICKSTART}-prepare-g1"),
    )
    .await?;
    ensure!(
        exit.code == 0,
        "trainer prepare failed ({}):\n{}",
        exit.code,
        tail(&exit.log, 40)
    );

    let ready = wait_for(
        &mut operator,
        &datasets,
        QUICKSTART,
        "Ready=True with an artifact",
        CHILD_TIMEOUT,
        ready_with_artifact,
    )
    .await?;
    let stats = &ready["status"]["stats"];
    ensure!(
        stats["documentsIn"].as_i64() > Some(0) && stats["documentsOut"].as_i64() > Some(0),
        "stats not written: {stats}"
    );
    // The stats came through the API as the trainer's own field manager, on the
    // status subresource (the per-object Role allows nothing else).
    let trainer_fields = ready["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["manager"] == llmops_contract::TRAINER_FIELD_MANAGER)
        .with_context(|| {
            format!(
                "no managedFields entry of llmops-trainer: {}",
                ready["metadata"]
            )
        })?;
    ensure!(
        trainer_fields["subresource"] == "status"
            && trainer_fields["operation"] == "Apply"
            && trainer_fields
                .pointer("/fieldsV1/f:status/f:stats")
                .is_some(),
        "llmops-trainer does not own status.stats: {trainer_fields}"
    );
    // That identity reaches this Dataset's status and nothing else.
    let trainer = cluster
        .service_account_client(ns.name(), &format!("{QUICKSTART}-trainer"))
        .await?;
    let as_trainer: Api<Dataset> = Api::namespaced(trainer, ns.name());
    let stats_again = json!({"status": {"stats": stats}});
    as_trainer
        .patch_status(
            QUICKSTART,
            &PatchParams::default(),
            &Patch::Merge(&stats_again),
        )
        .await
        .context("the trainer's ServiceAccount may not patch its Dataset's status")?;
    for (what, result) in [
        (
            "its Dataset's spec",
            as_trainer
                .patch(
                    QUICKSTART,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"split": {"seed": 9}}})),
                )
                .await
                .map(|_| ()),
        ),
        (
            "another Dataset's status",
            as_trainer
                .patch_status(
                    "another",
                    &PatchParams::default(),
                    &Patch::Merge(&stats_again),
                )
                .await
                .map(|_| ()),
        ),
    ] {
        match result {
            Err(kube::Error::Api(e)) if e.code == 403 => {}
            other => anyhow::bail!("the trainer's ServiceAccount could patch {what}: {other:?}"),
        }
    }
    let message = condition(&ready, "Ready").unwrap()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(message.contains("docs"), "Ready message {message:?}");
    let table = cluster
        .kubectl(["get", "dataset", QUICKSTART, "-n", ns.name()])
        .await?
        .check()?;
    ensure!(
        table.contains("True") && table.contains(&message),
        "printer columns lack Ready and the message:\n{table}"
    );
    let artifact = ready["status"]["artifact"].clone();
    let dir = local_dir(artifact["uri"].as_str().unwrap_or_default())?;
    ensure!(
        dir.starts_with(operator.store()),
        "artifact {} outside the default store {}",
        dir.display(),
        operator.store().display()
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json"))
            .context("reading the artifact's manifest.json")?,
    )?;
    ensure!(
        manifest
            .to_string()
            .contains(artifact["digest"].as_str().unwrap_or("?")),
        "manifest.json does not carry the digest {}",
        artifact["digest"]
    );

    // A spec change: generation 2 gets its own Job, the old one goes.
    datasets
        .patch(
            QUICKSTART,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"split": {"seed": 2}}})),
        )
        .await?;
    wait_for_job(&mut operator, &client, &format!("{QUICKSTART}-prepare-g2")).await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());
    let old = format!("{QUICKSTART}-prepare-g1");
    eventually("the generation 1 Job deleted", CHILD_TIMEOUT, || async {
        match jobs.get_opt(&old).await? {
            Some(job) if job.metadata.deletion_timestamp.is_none() => Err(anyhow!("still there")),
            _ => Ok(()),
        }
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", operator.log_tail(40)))?;
    let exit = replay_job(
        &mut operator,
        &replayer,
        &format!("{QUICKSTART}-prepare-g2"),
    )
    .await?;
    ensure!(
        exit.code == 0,
        "trainer prepare (g2) failed:\n{}",
        tail(&exit.log, 40)
    );
    let ready2 = wait_for(
        &mut operator,
        &datasets,
        QUICKSTART,
        "Ready=True for generation 2",
        CHILD_TIMEOUT,
        |d| {
            has_condition(d, "Ready", "True")?;
            ensure!(
                d["status"]["observedGeneration"] == 2,
                "not generation 2 yet"
            );
            Ok(())
        },
    )
    .await?;
    ensure!(
        ready2["status"]["artifact"]["digest"] != artifact["digest"],
        "another split seed gave the same digest {}",
        artifact["digest"]
    );

    // Deletion removes the children.
    datasets
        .delete(QUICKSTART, &DeleteParams::background())
        .await?;
    let result = eventually(
        "the Dataset and its children gone",
        CHILD_TIMEOUT,
        || async {
            ensure!(
                datasets.get_opt(QUICKSTART).await?.is_none(),
                "the Dataset is still there"
            );
            let left = children_left(&client, ns.name(), QUICKSTART).await?;
            ensure!(left.is_empty(), "left: {left:?}");
            Ok(())
        },
    )
    .await;
    result.map_err(|e| anyhow!("{e:#}\n{}", operator.log_tail(40)))?;
    drop(operator);
    ns.delete(cluster).await
}

#[tokio::test]
async fn dataset_with_an_unreachable_source_is_stalled_with_the_trainers_error()
-> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-dataset-fail").await?;
    let mut operator = Operator::start(cluster, &ns).await?;
    let replayer = cluster.replayer().await?;
    let client = cluster.client().await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let name = "unreachable";
    let dataset: Dataset = serde_json::from_value(json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {
            "type": "pretraining",
            "sources": [{"http": {"url": "http://127.0.0.1:9/x"}}],
            "tokenizer": {"train": {"vocabSize": 300}},
            "segmentation": {"sequenceLength": 32},
        }
    }))?;
    datasets
        .patch(
            name,
            &PatchParams::apply("llmops-tests"),
            &Patch::Apply(&dataset),
        )
        .await?;
    let job = format!("{name}-prepare-g1");
    wait_for_job(&mut operator, &client, &job).await?;
    let exit = replay_job(&mut operator, &replayer, &job).await?;
    ensure!(
        exit.code != 0,
        "trainer prepare succeeded on an unreachable URL"
    );
    let line = exit.message.trim().to_string();
    ensure!(
        line.starts_with("error:") && !line.contains('\n') && line.contains("127.0.0.1:9"),
        "not one clear line naming the URL: {line:?}"
    );
    // A failure a retry may fix is retried (the prepare Job's backoffLimit is 3):
    // replay every attempt until the Job gives up. An error no retry fixes fails
    // the Job at once.
    if exit.code != i32::from(llmops_contract::exit::INVALID) {
        for _ in 0..3 {
            let retry = replay_job(&mut operator, &replayer, &job).await?;
            ensure!(
                retry.code != 0,
                "a retry of trainer prepare succeeded on an unreachable URL"
            );
        }
    }
    let stalled = wait_for(
        &mut operator,
        &datasets,
        name,
        "Stalled=True with the trainer's error",
        CHILD_TIMEOUT,
        |d| {
            has_condition(d, "Stalled", "True")?;
            let message = condition(d, "Stalled").unwrap()["message"]
                .as_str()
                .unwrap_or_default();
            ensure!(
                message.contains("127.0.0.1:9"),
                "Stalled message {message:?}"
            );
            Ok(())
        },
    )
    .await?;
    ensure!(
        condition(&stalled, "Ready").is_some_and(|c| c["status"] != "True"),
        "Ready despite the failure: {}",
        stalled["status"]
    );
    ensure!(
        stalled.pointer("/status/artifact").is_none(),
        "an artifact despite the failure: {}",
        stalled["status"]
    );
    drop(operator);
    ns.delete(cluster).await
}

#[tokio::test]
async fn deleting_a_dataset_with_deletion_policy_delete_removes_its_artifact() -> anyhow::Result<()>
{
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-dataset-delete").await?;
    let mut operator = Operator::start(cluster, &ns).await?;
    let replayer = cluster.replayer().await?;
    let client = cluster.client().await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let path = workspace_root().join("examples/quickstart/01-dataset.yaml");
    let mut manifest: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path)?)?;
    manifest["spec"]["output"] = json!({"deletionPolicy": "Delete"});
    let dataset: Dataset = serde_json::from_value(manifest)?;
    datasets
        .patch(
            QUICKSTART,
            &PatchParams::apply("llmops-tests"),
            &Patch::Apply(&dataset),
        )
        .await?;
    let job = format!("{QUICKSTART}-prepare-g1");
    wait_for_job(&mut operator, &client, &job).await?;
    let exit = replay_job(&mut operator, &replayer, &job).await?;
    ensure!(
        exit.code == 0,
        "trainer prepare failed:\n{}",
        tail(&exit.log, 40)
    );
    let ready = wait_for(
        &mut operator,
        &datasets,
        QUICKSTART,
        "Ready=True",
        CHILD_TIMEOUT,
        |d| has_condition(d, "Ready", "True"),
    )
    .await?;
    let dir = local_dir(
        ready["status"]["artifact"]["uri"]
            .as_str()
            .unwrap_or_default(),
    )?;
    ensure!(
        dir.join("manifest.json").exists(),
        "no artifact at {}",
        dir.display()
    );

    delete_through_clean(&mut operator, &replayer, &client, &datasets, QUICKSTART).await?;
    ensure!(
        !dir.exists(),
        "the artifact {} outlived its Dataset",
        dir.display()
    );
    drop(operator);
    ns.delete(cluster).await
}
