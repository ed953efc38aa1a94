//! Validate: what the API accepts but the trainer cannot carry out. Each problem
//! names the field to change and becomes a Stalled condition, instead of a pod
//! that starts, fails and retries with the same error.

use kube::ResourceExt;

use super::build::{job_name, service_name};
use super::resolve::Resolved;
use crate::workload::storage::pvc_claim;

/// Longest name of an object whose name is also a label value or a DNS label:
/// Jobs label their pods with their name, and pods of an Indexed Job are named
/// (and get the hostname) `<job>-<index>`.
const MAX_DNS_LABEL: usize = 63;

/// A spec the operator cannot act on, and the field to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Result<(), Invalid> {
    Err(Invalid {
        field: field.into(),
        message: message.into(),
    })
}

pub fn validate(resolved: &Resolved) -> Result<(), Invalid> {
    let job = &resolved.job;
    let spec = &job.spec;
    let name = job.name_any();
    let replicas = spec.resources.replicas.max(1);

    // The last pod of an Indexed Job is `<job>-<replicas-1>`.
    let last_pod = if replicas > 1 {
        format!("{}-{}", job_name(&name), replicas - 1)
    } else {
        job_name(&name)
    };
    if last_pod.len() > MAX_DNS_LABEL {
        return invalid(
            "metadata.name",
            format!(
                "the name is too long for its trainer pods {last_pod:?} ({} characters, at most {MAX_DNS_LABEL}); use a shorter name",
                last_pod.len()
            ),
        );
    }
    // Service names are DNS-1035 labels: they start with a letter.
    if replicas > 1 && !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return invalid(
            "metadata.name",
            format!(
                "with more than one replica the workers are found through Service {:?}, whose name must start with a letter",
                service_name(&name)
            ),
        );
    }

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

    let training = &spec.training;
    // One rank per GPU (per pod on CPU): each takes an equal share of the batch.
    let ranks = replicas * spec.resources.gpus_per_replica.max(1);
    let per_step = training.micro_batch_size.max(1) * ranks;
    if training.batch_size % per_step != 0 {
        let gpus = spec.resources.gpus_per_replica;
        let ranks_text = if gpus > 1 {
            format!("{replicas} replica(s) × {gpus} GPUs")
        } else {
            format!("{replicas} replica(s)")
        };
        return invalid(
            "spec.training.batchSize",
            format!(
                "{} must be a multiple of microBatchSize {} × {ranks_text} = {per_step}, so every rank takes an equal share",
                training.batch_size, training.micro_batch_size
            ),
        );
    }

    if resolved.output_uri.starts_with("pvc://") && pvc_claim(&resolved.output_uri).is_none() {
        return invalid(
            "spec.output.uri",
            "a pvc:// URI needs a claim name: pvc://<claim>/<path>",
        );
    }

    Ok(())
}
