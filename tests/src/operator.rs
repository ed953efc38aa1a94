//! The real `operator` binary as a local child process, authenticated as the
//! chart's ServiceAccount: the chart is installed with helm into the test's
//! namespace (watching only that namespace), the ServiceAccount's token comes from
//! the TokenRequest API, and the operator reads it from a kubeconfig of its own.
//! Artifacts go to a `file://` store in a temporary directory. The process is
//! killed, and the release uninstalled (its ClusterRole is cluster-scoped), when
//! the [`Operator`] is dropped. For fault tests, [`Operator::restart`] SIGKILLs
//! the process and starts it again, and [`Operator::start_leader_elected`] with
//! [`Operator::replica`] runs several candidates for the leader Lease.
//!
//! The binaries are those cargo built beside the test executable
//! (`target/<profile>/operator` and `trainer`), used as they are: rebuild them
//! after changing the operator or the trainer, each on its own
//! (`cargo build -p llmops-operator && cargo build -p llmops-trainer`; built in one
//! invocation, rustls gets both of its crypto providers and an operator that
//! installs none panics at start). When one is missing, the first caller in the
//! process builds them so.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::config::Kubeconfig;
use llmops_local_node::token::write_token_kubeconfig;

use crate::{Cluster, TestNamespace, apply_crds, workspace_root};

/// Image names the operator writes into pod specs; nothing pulls them (kwok runs
/// no containers, and the trainer is replayed locally).
pub const TRAINER_IMAGE: &str = "ghcr.io/llmops-dev/trainer:e2e";
pub const SERVER_IMAGE: &str = "ghcr.io/llmops-dev/server:e2e";

/// A running operator; killed, and its release uninstalled, on drop.
pub struct Operator {
    cluster: &'static Cluster,
    process: Process,
    launch: Launch,
    namespace: String,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

/// One process of the operator binary, with its own log and metrics port;
/// killed (SIGKILL) on drop.
pub struct Process {
    child: Child,
    log: PathBuf,
    metrics_port: u16,
}

/// How the processes of one install are started: a restart, or another replica,
/// runs the same binary with the same arguments, identity and store.
struct Launch {
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    kubeconfig: PathBuf,
    /// `POD_NAME` of the first process, and of its restarts.
    identity: Option<String>,
}

impl Launch {
    /// Start a process appending to `log`, with a fresh metrics port and
    /// `POD_NAME=identity` when given.
    fn spawn(&self, log: &Path, identity: Option<&str>) -> anyhow::Result<Process> {
        let metrics_port = free_port()?;
        let mut output = OpenOptions::new().create(true).append(true).open(log)?;
        if output.metadata()?.len() > 0 {
            writeln!(output, "--- llmops-tests: the operator started again ---")?;
        }
        let mut command = Command::new(&self.binary);
        command
            .arg("run")
            .arg(format!("--metrics-port={metrics_port}"))
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(identity) = identity {
            command.env("POD_NAME", identity);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        Ok(Process {
            child,
            log: log.to_path_buf(),
            metrics_port,
        })
    }
}

impl Operator {
    /// Install the chart into `namespace` (watching only it), then start the
    /// operator there as the chart's ServiceAccount with `--namespaces <namespace>`.
    pub async fn start(
        cluster: &'static Cluster,
        namespace: &TestNamespace,
    ) -> anyhow::Result<Operator> {
        Operator::start_with(cluster, namespace, &[]).await
    }

    /// [`Operator::start`] with more `operator run` flags (such as a shorter
    /// `--metrics-interval`).
    pub async fn start_with(
        cluster: &'static Cluster,
        namespace: &TestNamespace,
        flags: &[&str],
    ) -> anyhow::Result<Operator> {
        Operator::install_and_start(cluster, namespace, flags, None, None).await
    }

    /// [`Operator::start`], the operator talking to the apiserver through
    /// `server` (a URL in front of the cluster's apiserver, serving a
    /// certificate its CA signed, such as a [`crate::faults::FaultProxy`]).
    pub async fn start_through(
        cluster: &'static Cluster,
        namespace: &TestNamespace,
        server: &str,
    ) -> anyhow::Result<Operator> {
        Operator::install_and_start(cluster, namespace, &[], None, Some(server)).await
    }

    /// [`Operator::start`] with the chart's leader election on (its Lease Role
    /// included): the process runs with `--leader-election`, `POD_NAMESPACE` set
    /// to the test namespace (where the Lease lives) and `POD_NAME=identity`.
    /// [`Operator::replica`] starts more candidates.
    pub async fn start_leader_elected(
        cluster: &'static Cluster,
        namespace: &TestNamespace,
        identity: &str,
    ) -> anyhow::Result<Operator> {
        Operator::install_and_start(
            cluster,
            namespace,
            &["--leader-election"],
            Some(identity),
            None,
        )
        .await
    }

    async fn install_and_start(
        cluster: &'static Cluster,
        namespace: &TestNamespace,
        flags: &[&str],
        identity: Option<&str>,
        server: Option<&str>,
    ) -> anyhow::Result<Operator> {
        let binaries = Binaries::get()?;
        let client = cluster.client().await?;
        apply_crds(&client).await?;
        let ns = namespace.name();
        let chart = workspace_root().join("charts/llmops").display().to_string();
        let watch = format!("watchNamespaces={{{ns}}}");
        let leader_election = format!("leaderElection.enabled={}", identity.is_some());
        cluster
            .helm([
                "install",
                ns,
                &chart,
                "-n",
                ns,
                "--set",
                &watch,
                "--set",
                &leader_election,
                // The CRDs are applied above, apart from any release.
                "--set",
                "crds.install=false",
                "--wait=watcher",
                "--timeout=120s",
            ])
            .await?
            .check()?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        let selector = format!("app.kubernetes.io/instance={ns}");
        let found = accounts
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        let [account] = found.as_slice() else {
            bail!(
                "expected the chart's ServiceAccount labelled {selector}, found {}",
                found.len()
            );
        };

        let dir = tempfile::Builder::new()
            .prefix("llmops-operator-")
            .tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        write_token_kubeconfig(&cluster.node().await?, ns, &account.name_any(), &kubeconfig)
            .await?;
        if let Some(server) = server {
            point_kubeconfig_at(&kubeconfig, server)?;
        }
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store)?;
        let mut args: Vec<String> = vec![
            "--log-format=text".into(),
            "--log-level=info,llmops_operator=debug".into(),
            format!("--trainer-image={TRAINER_IMAGE}"),
            format!("--server-image={SERVER_IMAGE}"),
            format!("--artifact-store=file://{}", store.display()),
            format!("--namespaces={ns}"),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let env = match identity {
            Some(_) => vec![("POD_NAMESPACE".to_string(), ns.to_string())],
            None => Vec::new(),
        };
        let launch = Launch {
            binary: binaries.operator.clone(),
            args,
            env,
            kubeconfig,
            identity: identity.map(str::to_string),
        };
        let process = launch.spawn(&dir.path().join("operator.log"), identity)?;
        Ok(Operator {
            cluster,
            process,
            launch,
            namespace: ns.to_string(),
            store,
            _dir: dir,
        })
    }

    /// SIGKILL the process, as a crash or an OOM kill would stop it (no shutdown,
    /// no Lease released), and reap it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill()
    }

    /// Kill the process if it runs (SIGKILL), then start a new one with the same
    /// arguments, identity, store and log (appended to).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill()?;
        let log = self.process.log.clone();
        self.process = self.launch.spawn(&log, self.launch.identity.as_deref())?;
        Ok(())
    }

    /// Another process of the same install (same account, arguments and store)
    /// as `POD_NAME=identity`, with a log of its own: a second replica.
    pub fn replica(&self, identity: &str) -> anyhow::Result<Process> {
        let log = self._dir.path().join(format!("operator-{identity}.log"));
        self.launch.spawn(&log, Some(identity))
    }

    /// The current process.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// The namespace it manages.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The directory of its default `file://` artifact store.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// The last `lines` lines of its log (stdout and stderr), for failure messages;
    /// says so when the process has exited.
    pub fn log_tail(&mut self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

impl Process {
    /// SIGKILL the process (what `Child::kill` sends on Unix) and reap it; a
    /// process that already exited is left as it is.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().context("killing the operator")?;
        }
        self.child.wait().context("reaping the operator")?;
        Ok(())
    }

    /// Where it serves /metrics, /healthz and /readyz (it listens on every
    /// address; the tests use loopback).
    pub fn metrics_address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.metrics_port))
    }

    /// Its whole log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log, for failure messages; says so when the
    /// process has exited.
    pub fn log_tail(&mut self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        let mut tail = all[all.len().saturating_sub(lines)..].join("\n");
        if let Ok(Some(status)) = self.child.try_wait() {
            tail.push_str(&format!("\n(the operator exited: {status})"));
        }
        format!("--- operator log (last {lines} lines) ---\n{tail}\n---")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.process.kill();
        // Drop cannot await: helm synchronously, not waiting for deletions.
        let uninstalled = self
            .cluster
            .helm_command(["uninstall", &self.namespace, "-n", &self.namespace])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !uninstalled.is_ok_and(|s| s.success()) {
            eprintln!("could not uninstall the chart release {}", self.namespace);
        }
    }
}

/// Paths of the `operator`, `trainer`, `server` and `local-node` binaries. The
/// server and the local node are not built here (only tests that serve, or run
/// the local node, need them): `cargo build -p llmops-server -p llmops-local-node`.
#[derive(Debug)]
pub struct Binaries {
    pub operator: PathBuf,
    pub trainer: PathBuf,
    pub server: PathBuf,
    pub local_node: PathBuf,
}

impl Binaries {
    /// The binaries beside the test executable, built once per process when missing.
    pub fn get() -> anyhow::Result<&'static Binaries> {
        static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
        BINARIES
            .get_or_init(|| Binaries::find_or_build().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn find_or_build() -> anyhow::Result<Binaries> {
        // target/<profile>/deps/<test executable>
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .context("the test executable is not in target/<profile>/deps")?;
        let binaries = Binaries {
            operator: dir.join("operator"),
            trainer: dir.join("trainer"),
            server: dir.join("server"),
            local_node: dir.join("local-node"),
        };
        if binaries.operator.exists() && binaries.trainer.exists() {
            return Ok(binaries);
        }
        // One cargo invocation per package: built together, their features unify
        // (rustls with both ring and aws-lc-rs, and no provider chosen by default).
        for package in ["llmops-operator", "llmops-trainer"] {
            eprintln!("building {package}");
            let mut build =
                Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            build
                .current_dir(workspace_root())
                .args(["build", "-p", package])
                .stdin(Stdio::null());
            if dir.file_name().is_some_and(|p| p == "release") {
                build.arg("--release");
            }
            let status = build.status().context("running cargo build")?;
            if !status.success() {
                bail!("cargo build -p {package} failed ({status})");
            }
        }
        for path in [&binaries.operator, &binaries.trainer] {
            if !path.exists() {
                bail!("cargo build succeeded but {} is missing", path.display());
            }
        }
        Ok(binaries)
    }
}

/// Make every cluster of the kubeconfig at `path` be reached at `server`.
fn point_kubeconfig_at(path: &Path, server: &str) -> anyhow::Result<()> {
    let mut config = Kubeconfig::read_from(path)?;
    for named in &mut config.clusters {
        if let Some(cluster) = named.cluster.as_mut() {
            cluster.server = Some(server.to_string());
        }
    }
    std::fs::write(path, serde_yaml_ng::to_string(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
