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
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use llmops_crds::Dataset;

use crate::runtime::Context;
use crate::runtime::apply::{
    FIELD_MANAGER, KeptChildren, MANAGED_BY_LABEL, apply, apply_status, delete_unkept_children,
    parent_label_key,
};
use crate::runtime::conditions::{self, Outcome, transitions};
use crate::runtime::controller::{ControllerRun, ReconcileError, Scope, scoped_api, start};
use crate::runtime::stop::Stop;
use crate::workload::observe::{JobState, job_pods, job_state};
use build::Children;
use resolve::Resolution;
use status::{JobFields, OperatorStatus};

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
    #[error("failed to apply {kind} {name} (check the operator's RBAC for it): {source}")]
    ApplyChild {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("failed to read Job {name}: {source}")]
    ReadJob { name: String, source: kube::Error },
    #[error("failed to list the pods of Job {job}: {source}")]
    ListPods { job: String, source: kube::Error },
    #[error("failed to delete outdated {kind} children: {source}")]
    DeleteOrphans {
        kind: &'static str,
        source: kube::Error,
    },
    #[error("failed to write the Dataset's status: {source}")]
    WriteStatus { source: kube::Error },
    #[error("failed to update the Dataset's finalizers: {source}")]
    Finalizer { source: kube::Error },
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::ReadReference { .. } => "ReadReference",
            Error::RenderResource(_) => "RenderResource",
            Error::ApplyChild { .. } => "ApplyChild",
            Error::ReadJob { .. } => "ReadJob",
            Error::ListPods { .. } => "ListPods",
            Error::DeleteOrphans { .. } => "DeleteOrphans",
            Error::WriteStatus { .. } => "WriteStatus",
            Error::Finalizer { .. } => "Finalizer",
        }
    }
}

/// One Dataset controller per namespace in `scope`, each watching Datasets, their
/// ConfigMaps, and (by label, which also covers the owner-less cleanup Job) their
/// Jobs and pods.
pub fn controllers(ctx: &Arc<Context>, scope: &Scope, stop: &Stop) -> Vec<ControllerRun> {
    let client = &ctx.client;
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let by_label = watcher::Config::default().labels(&parent_label_key::<Dataset>());
    scope
        .targets()
        .into_iter()
        .map(|namespace| {
            let ns = namespace.as_deref();
            let controller = Controller::new(
                scoped_api::<Dataset>(client, ns),
                watcher::Config::default(),
            );
            let store = controller.store();
            let controller = controller
                .owns(scoped_api::<ConfigMap>(client, ns), ours.clone())
                .watches(scoped_api::<Job>(client, ns), by_label.clone(), parent_of)
                .watches(scoped_api::<Pod>(client, ns), by_label.clone(), parent_of)
                // A Dataset reusing another's tokenizer starts once that one is Ready.
                .watches(
                    scoped_api::<Dataset>(client, ns),
                    watcher::Config::default(),
                    move |changed| tokenizer_users(&store.state(), &changed),
                );
            start(KIND, controller, ctx.clone(), stop.clone(), reconcile)
        })
        .collect()
}

/// The Dataset a labelled child belongs to.
fn parent_of<K: ResourceExt>(child: K) -> Option<ObjectRef<Dataset>> {
    let name = child.labels().get(&parent_label_key::<Dataset>())?;
    Some(ObjectRef::new(name).within(&child.namespace()?))
}

/// The Datasets whose `tokenizer.datasetRef` names `changed`.
fn tokenizer_users(datasets: &[Arc<Dataset>], changed: &Dataset) -> Vec<ObjectRef<Dataset>> {
    datasets
        .iter()
        .filter(|d| {
            d.namespace() == changed.namespace()
                && d.spec
                    .tokenizer
                    .dataset_ref
                    .as_ref()
                    .is_some_and(|r| r.name == changed.name_any())
        })
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

async fn reconcile(ds: Arc<Dataset>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<Dataset> =
        Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    if ds.metadata.deletion_timestamp.is_some() {
        return finalize::on_deletion(&ds, &api, &ctx).await;
    }
    finalize::sync_finalizer(&ds, &api).await?;
    if status::finished_for_generation(&ds) {
        // A finished Job is final, and so is the status written from it: nothing to
        // do until the spec changes (not even resolving references again, whose
        // targets may have moved on since).
        return Ok(Action::requeue(RESYNC));
    }
    // Status writes below update this copy, so later steps compare against them.
    let mut ds = (*ds).clone();

    let first_sight = !ds.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == llmops_crds::condition::READY)
    });
    if first_sight {
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

    if let Err(invalid) = validate::validate(&resolved) {
        delete_children(&ctx.client, &ds, &KeptChildren::default()).await?;
        let outcome = Outcome::stalled(status::reason::INVALID_SPEC, invalid.to_string());
        write_status(&mut ds, &api, &ctx, &outcome, JobFields::default()).await?;
        return Ok(Action::await_change());
    }

    let children = build::build(&resolved, &ctx.config)?;
    let job = apply_children(&ctx.client, &ds, &children).await?;
    if !status::cleaned_up_for(&ds, &job.name_any()) {
        delete_children(&ctx.client, &ds, &kept(&children)).await?;
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
    apply(client, &children.job)
        .await
        .map_err(failed("Job", name))
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

async fn delete_children(client: &Client, ds: &Dataset, kept: &KeptChildren) -> Result<(), Error> {
    delete_unkept_children(client, ds, kept)
        .await
        .map(drop)
        .map_err(|(kind, source)| Error::DeleteOrphans { kind, source })
}

/// Write the operator's status fields if they differ from the current ones, and
/// publish an Event per condition transition.
async fn write_status(
    ds: &mut Dataset,
    api: &Api<Dataset>,
    ctx: &Context,
    outcome: &Outcome,
    fields: JobFields,
) -> Result<(), Error> {
    let desired: OperatorStatus = status::desired_status(ds, outcome, fields, &conditions::now());
    if !status::needs_write(ds.status.as_ref(), &desired) {
        return Ok(());
    }
    apply_status(api, &*ds, &desired)
        .await
        .map_err(|source| Error::WriteStatus { source })?;
    let current = ds
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    ctx.events
        .transitions(&*ds, &transitions(current, &desired.conditions))
        .await;
    status::record(ds.status.get_or_insert_default(), desired);
    Ok(())
}
