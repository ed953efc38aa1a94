//! The Dataset controller: runs `trainer prepare` for each generation of a Dataset
//! and reports the prepared artifact.
//!
//! resolve (output URI, tokenizer reference) → validate → build (ConfigMap, RBAC, Job)
//! → apply (server-side apply, orphans deleted) → status (from the Job and its pod).

mod build;
mod finalize;
mod resolve;
mod status;
mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use llmops_crds::Dataset;

use crate::runtime::Context;
use crate::runtime::apply::{
    ApplyChildError, DeleteOrphansError, KeptChildren, apply_child, delete_unkept_children,
};
use crate::runtime::conditions::{self, Outcome};
use crate::runtime::controller::{
    ControllerRun, ReconcileError, Scope, controller_for, owned_children, referrers, scoped_api,
    start, watches_labelled, watches_metadata,
};
use crate::runtime::status::{WriteStatusError, first_sight};
use crate::runtime::stop::Stop;
use crate::workload::cleanup::CleanupError;
use crate::workload::observe::{JobState, job_pods, job_state};
use crate::workload::rbac::apply_rbac;
use crate::workload::record::{cleaned_up_for, finished_for_generation};
use build::Children;
use resolve::Resolution;
use status::JobFields;

/// The kind label of metrics and logs.
pub const KIND: &str = "Dataset";

/// How often a settled Dataset is looked at again even without a change.
const RESYNC: Duration = Duration::from_secs(600);
/// How often a Dataset waiting on a ConfigMap looks again (ConfigMaps are not
/// watched), or on another Dataset should the watch on it miss a change.
const WAIT_RETRY: Duration = Duration::from_secs(30);

/// Why a Dataset reconcile failed; all are transient and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {name}, which the spec refers to: {source}")]
    ReadReference { name: String, source: kube::Error },
    #[error("failed to render the resource file for the trainer: {0}")]
    RenderResource(#[from] serde_yaml_ng::Error),
    #[error(transparent)]
    ApplyChild(#[from] ApplyChildError),
    #[error("failed to read Job {name}: {source}")]
    ReadJob { name: String, source: kube::Error },
    #[error("failed to list the pods of Job {job}: {source}")]
    ListPods { job: String, source: kube::Error },
    #[error(transparent)]
    DeleteOrphans(#[from] DeleteOrphansError),
    #[error(transparent)]
    WriteStatus(#[from] WriteStatusError),
    #[error("deleting the Dataset's artifact: {0}")]
    Cleanup(#[from] CleanupError),
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::ReadReference { .. } => "ReadReference",
            Error::RenderResource(_) => "RenderResource",
            Error::ApplyChild(_) => "ApplyChild",
            Error::ReadJob { .. } => "ReadJob",
            Error::ListPods { .. } => "ListPods",
            Error::DeleteOrphans(_) => "DeleteOrphans",
            Error::WriteStatus(_) => "WriteStatus",
            Error::Cleanup(_) => "Cleanup",
        }
    }
}

/// One Dataset controller per namespace in `scope`, each watching Datasets, their
/// ConfigMaps, and (by label, which also covers the owner-less cleanup Job) their
/// Jobs and pods.
pub fn controllers(ctx: &Arc<Context>, scope: &Scope, stop: &Stop) -> Vec<ControllerRun> {
    let client = &ctx.client;
    scope.start_each(|ns| {
        let controller = controller_for::<Dataset>(client, ns);
        let store = controller.store();
        let controller = controller.owns(scoped_api::<ConfigMap>(client, ns), owned_children());
        let controller = watches_labelled::<Dataset, Job>(controller, client, ns);
        let controller = watches_labelled::<Dataset, Pod>(controller, client, ns);
        // A Dataset reusing another's tokenizer starts once that one is Ready.
        let controller = watches_metadata::<Dataset, Dataset, _>(
            controller,
            client,
            ns,
            watcher::Config::default(),
            move |changed| tokenizer_users(&store.state(), &changed),
        );
        start(KIND, controller, ctx.clone(), stop.clone(), reconcile)
    })
}

/// The Datasets whose `tokenizer.datasetRef` names `changed`.
fn tokenizer_users(
    datasets: &[Arc<Dataset>],
    changed: &impl ResourceExt,
) -> Vec<ObjectRef<Dataset>> {
    referrers(
        datasets,
        changed,
        |d| d.spec.tokenizer.dataset_ref.as_ref(),
        |_| true,
    )
}

async fn reconcile(ds: Arc<Dataset>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<Dataset> =
        Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    if ds.metadata.deletion_timestamp.is_some() {
        return finalize::on_deletion(&ds, &api, &ctx).await;
    }
    finalize::sync_finalizer(&ds, &api).await?;
    if finished_for_generation(ds.as_ref()) {
        // A finished Job is final, and so is the status written from it: nothing to
        // do until the spec changes (not even resolving references again, whose
        // targets may have moved on since).
        return Ok(Action::requeue(RESYNC));
    }
    // Status writes below update this copy, so later steps compare against them.
    let mut ds = (*ds).clone();

    if first_sight(&ds) {
        write_status(
            &mut ds,
            &api,
            &ctx,
            &Outcome::FirstSight,
            JobFields::default(),
        )
        .await?;
    }

    let resolved = match resolve::resolve(&ds, &ctx).await? {
        Resolution::Resolved(resolved) => resolved,
        Resolution::Waiting(outcome) => {
            write_status(&mut ds, &api, &ctx, &outcome, JobFields::default()).await?;
            return Ok(Action::requeue(WAIT_RETRY));
        }
    };

    let children = match validate::validate(&resolved) {
        Ok(valid) => build::build(&valid, &ctx.config)?,
        Err(invalid) => {
            delete_unkept_children(&ctx.client, &ds, &KeptChildren::default()).await?;
            let outcome = Outcome::stalled(status::reason::INVALID_SPEC, invalid.to_string());
            write_status(&mut ds, &api, &ctx, &outcome, JobFields::default()).await?;
            return Ok(Action::await_change());
        }
    };
    let job = apply_children(&ctx.client, &ds, &children).await?;
    if !cleaned_up_for(&ds, &job.name_any()) {
        delete_unkept_children(&ctx.client, &ds, &kept(&children)).await?;
    }

    let pods = job_pods(&ctx.client, &job)
        .await
        .map_err(|source| Error::ListPods {
            job: job.name_any(),
            source,
        })?;
    let state = job_state(&job, &pods);
    let current_stats = ds.status.as_ref().and_then(|s| s.stats.as_ref());
    let (outcome, fields) = status::observe(&state, &job, current_stats);
    write_status(&mut ds, &api, &ctx, &outcome, fields).await?;
    Ok(match state {
        JobState::Running { .. } => Action::requeue(Duration::from_secs(120)),
        _ => Action::requeue(RESYNC),
    })
}

/// Apply the RBAC and ConfigMap, and create the Job unless it exists.
async fn apply_children(client: &Client, ds: &Dataset, children: &Children) -> Result<Job, Error> {
    apply_rbac(client, &children.rbac).await?;
    apply_child(client, &children.config_map).await?;
    if let Some(policy) = &children.network_policy {
        apply_child(client, policy).await?;
    }

    // A Job's pod template is immutable and a Job is a record of one run: create it
    // once, then only read it.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ds.namespace().unwrap_or_default());
    let name = children.job.name_any();
    if let Some(job) = jobs.get_opt(&name).await.map_err(|source| Error::ReadJob {
        name: name.clone(),
        source,
    })? {
        return Ok(job);
    }
    Ok(apply_child(client, &children.job).await?)
}

/// Names of the children the current pass produced; everything else labelled as
/// the Dataset's goes.
fn kept(children: &Children) -> KeptChildren {
    KeptChildren {
        jobs: vec![children.job.name_any()],
        config_maps: vec![children.config_map.name_any()],
        services: None,
        rbac: vec![children.rbac.role.name_any()],
    }
}

/// Write the operator's status fields for `outcome` and `fields` (see
/// [`crate::runtime::status::write`]).
async fn write_status(
    ds: &mut Dataset,
    api: &Api<Dataset>,
    ctx: &Context,
    outcome: &Outcome,
    fields: JobFields,
) -> Result<(), Error> {
    let desired = status::desired_status(ds, outcome, fields, &conditions::now());
    Ok(crate::runtime::status::write(ds, api, &ctx.events, desired).await?)
}
