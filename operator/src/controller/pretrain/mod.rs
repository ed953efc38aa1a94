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
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use llmops_crds::{Dataset, JobPhase, PretrainJob};

use crate::runtime::Context;
use crate::runtime::apply::{
    FIELD_MANAGER, KeptChildren, MANAGED_BY_LABEL, apply_status, delete_unkept_children,
    parent_label_key,
};
use crate::runtime::conditions::{self, Outcome, transitions};
use crate::runtime::controller::{ControllerRun, ReconcileError, Scope, scoped_api, start};
use crate::runtime::stop::Stop;
use crate::workload::observe::{JobState, job_pods, job_state};
use crate::workload::training::run::{self, apply_children, ensure_job, kept};
use crate::workload::training::status::telling_pods;
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
    #[error(transparent)]
    Run(#[from] run::Error),
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
            Error::Run(err) => err.reason(),
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
        .map_err(|source| run::Error::ListPods { source })?;
    let state = job_state(&job, &telling_pods(&job, pods));
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
