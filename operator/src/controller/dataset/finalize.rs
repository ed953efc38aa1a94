//! Deletion. Children go with the Dataset through their owner references. When
//! `spec.output.deletionPolicy: Delete`, the finalizer `llmops.dev/artifact-cleanup`
//! holds the Dataset until a `trainer clean --uri <output>` Job has deleted the
//! artifact directory.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
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

/// Stop preparation, run the cleanup Job, and release the Dataset when it succeeded.
pub async fn on_deletion(ds: &Dataset, api: &Api<Dataset>, ctx: &Context) -> Result<Action, Error> {
    if !has_finalizer(ds) {
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let clean_name = clean_job_name(&ds.name_any());
    stop_preparing(client, ds, &clean_name).await?;

    let resolved = resolve_with(ds, &ctx.config, None);
    let Some(job) = clean_job(client, ds, &resolved, &ctx.config).await? else {
        return Ok(Action::requeue(Duration::from_secs(2)));
    };

    let pods = job_pods(client, &job)
        .await
        .map_err(|source| Error::ListPods {
            job: clean_name.clone(),
            source,
        })?;
    let mut ds = ds.clone();
    match job_state(&job, &pods) {
        JobState::Succeeded { .. } => {
            tracing::info!(uri = %resolved.output_uri, "artifact deleted; releasing the Dataset");
            let finalizers = updated_finalizers(&ds, false).unwrap_or_default();
            set_finalizers(&ds, api, finalizers).await?;
            Ok(Action::await_change())
        }
        JobState::Failed { error } => {
            let message = format!(
                "failed to delete the artifact at {}: {error}; fix the cause and delete Job {clean_name} to retry, or remove the finalizer {FINALIZER} to keep the artifact",
                resolved.output_uri
            );
            let outcome = Outcome::stalled(status::reason::CLEANUP_FAILED, message);
            write_status(&mut ds, api, ctx, &outcome, JobFields::of(&job)).await?;
            Ok(Action::await_change())
        }
        JobState::Running { .. } => {
            let outcome = Outcome::progressing(
                status::reason::DELETING,
                format!(
                    "deleting the artifact at {} (Job {clean_name})",
                    resolved.output_uri
                ),
            );
            write_status(&mut ds, api, ctx, &outcome, JobFields::of(&job)).await?;
            Ok(Action::requeue(Duration::from_secs(30)))
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
}
