//! Deleting an object's artifact with it (`spec.output.deletionPolicy: Delete`),
//! for every kind that writes one. The finalizer `llmops.dev/artifact-cleanup`
//! holds the object while a `trainer clean` Job deletes the artifact's prefix,
//! but never for long: a finalizer that waits on a Job that cannot run would block
//! the namespace's deletion and a GitOps prune. When the Job fails, has not
//! succeeded [`CLEANUP_TIMEOUT`] after the deletion, or the namespace is being
//! deleted, the finalizer is removed anyway and a Warning Event says where the
//! artifact was left ([`decide`]).
//!
//! The trainer deletes only a prefix whose ownership marker names this object
//! (kind, namespace, name, uid), so a mistyped `output.uri` never costs anyone
//! else's data.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use llmops_contract::{env as var, exit, path};
use serde::de::DeserializeOwned;

use super::credentials::credential_env;
use super::job::{TrainerJob, env, pod_failure_policy};
use super::observe::{JobState, job_pods, job_state};
use super::storage::{PvcMounts, pvc_claim};
use super::telemetry::PodTelemetry;
use crate::config::OperatorConfig;
use crate::runtime::Context;
use crate::runtime::apply::{
    ApplyChildError, DeleteOrphansError, apply, child_labels, children_selector, delete_orphans,
};

/// Holds an object whose artifact is deleted with it until the artifact is gone.
pub const FINALIZER: &str = "llmops.dev/artifact-cleanup";
/// Annotation on the cleanup Job naming the object it cleans up after, so a
/// finished Job of an earlier object with the same name is never taken for ours.
const FOR_UID_ANNOTATION: &str = "llmops.dev/for-uid";
/// How long after the deletion the finalizer waits for the clean Job to succeed.
/// Deleting a directory takes seconds to minutes; past this the Job is stuck (no
/// node, no access to the store) and holding the object longer only blocks
/// whoever deletes it.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a running clean Job is looked at (its pods' changes trigger a pass
/// sooner).
const CLEANUP_POLL: Duration = Duration::from_secs(30);
/// How soon to look again while the clean Job is being created.
const CLEANUP_START_RETRY: Duration = Duration::from_secs(2);

/// `app.kubernetes.io/component` of the artifact cleanup Job.
pub const CLEAN_COMPONENT: &str = "clean";
/// Seconds a finished cleanup Job is kept. It has no owner (it must outlive the
/// object's deletion), so the TTL controller removes it.
pub const CLEAN_JOB_TTL_SECONDS: i32 = 600;
/// Failed pods the clean Job replaces before it fails. Disruptions do not count.
pub const CLEAN_BACKOFF_LIMIT: i32 = 3;
/// How long the clean Job may be active. It has no owner and may outlive the
/// operator's interest in it (the finalizer gives up sooner), so it must stop on
/// its own.
pub const CLEAN_DEADLINE_SECONDS: i64 = 3600;
/// Size limit of the clean pod's `/tmp`: it deletes, it writes next to nothing.
pub const CLEAN_SCRATCH_SIZE: &str = "1Gi";

/// `<name>-clean`.
pub fn clean_job_name(name: &str) -> String {
    format!("{name}-clean")
}

/// A kind whose artifact may be deleted with it.
pub trait OwnsArtifact:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned
{
    /// Whether `spec.output.deletionPolicy` is `Delete`.
    fn deletes_artifact(&self) -> bool;
}

/// Why a deletion pass failed; retried.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("failed to update the finalizers: {source}")]
    Finalizer { source: kube::Error },
    #[error("failed to read Job {name}: {source}")]
    ReadJob { name: String, source: kube::Error },
    #[error(transparent)]
    ApplyChild(#[from] ApplyChildError),
    #[error(transparent)]
    DeleteOrphans(#[from] DeleteOrphansError),
}

/// The clean Job of a deleted object, as the finalizer sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum CleanJob {
    /// Not there yet: being created, or one left by an earlier object of the same
    /// name is being removed first, or it could not be created.
    Absent,
    Running,
    Succeeded,
    Failed {
        error: String,
    },
}

impl From<JobState> for CleanJob {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Succeeded { .. } => CleanJob::Succeeded,
            JobState::Failed { error } => CleanJob::Failed { error },
            JobState::Running { .. } => CleanJob::Running,
        }
    }
}

/// What the finalizer does in one pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Cleanup {
    /// The artifact is deleted: remove the finalizer.
    Release,
    /// Keep the object and look again after this long at most.
    Wait(Duration),
    /// Remove the finalizer with the artifact not (or not wholly) deleted.
    GiveUp(GiveUp),
}

/// Why the finalizer stops waiting for the clean Job.
#[derive(Clone, Debug, PartialEq)]
pub enum GiveUp {
    /// The namespace is being deleted: no Job can start in it, and a running one
    /// is deleted with it.
    NamespaceTerminating,
    /// The clean Job failed (after its retries).
    JobFailed { error: String },
    /// The clean Job has not succeeded within [`CLEANUP_TIMEOUT`].
    TimedOut,
}

/// Reasons of the Warning Events a cleanup that gave up publishes.
pub mod reason {
    pub const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";
    pub const CLEANUP_FAILED: &str = "CleanupFailed";
    pub const CLEANUP_TIMED_OUT: &str = "CleanupTimedOut";
}

impl GiveUp {
    /// The Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            GiveUp::NamespaceTerminating => reason::NAMESPACE_TERMINATING,
            GiveUp::JobFailed { .. } => reason::CLEANUP_FAILED,
            GiveUp::TimedOut => reason::CLEANUP_TIMED_OUT,
        }
    }

    /// The Event's note: what happened, what was left where, and what to do.
    pub fn message(&self, kind: &str, uri: &str, job: &str) -> String {
        let why = match self {
            GiveUp::NamespaceTerminating => {
                format!("the namespace is being deleted, so Job {job} cannot delete the artifact")
            }
            GiveUp::JobFailed { error } => format!("Job {job} failed: {error}"),
            GiveUp::TimedOut => format!(
                "Job {job} did not succeed within {}s of the {kind}'s deletion and was stopped",
                CLEANUP_TIMEOUT.as_secs()
            ),
        };
        format!(
            "finalizer {FINALIZER} removed without deleting the artifact: {why}; the artifact at {uri} is left as it is (possibly in part) and must be deleted by hand"
        )
    }

    /// Whether a clean Job still running is deleted: one that outlived the
    /// deadline would delete an artifact the Event said was left; a failed one
    /// is kept for its logs (its TTL removes it).
    fn stops_job(&self) -> bool {
        !matches!(self, GiveUp::JobFailed { .. })
    }
}

/// The finalizer's decision, from when the object was deleted, the time now,
/// what its clean Job says and whether its namespace is being deleted. A clean
/// Job that succeeded always releases the object; otherwise a terminating
/// namespace or a failed Job gives up at once, and a Job that is absent or
/// running is waited for until [`CLEANUP_TIMEOUT`] after the deletion.
pub fn decide(
    deleted_at: Timestamp,
    now: Timestamp,
    job: &CleanJob,
    namespace_terminating: bool,
) -> Cleanup {
    if *job == CleanJob::Succeeded {
        return Cleanup::Release;
    }
    if namespace_terminating {
        return Cleanup::GiveUp(GiveUp::NamespaceTerminating);
    }
    if let CleanJob::Failed { error } = job {
        return Cleanup::GiveUp(GiveUp::JobFailed {
            error: error.clone(),
        });
    }
    let elapsed = Duration::try_from(now.duration_since(deleted_at)).unwrap_or(Duration::ZERO);
    let Some(left) = CLEANUP_TIMEOUT
        .checked_sub(elapsed)
        .filter(|d| !d.is_zero())
    else {
        return Cleanup::GiveUp(GiveUp::TimedOut);
    };
    let poll = if *job == CleanJob::Absent {
        CLEANUP_START_RETRY
    } else {
        CLEANUP_POLL
    };
    Cleanup::Wait(poll.min(left))
}

/// Whether `namespace` (`None`: not found) is being deleted.
pub fn terminating(namespace: Option<&Namespace>) -> bool {
    namespace.is_none_or(|ns| {
        ns.metadata.deletion_timestamp.is_some()
            || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
    })
}

fn has_finalizer<K: Resource>(obj: &K) -> bool {
    obj.finalizers().iter().any(|f| f == FINALIZER)
}

/// The finalizers of `obj` with ours added or removed, if that changes them.
pub fn updated_finalizers<K: Resource>(obj: &K, want: bool) -> Option<Vec<String>> {
    let current = obj.finalizers();
    match (want, has_finalizer(obj)) {
        (true, false) => Some(
            current
                .iter()
                .cloned()
                .chain([FINALIZER.to_string()])
                .collect(),
        ),
        (false, true) => Some(
            current
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect(),
        ),
        _ => None,
    }
}

async fn set_finalizers<K: OwnsArtifact>(
    obj: &K,
    api: &Api<K>,
    finalizers: Vec<String>,
) -> Result<(), CleanupError> {
    // The resourceVersion makes the merge patch fail on a concurrent change instead
    // of overwriting someone else's finalizer.
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}
    });
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| CleanupError::Finalizer { source })?;
    Ok(())
}

/// Add our finalizer when the artifact is to be deleted with the object; remove
/// it when the policy changed back to Retain.
pub async fn sync_finalizer<K: OwnsArtifact>(obj: &K, api: &Api<K>) -> Result<(), CleanupError> {
    match updated_finalizers(obj, obj.deletes_artifact()) {
        Some(finalizers) => set_finalizers(obj, api, finalizers).await,
        None => Ok(()),
    }
}

/// What a deletion pass left to do.
#[derive(Clone, Debug)]
pub enum Deletion {
    /// Nothing: the finalizer is gone (or was never there).
    Done,
    /// Look again after this long; `running` is the clean Job while it runs.
    Wait {
        after: Duration,
        running: Option<Box<Job>>,
    },
}

/// Stop the object's other Jobs, run the cleanup Job `clean` for the artifact at
/// `uri`, and release the object when it succeeded, failed, took too long, or
/// cannot run ([`decide`]).
///
/// Only the final removal of the finalizer may fail the pass: a clean Job that
/// cannot be created or read counts as absent, so the deadline still applies.
pub async fn on_deletion<K: OwnsArtifact>(
    obj: &K,
    api: &Api<K>,
    ctx: &Context,
    uri: &str,
    clean: Job,
) -> Result<Deletion, CleanupError> {
    if !has_finalizer(obj) {
        return Ok(Deletion::Done);
    }
    let client = &ctx.client;
    let namespace = obj.namespace().unwrap_or_default();
    let clean_name = clean.name_any();
    let namespace_terminating = namespace_terminating(client, &namespace).await;

    let job = if namespace_terminating {
        // No Job can be created in it, and the namespace takes every Job with it.
        None
    } else {
        let started = async {
            stop_others(client, obj, &clean_name).await?;
            clean_job(client, obj, clean).await
        };
        started.await.unwrap_or_else(|err| {
            tracing::warn!(error = %err, job = %clean_name, "the clean Job could not be started; trying again until the cleanup deadline");
            None
        })
    };
    let state = match &job {
        Some(job) => match job_pods(client, job).await {
            Ok(pods) => CleanJob::from(job_state(job, &pods)),
            // The Job's own conditions still tell whether it finished.
            Err(_) => CleanJob::from(job_state(job, &[])),
        },
        None => CleanJob::Absent,
    };

    let now = Timestamp::now();
    let deleted_at = obj.meta().deletion_timestamp.as_ref().map_or(now, |t| t.0);
    let kind = K::kind(&());
    match decide(deleted_at, now, &state, namespace_terminating) {
        Cleanup::Release => {
            tracing::info!(%uri, "artifact deleted; releasing the {kind}");
            release(obj, api).await?;
            Ok(Deletion::Done)
        }
        Cleanup::GiveUp(why) => {
            let message = why.message(&kind, uri, &clean_name);
            tracing::warn!(%uri, reason = why.reason(), "{message}");
            if why.stops_job() && job.is_some() {
                let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
                // Best effort: its own deadline stops it otherwise.
                let _ = jobs.delete(&clean_name, &DeleteParams::background()).await;
            }
            ctx.events.warning(obj, why.reason(), &message).await;
            release(obj, api).await?;
            Ok(Deletion::Done)
        }
        Cleanup::Wait(after) => Ok(Deletion::Wait {
            after,
            running: job.filter(|_| state == CleanJob::Running).map(Box::new),
        }),
    }
}

async fn release<K: OwnsArtifact>(obj: &K, api: &Api<K>) -> Result<(), CleanupError> {
    let finalizers = updated_finalizers(obj, false).unwrap_or_default();
    set_finalizers(obj, api, finalizers).await
}

/// Whether the namespace is being deleted. A namespace that cannot be read is
/// taken as live: the cleanup deadline bounds the wait all the same.
async fn namespace_terminating(client: &Client, name: &str) -> bool {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.get_opt(name).await {
        Ok(namespace) => terminating(namespace.as_ref()),
        Err(err) => {
            tracing::warn!(error = %err, namespace = name, "failed to read the namespace");
            false
        }
    }
}

/// Delete the object's other Jobs: one still writing would race the cleanup.
async fn stop_others<K: OwnsArtifact>(
    client: &Client,
    obj: &K,
    clean_name: &str,
) -> Result<(), CleanupError> {
    delete_orphans::<Job>(
        client,
        &obj.namespace().unwrap_or_default(),
        &children_selector(obj),
        &[clean_name.to_string()],
    )
    .await
    .map_err(|source| DeleteOrphansError {
        kind: "Job",
        source,
    })?;
    Ok(())
}

/// The cleanup Job of this object, created from `clean` unless it exists; `None`
/// while one left by an earlier object of the same name is deleted.
async fn clean_job<K: OwnsArtifact>(
    client: &Client,
    obj: &K,
    mut clean: Job,
) -> Result<Option<Job>, CleanupError> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let clean_name = clean.name_any();
    let existing = jobs
        .get_opt(&clean_name)
        .await
        .map_err(|source| CleanupError::ReadJob {
            name: clean_name.clone(),
            source,
        })?;
    let uid = obj.meta().uid.clone().unwrap_or_default();
    match existing {
        Some(job) if job.annotations().get(FOR_UID_ANNOTATION) == Some(&uid) => Ok(Some(job)),
        Some(stale) => {
            let _ = jobs
                .delete(&stale.name_any(), &DeleteParams::background())
                .await;
            Ok(None)
        }
        None => {
            clean
                .annotations_mut()
                .insert(FOR_UID_ANNOTATION.into(), uid);
            let job = apply(client, &clean)
                .await
                .map_err(|source| ApplyChildError {
                    kind: "Job",
                    name: clean_name,
                    source,
                })?;
            Ok(Some(job))
        }
    }
}

/// The Job that deletes `obj`'s artifact at `uri`, reaching the store with
/// `secret`'s credentials. It has no owner reference: it runs while the object is
/// being deleted and must not be collected with it. The trainer deletes only a
/// prefix whose ownership marker names `obj`.
pub fn build_clean_job<K: OwnsArtifact>(
    obj: &K,
    uri: &str,
    secret: Option<&str>,
    config: &OperatorConfig,
) -> Job {
    let mut claims = PvcMounts::default();
    if let Some(claim) = pvc_claim(uri) {
        claims.write(claim);
    }
    let (volumes, mounts) = claims.volumes_and_mounts();
    let mut job_env = vec![env(var::PVC_ROOT, path::PVC_ROOT)];
    job_env.extend(credential_env(secret));
    TrainerJob {
        meta: ObjectMeta {
            name: Some(clean_job_name(&obj.name_any())),
            namespace: obj.namespace(),
            labels: Some(child_labels(obj, CLEAN_COMPONENT)),
            ..ObjectMeta::default()
        },
        image: config.trainer_image.clone(),
        image_pull: config.trainer_image_pull.clone(),
        args: clean_args(obj, uri, secret),
        service_account: None,
        env: job_env,
        volumes,
        mounts,
        resources: config.trainer_resources.requirements(),
        ttl_seconds_after_finished: Some(CLEAN_JOB_TTL_SECONDS),
        scratch_size: Quantity(CLEAN_SCRATCH_SIZE.into()),
        backoff_limit: CLEAN_BACKOFF_LIMIT,
        // Disruptions are retried without counting; the trainer's exit for a
        // prefix it must not delete fails the Job at once.
        pod_failure_policy: pod_failure_policy(&[], &[i32::from(exit::INVALID)]),
        active_deadline_seconds: CLEAN_DEADLINE_SECONDS,
        telemetry: PodTelemetry::of(obj, &config.pod_export_env),
    }
    .into_job()
}

/// `trainer clean` arguments: the artifact, whose it is (kind, namespace, name,
/// uid), and the Secret whose credential variables reach it.
fn clean_args<K: OwnsArtifact>(obj: &K, uri: &str, secret: Option<&str>) -> Vec<String> {
    let owner = format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    );
    let mut args = vec![
        "clean".to_string(),
        "--uri".into(),
        uri.to_string(),
        "--owner".into(),
        owner,
        "--uid".into(),
        obj.uid().unwrap_or_default(),
    ];
    if let Some(secret) = secret {
        args.extend(["--credentials-secret".to_string(), secret.to_string()]);
    }
    args
}

#[cfg(test)]
mod tests;
