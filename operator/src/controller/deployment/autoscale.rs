//! Autoscale: the replica count of a ModelDeployment whose `replicas.max`
//! exceeds `replicas.min`, read from the servers' own metrics.
//!
//! Every pass (at least every [`INTERVAL`] while autoscaling is active) reads
//! `GET http://<podIP>:8000/metrics` of each ready serving pod, sums the
//! per-pod signal and wants `ceil(total / target)` replicas within
//! `[max(replicas.min, 1), replicas.max]`:
//! - a scale-up happens at once;
//! - a scale-down happens only once the last scale (`status.lastScaleTime`) is
//!   older than `autoscaling.stabilizationWindow`, and only when every ready pod
//!   answered;
//! - without metrics (no ready pod, or none answered) the Deployment keeps its
//!   replica count, brought into the range if the spec moved it;
//! - only `inFlightRequests` is exported by the server
//!   (`llmops_server_in_flight_requests`); `queueDepth` and `tokensPerSecond`
//!   are not, so a deployment asking for them runs `replicas.min` and its Ready
//!   message says why;
//! - scale to zero (`scaleToZeroAfter`) is not active: the floor is one replica.
//!
//! Parsing and deciding are pure; [`plan`] does the reading.

use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use llmops_crds::ModelDeployment;
use llmops_crds::deployment::ScalingMetric;

use super::Error;
use super::build::{SERVER_PORT, deployment_name, pod_selector};

/// How often an autoscaled ModelDeployment reads its pods' metrics.
pub const INTERVAL: Duration = Duration::from_secs(15);
/// How long one pod's `/metrics` may take to answer.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the spec asks for a range of replicas.
pub fn active(md: &ModelDeployment) -> bool {
    md.spec.replicas.max > md.spec.replicas.min
}

/// The fewest replicas: `replicas.min`, at least one (scale to zero is not in
/// this version).
pub fn floor(md: &ModelDeployment) -> i32 {
    md.spec.replicas.min.max(1)
}

/// A load signal the server exports: the series and how messages name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub series: &'static str,
    pub unit: &'static str,
}

/// The series the server exports for `metric`; none for a metric it does not
/// export.
pub fn signal(metric: ScalingMetric) -> Option<Signal> {
    match metric {
        ScalingMetric::InFlightRequests => Some(Signal {
            series: "llmops_server_in_flight_requests",
            unit: "in-flight requests",
        }),
        ScalingMetric::QueueDepth | ScalingMetric::TokensPerSecond => None,
    }
}

/// `autoscaling.metric` as the spec spells it.
pub fn metric_name(metric: ScalingMetric) -> &'static str {
    match metric {
        ScalingMetric::InFlightRequests => "inFlightRequests",
        ScalingMetric::QueueDepth => "queueDepth",
        ScalingMetric::TokensPerSecond => "tokensPerSecond",
    }
}

/// Why a metrics text gave no value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no {0} sample")]
    Missing(String),
    #[error("{series}: {value:?} is not a finite number")]
    NotANumber { series: String, value: String },
}

/// The value of the gauge `series` in a Prometheus/OpenMetrics text, summed over
/// its label sets (the server's gauges have none).
pub fn parse_gauge(text: &str, series: &str) -> Result<f64, ParseError> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(series) else {
            continue;
        };
        let rest = if let Some(labels) = rest.strip_prefix('{') {
            match labels.find('}') {
                Some(end) => &labels[end + 1..],
                None => continue,
            }
        } else if rest.starts_with(char::is_whitespace) {
            rest
        } else {
            // A longer name sharing the prefix.
            continue;
        };
        let value = rest.split_whitespace().next().unwrap_or_default();
        let parsed: f64 = value
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| ParseError::NotANumber {
                series: series.into(),
                value: value.into(),
            })?;
        *total.get_or_insert(0.0) += parsed;
    }
    total.ok_or_else(|| ParseError::Missing(series.into()))
}

/// A duration as the CRD spells it: `5m`, `1h30m`, `10.5s`, `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (seconds, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        total += number * seconds;
        rest = &rest[len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The signal summed over the pods that answered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    pub total: f64,
    /// Ready pods that answered.
    pub scraped: usize,
    /// Ready pods that did not (unreachable, timed out, unreadable text).
    pub skipped: usize,
}

/// What the spec asks of the autoscaler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub unit: &'static str,
    pub target: f64,
    pub min: i32,
    pub max: i32,
    pub window: Duration,
}

/// The replica count to run, and why it changed or why a change waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub replicas: i32,
    /// The reason, when `replicas` differs from the current count.
    pub change: Option<String>,
    /// Why a scale-down the load asks for does not happen yet.
    pub held: Option<String>,
}

/// A number for messages: at most two decimals.
fn number(x: f64) -> String {
    format!("{}", (x * 100.0).round() / 100.0)
}

/// The replicas for `load` (none: no pod answered) with `current` replicas
/// running, `since_last_scale` after the last scale (none: never scaled).
pub fn decide(
    load: Option<&Load>,
    current: i32,
    policy: &Policy,
    since_last_scale: Option<Duration>,
) -> Decision {
    let (min, max) = (policy.min, policy.max.max(policy.min));
    let unchanged = Decision {
        replicas: current,
        change: None,
        held: None,
    };
    let bounded = current.clamp(min, max);
    let spec_bound = |to: i32| Decision {
        replicas: to,
        change: Some(if to > current {
            format!("replicas.min is {min}: {current} → {to}")
        } else {
            format!("replicas.max is {max}: {current} → {to}")
        }),
        held: None,
    };
    let Some(load) = load.filter(|l| l.scraped > 0 && l.total.is_finite() && l.total >= 0.0) else {
        // Never scale on missing data; only the spec's bounds move the count.
        return if bounded == current {
            unchanged
        } else {
            spec_bound(bounded)
        };
    };
    let needed = (load.total / policy.target).ceil();
    // Clamped as a float first, so the cast cannot overflow.
    let wanted = needed.clamp(f64::from(min), f64::from(max)) as i32;
    if wanted == current {
        return unchanged;
    }
    let per_replica = number(load.total / f64::from(current.max(1)));
    let target = number(policy.target);
    let unit = policy.unit;
    if wanted > current {
        if needed <= f64::from(current) {
            return spec_bound(wanted);
        }
        let capped = if needed > f64::from(max) {
            " (replicas.max)"
        } else {
            ""
        };
        return Decision {
            replicas: wanted,
            change: Some(format!(
                "{per_replica} {unit} per replica > target {target}: {current} → {wanted}{capped}"
            )),
            held: None,
        };
    }
    if needed >= f64::from(current) {
        return spec_bound(wanted);
    }
    if load.skipped > 0 {
        return Decision {
            held: Some(format!(
                "scale-down to {wanted} waits until every ready pod's metrics answer"
            )),
            ..unchanged
        };
    }
    if since_last_scale.is_some_and(|since| since < policy.window) {
        return Decision {
            held: Some(format!(
                "scale-down to {wanted} held by the stabilization window ({}s since the last scale, window {}s)",
                since_last_scale.unwrap_or_default().as_secs(),
                policy.window.as_secs()
            )),
            ..unchanged
        };
    }
    let floored = if needed < f64::from(min) {
        " (replicas.min)"
    } else {
        ""
    };
    Decision {
        replicas: wanted,
        change: Some(format!(
            "{per_replica} {unit} per replica < target {target}: {current} → {wanted}{floored}"
        )),
        held: None,
    }
}

/// What a pass runs: the replica count, the note for the Ready message, and the
/// reason when the count changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub replicas: i32,
    pub note: String,
    pub change: Option<String>,
    /// Whether to look again after [`INTERVAL`].
    pub recheck: bool,
}

/// The note of a ModelDeployment whose range is not being acted on this pass
/// (fixed replicas, an unsupported metric, or a pass that applies nothing).
pub fn idle_note(md: &ModelDeployment) -> Option<String> {
    if !active(md) {
        return None;
    }
    let metric = md.spec.autoscaling.metric;
    Some(match signal(metric) {
        None => unsupported_note(md),
        Some(_) => format!(
            "autoscaling on {} resumes once the spec can be applied",
            metric_name(metric)
        ),
    })
}

fn unsupported_note(md: &ModelDeployment) -> String {
    format!(
        "autoscaling on {} is not active: the server does not export it (fixed at replicas.min, {})",
        metric_name(md.spec.autoscaling.metric),
        floor(md)
    )
}

/// Whether a pod is ready to serve and has an address.
fn ready_ip(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ready.then(|| status.pod_ip.clone()).flatten()
}

fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(SCRAPE_TIMEOUT)
            .connect_timeout(SCRAPE_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap_or_default()
    })
}

/// One pod's signal, or why it gave none.
async fn scrape(ip: &str, series: &str) -> anyhow::Result<f64> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let text = http()
        .get(format!("http://{host}:{SERVER_PORT}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse_gauge(&text, series)?)
}

/// Read the ready pods' metrics and decide the replica count of an autoscaled
/// ModelDeployment.
pub async fn plan(md: &ModelDeployment, client: &Client) -> Result<Plan, Error> {
    let spec = &md.spec.autoscaling;
    let Some(signal) = signal(spec.metric) else {
        return Ok(Plan {
            replicas: floor(md),
            note: unsupported_note(md),
            change: None,
            recheck: false,
        });
    };
    let namespace = md.namespace().unwrap_or_default();
    let (min, max) = (floor(md), md.spec.replicas.max);
    let metric = metric_name(spec.metric);
    let target = number(spec.target);
    let head =
        format!("autoscaling on {metric} (target {target} per replica, {min}-{max} replicas)");
    let name = deployment_name(&md.name_any());
    let live = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get_opt(&name)
        .await
        .map_err(|source| Error::ReadDeployment { name, source })?;
    let Some(current) = live.map(|d| d.spec.and_then(|s| s.replicas).unwrap_or(1)) else {
        return Ok(Plan {
            replicas: min,
            note: format!("{head}: starting at {min}"),
            change: None,
            recheck: true,
        });
    };

    let selector = pod_selector(md)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::ListPods)?;
    let ips: Vec<String> = pods.items.iter().filter_map(ready_ip).collect();
    let answers = join_all(ips.iter().map(|ip| scrape(ip, signal.series))).await;
    let mut load = Load {
        total: 0.0,
        scraped: 0,
        skipped: 0,
    };
    for (ip, answer) in ips.iter().zip(answers) {
        match answer {
            Ok(value) => {
                load.total += value;
                load.scraped += 1;
            }
            Err(err) => {
                tracing::debug!(pod_ip = %ip, error = %err, "no metrics from a serving pod");
                load.skipped += 1;
            }
        }
    }

    let window = parse_duration(&spec.stabilization_window).unwrap_or(Duration::from_secs(300));
    let since_last_scale = md
        .status
        .as_ref()
        .and_then(|s| s.last_scale_time.as_ref())
        .map(|t| {
            let now = k8s_openapi::jiff::Timestamp::now();
            let seconds = now.as_second().saturating_sub(t.0.as_second()).max(0);
            Duration::from_secs(seconds.unsigned_abs())
        });
    let policy = Policy {
        unit: signal.unit,
        target: spec.target,
        min,
        max,
        window,
    };
    let decision = decide(
        (load.scraped > 0).then_some(&load),
        current,
        &policy,
        since_last_scale,
    );
    let mut note = head;
    if ips.is_empty() {
        note.push_str(&format!(
            ": metrics unavailable (no ready pod); running {} replica(s)",
            decision.replicas
        ));
    } else if load.scraped == 0 {
        note.push_str(&format!(
            ": metrics unavailable (0 of {} ready pod(s) answered); running {} replica(s)",
            ips.len(),
            decision.replicas
        ));
    } else if load.skipped > 0 {
        note.push_str(&format!(
            "; metrics of {} of {} ready pod(s) unavailable",
            load.skipped,
            ips.len()
        ));
    }
    if let Some(held) = &decision.held {
        note.push_str(&format!("; {held}"));
    }
    Ok(Plan {
        replicas: decision.replicas,
        note,
        change: decision.change,
        recheck: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Metrics::render` of a server with 3 requests in flight, 3 answered.
    const RENDERED: &str = include_str!("testdata/server-metrics.txt");
    const IN_FLIGHT: &str = "llmops_server_in_flight_requests";

    fn policy(min: i32, max: i32) -> Policy {
        Policy {
            unit: "in-flight requests",
            target: 2.0,
            min,
            max,
            window: Duration::from_secs(300),
        }
    }

    fn load(total: f64, scraped: usize) -> Load {
        Load {
            total,
            scraped,
            skipped: 0,
        }
    }

    #[test]
    fn the_in_flight_gauge_is_read_from_the_servers_text() {
        assert_eq!(parse_gauge(RENDERED, IN_FLIGHT), Ok(3.0));
        // Not confused with a longer name sharing the prefix, nor with comments.
        assert_eq!(parse_gauge(RENDERED, "llmops_server_ready"), Ok(1.0));
        assert_eq!(
            parse_gauge(
                "llmops_server_in_flight_requests_x 9\nllmops_server_in_flight_requests 0\n",
                IN_FLIGHT
            ),
            Ok(0.0)
        );
        assert_eq!(
            parse_gauge("g{pod=\"a\"} 1\ng{pod=\"b\"} 2.5\n", "g"),
            Ok(3.5)
        );
    }

    #[test]
    fn a_text_without_the_gauge_or_with_garbage_is_an_error() {
        assert_eq!(
            parse_gauge("# HELP x\n# EOF\n", IN_FLIGHT),
            Err(ParseError::Missing(IN_FLIGHT.into()))
        );
        assert!(matches!(
            parse_gauge("llmops_server_in_flight_requests NaN\n", IN_FLIGHT),
            Err(ParseError::NotANumber { .. })
        ));
        assert!(parse_gauge("<html>oops</html>", IN_FLIGHT).is_err());
    }

    #[test]
    fn durations_parse_as_the_crd_spells_them() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn only_in_flight_requests_is_exported() {
        assert!(signal(ScalingMetric::InFlightRequests).is_some());
        assert!(signal(ScalingMetric::QueueDepth).is_none());
        assert!(signal(ScalingMetric::TokensPerSecond).is_none());
    }

    #[test]
    fn load_above_target_scales_up_at_once() {
        let d = decide(
            Some(&load(6.0, 2)),
            2,
            &policy(1, 8),
            Some(Duration::from_secs(1)),
        );
        assert_eq!(d.replicas, 3);
        assert_eq!(
            d.change.as_deref(),
            Some("3 in-flight requests per replica > target 2: 2 → 3")
        );
    }

    #[test]
    fn a_scale_up_stops_at_max() {
        let d = decide(Some(&load(100.0, 2)), 2, &policy(1, 4), None);
        assert_eq!(d.replicas, 4);
        assert_eq!(
            d.change.as_deref(),
            Some("50 in-flight requests per replica > target 2: 2 → 4 (replicas.max)")
        );
        let at_max = decide(Some(&load(100.0, 4)), 4, &policy(1, 4), None);
        assert_eq!(at_max.replicas, 4);
        assert_eq!(at_max.change, None);
    }

    #[test]
    fn no_load_scales_down_to_min_once_the_window_passed() {
        let d = decide(
            Some(&load(0.0, 3)),
            3,
            &policy(2, 4),
            Some(Duration::from_secs(301)),
        );
        assert_eq!(d.replicas, 2);
        assert_eq!(
            d.change.as_deref(),
            Some("0 in-flight requests per replica < target 2: 3 → 2 (replicas.min)")
        );
        let never_scaled = decide(Some(&load(1.0, 3)), 3, &policy(1, 4), None);
        assert_eq!(never_scaled.replicas, 1);
    }

    #[test]
    fn a_scale_down_waits_for_the_stabilization_window() {
        let d = decide(
            Some(&load(1.0, 3)),
            3,
            &policy(1, 4),
            Some(Duration::from_secs(60)),
        );
        assert_eq!(d.replicas, 3);
        assert_eq!(d.change, None);
        assert!(d.held.unwrap().contains("stabilization window"));
    }

    #[test]
    fn a_scale_down_waits_for_every_ready_pod() {
        let partial = Load {
            total: 0.0,
            scraped: 1,
            skipped: 1,
        };
        let d = decide(Some(&partial), 2, &policy(1, 4), None);
        assert_eq!((d.replicas, d.change), (2, None));
        assert!(d.held.is_some());
        // A scale-up on partial data still goes.
        let busy = Load {
            total: 9.0,
            ..partial
        };
        assert_eq!(decide(Some(&busy), 2, &policy(1, 8), None).replicas, 5);
    }

    #[test]
    fn no_data_keeps_the_count() {
        let none = decide(None, 3, &policy(1, 4), None);
        assert_eq!(
            none,
            Decision {
                replicas: 3,
                change: None,
                held: None
            }
        );
        let nobody_answered = decide(Some(&load(0.0, 0)), 3, &policy(1, 4), None);
        assert_eq!(
            (nobody_answered.replicas, nobody_answered.change),
            (3, None)
        );
    }

    #[test]
    fn the_spec_bounds_move_the_count_even_without_data() {
        let raised = decide(None, 1, &policy(2, 4), None);
        assert_eq!(raised.replicas, 2);
        assert_eq!(raised.change.as_deref(), Some("replicas.min is 2: 1 → 2"));
        let lowered = decide(Some(&load(20.0, 6)), 6, &policy(1, 4), None);
        assert_eq!(lowered.replicas, 4);
        assert_eq!(lowered.change.as_deref(), Some("replicas.max is 4: 6 → 4"));
    }

    #[test]
    fn load_at_target_keeps_the_count() {
        let d = decide(Some(&load(4.0, 2)), 2, &policy(1, 4), None);
        assert_eq!((d.replicas, d.change, d.held), (2, None, None));
    }
}
