//! The gateway end to end: the real `gateway` binary, authenticated as the
//! chart's gateway ServiceAccount (the chart installed with `gateway.enabled`,
//! so its RBAC is what is tested), in front of two ModelDeployments the real
//! operator serves, their pods replayed with the real `server` on loopback pod
//! IPs.
//!
//! The test control plane runs no EndpointSlice controller (EndpointSlices
//! refuse loopback addresses, and every pod here has one), so the gateway
//! reads the ready pods the Services select (`--endpoints=pods`, chart value
//! `gateway.endpoints: pods`): the same addresses the slices would hold.
//!
//! - routing by name: the official `openai` client lists both models and gets
//!   completions (plain and streamed) from each, and each deployment's pods
//!   count exactly the requests sent for it;
//! - a key allowed one model never sees the other: not in `/v1/models`, and a
//!   request for it gets the very 404 of a model that does not exist;
//!   no key or a wrong key gets 401; a change to the key Secret applies
//!   without a restart;
//! - limits: a key's requests per minute end in 429 with `Retry-After`, its
//!   tokens per minute too once a response's `usage` is counted; usage per key
//!   name is in `/metrics`, and no key is;
//! - a client gone mid-stream: the gateway drops the request to the pod, which
//!   stops generating;
//! - a request for a model whose pod is not ready yet is held, counted in the
//!   model's queue gauge, and answered once the pod is ready;
//! - a pod SIGKILLed mid-stream ends that stream with an error event, and the
//!   requests after it succeed on the other pod.
//!
//! `an_idle_deployment_scales_to_zero_and_a_request_at_the_gateway_wakes_it`:
//! a ModelDeployment with `replicas.min: 0` goes to no pods once idle for its
//! `scaleToZeroAfter`, with the operator reading the gateway's demand
//! (`--gateway-metrics-url`); a request sent then is held by the gateway,
//! the operator scales the deployment up, and the request is answered.
//!
//! `a_canary_gets_exactly_its_steps_weight_through_the_gateway`: while a
//! canary holds a 25% step on one pod beside two stable ones, exactly one
//! request in four through the gateway goes to it (a third would by pods).
//!
//! `gateway_runs_on_the_charts_endpointslice_rbac_and_reads_no_other_secret`
//! runs it in its default mode (EndpointSlices) on the chart's default RBAC:
//! ready, models listed, 503 with `Retry-After` for a model without a ready
//! endpoint after the queue timeout, and no Secret readable but its key Secret.
//!
//! `gateway_benchmark` (ignored; run with `--ignored --nocapture`) runs
//! `gateway-bench` against the same setup: latency and throughput through the
//! gateway against straight to a pod.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use llmops_crds::ModelDeployment;
use llmops_local_node::token::write_token_kubeconfig;
use llmops_tests::local::{python, tiny_model};
use llmops_tests::operator::Operator;
use llmops_tests::runner::{PodRunner, ServedPod};
use llmops_tests::{Cluster, TestNamespace, eventually, workspace_root};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEYS_SECRET: &str = "gateway-keys";
const KEY_ALL: &str = "sk-all-models-0123456789";
const KEY_ALPHA: &str = "sk-alpha-only-0123456789";
const KEY_RPM: &str = "sk-two-per-minute-012345";
const KEY_TPM: &str = "sk-forty-tokens-01234567";
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The tiny model's end-of-text token, banned so that a completion runs to
/// its `max_tokens`.
const NO_EOS: &str = r#"{"0": -100}"#;

fn model_deployment(name: &str, uri: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": uri},
            "replicas": {"min": replicas, "max": replicas},
            "server": {"maxBatch": 4, "maxContext": 256, "maxNewTokens": 240, "threads": 1},
            "resources": {"cpu": "1", "memory": "1Gi"},
        }
    })
}

/// The `gateway` (or `gateway-bench`) binary beside the test executable, or
/// in `LLMOPS_GATEWAY_BIN_DIR` (to benchmark a release build:
/// `LLMOPS_GATEWAY_BIN_DIR=target/release`).
fn gateway_binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("LLMOPS_GATEWAY_BIN_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => {
            let exe = std::env::current_exe()?;
            exe.parent()
                .and_then(Path::parent)
                .context("the test executable is not in target/<profile>/deps")?
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    ensure!(
        path.exists(),
        "{} is missing: cargo build -p llmops-gateway",
        path.display()
    );
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The gateway process; killed on drop.
struct GatewayProcess {
    child: Child,
    log: PathBuf,
    address: SocketAddr,
    /// Its ServiceAccount's kubeconfig.
    kubeconfig: PathBuf,
}

impl GatewayProcess {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two ModelDeployments (`alpha` on two pods, `beta` on one) and the gateway
/// in front of them.
struct Setup {
    cluster: &'static Cluster,
    ns: TestNamespace,
    _operator: Operator,
    pods: PodRunner,
    gateway: GatewayProcess,
    /// The model `alpha` serves.
    alpha_model: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(cluster: &'static Cluster, prefix: &str) -> anyhow::Result<Setup> {
        let ns = TestNamespace::create(cluster, prefix).await?;
        let operator = Operator::start(cluster, &ns).await?;
        let client = cluster.client().await?;
        let name = ns.name().to_string();

        // The chart's gateway objects, in the restricted test namespace.
        let account = enable_chart_gateway(cluster, &name, "pods").await?;

        apply_key_secret(cluster, &name).await?;

        // Two tiny models of different families, one per deployment.
        let store = operator.store().join("models");
        let alpha = store.join("alpha");
        let beta = store.join("beta");
        tiny_model(&alpha)?;
        llmops_tests::local::tiny_model_with(&beta, &["--family", "gpt2", "--seed", "7"])?;
        let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &name);
        for (md, dir, replicas) in [("alpha", &alpha, 2), ("beta", &beta, 1)] {
            let uri = format!("file://{}", dir.display());
            deployments
                .patch(
                    md,
                    &PatchParams::apply(llmops_tests::FIELD_MANAGER).force(),
                    &Patch::Apply(model_deployment(md, &uri, replicas)),
                )
                .await
                .with_context(|| format!("applying ModelDeployment {md}"))?;
        }
        let replayer = Arc::new(cluster.replayer().await?);
        let pods = PodRunner::start(replayer, &name, "llmops.dev/modeldeployment");

        // The gateway as its ServiceAccount.
        let (gateway, dir) = spawn_gateway(cluster, &name, &account, "pods", 60).await?;
        let setup = Setup {
            cluster,
            ns,
            _operator: operator,
            pods,
            gateway,
            alpha_model: alpha,
            _dir: dir,
        };
        setup.pods.wait_ready(3, READY_TIMEOUT).await?;
        let address = setup.gateway.address;
        let waited = eventually(
            "the gateway to route to 3 ready pods",
            READY_TIMEOUT,
            || async move {
                let metrics = http(address, "GET", "/metrics", None, None).await?.body;
                for (model, count) in [("alpha", 2), ("beta", 1)] {
                    let line =
                        format!("llmops_gateway_ready_endpoints{{model=\"{model}\"}} {count}");
                    ensure!(metrics.contains(&line), "no `{line}` in\n{metrics}");
                }
                Ok(())
            },
        )
        .await;
        if let Err(e) = waited {
            bail!(
                "{e:#}\ngateway log:\n{}\nserving pods:\n{}",
                setup.gateway.log_tail(),
                setup.pods.describe()
            );
        }
        Ok(setup)
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.gateway.address)
    }

    /// The ready pods of ModelDeployment `md`.
    fn ready_pods(&self, md: &str) -> Vec<ServedPod> {
        let prefix = format!("{md}-server-");
        self.pods
            .ready()
            .into_iter()
            .filter(|p| p.name.starts_with(&prefix))
            .collect()
    }

    async fn finish(self) -> anyhow::Result<()> {
        let Setup { cluster, ns, .. } = self;
        ns.delete(cluster).await
    }
}

/// The test's key Secret: a key for every model, one for `alpha` only, and two
/// for `alpha` with limits.
async fn apply_key_secret(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client().await?, name);
    let keys = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": KEYS_SECRET},
        "stringData": {
            "all": format!("key: {KEY_ALL}\nmodels: ['*']\n"),
            "alpha-only": format!("key: {KEY_ALPHA}\nmodels: [alpha]\n"),
            "two-per-minute": format!("key: {KEY_RPM}\nmodels: [alpha]\nrequestsPerMinute: 2\n"),
            "forty-tokens": format!("key: {KEY_TPM}\nmodels: [alpha]\ntokensPerMinute: 40\n"),
        }
    });
    secrets
        .patch(
            KEYS_SECRET,
            &PatchParams::apply(llmops_tests::FIELD_MANAGER).force(),
            &Patch::Apply(keys),
        )
        .await
        .context("creating the key Secret")?;
    Ok(())
}

/// Upgrades the test's release (named as its namespace) to deploy the gateway
/// with `gateway.endpoints: <endpoints>` and the test's key Secret; returns the
/// gateway's ServiceAccount.
async fn enable_chart_gateway(
    cluster: &Cluster,
    name: &str,
    endpoints: &str,
) -> anyhow::Result<String> {
    let chart = workspace_root().join("charts/llmops").display().to_string();
    let keys = format!("gateway.keySecrets={{{KEYS_SECRET}}}");
    let endpoints = format!("gateway.endpoints={endpoints}");
    cluster
        .helm([
            "upgrade",
            name,
            &chart,
            "-n",
            name,
            "--reuse-values",
            "--set",
            "gateway.enabled=true",
            "--set",
            &endpoints,
            "--set",
            &keys,
            "--wait=watcher",
            "--timeout=120s",
        ])
        .await?
        .check()?;
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client().await?, name);
    let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=gateway");
    let found = accounts
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let [account] = found.as_slice() else {
        bail!(
            "expected the chart's gateway ServiceAccount ({selector}), found {}",
            found.len()
        );
    };
    Ok(account.name_any())
}

/// Starts the `gateway` binary as ServiceAccount `account` of namespace
/// `name`, serving that namespace, its keys from the test's key Secret.
async fn spawn_gateway(
    cluster: &Cluster,
    name: &str,
    account: &str,
    endpoints: &str,
    queue_timeout: u64,
) -> anyhow::Result<(GatewayProcess, tempfile::TempDir)> {
    spawn_gateway_at(
        cluster,
        name,
        account,
        endpoints,
        queue_timeout,
        free_port()?,
    )
    .await
}

/// [`spawn_gateway`] listening on loopback port `port`.
async fn spawn_gateway_at(
    cluster: &Cluster,
    name: &str,
    account: &str,
    endpoints: &str,
    queue_timeout: u64,
    port: u16,
) -> anyhow::Result<(GatewayProcess, tempfile::TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("llmops-gateway-")
        .tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    write_token_kubeconfig(&cluster.node().await?, name, account, &kubeconfig).await?;
    let log = dir.path().join("gateway.log");
    let output = std::fs::File::create(&log)?;
    let child = Command::new(gateway_binary("gateway")?)
        .args([
            format!("--listen=127.0.0.1:{port}"),
            format!("--namespaces={name}"),
            format!("--endpoints={endpoints}"),
            format!("--keys-namespace={name}"),
            format!("--key-secrets={KEYS_SECRET}"),
            format!("--queue-timeout={queue_timeout}"),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "info,llmops_gateway=debug")
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .spawn()
        .context("starting the gateway")?;
    let gateway = GatewayProcess {
        child,
        log,
        address: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        kubeconfig,
    };
    Ok((gateway, dir))
}

/// An HTTP answer: status, head and body (de-chunked).
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

fn request_bytes(method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n");
    if let Some(key) = key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    head.into_bytes()
}

fn parse_reply(raw: &[u8]) -> anyhow::Result<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let mut reply = Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    };
    if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        reply.body = dechunk(body);
    }
    Ok(reply)
}

/// The data of a chunked body (as far as it goes: a cut stream keeps what came).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            out.push_str(&after[..size.min(after.len())]);
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Reply> {
    ensure!(address.ip().is_loopback(), "{address} is not on loopback");
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        stream
            .write_all(&request_bytes(method, path, key, body))
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_reply(&raw)
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .with_context(|| format!("{method} {path} to {address} timed out"))?
}

fn completion(model: &str, prompt: &str, max_tokens: u32) -> Value {
    json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
           "logit_bias": serde_json::from_str::<Value>(NO_EOS).unwrap_or_default()})
}

/// Reads from `stream` into `raw` until the first server-sent event.
async fn read_first_event(stream: &mut TcpStream, raw: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut buf = [0u8; 4096];
    let read = async {
        while !String::from_utf8_lossy(raw).contains("data: ") {
            let n = stream.read(&mut buf).await?;
            ensure!(
                n > 0,
                "the stream ended before its first event: {}",
                String::from_utf8_lossy(raw)
            );
            raw.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), read).await?
}

/// A gauge or counter of a serving pod's `/metrics` (summed over its series).
async fn server_gauge(pod: &ServedPod, name: &str) -> anyhow::Result<f64> {
    let address = pod.address.context("a pod without an address")?;
    let metrics = http(address, "GET", "/metrics", None, None).await?.body;
    Ok(metrics
        .lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Tokens a serving pod has generated.
async fn generated_tokens(pod: &ServedPod) -> anyhow::Result<u64> {
    Ok(server_gauge(pod, "llmops_server_generated_tokens_total").await? as u64)
}

/// Completions a serving pod has answered (its own `/metrics`).
async fn completions_served(pod: &ServedPod) -> anyhow::Result<u64> {
    let address = pod.address.context("a pod without an address")?;
    let metrics = http(address, "GET", "/metrics", None, None).await?.body;
    Ok(metrics
        .lines()
        .filter(|l| {
            l.starts_with("llmops_server_requests_total{") && l.contains("route=\"completions\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn served_by(pods: &[ServedPod]) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for pod in pods {
        out.push(completions_served(pod).await?);
    }
    Ok(out)
}

/// The pid of the process listening on `address` (from /proc: the socket's
/// inode in /proc/net/tcp, then the process holding it).
fn listening_pid(address: SocketAddr) -> anyhow::Result<u32> {
    let SocketAddr::V4(v4) = address else {
        bail!("{address}: IPv4 only");
    };
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let inode = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[1] == wanted && f[3] == "0A")
        .map(|f| f[9].to_string())
        .with_context(|| format!("nothing listens on {address}"))?;
    let socket = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == socket) {
                return Ok(pid);
            }
        }
    }
    bail!("no process holds the socket of {address}")
}

fn sigkill(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("running kill")?;
    ensure!(status.success(), "kill -KILL {pid}: {status}");
    Ok(())
}

/// The official `openai` client through the gateway (tests/python/gateway_client.py).
fn openai_client(setup: &Setup) -> anyhow::Result<()> {
    let output = Command::new(python())
        .arg(workspace_root().join("tests/python/gateway_client.py"))
        .arg(setup.base_url())
        .env("GATEWAY_KEY_ALL", KEY_ALL)
        .env("GATEWAY_KEY_ALPHA", KEY_ALPHA)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .context("running tests/python/gateway_client.py")?;
    ensure!(
        output.status.success(),
        "the openai client failed ({}):\n{}\n{}\ngateway log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        setup.gateway.log_tail()
    );
    Ok(())
}

#[tokio::test]
async fn gateway_routes_by_model_limits_keys_and_survives_a_pod_kill() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let setup = Setup::start(cluster, "e2e-gateway").await?;
    let gw = setup.gateway.address;

    // Routing by name: each deployment's pods answer exactly its requests.
    let (alpha, beta) = (setup.ready_pods("alpha"), setup.ready_pods("beta"));
    ensure!(
        alpha.len() == 2 && beta.len() == 1,
        "{}",
        setup.pods.describe()
    );
    let before = (served_by(&alpha).await?, served_by(&beta).await?);
    openai_client(&setup)?;
    let after = (served_by(&alpha).await?, served_by(&beta).await?);
    let sum = |v: &[u64]| v.iter().sum::<u64>();
    ensure!(
        sum(&after.0) - sum(&before.0) == 3 && sum(&after.1) - sum(&before.1) == 3,
        "completions per deployment: alpha {:?} -> {:?}, beta {:?} -> {:?} (3 each sent)",
        before.0,
        after.0,
        before.1,
        after.1
    );

    // A key allowed one model never sees the other.
    let models = http(gw, "GET", "/v1/models", Some(KEY_ALPHA), None).await?;
    ensure!(models.status == 200, "{models:?}");
    let ids: Vec<Value> = models.json()?["data"]
        .as_array()
        .context("no data")?
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    ensure!(ids == [json!("alpha")], "alpha-only lists {ids:?}");
    let forbidden = http(
        gw,
        "POST",
        "/v1/completions",
        Some(KEY_ALPHA),
        Some(&completion("beta", "hi", 2)),
    )
    .await?;
    let missing = http(
        gw,
        "POST",
        "/v1/completions",
        Some(KEY_ALPHA),
        Some(&completion("gamma", "hi", 2)),
    )
    .await?;
    ensure!(
        forbidden.status == 404 && missing.status == 404,
        "{forbidden:?}\n{missing:?}"
    );
    ensure!(
        forbidden.json()?["error"]["code"] == "model_not_found",
        "{forbidden:?}"
    );
    ensure!(
        forbidden.body.replace("beta", "X") == missing.body.replace("gamma", "X"),
        "a forbidden model is answered unlike a missing one:\n{}\n{}",
        forbidden.body,
        missing.body
    );
    let one = http(gw, "GET", "/v1/models/beta", Some(KEY_ALPHA), None).await?;
    ensure!(one.status == 404, "{one:?}");
    let one = http(gw, "GET", "/v1/models/beta", Some(KEY_ALL), None).await?;
    ensure!(one.status == 200 && one.json()?["id"] == "beta", "{one:?}");
    for key in [None, Some("sk-not-a-key-0123456789")] {
        let refused = http(gw, "GET", "/v1/models", key, None).await?;
        ensure!(refused.status == 401, "{key:?}: {refused:?}");
        let refused = http(
            gw,
            "POST",
            "/v1/completions",
            key,
            Some(&completion("alpha", "hi", 2)),
        )
        .await?;
        ensure!(refused.status == 401, "{key:?}: {refused:?}");
    }

    // A key's models change with its Secret, without a restart.
    let secrets: Api<Secret> = Api::namespaced(cluster.client().await?, setup.ns.name());
    secrets
        .patch(
            KEYS_SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "stringData": {"alpha-only": format!("key: {KEY_ALPHA}\nmodels: [alpha, beta]\n")},
            })),
        )
        .await?;
    eventually(
        "the alpha-only key to see beta",
        Duration::from_secs(30),
        || async move {
            let models = http(gw, "GET", "/v1/models", Some(KEY_ALPHA), None)
                .await?
                .json()?;
            ensure!(
                models["data"].as_array().map(Vec::len) == Some(2),
                "{models}"
            );
            Ok(())
        },
    )
    .await?;

    // Requests per minute: the third of two is refused, with Retry-After.
    for i in 0..2 {
        let ok = http(
            gw,
            "POST",
            "/v1/completions",
            Some(KEY_RPM),
            Some(&completion("alpha", "a dog", 2)),
        )
        .await?;
        ensure!(ok.status == 200, "request {i}: {ok:?}");
    }
    let limited = http(
        gw,
        "POST",
        "/v1/completions",
        Some(KEY_RPM),
        Some(&completion("alpha", "a dog", 2)),
    )
    .await?;
    ensure!(limited.status == 429, "{limited:?}");
    ensure!(
        limited.json()?["error"]["code"] == "rate_limit_exceeded",
        "{limited:?}"
    );
    let retry: u64 = limited
        .header("retry-after")
        .context("no Retry-After")?
        .parse()?;
    ensure!(
        (1..=30).contains(&retry),
        "Retry-After {retry} (one request comes back every 30 s)"
    );

    // Tokens per minute: 40, and a completion of 30 tokens uses more than 10
    // with its prompt, so the next one of 30 must wait.
    let first = http(
        gw,
        "POST",
        "/v1/completions",
        Some(KEY_TPM),
        Some(&completion("alpha", "the old man", 30)),
    )
    .await?;
    ensure!(first.status == 200, "{first:?}");
    let used = first.json()?["usage"]["total_tokens"]
        .as_u64()
        .context("no usage")?;
    ensure!(used > 30, "usage {used}");
    let second = http(
        gw,
        "POST",
        "/v1/completions",
        Some(KEY_TPM),
        Some(&completion("alpha", "the old man", 30)),
    )
    .await?;
    ensure!(
        second.status == 429 && second.header("retry-after").is_some(),
        "{second:?}"
    );
    ensure!(second.body.contains("tokens per minute"), "{second:?}");

    // Usage per key name in the metrics; no key anywhere in them.
    let metrics = http(gw, "GET", "/metrics", None, None).await?.body;
    for line in [
        r#"llmops_gateway_key_requests_total{key="two-per-minute",model="alpha",code="429"} 1"#,
        r#"llmops_gateway_key_requests_total{key="two-per-minute",model="alpha",code="200"} 2"#,
        &format!(r#"llmops_gateway_key_tokens_total{{key="forty-tokens",model="alpha"}} {used}"#),
    ] {
        ensure!(metrics.contains(line), "no `{line}` in\n{metrics}");
    }
    for key in [KEY_ALL, KEY_ALPHA, KEY_RPM, KEY_TPM] {
        ensure!(!metrics.contains(key), "a key is in the metrics");
        ensure!(
            !std::fs::read_to_string(&setup.gateway.log)?.contains(key),
            "a key is in the gateway's log"
        );
    }

    // A client gone mid-stream: the gateway drops the request to the pod,
    // which stops generating long before its 240 tokens.
    let pod = &beta[0];
    let generated_before = generated_tokens(pod).await?;
    let mut stream_request = completion("beta", "the farmer", 240);
    stream_request["stream"] = json!(true);
    let mut stream = TcpStream::connect(gw).await?;
    stream
        .write_all(&request_bytes(
            "POST",
            "/v1/completions",
            Some(KEY_ALL),
            Some(&stream_request),
        ))
        .await?;
    read_first_event(&mut stream, &mut Vec::new()).await?;
    drop(stream);
    let generated = eventually(
        "the gateway to end the abandoned request",
        Duration::from_secs(30),
        || async {
            let metrics = http(gw, "GET", "/metrics", None, None).await?.body;
            let closed = r#"llmops_gateway_requests_total{model="beta",code="client_closed"} 1"#;
            ensure!(metrics.contains(closed), "no `{closed}`");
            ensure!(
                server_gauge(pod, "llmops_server_in_flight_requests").await? == 0.0,
                "in flight at the pod"
            );
            generated_tokens(pod).await
        },
    )
    .await?;
    ensure!(
        generated - generated_before < 120,
        "the pod generated {} tokens for a client gone after the first",
        generated - generated_before
    );

    // A request for a model without a ready pod yet is held until one is
    // ready, counted in the model's queue, and then answered.
    let client = cluster.client().await?;
    let deployments: Api<ModelDeployment> = Api::namespaced(client, setup.ns.name());
    let alpha_uri = format!("file://{}", setup.alpha_model.display());
    deployments
        .patch(
            "gamma",
            &PatchParams::apply(llmops_tests::FIELD_MANAGER).force(),
            &Patch::Apply(model_deployment("gamma", &alpha_uri, 1)),
        )
        .await?;
    eventually(
        "the gateway to list gamma",
        Duration::from_secs(30),
        || async {
            let metrics = http(gw, "GET", "/metrics", None, None).await?.body;
            let none_ready = r#"llmops_gateway_ready_endpoints{model="gamma"} 0"#;
            ensure!(metrics.contains(none_ready), "no `{none_ready}`");
            Ok(())
        },
    )
    .await
    .context("gamma must be listed before its pod is ready")?;
    let held = tokio::spawn(async move {
        http(
            gw,
            "POST",
            "/v1/completions",
            Some(KEY_ALL),
            Some(&completion("gamma", "hi", 2)),
        )
        .await
    });
    eventually(
        "the request to be queued",
        Duration::from_secs(30),
        || async {
            let metrics = http(gw, "GET", "/metrics", None, None).await?.body;
            for held in [
                r#"llmops_gateway_queued_requests{model="gamma"} 1"#,
                r#"llmops_gateway_in_flight_requests{model="gamma"} 1"#,
            ] {
                ensure!(metrics.contains(held), "no `{held}`");
            }
            Ok(())
        },
    )
    .await?;
    let answered = tokio::time::timeout(READY_TIMEOUT, held).await???;
    ensure!(answered.status == 200, "{answered:?}");
    let metrics = http(gw, "GET", "/metrics", None, None).await?.body;
    for done in [
        r#"llmops_gateway_queued_requests{model="gamma"} 0"#,
        r#"llmops_gateway_in_flight_requests{model="gamma"} 0"#,
        r#"llmops_gateway_in_flight_requests{model="alpha"} 0"#,
        r#"llmops_gateway_in_flight_requests{model="beta"} 0"#,
    ] {
        ensure!(metrics.contains(done), "no `{done}` in\n{metrics}");
    }

    // A pod killed mid-stream. The prompt's prefix affinity sends a request
    // and the stream after it to the same pod (both pods idle): the first
    // tells which pod that is, so that its pid is at hand before the stream.
    let prompt = "the teacher writes a long letter";
    let before = served_by(&alpha).await?;
    let probe = http(
        gw,
        "POST",
        "/v1/completions",
        Some(KEY_ALL),
        Some(&completion("alpha", prompt, 2)),
    )
    .await?;
    ensure!(probe.status == 200, "{probe:?}");
    let after = served_by(&alpha).await?;
    let home = (0..2)
        .find(|&i| after[i] > before[i])
        .context("neither alpha pod counted the request")?;
    let (victim, survivor) = (&alpha[home], &alpha[1 - home]);
    let pid = listening_pid(victim.address.context("no address")?)?;
    let mut stream_request = completion("alpha", prompt, 240);
    stream_request["stream"] = json!(true);
    let mut stream = TcpStream::connect(gw).await?;
    stream
        .write_all(&request_bytes(
            "POST",
            "/v1/completions",
            Some(KEY_ALL),
            Some(&stream_request),
        ))
        .await?;
    let mut raw = Vec::new();
    read_first_event(&mut stream, &mut raw).await?;
    sigkill(pid)?;
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await??;
    let reply = parse_reply(&raw)?;
    ensure!(reply.status == 200, "{reply:?}");
    ensure!(
        !reply.body.contains("data: [DONE]"),
        "the stream finished before its pod was killed:\n{}",
        reply.body
    );
    let last = reply
        .body
        .split("\n\n")
        .filter(|e| e.starts_with("data: "))
        .last()
        .context("no event")?;
    let error: Value = serde_json::from_str(&last["data: ".len()..])?;
    ensure!(
        error["error"]["code"] == "upstream_failed" && error["error"]["type"] == "server_error",
        "the stream's last event: {last}"
    );
    // The next requests, affine to the dead pod, succeed on the other.
    let survivor_before = completions_served(survivor).await?;
    for i in 0..5 {
        let ok = http(
            gw,
            "POST",
            "/v1/completions",
            Some(KEY_ALL),
            Some(&completion("alpha", prompt, 2)),
        )
        .await?;
        ensure!(
            ok.status == 200,
            "request {i} after the kill: {ok:?}\n{}",
            setup.gateway.log_tail()
        );
    }
    let survivor_after = completions_served(survivor).await?;
    ensure!(
        survivor_after - survivor_before == 5,
        "the surviving pod answered {} of the 5 requests after the kill",
        survivor_after - survivor_before
    );
    let metrics = http(gw, "GET", "/metrics", None, None).await?.body;
    ensure!(
        metrics.contains(r#"llmops_gateway_upstream_broken_streams_total{model="alpha"} 1"#),
        "the broken stream is not counted:\n{metrics}"
    );
    setup.finish().await
}

/// Scale to zero and back through the gateway (see the module's doc).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_deployment_scales_to_zero_and_a_request_at_the_gateway_wakes_it()
-> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-zero").await?;
    let name = ns.name().to_string();
    // The gateway's port is known before the operator that reads it starts.
    let port = free_port()?;
    let gateway_metrics = format!("--gateway-metrics-url=http://127.0.0.1:{port}/metrics");
    let mut operator = Operator::start_with(
        cluster,
        &ns,
        &[
            "--metrics-interval=1s",
            "--metrics-window=3s",
            "--metrics-status-interval=1s",
            &gateway_metrics,
        ],
    )
    .await?;
    let account = enable_chart_gateway(cluster, &name, "pods").await?;
    apply_key_secret(cluster, &name).await?;
    let model = operator.store().join("models/sleepy");
    tiny_model(&model)?;
    let client = cluster.client().await?;
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &name);
    let mut md = model_deployment("sleepy", &format!("file://{}", model.display()), 1);
    md["spec"]["replicas"] = json!({"min": 0, "max": 2});
    md["spec"]["autoscaling"] = json!({
        "metric": "inFlightRequests", "target": 4,
        "stabilizationWindow": "2s", "scaleToZeroAfter": "5s",
    });
    deployments
        .patch(
            "sleepy",
            &PatchParams::apply(llmops_tests::FIELD_MANAGER).force(),
            &Patch::Apply(md),
        )
        .await
        .context("applying ModelDeployment sleepy")?;
    let replayer = Arc::new(cluster.replayer().await?);
    let pods = PodRunner::start(replayer, &name, "llmops.dev/modeldeployment");
    let (gateway, _dir) = spawn_gateway_at(cluster, &name, &account, "pods", 90, port).await?;
    let gw = gateway.address;
    pods.wait_ready(1, READY_TIMEOUT).await?;

    let ask = |prompt: &'static str| async move {
        http(
            gw,
            "POST",
            "/v1/completions",
            Some(KEY_ALL),
            Some(&completion("sleepy", prompt, 2)),
        )
        .await
    };
    let first = eventually(
        "a completion through the gateway",
        READY_TIMEOUT,
        || async {
            let reply = ask("a cat").await?;
            ensure!(reply.status == 200, "{reply:?}");
            Ok(())
        },
    )
    .await;
    if let Err(e) = first {
        bail!("{e:#}\ngateway log:\n{}", gateway.log_tail());
    }

    // Idle for scaleToZeroAfter: no pod, and the status says why.
    let idle_since = std::time::Instant::now();
    let scaled_down = eventually(
        "the deployment to scale to zero",
        Duration::from_secs(90),
        || async {
            let md = deployments.get("sleepy").await?;
            let status = md.status.as_ref().context("no status")?;
            let replicas = status.operator.replicas.as_ref().map(|r| r.desired);
            let reason = status
                .operator
                .last_scale_reason
                .clone()
                .unwrap_or_default();
            ensure!(
                replicas == Some(0) && reason.contains("scaleToZeroAfter"),
                "replicas {replicas:?}, last scale: {reason}"
            );
            ensure!(
                pods.ready().is_empty(),
                "pods still ready: {}",
                pods.describe()
            );
            Ok(())
        },
    )
    .await;
    if let Err(e) = scaled_down {
        bail!("{e:#}\noperator log:\n{}", operator.log_tail(60));
    }
    println!(
        "scale to zero: no pod {:.1}s after the last request (scaleToZeroAfter 5s, metrics window 3s)",
        idle_since.elapsed().as_secs_f64()
    );
    let md = deployments.get("sleepy").await?;
    let ready = md
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .context("no Ready condition")?;
    ensure!(
        ready.status == "True" && ready.message.contains("scaled to zero"),
        "{ready:?}"
    );

    // A request now is held until a pod is ready, then answered.
    let waited = "llmops_gateway_queue_wait_seconds_count{model=\"sleepy\"}";
    let waits_before = sample(&http(gw, "GET", "/metrics", None, None).await?.body, waited);
    let sent = std::time::Instant::now();
    let woke = ask("a dog").await?;
    let held = sent.elapsed();
    if woke.status != 200 {
        bail!(
            "{woke:?}\noperator log:\n{}\ngateway log:\n{}",
            operator.log_tail(60),
            gateway.log_tail()
        );
    }
    println!(
        "scale from zero: the first request answered {:.1}s after it was sent",
        held.as_secs_f64()
    );
    let md = deployments.get("sleepy").await?;
    let reason = md
        .status
        .as_ref()
        .and_then(|s| s.operator.last_scale_reason.clone())
        .unwrap_or_default();
    ensure!(
        reason.contains("held at the gateway: 0 → 1"),
        "last scale: {reason}"
    );
    let metrics = http(gw, "GET", "/metrics", None, None).await?.body;
    ensure!(
        sample(&metrics, waited) == waits_before + 1.0,
        "the held request is not in `{waited}` (was {waits_before}):\n{metrics}"
    );
    for series in [
        "llmops_gateway_deployment_requests_total",
        "llmops_gateway_deployment_queued_requests",
    ] {
        let line = format!("{series}{{namespace=\"{name}\",modeldeployment=\"sleepy\"}}");
        ensure!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
    drop(gateway);
    ns.delete(cluster).await
}

/// Exact canary weights at the gateway: while a canary holds its 25% step
/// (one canary pod beside two stable ones, a third of the pods), exactly one
/// request in four through the gateway goes to the canary pod.
#[tokio::test(flavor = "multi_thread")]
async fn a_canary_gets_exactly_its_steps_weight_through_the_gateway() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-gw-canary").await?;
    let name = ns.name().to_string();
    let operator = Operator::start_with(cluster, &ns, &["--metrics-interval=1s"]).await?;
    let account = enable_chart_gateway(cluster, &name, "pods").await?;
    apply_key_secret(cluster, &name).await?;
    let (first, second) = (
        operator.store().join("models/first"),
        operator.store().join("models/second"),
    );
    tiny_model(&first)?;
    llmops_tests::local::tiny_model_with(&second, &["--seed", "1"])?;
    let client = cluster.client().await?;
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &name);
    let apply = |model: &Path| {
        let mut md = model_deployment("chat", &format!("file://{}", model.display()), 2);
        md["spec"]["rollout"] = json!({
            "strategy": "Canary",
            "canary": {"steps": [{"weight": 25, "pause": "10m"}]},
            "progressDeadlineSeconds": 120,
        });
        md
    };
    let params = PatchParams::apply(llmops_tests::FIELD_MANAGER).force();
    deployments
        .patch("chat", &params, &Patch::Apply(apply(&first)))
        .await?;
    let replayer = Arc::new(cluster.replayer().await?);
    let pods = PodRunner::start(replayer, &name, "llmops.dev/modeldeployment");
    let (gateway, _dir) = spawn_gateway(cluster, &name, &account, "pods", 60).await?;
    let gw = gateway.address;
    pods.wait_ready(2, READY_TIMEOUT).await?;

    // The new model as a canary: its step of 25% holds for ten minutes.
    deployments
        .patch("chat", &params, &Patch::Apply(apply(&second)))
        .await?;
    pods.wait_ready(3, READY_TIMEOUT).await?;
    let canary_pod = || {
        pods.ready()
            .into_iter()
            .find(|p| p.name.starts_with("chat-canary-"))
    };
    let send = |n: usize| async move {
        for i in 0..n {
            let reply = http(
                gw,
                "POST",
                "/v1/completions",
                Some(KEY_ALL),
                Some(&completion("chat", "a cat", 1)),
            )
            .await?;
            ensure!(reply.status == 200, "request {i}: {reply:?}");
        }
        anyhow::Ok(())
    };
    // Once the gateway has seen the canary's step, every 20 requests in a row
    // give it exactly 5.
    let split = eventually(
        "a split of 5 in 20 at the canary",
        READY_TIMEOUT,
        || async {
            let canary = canary_pod().context("no ready canary pod")?;
            let before = completions_served(&canary).await?;
            send(20).await?;
            let got = completions_served(&canary).await? - before;
            ensure!(got == 5, "the canary served {got} of 20");
            Ok(())
        },
    )
    .await;
    if let Err(e) = split {
        bail!(
            "{e:#}\ngateway log:\n{}\nserving pods:\n{}",
            gateway.log_tail(),
            pods.describe()
        );
    }
    let canary = canary_pod().context("no ready canary pod")?;
    let stable: Vec<ServedPod> = pods
        .ready()
        .into_iter()
        .filter(|p| p.name != canary.name)
        .collect();
    let (canary_before, stable_before) = (
        completions_served(&canary).await?,
        served_by(&stable).await?,
    );
    send(40).await?;
    let canary_got = completions_served(&canary).await? - canary_before;
    let stable_got: u64 = served_by(&stable)
        .await?
        .iter()
        .zip(&stable_before)
        .map(|(after, before)| after - before)
        .sum();
    println!("canary at 25% through the gateway: {canary_got} of 40 requests (1 of its 3 pods)");
    ensure!(
        canary_got == 10 && stable_got == 30,
        "canary {canary_got}, stable {stable_got} of 40"
    );
    drop(gateway);
    ns.delete(cluster).await
}

/// The value of the sample `series` (name and labels as written) in a metrics
/// text; 0 when it has none.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The chart's default gateway (EndpointSlices) on the real apiserver, as its
/// ServiceAccount: it lists and watches ModelDeployments, EndpointSlices and
/// its key Secret (by name) and turns ready; it may read no other Secret. No
/// EndpointSlice controller runs here, so a ModelDeployment has no ready
/// endpoint: a request for it waits out the queue timeout and gets 503 with
/// `Retry-After`.
#[tokio::test]
async fn gateway_runs_on_the_charts_endpointslice_rbac_and_reads_no_other_secret()
-> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-gateway-rbac").await?;
    let operator = Operator::start(cluster, &ns).await?;
    let name = ns.name().to_string();
    let account = enable_chart_gateway(cluster, &name, "endpointslices").await?;
    apply_key_secret(cluster, &name).await?;
    let client = cluster.client().await?;
    let other: Api<Secret> = Api::namespaced(client.clone(), &name);
    other
        .patch(
            "not-for-the-gateway",
            &PatchParams::apply(llmops_tests::FIELD_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "not-for-the-gateway"},
                "stringData": {"token": "private"},
            })),
        )
        .await?;
    let deployments: Api<ModelDeployment> = Api::namespaced(client, &name);
    let uri = format!("file://{}", operator.store().join("models/none").display());
    deployments
        .patch(
            "idle",
            &PatchParams::apply(llmops_tests::FIELD_MANAGER).force(),
            &Patch::Apply(model_deployment("idle", &uri, 1)),
        )
        .await?;
    let (gateway, _dir) = spawn_gateway(cluster, &name, &account, "endpointslices", 1).await?;
    let gw = gateway.address;
    let listed = eventually("the gateway to list idle", READY_TIMEOUT, || async move {
        let ready = http(gw, "GET", "/readyz", None, None).await?;
        ensure!(ready.status == 200, "{ready:?}");
        let models = http(gw, "GET", "/v1/models", Some(KEY_ALL), None)
            .await?
            .json()?;
        ensure!(models["data"][0]["id"] == "idle", "{models}");
        Ok(())
    })
    .await;
    if let Err(e) = listed {
        bail!("{e:#}\ngateway log:\n{}", gateway.log_tail());
    }
    let refused = http(
        gw,
        "POST",
        "/v1/completions",
        Some(KEY_ALL),
        Some(&completion("idle", "hi", 2)),
    )
    .await?;
    ensure!(refused.status == 503, "{refused:?}");
    ensure!(
        refused.json()?["error"]["code"] == "model_unavailable",
        "{refused:?}"
    );
    ensure!(refused.header("retry-after") == Some("1"), "{refused:?}");
    let metrics = http(gw, "GET", "/metrics", None, None).await?.body;
    for line in [
        r#"llmops_gateway_ready_endpoints{model="idle"} 0"#,
        r#"llmops_gateway_requests_total{model="idle",code="503"} 1"#,
    ] {
        ensure!(metrics.contains(line), "no `{line}` in\n{metrics}");
    }

    // What its ServiceAccount may read of Secrets: its key Secret, by name.
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&gateway.kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let as_gateway: Api<Secret> = Api::namespaced(kube::Client::try_from(config)?, &name);
    as_gateway
        .get(KEYS_SECRET)
        .await
        .context("the gateway cannot read its key Secret")?;
    let forbidden = |result: Result<_, kube::Error>| matches!(result, Err(kube::Error::Api(status)) if status.code == 403);
    ensure!(
        forbidden(as_gateway.get("not-for-the-gateway").await.map(|_| ())),
        "the gateway may read another Secret"
    );
    ensure!(
        forbidden(as_gateway.list(&ListParams::default()).await.map(|_| ())),
        "the gateway may list every Secret"
    );
    drop(gateway);
    drop(operator);
    ns.delete(cluster).await
}

/// Latency and throughput through the gateway against straight to a pod, in
/// one run: `cargo test -p llmops-tests --test integration gateway_benchmark
/// -- --ignored --nocapture`. Prints `gateway-bench`'s figures; asserts only
/// that it ran.
#[tokio::test]
#[ignore = "a benchmark: run it with --ignored --nocapture"]
async fn gateway_benchmark() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let setup = Setup::start(cluster, "e2e-gateway-bench").await?;
    let beta = setup.ready_pods("beta");
    let pod = beta
        .first()
        .and_then(|p| p.address)
        .context("no beta pod")?;
    let bench = tokio::process::Command::new(gateway_binary("gateway-bench")?)
        .args([
            format!("--direct=http://{pod}"),
            format!("--gateway={}", setup.base_url()),
            "--model=beta".into(),
            "--requests=100".into(),
            "--rounds=4".into(),
            "--concurrency=8".into(),
            "--max-tokens=1".into(),
            "--time-limit=120".into(),
        ])
        .env("LLMOPS_GATEWAY_KEY", KEY_ALL)
        .output()
        .await?;
    println!("{}", String::from_utf8_lossy(&bench.stdout));
    ensure!(
        bench.status.success(),
        "gateway-bench failed: {}",
        String::from_utf8_lossy(&bench.stderr)
    );
    setup.finish().await
}
