//! Build: what shapes the pods of a PretrainJob's run ([`run`]), from which
//! [`crate::controller::training::build`] makes the children once the PretrainJob
//! is validated.
//!
//! For PretrainJob `<name>`:
//! - ConfigMap `<name>-pretrain`, key `resource.yaml`: the resolved PretrainJob with
//!   `status.dataset` (the lineage the trainer reads its data from);
//! - ServiceAccount, Role and RoleBinding `<name>-trainer`: get the PretrainJob, get
//!   and patch its status, by resourceName;
//! - Job `<name>-pretrain`: `trainer pretrain --resource /etc/llmops/resource.yaml`,
//!   one pod per replica; with more than one replica an Indexed Job whose pods find
//!   rank 0 through the headless Service `<name>-workers`.
//!
//! The Job carries a hash of the spec except `suspend`; a spec change replaces the
//! Job, and the new pods resume from the newest checkpoint. `suspend` is set on the
//! live Job.

use super::resolve::Resolved;
use crate::controller::training::build::{Run, run_hash};

/// `trainer pretrain`, and the component label of every child.
pub const PRETRAIN: &str = "pretrain";

/// What shapes the pods of `resolved`'s run; [`super::validate`] hands it to the
/// build once the spec is known to be runnable.
pub fn run(resolved: &Resolved) -> Run<'_> {
    let spec = &resolved.job.spec;
    let mut intent = spec.clone();
    intent.suspend = false;
    Run {
        command: PRETRAIN,
        resources: &spec.resources,
        scheduling: &spec.scheduling,
        failure_policy: &spec.failure_policy,
        suspend: spec.suspend,
        output_uri: &resolved.output_uri,
        secrets: spec
            .output
            .credentials_secret_ref
            .iter()
            .map(|s| s.name.as_str())
            .collect(),
        inputs: vec![resolved.dataset.uri.as_str()],
        ambient_secret: resolved.dataset_secret.as_deref(),
        run_hash: run_hash(&intent),
    }
}
