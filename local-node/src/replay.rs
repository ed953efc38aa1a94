//! Pod replay: the kubelet's part for pods the operator created. Under kwok a pod
//! is only an API object; [`Replayer::start`] runs its container for real as a
//! local process of the `trainer` or `server` binary, and [`Replay::finish`]
//! writes the pod's status afterwards as the kubelet would.
//!
//! The pod's init containers run first, in order, to completion ([`crate::init`]),
//! once per pod, with the same volumes.
//!
//! What the process gets, from the pod spec:
//! - the container's `command` and `args`, `trainer` and `server` being the binaries
//!   the [`Programs`] name (vLLM's OpenAI server runs as the `server` binary, a
//!   stand-in with its flags translated: [`crate::vllm_standin`]); a container that declares ports (`ports`) listens on the pod's
//!   own IP, which kwok gives from a loopback range (`--host 0.0.0.0` becomes
//!   `status.podIP`), at the declared port, so the operator and its users reach it
//!   at `podIP:port` exactly as in a cluster; [`Replay::address`] tells where
//!   that is;
//! - its `env`: plain values; `secretKeyRef` and `configMapKeyRef` read as admin
//!   (an optional reference to a missing Secret, ConfigMap or key is left out, a
//!   required one is an error, as the kubelet's `CreateContainerConfigError`);
//!   downward-API `fieldRef`s (`metadata.name|namespace|uid`, `metadata.labels[..]`,
//!   `metadata.annotations[..]`, `spec.nodeName`, `spec.serviceAccountName`,
//!   `status.podIP`, `status.hostIP`). Nothing of the node's own environment but
//!   `PATH` is passed on;
//! - its volumes, under a per-pod directory standing for the container's root
//!   filesystem (`<root>/fs`): ConfigMap and Secret volumes are materialised as
//!   files (their `items`, else every key; a `subPath` mount is that one file),
//!   emptyDirs are fresh directories, and PersistentVolumeClaims are directories
//!   per claim and namespace, shared by every pod of the [`Replayer`]; while the
//!   process runs, ConfigMap volumes follow their ConfigMap as the kubelet's do
//!   ([`crate::config_sync`]);
//! - paths: an absolute path in an argument, an environment value or the
//!   `workingDir` that is a mount path, lies under one, or is a parent of one
//!   (`/etc/llmops/sources` for mounts at `/etc/llmops/sources/<i>`) becomes
//!   `<root>/fs/<path>`; so `--resource /etc/llmops/resource.yaml`,
//!   `HOME=/work`, `TMPDIR=/tmp`, `LLMOPS_PVC_ROOT=/mnt/pvc` and
//!   `LLMOPS_SOURCES_DIR=/etc/llmops/sources` point at the materialised files.
//!   URIs (`file:///...` in `LLMOPS_OUTPUT_URI`) are left alone: the `file://`
//!   store is a directory of this machine, as a shared volume would be;
//! - the termination message file: `LLMOPS_TERMINATION_LOG=<root>/termination-log`
//!   (the trainer writes there instead of `/dev/termination-log`);
//! - the pod's ServiceAccount identity: `KUBERNETES_SERVICE_HOST`/`PORT` of the
//!   apiserver and `KUBECONFIG` naming a kubeconfig holding a TokenRequest token of
//!   the pod's `serviceAccountName` (the trainer's `Client::try_default()` reads
//!   `KUBECONFIG` first), so its status writes are authorised by the per-object
//!   Role the operator created, for real.
//!
//! While the process runs, a pod that gets a `deletionTimestamp` (deleted, evicted,
//! its Job suspended) makes the replay send SIGTERM, and SIGKILL after the pod's
//! grace period, as the kubelet does. A caller may [`Replay::pause`] the process
//! (SIGSTOP) to hold it mid-run while it arranges such a stop. When the process exits, the pod's status
//! becomes what the kubelet writes for a finished `restartPolicy: Never` container:
//! phase Succeeded or Failed, Ready/ContainersReady False, and
//! `containerStatuses[0].state.terminated {exitCode, reason: Completed|Error,
//! message}` with the termination file's contents (or, under
//! `FallbackToLogsOnError`, the log's tail when the file is empty and it failed).
//! kwok's stages leave a pod that is no longer Pending alone, so nothing overwrites it.
//!
//! Readiness is the kubelet's too ([`crate::probe`]): kwok may mark a pod Ready
//! the moment it runs, but a container with a `readinessProbe` is written not
//! ready (`Ready` and `ContainersReady` False, `containerStatuses[0].ready=false`)
//! first thing in [`Replayer::start`]; once its process runs, a [`Prober`] probes
//! it every `periodSeconds` (`httpGet` at `podIP:<port, by name or number>`, with
//! `timeoutSeconds`) and writes it ready or not after `successThreshold` or
//! `failureThreshold` results in a row, by PUT on pods/status retried on
//! conflicts. The prober stops when the [`Replay`] is dropped, when the process
//! exits, and when [`Replay::finish`] writes the final status;
//! [`Replay::readiness`] tells what it last wrote.
//!
//! Stopping a pod follows the kubelet as well: a `preStop` `sleep` runs (within
//! the grace period) before SIGTERM. A container whose `restartPolicy` is
//! `Always` (or `OnFailure`, after a failure) and whose pod is not being deleted
//! is not finished when its process exits: [`Replay::finish`] then writes what
//! the kubelet writes before restarting it (phase unchanged, `restartCount` + 1,
//! `lastState.terminated`, `state.waiting` `CrashLoopBackOff`, not ready) and
//! says so in [`Exit::restart`]; starting the pod again ([`Replayer::start`])
//! keeps its volumes and writes the container running.
//! [`crate::runner::PodRunner`] does all this for every pod of a selector.
//!
//! kwok gives a deleted pod's IP to the next pod at once, while the replay of
//! the deleted pod may still be draining on it; in a cluster the IP would not be
//! reused before the old sandbox is gone. So a start first waits (up to two
//! minutes) until nothing listens on the pod's addresses any more.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, EnvVar, KeyToPath, Pod, PodCondition, Secret, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

use crate::config_sync::{self, SyncTask, Synced};
use crate::probe::{Prober, Readiness, readiness_probe, write_ready, write_started};
use crate::token::write_token_kubeconfig;
use crate::vllm_standin;
use crate::{Node, Programs};

/// How long a pod's start waits for its addresses to be released by the
/// replay of a deleted pod that had the same IP (see [`wait_until_free`]).
const PORT_RELEASE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the kubelet keeps of a failed container's log as its message.
const FALLBACK_LINES: usize = 80;
const MESSAGE_LIMIT: usize = 4096;

/// Replays pods; owns the directories of their filesystems
/// (`<dir>/<namespace>/<pod>`).
pub struct Replayer {
    node: Node,
    client: Client,
    programs: Programs,
    dir: PathBuf,
    /// The directory when it is a temporary one, removed on drop.
    _temporary: Option<tempfile::TempDir>,
    extra_env: Vec<(String, String)>,
    /// The pods whose init containers have completed.
    pub(crate) init: crate::init::Progress,
}

/// What materialising a pod's volumes needs.
pub(crate) struct Volumes<'a> {
    pub pod: &'a Pod,
    pub namespace: &'a str,
    pub root: &'a Path,
    /// The ServiceAccount token, for projected token volumes.
    pub token: Option<&'a str>,
}

/// A container's process, ready to start ([`Replayer::prepare`]).
pub(crate) struct Prepared {
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    /// A first line for the log: what runs instead of the container's command.
    pub note: Option<String>,
}

/// Start `program` with only `env` (and the node's `PATH`), its output to `log`
/// after `note`.
pub(crate) fn spawn(
    program: &Path,
    argv: &[String],
    env: &BTreeMap<String, String>,
    working_dir: &Path,
    log: &Path,
    note: Option<&str>,
) -> anyhow::Result<tokio::process::Child> {
    let mut out = std::fs::File::create(log)?;
    if let Some(note) = note {
        use std::io::Write as _;
        writeln!(out, "{note}")?;
    }
    let mut command = tokio::process::Command::new(program);
    command
        .args(argv)
        .env_clear()
        .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
        .envs(env)
        .current_dir(working_dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    Ok(command.spawn()?)
}

/// A replayed pod whose process runs (or ran).
pub struct Replay {
    client: Client,
    pod: Pod,
    child: tokio::process::Child,
    root: PathBuf,
    log: PathBuf,
    started: Timestamp,
    /// Container port name (or number) → the pod address it listens on.
    ports: BTreeMap<String, SocketAddr>,
    fallback_to_logs: bool,
    /// The readiness prober, for a container with a readiness probe.
    prober: Option<Prober>,
    /// Keeps the ConfigMap volumes current while the process runs.
    config_sync: Option<SyncTask>,
}

/// A pod whose container a local node cannot run: its command names a program
/// other than `trainer` or `server`, or one that is not built. The kubelet's
/// counterpart is an image it cannot pull.
#[derive(Debug)]
pub struct Unrunnable(pub String);

impl std::fmt::Display for Unrunnable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unrunnable {}

/// How a replayed process ended.
#[derive(Debug, Clone)]
pub struct Exit {
    /// The pod's name.
    pub pod: String,
    /// Exit status (128 + signal when killed by one).
    pub code: i32,
    /// The termination message written to the pod's status.
    pub message: String,
    /// The process's stdout and stderr.
    pub log: String,
    /// Whether the pod still existed to have its status written.
    pub status_written: bool,
    /// Whether the kubelet would start the container again (`restartPolicy`
    /// `Always`, or `OnFailure` after a failure, and the pod not being deleted):
    /// the status then says it waits to restart rather than a final phase.
    pub restart: bool,
}

impl Replayer {
    /// A replayer of `node`'s pods with their filesystems in a temporary
    /// directory.
    pub fn new(node: Node, programs: Programs) -> anyhow::Result<Replayer> {
        let temporary = tempfile::Builder::new()
            .prefix("llmops-replay-")
            .tempdir()?;
        let mut replayer = Replayer::in_dir(node, programs, temporary.path());
        replayer._temporary = Some(temporary);
        Ok(replayer)
    }

    /// A replayer of `node`'s pods with their filesystems, logs and termination
    /// messages kept under `dir`.
    pub fn in_dir(node: Node, programs: Programs, dir: &Path) -> Replayer {
        Replayer {
            client: node.client().clone(),
            node,
            programs,
            dir: dir.to_path_buf(),
            _temporary: None,
            extra_env: Vec::new(),
            init: crate::init::Progress::default(),
        }
    }

    /// Also set `name=value` in every replayed process, over the pod's own value:
    /// for observing, such as `RUST_LOG`, or for what a cluster's nodes give
    /// every pod, such as `HF_ENDPOINT` for the route to a Hub mirror.
    pub fn with_env(mut self, name: &str, value: &str) -> Replayer {
        self.extra_env.push((name.to_string(), value.to_string()));
        self
    }

    /// The admin client the replayer reads and writes pods with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The pod in `namespace` matching `selector` that kwok reports Running and
    /// that is not being deleted; waits up to `timeout` for exactly one.
    pub async fn running_pod(
        &self,
        namespace: &str,
        selector: &str,
        timeout: Duration,
    ) -> anyhow::Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let deadline = Instant::now() + timeout;
        loop {
            let list = pods.list(&ListParams::default().labels(selector)).await;
            let found = match list {
                Ok(list) => {
                    let running: Vec<Pod> = list
                        .items
                        .into_iter()
                        .filter(|p| {
                            p.metadata.deletion_timestamp.is_none()
                                && phase(p) == "Running"
                                && p.status
                                    .as_ref()
                                    .is_some_and(|s| s.container_statuses.is_some())
                        })
                        .collect();
                    match <[Pod; 1]>::try_from(running) {
                        Ok([pod]) => return Ok(pod),
                        Err(found) => format!("{} such pods", found.len()),
                    }
                }
                Err(err) => format!("listing pods: {err}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for a Running pod labelled {selector} in {namespace}: {found}"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Start the pod's (single) container as a local process.
    pub async fn start(&self, pod: &Pod) -> anyhow::Result<Replay> {
        let name = pod.name_any();
        let namespace = pod.namespace().context("the pod has no namespace")?;
        let spec = pod.spec.as_ref().context("the pod has no spec")?;
        let [container] = spec.containers.as_slice() else {
            bail!(
                "pod {name} has {} containers; replay runs one",
                spec.containers.len()
            );
        };
        let probe = readiness_probe(pod, container)?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        if probe.is_some() {
            // Not ready from the start, whatever kwok wrote, however long the
            // start takes.
            write_ready(&pods, &name, pod.metadata.uid.as_deref(), false)
                .await
                .with_context(|| format!("writing pod {name} not ready"))?;
        }
        let root = self.dir.join(&namespace).join(&name);
        let fs = root.join("fs");
        std::fs::create_dir_all(&fs)?;

        // The ServiceAccount's identity first: projected token volumes need it.
        let mut env = BTreeMap::new();
        let mut token = None;
        if let Some(account) = spec.service_account_name.as_deref()
            && spec.automount_service_account_token != Some(false)
        {
            let kubeconfig = root.join("kubeconfig");
            token =
                Some(write_token_kubeconfig(&self.node, &namespace, account, &kubeconfig).await?);
            let (host, port) = self.node.apiserver()?;
            env.insert("KUBERNETES_SERVICE_HOST".to_string(), host);
            env.insert("KUBERNETES_SERVICE_PORT".to_string(), port);
            env.insert("KUBECONFIG".to_string(), kubeconfig.display().to_string());
        }
        let volumes = Volumes {
            pod,
            namespace: &namespace,
            root: &root,
            token: token.as_deref(),
        };
        // Init containers first, once per pod, as the kubelet runs them once
        // per sandbox (a restarted main container does not run them again).
        if spec.init_containers.iter().flatten().next().is_some() && !self.init.done(pod) {
            crate::init::run(self, pod, &volumes, &fs, &env).await?;
        }
        let Prepared {
            program,
            mut argv,
            env,
            working_dir,
            note,
        } = self
            .prepare(pod, container, &volumes, &fs, env, "termination-log")
            .await?;
        let ports = pod_ports(pod, container, &mut argv)?;
        wait_until_free(&name, ports.values(), PORT_RELEASE_TIMEOUT).await;

        let log = root.join("container.log");
        let child = spawn(&program, &argv, &env, &working_dir, &log, note.as_deref())
            .with_context(|| format!("starting {} for pod {name}", program.display()))?;
        let started = Timestamp::now();
        // As the kubelet: a restarted container is running again, and one with a
        // readiness probe is not ready until the probe passes.
        let restarted = pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .next()
            .and_then(|c| c.state.as_ref())
            .is_none_or(|s| s.running.is_none());
        if probe.is_some() || restarted {
            write_started(
                &pods,
                &name,
                pod.metadata.uid.as_deref(),
                started,
                child.id(),
                probe.is_none(),
            )
            .await
            .with_context(|| format!("writing pod {name} started"))?;
        }
        let prober = probe.map(|spec| Prober::spawn(pods, pod, spec, child.id()));
        let config_sync = config_sync::spawn(
            self.client.clone(),
            namespace.clone(),
            synced_volumes(pod, container, &root),
        );
        Ok(Replay {
            client: self.client.clone(),
            pod: pod.clone(),
            child,
            root,
            log,
            started,
            ports,
            fallback_to_logs: container.termination_message_policy.as_deref()
                == Some("FallbackToLogsOnError"),
            prober,
            config_sync,
        })
    }

    /// What `container`'s process gets: its program (a vLLM command becomes
    /// the [`vllm_standin`] server), its arguments and environment with paths
    /// under `fs`, its volumes materialised, and a fresh termination message
    /// file `<root>/<termination>`.
    pub(crate) async fn prepare(
        &self,
        pod: &Pod,
        container: &Container,
        volumes: &Volumes<'_>,
        fs: &Path,
        mut env: BTreeMap<String, String>,
        termination: &str,
    ) -> anyhow::Result<Prepared> {
        let name = pod.name_any();
        let mounts = self.materialise_volumes(volumes, container, fs).await?;
        let rewrite = |value: &str| rewrite_path(value, &mounts, fs);

        let command = container.command.clone().unwrap_or_default();
        let args = container.args.clone().unwrap_or_default();
        let mut argv: Vec<String> = command.into_iter().chain(args).collect();
        if argv.is_empty() {
            bail!(
                "pod {name}: container {} has no command or args (the image's entrypoint is unknown)",
                container.name
            );
        }
        let mut stand_in = None;
        let mut note = None;
        let program = if let Some(vllm) = vllm_standin::vllm_args(&argv) {
            let translated = vllm_standin::translate(&vllm, container)
                .with_context(|| format!("pod {name}, container {}", container.name))?;
            note = Some(format!(
                "local-node: vLLM stand-in: `{}` runs as `server {}` (vLLM cannot run on a local node)",
                argv.join(" "),
                translated.args.join(" ")
            ));
            argv = translated.args.clone();
            stand_in = Some(translated);
            self.programs.server.clone()
        } else {
            match argv.remove(0).as_str() {
                "trainer" => self.programs.trainer.clone(),
                "server" => self.programs.server.clone(),
                other => {
                    return Err(Unrunnable(format!(
                        "pod {name} runs {other:?}; a local node runs only `trainer` and `server` (and vLLM's OpenAI server as the `server` stand-in)"
                    ))
                    .into());
                }
            }
        };
        if !program.exists() {
            return Err(Unrunnable(format!(
                "pod {name} runs {}, which is not built (cargo build -p llmops-trainer -p llmops-server)",
                program.display()
            ))
            .into());
        }
        let argv: Vec<String> = argv.iter().map(|a| rewrite(a)).collect();

        let namespace = volumes.namespace;
        for var in container.env.iter().flatten() {
            if let Some(value) = self.env_value(pod, namespace, var).await? {
                env.insert(var.name.clone(), rewrite(&value));
            }
        }
        if let Some(stand_in) = stand_in {
            for (vllm, server) in vllm_standin::ENV {
                if let Some(value) = env.get(vllm).cloned() {
                    env.insert(server.to_string(), value);
                }
            }
            env.extend(stand_in.env);
        }
        let termination = volumes.root.join(termination);
        std::fs::write(&termination, "")?;
        env.entry(llmops_contract::env::TERMINATION_LOG.into())
            .or_insert_with(|| termination.display().to_string());
        env.extend(self.extra_env.iter().cloned());
        let working_dir = container
            .working_dir
            .as_deref()
            .map(|d| PathBuf::from(rewrite(d)))
            .unwrap_or_else(|| fs.to_path_buf());
        std::fs::create_dir_all(&working_dir)?;
        Ok(Prepared {
            program,
            argv,
            env,
            working_dir,
            note,
        })
    }

    /// Materialise the volumes the container mounts; returns mount path → host path.
    async fn materialise_volumes(
        &self,
        at: &Volumes<'_>,
        container: &Container,
        fs: &Path,
    ) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let volumes: BTreeMap<&str, &Volume> = at
            .pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .map(|v| (v.name.as_str(), v))
            .collect();
        let mut materialised: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = volumes
                .get(mount.name.as_str())
                .with_context(|| format!("mount of an undefined volume {}", mount.name))?;
            let source = match materialised.get(&volume.name) {
                Some(path) => path.clone(),
                None => {
                    let path = self.materialise(volume, at).await?;
                    materialised.insert(volume.name.clone(), path.clone());
                    path
                }
            };
            let source = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => source.join(sub),
                None => source,
            };
            let target = fs.join(mount.mount_path.trim_start_matches('/'));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // A restarted container finds the links of its previous run.
            if target.symlink_metadata().is_ok_and(|m| m.is_symlink()) {
                std::fs::remove_file(&target)?;
            }
            symlink(&source, &target)
                .with_context(|| format!("linking {} to {}", target.display(), source.display()))?;
            mounts.push((mount.mount_path.trim_end_matches('/').to_string(), target));
        }
        Ok(mounts)
    }

    async fn materialise(&self, volume: &Volume, at: &Volumes<'_>) -> anyhow::Result<PathBuf> {
        let namespace = at.namespace;
        let dir = at.root.join("volumes").join(&volume.name);
        if let Some(source) = &volume.config_map {
            let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
            let data = match maps.get_opt(&source.name).await? {
                Some(cm) => cm.data.unwrap_or_default(),
                None if source.optional == Some(true) => BTreeMap::new(),
                None => bail!(
                    "ConfigMap {} of volume {} not found",
                    source.name,
                    volume.name
                ),
            };
            write_keys(&dir, &data, source.items.as_deref(), &volume.name)?;
        } else if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let data = match secrets.get_opt(&name).await? {
                Some(secret) => secret_strings(&secret),
                None if source.optional == Some(true) => BTreeMap::new(),
                None => bail!("Secret {name} of volume {} not found", volume.name),
            };
            write_keys(&dir, &data, source.items.as_deref(), &volume.name)?;
        } else if let Some(projected) = &volume.projected {
            std::fs::create_dir_all(&dir)?;
            for source in projected.sources.iter().flatten() {
                if let Some(token) = &source.service_account_token {
                    let value = at.token.with_context(|| {
                        format!("volume {}: a token, but no ServiceAccount", volume.name)
                    })?;
                    std::fs::write(dir.join(&token.path), value)?;
                } else if let Some(cm) = &source.config_map {
                    let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                    let data = match maps.get_opt(&cm.name).await? {
                        Some(found) => found.data.unwrap_or_default(),
                        None if cm.optional == Some(true) => BTreeMap::new(),
                        None => bail!("ConfigMap {} of volume {} not found", cm.name, volume.name),
                    };
                    write_keys(&dir, &data, cm.items.as_deref(), &volume.name)?;
                } else if let Some(downward) = &source.downward_api {
                    for item in downward.items.iter().flatten() {
                        let field = item.field_ref.as_ref().with_context(|| {
                            format!("volume {}: only fieldRef downward items", volume.name)
                        })?;
                        let value = field_value(at.pod, &field.field_path)?;
                        std::fs::write(dir.join(&item.path), value)?;
                    }
                } else {
                    bail!(
                        "volume {}: a projection replay does not support",
                        volume.name
                    );
                }
            }
        } else if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&dir)?;
        } else if let Some(claim) = &volume.persistent_volume_claim {
            // Shared by every pod of the namespace; `.pvc` is no namespace's name.
            let dir = self
                .dir
                .join(".pvc")
                .join(namespace)
                .join(&claim.claim_name);
            std::fs::create_dir_all(&dir)?;
            return Ok(dir);
        } else {
            bail!(
                "volume {} is of a kind replay does not support",
                volume.name
            );
        }
        Ok(dir)
    }

    /// The value of one environment variable; `None` for an optional reference
    /// to something absent.
    async fn env_value(
        &self,
        pod: &Pod,
        namespace: &str,
        var: &EnvVar,
    ) -> anyhow::Result<Option<String>> {
        let Some(from) = &var.value_from else {
            return Ok(Some(var.value.clone().unwrap_or_default()));
        };
        if let Some(selector) = &from.secret_key_ref {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let value = secrets
                .get_opt(&selector.name)
                .await?
                .and_then(|s| secret_strings(&s).remove(&selector.key));
            return match value {
                Some(value) => Ok(Some(value)),
                None if selector.optional == Some(true) => Ok(None),
                None => bail!(
                    "{}: key {} of Secret {} not found",
                    var.name,
                    selector.key,
                    selector.name
                ),
            };
        }
        if let Some(selector) = &from.config_map_key_ref {
            let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
            let value = maps
                .get_opt(&selector.name)
                .await?
                .and_then(|cm| cm.data?.remove(&selector.key));
            return match value {
                Some(value) => Ok(Some(value)),
                None if selector.optional == Some(true) => Ok(None),
                None => bail!(
                    "{}: key {} of ConfigMap {} not found",
                    var.name,
                    selector.key,
                    selector.name
                ),
            };
        }
        if let Some(field) = &from.field_ref {
            return field_value(pod, &field.field_path)
                .map(Some)
                .with_context(|| format!("{}: fieldRef {}", var.name, field.field_path));
        }
        bail!("{}: replay does not support this valueFrom", var.name)
    }
}

impl Replay {
    /// The pod being replayed.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// The directory standing for the container's root filesystem.
    pub fn root(&self) -> PathBuf {
        self.root.join("fs")
    }

    /// Where the container's port `name` (or number) listens: `podIP:port`.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        self.ports.get(name).copied()
    }

    /// The readiness prober's state, for a container with a readiness probe.
    pub fn readiness(&self) -> Option<Readiness> {
        self.prober.as_ref().map(Prober::readiness)
    }

    /// The file the process's output goes to (rewritten when the pod is
    /// started again).
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send SIGTERM to the process, as the kubelet does to stop a container (and
    /// SIGCONT, so that a [`Replay::pause`]d process handles it).
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM")?;
        self.signal("CONT")
    }

    /// Freeze the process (SIGSTOP), as a cgroup freezer would: holds a run at a
    /// known point while a test changes the cluster around it. Stopping the pod
    /// (or [`Replay::resume`]) lets it go on.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Let a paused process go on (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("the process has already exited")?;
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{name} {pid} failed ({status})");
        }
        Ok(())
    }

    /// Wait up to `timeout` for the process to exit, stopping it when the pod is
    /// deleted meanwhile (the container's `preStop` sleep, then SIGTERM, then
    /// SIGKILL when the grace period is over), then write the pod's status as the
    /// kubelet would: finished, or waiting to restart (see [`Exit::restart`]).
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<Exit> {
        let name = self.pod.name_any();
        let namespace = self.pod.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let spec = self.pod.spec.clone().unwrap_or_default();
        let grace =
            Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
        let pre_stop = spec
            .containers
            .first()
            .and_then(|c| c.lifecycle.as_ref())
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .map_or(Duration::ZERO, |s| {
                Duration::from_secs(s.seconds.max(0) as u64)
            });
        let deadline = Instant::now() + timeout;
        // Once the pod is stopping: when SIGTERM is due (after preStop), whether
        // it was sent, and when SIGKILL is due.
        let mut stop: Option<(Instant, bool, Instant)> = None;
        let pid = self.child.id();
        let status = loop {
            let poll = if stop.is_some() { 100 } else { 500 };
            tokio::select! {
                status = self.child.wait() => break status?,
                () = tokio::time::sleep(Duration::from_millis(poll)) => {}
            }
            let now = Instant::now();
            match &mut stop {
                Some((term_at, termed, kill_at)) => {
                    if !*termed && now >= *term_at {
                        let _ = self.terminate();
                        *termed = true;
                    }
                    if now >= *kill_at {
                        self.child.start_kill()?;
                    }
                }
                None => {
                    let stopping = match pods.get_opt(&name).await {
                        Ok(Some(pod)) => pod.metadata.deletion_timestamp.is_some(),
                        Ok(None) => true,
                        Err(_) => false,
                    };
                    if stopping {
                        let termed = pre_stop.is_zero();
                        if termed {
                            let _ = self.terminate();
                        }
                        stop = Some((now + pre_stop.min(grace), termed, now + grace));
                    }
                }
            }
            if Instant::now() >= deadline {
                self.child.start_kill()?;
                let _ = self.child.wait().await;
                bail!(
                    "pod {name}: the replayed process did not exit within {timeout:?}; its log:\n{}",
                    tail(&self.log(), 40)
                );
            }
        };
        // The container has stopped: so has its readiness prober, before the
        // final status is written.
        if let Some(prober) = self.prober.take() {
            prober.stop().await;
        }
        self.config_sync = None;
        let code = exit_code(status);
        let restart = stop.is_none()
            && match spec.restart_policy.as_deref().unwrap_or("Always") {
                "Always" => true,
                "OnFailure" => code != 0,
                _ => false,
            };
        let log = self.log();
        let mut message =
            std::fs::read_to_string(self.root.join("termination-log")).unwrap_or_default();
        if message.trim().is_empty() && code != 0 && self.fallback_to_logs {
            message = tail(&log, FALLBACK_LINES);
        }
        if message.len() > MESSAGE_LIMIT {
            let mut end = MESSAGE_LIMIT;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let written = self
            .write_terminated(&pods, pid, code, &message, restart)
            .await
            .with_context(|| format!("writing the status of pod {name}"))?;
        Ok(Exit {
            pod: name,
            code,
            message,
            log,
            status_written: written.is_some(),
            restart: written == Some(true),
        })
    }

    /// Phase, conditions and container state of the finished pod, by PUT on
    /// pods/status (retried on conflicts). `None` when the pod is gone, else
    /// whether the container waits to restart: asked by `restart` and the pod
    /// not being deleted, it keeps its phase, counts one more restart and keeps
    /// the exit as `lastState`.
    async fn write_terminated(
        &self,
        pods: &Api<Pod>,
        pid: Option<u32>,
        code: i32,
        message: &str,
        restart: bool,
    ) -> anyhow::Result<Option<bool>> {
        let name = self.pod.name_any();
        let finished = Time(Timestamp::now());
        for _ in 0..20 {
            let Some(mut pod) = pods.get_opt(&name).await? else {
                return Ok(None);
            };
            let restart = restart && pod.metadata.deletion_timestamp.is_none();
            let container = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .cloned()
                .context("the pod lost its container")?;
            let status = pod.status.get_or_insert_default();
            let previous = status
                .container_statuses
                .as_ref()
                .and_then(|c| c.first())
                .cloned()
                .unwrap_or_default();
            let succeeded = code == 0;
            let container_id = Some(format!("replay://{}", pid.unwrap_or(0)));
            let terminated = ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    reason: Some(if succeeded { "Completed" } else { "Error" }.into()),
                    message: (!message.is_empty()).then(|| message.to_string()),
                    started_at: Some(Time(self.started)),
                    finished_at: Some(finished.clone()),
                    container_id: container_id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let (state, last_state, restart_count) = if restart {
                let waiting = ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: Some(format!(
                            "back-off restarting failed container {} in pod {name}",
                            container.name
                        )),
                    }),
                    ..Default::default()
                };
                (waiting, Some(terminated), previous.restart_count + 1)
            } else {
                (terminated, previous.last_state, previous.restart_count)
            };
            if !restart {
                status.phase = Some(if succeeded { "Succeeded" } else { "Failed" }.into());
            }
            status.container_statuses = Some(vec![ContainerStatus {
                name: container.name.clone(),
                image: container.image.clone().unwrap_or_default(),
                image_id: previous.image_id,
                container_id: if restart { None } else { container_id },
                ready: false,
                started: Some(false),
                restart_count,
                state: Some(state),
                last_state,
                ..Default::default()
            }]);
            let (reason, message) = match (restart, succeeded) {
                (true, _) => (
                    "ContainersNotReady",
                    Some(format!(
                        "containers with unready status: [{}]",
                        container.name
                    )),
                ),
                (false, true) => ("PodCompleted", None),
                (false, false) => ("PodFailed", None),
            };
            let conditions = status.conditions.get_or_insert_default();
            for kind in ["Ready", "ContainersReady"] {
                let condition = PodCondition {
                    type_: kind.into(),
                    status: "False".into(),
                    reason: Some(reason.into()),
                    message: message.clone(),
                    last_transition_time: Some(finished.clone()),
                    ..Default::default()
                };
                match conditions.iter_mut().find(|c| c.type_ == kind) {
                    Some(existing) => *existing = condition,
                    None => conditions.push(condition),
                }
            }
            match pods
                .replace_status(&name, &PostParams::default(), &pod)
                .await
            {
                Ok(_) => return Ok(Some(restart)),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Err(anyhow!("pod {name}: status conflicts 20 times in a row"))
    }
}

/// Where each port the container declares listens: the pod's IP and the declared
/// port, as in a cluster (kwok hands out pod IPs from a loopback range, so no two
/// replays collide). `--host 0.0.0.0` in `argv` becomes the pod IP. Returns port
/// name (and number) → address.
fn pod_ports(
    pod: &Pod,
    container: &Container,
    argv: &mut [String],
) -> anyhow::Result<BTreeMap<String, SocketAddr>> {
    let mut ports = BTreeMap::new();
    let declared = container.ports.iter().flatten().collect::<Vec<_>>();
    if declared.is_empty() {
        return Ok(ports);
    }
    let name = pod.name_any();
    let ip: IpAddr = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .with_context(|| format!("pod {name} declares ports but has no status.podIP yet"))?
        .parse()
        .with_context(|| format!("pod {name}: status.podIP is not an IP address"))?;
    ensure!(
        ip.is_loopback(),
        "pod {name} has podIP {ip}, outside loopback: the test cluster must hand out 127.0.0.0/8 (tests/cluster/up)"
    );
    for port in declared {
        let number = u16::try_from(port.container_port)
            .with_context(|| format!("pod {name}: containerPort {}", port.container_port))?;
        let address = SocketAddr::new(ip, number);
        ports.insert(number.to_string(), address);
        if let Some(port_name) = &port.name {
            ports.insert(port_name.clone(), address);
        }
    }
    for i in 1..argv.len() {
        if argv[i - 1] == "--host" && argv[i] == "0.0.0.0" {
            argv[i] = ip.to_string();
        }
    }
    Ok(ports)
}

/// Wait up to `timeout` until each address can be listened on. kwok hands a
/// deleted pod's IP to the next pod at once, while the replay of the deleted pod
/// may still be draining on it (`preStop`, then SIGTERM and the server's grace);
/// in a cluster the two would be apart (the IP is not reused before the old
/// sandbox is gone). After `timeout` the start goes ahead, and the server says
/// why it cannot listen.
async fn wait_until_free<'a>(
    pod: &str,
    addresses: impl Iterator<Item = &'a SocketAddr>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut addresses: Vec<SocketAddr> = addresses.copied().collect();
    addresses.sort();
    addresses.dedup();
    for address in addresses {
        while std::net::TcpListener::bind(address).is_err() {
            if Instant::now() >= deadline {
                eprintln!("replay: pod {pod}: {address} is still in use after {timeout:?}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `value` with an absolute path related to a mount moved under `fs`.
fn rewrite_path(value: &str, mounts: &[(String, PathBuf)], fs: &Path) -> String {
    if !value.starts_with('/') {
        return value.to_string();
    }
    let path = value.trim_end_matches('/');
    let related = mounts.iter().any(|(mount, _)| {
        path == mount
            || path.starts_with(&format!("{mount}/"))
            || mount.starts_with(&format!("{path}/"))
    });
    if related {
        fs.join(value.trim_start_matches('/')).display().to_string()
    } else {
        value.to_string()
    }
}

/// The ConfigMap volumes `container` mounts as directories (none of its
/// mounts of them with `subPath`), where [`Replayer::start`] put them.
fn synced_volumes(pod: &Pod, container: &Container, root: &Path) -> Vec<Synced> {
    let mounts: Vec<_> = container.volume_mounts.iter().flatten().collect();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|volume| {
            let source = volume.config_map.as_ref()?;
            let mine: Vec<_> = mounts.iter().filter(|m| m.name == volume.name).collect();
            let whole = !mine.is_empty()
                && mine
                    .iter()
                    .all(|m| m.sub_path.as_deref().unwrap_or_default().is_empty());
            whole.then(|| Synced {
                config_map: source.name.clone(),
                items: source.items.clone(),
                dir: root.join("volumes").join(&volume.name),
            })
        })
        .collect()
}

fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, String>,
    items: Option<&[KeyToPath]>,
    volume: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let files: Vec<(String, String)> = match items {
        Some(items) => items
            .iter()
            .map(|item| {
                data.get(&item.key)
                    .map(|v| (item.path.clone(), v.clone()))
                    .with_context(|| format!("volume {volume}: key {} not found", item.key))
            })
            .collect::<anyhow::Result<_>>()?,
        None => data.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    for (path, content) in files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content)?;
    }
    Ok(())
}

fn secret_strings(secret: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    out.extend(secret.string_data.clone().unwrap_or_default());
    out
}

/// A downward-API field of the pod.
fn field_value(pod: &Pod, path: &str) -> anyhow::Result<String> {
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(value) = keyed("metadata.labels", pod.metadata.labels.as_ref()) {
        return Ok(value);
    }
    if let Some(value) = keyed("metadata.annotations", pod.metadata.annotations.as_ref()) {
        return Ok(value);
    }
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let value = match path {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
        _ => bail!("unsupported field path"),
    };
    Ok(value.unwrap_or_default())
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_related_to_mounts_move_under_the_root() {
        let fs = Path::new("/r/fs");
        let mounts = vec![
            ("/etc/llmops/resource.yaml".to_string(), PathBuf::new()),
            ("/etc/llmops/sources/0".to_string(), PathBuf::new()),
            ("/work".to_string(), PathBuf::new()),
        ];
        let r = |v: &str| rewrite_path(v, &mounts, fs);
        assert_eq!(
            r("/etc/llmops/resource.yaml"),
            "/r/fs/etc/llmops/resource.yaml"
        );
        assert_eq!(r("/etc/llmops/sources"), "/r/fs/etc/llmops/sources");
        assert_eq!(r("/work/x"), "/r/fs/work/x");
        assert_eq!(r("/workspace"), "/workspace");
        assert_eq!(r("file:///work"), "file:///work");
        assert_eq!(r("prepare"), "prepare");
        assert_eq!(r("/usr/bin"), "/usr/bin");
    }

    #[test]
    fn downward_api_fields() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.annotations = Some(BTreeMap::from([(
            "batch.kubernetes.io/job-completion-index".to_string(),
            "3".to_string(),
        )]));
        assert_eq!(field_value(&pod, "metadata.name").unwrap(), "p");
        assert_eq!(
            field_value(
                &pod,
                "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            )
            .unwrap(),
            "3"
        );
        assert!(field_value(&pod, "spec.nope").is_err());
    }
}
