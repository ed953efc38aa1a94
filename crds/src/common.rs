//! Types shared by more than one kind: references, artifacts, compute resources,
//! scheduling, training hyperparameters and progress, and the common status fields.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A reference to another object in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the referenced object, in this object's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to a Secret in this object's namespace. Its keys are read only through
/// `secretKeyRef` environment variables; values never appear in status, events or logs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to one key of a Secret in this object's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_secret_key() -> String {
    "api-key".into()
}

/// Where a job writes what it produces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// Directory URI for the artifact: `s3://`, `gs://`, `az://`, `file://` or
    /// `pvc://<claim>/<path>`. Defaults to the operator's artifact store
    /// (`<store>/<kind>/<namespace>/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(s3|gs|az|file|pvc)://.+"))]
    pub uri: Option<String>,
    /// Secret with object-store credentials for `uri` (keys such as
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, `AWS_REGION`,
    /// `GOOGLE_SERVICE_ACCOUNT_KEY`, `AZURE_STORAGE_ACCOUNT_NAME`,
    /// `AZURE_STORAGE_ACCOUNT_KEY`). Defaults to the operator's store credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// What happens to the artifact when this object is deleted. `Delete` removes
    /// the whole output prefix (a Dataset's shards; a PretrainJob's or FineTune's
    /// exported models and checkpoints) before the object goes, and only if the
    /// prefix's ownership marker names this object.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// What happens to an artifact when the object that produced it is deleted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Keep the artifact (the default): a served model may still need it.
    #[default]
    Retain,
    /// Delete the artifact's directory with the object.
    Delete,
}

/// A produced artifact: a directory at a URI and the sha256 over its manifest of
/// file digests, which consumers record as lineage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Directory URI of the artifact.
    pub uri: String,
    /// `sha256:<hex>` over the artifact's manifest of file digests.
    pub digest: String,
}

/// Compute for the pods of a job or deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeResources {
    /// Number of pods training together (data parallel across pods).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 256))]
    pub replicas: i32,
    /// GPUs per pod; 0 trains on CPU.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub gpus_per_replica: i32,
    /// Extended resource name of the GPUs. Defaults to the operator's setting
    /// (usually `nvidia.com/gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([a-z0-9.-]+/)?[a-zA-Z0-9._-]+$"))]
    pub gpu_resource_name: Option<String>,
    /// CPU request (and limit) per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request (and limit) per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Size limit of each pod's scratch space (`/tmp`): the downloaded dataset and
    /// base model, and checkpoints and the model staged before upload. A pod
    /// writing more is evicted. A whole number with an optional unit, e.g.
    /// `200Gi`. Defaults to 100Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub ephemeral_storage: Option<String>,
}

impl Default for ComputeResources {
    fn default() -> Self {
        Self {
            replicas: 1,
            gpus_per_replica: 0,
            gpu_resource_name: None,
            cpu: None,
            memory: None,
            ephemeral_storage: None,
        }
    }
}

pub(crate) fn one() -> i32 {
    1
}

/// Where the pods may run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate (e.g. a GPU node taint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity for the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// How a failed pod is retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Restarts after failures before the job is marked failed. Each restart resumes
    /// from the newest checkpoint. Node disruptions (preemption, eviction) do not count.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 0, max = 100))]
    pub max_restarts: i32,
    /// Seconds the run may take, restarts included, before its pods are stopped
    /// and it fails. Time suspended does not count: resuming starts the clock
    /// again. Defaults to 604800 (7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            max_restarts: default_max_restarts(),
            active_deadline_seconds: None,
        }
    }
}

fn default_max_restarts() -> i32 {
    3
}

/// Learning-rate schedule after warmup.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum LrSchedule {
    /// Cosine decay from `learningRate` to `minLearningRate`.
    #[default]
    Cosine,
    /// Linear decay from `learningRate` to `minLearningRate`.
    Linear,
    /// Constant `learningRate`.
    Constant,
}

/// Numeric precision of training.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Precision {
    /// Full fp32 everywhere.
    #[default]
    Fp32,
    /// bf16 autocast for matrix multiplies on CUDA (fp32 master weights); fp32 on CPU.
    Bf16,
}

/// Optimisation hyperparameters shared by pretraining and fine-tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.maxSteps), has(self.maxTokens), has(self.epochs)].filter(x, x).size() == 1")
        .message("set exactly one of maxSteps, maxTokens or epochs"),
    validation = Rule::new("self.batchSize % self.microBatchSize == 0")
        .message("batchSize must be a multiple of microBatchSize")
        .field_path(".microBatchSize"),
    validation = Rule::new("!has(self.minLearningRate) || self.minLearningRate <= self.learningRate")
        .message("minLearningRate must not exceed learningRate")
        .field_path(".minLearningRate"),
)]
pub struct TrainingSpec {
    /// Optimizer steps to train for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_steps: Option<i64>,
    /// Training tokens to train for (converted to steps from the batch size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<i64>,
    /// Passes over the training split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub epochs: Option<i32>,
    /// Global batch size in sequences per optimizer step, across all GPUs and replicas.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 65536))]
    pub batch_size: i32,
    /// Sequences per forward/backward pass on one device; the rest is gradient accumulation.
    #[serde(default = "default_micro_batch_size")]
    #[schemars(range(min = 1, max = 4096))]
    pub micro_batch_size: i32,
    /// Peak learning rate, reached after warmup.
    #[serde(default = "default_learning_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub learning_rate: f64,
    /// Learning rate at the end of the decay. Defaults to a tenth of `learningRate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_learning_rate: Option<f64>,
    /// Steps of linear warmup from 0 to `learningRate`.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub warmup_steps: i64,
    /// Decay after warmup.
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Decoupled AdamW weight decay; never applied to norms, biases or embeddings' norms.
    #[serde(default = "default_weight_decay")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub weight_decay: f64,
    /// AdamW beta1.
    #[serde(default = "default_beta1")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub beta1: f64,
    /// AdamW beta2.
    #[serde(default = "default_beta2")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub beta2: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    #[serde(default = "default_grad_clip")]
    #[schemars(range(min = 0.0))]
    pub grad_clip: f64,
    /// Training precision.
    #[serde(default)]
    pub precision: Precision,
    /// Seed for initialisation, data order and dropout.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub seed: i64,
    /// Evaluate validation loss and perplexity every this many steps.
    #[serde(default = "default_eval_every")]
    #[schemars(range(min = 1))]
    pub eval_every: i64,
    /// Save a checkpoint every this many steps (and always on SIGTERM).
    #[serde(default = "default_checkpoint_every")]
    #[schemars(range(min = 1))]
    pub checkpoint_every: i64,
    /// Number of newest checkpoints kept; older ones are deleted.
    #[serde(default = "default_checkpoints_kept")]
    #[schemars(range(min = 1, max = 100))]
    pub checkpoints_kept: i32,
    /// ZeRO sharding of the optimizer over the data-parallel ranks.
    #[serde(default, skip_serializing_if = "ZeroSpec::is_off")]
    pub zero: ZeroSpec,
    /// Keep only each transformer block's input from the forward pass and run
    /// the block again when the backward pass reaches it: activation memory of
    /// one hidden-state tensor per block instead of all its intermediates, for
    /// about one more forward pass of compute per step. Not with ZeRO stage 2.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
}

/// ZeRO (Rajbhandari et al.): each data-parallel rank keeps only its shard of
/// the optimizer state, so its memory falls with the number of ranks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZeroSpec {
    /// 0: every rank keeps all of the optimizer state (plain data parallelism).
    /// 1: each rank keeps the AdamW moments and fp32 master weights of its
    /// shard of the parameters only. 2: as 1, and gradients are reduce-scattered
    /// so each rank keeps only its shard of the averaged gradient. With one rank
    /// any stage trains as stage 0. Checkpoints of stage 1 and 2 hold one
    /// optimizer file per rank; resuming with another rank count or stage
    /// reassembles them.
    #[serde(default)]
    #[schemars(range(min = 0, max = 2))]
    pub stage: i32,
}

impl ZeroSpec {
    fn is_off(&self) -> bool {
        self.stage == 0
    }
}

impl Default for TrainingSpec {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({"maxSteps": 1000})).expect("defaults deserialize")
    }
}

fn default_batch_size() -> i32 {
    32
}
fn default_micro_batch_size() -> i32 {
    8
}
fn default_learning_rate() -> f64 {
    3.0e-4
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_eval_every() -> i64 {
    200
}
fn default_checkpoint_every() -> i64 {
    500
}
fn default_checkpoints_kept() -> i32 {
    3
}

/// Lifecycle phase of a training job, for humans and dashboards; conditions are
/// the machine-readable truth.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum JobPhase {
    /// Accepted, nothing started yet.
    #[default]
    Pending,
    /// Waiting for a referenced object to become Ready.
    Waiting,
    /// Pods are running.
    Running,
    /// Stopped by `suspend: true`; resumes from the newest checkpoint.
    Suspended,
    /// Finished; the artifact is in `status.artifact`.
    Succeeded,
    /// Failed permanently; the newest checkpoint is kept.
    Failed,
}

/// A saved checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointInfo {
    /// Optimizer step the checkpoint was taken at.
    pub step: i64,
    /// Directory URI of the checkpoint.
    pub uri: String,
    /// When it was written.
    pub time: Time,
}

/// Live training progress, written by the trainer (field manager `llmops-trainer`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingProgress {
    /// Optimizer steps completed.
    #[serde(default)]
    pub step: i64,
    /// Optimizer steps planned in total.
    #[serde(default)]
    pub total_steps: i64,
    /// Training tokens consumed so far.
    #[serde(default)]
    pub tokens_seen: i64,
    /// Training loss (mean over the last logging window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Loss on the validation split at the last evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// exp(validation loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_perplexity: Option<f64>,
    /// Training throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// Current learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Estimated seconds until training finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<i64>,
    /// The newest checkpoint; a restarted pod resumes from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointInfo>,
    /// When the trainer last wrote progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<Time>,
    /// What the trainer had to work around, such as newer checkpoints it found
    /// corrupt and set aside before resuming from an older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The Kubernetes conditions list: a map keyed by `type`, so server-side apply
/// merges conditions from different writers instead of replacing the list.
pub type Conditions = Vec<Condition>;

/// Condition types used by every kind (kstatus vocabulary).
pub mod condition {
    /// The object has reached its desired state; always present.
    pub const READY: &str = "Ready";
    /// Work is in flight toward the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// No progress is possible without a change to the spec.
    pub const STALLED: &str = "Stalled";
}

/// A model: the artifact of a PretrainJob or FineTune, or a Hugging Face-format
/// directory at a URI. Set exactly one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "[has(self.pretrainJobRef), has(self.fineTuneRef), has(self.uri)].filter(x, x).size() == 1"
).message("set exactly one of pretrainJobRef, fineTuneRef or uri"))]
pub struct ModelSource {
    /// The model trained by a PretrainJob in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain_job_ref: Option<LocalObjectRef>,
    /// The model produced by a FineTune in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune_ref: Option<LocalObjectRef>,
    /// A Hugging Face-format model directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`): `s3://`, `gs://`, `az://`, `file://`, `pvc://<claim>/<path>`,
    /// or a Hugging Face Hub model repository
    /// `hf://<org>/<model>[@<revision>][/<folder>]` (revision: branch, tag or commit;
    /// default `main`), read at the commit the revision resolves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(s3|gs|az|file|pvc|hf)://.+"))]
    pub uri: Option<String>,
    /// Secret with the credentials for `uri`: object-store keys, or for `hf://`
    /// the Hub token in key `HF_TOKEN` (needed for gated and private repositories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}
