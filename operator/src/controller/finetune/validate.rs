//! Validate: what the API accepts but the trainer cannot carry out. Each problem
//! names the field to change and becomes a Stalled condition, instead of a pod
//! that starts, fails and retries with the same error.

use kube::ResourceExt;

pub use crate::workload::training::validate::Invalid;

use super::build::FINETUNE;
use super::resolve::Resolved;
use crate::workload::credentials::colliding_secrets;
use crate::workload::training::validate::{batch, invalid, names, pvc_uri};

pub fn validate(resolved: &Resolved) -> Result<(), Invalid> {
    let ft = &resolved.fine_tune;
    let spec = &ft.spec;
    names(&ft.name_any(), FINETUNE, &spec.resources)?;
    batch(&spec.training, &spec.resources)?;
    pvc_uri("spec.output.uri", &resolved.output_uri)?;
    if spec.base_model.uri.is_some() {
        pvc_uri("spec.baseModel.uri", &resolved.base_model.uri)?;
    }

    let output_secret = spec.output.location.credentials_secret_ref.as_ref();
    let secrets: Vec<&str> = output_secret
        .map(|s| s.name.as_str())
        .into_iter()
        .chain(resolved.base_model_secret.as_deref())
        .collect();
    if let Some((a, b)) = colliding_secrets(&secrets) {
        return invalid(
            "spec.baseModel.credentialsSecretRef",
            format!(
                "Secrets {a:?} and {b:?} map to the same LLMOPS_CRED_ variables; rename one of them"
            ),
        );
    }
    Ok(())
}
