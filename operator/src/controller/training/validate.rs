//! What the API accepts in a training spec but the operator cannot run. Each
//! problem names the field to change and becomes a Stalled condition, instead of
//! a pod that starts, fails and retries with the same error.

use llmops_crds::{ComputeResources, TrainingSpec};

use super::build::Run;
use super::{job_name, service_name};
// Jobs label their pods with their name, and pods of an Indexed Job are named
// (and get the hostname) `<job>-<index>`: both must fit a DNS label.
pub use crate::runtime::invalid::{Invalid, MAX_DNS_LABEL, invalid};
use crate::workload::storage::pvc_claim;

/// A run that passed validation: what its children are built from.
#[derive(Clone, Debug)]
pub struct Valid<'a, K> {
    /// The resolved resource, which the ConfigMap holds for the trainer and the
    /// children name as their owner.
    pub resource: &'a K,
    pub run: Run<'a>,
}

/// The names of the run's pods and Service must be DNS labels.
pub fn names(name: &str, command: &str, resources: &ComputeResources) -> Result<(), Invalid> {
    let replicas = resources.replicas.max(1);
    // The last pod of an Indexed Job is `<job>-<replicas-1>`.
    let last_pod = if replicas > 1 {
        format!("{}-{}", job_name(name, command), replicas - 1)
    } else {
        job_name(name, command)
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
                service_name(name)
            ),
        );
    }
    Ok(())
}

/// One rank per GPU (per pod on CPU): each takes an equal share of the batch.
pub fn batch(training: &TrainingSpec, resources: &ComputeResources) -> Result<(), Invalid> {
    let replicas = resources.replicas.max(1);
    let ranks = replicas * resources.gpus_per_replica.max(1);
    let per_step = training.micro_batch_size.max(1) * ranks;
    if training.batch_size % per_step != 0 {
        let gpus = resources.gpus_per_replica;
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
    Ok(())
}

/// ZeRO with ranks in several pods: each rank writes its optimizer shard into
/// the checkpoint directory, which the pods share only on a `file://` or
/// `pvc://` output; on an object store each pod has its own working copy and
/// only rank 0 uploads, so the other ranks' shards would be lost.
pub fn zero(
    training: &TrainingSpec,
    resources: &ComputeResources,
    output_uri: &str,
) -> Result<(), Invalid> {
    let shared = output_uri.starts_with("pvc://") || output_uri.starts_with("file://");
    if training.zero.stage > 0 && resources.replicas > 1 && !shared {
        return invalid(
            "spec.training.zero.stage",
            format!(
                "stage {} keeps one optimizer shard per rank in the checkpoint directory, which the {} pods share only on a pvc:// (ReadWriteMany) or file:// output, not {output_uri}; use such an output, one replica, or stage 0",
                training.zero.stage, resources.replicas
            ),
        );
    }
    Ok(())
}

/// A `pvc://` URI names its claim.
pub fn pvc_uri(field: &str, uri: &str) -> Result<(), Invalid> {
    if uri.starts_with("pvc://") && pvc_claim(uri).is_none() {
        return invalid(
            field,
            "a pvc:// URI needs a claim name: pvc://<claim>/<path>",
        );
    }
    Ok(())
}
