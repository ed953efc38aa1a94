//! Finding or starting the control plane, clients for it, and running kubectl and
//! helm against it.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, anyhow, bail};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::workspace_root;

/// Set to `1` to skip every test that needs a control plane.
pub const SKIP_ENV: &str = "LLMOPS_SKIP_CLUSTER_TESTS";

/// A reachable control plane, shared by every test of the process.
#[derive(Debug)]
pub struct Cluster {
    kubeconfig: PathBuf,
    tool_home: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

impl Cluster {
    /// The control plane; `None` when [`SKIP_ENV`] asks to skip (the test should
    /// then return early). The first call in a process finds or starts it, the
    /// others wait for that and get the same answer.
    pub fn get() -> anyhow::Result<Option<&'static Cluster>> {
        if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
            eprintln!("skipped: {SKIP_ENV}=1");
            return Ok(None);
        }
        match CLUSTER.get_or_init(|| Cluster::find_or_start().map_err(|e| format!("{e:#}"))) {
            Ok(cluster) => Ok(Some(cluster)),
            Err(err) => Err(anyhow!(
                "no control plane ({err}); set {SKIP_ENV}=1 to skip these tests"
            )),
        }
    }

    fn find_or_start() -> anyhow::Result<Cluster> {
        let tool_home = std::env::temp_dir().join("llmops-tests-tools");
        std::fs::create_dir_all(&tool_home)?;
        if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
            let cluster = Cluster {
                kubeconfig: PathBuf::from(path),
                tool_home: tool_home.clone(),
            };
            if cluster.reachable() {
                return Ok(cluster);
            }
            eprintln!(
                "KUBECONFIG={} does not answer; starting tests/cluster",
                cluster.kubeconfig.display()
            );
        }
        let kubeconfig = start_local_cluster()?;
        let cluster = Cluster {
            kubeconfig,
            tool_home,
        };
        if !cluster.reachable() {
            bail!(
                "tests/cluster/up succeeded but {} does not answer",
                cluster.kubeconfig.display()
            );
        }
        Ok(cluster)
    }

    fn reachable(&self) -> bool {
        self.kubectl_command(["get", "--raw=/readyz", "--request-timeout=5s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The kubeconfig file of the admin user.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The client configuration of the admin user.
    pub async fn config(&self) -> anyhow::Result<Config> {
        // A workspace build may enable both of rustls's providers, and then rustls
        // picks none by itself; choose one (a no-op once one is installed).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// A client authenticated as the admin user. Make one per test: a client is
    /// bound to the runtime it was made on.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::try_from(self.config().await?)?)
    }

    /// The cluster as a local node sees it: for running pods
    /// ([`crate::replay::Replayer`]) and ServiceAccount kubeconfigs.
    pub async fn node(&self) -> anyhow::Result<llmops_local_node::Node> {
        llmops_local_node::Node::connect(&self.kubeconfig).await
    }

    /// A replayer of this cluster's pods with the `trainer` and `server` that
    /// cargo built (building the trainer when missing), their filesystems in a
    /// temporary directory.
    pub async fn replayer(&self) -> anyhow::Result<llmops_local_node::replay::Replayer> {
        let binaries = crate::operator::Binaries::get()?;
        let programs = llmops_local_node::Programs {
            trainer: binaries.trainer.clone(),
            server: binaries.server.clone(),
        };
        llmops_local_node::replay::Replayer::new(self.node().await?, programs)
    }

    /// A client authenticated as a ServiceAccount, with a 10-minute token from the
    /// TokenRequest API (the default audience, the apiserver's).
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Client> {
        let token =
            llmops_local_node::token::request_token(&self.client().await?, namespace, name, 600)
                .await?;
        let mut config = self.config().await?;
        config.auth_info = AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        };
        Ok(Client::try_from(config)?)
    }

    /// Run the machine's `kubectl` against the cluster.
    pub async fn kubectl<I, S>(&self, args: I) -> anyhow::Result<Outcome>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Outcome::of(self.kubectl_command(args)).await
    }

    /// Run `tests/cluster/bin/helm` against the cluster (with its own cache and
    /// config directories, so the user's repositories and plugins play no part).
    pub async fn helm<I, S>(&self, args: I) -> anyhow::Result<Outcome>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Outcome::of(self.helm_command(args)).await
    }

    /// The command line of [`Cluster::helm`], to run synchronously (as in `Drop`).
    pub fn helm_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(workspace_root().join("tests/cluster/bin/helm"));
        command.args(args);
        for (var, dir) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            command.env(var, self.tool_home.join("helm").join(dir));
        }
        command
    }

    fn kubectl_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command("kubectl".into());
        command.args(args);
        command
    }

    fn command(&self, program: PathBuf) -> Command {
        let mut command = Command::new(program);
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.tool_home.join("kube-cache"))
            .stdin(Stdio::null());
        command
    }
}

/// Run `tests/cluster/up` (which reuses a running cluster) under a file lock shared
/// by all test processes, and return the kubeconfig it prints.
fn start_local_cluster() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let state = std::env::var_os("LLMOPS_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tests/cluster/state"));
    std::fs::create_dir_all(&state)?;
    let lock_path = state.join("up.lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    eprintln!("running tests/cluster/up (the first build takes about 15 minutes)");
    let output = Command::new(root.join("tests/cluster/up"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running tests/cluster/up")?;
    drop(lock);
    if !output.status.success() {
        bail!(
            "tests/cluster/up failed ({}); see its output above",
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("KUBECONFIG="))
        .map(PathBuf::from)
        .with_context(|| format!("tests/cluster/up printed no KUBECONFIG= line: {stdout:?}"))
}

/// What a command did.
#[derive(Debug)]
pub struct Outcome {
    /// The command line, for messages.
    pub command: String,
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Outcome {
    async fn of(command: Command) -> anyhow::Result<Outcome> {
        let line = format!(
            "{} {}",
            Path::new(command.get_program())
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            command
                .get_args()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let output = tokio::process::Command::from(command)
            .output()
            .await
            .with_context(|| format!("cannot run {line}"))?;
        Ok(Outcome {
            command: line,
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Its standard output when it succeeded; an error with its standard error when not.
    pub fn check(self) -> anyhow::Result<String> {
        if self.success {
            Ok(self.stdout)
        } else {
            bail!("`{}` failed:\n{}{}", self.command, self.stderr, self.stdout)
        }
    }
}
