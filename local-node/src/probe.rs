//! The kubelet's readiness prober, for replayed pods ([`crate::replay`]), and
//! the other pod status writes of the kubelet that replay makes.
//!
//! kwok marks a pod Ready the moment it runs; a kubelet marks it Ready only once
//! the container's `readinessProbe` passes. [`crate::replay::Replayer::start`]
//! therefore sets a container with a readiness probe not ready as it starts it, and
//! runs a [`Prober`] beside the process: every `periodSeconds` (after
//! `initialDelaySeconds`) it probes the container — `httpGet` at
//! `<host or podIP>:<port>` with the probe's path and headers, a 2xx or 3xx answer
//! within `timeoutSeconds` passing, or `tcpSocket`, a connection passing — and after
//! `successThreshold` passes (or `failureThreshold` failures) in a row it writes
//! the result to the pod: `containerStatuses[0].ready` and the `Ready` and
//! `ContainersReady` conditions, by PUT on pods/status, retried on conflicts. A
//! named port is resolved against the container's `ports`, as the kubelet does; a
//! probe address off loopback is refused. `exec` and `grpc` probes are not
//! supported, nor `startupProbe` and `livenessProbe` (the readiness probe alone
//! decides when a pod receives traffic).
//!
//! The prober stops when dropped, when the process exits (it then writes the pod
//! not ready), and when the pod is gone or has finished. A [`Readiness`] handle
//! tells a test what the prober last wrote and lets it wait for a change.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus, Pod,
    PodCondition, PodSpec, PodStatus, Probe,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A container's readiness probe, resolved against its pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// What one probe does.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeAction {
    /// GET `path` at `address`; 200–399 passes.
    Http {
        address: SocketAddr,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// Open a TCP connection to `address`.
    Tcp { address: SocketAddr },
}

/// The container's `readinessProbe` resolved against `pod` (its IP) and the
/// container's ports, with the kubelet's defaults (period 10 s, timeout 1 s,
/// thresholds 1 and 3); `None` when it has none.
pub fn readiness_probe(pod: &Pod, container: &Container) -> anyhow::Result<Option<ProbeSpec>> {
    let Some(probe) = &container.readiness_probe else {
        return Ok(None);
    };
    let name = pod.name_any();
    let pod_ip = || -> anyhow::Result<IpAddr> {
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .with_context(|| format!("pod {name} has a readiness probe but no status.podIP"))?
            .parse()
            .with_context(|| format!("pod {name}: status.podIP is not an IP address"))
    };
    let host = |host: Option<&str>| -> anyhow::Result<IpAddr> {
        let ip = match host.filter(|h| !h.is_empty()) {
            Some(host) => host
                .parse()
                .with_context(|| format!("pod {name}: probe host {host:?} is not an IP address"))?,
            None => pod_ip()?,
        };
        ensure!(
            ip.is_loopback(),
            "pod {name}: the readiness probe would connect to {ip}, outside loopback"
        );
        Ok(ip)
    };
    let action = if let Some(get) = &probe.http_get {
        let scheme = get.scheme.as_deref().unwrap_or("HTTP");
        ensure!(
            scheme.eq_ignore_ascii_case("HTTP"),
            "pod {name}: replay probes only plain HTTP, not {scheme}"
        );
        let port = resolve_port(&get.port, container)
            .with_context(|| format!("pod {name}: readiness probe"))?;
        let path = match get.path.as_deref().unwrap_or_default() {
            "" => "/".to_string(),
            p if p.starts_with('/') => p.to_string(),
            p => format!("/{p}"),
        };
        ProbeAction::Http {
            address: SocketAddr::new(host(get.host.as_deref())?, port),
            path,
            headers: get
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, container)
            .with_context(|| format!("pod {name}: readiness probe"))?;
        ProbeAction::Tcp {
            address: SocketAddr::new(host(tcp.host.as_deref())?, port),
        }
    } else {
        bail!("pod {name}: replay supports httpGet and tcpSocket readiness probes only");
    };
    Ok(Some(timing(probe, action)))
}

fn timing(probe: &Probe, action: ProbeAction) -> ProbeSpec {
    let seconds = |value: Option<i32>, default: i32, min: i32| {
        Duration::from_secs(value.unwrap_or(default).max(min) as u64)
    };
    let count = |value: Option<i32>, default: i32| value.unwrap_or(default).max(1) as u32;
    ProbeSpec {
        action,
        initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
        period: seconds(probe.period_seconds, 10, 1),
        timeout: seconds(probe.timeout_seconds, 1, 1),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
    }
}

/// A probe's port: a number as given, a name looked up in the container's `ports`
/// (the kubelet's rule; a name it does not declare is an error).
pub fn resolve_port(port: &IntOrString, container: &Container) -> anyhow::Result<u16> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .with_context(|| {
                format!(
                    "container {} declares no port named {name:?}",
                    container.name
                )
            })?,
    };
    u16::try_from(number)
        .ok()
        .filter(|n| *n != 0)
        .with_context(|| format!("port {number} is out of range"))
}

/// What a [`Prober`] knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeState {
    /// What the pod's status says: the last readiness the prober wrote (false
    /// until a probe passes).
    pub ready: bool,
    /// Probes that passed and that failed so far.
    pub successes: u64,
    pub failures: u64,
    /// Why the last failing probe failed.
    pub last_failure: Option<String>,
    /// The last error writing the pod's status (cleared by a successful write).
    pub write_error: Option<String>,
    /// Set when the prober has stopped: the process exited, or the pod is gone
    /// or finished.
    pub stopped: Option<String>,
}

/// A handle on a [`Prober`]'s state; cloneable, valid after the prober stops.
#[derive(Debug, Clone)]
pub struct Readiness(watch::Receiver<ProbeState>);

impl Readiness {
    /// Whether the pod's status says the container is ready.
    pub fn is_ready(&self) -> bool {
        self.0.borrow().ready
    }

    pub fn state(&self) -> ProbeState {
        self.0.borrow().clone()
    }

    /// Wait up to `timeout` until the prober has written the container ready;
    /// fails at once when the prober stops first.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(true, timeout).await
    }

    /// Wait up to `timeout` until the prober has written the container not ready
    /// (or has stopped).
    pub async fn wait_unready(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(false, timeout).await
    }

    async fn wait_for(&self, ready: bool, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.0.clone();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| s.ready == ready || s.stopped.is_some()),
        )
        .await;
        let state = self.state();
        match waited {
            Ok(_) if state.ready == ready || !ready => Ok(()),
            Ok(_) => bail!(
                "the readiness prober stopped ({}) before the container was ready; {}",
                state.stopped.as_deref().unwrap_or_default(),
                state.describe()
            ),
            Err(_) => bail!(
                "the container was not {} within {timeout:?}; {}",
                if ready { "ready" } else { "unready" },
                state.describe()
            ),
        }
    }
}

impl ProbeState {
    fn describe(&self) -> String {
        let mut text = format!("{} probes passed, {} failed", self.successes, self.failures);
        if let Some(failure) = &self.last_failure {
            text.push_str(&format!(", the last failure: {failure}"));
        }
        if let Some(error) = &self.write_error {
            text.push_str(&format!("; writing the status failed: {error}"));
        }
        text
    }
}

/// A running readiness prober; stops when dropped.
#[derive(Debug)]
pub struct Prober {
    readiness: Readiness,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Prober {
    /// Probe `pod`'s container by `spec`, writing changes to `pods`, until
    /// dropped, until `pid` exits (when given) or the pod is gone or finished.
    /// The container is taken to be not ready at the start (as
    /// `Replayer::start` writes it).
    pub fn spawn(pods: Api<Pod>, pod: &Pod, spec: ProbeSpec, pid: Option<u32>) -> Prober {
        let (tx, rx) = watch::channel(ProbeState::default());
        let target = Target {
            pods,
            name: pod.name_any(),
            uid: pod.uid(),
        };
        let task = tokio::spawn(probe_loop(target, spec, pid, tx));
        Prober {
            readiness: Readiness(rx),
            task: Some(task),
        }
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Stop probing and wait until a status write in flight has been dropped.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The pod a prober writes to.
struct Target {
    pods: Api<Pod>,
    name: String,
    uid: Option<String>,
}

async fn probe_loop(
    target: Target,
    spec: ProbeSpec,
    pid: Option<u32>,
    tx: watch::Sender<ProbeState>,
) {
    let mut state = ProbeState::default();
    let mut last: Option<bool> = None;
    let mut run: u32 = 0;
    tokio::time::sleep(spec.initial_delay).await;
    let mut tick = tokio::time::interval(spec.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pid.is_some_and(exited) {
            // The container is no longer running: not ready, as the kubelet says.
            let _ = write_ready(&target.pods, &target.name, target.uid.as_deref(), false).await;
            state.ready = false;
            state.stopped = Some("the process exited".into());
            tx.send_replace(state);
            return;
        }
        let result = probe_once(&spec.action, spec.timeout).await;
        let passed = result.is_ok();
        match result {
            Ok(()) => state.successes += 1,
            Err(why) => {
                state.failures += 1;
                state.last_failure = Some(why);
            }
        }
        if last == Some(passed) {
            run = run.saturating_add(1);
        } else {
            last = Some(passed);
            run = 1;
        }
        let threshold = if passed {
            spec.success_threshold
        } else {
            spec.failure_threshold
        };
        if run >= threshold && passed != state.ready {
            match write_ready(&target.pods, &target.name, target.uid.as_deref(), passed).await {
                Ok(Update::Gone) => {
                    state.stopped = Some("the pod is gone or finished".into());
                    tx.send_replace(state);
                    return;
                }
                Ok(_) => {
                    state.ready = passed;
                    state.write_error = None;
                }
                Err(err) => state.write_error = Some(format!("{err:#}")),
            }
        }
        tx.send_replace(state.clone());
    }
}

/// One probe: `Ok` when it passes, else why not.
pub async fn probe_once(action: &ProbeAction, timeout: Duration) -> Result<(), String> {
    let address = match action {
        ProbeAction::Http { address, .. } | ProbeAction::Tcp { address } => *address,
    };
    if !address.ip().is_loopback() {
        return Err(format!("{address} is not on loopback"));
    }
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connecting to {address}: {e}"))?;
        let ProbeAction::Http { path, headers, .. } = action else {
            return Ok(());
        };
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let host = if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            String::new()
        } else {
            format!("Host: {address}\r\n")
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\n{host}User-Agent: kube-probe/replay\r\nAccept: */*\r\n{extra}Connection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("GET {path}: no HTTP status in {:?}", first_line(&line)))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("GET {path}: HTTP {status}"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer from {address} within {timeout:?}")),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Whether process `pid` (a child not yet waited for) has exited: gone, or a
/// zombie.
pub(crate) fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|s| matches!(s, 'Z' | 'X')),
        Err(_) => true,
    }
}

/// How a status update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Update {
    Written,
    /// Nothing to change.
    Unchanged,
    /// The pod is gone (or is another pod of that name), or has finished.
    Gone,
}

/// Change pod `name`'s status with `change` (which says whether it changed
/// anything) and PUT it on pods/status, retried on conflicts. A pod that has
/// finished (Succeeded or Failed) is left alone.
pub(crate) async fn update_status<F>(
    pods: &Api<Pod>,
    name: &str,
    uid: Option<&str>,
    mut change: F,
) -> anyhow::Result<Update>
where
    F: FnMut(&PodSpec, &mut PodStatus) -> bool,
{
    for _ in 0..20 {
        let Some(mut pod) = pods.get_opt(name).await? else {
            return Ok(Update::Gone);
        };
        if uid.is_some() && pod.metadata.uid.as_deref() != uid {
            return Ok(Update::Gone);
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.get_or_insert_default();
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return Ok(Update::Gone);
        }
        if !change(&spec, status) {
            return Ok(Update::Unchanged);
        }
        match pods
            .replace_status(name, &PostParams::default(), &pod)
            .await
        {
            Ok(_) => return Ok(Update::Written),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Update::Gone),
            Err(e) => return Err(e.into()),
        }
    }
    Err(anyhow!("pod {name}: status conflicts 20 times in a row"))
}

/// Write the container ready or not (its status and the pod's conditions).
pub(crate) async fn write_ready(
    pods: &Api<Pod>,
    name: &str,
    uid: Option<&str>,
    ready: bool,
) -> anyhow::Result<Update> {
    let now = Timestamp::now();
    update_status(pods, name, uid, |spec, status| {
        set_ready(spec, status, ready, now)
    })
    .await
}

/// Write what the kubelet writes when it has started the container: state
/// running since `started` (unless it is running already; after a restart it is
/// not), and ready when it has no readiness probe, else not ready until probed.
pub(crate) async fn write_started(
    pods: &Api<Pod>,
    name: &str,
    uid: Option<&str>,
    started: Timestamp,
    pid: Option<u32>,
    ready: bool,
) -> anyhow::Result<Update> {
    update_status(pods, name, uid, |spec, status| {
        let mut changed = false;
        let container = container_status(spec, status);
        let running = container
            .state
            .as_ref()
            .is_some_and(|s| s.running.is_some());
        if !running {
            container.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(started)),
                }),
                ..Default::default()
            });
            container.container_id = Some(format!("replay://{}", pid.unwrap_or(0)));
            container.started = Some(true);
            changed = true;
        }
        set_ready(spec, status, ready, started) || changed
    })
    .await
}

/// Write the pod's container waiting with `reason` (`ErrImagePull`) and
/// `message`, not ready: what the kubelet writes for an image it cannot pull, for
/// a container a local node cannot run.
pub(crate) async fn write_unrunnable(
    pods: &Api<Pod>,
    name: &str,
    uid: Option<&str>,
    reason: &str,
    message: &str,
) -> anyhow::Result<Update> {
    update_status(pods, name, uid, |spec, status| {
        let container = container_status(spec, status);
        let waiting = ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
        };
        let changed = container.state.as_ref().and_then(|s| s.waiting.as_ref()) != Some(&waiting);
        container.state = Some(ContainerState {
            waiting: Some(waiting),
            ..Default::default()
        });
        set_ready(spec, status, false, Timestamp::now()) || changed
    })
    .await
}

/// The status of the pod's (first) container, created from the spec when missing.
fn container_status<'a>(spec: &PodSpec, status: &'a mut PodStatus) -> &'a mut ContainerStatus {
    let statuses = status.container_statuses.get_or_insert_default();
    if statuses.is_empty() {
        let container = spec.containers.first();
        statuses.push(ContainerStatus {
            name: container.map(|c| c.name.clone()).unwrap_or_default(),
            image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
            ..Default::default()
        });
    }
    &mut statuses[0]
}

/// Set the first container's `ready` and the pod's `Ready` and `ContainersReady`
/// conditions as the kubelet does; returns whether anything changed (a
/// transition time moves only when a condition's status does).
pub fn set_ready(spec: &PodSpec, status: &mut PodStatus, ready: bool, now: Timestamp) -> bool {
    let container = container_status(spec, status);
    let mut changed = container.ready != ready;
    container.ready = ready;
    let name = container.name.clone();
    let conditions = status.conditions.get_or_insert_default();
    for kind in ["Ready", "ContainersReady"] {
        let wanted = PodCondition {
            type_: kind.into(),
            status: if ready { "True" } else { "False" }.into(),
            reason: (!ready).then(|| "ContainersNotReady".to_string()),
            message: (!ready).then(|| format!("containers with unready status: [{name}]")),
            last_transition_time: Some(Time(now)),
            ..Default::default()
        };
        match conditions.iter_mut().find(|c| c.type_ == kind) {
            Some(existing) => {
                let same = existing.status == wanted.status
                    && existing.reason == wanted.reason
                    && existing.message == wanted.message;
                if !same {
                    let transition = existing.status != wanted.status;
                    let previous = existing.last_transition_time.clone();
                    *existing = wanted;
                    if !transition {
                        existing.last_transition_time = previous;
                    }
                    changed = true;
                }
            }
            None => {
                conditions.push(wanted);
                changed = true;
            }
        }
    }
    changed
}

/// Whether a pod's `Ready` condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server_pod(probe: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "chat-1", "uid": "u1"},
            "spec": {"containers": [{
                "name": "server",
                "ports": [{"name": "http", "containerPort": 8000},
                          {"name": "metrics", "containerPort": 9090}],
                "readinessProbe": probe,
            }]},
            "status": {"phase": "Running", "podIP": "127.244.0.9"}
        }))
        .unwrap();
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        (pod, container)
    }

    #[test]
    fn ports_resolve_by_name_or_number() {
        let (_, c) = server_pod(json!(null));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c).unwrap(),
            8000
        );
        assert_eq!(
            resolve_port(&IntOrString::String("metrics".into()), &c).unwrap(),
            9090
        );
        assert_eq!(resolve_port(&IntOrString::Int(7000), &c).unwrap(), 7000);
        let err = resolve_port(&IntOrString::String("grpc".into()), &c).unwrap_err();
        assert!(err.to_string().contains("no port named \"grpc\""), "{err}");
        assert!(resolve_port(&IntOrString::Int(70000), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(0), &c).is_err());
    }

    #[test]
    fn the_operators_probe_resolves_to_the_pod_address() {
        let (pod, c) = server_pod(json!({
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5, "failureThreshold": 3
        }));
        let spec = readiness_probe(&pod, &c).unwrap().unwrap();
        assert_eq!(
            spec,
            ProbeSpec {
                action: ProbeAction::Http {
                    address: "127.244.0.9:8000".parse().unwrap(),
                    path: "/readyz".into(),
                    headers: vec![],
                },
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
    }

    #[test]
    fn probe_defaults_and_variants() {
        let (pod, c) = server_pod(json!({"httpGet": {"port": 9090,
            "httpHeaders": [{"name": "X-Probe", "value": "1"}]}}));
        let spec = readiness_probe(&pod, &c).unwrap().unwrap();
        assert_eq!(spec.period, Duration::from_secs(10));
        assert_eq!((spec.success_threshold, spec.failure_threshold), (1, 3));
        let ProbeAction::Http {
            address,
            path,
            headers,
        } = spec.action
        else {
            panic!("not http")
        };
        assert_eq!(address, "127.244.0.9:9090".parse().unwrap());
        assert_eq!(path, "/");
        assert_eq!(headers, [("X-Probe".to_string(), "1".to_string())]);

        let (pod, c) = server_pod(json!({"tcpSocket": {"port": "http"}, "timeoutSeconds": 3,
            "successThreshold": 2, "initialDelaySeconds": 4}));
        let spec = readiness_probe(&pod, &c).unwrap().unwrap();
        assert_eq!(
            spec.action,
            ProbeAction::Tcp {
                address: "127.244.0.9:8000".parse().unwrap()
            }
        );
        assert_eq!(spec.timeout, Duration::from_secs(3));
        assert_eq!(spec.success_threshold, 2);
        assert_eq!(spec.initial_delay, Duration::from_secs(4));

        let (pod, c) = server_pod(json!(null));
        assert_eq!(readiness_probe(&pod, &c).unwrap(), None);
        let (pod, c) = server_pod(json!({"exec": {"command": ["true"]}}));
        assert!(readiness_probe(&pod, &c).is_err());
        let (pod, c) = server_pod(json!({"httpGet": {"port": "http", "host": "10.1.2.3"}}));
        let err = readiness_probe(&pod, &c).unwrap_err();
        assert!(err.to_string().contains("outside loopback"), "{err}");
        let (pod, c) = server_pod(json!({"httpGet": {"port": "http", "scheme": "HTTPS"}}));
        assert!(readiness_probe(&pod, &c).is_err());
        let (mut pod, c) = server_pod(json!({"httpGet": {"port": "http"}}));
        pod.status.as_mut().unwrap().pod_ip = None;
        assert!(readiness_probe(&pod, &c).is_err());
    }

    #[test]
    fn readiness_is_written_as_the_kubelet_writes_it() {
        // As kwok leaves a running pod: ready at once.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "server"}]},
            "status": {"phase": "Running", "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "ContainersReady", "status": "True"}],
              "containerStatuses": [{"name": "server", "image": "i", "imageID": "",
                "ready": true, "restartCount": 0, "state": {"running": {}}}]}
        }))
        .unwrap();
        let spec = pod.spec.clone().unwrap();
        let mut status = pod.status.clone().unwrap();
        let now: Timestamp = "2025-06-01T00:00:00Z".parse().unwrap();
        assert!(set_ready(&spec, &mut status, false, now));
        let condition = |s: &PodStatus, kind: &str| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == kind)
                .unwrap()
                .clone()
        };
        let ready = condition(&status, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [server]")
        );
        assert_eq!(ready.last_transition_time, Some(Time(now)));
        assert_eq!(condition(&status, "ContainersReady").status, "False");
        assert_eq!(condition(&status, "Initialized").status, "True");
        assert!(!status.container_statuses.as_ref().unwrap()[0].ready);
        // Nothing more to write the second time.
        let later: Timestamp = "2025-06-02T00:00:00Z".parse().unwrap();
        assert!(!set_ready(&spec, &mut status, false, later));
        assert_eq!(
            condition(&status, "Ready").last_transition_time,
            Some(Time(now))
        );
        assert!(set_ready(&spec, &mut status, true, later));
        let ready = condition(&status, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason), ("True", None));
        assert_eq!(ready.last_transition_time, Some(Time(later)));
        assert!(status.container_statuses.as_ref().unwrap()[0].ready);
    }

    #[test]
    fn a_status_without_containers_gets_one() {
        let spec: PodSpec =
            serde_json::from_value(json!({"containers": [{"name": "server", "image": "img"}]}))
                .unwrap();
        let mut status = PodStatus::default();
        let now = Timestamp::now();
        assert!(set_ready(&spec, &mut status, false, now));
        let container = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            (container.name.as_str(), container.image.as_str()),
            ("server", "img")
        );
        assert_eq!(status.conditions.as_ref().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn probes_pass_on_2xx_and_3xx_and_fail_otherwise() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in ["200 OK", "302 Found", "503 Service Unavailable"] {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /readyz HTTP/1.1\r\n"));
                let _ = conn
                    .write_all(format!("HTTP/1.1 {answer}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
            // Then accept and never answer.
            let (_conn, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let http = ProbeAction::Http {
            address,
            path: "/readyz".into(),
            headers: vec![],
        };
        let second = Duration::from_secs(1);
        assert_eq!(probe_once(&http, second).await, Ok(()));
        assert_eq!(probe_once(&http, second).await, Ok(()));
        assert_eq!(
            probe_once(&http, second).await,
            Err("GET /readyz: HTTP 503".into())
        );
        let silent = probe_once(&http, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(silent.contains("no answer"), "{silent}");
        // The listener still takes connections (into its backlog).
        assert_eq!(
            probe_once(&ProbeAction::Tcp { address }, second).await,
            Ok(())
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let refused = probe_once(&ProbeAction::Tcp { address: closed }, second)
            .await
            .unwrap_err();
        assert!(refused.contains("connecting"), "{refused}");
        let far = ProbeAction::Tcp {
            address: "192.0.2.1:80".parse().unwrap(),
        };
        assert!(
            probe_once(&far, second)
                .await
                .unwrap_err()
                .contains("not on loopback")
        );
    }

    #[test]
    fn an_exited_child_is_seen_before_it_is_waited_for() {
        assert!(!exited(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !exited(pid) {
            assert!(std::time::Instant::now() < deadline, "a zombie is exited");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait().unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!exited(sleeper.id()));
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}
