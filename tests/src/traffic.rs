//! Client traffic to a Service's pods, standing in for kube-proxy.
//!
//! Kubernetes refuses loopback addresses in EndpointSlices, so the test cluster
//! runs no EndpointSlice controller and no proxy (`tests/cluster/README.md`).
//! [`Traffic::run`] does their part on the client side: it reads the selector of a
//! Service (or takes a label selector), and every [`REFRESH`] lists the pods it
//! matches and keeps those a proxy would send to — Running, `Ready` True, not being
//! deleted, with a pod IP — at the Service's `targetPort` (a name resolved against
//! each pod's container ports). Requests go round-robin over those addresses, from
//! `concurrency` threads of blocking HTTP/1.1, each with its own timeout, until the
//! count or the duration of the [`Load`] is reached; a request fails on a transport
//! error or a status other than 2xx, and finding no ready pod fails it too (a proxy
//! rejects the connection). The [`Report`] has every outcome, per pod.
//!
//! Only loopback addresses are ever connected to, and a run is bounded:
//! [`MAX_REQUESTS`] requests and [`MAX_DURATION`] at most.
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use llmops_tests::traffic::{Backends, Load, Request, Traffic};
//! let load = Load::new(Request::get("/v1/models").key("sk-test"))
//!     .concurrency(4)
//!     .duration(Duration::from_secs(20));
//! let report = Traffic::run(client, "ns", Backends::service("chat"), load).await?;
//! anyhow::ensure!(report.failed.is_empty(), "{report}");
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::probe::pod_ready;

/// The most requests one run sends.
pub const MAX_REQUESTS: u64 = 10_000;
/// The longest one run lasts (requests in flight get their own timeout on top).
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// The longest a single request may take.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest pause between one client's requests.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// The most client threads.
pub const MAX_CONCURRENCY: usize = 64;
/// How often the ready pods are listed again.
pub const REFRESH: Duration = Duration::from_millis(250);
/// How long a worker waits before its next request when no pod is ready.
const NO_ENDPOINT_PAUSE: Duration = Duration::from_millis(50);
/// How much of a failed answer's body a failure keeps.
const EXCERPT: usize = 300;

/// One request, sent the same way every time.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// Path and query, `/v1/models`.
    pub path: String,
    /// Sent as `application/json` when given.
    pub body: Option<Value>,
    /// Sent as `Authorization: Bearer <key>` when given.
    pub api_key: Option<String>,
}

impl Request {
    pub fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            body: None,
            api_key: None,
        }
    }

    pub fn post(path: &str, body: Value) -> Request {
        Request {
            method: "POST".into(),
            path: path.into(),
            body: Some(body),
            api_key: None,
        }
    }

    /// The same request with a bearer key.
    pub fn key(mut self, key: &str) -> Request {
        self.api_key = Some(key.into());
        self
    }
}

/// How much traffic: `concurrency` clients sending `request` until `count`
/// requests have been sent or `duration` has passed, whichever comes first (at
/// least one must be set).
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub request: Request,
    pub concurrency: usize,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// Each client starts a request at most this often (`None`: each starts the
    /// next as soon as the last ends): paces a run long enough to span a
    /// rollout within [`MAX_REQUESTS`].
    pub interval: Option<Duration>,
    /// Per request, connecting to the last byte of the answer.
    pub timeout: Duration,
    /// How long to wait, before starting, for at least one ready pod.
    pub ready_timeout: Duration,
    /// Ends the run early, with its report, when raised.
    pub stop: Option<StopSignal>,
}

/// A flag a test raises to end a [`Load`] early (its report is kept, unlike
/// when the task running it is aborted).
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    pub fn new() -> StopSignal {
        StopSignal::default()
    }

    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl PartialEq for StopSignal {
    fn eq(&self, other: &StopSignal) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Load {
    /// One client, no stop set yet, 30 s per request, 60 s to find a ready pod.
    pub fn new(request: Request) -> Load {
        Load {
            request,
            concurrency: 1,
            count: None,
            duration: None,
            interval: None,
            timeout: Duration::from_secs(30),
            ready_timeout: Duration::from_secs(60),
            stop: None,
        }
    }

    /// End the run when `signal` is raised.
    pub fn stop_on(mut self, signal: &StopSignal) -> Load {
        self.stop = Some(signal.clone());
        self
    }

    pub fn concurrency(mut self, clients: usize) -> Load {
        self.concurrency = clients;
        self
    }

    pub fn count(mut self, requests: u64) -> Load {
        self.count = Some(requests);
        self
    }

    pub fn duration(mut self, duration: Duration) -> Load {
        self.duration = Some(duration);
        self
    }

    /// Each client starts a request at most every `interval`.
    pub fn interval(mut self, interval: Duration) -> Load {
        self.interval = Some(interval);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Load {
        self.timeout = timeout;
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Load {
        self.ready_timeout = timeout;
        self
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.count.is_some() || self.duration.is_some(),
            "a load needs a count or a duration"
        );
        ensure!(
            (1..=MAX_CONCURRENCY).contains(&self.concurrency),
            "concurrency {} is outside 1..={MAX_CONCURRENCY}",
            self.concurrency
        );
        if let Some(count) = self.count {
            ensure!(
                count <= MAX_REQUESTS,
                "{count} requests: at most {MAX_REQUESTS}"
            );
        }
        if let Some(duration) = self.duration {
            ensure!(
                duration <= MAX_DURATION,
                "{duration:?}: at most {MAX_DURATION:?}"
            );
        }
        if let Some(interval) = self.interval {
            ensure!(
                interval <= MAX_INTERVAL,
                "interval {interval:?}: at most {MAX_INTERVAL:?}"
            );
        }
        ensure!(
            !self.timeout.is_zero() && self.timeout <= MAX_REQUEST_TIMEOUT,
            "request timeout {:?} is outside (0, {MAX_REQUEST_TIMEOUT:?}]",
            self.timeout
        );
        Ok(())
    }
}

/// Which pods receive the traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum Backends {
    /// The pods a Service's selector matches, at the `targetPort` of its port
    /// named `port` (of its only or first port when `None`).
    Service { name: String, port: Option<String> },
    /// The pods a label selector matches, at the container port named (or
    /// numbered) `port`.
    Pods { selector: String, port: String },
    /// The Services of the first rule of an HTTPRoute, by their weights, as a
    /// Gateway would send (see [`weighted_slots`]).
    HttpRoute { name: String },
}

impl Backends {
    pub fn service(name: &str) -> Backends {
        Backends::Service {
            name: name.into(),
            port: None,
        }
    }

    pub fn pods(selector: &str, port: &str) -> Backends {
        Backends::Pods {
            selector: selector.into(),
            port: port.into(),
        }
    }

    pub fn http_route(name: &str) -> Backends {
        Backends::HttpRoute { name: name.into() }
    }

    /// Where requests go now, taken in turn: each ready pod once, or for an
    /// HTTPRoute its backends' pods in proportion to their weights.
    async fn slots(&self, client: &Client, namespace: &str) -> anyhow::Result<Vec<Slot>> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let ready = |selector: String, port: IntOrString| {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default().labels(&selector)).await?;
                anyhow::Ok(ready_endpoints(&list.items, &port))
            }
        };
        let service = |name: String, port: Option<String>| {
            let services = services.clone();
            async move {
                let service = services
                    .get(&name)
                    .await
                    .with_context(|| format!("reading Service {name}"))?;
                service_backends(&service, port.as_deref())
            }
        };
        match self {
            Backends::Pods { selector, port } => {
                let port = match port.parse::<i32>() {
                    Ok(n) => IntOrString::Int(n),
                    Err(_) => IntOrString::String(port.clone()),
                };
                Ok(every_pod(ready(selector.clone(), port).await?))
            }
            Backends::Service { name, port } => {
                let (selector, port) = service(name.clone(), port.clone()).await?;
                Ok(every_pod(ready(selector, port).await?))
            }
            Backends::HttpRoute { name } => {
                let mut weighted = Vec::new();
                for (backend, port, weight) in route_backends(client, namespace, name).await? {
                    let (selector, target) = service(backend, port).await?;
                    weighted.push((weight, ready(selector, target).await?));
                }
                Ok(weighted_slots(&weighted))
            }
        }
    }
}

/// One turn of the traffic: a pod's address, or `None` for a backend that has
/// weight but no ready pod (a Gateway answers those requests with an error).
pub type Slot = Option<Endpoint>;

fn every_pod(endpoints: Vec<Endpoint>) -> Vec<Slot> {
    endpoints.into_iter().map(Some).collect()
}

/// Gateway API's `HTTPRoute` (`gateway.networking.k8s.io/v1`), for dynamic APIs.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ))
}

/// The Services (name, port, weight) of the first rule of HTTPRoute `name`
/// (`gateway.networking.k8s.io/v1`); a backendRef without a weight weighs 1.
pub async fn route_backends(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<(String, Option<String>, u32)>> {
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &http_route_resource());
    let route = routes
        .get(name)
        .await
        .with_context(|| format!("reading HTTPRoute {name}"))?;
    let refs = route
        .data
        .pointer("/spec/rules/0/backendRefs")
        .and_then(Value::as_array)
        .with_context(|| format!("HTTPRoute {name} has no rule with backendRefs"))?;
    refs.iter()
        .map(|r| {
            let service = r["name"]
                .as_str()
                .with_context(|| format!("a backendRef of HTTPRoute {name} has no name"))?;
            let port = r.get("port").and_then(Value::as_i64).map(|p| p.to_string());
            let weight = r.get("weight").and_then(Value::as_u64).unwrap_or(1);
            Ok((service.to_string(), port, u32::try_from(weight)?))
        })
        .collect()
}

/// Turns over backends in proportion to their weights, interleaved (smooth
/// weighted round-robin, as nginx and Envoy do it), each backend's turns going
/// round-robin over its pods; repeated until every pod had the same number of
/// turns within its backend. A backend with weight and no pod gets `None` turns.
pub fn weighted_slots(backends: &[(u32, Vec<Endpoint>)]) -> Vec<Slot> {
    let weights: Vec<i64> = backends.iter().map(|(w, _)| i64::from(*w)).collect();
    let total: i64 = weights.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut current = vec![0i64; backends.len()];
    let mut turns = vec![0usize; backends.len()];
    let mut slots = Vec::new();
    // Bounded: a few pods per backend make a short cycle.
    for _ in 0..64 {
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let Some(chosen) = (0..backends.len()).max_by_key(|&i| (current[i], usize::MAX - i))
            else {
                break;
            };
            current[chosen] -= total;
            let pods = &backends[chosen].1;
            slots.push((!pods.is_empty()).then(|| pods[turns[chosen] % pods.len()].clone()));
            turns[chosen] += 1;
        }
        let even = backends
            .iter()
            .zip(&turns)
            .all(|((_, pods), n)| pods.is_empty() || n % pods.len() == 0);
        if even {
            break;
        }
    }
    slots
}

/// A Service's selector (as a label selector) and the target port of its port
/// named `port` (its only or first port when `None`); `targetPort` defaults to
/// the port itself.
pub fn service_backends(
    service: &Service,
    port: Option<&str>,
) -> anyhow::Result<(String, IntOrString)> {
    let name = service.name_any();
    let spec = service.spec.as_ref().context("the Service has no spec")?;
    let selector = spec
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
        .with_context(|| format!("Service {name} has no selector"))?
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let ports = spec.ports.as_deref().unwrap_or_default();
    let chosen = match port {
        Some(wanted) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(wanted) || p.port.to_string() == wanted)
            .with_context(|| format!("Service {name} has no port {wanted}"))?,
        None => ports
            .first()
            .with_context(|| format!("Service {name} has no ports"))?,
    };
    let target = chosen
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(chosen.port));
    Ok((selector, target))
}

/// Where one pod receives traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub pod: String,
    pub address: SocketAddr,
}

/// The addresses of `pods` a proxy would send to: Running, Ready, not being
/// deleted, with a loopback pod IP and the port (a named one must be declared by
/// one of its containers); sorted by pod name.
pub fn ready_endpoints(pods: &[Pod], port: &IntOrString) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| {
            let ip: IpAddr = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            if !ip.is_loopback() {
                return None;
            }
            let number = match port {
                IntOrString::Int(n) => *n,
                IntOrString::String(name) => {
                    p.spec
                        .as_ref()?
                        .containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .find(|cp| cp.name.as_deref() == Some(name.as_str()))?
                        .container_port
                }
            };
            let number = u16::try_from(number).ok().filter(|n| *n != 0)?;
            Some(Endpoint {
                pod: p.name_any(),
                address: SocketAddr::new(ip, number),
            })
        })
        .collect();
    endpoints.sort();
    endpoints
}

/// The endpoint for the `turn`th request: the slots in turn.
pub fn pick(slots: &[Slot], turn: usize) -> Option<&Endpoint> {
    if slots.is_empty() {
        None
    } else {
        slots[turn % slots.len()].as_ref()
    }
}

/// A request that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The pod it went to; `None` when no pod was ready.
    pub pod: Option<String>,
    /// The HTTP status, when one came back.
    pub status: Option<u16>,
    /// The transport error, when no status came back.
    pub error: Option<String>,
    /// The start of the answer's body.
    pub body: String,
    /// When it was sent, after the run's start.
    pub at: Duration,
    pub latency: Duration,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {:.2}s to {}: ",
            self.at.as_secs_f64(),
            self.pod.as_deref().unwrap_or("(no ready pod)")
        )?;
        match (self.status, &self.error) {
            (Some(status), _) => write!(f, "HTTP {status} {}", self.body),
            (None, Some(error)) => write!(f, "{error}"),
            (None, None) => write!(f, "failed"),
        }
    }
}

/// Requests per pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodCounts {
    pub sent: u64,
    pub ok: u64,
}

/// What a run saw.
#[derive(Debug, Clone)]
pub struct Report {
    /// Requests attempted (`ok` + `failed.len()`).
    pub sent: u64,
    /// Requests answered with a 2xx status.
    pub ok: u64,
    pub failed: Vec<Failure>,
    /// Client-measured latency of each successful request, in completion order.
    pub latencies: Vec<Duration>,
    pub per_pod: BTreeMap<String, PodCounts>,
    pub started: Instant,
    pub ended: Instant,
    /// Whether the run stopped at [`MAX_REQUESTS`] or [`MAX_DURATION`] before
    /// the load's own count or duration (pace it with [`Load::interval`]).
    pub capped: bool,
}

impl Report {
    fn empty(started: Instant) -> Report {
        Report {
            sent: 0,
            ok: 0,
            failed: Vec::new(),
            latencies: Vec::new(),
            per_pod: BTreeMap::new(),
            started,
            ended: started,
            capped: false,
        }
    }

    /// The latency below which `q` (0..=1) of the successful requests finished
    /// (nearest rank); `None` when none succeeded.
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    /// The 95th percentile latency of the successful requests.
    pub fn p95(&self) -> Option<Duration> {
        self.percentile(0.95)
    }

    /// The run's wall time.
    pub fn elapsed(&self) -> Duration {
        self.ended.saturating_duration_since(self.started)
    }

    /// Successful requests per second of wall time.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed().as_secs_f64();
        if seconds > 0.0 {
            self.ok as f64 / seconds
        } else {
            0.0
        }
    }

    /// The share of requests that failed (0 when none was sent).
    pub fn failure_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.failed.len() as f64 / self.sent as f64
        }
    }

    /// The failures grouped by pod and outcome, in order of first occurrence:
    /// `<n> × <first>–<last> s to <pod>: <outcome>`.
    pub fn failure_summary(&self) -> Vec<String> {
        let mut groups: Vec<(String, usize, Duration, Duration)> = Vec::new();
        for failure in &self.failed {
            let at = failure.at;
            let key = Failure {
                at: Duration::ZERO,
                ..failure.clone()
            }
            .to_string();
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(group) => {
                    group.1 += 1;
                    group.3 = group.3.max(at);
                }
                None => groups.push((key, 1, at, at)),
            }
        }
        groups
            .into_iter()
            .map(|(key, n, first, last)| {
                let key = key.split_once(" to ").map_or(key.as_str(), |(_, k)| k);
                format!(
                    "{n} × {:.2}–{:.2} s to {key}",
                    first.as_secs_f64(),
                    last.as_secs_f64()
                )
            })
            .collect()
    }

    fn record(&mut self, pod: Option<&str>, outcome: Outcome, at: Duration, latency: Duration) {
        self.sent += 1;
        let counts = pod.map(|p| self.per_pod.entry(p.to_string()).or_default());
        let ok = matches!(outcome, Outcome::Status(status, _) if (200..300).contains(&status));
        if let Some(counts) = counts {
            counts.sent += 1;
            if ok {
                counts.ok += 1;
            }
        }
        if ok {
            self.ok += 1;
            self.latencies.push(latency);
            return;
        }
        let (status, error, body) = match outcome {
            Outcome::Status(status, body) => (Some(status), None, excerpt(&body)),
            Outcome::Error(error) => (None, Some(error), String::new()),
        };
        self.failed.push(Failure {
            pod: pod.map(str::to_string),
            status,
            error,
            body,
            at,
            latency,
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests in {:.1}s, {} ok ({:.1}/s), {} failed, p95 {}",
            self.sent,
            self.elapsed().as_secs_f64(),
            self.ok,
            self.rate(),
            self.failed.len(),
            self.p95()
                .map_or_else(|| "-".to_string(), |d| format!("{d:?}"))
        )?;
        if self.capped {
            write!(
                f,
                " (stopped at the cap of {MAX_REQUESTS} requests or {MAX_DURATION:?})"
            )?;
        }
        for (pod, counts) in &self.per_pod {
            write!(f, "\n  {pod}: {} sent, {} ok", counts.sent, counts.ok)?;
        }
        for line in self.failure_summary().iter().take(20) {
            write!(f, "\n  failed {line}")?;
        }
        Ok(())
    }
}

fn excerpt(body: &str) -> String {
    let mut end = body.len().min(EXCERPT);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].to_string()
}

/// How one request ended.
enum Outcome {
    Status(u16, String),
    Error(String),
}

/// Runs client traffic; see the module documentation.
pub struct Traffic;

impl Traffic {
    /// Send `load` to the ready pods of `backends` in `namespace` and report.
    /// Fails before sending when no pod is ready within `load.ready_timeout`.
    pub async fn run(
        client: Client,
        namespace: &str,
        backends: Backends,
        load: Load,
    ) -> anyhow::Result<Report> {
        load.check()?;
        let slots = Arc::new(RwLock::new(Vec::<Slot>::new()));
        let deadline = Instant::now() + load.ready_timeout;
        loop {
            let found = backends.slots(&client, namespace).await?;
            if found.iter().any(Option::is_some) {
                *slots.write().unwrap_or_else(|e| e.into_inner()) = found;
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "no ready pod behind {backends:?} in {namespace} after {:?}",
                    load.ready_timeout
                );
            }
            tokio::time::sleep(REFRESH).await;
        }

        // kube-proxy's (or a Gateway's) part: the ready addresses, kept current.
        let refresher = {
            let slots = slots.clone();
            let namespace = namespace.to_string();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REFRESH).await;
                    if let Ok(found) = backends.slots(&client, &namespace).await {
                        *slots.write().unwrap_or_else(|e| e.into_inner()) = found;
                    }
                }
            })
        };
        let _refresher = AbortOnDrop(refresher);

        let started = Instant::now();
        let run = Arc::new(Run {
            slots,
            request: load.request.clone(),
            interval: load.interval,
            timeout: load.timeout,
            count: load.count.unwrap_or(MAX_REQUESTS).min(MAX_REQUESTS),
            end: started + load.duration.unwrap_or(MAX_DURATION).min(MAX_DURATION),
            started,
            issued: AtomicU64::new(0),
            turn: AtomicUsize::new(0),
            stop: load.stop.clone().unwrap_or_default(),
            report: Mutex::new(Report::empty(started)),
        });
        // Workers stop when this future is dropped.
        let _stop = StopOnDrop(run.clone());
        let workers: Vec<_> = (0..load.concurrency)
            .map(|_| {
                let run = run.clone();
                tokio::task::spawn_blocking(move || run.work())
            })
            .collect();
        for worker in workers {
            worker.await.context("a traffic worker panicked")?;
        }
        let mut report = run.report.lock().unwrap_or_else(|e| e.into_inner()).clone();
        report.ended = Instant::now();
        report.capped = (load.count.is_none_or(|c| c > MAX_REQUESTS)
            && report.sent >= MAX_REQUESTS)
            || (load.duration.is_none_or(|d| d > MAX_DURATION) && report.elapsed() >= MAX_DURATION);
        Ok(report)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct StopOnDrop(Arc<Run>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.raise();
    }
}

/// What the workers of one run share.
struct Run {
    slots: Arc<RwLock<Vec<Slot>>>,
    request: Request,
    interval: Option<Duration>,
    timeout: Duration,
    count: u64,
    end: Instant,
    started: Instant,
    issued: AtomicU64,
    turn: AtomicUsize,
    stop: StopSignal,
    report: Mutex<Report>,
}

impl Run {
    fn work(&self) {
        let mut next = Instant::now();
        loop {
            // Paced: wait for this client's next turn, waking to notice a stop.
            loop {
                let now = Instant::now();
                if self.stop.0.load(Ordering::SeqCst) || now >= self.end {
                    return;
                }
                if now >= next {
                    break;
                }
                std::thread::sleep((next - now).min(Duration::from_millis(100)));
            }
            if let Some(interval) = self.interval {
                next = Instant::now() + interval;
            }
            if self.issued.fetch_add(1, Ordering::SeqCst) >= self.count {
                return;
            }
            let endpoint = {
                let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
                pick(&slots, self.turn.fetch_add(1, Ordering::SeqCst)).cloned()
            };
            let sent = Instant::now();
            let at = sent.saturating_duration_since(self.started);
            let Some(endpoint) = endpoint else {
                self.record(
                    None,
                    Outcome::Error("no ready pod".into()),
                    at,
                    Duration::ZERO,
                );
                std::thread::sleep(NO_ENDPOINT_PAUSE);
                continue;
            };
            let outcome = match send(endpoint.address, &self.request, self.timeout) {
                Ok((status, body)) => Outcome::Status(status, body),
                Err(err) => Outcome::Error(format!("{err:#}")),
            };
            self.record(Some(&endpoint.pod), outcome, at, sent.elapsed());
        }
    }

    fn record(&self, pod: Option<&str>, outcome: Outcome, at: Duration, latency: Duration) {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(pod, outcome, at, latency);
    }
}

/// One HTTP/1.1 request to `address` (loopback only), all of it within
/// `timeout`; returns the status and the body (chunked encoding undone).
pub fn send(
    address: SocketAddr,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    ensure!(
        address.ip().is_loopback(),
        "{address} is not on loopback: tests never connect elsewhere"
    );
    let deadline = Instant::now() + timeout;
    let remaining = || {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no complete answer from {address} within {timeout:?}")
        }
        Ok(left)
    };
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("connecting to {address}"))?;
    let body = request
        .body
        .as_ref()
        .map(|b| b.to_string())
        .unwrap_or_default();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n",
        request.method, request.path
    );
    if let Some(key) = &request.api_key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if request.body.is_some() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.set_write_timeout(Some(remaining()?))?;
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .with_context(|| format!("sending to {address}"))?;
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(remaining()?))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        // A signal to the test process (a child exiting) cut the
                        // read short; nothing was lost, read again.
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                remaining()?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading from {address}")),
        }
    }
    parse_response(&response).with_context(|| format!("the answer of {address}"))
}

/// Status and body of a whole HTTP/1.1 response.
fn parse_response(response: &[u8]) -> anyhow::Result<(u16, String)> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let raw = &response[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let chunked = head.lines().skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without its size line")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        ensure!(raw.len() >= size, "a chunk cut short");
        body.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::TcpListener;

    fn pod(name: &str, ip: &str, ready: bool, extra: Value) -> Pod {
        let mut value = json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "server",
                "ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}
            ]}
        });
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                value["metadata"][k] = v;
            }
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn only_ready_pods_that_are_not_terminating_are_endpoints() {
        let pods = vec![
            pod("b", "127.244.0.2", true, json!({})),
            pod("a", "127.244.0.1", true, json!({})),
            pod("c", "127.244.0.3", false, json!({})),
            pod(
                "d",
                "127.244.0.4",
                true,
                json!({"deletionTimestamp": "2025-01-01T00:00:00Z"}),
            ),
            pod("e", "10.0.0.5", true, json!({})),
        ];
        let by_name = ready_endpoints(&pods, &IntOrString::String("http".into()));
        assert_eq!(
            by_name,
            vec![
                Endpoint {
                    pod: "a".into(),
                    address: "127.244.0.1:8000".parse().unwrap()
                },
                Endpoint {
                    pod: "b".into(),
                    address: "127.244.0.2:8000".parse().unwrap()
                },
            ]
        );
        let by_number = ready_endpoints(&pods, &IntOrString::Int(9000));
        assert_eq!(by_number[0].address, "127.244.0.1:9000".parse().unwrap());
        assert!(ready_endpoints(&pods, &IntOrString::String("grpc".into())).is_empty());
    }

    fn endpoints(prefix: &str, n: u8) -> Vec<Endpoint> {
        (1..=n)
            .map(|i| Endpoint {
                pod: format!("{prefix}{i}"),
                address: format!("127.244.0.{i}:8000").parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn requests_go_round_robin() {
        let slots = every_pod(endpoints("p", 3));
        let picked: Vec<&str> = (0..7)
            .map(|turn| pick(&slots, turn).unwrap().pod.as_str())
            .collect();
        assert_eq!(picked, ["p1", "p2", "p3", "p1", "p2", "p3", "p1"]);
        assert!(pick(&[], 3).is_none());
    }

    #[test]
    fn a_route_splits_by_weight_and_each_backend_round_robin() {
        let slots = weighted_slots(&[(75, endpoints("s", 2)), (25, endpoints("c", 1))]);
        let count = |prefix: &str| {
            slots
                .iter()
                .flatten()
                .filter(|e| e.pod.starts_with(prefix))
                .count()
        };
        assert_eq!(count("s") * 25, count("c") * 75, "{slots:?}");
        assert_eq!(
            slots.iter().flatten().filter(|e| e.pod == "s1").count(),
            slots.iter().flatten().filter(|e| e.pod == "s2").count()
        );
        // Interleaved, not in runs: the canary's turn comes within every 4.
        assert!(slots.iter().take(4).flatten().any(|e| e.pod == "c1"));
        // Weight 0 gets nothing; weight without pods gets failing turns.
        let slots = weighted_slots(&[(100, endpoints("s", 1)), (0, endpoints("c", 1))]);
        assert!(slots.iter().flatten().all(|e| e.pod == "s1"));
        let slots = weighted_slots(&[(50, endpoints("s", 1)), (50, Vec::new())]);
        assert_eq!(
            slots.iter().filter(|s| s.is_none()).count(),
            slots.len() / 2
        );
        assert!(weighted_slots(&[]).is_empty());
    }

    #[test]
    fn a_service_gives_its_selector_and_target_port() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "chat"},
            "spec": {"selector": {"app": "chat", "tier": "serve"},
                     "ports": [{"name": "http", "port": 8080, "targetPort": "http"},
                               {"name": "metrics", "port": 9090}]}
        }))
        .unwrap();
        let (selector, port) = service_backends(&service, None).unwrap();
        assert_eq!(selector, "app=chat,tier=serve");
        assert_eq!(port, IntOrString::String("http".into()));
        let (_, port) = service_backends(&service, Some("metrics")).unwrap();
        assert_eq!(port, IntOrString::Int(9090));
        assert!(service_backends(&service, Some("grpc")).is_err());
        let bare: Service =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"ports": []}}))
                .unwrap();
        assert!(service_backends(&bare, None).is_err());
    }

    fn report(latencies_ms: &[u64]) -> Report {
        let started = Instant::now();
        let mut report = Report::empty(started);
        for ms in latencies_ms {
            report.record(
                Some("a"),
                Outcome::Status(200, String::new()),
                Duration::ZERO,
                Duration::from_millis(*ms),
            );
        }
        report.ended = started + Duration::from_secs(2);
        report
    }

    #[test]
    fn report_math() {
        let mut r = report(&(1..=100).rev().collect::<Vec<_>>());
        assert_eq!(r.p95(), Some(Duration::from_millis(95)));
        assert_eq!(r.percentile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(r.percentile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(r.percentile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(r.rate(), 50.0);
        r.record(
            Some("b"),
            Outcome::Status(503, "draining".into()),
            Duration::from_millis(5),
            Duration::from_millis(1),
        );
        r.record(
            None,
            Outcome::Error("no ready pod".into()),
            Duration::from_millis(6),
            Duration::ZERO,
        );
        assert_eq!((r.sent, r.ok, r.failed.len()), (102, 100, 2));
        assert_eq!(r.per_pod["a"], PodCounts { sent: 100, ok: 100 });
        assert_eq!(r.per_pod["b"], PodCounts { sent: 1, ok: 0 });
        assert_eq!(r.failed[0].status, Some(503));
        assert_eq!(r.failed[0].body, "draining");
        assert_eq!(r.failed[1].pod, None);
        assert!((r.failure_ratio() - 2.0 / 102.0).abs() < 1e-12);
        assert_eq!(report(&[]).p95(), None);
        assert_eq!(report(&[7]).p95(), Some(Duration::from_millis(7)));
        r.record(
            Some("b"),
            Outcome::Status(503, "draining".into()),
            Duration::from_millis(1500),
            Duration::from_millis(1),
        );
        assert_eq!(
            r.failure_summary(),
            [
                "2 × 0.01–1.50 s to b: HTTP 503 draining",
                "1 × 0.01–0.01 s to (no ready pod): no ready pod"
            ]
        );
        let shown = r.to_string();
        assert!(shown.contains("103 requests"), "{shown}");
        assert!(shown.contains("HTTP 503 draining"), "{shown}");
    }

    #[test]
    fn loads_are_bounded() {
        let load = Load::new(Request::get("/"));
        assert!(load.check().is_err(), "neither count nor duration");
        assert!(load.clone().count(10).check().is_ok());
        assert!(load.clone().count(MAX_REQUESTS + 1).check().is_err());
        assert!(
            load.clone()
                .duration(MAX_DURATION + Duration::from_secs(1))
                .check()
                .is_err()
        );
        assert!(load.clone().count(1).concurrency(0).check().is_err());
        assert!(load.clone().count(1).concurrency(65).check().is_err());
        assert!(
            load.clone()
                .count(1)
                .timeout(Duration::ZERO)
                .check()
                .is_err()
        );
        assert!(
            load.count(1)
                .interval(MAX_INTERVAL + Duration::from_secs(1))
                .check()
                .is_err()
        );
    }

    /// Serves `answers` in turn, one connection each, on 127.0.0.1.
    fn serve(answers: Vec<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for answer in answers {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(answer.as_bytes());
                // Read what is left of the request (its body may arrive after the
                // first read) until the client closes: closing with unread bytes
                // would reset the connection under the client's read.
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = std::io::copy(&mut conn, &mut std::io::sink());
            }
        });
        address
    }

    #[test]
    fn send_reads_plain_and_chunked_answers() {
        let address = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n",
        ]);
        let request = Request::post("/v1/completions", json!({"prompt": "x"})).key("k");
        let timeout = Duration::from_secs(5);
        assert_eq!(
            send(address, &request, timeout).unwrap(),
            (200, "ok".to_string())
        );
        assert_eq!(
            send(address, &Request::get("/readyz"), timeout).unwrap(),
            (503, "not ready".to_string())
        );
    }

    #[test]
    fn send_times_out_and_refuses_other_addresses() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // Accepted by the backlog, never answered.
        let started = Instant::now();
        let err = send(address, &Request::get("/"), Duration::from_millis(300)).unwrap_err();
        assert!(format!("{err:#}").contains("within"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
        let err = send(
            "192.0.2.1:80".parse().unwrap(),
            &Request::get("/"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not on loopback"), "{err}");
    }
}
