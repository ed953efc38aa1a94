//! The gateway's `/metrics` (Prometheus text): requests by model and status,
//! latency, requests in flight and queued per model, ready endpoints per
//! model, and usage per key — by the key's name, never the key. The demand on
//! each ModelDeployment (requests admitted, in flight and queued, labelled by
//! namespace and name) is what the operator's autoscaler reads to keep a
//! deployment scaled to zero while idle and to wake it on a request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelCode {
    pub model: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyModelCode {
    pub key: String,
    pub model: String,
    pub code: String,
}

/// A ModelDeployment, as the operator names it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub namespace: String,
    pub modeldeployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyModel {
    pub key: String,
    pub model: String,
}

type Latency = Family<ModelLabels, Histogram, fn() -> Histogram>;

fn queue_wait_histogram() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    ])
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    /// Requests answered, by model and HTTP status (`client_closed` for a
    /// client gone before the end).
    pub requests: Family<ModelCode, Counter>,
    /// Seconds from the request to the end of its response.
    pub latency: Latency,
    /// Requests admitted and not finished: queued for a pod, waiting for its
    /// answer, or relaying it.
    pub in_flight: Family<ModelLabels, Gauge>,
    /// Requests waiting for a ready pod.
    pub queued: Family<ModelLabels, Gauge>,
    /// Ready pods.
    pub endpoints: Family<ModelLabels, Gauge>,
    /// Seconds a request waited for its model to have a ready pod (only the
    /// requests that had to wait).
    pub queue_wait: Latency,
    /// Requests admitted per ModelDeployment.
    pub deployment_requests: Family<DeploymentLabels, Counter>,
    /// Requests admitted and not finished per ModelDeployment.
    pub deployment_in_flight: Family<DeploymentLabels, Gauge>,
    /// Requests waiting for a ready pod per ModelDeployment.
    pub deployment_queued: Family<DeploymentLabels, Gauge>,
    /// Requests sent again to another pod after the first failed before
    /// answering.
    pub retries: Family<ModelLabels, Counter>,
    /// Streams ended by the pod failing mid-response.
    pub upstream_broken: Family<ModelLabels, Counter>,
    /// Requests per key, model and status (429s of the key's limits included).
    pub key_requests: Family<KeyModelCode, Counter>,
    /// Tokens (prompt and completion, from the responses' `usage`) per key.
    pub key_tokens: Family<KeyModel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            queued: Family::default(),
            endpoints: Family::default(),
            queue_wait: Family::new_with_constructor(queue_wait_histogram),
            deployment_requests: Family::default(),
            deployment_in_flight: Family::default(),
            deployment_queued: Family::default(),
            retries: Family::default(),
            upstream_broken: Family::default(),
            key_requests: Family::default(),
            key_tokens: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "llmops_gateway_requests",
            "Requests answered, by model and status",
            metrics.requests.clone(),
        );
        registry.register(
            "llmops_gateway_request_duration_seconds",
            "Seconds from a request to the end of its response",
            metrics.latency.clone(),
        );
        registry.register(
            "llmops_gateway_in_flight_requests",
            "Requests admitted and not finished (queued ones included)",
            metrics.in_flight.clone(),
        );
        registry.register(
            "llmops_gateway_queued_requests",
            "Requests waiting for a ready serving pod",
            metrics.queued.clone(),
        );
        registry.register(
            "llmops_gateway_ready_endpoints",
            "Ready serving pods per model",
            metrics.endpoints.clone(),
        );
        registry.register(
            "llmops_gateway_queue_wait_seconds",
            "Seconds a request waited for a ready serving pod (requests that waited)",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "llmops_gateway_deployment_requests",
            "Requests admitted per ModelDeployment",
            metrics.deployment_requests.clone(),
        );
        registry.register(
            "llmops_gateway_deployment_in_flight_requests",
            "Requests admitted and not finished per ModelDeployment (queued ones included)",
            metrics.deployment_in_flight.clone(),
        );
        registry.register(
            "llmops_gateway_deployment_queued_requests",
            "Requests waiting for a ready serving pod per ModelDeployment",
            metrics.deployment_queued.clone(),
        );
        registry.register(
            "llmops_gateway_upstream_retries",
            "Requests sent to a second pod after the first failed before answering",
            metrics.retries.clone(),
        );
        registry.register(
            "llmops_gateway_upstream_broken_streams",
            "Responses ended by their pod failing mid-response",
            metrics.upstream_broken.clone(),
        );
        registry.register(
            "llmops_gateway_key_requests",
            "Requests per API key name, model and status",
            metrics.key_requests.clone(),
        );
        registry.register(
            "llmops_gateway_key_tokens",
            "Tokens used per API key name and model (from the responses' usage)",
            metrics.key_tokens.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn model(model: &str) -> ModelLabels {
        ModelLabels {
            model: model.to_string(),
        }
    }

    pub fn deployment(backend: &crate::registry::Backend) -> DeploymentLabels {
        DeploymentLabels {
            namespace: backend.namespace.clone(),
            modeldeployment: backend.deployment.clone(),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}
