//! Validate: what the API accepts but the trainer cannot carry out. Each problem
//! names the field to change and becomes a Stalled condition, instead of a pod
//! that starts, fails and retries with the same error.

use kube::ResourceExt;
use llmops_crds::FineTune;

pub use crate::controller::training::validate::{Invalid, Valid};

use super::build::{FINETUNE, credential_secrets, run};
use super::resolve::Resolved;
use crate::controller::training::validate::{batch, invalid, names, pvc_uri, zero};
use crate::workload::credentials::colliding_secrets;

/// The run of `resolved`, once nothing stands in its way.
pub fn validate(resolved: &Resolved) -> Result<Valid<'_, FineTune>, Invalid> {
    let ft = &resolved.fine_tune;
    let spec = &ft.spec;
    names(&ft.name_any(), FINETUNE, &spec.resources)?;
    batch(&spec.training, &spec.resources)?;
    zero(&spec.training, &spec.resources, &resolved.output_uri)?;
    pvc_uri("spec.output.uri", &resolved.output_uri)?;
    if spec.base_model.uri.is_some() {
        pvc_uri("spec.baseModel.uri", &resolved.base_model.uri)?;
    }

    if let Some((a, b)) = colliding_secrets(&credential_secrets(resolved)) {
        return invalid(
            "spec.baseModel.credentialsSecretRef",
            format!(
                "Secrets {a:?} and {b:?} map to the same LLMOPS_CRED_ variables; rename one of them"
            ),
        );
    }
    Ok(Valid {
        resource: ft,
        run: run(resolved),
    })
}
