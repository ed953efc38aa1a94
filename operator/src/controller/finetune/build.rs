//! Build: what shapes the pods of a FineTune's run ([`run`]), from which
//! [`crate::controller::training::build`] makes the children once the FineTune is
//! validated, as for a PretrainJob.
//!
//! For FineTune `<name>`:
//! - ConfigMap `<name>-finetune`, key `resource.yaml`: the resolved FineTune with
//!   `status.lineage` (the base model and dataset the trainer reads);
//! - ServiceAccount, Role and RoleBinding `<name>-trainer`: get the FineTune, get
//!   and patch its status, by resourceName;
//! - Job `<name>-finetune`: `trainer finetune --resource /etc/llmops/resource.yaml`,
//!   one pod per replica; with more than one replica an Indexed Job whose pods find
//!   rank 0 through the headless Service `<name>-workers`.

use super::resolve::Resolved;
use crate::controller::training::build::{Run, run_hash};

/// `trainer finetune`, and the component label of every child.
pub const FINETUNE: &str = "finetune";

/// The Secrets whose keys reach the trainer as `LLMOPS_CRED_<SECRET>_<KEY>`: the
/// output's, then the base model's.
pub fn credential_secrets(resolved: &Resolved) -> Vec<&str> {
    let output_secret = resolved
        .fine_tune
        .spec
        .output
        .location
        .credentials_secret_ref
        .as_ref();
    output_secret
        .map(|s| s.name.as_str())
        .into_iter()
        .chain(resolved.base_model_secret.as_deref())
        .collect()
}

/// What shapes the pods of `resolved`'s run; [`super::validate`] hands it to the
/// build once the spec is known to be runnable.
pub fn run(resolved: &Resolved) -> Run<'_> {
    let spec = &resolved.fine_tune.spec;
    // The run's intent: the spec without `suspend`, and without the base model's
    // Secret the operator filled in (it may fall back to another once the
    // producer is gone; `baseModel` itself is immutable).
    let mut intent = spec.clone();
    intent.suspend = false;
    intent.base_model.credentials_secret_ref = None;
    Run {
        command: FINETUNE,
        resources: &spec.resources,
        scheduling: &spec.scheduling,
        failure_policy: &spec.failure_policy,
        suspend: spec.suspend,
        output_uri: &resolved.output_uri,
        secrets: credential_secrets(resolved),
        inputs: vec![
            resolved.base_model.uri.as_str(),
            resolved.dataset.uri.as_str(),
        ],
        ambient_secret: resolved.dataset_secret.as_deref(),
        run_hash: run_hash(&intent),
    }
}
