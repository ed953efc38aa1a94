//! Artifacts of other objects, as consumers use them: a producer's artifact
//! counts only once the producer is Ready for its current generation, and an
//! artifact in the operator's default store is read with the store's Secret.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use llmops_crds::{Artifact, Dataset, OutputSpec, SecretRef};

use crate::config::OperatorConfig;

/// Whether `conditions` hold Ready=True for `generation`.
pub fn ready_for_generation(conditions: &[Condition], generation: Option<i64>) -> bool {
    conditions.iter().any(|c| {
        c.type_ == llmops_crds::condition::READY
            && c.status == "True"
            && c.observed_generation == generation
    })
}

/// The operator's store Secret, for an artifact in the default store.
pub fn store_secret(artifact: &Artifact, config: &OperatorConfig) -> Option<String> {
    let in_default_store = artifact
        .uri
        .strip_prefix(&config.artifact_store)
        .is_some_and(|rest| rest.starts_with('/'));
    in_default_store
        .then(|| config.artifact_store_secret.clone())
        .flatten()
}

/// Default an unset output to `<store>/<plural>/<namespace>/<name>`, written with
/// the store's Secret unless the output names one; the URI written to.
pub fn default_output(
    output: &mut OutputSpec,
    plural: &str,
    namespace: &str,
    name: &str,
    config: &OperatorConfig,
) -> String {
    if output.uri.is_none() {
        output.uri = Some(config.default_artifact_uri(plural, namespace, name));
        if output.credentials_secret_ref.is_none() {
            output.credentials_secret_ref =
                config
                    .artifact_store_secret
                    .as_ref()
                    .map(|secret| SecretRef {
                        name: secret.clone(),
                    });
        }
    }
    output.uri.clone().unwrap_or_default()
}

/// The artifact of a Dataset that is Ready for its current generation.
pub fn ready_artifact(ds: &Dataset) -> Option<Artifact> {
    let status = ds.status.as_ref()?;
    ready_for_generation(&status.conditions, ds.metadata.generation)
        .then(|| status.operator.artifact.clone())
        .flatten()
}

/// The Secret for reading a dataset: the one its Dataset writes with, else the
/// operator's store Secret when the artifact lives in the default store.
pub fn dataset_secret(
    dataset: Option<&Dataset>,
    artifact: &Artifact,
    config: &OperatorConfig,
) -> Option<String> {
    dataset
        .and_then(|ds| ds.spec.output.credentials_secret_ref.as_ref())
        .map(|secret| secret.name.clone())
        .or_else(|| store_secret(artifact, config))
}
