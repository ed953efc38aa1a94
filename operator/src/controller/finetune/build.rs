//! Build: the children of a FineTune, as a pure function of the resolved FineTune
//! and the operator's settings ([`crate::workload::training`], as for a
//! PretrainJob).
//!
//! For FineTune `<name>`:
//! - ConfigMap `<name>-finetune`, key `resource.yaml`: the resolved FineTune with
//!   `status.lineage` (the base model and dataset the trainer reads);
//! - ServiceAccount, Role and RoleBinding `<name>-trainer`: get the FineTune, get
//!   and patch its status, by resourceName;
//! - Job `<name>-finetune`: `trainer finetune --resource /etc/llmops/resource.yaml`,
//!   one pod per replica; with more than one replica an Indexed Job whose pods find
//!   rank 0 through the headless Service `<name>-workers`.

pub use crate::workload::training::build::Children;

use super::resolve::Resolved;
use crate::config::OperatorConfig;
use crate::workload::training::build::{Run, run_hash};

/// `trainer finetune`, and the component label of every child.
pub const FINETUNE: &str = "finetune";

pub fn build(
    resolved: &Resolved,
    config: &OperatorConfig,
) -> Result<Children, serde_yaml_ng::Error> {
    let ft = &resolved.fine_tune;
    let spec = &ft.spec;
    // The run's intent: the spec without `suspend`, and without the base model's
    // Secret the operator filled in (it may fall back to another once the
    // producer is gone; `baseModel` itself is immutable).
    let mut intent = spec.clone();
    intent.suspend = false;
    intent.base_model.credentials_secret_ref = None;
    let output_secret = spec.output.location.credentials_secret_ref.as_ref();
    let run = Run {
        command: FINETUNE,
        resources: &spec.resources,
        scheduling: &spec.scheduling,
        failure_policy: &spec.failure_policy,
        suspend: spec.suspend,
        output_uri: &resolved.output_uri,
        secrets: output_secret
            .map(|s| s.name.as_str())
            .into_iter()
            .chain(resolved.base_model_secret.as_deref())
            .collect(),
        inputs: vec![
            resolved.base_model.uri.as_str(),
            resolved.dataset.uri.as_str(),
        ],
        ambient_secret: resolved.dataset_secret.as_deref(),
        run_hash: run_hash(&intent),
    };
    crate::workload::training::build::build(ft, &run, config)
}
