//! Deletion. Children go with the Dataset through their owner references. When
//! `spec.output.deletionPolicy: Delete`, the artifact goes too: the finalizer of
//! [`crate::workload::cleanup`] holds the Dataset while Job `<name>-clean` runs
//! `trainer clean` on `spec.output.uri`, and the status says so meanwhile.

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use llmops_crds::{Dataset, DeletionPolicy};

use super::resolve::resolve_with;
use super::status::{self, JobFields};
use super::{Error, write_status};
use crate::runtime::Context;
use crate::runtime::conditions::Outcome;
use crate::workload::cleanup::{self, Deletion, OwnsArtifact, build_clean_job};

impl OwnsArtifact for Dataset {
    fn deletes_artifact(&self) -> bool {
        self.spec.output.deletion_policy == DeletionPolicy::Delete
    }
}

/// Add the finalizer when the artifact is to be deleted with the Dataset;
/// remove it when the policy changed back to Retain.
pub async fn sync_finalizer(ds: &Dataset, api: &Api<Dataset>) -> Result<(), Error> {
    Ok(cleanup::sync_finalizer(ds, api).await?)
}

/// Stop preparation, delete the artifact, and release the Dataset
/// ([`cleanup::on_deletion`]); while the clean Job runs, the status says so.
pub async fn on_deletion(ds: &Dataset, api: &Api<Dataset>, ctx: &Context) -> Result<Action, Error> {
    let resolved = resolve_with(ds, &ctx.config, None);
    let uri = &resolved.output_uri;
    let secret = ds.spec.output.credentials_secret_ref.as_ref();
    let clean = build_clean_job(ds, uri, secret.map(|s| s.name.as_str()), &ctx.config);
    match cleanup::on_deletion(ds, api, ctx, uri, clean).await? {
        Deletion::Done => Ok(Action::await_change()),
        Deletion::Wait { after, running } => {
            if let Some(job) = running {
                let outcome = Outcome::progressing(
                    status::reason::DELETING,
                    format!("deleting the artifact at {uri} (Job {})", job.name_any()),
                );
                let mut ds = ds.clone();
                write_status(&mut ds, api, ctx, &outcome, JobFields::of(&job)).await?;
            }
            Ok(Action::requeue(after))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::controller::dataset::tests::fixture;
    use crate::workload::cleanup::{FINALIZER, OwnsArtifact, updated_finalizers};

    #[test]
    fn the_finalizer_follows_the_deletion_policy() {
        let mut ds = fixture("metadata: {name: chats, finalizers: [other.io/keep]}");
        assert!(!ds.deletes_artifact());
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
        assert!(delete.deletes_artifact());
    }
}
