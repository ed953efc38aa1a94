//! `ModelDeployment`: serve a model behind an OpenAI-compatible API, autoscaled, and
//! roll out model changes safely.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Artifact, Conditions, LocalObjectRef, ModelSource, Scheduling, SecretKeyRef};
use crate::finetune::Lineage;

/// A served model. Changing `model` starts a rollout; a failed rollout leaves the
/// previous model serving.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "llmops.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    namespaced,
    status = "ModelDeploymentStatus",
    shortname = "md",
    category = "llmops",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas.ready"}"#,
    printcolumn = r#"{"name":"RPS","type":"number","jsonPath":".status.metrics.requestsPerSecond"}"#,
    printcolumn = r#"{"name":"P95ms","type":"number","jsonPath":".status.metrics.p95LatencyMs"}"#,
    printcolumn = r#"{"name":"Rollout","type":"string","jsonPath":".status.rollout.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.rollout.step","priority":1}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.rollout.weight"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.replicas) || self.replicas.min > 0 || (has(self.autoscaling) && has(self.autoscaling.scaleToZeroAfter))")
    .message("replicas.min may be 0 only with autoscaling.scaleToZeroAfter")
    .field_path(".replicas.min"))]
pub struct ModelDeploymentSpec {
    /// The model to serve; changing it is a rollout.
    pub model: ModelSource,
    /// Bounds for the number of serving pods.
    #[serde(default)]
    pub replicas: ReplicaRange,
    /// How the replica count follows load.
    #[serde(default)]
    pub autoscaling: Autoscaling,
    /// How a model change is rolled out.
    #[serde(default)]
    pub rollout: Rollout,
    /// Inference server settings.
    #[serde(default)]
    pub server: ServerSettings,
    /// Compute per serving pod.
    #[serde(default)]
    pub resources: ServingResources,
    /// Placement of the pods.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// API authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// LoRA adapters served on `model`, each under its own model name (in
    /// `/v1/models`, and as a request's `model`). Requests for different
    /// adapters are decoded in the same batch; adding, changing or removing
    /// one reaches the running pods without restarting them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name == a.name))")
        .message("adapter names must be unique"))]
    pub adapters: Vec<AdapterSource>,
}

/// A LoRA adapter in the PEFT layout, served on the deployment's model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.fineTuneRef), has(self.uri)].filter(x, x).size() == 1")
    .message("set exactly one of fineTuneRef or uri"))]
pub struct AdapterSource {
    /// The model name clients send for this adapter; not the deployment's own
    /// name (the base model's).
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._:/-]+$"))]
    pub name: String,
    /// The adapter a FineTune in this namespace exported (`output.mergeAdapter:
    /// false`) on this deployment's model; a new export rolls in by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune_ref: Option<LocalObjectRef>,
    /// A PEFT adapter directory (`adapter_config.json`,
    /// `adapter_model.safetensors`), read with the model's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^(s3|gs|az|file|pvc)://.+"))]
    pub uri: Option<String>,
}

/// Replica bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.min <= self.max")
    .message("replicas.min must not exceed replicas.max")
    .field_path(".min"))]
pub struct ReplicaRange {
    /// Fewest serving pods (0 allows scale to zero).
    #[serde(default = "crate::common::one")]
    #[schemars(range(min = 0, max = 1000))]
    pub min: i32,
    /// Most serving pods.
    #[serde(default = "crate::common::one")]
    #[schemars(range(min = 1, max = 1000))]
    pub max: i32,
}

impl Default for ReplicaRange {
    fn default() -> Self {
        Self { min: 1, max: 1 }
    }
}

/// Load-based autoscaling, computed by the operator from the servers' metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// The per-replica load signal.
    #[serde(default)]
    pub metric: ScalingMetric,
    /// Desired value of the metric per replica.
    #[serde(default = "default_target")]
    #[schemars(range(min = 0.001))]
    pub target: f64,
    /// Scale down only to the highest recommendation seen in this window, to avoid flapping.
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub stabilization_window: String,
    /// Scale to zero after no requests for this long (needs `replicas.min: 0`,
    /// and the gateway, which holds the first request while a pod starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub scale_to_zero_after: Option<String>,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Self {
            metric: ScalingMetric::default(),
            target: default_target(),
            stabilization_window: default_window(),
            scale_to_zero_after: None,
        }
    }
}

fn default_target() -> f64 {
    8.0
}
fn default_window() -> String {
    "5m".into()
}

/// Autoscaling signal.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ScalingMetric {
    /// Requests being processed or queued.
    #[default]
    InFlightRequests,
    /// Requests waiting for a batch slot.
    QueueDepth,
    /// Generated tokens per second.
    TokensPerSecond,
}

/// Rollout of a model change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.strategy == 'Canary' || !has(self.canary)")
    .message("canary steps need strategy: Canary")
    .field_path(".canary"))]
#[x_kube(validation = Rule::new("self.strategy != 'Canary' || has(self.canary)")
    .message("strategy: Canary needs canary.steps")
    .field_path(".canary"))]
pub struct Rollout {
    /// RollingUpdate replaces pods gradually; Canary shifts traffic in steps and
    /// checks the analysis between them.
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// Canary steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// What a healthy new model looks like.
    #[serde(default)]
    pub analysis: Analysis,
    /// Return all traffic to the previous model when the analysis fails.
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// Seconds new serving pods may take to become ready (loading their model)
    /// before the rollout counts as failed: a rolling update then stops with the
    /// old pods serving, and a canary is rolled back.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: i32,
}

fn default_progress_deadline() -> i32 {
    600
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            strategy: RolloutStrategy::default(),
            canary: None,
            analysis: Analysis::default(),
            auto_rollback: true,
            progress_deadline_seconds: default_progress_deadline(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Rollout strategy.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum RolloutStrategy {
    /// Replace pods gradually; new pods take traffic once ready.
    #[default]
    RollingUpdate,
    /// Shift a growing share of traffic to the new model.
    Canary,
}

/// Canary steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// Traffic shares in strictly ascending order; after the last step the new model
    /// takes all traffic.
    #[schemars(length(min = 1, max = 10))]
    #[x_kube(validation = Rule::new("self.map(s, s.weight).isSorted() && self.all(s, self.exists_one(t, t.weight == s.weight))")
        .message("canary step weights must be strictly ascending"))]
    pub steps: Vec<CanaryStep>,
    /// Exact traffic weights on a Gateway API HTTPRoute instead of a share of
    /// pods behind the one Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,
}

/// Where canary weights are written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    /// An HTTPRoute (`gateway.networking.k8s.io/v1`) in this namespace. Its rules
    /// whose backendRefs name the Service `<name>-stable` (or `<name>-canary`)
    /// are the operator's to weight: during a step they send the step's weight to
    /// `<name>-canary` and the rest to `<name>-stable`; outside a canary, all to
    /// `<name>-stable`. Other rules and backends are left as they are.
    pub http_route: LocalObjectRef,
}

/// One canary step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percentage of traffic to the new model.
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,
    /// How long to hold this step while the analysis runs.
    #[serde(default = "default_pause")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub pause: String,
}

fn default_pause() -> String {
    "5m".into()
}

/// Health thresholds for a new model, checked on its own traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Highest acceptable share of failed requests.
    #[serde(default = "default_max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// Highest acceptable 95th-percentile latency, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_p95_latency_ms: Option<i64>,
    /// Requests the new model must serve before a step can pass.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 0))]
    pub min_requests: i64,
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            max_error_rate: default_max_error_rate(),
            max_p95_latency_ms: None,
            min_requests: default_min_requests(),
        }
    }
}

fn default_max_error_rate() -> f64 {
    0.01
}
fn default_min_requests() -> i64 {
    50
}

/// Inference server settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxNewTokens <= self.maxContext")
    .message("maxNewTokens must not exceed maxContext")
    .field_path(".maxNewTokens"))]
pub struct ServerSettings {
    /// Sequences decoded together (continuous batching).
    #[serde(default = "default_max_batch")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_batch: i32,
    /// Longest prompt plus completion, in tokens. Must fit the model.
    #[serde(default = "default_max_context")]
    #[schemars(range(min = 8, max = 131072))]
    pub max_context: i32,
    /// Default and upper bound for `max_tokens` in a request.
    #[serde(default = "default_server_max_new_tokens")]
    #[schemars(range(min = 1, max = 131072))]
    pub max_new_tokens: i32,
    /// Weight precision on the device.
    #[serde(default)]
    pub dtype: ServeDtype,
    /// CPU threads for inference; 0 uses the pod's CPU limit.
    #[serde(default)]
    #[schemars(range(min = 0, max = 256))]
    pub threads: i32,
    /// Prompts a pod lets wait for its decoding batch. A request that finds the
    /// queue full is answered 429 with `Retry-After` at once, so an overloaded
    /// pod sheds load instead of queueing without bound.
    #[serde(default = "default_max_queue")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_queue: i32,
    /// A model cache shared by the serving pods: each pod loads a model already
    /// downloaded there instead of downloading it again, and the first pod to
    /// serve a model adds it (by its digest, or a Hub model's commit). Without
    /// it every pod downloads its own copy into its scratch space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_cache: Option<ModelCache>,
    /// The inference server the pods run. `builtin`: the project's server, one
    /// engine on one device (CPU, or one GPU). `vllm`: vLLM's OpenAI server
    /// (the operator's `--vllm-image`) on the same model, fetched by the
    /// trainer image before it starts, with tensor parallelism over the pod's
    /// `resources.gpus`; the same API, API-key Secret, probes, rollouts,
    /// autoscaling and `status.metrics`.
    #[serde(default)]
    pub runtime: ServerRuntime,
}

/// Which inference server runs in the serving pods.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ServerRuntime {
    /// The project's `server`: one engine on the CPU or one GPU.
    #[default]
    Builtin,
    /// vLLM's OpenAI-compatible server, tensor parallel over the pod's GPUs.
    Vllm,
}

/// Where the shared model cache lives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCache {
    /// A PersistentVolumeClaim in this namespace, mounted read-write by every
    /// serving pod: `ReadWriteMany` for pods on several nodes (`ReadWriteOnce`
    /// serves the pods of one node). Size it for the models it will hold;
    /// entries are never removed by the server.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_batch: default_max_batch(),
            max_context: default_max_context(),
            max_new_tokens: default_server_max_new_tokens(),
            dtype: ServeDtype::default(),
            threads: 0,
            max_queue: default_max_queue(),
            model_cache: None,
            runtime: ServerRuntime::default(),
        }
    }
}

fn default_max_batch() -> i32 {
    8
}
fn default_max_context() -> i32 {
    2048
}
fn default_server_max_new_tokens() -> i32 {
    256
}
fn default_max_queue() -> i32 {
    64
}

/// Serving precision.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ServeDtype {
    /// fp32.
    #[default]
    Fp32,
    /// bf16 (GPU).
    Bf16,
    /// fp16 (GPU).
    Fp16,
}

/// Compute per serving pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingResources {
    /// GPUs per pod; 0 serves on CPU. The built-in server runs one engine on
    /// one GPU, so more than 1 needs `server.runtime: vllm` (tensor parallel
    /// over all of them); more throughput with the built-in server comes from
    /// replicas of 1 GPU.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub gpus: i32,
    /// Extended resource name of the GPUs; defaults to the operator's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([a-z0-9.-]+/)?[a-zA-Z0-9._-]+$"))]
    pub gpu_resource_name: Option<String>,
    /// CPU request (and limit) per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    /// Memory request (and limit) per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
}

/// API authentication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// Secret key holding accepted API keys, one per line. Requests must send
    /// `Authorization: Bearer <key>`.
    pub api_key_secret_ref: SecretKeyRef,
}

/// The Service in front of the serving pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(rename = "type", default)]
    pub kind: ServiceType,
    /// Service port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            kind: ServiceType::default(),
            port: default_port(),
        }
    }
}

fn default_port() -> i32 {
    80
}

/// Kubernetes Service type.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ServiceType {
    /// Reachable inside the cluster.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Through a cloud load balancer.
    LoadBalancer,
}

/// Observed state of a ModelDeployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
    /// What the operator records of the serving pods and the rollout.
    #[serde(flatten)]
    pub operator: ModelDeploymentOperatorStatus,
}

/// The fields of a ModelDeployment's status that the operator writes (besides the
/// generation and conditions every status has). Flattened: in the API they sit
/// directly in `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentOperatorStatus {
    /// Desired and ready serving pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaStatus>,
    /// In-cluster base URL of the OpenAI-compatible API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Which models serve traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ServedModels>,
    /// The rollout in progress or last finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Live serving metrics, aggregated over pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ServingMetrics>,
    /// When the replica count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Why the replica count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// Each adapter of `spec.adapters`: what it resolved to, its lineage, and
    /// whether the serving pods have it loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<AdapterStatus>,
}

/// An adapter being served.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdapterStatus {
    /// Its model name.
    pub name: String,
    /// The adapter directory served; empty while it is waited for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// `sha256:<hex>` of its manifest; empty for one given by `uri`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The FineTune that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune_ref: Option<LocalObjectRef>,
    /// Its lineage, as the FineTune recorded it: the base model and dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// Ready serving pods that have this version loaded.
    #[serde(default)]
    pub loaded: i32,
    /// Every ready serving pod has this version loaded.
    #[serde(default)]
    pub ready: bool,
    /// Why it is not served (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Replica counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replicas the autoscaler wants.
    pub desired: i32,
    /// Replicas serving.
    pub ready: i32,
}

/// Models in service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServedModels {
    /// The model taking (most) traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Artifact>,
    /// The model served before the last rollout (the rollback target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Artifact>,
    /// The new model under canary analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Artifact>,
}

/// Rollout state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Phase of the rollout.
    pub phase: RolloutPhase,
    /// Canary step (1-based) in progress; 0 outside a canary.
    #[serde(default)]
    pub step: i32,
    /// Canary steps in all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub steps: i32,
    /// Share of traffic (percent) the new model really gets: canary pods among all
    /// ready serving pods, since the Service spreads requests over pods; with
    /// `canary.trafficRouting`, the weight written on the HTTPRoute.
    #[serde(default)]
    pub weight: i32,
    /// Why the rollout is in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the current canary step's pods were all ready and its pause began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_start_time: Option<Time>,
    /// The canary's own serving figures over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_metrics: Option<ServingMetrics>,
    /// A model whose canary was rolled back: it is not tried again until the spec
    /// changes (a new generation) or the model does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<AbortedRollout>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A rolled-back canary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbortedRollout {
    /// The model that failed.
    pub model: Artifact,
    /// The spec generation it failed under.
    pub generation: i64,
}

/// Rollout phase.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum RolloutPhase {
    /// No rollout in progress.
    #[default]
    Stable,
    /// New pods are starting or taking traffic.
    Progressing,
    /// Holding a canary step.
    Paused,
    /// The new model failed analysis and traffic returned to the previous one.
    RolledBack,
    /// The new model failed analysis and automatic rollback is off.
    Failed,
}

/// Serving metrics over the last window, read by the operator from every ready
/// serving pod's `/metrics` and written at most every 30 s (and only when a
/// figure changed at the precision shown).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingMetrics {
    /// Generation requests answered per second.
    #[serde(default)]
    pub requests_per_second: f64,
    /// Median request latency, milliseconds.
    #[serde(default)]
    pub p50_latency_ms: f64,
    /// 95th-percentile request latency, milliseconds.
    #[serde(default)]
    pub p95_latency_ms: f64,
    /// 95th-percentile time to first token, milliseconds.
    #[serde(default)]
    pub p95_time_to_first_token_ms: f64,
    /// Median time between generated tokens of a request, milliseconds.
    #[serde(default)]
    pub time_per_output_token_ms: f64,
    /// Generated tokens per second.
    #[serde(default)]
    pub tokens_per_second: f64,
    /// Share of requests answered with a server error (5xx).
    #[serde(default)]
    pub error_rate: f64,
    /// Share of requests refused as the client's error (4xx), counted apart.
    #[serde(default)]
    pub client_error_rate: f64,
    /// Requests in flight now (queued or decoding).
    #[serde(default)]
    pub in_flight: i64,
    /// Requests admitted but not yet decoding now.
    #[serde(default)]
    pub queue_depth: i64,
    /// Serving pods whose metrics answered the last scrape.
    #[serde(default)]
    pub pods: i32,
    /// Seconds of traffic the rates and quantiles summarise.
    #[serde(default)]
    pub window_seconds: i64,
}
