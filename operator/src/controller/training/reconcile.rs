//! One pass over a training kind (PretrainJob, FineTune): resolve → validate →
//! build → keep the run → status. The kinds differ in the inputs they resolve,
//! the pods they build and what they read from the trainer's result; the pass,
//! and when it looks again, is the same.

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use llmops_crds::JobPhase;
use serde::Serialize;

use super::build::build;
use super::run::{self, REPLACE_RETRY, RESYNC, WAIT_RETRY, keep_run, run_state, stop_run};
use super::status::{reason, replacing};
use super::validate::{Invalid, Valid};
use crate::config::OperatorConfig;
use crate::runtime::Context;
use crate::runtime::conditions::{Outcome, now};
use crate::runtime::controller::ReconcileError;
use crate::runtime::status::{ReportsStatus, WriteStatusError, Written, first_sight, write};
use crate::workload::cleanup::{self, CleanupError, Deletion, OwnsArtifact, build_clean_job};
use crate::workload::observe::JobState;
use crate::workload::record::{JobRecord, finished_for_generation};

/// The result of resolving a run's inputs: ready to go, waiting, or impossible.
#[derive(Clone, Debug)]
pub enum Resolution<R> {
    Resolved(Box<R>),
    /// Waiting for something outside our control (Reconciling, phase Waiting).
    Waiting(Outcome),
    /// Only a spec change helps (Stalled).
    Stalled(Outcome),
}

/// What sets one training kind apart in a pass.
pub trait TrainingKind:
    ReportsStatus<Status: JobRecord, Scope = NamespaceResourceScope>
    + OwnsArtifact
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The kind as the trainer sees it, with its inputs.
    type Resolved: Send + Sync;
    /// Everything a pass concluded, apart from conditions.
    type Observed: Send;
    type Error: ReconcileError
        + From<run::Error>
        + From<serde_yaml_ng::Error>
        + From<WriteStatusError>
        + From<CleanupError>;

    /// Where the run writes its models and checkpoints, and the Secret that
    /// reaches that store.
    fn artifact_location(&self, config: &OperatorConfig) -> (String, Option<String>);

    fn resolve(
        &self,
        ctx: &Context,
    ) -> impl Future<Output = Result<Resolution<Self::Resolved>, Self::Error>> + Send;
    /// What the run's children are built from, once `resolved` is known to be
    /// runnable.
    fn validate(resolved: &Self::Resolved) -> Result<Valid<'_, Self>, Invalid>;
    /// A pass that did not get as far as a Job: results, times and counters stay
    /// as they are in `current`.
    fn without_job(
        outcome: Outcome,
        phase: JobPhase,
        current: Option<&Self::Status>,
    ) -> Self::Observed;
    /// A pass that read the live Job, in `state`; records the lineage `resolved`.
    fn observe(&self, state: &JobState, job: &Job, resolved: &Self::Resolved) -> Self::Observed;
    /// The operator's status for `observed`, keeping condition times from the
    /// current status.
    fn desired_status(&self, observed: Self::Observed, now: &Time) -> Written<Self::Fields>;
}

/// A deleted object's pass: its artifact's cleanup, when it holds the finalizer
/// ([`crate::workload::cleanup`]).
async fn delete_artifact<K: TrainingKind>(
    obj: &K,
    api: &Api<K>,
    ctx: &Context,
) -> Result<Action, K::Error> {
    let (uri, secret) = obj.artifact_location(&ctx.config);
    let clean = build_clean_job(obj, &uri, secret.as_deref(), &ctx.config);
    Ok(
        match cleanup::on_deletion(obj, api, ctx, &uri, clean).await? {
            Deletion::Done => Action::await_change(),
            Deletion::Wait { after, .. } => Action::requeue(after),
        },
    )
}

/// One pass over `obj`.
pub async fn reconcile<K: TrainingKind>(
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, K::Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    if obj.meta().deletion_timestamp.is_some() {
        // Children go with their owner; the models and checkpoints stay unless
        // `deletionPolicy: Delete`.
        return delete_artifact(obj.as_ref(), &api, &ctx).await;
    }
    cleanup::sync_finalizer(obj.as_ref(), &api).await?;
    if finished_for_generation(obj.as_ref()) {
        // A finished Job is final, and so is the status written from it.
        return Ok(Action::requeue(RESYNC));
    }
    // Status writes below update this copy, so later steps compare against them.
    let mut obj = (*obj).clone();

    if first_sight(&obj) {
        let observed = K::without_job(Outcome::FirstSight, JobPhase::Pending, None);
        write_status(&mut obj, &api, &ctx, observed).await?;
    }

    let resolved = match obj.resolve(&ctx).await? {
        Resolution::Resolved(resolved) => resolved,
        Resolution::Waiting(outcome) => {
            let observed = K::without_job(outcome, JobPhase::Waiting, obj.status());
            write_status(&mut obj, &api, &ctx, observed).await?;
            return Ok(Action::requeue(WAIT_RETRY));
        }
        Resolution::Stalled(outcome) => return stall(&mut obj, &api, &ctx, outcome).await,
    };
    let children = match K::validate(&resolved) {
        Ok(valid) => build(&valid, &ctx.config)?,
        Err(invalid) => {
            let outcome = Outcome::stalled(reason::INVALID_SPEC, invalid.to_string());
            return stall(&mut obj, &api, &ctx, outcome).await;
        }
    };
    let Some(job) = keep_run(&ctx.client, &obj, &children).await? else {
        let outcome = replacing(&children.job.name_any());
        let observed = K::without_job(outcome, JobPhase::Pending, obj.status());
        write_status(&mut obj, &api, &ctx, observed).await?;
        return Ok(Action::requeue(REPLACE_RETRY));
    };

    let state = run_state(&ctx.client, &job).await?;
    let observed = obj.observe(&state, &job, &resolved);
    write_status(&mut obj, &api, &ctx, observed).await?;
    Ok(run::requeue(&state))
}

/// Stalled before a Job could run: stop what runs (its pods checkpoint on the way
/// out) and wait for the spec to change.
async fn stall<K: TrainingKind>(
    obj: &mut K,
    api: &Api<K>,
    ctx: &Context,
    outcome: Outcome,
) -> Result<Action, K::Error> {
    stop_run(&ctx.client, obj).await?;
    let observed = K::without_job(outcome, JobPhase::Failed, obj.status());
    write_status(obj, api, ctx, observed).await?;
    Ok(Action::await_change())
}

async fn write_status<K: TrainingKind>(
    obj: &mut K,
    api: &Api<K>,
    ctx: &Context,
    observed: K::Observed,
) -> Result<(), K::Error> {
    let desired = obj.desired_status(observed, &now());
    Ok(write(obj, api, &ctx.events, desired).await?)
}
