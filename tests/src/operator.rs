//! The real `operator` binary as a local child process, authenticated as the
//! chart's ServiceAccount: the chart is installed with helm into the test's
//! namespace (watching only that namespace), the ServiceAccount's token comes from
//! the TokenRequest API, and the operator reads it from a kubeconfig of its own.
//! Artifacts go to a `file://` store in a temporary directory. The process is
//! killed, and the release uninstalled (its ClusterRole is cluster-scoped), when
//! the [`Operator`] is dropped.
//!
//! The binaries are those cargo built beside the test executable
//! (`target/<profile>/operator` and `trainer`), used as they are: rebuild them
//! after changing the operator or the trainer, each on its own
//! (`cargo build -p llmops-operator && cargo build -p llmops-trainer`; built in one
//! invocation, rustls gets both of its crypto providers and an operator that
//! installs none panics at start). When one is missing, the first caller in the
//! process builds them so.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo, NamedContext};

use crate::{Cluster, TestNamespace, apply_crds, workspace_root};

/// Image names the operator writes into pod specs; nothing pulls them (kwok runs
/// no containers, and the trainer is replayed locally).
pub const TRAINER_IMAGE: &str = "ghcr.io/llmops-dev/trainer:e2e";
pub const SERVER_IMAGE: &str = "ghcr.io/llmops-dev/server:e2e";

/// Seconds the ServiceAccount tokens handed to local processes stay valid.
const TOKEN_SECONDS: i64 = 3600;

/// A running operator; killed, and its release uninstalled, on drop.
pub struct Operator {
    cluster: &'static Cluster,
    child: Child,
    namespace: String,
    log: PathBuf,
    store: PathBuf,
    _dir: tempfile::TempDir,
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
        let binaries = Binaries::get()?;
        let client = cluster.client().await?;
        apply_crds(&client).await?;
        let ns = namespace.name();
        let chart = workspace_root().join("charts/llmops").display().to_string();
        let watch = format!("watchNamespaces={{{ns}}}");
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
                "leaderElection.enabled=false",
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
        write_token_kubeconfig(cluster, ns, &account.name_any(), &kubeconfig).await?;
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store)?;
        let log = dir.path().join("operator.log");
        let stderr = File::create(&log)?;
        let child = Command::new(&binaries.operator)
            .args([
                "run",
                "--log-format=text",
                "--log-level=info,llmops_operator=debug",
                &format!("--metrics-port={}", free_port()?),
                &format!("--trainer-image={TRAINER_IMAGE}"),
                &format!("--server-image={SERVER_IMAGE}"),
                &format!("--artifact-store=file://{}", store.display()),
                &format!("--namespaces={ns}"),
            ])
            .args(flags)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", binaries.operator.display()))?;
        Ok(Operator {
            cluster,
            child,
            namespace: ns.to_string(),
            log,
            store,
            _dir: dir,
        })
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
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let mut tail = all[all.len().saturating_sub(lines)..].join("\n");
        if let Ok(Some(status)) = self.child.try_wait() {
            tail.push_str(&format!("\n(the operator exited: {status})"));
        }
        format!("--- operator log (last {lines} lines) ---\n{tail}\n---")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Paths of the `operator`, `trainer` and `server` binaries. The server is not
/// built here (only replays of serving pods need it): build it with
/// `cargo build -p llmops-server`.
#[derive(Debug)]
pub struct Binaries {
    pub operator: PathBuf,
    pub trainer: PathBuf,
    pub server: PathBuf,
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

/// Write to `path` a kubeconfig for the admin's cluster, authenticated as
/// ServiceAccount `namespace/name` with a token from the TokenRequest API; returns
/// the token.
pub async fn write_token_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    path: &Path,
) -> anyhow::Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client().await?, namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{name}"))?
        .status
        .context("TokenRequest without status")?
        .token;
    let mut config = Kubeconfig::read_from(cluster.kubeconfig())?;
    let context = config
        .contexts
        .iter()
        .find(|c| Some(&c.name) == config.current_context.as_ref())
        .or(config.contexts.first())
        .and_then(|c| c.context.clone())
        .context("the admin kubeconfig has no context")?;
    let user = format!("system:serviceaccount:{namespace}:{name}");
    config.auth_infos = vec![NamedAuthInfo {
        name: user.clone(),
        auth_info: Some(AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        }),
        other: Default::default(),
    }];
    config.contexts = vec![NamedContext {
        name: user.clone(),
        context: Some(kube::config::Context {
            user: Some(user.clone()),
            namespace: Some(namespace.to_string()),
            ..context
        }),
        other: Default::default(),
    }];
    config.current_context = Some(user);
    let yaml = serde_yaml_ng::to_string(&config)?;
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
