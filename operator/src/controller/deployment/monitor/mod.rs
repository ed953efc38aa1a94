//! Monitoring: what the serving pods say about themselves, kept in memory and
//! summarised over a window.
//!
//! Every reconcile of a ModelDeployment that is due (at most once per
//! [`Monitoring::interval`], 15 s by default) reads `GET /metrics` of each ready
//! serving pod at the address the API gives (`status.podIP`), keeps the samples
//! per pod in memory ([`window::History`]), and summarises the last
//! [`Monitoring::window`] (1 min by default) per revision (the stable pods, and
//! a canary's): requests/s, 5xx share (4xx apart), p50/p95 latency, p95 time to
//! first token, time per output token, tokens/s, in flight and queue depth.
//! Those figures feed the autoscaler, a canary's analysis and `status.metrics`.
//!
//! `status.metrics` is rewritten at most once per
//! [`Monitoring::status_interval`] (30 s by default) and only when a figure
//! changed at its display precision, so a busy deployment does not write its
//! status on every scrape. The histories live in the operator's memory: after a
//! restart (or a leader change) they start again, and the autoscaler holds
//! scale-downs until it has a whole stabilization window of recommendations.

pub mod exposition;
pub mod gateway;
pub mod quantile;
pub mod vllm;
pub mod window;

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use llmops_crds::ModelDeployment;
use llmops_crds::deployment::ServingMetrics;

use super::Error;
use super::build::{REVISION_LABEL, Revision, SERVER_PORT, pod_selector};
pub use window::Summary;

/// The stable revision's name in the histories.
pub const STABLE: &str = Revision::Stable.label();
/// A canary's pods carry `llmops.dev/revision: canary`.
pub const CANARY: &str = Revision::Canary.label();

/// How often and over what window the serving pods are monitored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Monitoring {
    /// Between two scrapes of a ModelDeployment's pods.
    pub interval: Duration,
    /// What the figures summarise.
    pub window: Duration,
    /// Least time between two writes of `status.metrics`.
    pub status_interval: Duration,
    /// How long one pod's `/metrics` may take.
    pub scrape_timeout: Duration,
}

impl Default for Monitoring {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            window: Duration::from_secs(60),
            status_interval: Duration::from_secs(30),
            scrape_timeout: Duration::from_secs(2),
        }
    }
}

/// Seconds on a monotonic clock shared by every history.
pub fn now() -> f64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// What the operator remembers of one ModelDeployment between passes.
#[derive(Debug, Default)]
pub struct Memory {
    pub history: window::History,
    /// The autoscaler's recommendations (time, replicas), newest last.
    pub recommendations: VecDeque<(f64, i32)>,
    /// When `status.metrics` was last written.
    pub metrics_written: Option<f64>,
    /// What scale to zero remembers.
    pub idle: super::zero::IdleClock,
    /// Whether the last pass left the deployment at zero replicas (the wake
    /// loop looks for requests held at the gateway only for those).
    pub at_zero: bool,
}

/// Every ModelDeployment's [`Memory`], by `namespace/name`, and the last
/// reading of the gateway.
#[derive(Debug, Default)]
pub struct Monitor {
    memory: Mutex<HashMap<String, Memory>>,
    pub gateway: gateway::Cache,
}

impl Monitor {
    /// Runs `f` on the memory of `md` (created empty on first use).
    pub fn with<T>(&self, md: &ModelDeployment, f: impl FnOnce(&mut Memory) -> T) -> T {
        let key = format!("{}/{}", md.namespace().unwrap_or_default(), md.name_any());
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        f(memory.entry(key).or_default())
    }

    /// Whether the last pass over ModelDeployment `namespace/name` left it at
    /// zero replicas.
    pub fn at_zero(&self, namespace: &str, name: &str) -> bool {
        let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory
            .get(&format!("{namespace}/{name}"))
            .is_some_and(|m| m.at_zero)
    }

    /// Forgets a ModelDeployment that no longer exists.
    pub fn forget(&self, md: &ModelDeployment) {
        let key = format!("{}/{}", md.namespace().unwrap_or_default(), md.name_any());
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

/// What one monitoring pass found: the window's figures per revision, and how
/// many ready pods answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub stable: Summary,
    pub canary: Summary,
    /// Ready pods at the last scrape, and how many of them answered.
    pub ready: usize,
    pub answered: usize,
}

/// Scrapes the ready serving pods of `md` when a scrape is due, records the
/// readings, and summarises the window.
pub async fn observe(
    md: &ModelDeployment,
    client: &Client,
    monitor: &Monitor,
    settings: &Monitoring,
) -> Result<Observation, Error> {
    let t = now();
    let due = monitor.with(md, |m| {
        m.history
            .last_scrape
            .is_none_or(|last| t - last >= settings.interval.as_secs_f64() * 0.9)
    });
    let ready = if due {
        let pods = serving_pods(md, client).await?;
        let targets: Vec<Target> = pods
            .iter()
            .filter_map(|pod| {
                let url = metrics_url(pod)?;
                let revision = pod
                    .labels()
                    .get(REVISION_LABEL)
                    .cloned()
                    .unwrap_or_else(|| STABLE.to_string());
                Some((pod.name_any(), revision, url))
            })
            .collect();
        let readings = scrape_all(&targets, settings.scrape_timeout).await;
        let keep = settings.window.as_secs_f64() + settings.interval.as_secs_f64() * 2.0;
        monitor.with(md, |m| {
            m.history.record(t, readings, keep);
            m.history.ready = targets.len();
        });
        targets.len()
    } else {
        monitor.with(md, |m| m.history.ready)
    };
    let window = settings.window.as_secs_f64();
    Ok(monitor.with(md, |m| Observation {
        stable: m.history.summary(STABLE, t, window),
        canary: m.history.summary(CANARY, t, window),
        ready,
        answered: m.history.answered.len(),
    }))
}

/// A scrape target: pod name, revision, metrics URL.
pub type Target = (String, String, String);

/// Reads every target's metrics at once; those that do not answer (or answer
/// something unreadable) are left out.
pub async fn scrape_all(
    targets: &[Target],
    timeout: Duration,
) -> Vec<(String, String, exposition::Reading)> {
    let answers = join_all(targets.iter().map(|(_, _, url)| scrape(url, timeout))).await;
    let mut readings = Vec::new();
    for ((pod, revision, url), answer) in targets.iter().zip(answers) {
        match answer {
            Ok(reading) => readings.push((pod.clone(), revision.clone(), reading)),
            Err(err) => tracing::debug!(%url, error = %err, "no metrics from a serving pod"),
        }
    }
    readings
}

/// The pods of `md` (stable and canary).
async fn serving_pods(md: &ModelDeployment, client: &Client) -> Result<Vec<Pod>, Error> {
    let selector = pod_selector(md)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), &md.namespace().unwrap_or_default())
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::ListPods)?;
    Ok(pods.items)
}

fn http(timeout: Duration) -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()
            .unwrap_or_default()
    })
}

/// One pod's reading, or why it gave none.
async fn scrape(url: &str, timeout: Duration) -> anyhow::Result<exposition::Reading> {
    let text = http(timeout)
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(exposition::read(&text)?)
}

/// Rounds `x` to `digits` decimals (the precision status shows).
fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// The status figures of `summary` at their display precision; none before
/// any pod has been scraped twice.
pub fn serving_metrics(summary: &Summary, window: Duration) -> Option<ServingMetrics> {
    let rps = summary.requests_per_second?;
    let ms = |seconds: Option<f64>| round(seconds.unwrap_or(0.0) * 1000.0, 1);
    Some(ServingMetrics {
        requests_per_second: round(rps, 2),
        p50_latency_ms: ms(summary.p50_latency),
        p95_latency_ms: ms(summary.p95_latency),
        p95_time_to_first_token_ms: ms(summary.p95_time_to_first_token),
        time_per_output_token_ms: ms(summary.p50_time_per_output_token),
        tokens_per_second: round(summary.tokens_per_second.unwrap_or(0.0), 1),
        error_rate: round(summary.error_rate.unwrap_or(0.0), 4),
        client_error_rate: round(summary.client_error_rate.unwrap_or(0.0), 4),
        in_flight: summary.in_flight.round() as i64,
        queue_depth: summary.queue_depth.round() as i64,
        pods: summary.pods as i32,
        window_seconds: window.as_secs() as i64,
    })
}

/// The `status.metrics` to write now, or none to keep what status says: a
/// change is written at most once per `every` (`last`: the last write), and
/// only when a figure differs at display precision.
pub fn metrics_to_write(
    current: Option<&ServingMetrics>,
    fresh: Option<ServingMetrics>,
    now: f64,
    last: Option<f64>,
    every: Duration,
) -> Option<ServingMetrics> {
    let fresh = fresh?;
    if current == Some(&fresh) {
        return None;
    }
    if current.is_some() && last.is_some_and(|t| now - t < every.as_secs_f64()) {
        return None;
    }
    Some(fresh)
}

/// Where to read a serving pod's metrics: `http://<status.podIP>:<port>/metrics`
/// of a pod that is Ready and not terminating, else none. The address is only
/// ever the one the API gives; the operator holds no address ranges of its own.
pub fn metrics_url(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip: std::net::IpAddr = status.pod_ip.as_deref()?.parse().ok().filter(|_| ready)?;
    Some(format!(
        "http://{}/metrics",
        std::net::SocketAddr::new(ip, SERVER_PORT as u16)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: Option<&str>, ready: &str, terminating: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}
        }))
        .unwrap();
        if let Some(status) = pod.status.as_mut() {
            status.pod_ip = ip.map(String::from);
        }
        if terminating {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        pod
    }

    #[test]
    fn metrics_are_read_only_at_the_pod_ip_the_api_gives() {
        // Whatever the address, it is the pod's own: no range is assumed (a
        // private one is built, not written, so the source holds no address).
        let private = std::net::Ipv4Addr::new(10, 1, 2, 3).to_string();
        for (ip, url) in [
            ("127.244.0.7", "http://127.244.0.7:8000/metrics".to_string()),
            (&private, format!("http://{private}:8000/metrics")),
            ("::1", "http://[::1]:8000/metrics".into()),
            ("fd00::5", "http://[fd00::5]:8000/metrics".into()),
        ] {
            assert_eq!(metrics_url(&pod(Some(ip), "True", false)), Some(url));
        }
    }

    #[test]
    fn pods_not_ready_terminating_or_without_an_address_are_not_read() {
        assert_eq!(metrics_url(&pod(Some("127.0.0.9"), "False", false)), None);
        assert_eq!(metrics_url(&pod(Some("127.0.0.9"), "True", true)), None);
        assert_eq!(metrics_url(&pod(None, "True", false)), None);
        assert_eq!(metrics_url(&pod(Some("not an ip"), "True", false)), None);
    }

    fn figures(rps: f64) -> ServingMetrics {
        ServingMetrics {
            requests_per_second: rps,
            ..ServingMetrics::default()
        }
    }

    #[test]
    fn status_metrics_are_written_at_most_every_interval_and_only_on_change() {
        let every = Duration::from_secs(30);
        // The first figures are written at once.
        assert_eq!(
            metrics_to_write(None, Some(figures(1.0)), 0.0, None, every),
            Some(figures(1.0))
        );
        // The same figures are never rewritten.
        assert_eq!(
            metrics_to_write(
                Some(&figures(1.0)),
                Some(figures(1.0)),
                100.0,
                Some(0.0),
                every
            ),
            None
        );
        // A change waits for the interval.
        assert_eq!(
            metrics_to_write(
                Some(&figures(1.0)),
                Some(figures(2.0)),
                10.0,
                Some(0.0),
                every
            ),
            None
        );
        assert_eq!(
            metrics_to_write(
                Some(&figures(1.0)),
                Some(figures(2.0)),
                31.0,
                Some(0.0),
                every
            ),
            Some(figures(2.0))
        );
        // No figures yet: status is left alone.
        assert_eq!(
            metrics_to_write(Some(&figures(1.0)), None, 31.0, Some(0.0), every),
            None
        );
    }

    #[test]
    fn figures_are_rounded_to_display_precision() {
        let summary = Summary {
            requests_per_second: Some(2.345_678),
            p95_latency: Some(0.312_345_6),
            error_rate: Some(0.012_345),
            tokens_per_second: Some(123.456),
            in_flight: 2.6,
            pods: 2,
            ..Summary::default()
        };
        let m = serving_metrics(&summary, Duration::from_secs(60)).unwrap();
        assert_eq!(m.requests_per_second, 2.35);
        assert_eq!(m.p95_latency_ms, 312.3);
        assert_eq!(m.error_rate, 0.0123);
        assert_eq!(m.tokens_per_second, 123.5);
        assert_eq!((m.in_flight, m.pods, m.window_seconds), (3, 2, 60));
        assert_eq!(
            serving_metrics(&Summary::default(), Duration::from_secs(60)),
            None
        );
    }
}
