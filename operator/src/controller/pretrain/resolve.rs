//! Resolve: turn a PretrainJob into the resource the trainer runs — output URI and
//! its credentials defaulted from the operator's store, and `status.dataset` set to
//! the referenced Dataset's artifact (lineage).
//!
//! The dataset artifact is taken once, when training starts, and kept in the
//! PretrainJob's status from then on: a Dataset re-prepared mid-run must not change
//! what a restarted pod trains on (its checkpoints are tied to that digest).

use kube::{Api, ResourceExt};
use llmops_crds::dataset::DatasetType;
use llmops_crds::{Artifact, Dataset, PretrainJob, PretrainJobOperatorStatus, PretrainJobStatus};

use super::Error;
use super::status::reason;
use crate::config::OperatorConfig;
use crate::runtime::Context;
use crate::runtime::conditions::Outcome;
use crate::workload::lineage::{dataset_secret, default_output, ready_artifact};

/// A PretrainJob ready to be validated and built.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The PretrainJob as the trainer sees it: identity metadata, the resolved spec
    /// and `status.dataset`.
    pub job: PretrainJob,
    /// Where the model and (for file:// and pvc://) its checkpoints are written.
    pub output_uri: String,
    /// The dataset artifact the run trains on.
    pub dataset: Artifact,
    /// Secret with the credentials of the dataset's store, if it names one.
    pub dataset_secret: Option<String>,
    /// `spec.segmentation.sequenceLength` of the Dataset, when it is checked (only
    /// before the run starts; afterwards the trainer checks the manifest itself).
    pub dataset_sequence_length: Option<i32>,
}

/// The result of resolving: ready to go, waiting for the Dataset, or impossible.
pub type Resolution = crate::controller::training::reconcile::Resolution<Resolved>;

/// Read the referenced Dataset (unless the lineage is already recorded and the
/// Dataset is gone) and resolve.
pub async fn resolve(job: &PretrainJob, ctx: &Context) -> Result<Resolution, Error> {
    let reference = &job.spec.dataset_ref.name;
    let api: Api<Dataset> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let dataset = api
        .get_opt(reference)
        .await
        .map_err(|source| Error::ReadDataset {
            name: reference.clone(),
            source,
        })?;
    Ok(resolve_with(job, dataset.as_ref(), &ctx.config))
}

/// The pure part of resolving, given the referenced Dataset if it exists.
pub fn resolve_with(
    job: &PretrainJob,
    dataset: Option<&Dataset>,
    config: &OperatorConfig,
) -> Resolution {
    let reference = &job.spec.dataset_ref.name;
    let recorded = job.status.as_ref().and_then(|s| s.operator.dataset.clone());

    let (artifact, sequence_length) = match recorded {
        // Lineage is fixed at start; the Dataset is not checked again (it may be
        // re-preparing, changed or gone while the run goes on).
        Some(artifact) => (artifact, None),
        None => match dataset {
            None => {
                return Resolution::Waiting(Outcome::progressing(
                    reason::WAITING_FOR_DATASET,
                    format!("waiting for Dataset {reference} (spec.datasetRef): not found"),
                ));
            }
            Some(ds) if ds.spec.kind == DatasetType::Instruction => {
                return Resolution::Stalled(Outcome::stalled(
                    reason::INVALID_SPEC,
                    format!(
                        "spec.datasetRef: Dataset {reference} is of type instruction; pretraining needs a Dataset of type pretraining"
                    ),
                ));
            }
            Some(ds) => match ready_artifact(ds) {
                Some(artifact) => (artifact, Some(ds.spec.segmentation.sequence_length)),
                None => {
                    return Resolution::Waiting(Outcome::progressing(
                        reason::WAITING_FOR_DATASET,
                        format!("waiting for Dataset {reference} (spec.datasetRef) to be Ready"),
                    ));
                }
            },
        },
    };

    let dataset_secret = dataset_secret(dataset, &artifact, config);
    Resolution::Resolved(Box::new(resolved(
        job,
        artifact,
        dataset_secret,
        sequence_length,
        config,
    )))
}

fn resolved(
    job: &PretrainJob,
    artifact: Artifact,
    dataset_secret: Option<String>,
    dataset_sequence_length: Option<i32>,
    config: &OperatorConfig,
) -> Resolved {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let mut spec = job.spec.clone();
    let output_uri = default_output(&mut spec.output, "pretrainjobs", &namespace, &name, config);

    let mut resource = PretrainJob::new(&name, spec);
    resource.metadata.namespace = Some(namespace);
    resource.metadata.uid = job.metadata.uid.clone();
    resource.metadata.generation = job.metadata.generation;
    resource.status = Some(PretrainJobStatus {
        operator: PretrainJobOperatorStatus {
            dataset: Some(artifact.clone()),
            ..PretrainJobOperatorStatus::default()
        },
        ..PretrainJobStatus::default()
    });
    Resolved {
        job: resource,
        output_uri,
        dataset: artifact,
        dataset_secret,
        dataset_sequence_length,
    }
}
