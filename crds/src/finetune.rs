//! `FineTune`: adapt a model to instruction data, fully or with LoRA, then evaluate
//! it and gate the result on quality.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{
    Artifact, ComputeResources, Conditions, FailurePolicy, JobPhase, LocalObjectRef, ModelSource,
    OutputSpec, Scheduling, TrainingProgress, TrainingSpec,
};

/// Fine-tuning of a base model on a Dataset, with evaluation and quality gates.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "llmops.dev",
    version = "v1alpha1",
    kind = "FineTune",
    namespaced,
    status = "FineTuneStatus",
    shortname = "ft",
    category = "llmops",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.progress.step"}"#,
    printcolumn = r#"{"name":"RougeL","type":"number","jsonPath":".status.evaluation.rougeL"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FineTuneSpec {
    /// The model to start from. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("baseModel is immutable; create a new FineTune"))]
    pub base_model: ModelSource,
    /// The Dataset to train on; its tokenizer must match the base model's. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("datasetRef is immutable; create a new FineTune"))]
    pub dataset_ref: LocalObjectRef,
    /// Full fine-tuning or LoRA adapters.
    #[serde(default)]
    pub method: Method,
    /// Optimisation.
    #[serde(default = "default_training")]
    pub training: TrainingSpec,
    /// Stop when validation loss stops improving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Evaluation on the held-out split after training, and the gates it must pass.
    #[serde(default)]
    pub evaluation: Evaluation,
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
    /// Where the fine-tuned model is written.
    #[serde(default)]
    pub output: FineTuneOutput,
}

fn default_training() -> TrainingSpec {
    serde_json::from_value(
        serde_json::json!({"epochs": 3, "learningRate": 2.0e-4, "weightDecay": 0.0}),
    )
    .expect("defaults deserialize")
}

/// How weights are adapted. LoRA settings are allowed only with `type: lora`
/// or `type: qlora`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'lora' || self.type == 'qlora' || !has(self.lora)")
    .message("lora settings need type: lora or qlora")
    .field_path(".lora"))]
pub struct Method {
    /// Full updates every weight; lora trains low-rank adapters on frozen
    /// weights; qlora does the same on a base whose block projections are held
    /// in 4-bit NormalFloat (NF4) with double quantization.
    #[serde(rename = "type", default)]
    pub kind: MethodType,
    /// LoRA settings, for lora and qlora (defaults apply when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSpec>,
}

/// Fine-tuning method.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum MethodType {
    /// Update every weight.
    #[default]
    Full,
    /// Low-rank adapters.
    Lora,
    /// Low-rank adapters on a base frozen in NF4 with double quantization
    /// (QLoRA, Dettmers et al. 2023), dequantized on the fly.
    Qlora,
}

impl MethodType {
    /// Whether the method trains LoRA adapters (lora, qlora).
    pub fn has_adapters(self) -> bool {
        matches!(self, Self::Lora | Self::Qlora)
    }
}

/// Low-rank adaptation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoraSpec {
    /// Rank of the adapters.
    #[serde(default = "default_rank")]
    #[schemars(range(min = 1, max = 1024))]
    pub rank: i32,
    /// Scaling numerator: updates are scaled by alpha/rank.
    #[serde(default = "default_alpha")]
    #[schemars(range(min = 0.0))]
    pub alpha: f64,
    /// Dropout on the adapter input.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 0.9))]
    pub dropout: f64,
    /// Linear layers that get adapters, by Hugging Face module name.
    #[serde(default = "default_targets")]
    #[schemars(length(min = 1))]
    pub target_modules: Vec<LoraTarget>,
}

impl Default for LoraSpec {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: default_targets(),
        }
    }
}

fn default_rank() -> i32 {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<LoraTarget> {
    vec![LoraTarget::QProj, LoraTarget::VProj]
}

/// A linear layer that can carry a LoRA adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// Llama query projection.
    QProj,
    /// Llama key projection.
    KProj,
    /// Llama value projection.
    VProj,
    /// Llama attention output projection.
    OProj,
    /// Llama MLP gate projection.
    GateProj,
    /// Llama MLP up projection.
    UpProj,
    /// Llama MLP down projection.
    DownProj,
    /// GPT-2 fused query/key/value projection.
    #[serde(rename = "c_attn")]
    CAttn,
    /// GPT-2 attention/MLP output projection.
    #[serde(rename = "c_proj")]
    CProj,
    /// GPT-2 MLP input projection.
    #[serde(rename = "c_fc")]
    CFc,
}

/// Early stopping on validation loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EarlyStopping {
    /// Evaluations without improvement before stopping.
    #[serde(default = "default_patience")]
    #[schemars(range(min = 1, max = 1000))]
    pub patience: i32,
    /// Smallest decrease in validation loss that counts as improvement.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub min_delta: f64,
}

fn default_patience() -> i32 {
    3
}

/// Post-training evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.gates) || !has(self.gates.minRougeL) || (has(self.metrics) && 'rougeL' in self.metrics)")
    .message("gates.minRougeL needs rougeL in metrics").field_path(".gates.minRougeL"))]
#[x_kube(validation = Rule::new("!has(self.gates) || !has(self.gates.minBleu) || (has(self.metrics) && 'bleu' in self.metrics)")
    .message("gates.minBleu needs bleu in metrics").field_path(".gates.minBleu"))]
#[x_kube(validation = Rule::new("!has(self.gates) || !has(self.gates.minExactMatch) || (has(self.metrics) && 'exactMatch' in self.metrics)")
    .message("gates.minExactMatch needs exactMatch in metrics").field_path(".gates.minExactMatch"))]
#[x_kube(validation = Rule::new("!has(self.gates) || !has(self.gates.maxPerplexity) || (has(self.metrics) && 'perplexity' in self.metrics)")
    .message("gates.maxPerplexity needs perplexity in metrics").field_path(".gates.maxPerplexity"))]
pub struct Evaluation {
    /// Metrics to compute on the test split (the validation split when there is no test split).
    #[serde(default = "default_metrics")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub metrics: Vec<Metric>,
    /// Records evaluated with generation (perplexity uses the whole split).
    #[serde(default = "default_samples")]
    #[schemars(range(min = 1, max = 100000))]
    pub samples: i32,
    /// Decoding used for the generated answers.
    #[serde(default)]
    pub generation: GenerationParams,
    /// Quality gates: the FineTune is Ready only if every gate passes.
    #[serde(default)]
    pub gates: Gates,
}

impl Default for Evaluation {
    fn default() -> Self {
        Self {
            metrics: default_metrics(),
            samples: default_samples(),
            generation: GenerationParams::default(),
            gates: Gates::default(),
        }
    }
}

fn default_metrics() -> Vec<Metric> {
    vec![Metric::Perplexity]
}
fn default_samples() -> i32 {
    200
}

/// An evaluation metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Metric {
    /// exp(mean token cross-entropy) on the response tokens.
    Perplexity,
    /// ROUGE-L F1 of generated answers against references.
    #[serde(rename = "rougeL")]
    RougeL,
    /// Corpus BLEU (sacreBLEU-compatible, 13a tokenisation) of generated answers.
    Bleu,
    /// Fraction of generated answers equal to the reference after trimming.
    ExactMatch,
}

/// Decoding parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GenerationParams {
    /// Tokens generated per answer at most.
    #[serde(default = "default_max_new_tokens")]
    #[schemars(range(min = 1, max = 32768))]
    pub max_new_tokens: i32,
    /// Sampling temperature; 0 is greedy.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub temperature: f64,
    /// Nucleus sampling mass.
    #[serde(default = "default_top_p")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: f64,
    /// Sample among the k most likely tokens; 0 disables.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub top_k: i32,
    /// Sampling seed.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub seed: i64,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: default_max_new_tokens(),
            temperature: 0.0,
            top_p: default_top_p(),
            top_k: 0,
            seed: 0,
        }
    }
}

fn default_max_new_tokens() -> i32 {
    128
}
fn default_top_p() -> f64 {
    1.0
}

/// Thresholds the evaluation must meet. A gate on a metric that is not computed is
/// rejected by the apiserver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gates {
    /// Lowest acceptable ROUGE-L.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "minRougeL")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_rouge_l: Option<f64>,
    /// Lowest acceptable BLEU (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub min_bleu: Option<f64>,
    /// Lowest acceptable exact-match rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_exact_match: Option<f64>,
    /// Highest acceptable perplexity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub max_perplexity: Option<f64>,
}

/// Output of a FineTune.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FineTuneOutput {
    /// Location and retention of the model.
    #[serde(flatten)]
    pub location: OutputSpec,
    /// With LoRA, merge the adapters into the base weights so the output is a plain
    /// model. `false` exports the adapter alone in the PEFT layout
    /// (`adapter_config.json`, `adapter_model.safetensors`) with its base model's URI
    /// and digest in `llmops.json`; the server loads it onto that base. Needs
    /// `method.type: lora` or `qlora`.
    #[serde(default = "merge_default")]
    pub merge_adapter: bool,
}

fn merge_default() -> bool {
    true
}

// Not derived: an absent `output` must merge adapters like an empty one does.
impl Default for FineTuneOutput {
    fn default() -> Self {
        Self {
            location: OutputSpec::default(),
            merge_adapter: merge_default(),
        }
    }
}

/// Observed state of a FineTune.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FineTuneStatus {
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
    pub operator: FineTuneOperatorStatus,
}

/// The fields of a FineTune's status that the operator writes (besides the
/// generation and conditions every status has). Flattened: in the API they sit
/// directly in `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FineTuneOperatorStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Scores from the evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationScores>,
    /// Whether the quality gates passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateResult>,
    /// Restarts after failures so far (disruptions not counted).
    #[serde(default)]
    pub restarts: i32,
    /// Lineage: the exact inputs, recorded at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// The fine-tuned model, once Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// The Job running the trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<LocalObjectRef>,
    /// When training started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When training and evaluation finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Evaluation scores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationScores {
    /// Perplexity on the evaluation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// The base model's perplexity on the same split, before fine-tuning: what
    /// the fine-tune improved on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_perplexity: Option<f64>,
    /// ROUGE-L F1.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "rougeL")]
    pub rouge_l: Option<f64>,
    /// BLEU (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bleu: Option<f64>,
    /// Exact-match rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
    /// Records evaluated.
    #[serde(default)]
    pub samples: i64,
}

/// The outcome of the quality gates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// True when every gate passed.
    pub passed: bool,
    /// Each gate with its score, e.g. `rougeL 0.41 >= 0.35`.
    pub message: String,
}

/// Lineage of a fine-tuned model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    /// The base model artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<Artifact>,
    /// The dataset artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<Artifact>,
}
