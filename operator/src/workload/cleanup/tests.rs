use k8s_openapi::api::core::v1::Namespace;

use super::*;

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
    let timed_out = GiveUp::TimedOut.message("Dataset", uri, "chats-clean");
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
            .message("Dataset", uri, "chats-clean")
            .contains("Job chats-clean failed: access denied; the artifact at s3://llmops-artifacts/datasets/ml/chats is left")
    );
    assert!(
        GiveUp::NamespaceTerminating
            .message("Dataset", uri, "chats-clean")
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

#[test]
fn the_clean_job_names_its_owner_for_the_ownership_check() {
    let pt: llmops_crds::PretrainJob = serde_yaml_ng::from_str(
        "apiVersion: llmops.dev/v1alpha1\nkind: PretrainJob\nmetadata: {name: base, namespace: ml, uid: u-7}\nspec:\n  datasetRef: {name: web}\n  model: {family: llama, layers: 2, heads: 4, hidden: 64, contextLength: 256}\n  training: {maxSteps: 10, batchSize: 8, microBatchSize: 8}\n",
    )
    .unwrap();
    let job = build_clean_job(
        &pt,
        "s3://b/pt/ml/base",
        Some("creds"),
        &OperatorConfig::example(),
    );
    assert_eq!(job.metadata.name.as_deref(), Some("base-clean"));
    assert!(
        job.metadata.owner_references.is_none(),
        "it outlives its owner"
    );
    let container = crate::test_support::trainer(&job);
    assert_eq!(
        container.args.as_ref().unwrap().join(" "),
        "clean --uri s3://b/pt/ml/base --owner PretrainJob/ml/base --uid u-7 --credentials-secret creds"
    );
}
