//! Deletion. Children go with the Dataset through their owner references. When
//! `spec.output.deletionPolicy: Delete`, the finalizer `llmops.dev/artifact-cleanup`
//! holds the Dataset while a `trainer clean --uri <output>` Job deletes the
//! artifact directory, but never for long: a finalizer that waits on a Job that
//! cannot run would block the namespace's deletion and a GitOps prune. When the
//! Job fails, has not succeeded [`CLEANUP_TIMEOUT`] after the deletion, or the
//! namespace is being deleted, the finalizer is removed anyway and a Warning Event
//! says where the artifact was left ([`decide`]).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use llmops_crds::{Dataset, DeletionPolicy};

use super::build::{build_clean_job, clean_job_name};
use super::resolve::{Resolved, resolve_with};
use super::status::{self, JobFields};
use super::{Error, write_status};
use crate::config::OperatorConfig;
use crate::runtime::Context;
use crate::runtime::apply::{
    ApplyChildError, DeleteOrphansError, apply, children_selector, delete_orphans,
};
use crate::runtime::conditions::Outcome;
use crate::workload::observe::{JobState, job_pods, job_state};

/// Holds a Dataset whose artifact is deleted with it until the artifact is gone.
pub const FINALIZER: &str = "llmops.dev/artifact-cleanup";
/// Annotation on the cleanup Job naming the Dataset it cleans up after, so a
/// finished Job of an earlier Dataset with the same name is never taken for ours.
const FOR_UID_ANNOTATION: &str = "llmops.dev/for-uid";
/// How long after the Dataset's deletion the finalizer waits for the clean Job
/// to succeed. Deleting a directory takes seconds to minutes; past this the Job
/// is stuck (no node, no access to the store) and holding the Dataset longer
/// only blocks whoever deletes it.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a running clean Job is looked at (its pods' changes trigger a pass
/// sooner).
const CLEANUP_POLL: Duration = Duration::from_secs(30);
/// How soon to look again while the clean Job is being created.
const CLEANUP_START_RETRY: Duration = Duration::from_secs(2);

/// The clean Job of a deleted Dataset, as the finalizer sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum CleanJob {
    /// Not there yet: being created, or one left by an earlier Dataset of the same
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
    /// Keep the Dataset and look again after this long at most.
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

impl GiveUp {
    /// The Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            GiveUp::NamespaceTerminating => status::reason::NAMESPACE_TERMINATING,
            GiveUp::JobFailed { .. } => status::reason::CLEANUP_FAILED,
            GiveUp::TimedOut => status::reason::CLEANUP_TIMED_OUT,
        }
    }

    /// The Event's note: what happened, what was left where, and what to do.
    pub fn message(&self, uri: &str, job: &str) -> String {
        let why = match self {
            GiveUp::NamespaceTerminating => {
                format!("the namespace is being deleted, so Job {job} cannot delete the artifact")
            }
            GiveUp::JobFailed { error } => format!("Job {job} failed: {error}"),
            GiveUp::TimedOut => format!(
                "Job {job} did not succeed within {}s of the Dataset's deletion and was stopped",
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

/// The finalizer's decision, from when the Dataset was deleted, the time now,
/// what its clean Job says and whether its namespace is being deleted. A clean
/// Job that succeeded always releases the Dataset; otherwise a terminating
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

fn wants_cleanup(ds: &Dataset) -> bool {
    ds.spec.output.deletion_policy == DeletionPolicy::Delete
}

fn has_finalizer(ds: &Dataset) -> bool {
    ds.finalizers().iter().any(|f| f == FINALIZER)
}

/// The finalizers of `ds` with ours added or removed, if that changes them.
pub fn updated_finalizers(ds: &Dataset, want: bool) -> Option<Vec<String>> {
    let current = ds.finalizers();
    match (want, has_finalizer(ds)) {
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

async fn set_finalizers(
    ds: &Dataset,
    api: &Api<Dataset>,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    // The resourceVersion makes the merge patch fail on a concurrent change instead
    // of overwriting someone else's finalizer.
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": ds.resource_version()}
    });
    api.patch(
        &ds.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| Error::Finalizer { source })?;
    Ok(())
}

/// Add our finalizer when the artifact is to be deleted with the Dataset; remove it
/// when the policy changed back to Retain.
pub async fn sync_finalizer(ds: &Dataset, api: &Api<Dataset>) -> Result<(), Error> {
    match updated_finalizers(ds, wants_cleanup(ds)) {
        Some(finalizers) => set_finalizers(ds, api, finalizers).await,
        None => Ok(()),
    }
}

/// Stop preparation, run the cleanup Job, and release the Dataset when it
/// succeeded, failed, took too long, or cannot run ([`decide`]).
///
/// Only the final removal of the finalizer may fail the pass: a clean Job that
/// cannot be created or read counts as absent, so the deadline still applies.
pub async fn on_deletion(ds: &Dataset, api: &Api<Dataset>, ctx: &Context) -> Result<Action, Error> {
    if !has_finalizer(ds) {
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let namespace = ds.namespace().unwrap_or_default();
    let clean_name = clean_job_name(&ds.name_any());
    let resolved = resolve_with(ds, &ctx.config, None);
    let namespace_terminating = namespace_terminating(client, &namespace).await;

    let job = if namespace_terminating {
        // No Job can be created in it, and the namespace takes every Job with it.
        None
    } else {
        let started = async {
            stop_preparing(client, ds, &clean_name).await?;
            clean_job(client, ds, &resolved, &ctx.config).await
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
    let deleted_at = ds.metadata.deletion_timestamp.as_ref().map_or(now, |t| t.0);
    match decide(deleted_at, now, &state, namespace_terminating) {
        Cleanup::Release => {
            tracing::info!(uri = %resolved.output_uri, "artifact deleted; releasing the Dataset");
            release(ds, api).await?;
            Ok(Action::await_change())
        }
        Cleanup::GiveUp(why) => {
            let message = why.message(&resolved.output_uri, &clean_name);
            tracing::warn!(uri = %resolved.output_uri, reason = why.reason(), "{message}");
            if why.stops_job() && job.is_some() {
                let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
                // Best effort: its own deadline stops it otherwise.
                let _ = jobs.delete(&clean_name, &DeleteParams::background()).await;
            }
            ctx.events.warning(ds, why.reason(), &message).await;
            release(ds, api).await?;
            Ok(Action::await_change())
        }
        Cleanup::Wait(after) => {
            if let (Some(job), CleanJob::Running) = (&job, &state) {
                let outcome = Outcome::progressing(
                    status::reason::DELETING,
                    format!(
                        "deleting the artifact at {} (Job {clean_name})",
                        resolved.output_uri
                    ),
                );
                let mut ds = ds.clone();
                write_status(&mut ds, api, ctx, &outcome, JobFields::of(job)).await?;
            }
            Ok(Action::requeue(after))
        }
    }
}

async fn release(ds: &Dataset, api: &Api<Dataset>) -> Result<(), Error> {
    let finalizers = updated_finalizers(ds, false).unwrap_or_default();
    set_finalizers(ds, api, finalizers).await
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

/// Delete the prepare Jobs of `ds`: one still writing would race the cleanup.
async fn stop_preparing(client: &Client, ds: &Dataset, clean_name: &str) -> Result<(), Error> {
    delete_orphans::<Job>(
        client,
        &ds.namespace().unwrap_or_default(),
        &children_selector(ds),
        &[clean_name.to_string()],
    )
    .await
    .map_err(|source| DeleteOrphansError {
        kind: "Job",
        source,
    })?;
    Ok(())
}

/// The cleanup Job of this Dataset, created unless it exists; `None` while one
/// left by an earlier Dataset of the same name is deleted.
async fn clean_job(
    client: &Client,
    ds: &Dataset,
    resolved: &Resolved,
    config: &OperatorConfig,
) -> Result<Option<Job>, Error> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ds.namespace().unwrap_or_default());
    let clean_name = clean_job_name(&ds.name_any());
    let existing = jobs
        .get_opt(&clean_name)
        .await
        .map_err(|source| Error::ReadJob {
            name: clean_name.clone(),
            source,
        })?;
    let uid = ds.meta().uid.clone().unwrap_or_default();
    match existing {
        Some(job) if job.annotations().get(FOR_UID_ANNOTATION) == Some(&uid) => Ok(Some(job)),
        Some(stale) => {
            let _ = jobs
                .delete(&stale.name_any(), &DeleteParams::background())
                .await;
            Ok(None)
        }
        None => {
            let mut job = build_clean_job(resolved, config);
            job.annotations_mut().insert(FOR_UID_ANNOTATION.into(), uid);
            let job = apply(client, &job)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::dataset::tests::fixture;

    #[test]
    fn the_finalizer_follows_the_deletion_policy() {
        let mut ds = fixture("metadata: {name: chats, finalizers: [other.io/keep]}");
        assert!(!wants_cleanup(&ds));
        assert_eq!(updated_finalizers(&ds, false), None);
        assert_eq!(
            updated_finalizers(&ds, true),
            Some(vec!["other.io/keep".to_string(), FINALIZER.to_string()])
        );
        ds.metadata.finalizers = Some(vec!["other.io/keep".into(), FINALIZER.into()]);
        assert_eq!(updated_finalizers(&ds, true), None);
        assert_eq!(
            updated_finalizers(&ds, false),
            Some(vec!["other.io/keep".to_string()])
        );
        let delete = fixture("metadata: {name: chats}\nspec:\n  output: {deletionPolicy: Delete}");
        assert!(wants_cleanup(&delete));
    }

    const DELETED_AT: &str = "2026-03-01T12:00:00Z";

    /// The decision `minutes` after the deletion.
    fn after(minutes: i64, job: CleanJob, namespace_terminating: bool) -> Cleanup {
        let deleted_at: Timestamp = DELETED_AT.parse().unwrap();
        let now = deleted_at + k8s_openapi::jiff::SignedDuration::from_mins(minutes);
        decide(deleted_at, now, &job, namespace_terminating)
    }

    fn failed() -> CleanJob {
        CleanJob::Failed {
            error: "access denied".into(),
        }
    }

    #[test]
    fn a_clean_job_that_succeeded_releases_the_dataset_whenever_it_is_seen() {
        assert_eq!(after(1, CleanJob::Succeeded, false), Cleanup::Release);
        assert_eq!(after(60, CleanJob::Succeeded, false), Cleanup::Release);
        assert_eq!(after(1, CleanJob::Succeeded, true), Cleanup::Release);
    }

    #[test]
    fn a_running_clean_job_is_waited_for_until_ten_minutes_after_the_deletion() {
        assert_eq!(
            after(0, CleanJob::Running, false),
            Cleanup::Wait(Duration::from_secs(30))
        );
        assert_eq!(
            after(9, CleanJob::Running, false),
            Cleanup::Wait(Duration::from_secs(30))
        );
        assert_eq!(
            after(10, CleanJob::Running, false),
            Cleanup::GiveUp(GiveUp::TimedOut)
        );
        assert_eq!(
            after(600, CleanJob::Running, false),
            Cleanup::GiveUp(GiveUp::TimedOut)
        );
    }

    #[test]
    fn the_last_wait_ends_at_the_deadline() {
        let deleted_at: Timestamp = DELETED_AT.parse().unwrap();
        let now = deleted_at + k8s_openapi::jiff::SignedDuration::from_secs(590);
        assert_eq!(
            decide(deleted_at, now, &CleanJob::Running, false),
            Cleanup::Wait(Duration::from_secs(10))
        );
    }

    #[test]
    fn a_clean_job_that_never_starts_does_not_hold_the_dataset_past_the_deadline() {
        assert_eq!(
            after(0, CleanJob::Absent, false),
            Cleanup::Wait(Duration::from_secs(2))
        );
        assert_eq!(
            after(10, CleanJob::Absent, false),
            Cleanup::GiveUp(GiveUp::TimedOut)
        );
    }

    #[test]
    fn a_failed_clean_job_releases_the_dataset_at_once() {
        assert_eq!(
            after(0, failed(), false),
            Cleanup::GiveUp(GiveUp::JobFailed {
                error: "access denied".into()
            })
        );
    }

    #[test]
    fn a_terminating_namespace_releases_the_dataset_at_once() {
        for job in [CleanJob::Absent, CleanJob::Running, failed()] {
            assert_eq!(
                after(0, job, true),
                Cleanup::GiveUp(GiveUp::NamespaceTerminating)
            );
        }
    }

    #[test]
    fn a_clock_behind_the_deletion_time_waits_rather_than_gives_up() {
        assert_eq!(
            after(-5, CleanJob::Running, false),
            Cleanup::Wait(Duration::from_secs(30))
        );
    }

    #[test]
    fn the_warning_says_what_was_left_where() {
        let uri = "s3://llmops-artifacts/datasets/ml/chats";
        let timed_out = GiveUp::TimedOut.message(uri, "chats-clean");
        assert_eq!(
            timed_out,
            "finalizer llmops.dev/artifact-cleanup removed without deleting the artifact: \
             Job chats-clean did not succeed within 600s of the Dataset's deletion and was stopped; \
             the artifact at s3://llmops-artifacts/datasets/ml/chats is left as it is (possibly in part) \
             and must be deleted by hand"
        );
        let failed = GiveUp::JobFailed {
            error: "access denied".into(),
        };
        assert!(
            failed
                .message(uri, "chats-clean")
                .contains("Job chats-clean failed: access denied; the artifact at s3://llmops-artifacts/datasets/ml/chats is left")
        );
        assert!(
            GiveUp::NamespaceTerminating
                .message(uri, "chats-clean")
                .contains("the namespace is being deleted")
        );
        assert_eq!(
            [
                GiveUp::TimedOut.reason(),
                failed.reason(),
                GiveUp::NamespaceTerminating.reason()
            ],
            ["CleanupTimedOut", "CleanupFailed", "NamespaceTerminating"]
        );
        // A timed-out or orphaned Job is stopped so it cannot delete what the
        // Event said was left; a failed one stays for its logs.
        assert!(GiveUp::TimedOut.stops_job() && GiveUp::NamespaceTerminating.stops_job());
        assert!(!failed.stops_job());
    }

    #[test]
    fn a_namespace_is_terminating_once_deleted_or_gone() {
        let namespace = |yaml: &str| -> Namespace { serde_yaml_ng::from_str(yaml).unwrap() };
        assert!(!terminating(Some(&namespace(
            "metadata: {name: ml}\nstatus: {phase: Active}"
        ))));
        assert!(terminating(Some(&namespace(
            "metadata: {name: ml}\nstatus: {phase: Terminating}"
        ))));
        assert!(terminating(Some(&namespace(
            "metadata: {name: ml, deletionTimestamp: \"2026-03-01T12:00:00Z\"}"
        ))));
        assert!(terminating(None));
    }
}
