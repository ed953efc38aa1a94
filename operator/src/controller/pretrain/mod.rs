//! The PretrainJob controller: runs `trainer pretrain` pods on a Ready Dataset,
//! keeps them going through restarts and disruptions (each resumes from the newest
//! checkpoint), suspends and resumes them, and reports the trained model.
//!
//! resolve (Dataset artifact, output URI) → validate → build (ConfigMap, RBAC,
//! Service, Job) → apply (server-side apply, orphans deleted) → status (from the Job
//! and its pods).
//!
//! Contracts:
//! - **Lineage.** The Dataset must be Ready for its current generation; its
//!   artifact `{uri, digest}` is recorded in `status.dataset` when the Job is made
//!   and never changes afterwards (the trainer refuses data whose digest differs).
//! - **Pods.** `trainer pretrain --resource /etc/llmops/resource.yaml`; the resource
//!   is the PretrainJob with `spec.output.uri` defaulted to
//!   `<store>/pretrainjobs/<ns>/<name>` and `status.dataset` set. Env
//!   `LLMOPS_OUTPUT_URI`, `LLMOPS_PVC_ROOT`, the output Secret's
//!   `LLMOPS_CRED_<SECRET>_*` and the dataset store's Secret under the plain key
//!   names (the trainer reads the dataset with ambient credentials); with more than
//!   one replica `RANK` (the completion index), `WORLD_SIZE` (pods),
//!   `MASTER_ADDR=<name>-pretrain-0.<name>-workers`, `MASTER_PORT=29500`; with
//!   more than one GPU per pod `LLMOPS_PROCS_PER_POD=<gpus>`, and the trainer runs
//!   one rank per GPU (`LOCAL_RANK`, `RANK = pod × gpus + local`).
//! - **Failures.** Disruptions and exit 143 (SIGTERM, checkpoint saved) are retried
//!   without counting; exit 2 fails at once; other failures are retried up to
//!   `failurePolicy.maxRestarts` group restarts, each resuming from the newest
//!   checkpoint. `status.restarts` counts them. Output is never deleted.
//! - **Runs.** The Job is replaced only when the spec changes (`suspend` aside), and
//!   only after the old pods stopped; `suspend` is set on the live Job.

mod build;
mod resolve;
mod status;
mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use llmops_crds::{Dataset, JobPhase, PretrainJob};

use crate::runtime::Context;
use crate::runtime::apply::{
    FIELD_MANAGER, KeptChildren, MANAGED_BY_LABEL, apply, apply_status, children_selector,
    delete_unkept_children, parent_label_key,
};
use crate::runtime::conditions::{self, Outcome, transitions};
use crate::runtime::controller::{ControllerRun, ReconcileError, Scope, scoped_api, start};
use crate::runtime::stop::Stop;
use crate::workload::observe::{JobState, job_pods, job_state};
use build::{Children, RUN_HASH_ANNOTATION};
use resolve::Resolution;
use status::{Observed, OperatorStatus, reason};

/// The kind label of metrics and logs.
pub const KIND: &str = "PretrainJob";

/// How often a settled PretrainJob is looked at again even without a change.
const RESYNC: Duration = Duration::from_secs(600);
/// How often a PretrainJob waiting for its Dataset looks again (the Dataset watch
/// usually triggers it sooner).
const WAIT_RETRY: Duration = Duration::from_secs(30);
/// How often a running PretrainJob is looked at without a change to its pods.
const RUNNING_RESYNC: Duration = Duration::from_secs(120);
/// How often a Job being replaced is checked for pods still saving a checkpoint.
const REPLACE_RETRY: Duration = Duration::from_secs(5);

/// Why a PretrainJob reconcile failed; all are transient and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read Dataset {name} (spec.datasetRef): {source}")]
    ReadDataset { name: String, source: kube::Error },
    #[error("failed to render the resource file for the trainer: {0}")]
    RenderResource(#[from] serde_yaml_ng::Error),
    #[error("failed to apply {kind} {name} (check the operator's RBAC for it): {source}")]
    ApplyChild {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("failed to read Job {name}: {source}")]
    ReadJob { name: String, source: kube::Error },
    #[error("failed to set spec.suspend of Job {name}: {source}")]
    SuspendJob { name: String, source: kube::Error },
    #[error("failed to delete Job {name} to replace it: {source}")]
    ReplaceJob { name: String, source: kube::Error },
    #[error("failed to list the trainer pods: {source}")]
    ListPods { source: kube::Error },
    #[error("failed to delete outdated {kind} children: {source}")]
    DeleteOrphans {
        kind: &'static str,
        source: kube::Error,
    },
    #[error("failed to write the PretrainJob's status: {source}")]
    WriteStatus { source: kube::Error },
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::ReadDataset { .. } => "ReadDataset",
            Error::RenderResource(_) => "RenderResource",
            Error::ApplyChild { .. } => "ApplyChild",
            Error::ReadJob { .. } => "ReadJob",
            Error::SuspendJob { .. } => "SuspendJob",
            Error::ReplaceJob { .. } => "ReplaceJob",
            Error::ListPods { .. } => "ListPods",
            Error::DeleteOrphans { .. } => "DeleteOrphans",
            Error::WriteStatus { .. } => "WriteStatus",
        }
    }
}

/// One PretrainJob controller per namespace in `scope`, each watching
/// PretrainJobs, their Jobs, ConfigMaps and Services, their pods (by label), and
/// Datasets (a Dataset becoming Ready starts the PretrainJobs waiting for it).
pub fn controllers(ctx: &Arc<Context>, scope: &Scope, stop: &Stop) -> Vec<ControllerRun> {
    let client = &ctx.client;
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let by_label = watcher::Config::default().labels(&parent_label_key::<PretrainJob>());
    scope
        .targets()
        .into_iter()
        .map(|namespace| {
            let ns = namespace.as_deref();
            let controller = Controller::new(
                scoped_api::<PretrainJob>(client, ns),
                watcher::Config::default(),
            );
            let store = controller.store();
            let controller = controller
                .owns(scoped_api::<Job>(client, ns), ours.clone())
                .owns(scoped_api::<ConfigMap>(client, ns), ours.clone())
                .owns(scoped_api::<Service>(client, ns), ours.clone())
                .watches(scoped_api::<Pod>(client, ns), by_label.clone(), parent_of)
                .watches(
                    scoped_api::<Dataset>(client, ns),
                    watcher::Config::default(),
                    move |ds| waiting_on(&store.state(), &ds),
                );
            start(KIND, controller, ctx.clone(), stop.clone(), reconcile)
        })
        .collect()
}

/// The PretrainJob a labelled pod belongs to.
fn parent_of(pod: Pod) -> Option<ObjectRef<PretrainJob>> {
    let name = pod.labels().get(&parent_label_key::<PretrainJob>())?;
    Some(ObjectRef::new(name).within(&pod.namespace()?))
}

/// The PretrainJobs that reference `ds` and have not recorded their dataset yet:
/// only they care about the Dataset's changes.
fn waiting_on(jobs: &[Arc<PretrainJob>], ds: &Dataset) -> Vec<ObjectRef<PretrainJob>> {
    let (name, namespace) = (ds.name_any(), ds.namespace());
    jobs.iter()
        .filter(|pt| {
            pt.namespace() == namespace
                && pt.spec.dataset_ref.name == name
                && pt.status.as_ref().is_none_or(|s| s.dataset.is_none())
        })
        .map(|pt| ObjectRef::from_obj(pt.as_ref()))
        .collect()
}

async fn reconcile(pt: Arc<PretrainJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pt.metadata.deletion_timestamp.is_some() {
        // Children go with their owner; the model and checkpoints stay.
        return Ok(Action::await_change());
    }
    if status::finished_for_generation(&pt) {
        // A finished Job is final, and so is the status written from it.
        return Ok(Action::requeue(RESYNC));
    }
    let api: Api<PretrainJob> =
        Api::namespaced(ctx.client.clone(), &pt.namespace().unwrap_or_default());
    // Status writes below update this copy, so later steps compare against them.
    let mut pt = (*pt).clone();

    let first_sight = !pt.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == llmops_crds::condition::READY)
    });
    if first_sight {
        let observed = Observed::without_job(Outcome::FirstSight, JobPhase::Pending, None);
        write_status(&mut pt, &api, &ctx, observed).await?;
    }

    let resolved = match resolve::resolve(&pt, &ctx).await? {
        Resolution::Resolved(resolved) => resolved,
        Resolution::Waiting(outcome) => {
            let observed = Observed::without_job(outcome, JobPhase::Waiting, pt.status.as_ref());
            write_status(&mut pt, &api, &ctx, observed).await?;
            return Ok(Action::requeue(WAIT_RETRY));
        }
        Resolution::Stalled(outcome) => return stall(&mut pt, &api, &ctx, outcome).await,
    };
    if let Err(invalid) = validate::validate(&resolved) {
        let outcome = Outcome::stalled(reason::INVALID_SPEC, invalid.to_string());
        return stall(&mut pt, &api, &ctx, outcome).await;
    }

    let children = build::build(&resolved, &ctx.config)?;
    apply_children(&ctx.client, &children).await?;
    let job = ensure_job(&ctx.client, &pt, &children.job).await?;
    if !status::cleaned_up_for(&pt, &children.job.name_any()) {
        delete_children(&ctx.client, &pt, &kept(&children)).await?;
    }

    let Some(job) = job else {
        let outcome = Outcome::progressing(
            reason::REPLACING,
            format!(
                "replacing Job {}: waiting for the previous pods to save a checkpoint and stop",
                children.job.name_any()
            ),
        );
        let observed = Observed::without_job(outcome, JobPhase::Pending, pt.status.as_ref());
        write_status(&mut pt, &api, &ctx, observed).await?;
        return Ok(Action::requeue(REPLACE_RETRY));
    };

    let pods = job_pods(&ctx.client, &job)
        .await
        .map_err(|source| Error::ListPods { source })?;
    let state = job_state(&job, &status::telling_pods(&job, pods));
    let mut observed = status::observe(
        &state,
        &job,
        pt.spec.suspend,
        pt.spec.resources.replicas,
        pt.status.as_ref(),
    );
    observed.dataset = Some(resolved.dataset.clone());
    write_status(&mut pt, &api, &ctx, observed).await?;
    Ok(match state {
        JobState::Running { .. } => Action::requeue(RUNNING_RESYNC),
        _ => Action::requeue(RESYNC),
    })
}

/// Stalled before a Job could run: stop what runs (its pods checkpoint on the way
/// out) and wait for the spec to change.
async fn stall(
    pt: &mut PretrainJob,
    api: &Api<PretrainJob>,
    ctx: &Context,
    outcome: Outcome,
) -> Result<Action, Error> {
    delete_children(&ctx.client, pt, &KeptChildren::default()).await?;
    let observed = Observed::without_job(outcome, JobPhase::Failed, pt.status.as_ref());
    write_status(pt, api, ctx, observed).await?;
    Ok(Action::await_change())
}

/// Apply the RBAC, ConfigMap and Service (the Job is handled by [`ensure_job`]).
async fn apply_children(client: &Client, children: &Children) -> Result<(), Error> {
    let failed =
        |kind: &'static str, name: String| move |source| Error::ApplyChild { kind, name, source };
    let rbac = &children.rbac;
    apply(client, &rbac.service_account)
        .await
        .map_err(failed("ServiceAccount", rbac.service_account.name_any()))?;
    apply(client, &rbac.role)
        .await
        .map_err(failed("Role", rbac.role.name_any()))?;
    apply(client, &rbac.role_binding)
        .await
        .map_err(failed("RoleBinding", rbac.role_binding.name_any()))?;
    apply(client, &children.config_map)
        .await
        .map_err(failed("ConfigMap", children.config_map.name_any()))?;
    if let Some(service) = &children.service {
        apply(client, service)
            .await
            .map_err(failed("Service", service.name_any()))?;
    }
    Ok(())
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
/// A new Job is created only once no trainer pod of this PretrainJob runs any
/// more: two sets of pods must never write the same checkpoints. Suspending
/// deletes the pods, which save a checkpoint on SIGTERM; resuming starts new pods,
/// which resume from it.
async fn ensure_job(
    client: &Client,
    pt: &PretrainJob,
    desired: &Job,
) -> Result<Option<Job>, Error> {
    let namespace = pt.namespace().unwrap_or_default();
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
            if trainer_pods_running(client, pt).await? {
                return Ok(None);
            }
            apply(client, desired)
                .await
                .map(Some)
                .map_err(|source| Error::ApplyChild {
                    kind: "Job",
                    name,
                    source,
                })
        }
    }
}

/// Whether a trainer pod of `pt` is still running or stopping (saving a checkpoint).
async fn trainer_pods_running(client: &Client, pt: &PretrainJob) -> Result<bool, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pt.namespace().unwrap_or_default());
    let list = pods
        .list(&ListParams::default().labels(&children_selector(pt)))
        .await
        .map_err(|source| Error::ListPods { source })?;
    Ok(list.items.iter().any(|pod| {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        !matches!(phase, Some("Succeeded" | "Failed"))
    }))
}

/// Names of the children the current pass produced; everything else labelled as
/// the PretrainJob's goes.
fn kept(children: &Children) -> KeptChildren {
    KeptChildren {
        jobs: vec![children.job.name_any()],
        config_maps: vec![children.config_map.name_any()],
        services: Some(children.service.iter().map(|s| s.name_any()).collect()),
        rbac: vec![children.rbac.role.name_any()],
    }
}

async fn delete_children(
    client: &Client,
    pt: &PretrainJob,
    kept: &KeptChildren,
) -> Result<(), Error> {
    delete_unkept_children(client, pt, kept)
        .await
        .map(drop)
        .map_err(|(kind, source)| Error::DeleteOrphans { kind, source })
}

/// Write the operator's status fields if they differ from the current ones, and
/// publish an Event per condition transition.
async fn write_status(
    pt: &mut PretrainJob,
    api: &Api<PretrainJob>,
    ctx: &Context,
    observed: Observed,
) -> Result<(), Error> {
    let desired: OperatorStatus = status::desired_status(pt, observed, &conditions::now());
    if !status::needs_write(pt.status.as_ref(), &desired) {
        return Ok(());
    }
    apply_status(api, &*pt, &desired)
        .await
        .map_err(|source| Error::WriteStatus { source })?;
    let current = pt
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    ctx.events
        .transitions(&*pt, &transitions(current, &desired.conditions))
        .await;
    status::record(pt.status.get_or_insert_default(), desired);
    Ok(())
}
