//! Init containers, as the kubelet runs them: before the pod's container, each
//! in order to completion, with the same volumes (so what one writes to an
//! emptyDir, such as `trainer fetch-model`'s model, the next and the main
//! container find), once per pod: a restarted main container does not run
//! them again ([`Progress`]).
//!
//! Each run is written to `status.initContainerStatuses` as the kubelet writes
//! it: the ones not started yet waiting (`PodInitializing`), the running one
//! `running`, the finished ones `terminated` (`Completed`, ready), the pod's
//! `Initialized` condition False until all have completed, and the main
//! container waiting `PodInitializing`, not ready. One that exits non-zero
//! fails the start ([`InitFailed`]): under `restartPolicy: Never` the pod
//! fails (phase Failed); otherwise its status is what `kubectl` shows as
//! `Init:CrashLoopBackOff` (waiting `CrashLoopBackOff`, `lastState.terminated`
//! `Error` with the exit code and termination message, one more
//! `restartCount`), and [`crate::runner::PodRunner`] starts the pod again
//! after its back-off, from the first init container that has not completed.
//! A pod deleted while one runs has it killed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;

use crate::probe::{set_ready, update_status};
use crate::replay::{Prepared, Replayer, Volumes, spawn, tail};

/// The most of a failed init container's log kept as its message (under
/// `FallbackToLogsOnError`).
const FALLBACK_LINES: usize = 20;

/// Which init containers of each pod (by UID) have completed, and how often
/// each has been restarted.
#[derive(Default)]
pub struct Progress(Mutex<BTreeMap<String, PodProgress>>);

#[derive(Default, Clone)]
struct PodProgress {
    completed: usize,
    restarts: BTreeMap<usize, i32>,
}

impl Progress {
    fn get(&self, uid: &str) -> PodProgress {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid).cloned().unwrap_or_default()
    }

    fn set(&self, uid: &str, progress: PodProgress) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(uid.to_string(), progress);
    }

    /// Whether every init container of `pod` has completed.
    pub fn done(&self, pod: &Pod) -> bool {
        let count = init_containers(pod).len();
        self.get(pod.metadata.uid.as_deref().unwrap_or_default())
            .completed
            >= count
    }
}

/// An init container exited non-zero: the pod's container does not start.
#[derive(Debug)]
pub struct InitFailed(pub String);

impl std::fmt::Display for InitFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InitFailed {}

fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
}

/// Run `pod`'s init containers that have not completed, in order, with its
/// `volumes` under `fs` and the pod's identity in `env`.
pub(crate) async fn run(
    replayer: &Replayer,
    pod: &Pod,
    volumes: &Volumes<'_>,
    fs: &Path,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let name = pod.name_any();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(replayer.client().clone(), volumes.namespace);
    let containers = init_containers(pod);
    let mut progress = replayer.init.get(&uid);
    let mut statuses: Vec<ContainerStatus> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let restarts = progress.restarts.get(&i).copied().unwrap_or(0);
            if i < progress.completed {
                status(c, restarts, completed(0, None, None, None), true)
            } else {
                status(c, restarts, waiting("PodInitializing", None), false)
            }
        })
        .collect();
    for (i, container) in containers.iter().enumerate().skip(progress.completed) {
        let termination = format!("termination-log-{}", container.name);
        let Prepared {
            program,
            argv,
            env,
            working_dir,
            note,
        } = replayer
            .prepare(pod, container, volumes, fs, env.clone(), &termination)
            .await
            .with_context(|| format!("init container {}", container.name))?;
        let log = volumes.root.join(format!("init-{}.log", container.name));
        let started = Timestamp::now();
        let mut child = spawn(&program, &argv, &env, &working_dir, &log, note.as_deref())
            .with_context(|| format!("starting init container {} of pod {name}", container.name))?;
        let restarts = progress.restarts.get(&i).copied().unwrap_or(0);
        statuses[i] = status(
            container,
            restarts,
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(started)),
                }),
                ..Default::default()
            },
            false,
        );
        write(&pods, &name, &uid, &statuses, None).await?;
        let code = wait(&mut child, &pods, &name).await?;
        let mut message =
            std::fs::read_to_string(volumes.root.join(&termination)).unwrap_or_default();
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        if message.trim().is_empty()
            && code != 0
            && container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
        {
            message = tail(&output, FALLBACK_LINES);
        }
        let message = (!message.trim().is_empty()).then(|| message.trim().to_string());
        let terminated = completed(code, Some(started), Some(Timestamp::now()), message.clone());
        if code == 0 {
            statuses[i] = status(container, restarts, terminated, true);
            progress.completed = i + 1;
            replayer.init.set(&uid, progress.clone());
            continue;
        }
        let never = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("Never");
        let why = format!(
            "init container {} exited with {code}{}",
            container.name,
            message.map_or_else(|| format!(": {}", tail(&output, 5)), |m| format!(": {m}"))
        );
        if never {
            statuses[i] = status(container, restarts, terminated, false);
            write(&pods, &name, &uid, &statuses, Some("Failed")).await?;
        } else {
            let mut failed = status(
                container,
                restarts + 1,
                waiting(
                    "CrashLoopBackOff",
                    Some(format!(
                        "back-off restarting failed container {} in pod {name}",
                        container.name
                    )),
                ),
                false,
            );
            failed.last_state = Some(terminated);
            statuses[i] = failed;
            progress.restarts.insert(i, restarts + 1);
            replayer.init.set(&uid, progress);
            write(&pods, &name, &uid, &statuses, None).await?;
        }
        return Err(InitFailed(why).into());
    }
    write(&pods, &name, &uid, &statuses, None).await?;
    Ok(())
}

/// Wait for the init process to exit; killed when the pod is deleted
/// meanwhile. Its exit code (128 + signal when killed by one).
async fn wait(
    child: &mut tokio::process::Child,
    pods: &Api<Pod>,
    name: &str,
) -> anyhow::Result<i32> {
    use std::os::unix::process::ExitStatusExt as _;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                return Ok(status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1));
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let deleted = match pods.get_opt(name).await {
            Ok(Some(pod)) => pod.metadata.deletion_timestamp.is_some(),
            Ok(None) => true,
            Err(_) => false,
        };
        if deleted {
            child.start_kill()?;
        }
    }
}

fn status(
    container: &Container,
    restarts: i32,
    state: ContainerState,
    done: bool,
) -> ContainerStatus {
    ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        ready: done,
        started: Some(state.running.is_some()),
        restart_count: restarts,
        state: Some(state),
        ..Default::default()
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

fn completed(
    code: i32,
    started: Option<Timestamp>,
    finished: Option<Timestamp>,
    message: Option<String>,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
            message,
            started_at: started.map(Time),
            finished_at: finished.map(Time),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Write `statuses` as the pod's `initContainerStatuses`, its `Initialized`
/// condition (True once every one has completed), and, until then, the main
/// container waiting `PodInitializing`, not ready; `phase` when given.
async fn write(
    pods: &Api<Pod>,
    name: &str,
    uid: &str,
    statuses: &[ContainerStatus],
    phase: Option<&str>,
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    update_status(pods, name, Some(uid), |spec, status| {
        apply(spec, status, statuses, phase, now);
        true
    })
    .await
    .with_context(|| format!("writing the init container statuses of pod {name}"))?;
    Ok(())
}

/// What [`write`] writes, on `status`.
fn apply(
    spec: &PodSpec,
    status: &mut PodStatus,
    statuses: &[ContainerStatus],
    phase: Option<&str>,
    now: Timestamp,
) {
    status.init_container_statuses = Some(statuses.to_vec());
    let pending: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let initialized = pending.is_empty();
    let condition = PodCondition {
        type_: "Initialized".into(),
        status: if initialized { "True" } else { "False" }.into(),
        reason: (!initialized).then(|| "ContainersNotInitialized".to_string()),
        message: (!initialized)
            .then(|| format!("containers with incomplete status: [{}]", pending.join(" "))),
        last_transition_time: Some(Time(now)),
        ..Default::default()
    };
    let conditions = status.conditions.get_or_insert_default();
    match conditions.iter_mut().find(|c| c.type_ == "Initialized") {
        Some(existing) if existing.status == condition.status => {
            existing.reason = condition.reason;
            existing.message = condition.message;
        }
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
    if !initialized {
        set_ready(spec, status, false, now);
        if let Some(main) = status
            .container_statuses
            .as_mut()
            .and_then(|c| c.first_mut())
        {
            main.state = Some(waiting("PodInitializing", None));
            main.started = Some(false);
        }
    }
    if let Some(phase) = phase {
        status.phase = Some(phase.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_every_init_container_completes_the_pod_is_not_initialized() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "initContainers": [{"name": "fetch-model"}, {"name": "second"}],
            "containers": [{"name": "server"}]
        }))
        .unwrap();
        let fetch = &spec.init_containers.as_ref().unwrap()[0];
        let second = &spec.init_containers.as_ref().unwrap()[1];
        let mut status = PodStatus::default();
        let statuses = vec![
            status_of(fetch, 0, completed(0, None, None, None), true),
            status_of(second, 1, waiting("CrashLoopBackOff", None), false),
        ];
        apply(&spec, &mut status, &statuses, None, Timestamp::now());
        let value = serde_json::to_value(&status).unwrap();
        let initialized = value["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Initialized")
            .unwrap();
        assert_eq!(initialized["status"], "False");
        assert_eq!(
            initialized["message"],
            "containers with incomplete status: [second]"
        );
        assert_eq!(
            value["containerStatuses"][0]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        assert_eq!(value["initContainerStatuses"][1]["restartCount"], 1);
        assert_eq!(
            value["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );

        let done = vec![
            statuses[0].clone(),
            status_of(second, 1, completed(0, None, None, None), true),
        ];
        apply(&spec, &mut status, &done, None, Timestamp::now());
        let value = serde_json::to_value(&status).unwrap();
        let initialized = value["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Initialized")
            .unwrap();
        assert_eq!(initialized["status"], "True");
        assert!(initialized.get("message").is_none());
    }

    fn status_of(
        c: &Container,
        restarts: i32,
        state: ContainerState,
        done: bool,
    ) -> ContainerStatus {
        status(c, restarts, state, done)
    }
}
