//! Keeping a run's children: the RBAC, ConfigMap and Service are applied every
//! pass; the Job is created once and afterwards only suspended, resumed or — when
//! the spec changed — replaced once its pods stopped. Also the steps of a pass
//! every training kind takes alike: keeping the run, reading its state, stopping
//! it, and when to look again.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};

use super::RUN_HASH_ANNOTATION;
use super::build::Children;
use super::status::telling_pods;
use crate::runtime::apply::{
    ApplyChildError, DeleteOrphansError, FIELD_MANAGER, KeptChildren, apply_child,
    children_selector, delete_unkept_children,
};
use crate::runtime::controller::ReconcileError;
use crate::runtime::status::ReportsStatus;
use crate::workload::observe::{JobState, job_pods, job_state};
use crate::workload::rbac::apply_rbac;
use crate::workload::record::{JobRecord, cleaned_up_for};

/// How often a settled run is looked at again even without a change.
pub const RESYNC: Duration = Duration::from_secs(600);
/// How often a run waiting for its inputs looks again (the watches on them
/// usually trigger it sooner).
pub const WAIT_RETRY: Duration = Duration::from_secs(30);
/// How often a running run is looked at without a change to its pods.
pub const RUNNING_RESYNC: Duration = Duration::from_secs(120);
/// How often a Job being replaced is checked for pods still saving a checkpoint.
pub const REPLACE_RETRY: Duration = Duration::from_secs(5);

/// Why keeping a run's children failed; all are transient.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    ApplyChild(#[from] ApplyChildError),
    #[error("failed to read Job {name}: {source}")]
    ReadJob { name: String, source: kube::Error },
    #[error("failed to set spec.suspend of Job {name}: {source}")]
    SuspendJob { name: String, source: kube::Error },
    #[error("failed to delete Job {name} to replace it: {source}")]
    ReplaceJob { name: String, source: kube::Error },
    #[error("failed to list the trainer pods: {source}")]
    ListPods { source: kube::Error },
    #[error(transparent)]
    DeleteOrphans(#[from] DeleteOrphansError),
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::ApplyChild(_) => "ApplyChild",
            Error::ReadJob { .. } => "ReadJob",
            Error::SuspendJob { .. } => "SuspendJob",
            Error::ReplaceJob { .. } => "ReplaceJob",
            Error::ListPods { .. } => "ListPods",
            Error::DeleteOrphans(_) => "DeleteOrphans",
        }
    }
}

/// Keep the run `children` describe: apply them, keep the Job (see [`ensure_job`])
/// and delete the children of earlier runs. The live Job, or `None` while an
/// outdated one is replaced.
pub async fn keep_run<K>(
    client: &Client,
    parent: &K,
    children: &Children,
) -> Result<Option<Job>, Error>
where
    K: ReportsStatus,
    K::Status: JobRecord,
{
    apply_children(client, children).await?;
    let job = ensure_job(client, parent, &children.job).await?;
    if !cleaned_up_for(parent, &children.job.name_any()) {
        delete_unkept_children(client, parent, &kept(children)).await?;
    }
    Ok(job)
}

/// Stop whatever runs for `parent` by deleting all its children (the pods save a
/// checkpoint on the way out).
pub async fn stop_run<K: Resource<DynamicType = ()>>(
    client: &Client,
    parent: &K,
) -> Result<(), Error> {
    delete_unkept_children(client, parent, &KeptChildren::default()).await?;
    Ok(())
}

/// Where the run of `job` stands, read from the pods that tell its story.
pub async fn run_state(client: &Client, job: &Job) -> Result<JobState, Error> {
    let pods = job_pods(client, job)
        .await
        .map_err(|source| Error::ListPods { source })?;
    Ok(job_state(job, &telling_pods(job, pods)))
}

/// When to look at a run in `state` again without a change.
pub fn requeue(state: &JobState) -> Action {
    match state {
        JobState::Running { .. } => Action::requeue(RUNNING_RESYNC),
        _ => Action::requeue(RESYNC),
    }
}

/// Apply the RBAC, ConfigMap and Service (the Job is handled by [`ensure_job`]).
pub async fn apply_children(client: &Client, children: &Children) -> Result<(), Error> {
    apply_rbac(client, &children.rbac).await?;
    apply_child(client, &children.config_map).await?;
    if let Some(service) = &children.service {
        apply_child(client, service).await?;
    }
    if let Some(policy) = &children.network_policy {
        apply_child(client, policy).await?;
    }
    Ok(())
}

/// Names of the children the current pass produced; everything else labelled as
/// the parent's goes.
pub fn kept(children: &Children) -> KeptChildren {
    KeptChildren {
        jobs: vec![children.job.name_any()],
        config_maps: vec![children.config_map.name_any()],
        services: Some(children.service.iter().map(|s| s.name_any()).collect()),
        rbac: vec![children.rbac.role.name_any()],
    }
}

/// What to do about the live Job, given the desired one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobAction {
    /// No Job: create it (once no older pods run).
    Create,
    /// The live Job is the desired one.
    Keep,
    /// The live Job is the desired one but for `spec.suspend`, which becomes this.
    SetSuspend(bool),
    /// The live Job runs an outdated spec: delete it.
    Replace,
    /// The live Job is being deleted: wait.
    WaitForDeletion,
}

/// A Job's pod template is immutable, so a Job is created once and afterwards only
/// its `spec.suspend` changes; a changed run hash (the spec changed) replaces it.
/// A finished Job is left alone: it cannot be suspended, and it is the record of
/// its run.
pub fn job_action(live: Option<&Job>, desired: &Job) -> JobAction {
    let Some(live) = live else {
        return JobAction::Create;
    };
    if live.metadata.deletion_timestamp.is_some() {
        return JobAction::WaitForDeletion;
    }
    if run_hash(live) != run_hash(desired) {
        return JobAction::Replace;
    }
    let suspend = |job: &Job| job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    let finished = matches!(
        job_state(live, &[]),
        JobState::Succeeded { .. } | JobState::Failed { .. }
    );
    if finished || suspend(live) == suspend(desired) {
        JobAction::Keep
    } else {
        JobAction::SetSuspend(suspend(desired))
    }
}

fn run_hash(job: &Job) -> Option<&str> {
    job.metadata
        .annotations
        .as_ref()?
        .get(RUN_HASH_ANNOTATION)
        .map(String::as_str)
}

/// The live Job matching `desired`, or `None` while an outdated one is replaced.
///
/// A new Job is created only once no trainer pod of `parent` runs any more: two
/// sets of pods must never write the same checkpoints. Suspending deletes the
/// pods, which save a checkpoint on SIGTERM; resuming starts new pods, which
/// resume from it.
pub async fn ensure_job<K: Resource<DynamicType = ()>>(
    client: &Client,
    parent: &K,
    desired: &Job,
) -> Result<Option<Job>, Error> {
    let namespace = parent.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let name = desired.name_any();
    let live = jobs.get_opt(&name).await.map_err(|source| Error::ReadJob {
        name: name.clone(),
        source,
    })?;
    match job_action(live.as_ref(), desired) {
        JobAction::Keep => Ok(live),
        JobAction::WaitForDeletion => Ok(None),
        JobAction::Replace => {
            tracing::info!(job = %name, "the run changed; replacing its Job");
            match jobs.delete(&name, &DeleteParams::background()).await {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
                Err(source) => Err(Error::ReplaceJob { name, source }),
            }
        }
        JobAction::SetSuspend(suspend) => {
            // A merge patch of the one field: an apply without the rest of the Job
            // would drop the fields this manager set at creation.
            let patch = serde_json::json!({"spec": {"suspend": suspend}});
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            jobs.patch(&name, &params, &Patch::Merge(&patch))
                .await
                .map(Some)
                .map_err(|source| Error::SuspendJob { name, source })
        }
        JobAction::Create => {
            if trainer_pods_running(client, parent).await? {
                return Ok(None);
            }
            Ok(Some(apply_child(client, desired).await?))
        }
    }
}

/// Whether a trainer pod of `parent` is still running or stopping (saving a
/// checkpoint).
async fn trainer_pods_running<K: Resource<DynamicType = ()>>(
    client: &Client,
    parent: &K,
) -> Result<bool, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &parent.namespace().unwrap_or_default());
    let list = pods
        .list(&ListParams::default().labels(&children_selector(parent)))
        .await
        .map_err(|source| Error::ListPods { source })?;
    Ok(list.items.iter().any(|pod| {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        !matches!(phase, Some("Succeeded" | "Failed"))
    }))
}
