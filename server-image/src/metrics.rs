//! Prometheus metrics served at `/metrics`: what the operator's autoscaler and
//! rollout analysis read (in-flight requests, queue depth, error rate, latency),
//! and what an operator of the server wants to see (tokens, batch size, KV-cache
//! use, time to first token, time per output token).
//!
//! Every series is prefixed `llmops_server_`; counters end in `_total`, and
//! durations are histograms in seconds.
//!
//! With [`Metrics::use_vllm_names`] (the hidden `--metrics-names vllm`, which
//! the local node's vLLM stand-in passes) `/metrics` shows the same figures
//! under the names and label shapes of vLLM's OpenAI server instead
//! ([`vllm_names`]), so that the operator's reading of vLLM pods is tested on a
//! server that really answers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod vllm_names;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `completions`, `chat_completions` or `models`.
    pub route: &'static str,
    /// HTTP status class of the response: `2xx`, `4xx` or `5xx`.
    pub status: &'static str,
}

/// One adapter version named in the adapters file.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdapterLabels {
    /// Its model name.
    pub adapter: String,
    /// The digest asked for (empty when none was given).
    pub digest: String,
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

fn token_interval_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The server's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: LatencyFamily,
    pub time_to_first_token_seconds: Histogram,
    /// Per request: (last token time - first token time) / (tokens - 1).
    pub time_per_output_token_seconds: Histogram,
    pub prefill_seconds: Histogram,
    pub in_flight_requests: Gauge,
    /// Prompts submitted to the engine and not yet taken into the running batch.
    pub queue_depth: Gauge,
    pub running_sequences: Gauge,
    /// Prompt plus generated tokens of the running sequences.
    pub kv_cache_tokens: Gauge,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub ready: Gauge,
    /// Per adapter version asked for: 1 once it serves, 0 while it loads or
    /// after it failed to.
    pub adapter_loaded: Family<AdapterLabels, Gauge>,
    /// The served model's name once `/metrics` uses vLLM's names.
    vllm_model_name: std::sync::OnceLock<String>,
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
        let time_per_output_token_seconds = token_interval_histogram();
        let prefill_seconds = latency_histogram();
        let in_flight_requests = Gauge::default();
        let queue_depth = Gauge::default();
        let running_sequences = Gauge::default();
        let kv_cache_tokens = Gauge::default();
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
            "time_per_output_token_seconds",
            "Mean time between the generated tokens of a request, observed once per request of two or more tokens",
            time_per_output_token_seconds.clone(),
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
            "queue_depth",
            "Prompts waiting for the decoding batch (submitted to the engine, not yet decoding)",
            queue_depth.clone(),
        );
        registry.register(
            "running_sequences",
            "Sequences in the decoding batch",
            running_sequences.clone(),
        );
        registry.register(
            "kv_cache_tokens",
            "Tokens held in the KV cache: prompt plus generated tokens of the running sequences",
            kv_cache_tokens.clone(),
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
        let adapter_loaded = Family::<AdapterLabels, Gauge>::default();
        registry.register(
            "adapter_loaded",
            "Per LoRA adapter (name, digest) in the adapters file: 1 once it serves, 0 while it loads or when it failed to",
            adapter_loaded.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            time_to_first_token_seconds,
            time_per_output_token_seconds,
            prefill_seconds,
            in_flight_requests,
            queue_depth,
            running_sequences,
            kv_cache_tokens,
            prompt_tokens,
            generated_tokens,
            ready,
            adapter_loaded,
            vllm_model_name: std::sync::OnceLock::new(),
        }
    }

    /// Render under vLLM's metric names from now on, labelled with
    /// `model_name` as vLLM labels its series.
    pub fn use_vllm_names(&self, model_name: &str) {
        let _ = self.vllm_model_name.set(model_name.to_string());
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

    /// The Prometheus text exposition (under vLLM's names after
    /// [`Metrics::use_vllm_names`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        match self.vllm_model_name.get() {
            Some(model) => vllm_names::render(&out, model),
            None => out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator's copy of a rendering, read by its autoscaler and rollout
    /// monitor tests.
    const OPERATOR_FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../operator/src/controller/deployment/testdata/server-metrics.txt"
    );

    /// A server with 3 requests in flight (2 decoding, 1 queued), 2 answered
    /// and 1 failed.
    fn busy() -> Metrics {
        let m = Metrics::new();
        m.answered("completions", 200);
        m.answered("completions", 200);
        m.answered("chat_completions", 500);
        for seconds in [0.07, 0.272] {
            m.request_seconds
                .get_or_create(&RouteLabels {
                    route: "completions",
                })
                .observe(seconds);
        }
        m.time_to_first_token_seconds.observe(0.012);
        m.time_per_output_token_seconds.observe(0.004);
        m.prefill_seconds.observe(0.006);
        m.in_flight_requests.set(3);
        m.queue_depth.set(1);
        m.running_sequences.set(2);
        m.kv_cache_tokens.set(52);
        m.prompt_tokens.inc_by(12);
        m.generated_tokens.inc_by(16);
        m.ready.set(1);
        let adapter = |name: &str, digest: &str| AdapterLabels {
            adapter: name.into(),
            digest: digest.into(),
        };
        m.adapter_loaded
            .get_or_create(&adapter("support", "sha256:5e"))
            .set(1);
        m.adapter_loaded
            .get_or_create(&adapter("legal", "sha256:1e"))
            .set(0);
        m
    }

    #[test]
    fn every_series_is_rendered_with_its_type() {
        let text = busy().render();
        for (name, kind) in [
            ("requests", "counter"),
            ("request_duration_seconds", "histogram"),
            ("time_to_first_token_seconds", "histogram"),
            ("time_per_output_token_seconds", "histogram"),
            ("prefill_duration_seconds", "histogram"),
            ("in_flight_requests", "gauge"),
            ("queue_depth", "gauge"),
            ("running_sequences", "gauge"),
            ("kv_cache_tokens", "gauge"),
            ("prompt_tokens", "counter"),
            ("generated_tokens", "counter"),
            ("ready", "gauge"),
            ("adapter_loaded", "gauge"),
        ] {
            let line = format!("# TYPE llmops_server_{name} {kind}\n");
            assert!(text.contains(&line), "{line}in\n{text}");
        }
        for sample in [
            "llmops_server_requests_total{route=\"completions\",status=\"2xx\"} 2\n",
            "llmops_server_queue_depth 1\n",
            "llmops_server_kv_cache_tokens 52\n",
            "llmops_server_generated_tokens_total 16\n",
            // 1 ms .. about 16 s between tokens.
            "llmops_server_time_per_output_token_seconds_bucket{le=\"0.001\"} 0\n",
            "llmops_server_time_per_output_token_seconds_bucket{le=\"0.004\"} 1\n",
            "llmops_server_time_per_output_token_seconds_bucket{le=\"16.384\"} 1\n",
            "llmops_server_time_per_output_token_seconds_count 1\n",
        ] {
            assert!(text.contains(sample), "{sample}in\n{text}");
        }
    }

    /// The lines of a rendering, sorted: the label sets of a family come out in
    /// no fixed order.
    fn lines(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        lines
    }

    /// Set `LLMOPS_BLESS=1` to rewrite the operator's copy after changing the
    /// metrics.
    #[test]
    fn the_operators_fixture_is_a_current_rendering() {
        let text = busy().render();
        if std::env::var_os("LLMOPS_BLESS").is_some() {
            std::fs::write(OPERATOR_FIXTURE, &text).unwrap();
        }
        let fixture = std::fs::read_to_string(OPERATOR_FIXTURE).unwrap();
        assert!(
            lines(&fixture) == lines(&text) && fixture.ends_with("# EOF\n"),
            "{OPERATOR_FIXTURE} is not what the server renders; rerun with LLMOPS_BLESS=1 to rewrite it:\n{text}"
        );
    }
}
