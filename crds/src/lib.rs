//! The `llmops.dev/v1alpha1` API: four kinds that carry a language model from raw
//! data to a served endpoint, with typed lineage between them.
//!
//! The Rust types are the source of truth; `crdgen` renders them into the CRD YAML
//! committed under `crds/generated/` and `charts/llmops/files/crds/` (which the
//! chart renders as templates, `charts/llmops/templates/crds/`).

pub mod common;
pub mod dataset;
pub mod deployment;
pub mod finetune;
pub mod manifest;
pub mod pretrain;

pub use common::*;
pub use dataset::{Dataset, DatasetOperatorStatus, DatasetSpec, DatasetStatus};
pub use deployment::{
    ModelDeployment, ModelDeploymentOperatorStatus, ModelDeploymentSpec, ModelDeploymentStatus,
};
pub use finetune::{FineTune, FineTuneOperatorStatus, FineTuneSpec, FineTuneStatus};
pub use pretrain::{PretrainJob, PretrainJobOperatorStatus, PretrainJobSpec, PretrainJobStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every kind.
pub const GROUP: &str = "llmops.dev";
/// The API version of every kind.
pub const VERSION: &str = "v1alpha1";

/// Every CRD of the API, in pipeline order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        Dataset::crd(),
        PretrainJob::crd(),
        FineTune::crd(),
        ModelDeployment::crd(),
    ]
}

/// The file name a CRD is committed under: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Render a CRD as the YAML that is committed, with a header saying where it comes from.
pub fn render_crd(crd: &CustomResourceDefinition) -> anyhow::Result<String> {
    let body = serde_yaml_ng::to_string(crd)?;
    Ok(format!(
        "# Generated from the Rust types in crds/src by `cargo run -p llmops-crds --bin crdgen`. Do not edit.\n{body}"
    ))
}

/// Directories, relative to the workspace root, that hold the generated CRD YAML.
pub const CRD_OUTPUT_DIRS: [&str; 2] = ["crds/generated", "charts/llmops/files/crds"];
