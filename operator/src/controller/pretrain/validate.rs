//! Validate: what the API accepts but the trainer cannot carry out. Each problem
//! names the field to change and becomes a Stalled condition, instead of a pod
//! that starts, fails and retries with the same error.

use kube::ResourceExt;
use llmops_crds::PretrainJob;

pub use crate::controller::training::validate::{Invalid, Valid};

use super::build::{PRETRAIN, run};
use super::resolve::Resolved;
use crate::controller::training::validate::{batch, invalid, names, pvc_uri, zero};

/// The run of `resolved`, once nothing stands in its way.
pub fn validate(resolved: &Resolved) -> Result<Valid<'_, PretrainJob>, Invalid> {
    let job = &resolved.job;
    let spec = &job.spec;
    names(&job.name_any(), PRETRAIN, &spec.resources)?;

    if let Some(dataset_len) = resolved.dataset_sequence_length {
        let context = spec.model.context_length;
        match spec.sequence_length {
            None if dataset_len > context => {
                return invalid(
                    "spec.sequenceLength",
                    format!(
                        "Dataset {} has sequences of {dataset_len} tokens, longer than model.contextLength {context}; set spec.sequenceLength to at most {context} or raise model.contextLength",
                        spec.dataset_ref.name
                    ),
                );
            }
            Some(n) if n > dataset_len => {
                return invalid(
                    "spec.sequenceLength",
                    format!(
                        "{n} is longer than the {dataset_len}-token sequences of Dataset {}",
                        spec.dataset_ref.name
                    ),
                );
            }
            _ => {}
        }
    }

    batch(&spec.training, &spec.resources)?;
    zero(&spec.training, &spec.resources, &resolved.output_uri)?;
    pvc_uri("spec.output.uri", &resolved.output_uri)?;
    Ok(Valid {
        resource: job,
        run: run(resolved),
    })
}
