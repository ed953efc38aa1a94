//! Operator-wide settings: images, the default artifact store, and the defaults a
//! resource falls back to when it sets none.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::workload::image::ImagePull;

/// Settings shared by every controller; built once from the command line.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorConfig {
    /// Image of the `trainer` binary (prepare, pretrain, finetune, evaluate, clean).
    pub trainer_image: String,
    /// Image of the `server` binary (inference).
    pub server_image: String,
    /// Image of vLLM's OpenAI server, run for `spec.server.runtime: vllm`.
    pub vllm_image: String,
    /// Pull policy and pull Secrets of the trainer pods.
    pub trainer_image_pull: ImagePull,
    /// Pull policy and pull Secrets of the serving pods.
    pub server_image_pull: ImagePull,
    /// Root URI of the default artifact store, without a trailing slash.
    pub artifact_store: String,
    /// Secret, in each namespace using the default store, holding its credentials.
    pub artifact_store_secret: Option<String>,
    /// Extended resource requested for GPUs when a resource names none.
    pub gpu_resource_name: String,
    /// Requests (and the memory limit) of CPU-only trainer pods such as `prepare`.
    pub trainer_resources: TrainerResources,
    /// How serving pods are monitored (scrape interval, window, status writes).
    pub monitoring: crate::controller::deployment::Monitoring,
    /// Whether Dataset sources may be read from link-local and cloud-metadata
    /// addresses, which `trainer prepare` refuses otherwise so a Dataset cannot
    /// read the node's instance credentials. A cluster-wide choice of its
    /// administrator.
    pub allow_link_local_sources: bool,
    /// Whether each ModelDeployment gets a NetworkPolicy opening its serving port
    /// to the expected traffic only (`controller::deployment::isolation`), and
    /// each object that runs trainer pods one confining them
    /// (`workload::isolation`).
    pub network_policies: bool,
    /// Where trainer pods may connect besides their own run and DNS: the
    /// apiserver, the artifact store, data sources (`--trainer-egress`).
    pub trainer_egress: Vec<k8s_openapi::api::networking::v1::NetworkPolicyEgressRule>,
    /// The namespace the operator runs in, when in a cluster: serving pods admit
    /// its metrics scrapes.
    pub operator_namespace: Option<String>,
    /// Whether every ModelDeployment must set `spec.auth`.
    pub require_auth: bool,
    /// Variables every trainer and serving pod gets from the operator: its
    /// `OTEL_*` export settings, so that their spans reach the same collector
    /// (`llmops_telemetry::otlp::export_env`), and `HF_ENDPOINT` when the
    /// cluster reads `hf://` URIs from a Hub mirror (`--hf-endpoint`).
    pub pod_export_env: Vec<(String, String)>,
    /// Reconciles of one kind (in one namespace scope) run at once at most. The
    /// bound is what keeps memory flat with many objects: each reconcile in
    /// flight holds a connection to the apiserver (HTTP/1.1, one request each),
    /// and the client's pool keeps every connection it ever opened idle for a
    /// while, each with its TLS buffers.
    pub reconcile_concurrency: u16,
    /// Where the gateway's demand per ModelDeployment is read, for scale to
    /// zero (`--gateway-metrics-url`); none without a gateway.
    pub gateway_metrics: Option<crate::controller::deployment::GatewayMetrics>,
}

/// Default of [`OperatorConfig::reconcile_concurrency`].
pub const DEFAULT_RECONCILE_CONCURRENCY: u16 = 16;

/// CPU and memory for trainer pods whose resource has no `resources` field.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerResources {
    pub cpu: Quantity,
    pub memory: Quantity,
}

impl Default for TrainerResources {
    fn default() -> Self {
        Self {
            cpu: Quantity("1".into()),
            memory: Quantity("2Gi".into()),
        }
    }
}

impl TrainerResources {
    /// Requests for CPU and memory, and a memory limit equal to the request: the
    /// trainer streams with bounded memory, so exceeding it is a bug worth an OOM
    /// kill rather than a node under pressure. CPU is not limited (throttling only
    /// slows the job).
    pub fn requirements(&self) -> k8s_openapi::api::core::v1::ResourceRequirements {
        k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), self.cpu.clone()),
                ("memory".to_string(), self.memory.clone()),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                self.memory.clone(),
            )])),
            ..Default::default()
        }
    }
}

impl OperatorConfig {
    /// The default artifact URI of an object: `<store>/<plural>/<namespace>/<name>`.
    pub fn default_artifact_uri(&self, plural: &str, namespace: &str, name: &str) -> String {
        format!("{}/{plural}/{namespace}/{name}", self.artifact_store)
    }

    /// A config for unit tests.
    #[cfg(test)]
    pub fn example() -> Self {
        Self {
            trainer_image: "ghcr.io/llmops-dev/trainer:test".into(),
            server_image: "ghcr.io/llmops-dev/server:test".into(),
            vllm_image: "vllm/vllm-openai:test".into(),
            trainer_image_pull: ImagePull::default(),
            server_image_pull: ImagePull::default(),
            artifact_store: "s3://llmops-artifacts".into(),
            artifact_store_secret: Some("store-creds".into()),
            gpu_resource_name: "nvidia.com/gpu".into(),
            trainer_resources: TrainerResources::default(),
            monitoring: Default::default(),
            allow_link_local_sources: false,
            network_policies: true,
            trainer_egress: crate::workload::isolation::allow_all(),
            operator_namespace: Some("llmops-system".into()),
            require_auth: false,
            pod_export_env: Vec::new(),
            reconcile_concurrency: DEFAULT_RECONCILE_CONCURRENCY,
            gateway_metrics: None,
        }
    }
}

/// Normalise a store root: no trailing slash, so joined paths have exactly one.
pub fn normalize_store_uri(uri: &str) -> String {
    uri.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_artifact_uri_joins_with_single_slashes() {
        let mut config = OperatorConfig::example();
        config.artifact_store = normalize_store_uri("s3://bucket/prefix/");
        assert_eq!(
            config.default_artifact_uri("datasets", "ml", "chats"),
            "s3://bucket/prefix/datasets/ml/chats"
        );
    }

    #[test]
    fn trainer_resources_limit_memory_but_not_cpu() {
        let req = TrainerResources::default().requirements();
        assert_eq!(req.requests.as_ref().unwrap()["cpu"].0, "1");
        assert_eq!(req.requests.as_ref().unwrap()["memory"].0, "2Gi");
        let limits = req.limits.unwrap();
        assert_eq!(limits["memory"].0, "2Gi");
        assert!(!limits.contains_key("cpu"));
    }
}
