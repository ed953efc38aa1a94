//! vLLM's `/metrics` read into the figures the monitor keeps of the built-in
//! server ([`Reading`]), so that `status.metrics`, autoscaling and canary
//! analysis work the same on `spec.server.runtime: vllm`.
//!
//! | Reading | vLLM series |
//! |---|---|
//! | `ok`, `client_errors`, `server_errors` | `http_requests_total{status="2xx"/"4xx"/"5xx"}` of the generation routes (`/v1/completions`, `/v1/chat/completions`); without any, `vllm:request_success_total` with `finished_reason` `stop` or `length` as answered |
//! | `duration` | `vllm:e2e_request_latency_seconds` |
//! | `time_to_first_token` | `vllm:time_to_first_token_seconds` |
//! | `time_per_output_token` | `vllm:time_per_output_token_seconds` (`vllm:inter_token_latency_seconds` in later releases) |
//! | `generated_tokens` | `vllm:generation_tokens_total` |
//! | `in_flight` | `vllm:num_requests_running` + `vllm:num_requests_waiting` |
//! | `queue_depth` | `vllm:num_requests_waiting` |
//!
//! Every series is summed over its `engine` and `model_name` labels (a pod
//! with data-parallel engines reports one series per engine). The latency is
//! the engine's, from arrival to the last token, where the built-in server's
//! is the HTTP answer's; no adapters are read (vLLM pods serve none).

use super::exposition::{Buckets, Reading, Sample, buckets};

/// The series read, as vLLM and its HTTP instrumentation name them.
pub mod series {
    pub const RUNNING: &str = "vllm:num_requests_running";
    pub const WAITING: &str = "vllm:num_requests_waiting";
    pub const E2E_LATENCY: &str = "vllm:e2e_request_latency_seconds_bucket";
    pub const TIME_TO_FIRST_TOKEN: &str = "vllm:time_to_first_token_seconds_bucket";
    pub const TIME_PER_OUTPUT_TOKEN: &str = "vllm:time_per_output_token_seconds_bucket";
    pub const INTER_TOKEN_LATENCY: &str = "vllm:inter_token_latency_seconds_bucket";
    pub const GENERATION_TOKENS: &str = "vllm:generation_tokens_total";
    pub const REQUEST_SUCCESS: &str = "vllm:request_success_total";
    pub const HTTP_REQUESTS: &str = "http_requests_total";
}

/// The HTTP routes whose requests count as traffic.
const GENERATION_HANDLERS: [&str; 2] = ["/v1/completions", "/v1/chat/completions"];
/// The reasons a request finished with an answer (`abort` is not one).
const ANSWERED: [&str; 2] = ["stop", "length"];

/// Whether `samples` are a vLLM server's.
pub fn is_vllm(samples: &[Sample]) -> bool {
    samples.iter().any(|s| s.name == series::RUNNING)
}

/// The reading of a vLLM server's samples.
pub fn read(samples: &[Sample]) -> Reading {
    let total = |name: &str, keep: &dyn Fn(&Sample) -> bool| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == name && keep(s))
            .map(|s| s.value)
            .sum()
    };
    let label_in = |s: &Sample, key: &str, values: &[&str]| {
        s.labels
            .get(key)
            .is_some_and(|v| values.contains(&v.as_str()))
    };
    let http = |class: &str| {
        total(series::HTTP_REQUESTS, &|s| {
            label_in(s, "handler", &GENERATION_HANDLERS) && label_in(s, "status", &[class])
        })
    };
    let instrumented = samples.iter().any(|s| s.name == series::HTTP_REQUESTS);
    let (ok, client_errors, server_errors) = if instrumented {
        (http("2xx"), http("4xx"), http("5xx"))
    } else {
        let answered = total(series::REQUEST_SUCCESS, &|s| {
            label_in(s, "finished_reason", &ANSWERED)
        });
        (answered, 0.0, 0.0)
    };
    let running = total(series::RUNNING, &|_| true);
    let waiting = total(series::WAITING, &|_| true);
    let per_token = match buckets(samples, series::TIME_PER_OUTPUT_TOKEN) {
        Buckets(b) if b.is_empty() => buckets(samples, series::INTER_TOKEN_LATENCY),
        found => found,
    };
    Reading {
        ok,
        client_errors,
        server_errors,
        duration: buckets(samples, series::E2E_LATENCY),
        time_to_first_token: buckets(samples, series::TIME_TO_FIRST_TOKEN),
        time_per_output_token: per_token,
        generated_tokens: total(series::GENERATION_TOKENS, &|_| true),
        in_flight: running + waiting,
        queue_depth: waiting,
        adapters_loaded: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::exposition::{read as read_text, samples};
    use super::*;

    /// vLLM's exposition format and names; see its header for how it was made.
    const VLLM: &str = include_str!("../testdata/vllm-metrics.txt");

    #[test]
    fn vllms_metrics_read_into_the_servers_figures() {
        let r = read_text(VLLM).unwrap();
        // HTTP status classes of the generation routes; /v1/models is not traffic.
        assert_eq!((r.ok, r.client_errors, r.server_errors), (38.0, 1.0, 1.0));
        // Decoding plus waiting, and the waiting alone.
        assert_eq!((r.in_flight, r.queue_depth), (5.0, 2.0));
        assert_eq!(r.generated_tokens, 4864.0);
        assert_eq!(r.duration.count(), 38.0);
        assert_eq!(r.duration.0.first(), Some(&(0.3, 1.0)));
        assert_eq!(r.duration.0.get(3), Some(&(1.0, 24.0)));
        assert_eq!(r.duration.0.last(), Some(&(f64::INFINITY, 38.0)));
        // vLLM's own bounds, 22 and +Inf.
        assert_eq!(r.time_to_first_token.0.len(), 23);
        assert_eq!(r.time_to_first_token.0[3], (0.02, 4.0));
        assert_eq!(r.time_to_first_token.count(), 38.0);
        assert_eq!(r.time_per_output_token.0[1], (0.025, 22.0));
        assert_eq!(r.time_per_output_token.count(), 38.0);
        assert!(r.adapters_loaded.is_empty());
    }

    #[test]
    fn the_quantiles_of_vllms_latency_are_read_off_its_buckets() {
        use super::super::quantile::quantile;
        let r = read_text(VLLM).unwrap();
        // 24 of 38 within 1 s, 32 within 1.5 s: the median lies in (0.8, 1.0].
        let p50 = quantile(0.5, &r.duration).unwrap();
        assert!((p50 - 0.9).abs() < 1e-9, "{p50}");
        // 36 within 2 s, 37 within 2.5 s: rank 36.1 is a tenth into that bucket.
        let p95 = quantile(0.95, &r.duration).unwrap();
        assert!((p95 - 2.05).abs() < 1e-9, "{p95}");
    }

    #[test]
    fn engines_add_up_and_without_http_series_finished_requests_count() {
        let text = "\
vllm:num_requests_running{model_name=\"big\",engine=\"0\"} 2.0
vllm:num_requests_running{model_name=\"big\",engine=\"1\"} 1.0
vllm:num_requests_waiting{model_name=\"big\",engine=\"1\"} 4.0
vllm:request_success_total{model_name=\"big\",engine=\"0\",finished_reason=\"stop\"} 7.0
vllm:request_success_total{model_name=\"big\",engine=\"1\",finished_reason=\"length\"} 2.0
vllm:request_success_total{model_name=\"big\",engine=\"1\",finished_reason=\"abort\"} 3.0
vllm:inter_token_latency_seconds_bucket{model_name=\"big\",engine=\"0\",le=\"0.01\"} 5.0
vllm:inter_token_latency_seconds_bucket{model_name=\"big\",engine=\"0\",le=\"+Inf\"} 6.0
";
        let r = read(&samples(text).unwrap());
        assert_eq!((r.in_flight, r.queue_depth), (7.0, 4.0));
        assert_eq!((r.ok, r.client_errors, r.server_errors), (9.0, 0.0, 0.0));
        assert_eq!(
            r.time_per_output_token,
            Buckets(vec![(0.01, 5.0), (f64::INFINITY, 6.0)])
        );
    }
}
