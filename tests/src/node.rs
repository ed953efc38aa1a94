//! The `local-node` binary as a child process, running every pod of one
//! namespace, as `scripts/local-cluster` runs it for every namespace: end-to-end
//! tests that use it run the operator's pods exactly as a user's local cluster
//! does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Cluster;
use crate::operator::Binaries;

/// How long a stopping local node has to stop its pods' processes.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `local-node`; stopped (SIGTERM, so that it stops its pods'
/// processes) on drop.
pub struct LocalNode {
    child: Child,
    log: PathBuf,
    pods_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalNode {
    /// Start `local-node` for the pods of `namespace`.
    pub fn start(cluster: &Cluster, namespace: &str) -> anyhow::Result<LocalNode> {
        LocalNode::start_with_env(cluster, namespace, &[])
    }

    /// [`LocalNode::start`], every pod's process also getting `env`
    /// (`local-node --env NAME=VALUE`).
    pub fn start_with_env(
        cluster: &Cluster,
        namespace: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<LocalNode> {
        let binaries = Binaries::get()?;
        if !binaries.local_node.exists() || !binaries.server.exists() {
            bail!(
                "{} or {} is not built: cargo build -p llmops-local-node -p llmops-server",
                binaries.local_node.display(),
                binaries.server.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("llmops-local-node-")
            .tempdir()?;
        let log = dir.path().join("local-node.log");
        let pods_dir = dir.path().join("pods");
        let output = std::fs::File::create(&log)?;
        let bin_dir = binaries
            .trainer
            .parent()
            .context("the trainer binary has no directory")?;
        let child = Command::new(&binaries.local_node)
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .arg("--bin-dir")
            .arg(bin_dir)
            .arg("--pods-dir")
            .arg(&pods_dir)
            .args(["--namespace", namespace])
            .args(
                env.iter()
                    .map(|(name, value)| format!("--env={name}={value}")),
            )
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting {}", binaries.local_node.display()))?;
        Ok(LocalNode {
            child,
            log,
            pods_dir,
            _dir: dir,
        })
    }

    /// What it printed: each pod it started, each exit, each error.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log of pod `name`'s container (its latest run).
    pub fn pod_log(&self, namespace: &str, name: &str) -> String {
        std::fs::read_to_string(self.pod_dir(namespace, name).join("container.log"))
            .unwrap_or_default()
    }

    fn pod_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.pods_dir.join(namespace).join(name)
    }

    /// Where the pods' directories are (`<namespace>/<pod>/`).
    pub fn pods_dir(&self) -> &Path {
        &self.pods_dir
    }

    /// Stop it as `scripts/local-cluster down` does: SIGTERM, then wait until it
    /// has stopped its pods' processes and exited; SIGKILL after
    /// [`STOP_TIMEOUT`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill()?;
        let _ = self.child.wait();
        bail!("local-node did not stop within {STOP_TIMEOUT:?} of SIGTERM")
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
