//! A kubelet for the pods of a namespace, or of all namespaces: [`PodRunner`]
//! replays every pod a label selector matches as it comes up, for as long as the
//! pod lives, as the kubelet would — Job pods once (`restartPolicy: Never`),
//! serving pods for as long as their Deployment keeps them.
//!
//! Every [`POLL`] it lists the pods of the selector and starts
//! ([`Replayer::start`]) each Running pod with a pod IP that it has not started
//! yet, with its readiness prober ([`crate::probe`]), so the pod turns Ready only
//! once its server answers its readiness probe. [`Replay::finish`](crate::replay::Replay::finish) then watches
//! the pod: deleting it (a scale-down, a rolling update, `kubectl delete`) runs
//! its `preStop` sleep, SIGTERM, and SIGKILL after the grace period; a process
//! that exits ends a `restartPolicy: Never` pod with phase Succeeded or Failed.
//! A process that exits under `restartPolicy: Always` is started again after a
//! back-off (1 s, doubling up to 10 s; a kubelet's starts at 10 s): its status
//! meanwhile says `CrashLoopBackOff`, not ready, one more `restartCount`. A pod
//! whose container names a program a local node does not run
//! ([`Unrunnable`]) is written waiting with reason
//! `ErrImagePull` and the reason in its message, as the kubelet reports an image
//! it cannot pull, and tried again after the back-off. So is a pod whose init
//! container failed ([`InitFailed`](crate::init::InitFailed)): its status says
//! `Init:CrashLoopBackOff` meanwhile, and the init containers that had not
//! completed run again.
//!
//! Callers read what happened from the records: [`PodRunner::pods`] (name,
//! address, start, restarts, readiness, last exit), [`PodRunner::exits`],
//! [`PodRunner::logs`] (every run of a pod, restarts included) and
//! [`PodRunner::errors`] (pods it could not start); with
//! [`Options::report`] each start, exit and error is also printed on stderr.
//! Dropping it kills every process at once (SIGKILL); [`PodRunner::stop`] does so
//! and waits until they are gone.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::probe::{Readiness, write_ready, write_unrunnable};
use crate::replay::{Exit, Replayer, Unrunnable, tail};

/// How often the pods of the selector are listed.
pub const POLL: Duration = Duration::from_millis(300);
/// The first back-off before a restart, and the most it doubles to.
pub const FIRST_BACK_OFF: Duration = Duration::from_secs(1);
pub const MAX_BACK_OFF: Duration = Duration::from_secs(10);
/// A process that ran this long before it exited restarts after the first
/// back-off again.
const BACK_OFF_RESET: Duration = Duration::from_secs(30);
/// How a [`PodRunner`] runs its pods.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long one process may run before it is killed.
    pub process_limit: Duration,
    /// Print each start, exit and error on stderr.
    pub report: bool,
}

impl Default for Options {
    /// Far past any test, silent.
    fn default() -> Options {
        Options {
            process_limit: Duration::from_secs(2 * 60 * 60),
            report: false,
        }
    }
}
/// The most errors kept.
const ERRORS_KEPT: usize = 100;

/// What is known of one pod a [`PodRunner`] replays.
#[derive(Debug, Clone)]
pub struct ServedPod {
    pub name: String,
    pub uid: String,
    /// Where the container's first declared port listens (`podIP:port`).
    pub address: Option<SocketAddr>,
    /// When its current (or last) process started.
    pub started: Instant,
    /// How many times its process exited and was started again.
    pub restarts: u32,
    /// Whether its process runs now.
    pub running: bool,
    /// Whether its status says ready: the readiness prober's last write (a
    /// container without a readiness probe is ready while it runs).
    pub ready: bool,
    /// Whether it is no longer replayed: the pod was deleted, finished, or could
    /// not be watched.
    pub done: bool,
    /// How its last process ended.
    pub last_exit: Option<Exit>,
}

struct Record {
    pod: ServedPod,
    readiness: Option<Readiness>,
    log_file: Option<PathBuf>,
    previous_logs: String,
}

impl Record {
    /// A pod first seen: not started yet, no readiness, no logs.
    fn new(name: String, uid: String) -> Record {
        Record {
            pod: ServedPod {
                name,
                uid,
                address: None,
                started: Instant::now(),
                restarts: 0,
                running: false,
                ready: false,
                done: false,
                last_exit: None,
            },
            readiness: None,
            log_file: None,
            previous_logs: String::new(),
        }
    }

    fn view(&self) -> ServedPod {
        let mut pod = self.pod.clone();
        pod.ready = pod.running && self.readiness.as_ref().is_none_or(|r| r.is_ready());
        pod
    }
}

#[derive(Default)]
struct State {
    pods: Vec<Record>,
    exits: Vec<Exit>,
    errors: Vec<String>,
    report: bool,
}

impl State {
    fn error(&mut self, error: String) {
        if self.errors.last() != Some(&error) && self.errors.len() < ERRORS_KEPT {
            self.report(&format!("error: {error}"));
            self.errors.push(error);
        }
    }

    fn report(&self, line: &str) {
        if self.report {
            eprintln!("local-node: {line}");
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Replays every pod of a selector for as long as it lives; see the module
/// documentation.
pub struct PodRunner {
    state: Shared,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    namespace: Option<String>,
    selector: String,
}

impl PodRunner {
    /// Start replaying the pods of `namespace` that `selector` (a label
    /// selector, `k=v,...`) matches. Needs a tokio runtime.
    pub fn start(replayer: Arc<Replayer>, namespace: &str, selector: &str) -> PodRunner {
        PodRunner::start_with(replayer, Some(namespace), selector, Options::default())
    }

    /// Start replaying the pods of `namespace` (every namespace when `None`)
    /// that `selector` matches (every pod when empty), with `options`.
    pub fn start_with(
        replayer: Arc<Replayer>,
        namespace: Option<&str>,
        selector: &str,
        options: Options,
    ) -> PodRunner {
        let state = Shared::default();
        lock(&state).report = options.report;
        let (shutdown, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(
            replayer,
            namespace.map(str::to_string),
            selector.to_string(),
            options.process_limit,
            state.clone(),
            stopped,
        ));
        PodRunner {
            state,
            shutdown,
            task: Some(task),
            namespace: namespace.map(str::to_string),
            selector: selector.to_string(),
        }
    }

    /// Every pod started so far, in the order first started.
    pub fn pods(&self) -> Vec<ServedPod> {
        lock(&self.state).pods.iter().map(Record::view).collect()
    }

    /// The pods whose process runs now.
    pub fn running(&self) -> Vec<ServedPod> {
        self.pods().into_iter().filter(|p| p.running).collect()
    }

    /// The pods whose process runs and whose status says ready.
    pub fn ready(&self) -> Vec<ServedPod> {
        self.pods().into_iter().filter(|p| p.ready).collect()
    }

    /// Every process exit so far, in order (a restarted pod's each time).
    pub fn exits(&self) -> Vec<Exit> {
        lock(&self.state).exits.clone()
    }

    /// Pods it could not start or follow, with why (each distinct in a row once).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.state).errors.clone()
    }

    /// The output of every run of `pod`, oldest first; empty for a pod it did
    /// not start.
    pub fn logs(&self, pod: &str) -> String {
        let state = lock(&self.state);
        let Some(record) = state.pods.iter().rev().find(|r| r.pod.name == pod) else {
            return String::new();
        };
        let mut logs = record.previous_logs.clone();
        if let Some(file) = &record.log_file {
            logs.push_str(&std::fs::read_to_string(file).unwrap_or_default());
        }
        logs
    }

    /// Wait up to `timeout` until at least `count` pods run and are ready;
    /// returns them. The error describes every pod, with its log's tail.
    pub async fn wait_ready(
        &self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ServedPod>> {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = self.ready();
            if ready.len() >= count {
                return Ok(ready);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} of {count} pods labelled {} in {} ready after {timeout:?}\n{}",
                    ready.len(),
                    self.selector,
                    self.namespace.as_deref().unwrap_or("every namespace"),
                    self.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every pod's state, the tail of its log, and the errors: for a failing
    /// test's message.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for pod in self.pods() {
            let _ = writeln!(
                text,
                "pod {} at {}: {}, {}, {} restarts{}{}",
                pod.name,
                pod.address
                    .map_or_else(|| "-".to_string(), |a| a.to_string()),
                if pod.running {
                    "running"
                } else {
                    "not running"
                },
                if pod.ready { "ready" } else { "not ready" },
                pod.restarts,
                pod.last_exit
                    .as_ref()
                    .map_or_else(String::new, |e| format!(", last exit {}", e.code)),
                if pod.done { ", done" } else { "" },
            );
            let log = tail(&self.logs(&pod.name), 10);
            if !log.is_empty() {
                let _ = writeln!(text, "  {}", log.replace('\n', "\n  "));
            }
        }
        for error in self.errors() {
            let _ = writeln!(text, "error: {error}");
        }
        if text.is_empty() {
            text.push_str("no pod started");
        }
        text
    }

    /// Kill every process (SIGKILL) and wait until all are gone; returns every
    /// exit recorded before.
    pub async fn stop(mut self) -> Vec<Exit> {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.exits()
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Whether the kubelet would run `pod` now: Running, with a pod IP, not being
/// deleted.
pub fn runnable(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| !ip.is_empty())
}

async fn supervise(
    replayer: Arc<Replayer>,
    namespace: Option<String>,
    selector: String,
    process_limit: Duration,
    state: Shared,
    mut stopped: watch::Receiver<bool>,
) {
    let client = replayer.client().clone();
    let api: Api<Pod> = match &namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let mut tasks = JoinSet::new();
    let mut known = BTreeSet::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => {
                tasks.shutdown().await;
                return;
            }
        }
        while tasks.try_join_next().is_some() {}
        let pods = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(err) => {
                lock(&state).error(format!("listing pods {selector}: {err}"));
                continue;
            }
        };
        for pod in pods {
            let uid = pod.uid().unwrap_or_default();
            if !runnable(&pod) || !known.insert(uid.clone()) {
                continue;
            }
            let index = {
                let mut state = lock(&state);
                state.pods.push(Record::new(pod.name_any(), uid));
                state.pods.len() - 1
            };
            let pods = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
            tasks.spawn(serve(
                replayer.clone(),
                pods,
                pod,
                process_limit,
                state.clone(),
                index,
            ));
        }
    }
}

/// Run `pod` until it is deleted or finished, restarting its process.
async fn serve(
    replayer: Arc<Replayer>,
    api: Api<Pod>,
    mut pod: Pod,
    process_limit: Duration,
    state: Shared,
    index: usize,
) {
    let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let pod_name = pod.name_any();
    let uid = pod.uid();
    let port = first_port(&pod);
    let mut back_off = FIRST_BACK_OFF;
    let done = |state: &Shared| lock(state).pods[index].pod.done = true;
    loop {
        let began = Instant::now();
        match replayer.start(&pod).await {
            Ok(replay) => {
                {
                    let mut state = lock(&state);
                    let record = &mut state.pods[index];
                    record.pod.running = true;
                    record.pod.started = began;
                    record.pod.address = port.as_deref().and_then(|p| replay.address(p));
                    record.readiness = replay.readiness();
                    record.log_file = Some(replay.log_file().to_path_buf());
                    state.report(&format!(
                        "pod {name} started (log: {})",
                        replay.log_file().display()
                    ));
                }
                let finished = replay.finish(process_limit).await;
                let mut state = lock(&state);
                let state = &mut *state;
                let record = &mut state.pods[index];
                record.pod.running = false;
                if let Some(file) = record.log_file.take() {
                    let log = match &finished {
                        Ok(exit) => exit.log.clone(),
                        Err(_) => std::fs::read_to_string(file).unwrap_or_default(),
                    };
                    record.previous_logs.push_str(&log);
                }
                match finished {
                    Ok(exit) => {
                        let restart = exit.restart;
                        let line = format!(
                            "pod {name} exited with {}{}",
                            exit.code,
                            if restart { ", restarting" } else { "" }
                        );
                        record.pod.last_exit = Some(exit.clone());
                        if restart {
                            record.pod.restarts += 1;
                        } else {
                            record.pod.done = true;
                        }
                        state.exits.push(exit);
                        state.report(&line);
                        if !restart {
                            return;
                        }
                    }
                    Err(err) => {
                        record.pod.done = true;
                        state.error(format!("pod {name}: {err:#}"));
                        return;
                    }
                }
                if began.elapsed() >= BACK_OFF_RESET {
                    back_off = FIRST_BACK_OFF;
                }
            }
            Err(err) => {
                lock(&state).error(format!("pod {name}: {err:#}"));
                // Its container does not run: not ready, whatever kwok wrote, and
                // why, where the kubelet would say so.
                match err.downcast_ref::<Unrunnable>() {
                    Some(Unrunnable(why)) => {
                        let _ =
                            write_unrunnable(&api, &pod_name, uid.as_deref(), "ErrImagePull", why)
                                .await;
                    }
                    None => {
                        let _ = write_ready(&api, &pod_name, uid.as_deref(), false).await;
                    }
                }
            }
        }
        tokio::time::sleep(back_off).await;
        back_off = (back_off * 2).min(MAX_BACK_OFF);
        match api.get_opt(&pod_name).await {
            Ok(Some(now)) if now.uid() == uid && runnable(&now) => pod = now,
            Ok(_) => {
                done(&state);
                return;
            }
            Err(err) => {
                // Try again with the pod as last seen.
                lock(&state).error(format!("reading pod {name}: {err}"));
            }
        }
    }
}

/// The container's first declared port, by number.
fn first_port(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .ports
        .as_ref()?
        .first()
        .map(|p| p.container_port.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn only_running_pods_with_an_ip_that_are_not_deleted_run() {
        let running = json!({"metadata": {"name": "a"},
            "status": {"phase": "Running", "podIP": "127.244.0.3"}});
        assert!(runnable(&pod(running.clone())));
        let mut deleted = running.clone();
        deleted["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        assert!(!runnable(&pod(deleted)));
        assert!(!runnable(&pod(
            json!({"metadata": {"name": "b"}, "status": {"phase": "Pending", "podIP": "127.244.0.4"}})
        )));
        assert!(!runnable(&pod(
            json!({"metadata": {"name": "c"}, "status": {"phase": "Running"}})
        )));
    }

    #[test]
    fn the_address_is_the_first_declared_port() {
        let p = pod(json!({"metadata": {"name": "a"}, "spec": {"containers": [
            {"name": "server", "ports": [{"name": "http", "containerPort": 8000},
                                          {"name": "metrics", "containerPort": 9090}]}
        ]}}));
        assert_eq!(first_port(&p).as_deref(), Some("8000"));
        let none = pod(json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "x"}]}}));
        assert_eq!(first_port(&none), None);
    }

    #[test]
    fn a_record_is_ready_only_while_running() {
        let mut record = Record::new("a".into(), "u".into());
        record.pod.running = true;
        // No readiness probe: ready while it runs.
        assert!(record.view().ready);
        record.pod.running = false;
        assert!(!record.view().ready);
    }
}
