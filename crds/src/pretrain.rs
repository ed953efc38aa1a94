//! `PretrainJob`: train a decoder-only transformer from scratch on a Dataset.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{
    Artifact, ComputeResources, Conditions, FailurePolicy, JobPhase, LocalObjectRef, OutputSpec,
    Scheduling, TrainingProgress, TrainingSpec,
};

/// Pretraining of a transformer from random weights. The operator runs
/// `trainer pretrain` pods, keeps checkpoints, resumes after failures and
/// preemptions, and records the final model as `status.artifact`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "llmops.dev",
    version = "v1alpha1",
    kind = "PretrainJob",
    namespaced,
    status = "PretrainJobStatus",
    shortname = "pt",
    category = "llmops",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.progress.step"}"#,
    printcolumn = r#"{"name":"Loss","type":"number","jsonPath":".status.progress.trainLoss"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.training.epochs)")
    .message("pretraining runs for maxSteps or maxTokens, not epochs")
    .field_path(".training.epochs"))]
#[x_kube(validation = Rule::new("!has(self.sequenceLength) || self.sequenceLength <= self.model.contextLength")
    .message("sequenceLength must not exceed model.contextLength")
    .field_path(".sequenceLength"))]
pub struct PretrainJobSpec {
    /// The Dataset to train on (type pretraining). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("datasetRef is immutable; create a new PretrainJob"))]
    pub dataset_ref: LocalObjectRef,
    /// The architecture. Immutable: checkpoints only fit the shape they were made with.
    #[x_kube(validation = Rule::new("self == oldSelf").message("model is immutable; create a new PretrainJob"))]
    pub model: ModelArchitecture,
    /// Train on the first this-many tokens of each dataset sequence. Defaults to the
    /// dataset's sequence length, which must then fit `model.contextLength`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8))]
    pub sequence_length: Option<i32>,
    /// Optimisation.
    #[serde(default)]
    pub training: TrainingSpec,
    /// Pods and accelerators.
    #[serde(default)]
    pub resources: ComputeResources,
    /// Placement of the pods.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Retries.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Stop the pods, keeping checkpoints; setting it back to false resumes.
    #[serde(default)]
    pub suspend: bool,
    /// Where the trained model (Hugging Face layout) and checkpoints are written.
    #[serde(default)]
    pub output: OutputSpec,
}

/// Model family.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ModelFamily {
    /// GPT-2: learned positions, LayerNorm, GELU MLP, multi-head attention.
    Gpt2,
    /// Llama: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention.
    #[default]
    Llama,
}

/// Decoder-only transformer shape. The vocabulary size comes from the dataset's tokenizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.hidden % self.heads == 0")
    .message("hidden must be a multiple of heads")
    .field_path(".hidden"))]
#[x_kube(validation = Rule::new("!has(self.kvHeads) || self.heads % self.kvHeads == 0")
    .message("heads must be a multiple of kvHeads")
    .field_path(".kvHeads"))]
#[x_kube(validation = Rule::new("self.family == 'llama' || (!has(self.kvHeads) || self.kvHeads == self.heads)")
    .message("kvHeads (grouped-query attention) needs family llama")
    .field_path(".kvHeads"))]
#[x_kube(validation = Rule::new("self.family == 'llama' || !has(self.ropeTheta)")
    .message("ropeTheta needs family llama")
    .field_path(".ropeTheta"))]
pub struct ModelArchitecture {
    /// Model family.
    #[serde(default)]
    pub family: ModelFamily,
    /// Transformer blocks.
    #[schemars(range(min = 1, max = 256))]
    pub layers: i32,
    /// Attention heads.
    #[schemars(range(min = 1, max = 256))]
    pub heads: i32,
    /// Key/value heads (grouped-query attention). Defaults to `heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub kv_heads: Option<i32>,
    /// Hidden (embedding) size.
    #[schemars(range(min = 8, max = 65536))]
    pub hidden: i32,
    /// MLP inner size. Defaults to 4×hidden for gpt2 and to ⌈8/3×hidden⌉ rounded up
    /// to a multiple of 64 for llama.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 262144))]
    pub intermediate: Option<i32>,
    /// Maximum sequence length the model attends over.
    #[serde(default = "default_context_length")]
    #[schemars(range(min = 8, max = 131072))]
    pub context_length: i32,
    /// Dropout probability during training.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 0.9))]
    pub dropout: f64,
    /// RoPE base frequency (llama). Defaults to 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub rope_theta: Option<f64>,
    /// Share the input embedding with the output projection.
    #[serde(default = "tied_default")]
    pub tied_embeddings: bool,
}

fn default_context_length() -> i32 {
    1024
}
fn tied_default() -> bool {
    true
}

/// Observed state of a PretrainJob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PretrainJobStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
    /// Live progress (written by the trainer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<TrainingProgress>,
    /// What the operator records of the run.
    #[serde(flatten)]
    pub operator: PretrainJobOperatorStatus,
}

/// The fields of a PretrainJob's status that the operator writes (besides the
/// generation and conditions every status has). Flattened: in the API they sit
/// directly in `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PretrainJobOperatorStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Restarts after failures so far (disruptions not counted).
    #[serde(default)]
    pub restarts: i32,
    /// Lineage: the dataset artifact this run trains on, recorded at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<Artifact>,
    /// The trained model, once Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// The Job running the trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<LocalObjectRef>,
    /// When training started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When training finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}
