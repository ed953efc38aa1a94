//! Prometheus metrics served at `/metrics`: what the operator's autoscaler and
//! rollout analysis read (in-flight requests, error rate, latency), and what an
//! operator of the server wants to see (tokens, batch size, time to first token).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `completions`, `chat_completions` or `models`.
    pub route: &'static str,
    /// HTTP status class of the response: `2xx`, `4xx` or `5xx`.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms .. ~80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The server's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: LatencyFamily,
    pub time_to_first_token_seconds: Histogram,
    pub prefill_seconds: Histogram,
    pub in_flight_requests: Gauge,
    pub running_sequences: Gauge,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("llmops_server");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let time_to_first_token_seconds = latency_histogram();
        let prefill_seconds = latency_histogram();
        let in_flight_requests = Gauge::default();
        let running_sequences = Gauge::default();
        let prompt_tokens = Counter::default();
        let generated_tokens = Counter::default();
        let ready = Gauge::default();
        registry.register(
            "requests",
            "API requests answered, by route and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the last byte of the answer, by route",
            request_seconds.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first generated text",
            time_to_first_token_seconds.clone(),
        );
        registry.register(
            "prefill_duration_seconds",
            "Time to run a prompt through the model",
            prefill_seconds.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Generation requests being answered (queued or decoding)",
            in_flight_requests.clone(),
        );
        registry.register(
            "running_sequences",
            "Sequences in the decoding batch",
            running_sequences.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            prompt_tokens.clone(),
        );
        registry.register(
            "generated_tokens",
            "Tokens generated",
            generated_tokens.clone(),
        );
        registry.register("ready", "1 once the model is loaded", ready.clone());
        Self {
            registry,
            requests,
            request_seconds,
            time_to_first_token_seconds,
            prefill_seconds,
            in_flight_requests,
            running_sequences,
            prompt_tokens,
            generated_tokens,
            ready,
        }
    }

    /// Counts one answered request.
    pub fn answered(&self, route: &'static str, status: u16) {
        let status = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
