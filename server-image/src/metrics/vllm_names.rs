//! The server's figures under vLLM's metric names (release 0.10, the V1
//! engine) and label shapes: what the operator's monitor reads from a vLLM pod
//! (`operator/src/controller/deployment/monitor/vllm.rs`). It renames the
//! server's own rendering, so both always show the same figures:
//!
//! | vLLM series | from |
//! |---|---|
//! | `vllm:num_requests_running` | `running_sequences` |
//! | `vllm:num_requests_waiting` | `queue_depth` |
//! | `vllm:e2e_request_latency_seconds` | `request_duration_seconds` of the two generation routes, added up |
//! | `vllm:time_to_first_token_seconds` | `time_to_first_token_seconds` |
//! | `vllm:time_per_output_token_seconds` | `time_per_output_token_seconds` |
//! | `vllm:prompt_tokens_total`, `vllm:generation_tokens_total` | `prompt_tokens`, `generated_tokens` |
//! | `vllm:request_success_total{finished_reason="stop"}` | 2xx answers of the generation routes |
//! | `http_requests_total{handler,method,status}` | `requests` by route and status class |
//!
//! The engine series carry `model_name` and `engine="0"` (one engine, as a pod
//! without data parallelism). The server counts no finish reasons, so every
//! answered generation request is counted as `stop`. The histograms keep the
//! server's buckets, not vLLM's: the monitor reads any bounds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Server route → vLLM's HTTP handler and method.
const HANDLERS: [(&str, &str, &str); 3] = [
    ("completions", "/v1/completions", "POST"),
    ("chat_completions", "/v1/chat/completions", "POST"),
    ("models", "/v1/models", "GET"),
];
/// The routes whose requests vLLM's engine sees.
const GENERATION: [&str; 2] = ["completions", "chat_completions"];

/// One sample of the server's rendering.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: f64,
}

impl Sample<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// `name{k="v",...} value`; `None` for comments and lines it cannot read.
fn sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            let labels = body
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect::<Option<Vec<_>>>()?;
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `text` (the server's rendering) under vLLM's names, for `model`.
pub(super) fn render(text: &str, model: &str) -> String {
    let samples: Vec<Sample> = text.lines().filter_map(sample).collect();
    let value = |name: &str| {
        samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum::<f64>()
    };
    let engine = format!("model_name=\"{model}\",engine=\"0\"");
    let mut out = String::new();
    let scalar = |out: &mut String, name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{{{engine}}} {value:?}");
    };
    scalar(
        &mut out,
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        value("llmops_server_running_sequences"),
    );
    scalar(
        &mut out,
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        value("llmops_server_queue_depth"),
    );
    scalar(
        &mut out,
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        value("llmops_server_prompt_tokens_total"),
    );
    scalar(
        &mut out,
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        value("llmops_server_generated_tokens_total"),
    );
    let requests = |route: &str, status: &str| {
        samples
            .iter()
            .filter(|s| {
                s.name == "llmops_server_requests_total"
                    && s.label("route") == Some(route)
                    && s.label("status") == Some(status)
            })
            .map(|s| s.value)
            .sum::<f64>()
    };
    let answered: f64 = GENERATION.iter().map(|r| requests(r, "2xx")).sum();
    let _ = writeln!(
        out,
        "# HELP vllm:request_success_total Count of successfully processed requests.\n# TYPE vllm:request_success_total counter"
    );
    let _ = writeln!(
        out,
        "vllm:request_success_total{{{engine},finished_reason=\"stop\"}} {answered:?}"
    );
    for (name, from, help, routes) in [
        (
            "vllm:e2e_request_latency_seconds",
            "llmops_server_request_duration_seconds",
            "Histogram of e2e request latency in seconds.",
            &GENERATION[..],
        ),
        (
            "vllm:time_to_first_token_seconds",
            "llmops_server_time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            &[][..],
        ),
        (
            "vllm:time_per_output_token_seconds",
            "llmops_server_time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            &[][..],
        ),
    ] {
        histogram(&mut out, &samples, name, from, help, routes, &engine);
    }
    let _ = writeln!(
        out,
        "# HELP http_requests_total Total number of requests by method, status and handler.\n# TYPE http_requests_total counter"
    );
    for s in samples
        .iter()
        .filter(|s| s.name == "llmops_server_requests_total")
    {
        let (Some(route), Some(status)) = (s.label("route"), s.label("status")) else {
            continue;
        };
        if let Some((_, handler, method)) = HANDLERS.iter().find(|(r, _, _)| *r == route) {
            let _ = writeln!(
                out,
                "http_requests_total{{handler=\"{handler}\",method=\"{method}\",status=\"{status}\"}} {:?}",
                s.value
            );
        }
    }
    out
}

/// The histogram `from` as `name`: its series of `routes` added up bucket by
/// bucket (every series when `routes` is empty).
fn histogram(
    out: &mut String,
    samples: &[Sample],
    name: &str,
    from: &str,
    help: &str,
    routes: &[&str],
    engine: &str,
) {
    let mine =
        |s: &&Sample| routes.is_empty() || s.label("route").is_some_and(|r| routes.contains(&r));
    // Bucket bounds sort as numbers; `+Inf` last.
    let mut buckets: BTreeMap<(u64, String), f64> = BTreeMap::new();
    let bucket = format!("{from}_bucket");
    for s in samples.iter().filter(|s| s.name == bucket).filter(mine) {
        let Some(le) = s.label("le") else { continue };
        let bound: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        *buckets
            .entry((bound.to_bits(), le.to_string()))
            .or_default() += s.value;
    }
    let total = |suffix: &str| {
        let series = format!("{from}_{suffix}");
        samples
            .iter()
            .filter(|s| s.name == series)
            .filter(mine)
            .map(|s| s.value)
            .sum::<f64>()
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for ((_, le), count) in &buckets {
        let le = if le == "+Inf" {
            "+Inf".to_string()
        } else {
            format!("{:?}", le.parse::<f64>().unwrap_or_default())
        };
        let _ = writeln!(out, "{name}_bucket{{{engine},le=\"{le}\"}} {count:?}");
    }
    let _ = writeln!(out, "{name}_count{{{engine}}} {:?}", total("count"));
    let _ = writeln!(out, "{name}_sum{{{engine}}} {:?}", total("sum"));
}

#[cfg(test)]
mod tests {
    use super::super::{Metrics, RouteLabels};

    #[test]
    fn the_figures_come_out_under_vllms_names_and_labels() {
        let m = Metrics::new();
        m.use_vllm_names("big");
        m.answered("completions", 200);
        m.answered("completions", 200);
        m.answered("chat_completions", 200);
        m.answered("chat_completions", 401);
        m.answered("models", 200);
        for (route, seconds) in [("completions", 0.07), ("chat_completions", 0.3)] {
            m.request_seconds
                .get_or_create(&RouteLabels { route })
                .observe(seconds);
        }
        m.time_to_first_token_seconds.observe(0.012);
        m.time_per_output_token_seconds.observe(0.004);
        m.running_sequences.set(2);
        m.queue_depth.set(1);
        m.generated_tokens.inc_by(16);
        let text = m.render();
        for line in [
            "vllm:num_requests_running{model_name=\"big\",engine=\"0\"} 2.0",
            "vllm:num_requests_waiting{model_name=\"big\",engine=\"0\"} 1.0",
            "vllm:generation_tokens_total{model_name=\"big\",engine=\"0\"} 16.0",
            "vllm:request_success_total{model_name=\"big\",engine=\"0\",finished_reason=\"stop\"} 3.0",
            // Both generation routes in one histogram, sorted by bound.
            "vllm:e2e_request_latency_seconds_bucket{model_name=\"big\",engine=\"0\",le=\"0.08\"} 1.0",
            "vllm:e2e_request_latency_seconds_bucket{model_name=\"big\",engine=\"0\",le=\"0.32\"} 2.0",
            "vllm:e2e_request_latency_seconds_bucket{model_name=\"big\",engine=\"0\",le=\"+Inf\"} 2.0",
            "vllm:e2e_request_latency_seconds_count{model_name=\"big\",engine=\"0\"} 2.0",
            "vllm:time_to_first_token_seconds_bucket{model_name=\"big\",engine=\"0\",le=\"0.02\"} 1.0",
            "vllm:time_per_output_token_seconds_count{model_name=\"big\",engine=\"0\"} 1.0",
            "http_requests_total{handler=\"/v1/completions\",method=\"POST\",status=\"2xx\"} 2.0",
            "http_requests_total{handler=\"/v1/chat/completions\",method=\"POST\",status=\"4xx\"} 1.0",
            "http_requests_total{handler=\"/v1/models\",method=\"GET\",status=\"2xx\"} 1.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\nnot in\n{text}");
        }
        assert!(!text.contains("llmops_server_"), "{text}");
        let bounds: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("vllm:e2e_request_latency_seconds_bucket"))
            .map(|l| {
                let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                }
            })
            .collect();
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
    }

    #[test]
    fn without_the_switch_the_servers_own_names() {
        let text = Metrics::new().render();
        assert!(text.contains("llmops_server_running_sequences"));
        assert!(!text.contains("vllm:"));
    }
}
