//! The FineTune controller: runs `trainer finetune` pods on a base model and a
//! Ready Dataset, keeps them going through restarts and disruptions (each resumes
//! from the newest checkpoint), suspends and resumes them, and publishes the
//! model only when it passes its quality gates.
//!
//! resolve (base model and Dataset artifacts, output URI) → validate → build
//! (ConfigMap, RBAC, Service, Job) → apply (server-side apply, orphans deleted) →
//! status (from the Job and its pods). The Job, its pods and its lifecycle are
//! those of a PretrainJob ([`crate::workload::training`]).
//!
//! Contracts:
//! - **Lineage.** `spec.baseModel` is a `uri` (digest unknown to the operator), or
//!   a PretrainJob or FineTune that must be Ready for its current generation (its
//!   `status.artifact`); the Dataset must be Ready too. Until then the FineTune
//!   waits (`WaitingForBaseModel`, `WaitingForDataset`, naming what). Both
//!   artifacts are recorded in `status.lineage` when the Job is made and never
//!   change afterwards.
//! - **Pods.** `trainer finetune --resource /etc/llmops/resource.yaml`; the
//!   resource is the FineTune with `spec.output.uri` defaulted to
//!   `<store>/finetunes/<ns>/<name>`, `spec.baseModel.credentialsSecretRef` set to
//!   the Secret the base model is read with, and `status.lineage` set. Env,
//!   replicas, GPUs and failures as for a PretrainJob; the base model's Secret
//!   also arrives as `LLMOPS_CRED_<SECRET>_*`.
//! - **Result.** `{"artifact", "progress", "evaluation", "gate"}` on the
//!   termination message: `status.evaluation` and `status.gate` always; a passed
//!   gate (or none) → `status.artifact`, Ready; a failed gate → no artifact,
//!   Stalled (`GateFailed`) with the gate message and where the model was left.
//!   Nothing is deleted.

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
use llmops_crds::{Artifact, Dataset, FineTune, JobPhase, LocalObjectRef, PretrainJob};

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
pub const KIND: &str = "FineTune";

/// How often a settled FineTune is looked at again even without a change.
const RESYNC: Duration = Duration::from_secs(600);
/// How often a FineTune waiting for its inputs looks again (the watches usually
/// trigger it sooner).
const WAIT_RETRY: Duration = Duration::from_secs(30);
/// How often a running FineTune is looked at without a change to its pods.
const RUNNING_RESYNC: Duration = Duration::from_secs(120);
/// How often a Job being replaced is checked for pods still saving a checkpoint.
const REPLACE_RETRY: Duration = Duration::from_secs(5);

/// Why a FineTune reconcile failed; all are transient and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {kind} {name}: {source}")]
    ReadInput {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("failed to render the resource file for the trainer: {0}")]
    RenderResource(#[from] serde_yaml_ng::Error),
    #[error(transparent)]
    Run(#[from] run::Error),
    #[error("failed to delete outdated {kind} children: {source}")]
    DeleteOrphans {
        kind: &'static str,
        source: kube::Error,
    },
    #[error("failed to write the FineTune's status: {source}")]
    WriteStatus { source: kube::Error },
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::ReadInput { .. } => "ReadInput",
            Error::RenderResource(_) => "RenderResource",
            Error::Run(err) => err.reason(),
            Error::DeleteOrphans { .. } => "DeleteOrphans",
            Error::WriteStatus { .. } => "WriteStatus",
        }
    }
}

/// One FineTune controller per namespace in `scope`, each watching FineTunes,
/// their Jobs, ConfigMaps and Services, their pods (by label), and the Datasets,
/// PretrainJobs and FineTunes they start from (a new artifact starts the
/// FineTunes waiting for it).
pub fn controllers(ctx: &Arc<Context>, scope: &Scope, stop: &Stop) -> Vec<ControllerRun> {
    let client = &ctx.client;
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let by_label = watcher::Config::default().labels(&parent_label_key::<FineTune>());
    scope
        .targets()
        .into_iter()
        .map(|namespace| {
            let ns = namespace.as_deref();
            let controller = Controller::new(
                scoped_api::<FineTune>(client, ns),
                watcher::Config::default(),
            );
            let (for_dataset, for_pretrain, for_finetune) =
                (controller.store(), controller.store(), controller.store());
            let controller = controller
                .owns(scoped_api::<Job>(client, ns), ours.clone())
                .owns(scoped_api::<ConfigMap>(client, ns), ours.clone())
                .owns(scoped_api::<Service>(client, ns), ours.clone())
                .watches(scoped_api::<Pod>(client, ns), by_label.clone(), parent_of)
                .watches(
                    scoped_api::<Dataset>(client, ns),
                    watcher::Config::default(),
                    move |ds| {
                        let artifact = ds.status.as_ref().and_then(|s| s.artifact.as_ref());
                        waiting_for(&for_dataset.state(), &ds, artifact, |ft| {
                            Some(&ft.spec.dataset_ref)
                        })
                    },
                )
                .watches(
                    scoped_api::<PretrainJob>(client, ns),
                    watcher::Config::default(),
                    move |pt| {
                        let artifact = pt.status.as_ref().and_then(|s| s.artifact.as_ref());
                        waiting_for(&for_pretrain.state(), &pt, artifact, |ft| {
                            ft.spec.base_model.pretrain_job_ref.as_ref()
                        })
                    },
                )
                .watches(
                    scoped_api::<FineTune>(client, ns),
                    watcher::Config::default(),
                    move |base| {
                        let artifact = base.status.as_ref().and_then(|s| s.artifact.as_ref());
                        waiting_for(&for_finetune.state(), &base, artifact, |ft| {
                            ft.spec.base_model.fine_tune_ref.as_ref()
                        })
                    },
                );
            start(KIND, controller, ctx.clone(), stop.clone(), reconcile)
        })
        .collect()
}

/// The FineTune a labelled pod belongs to.
fn parent_of(pod: Pod) -> Option<ObjectRef<FineTune>> {
    let name = pod.labels().get(&parent_label_key::<FineTune>())?;
    Some(ObjectRef::new(name).within(&pod.namespace()?))
}

/// The FineTunes referencing `producer` (through `reference`) that have not
/// recorded their lineage yet, when the producer has an artifact: only then can
/// its change end their wait, so a producer's progress updates while it runs
/// trigger nothing.
fn waiting_for<P: ResourceExt>(
    fine_tunes: &[Arc<FineTune>],
    producer: &P,
    artifact: Option<&Artifact>,
    reference: impl Fn(&FineTune) -> Option<&LocalObjectRef>,
) -> Vec<ObjectRef<FineTune>> {
    if artifact.is_none() {
        return Vec::new();
    }
    let (name, namespace) = (producer.name_any(), producer.namespace());
    fine_tunes
        .iter()
        .filter(|ft| {
            ft.namespace() == namespace
                && reference(ft).is_some_and(|r| r.name == name)
                && ft.status.as_ref().is_none_or(|s| s.lineage.is_none())
        })
        .map(|ft| ObjectRef::from_obj(ft.as_ref()))
        .collect()
}

async fn reconcile(ft: Arc<FineTune>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ft.metadata.deletion_timestamp.is_some() {
        // Children go with their owner; the model and checkpoints stay.
        return Ok(Action::await_change());
    }
    if status::finished_for_generation(&ft) {
        // A finished Job is final, and so is the status written from it.
        return Ok(Action::requeue(RESYNC));
    }
    let api: Api<FineTune> =
        Api::namespaced(ctx.client.clone(), &ft.namespace().unwrap_or_default());
    // Status writes below update this copy, so later steps compare against them.
    let mut ft = (*ft).clone();

    let first_sight = !ft.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == llmops_crds::condition::READY)
    });
    if first_sight {
        let observed = Observed::without_job(Outcome::FirstSight, JobPhase::Pending, None);
        write_status(&mut ft, &api, &ctx, observed).await?;
    }

    let resolved = match resolve::resolve(&ft, &ctx).await? {
        Resolution::Resolved(resolved) => resolved,
        Resolution::Waiting(outcome) => {
            let observed = Observed::without_job(outcome, JobPhase::Waiting, ft.status.as_ref());
            write_status(&mut ft, &api, &ctx, observed).await?;
            return Ok(Action::requeue(WAIT_RETRY));
        }
        Resolution::Stalled(outcome) => return stall(&mut ft, &api, &ctx, outcome).await,
    };
    if let Err(invalid) = validate::validate(&resolved) {
        let outcome = Outcome::stalled(reason::INVALID_SPEC, invalid.to_string());
        return stall(&mut ft, &api, &ctx, outcome).await;
    }

    let children = build::build(&resolved, &ctx.config)?;
    apply_children(&ctx.client, &children).await?;
    let job = ensure_job(&ctx.client, &ft, &children.job).await?;
    if !status::cleaned_up_for(&ft, &children.job.name_any()) {
        delete_children(&ctx.client, &ft, &kept(&children)).await?;
    }

    let Some(job) = job else {
        let outcome = Outcome::progressing(
            reason::REPLACING,
            format!(
                "replacing Job {}: waiting for the previous pods to save a checkpoint and stop",
                children.job.name_any()
            ),
        );
        let observed = Observed::without_job(outcome, JobPhase::Pending, ft.status.as_ref());
        write_status(&mut ft, &api, &ctx, observed).await?;
        return Ok(Action::requeue(REPLACE_RETRY));
    };

    let pods = job_pods(&ctx.client, &job)
        .await
        .map_err(|source| run::Error::ListPods { source })?;
    let state = job_state(&job, &telling_pods(&job, pods));
    let mut observed = status::observe(&state, &job, &ft, &resolved.output_uri);
    observed.lineage = resolved
        .fine_tune
        .status
        .as_ref()
        .and_then(|s| s.lineage.clone());
    write_status(&mut ft, &api, &ctx, observed).await?;
    Ok(match state {
        JobState::Running { .. } => Action::requeue(RUNNING_RESYNC),
        _ => Action::requeue(RESYNC),
    })
}

/// Stalled before a Job could run: stop what runs (its pods checkpoint on the way
/// out) and wait for the spec to change.
async fn stall(
    ft: &mut FineTune,
    api: &Api<FineTune>,
    ctx: &Context,
    outcome: Outcome,
) -> Result<Action, Error> {
    delete_children(&ctx.client, ft, &KeptChildren::default()).await?;
    let observed = Observed::without_job(outcome, JobPhase::Failed, ft.status.as_ref());
    write_status(ft, api, ctx, observed).await?;
    Ok(Action::await_change())
}

async fn delete_children(client: &Client, ft: &FineTune, kept: &KeptChildren) -> Result<(), Error> {
    delete_unkept_children(client, ft, kept)
        .await
        .map(drop)
        .map_err(|(kind, source)| Error::DeleteOrphans { kind, source })
}

/// Write the operator's status fields if they differ from the current ones, and
/// publish an Event per condition transition.
async fn write_status(
    ft: &mut FineTune,
    api: &Api<FineTune>,
    ctx: &Context,
    observed: Observed,
) -> Result<(), Error> {
    let desired: OperatorStatus = status::desired_status(ft, observed, &conditions::now());
    if !status::needs_write(ft.status.as_ref(), &desired) {
        return Ok(());
    }
    apply_status(api, &*ft, &desired)
        .await
        .map_err(|source| Error::WriteStatus { source })?;
    let current = ft
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    ctx.events
        .transitions(&*ft, &transitions(current, &desired.conditions))
        .await;
    status::record(ft.status.get_or_insert_default(), desired);
    Ok(())
}
