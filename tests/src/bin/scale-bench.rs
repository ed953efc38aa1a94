//! The operator's memory and reconcile latency with many Datasets: a benchmark,
//! not a test (it asserts nothing about speed or size).
//!
//! ```sh
//! eval "export $(tests/cluster/up)"
//! cargo build -p llmops-operator && cargo build -p llmops-tests --bin scale-bench
//! target/debug/scale-bench --datasets 2000 --namespaces 50
//! ```
//!
//! It runs the `operator` binary beside it (or `--operator <path>`) watching all
//! namespaces, as the admin user, twice: first with `LLMOPS_CACHE_FULL_OBJECTS=1`
//! (whole objects cached and decoded, as the operator did before trimming), then
//! as it runs normally. For each run it creates fresh namespaces, samples the
//! process's RSS (`VmRSS` of `/proc/<pid>/status`) once the controllers are
//! ready, creates the Datasets (small inline sources) spread over the
//! namespaces, waits until each has its Job (its Ready reason is past the first
//! sight), samples RSS again once things settle, and prints RSS idle and loaded,
//! KiB per Dataset, and the latency from each create to the first status write
//! and to the status that reports the Job (p50, p95). Then it stops the
//! operator and deletes the namespaces, waiting until they are gone. It ends
//! with the ratio of the two runs and the JSON size of one Dataset and its
//! children as the API returns them. Pods are only API objects here (kwok).
//!
//! Options: `--datasets N` (2000), `--namespaces M` (50), `--operator PATH`,
//! `--only full|trimmed` (one run), `--timeout-secs S` (600, per run, for the
//! Datasets to be reconciled).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use llmops_crds::Dataset;
use llmops_tests::{Cluster, TestNamespace, apply_crds};
use tokio::task::JoinSet;

/// The operator's switch back to whole cached objects (`runtime/controller.rs`).
const FULL_OBJECTS_ENV: &str = "LLMOPS_CACHE_FULL_OBJECTS";
/// Label on every Dataset the benchmark creates, valued with the run's name.
const RUN_LABEL: &str = "llmops.dev/scale-bench";
/// Creates in flight at once.
const CREATE_CONCURRENCY: usize = 16;
/// Quiet time after the last Dataset is reconciled, before RSS is sampled.
const SETTLE: Duration = Duration::from_secs(15);

struct Options {
    datasets: usize,
    namespaces: usize,
    operator: Option<PathBuf>,
    only: Option<String>,
    timeout: Duration,
}

fn options() -> anyhow::Result<Options> {
    let mut opts = Options {
        datasets: 2000,
        namespaces: 50,
        operator: None,
        only: None,
        timeout: Duration::from_secs(600),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || -> anyhow::Result<String> {
            inline
                .clone()
                .or_else(|| args.next())
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--datasets" => opts.datasets = value()?.parse()?,
            "--namespaces" => opts.namespaces = value()?.parse()?,
            "--operator" => opts.operator = Some(value()?.into()),
            "--only" => opts.only = Some(value()?),
            "--timeout-secs" => opts.timeout = Duration::from_secs(value()?.parse()?),
            "-h" | "--help" => {
                println!(
                    "scale-bench [--datasets N] [--namespaces M] [--operator PATH] [--only full|trimmed] [--timeout-secs S]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if opts.datasets == 0 || opts.namespaces == 0 {
        bail!("--datasets and --namespaces must be at least 1");
    }
    if let Some(only) = &opts.only
        && only != "full"
        && only != "trimmed"
    {
        bail!("--only takes full or trimmed");
    }
    Ok(opts)
}

/// What one run measured.
struct Figures {
    name: &'static str,
    datasets: usize,
    idle_kib: u64,
    loaded_kib: u64,
    first_status: Vec<Duration>,
    job_reported: Vec<Duration>,
    reconcile_secs: f64,
}

impl Figures {
    fn kib_per_dataset(&self) -> f64 {
        self.loaded_kib.saturating_sub(self.idle_kib) as f64 / self.datasets as f64
    }

    fn print(&self) {
        println!("{}:", self.name);
        println!(
            "  RSS idle {:.1} MiB, loaded {:.1} MiB: {:.1} KiB per Dataset (with its children)",
            self.idle_kib as f64 / 1024.0,
            self.loaded_kib as f64 / 1024.0,
            self.kib_per_dataset()
        );
        println!(
            "  create → first status write: p50 {}, p95 {} ({} of {})",
            ms(percentile(&self.first_status, 50)),
            ms(percentile(&self.first_status, 95)),
            self.first_status.len(),
            self.datasets
        );
        println!(
            "  create → status with the Job: p50 {}, p95 {} ({} of {}); all in {:.1} s",
            ms(percentile(&self.job_reported, 50)),
            ms(percentile(&self.job_reported, 95)),
            self.job_reported.len(),
            self.datasets,
            self.reconcile_secs
        );
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{} ms", d.as_millis()))
}

fn percentile(samples: &[Duration], p: usize) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (p * sorted.len()).div_ceil(100).max(1) - 1;
    Some(sorted[rank.min(sorted.len() - 1)])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = options()?;
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let client = cluster.client().await?;
    apply_crds(&client).await?;
    let operator = match &opts.operator {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the executable has no directory")?
            .join("operator"),
    };
    if !operator.exists() {
        bail!(
            "{} is missing: build it with `cargo build -p llmops-operator`",
            operator.display()
        );
    }
    println!(
        "scale-bench: {} Datasets across {} namespaces, operator {}",
        opts.datasets,
        opts.namespaces,
        operator.display()
    );

    let runs: Vec<(&'static str, bool)> = [("full", true), ("trimmed", false)]
        .into_iter()
        .filter(|(name, _)| opts.only.as_deref().is_none_or(|o| o == *name))
        .collect();
    let mut results = Vec::new();
    let mut sizes = None;
    for (name, full) in runs {
        let (figures, one) = run(cluster, &client, &opts, &operator, name, full).await?;
        figures.print();
        sizes = sizes.or(one);
        results.push(figures);
    }

    println!();
    for figures in &results {
        figures.print();
    }
    if let [full, trimmed] = results.as_slice() {
        println!(
            "trimmed / full: {:.2} × the memory per Dataset, {:.2} × the loaded RSS",
            trimmed.kib_per_dataset() / full.kib_per_dataset(),
            trimmed.loaded_kib as f64 / full.loaded_kib as f64
        );
    }
    if let Some(sizes) = sizes {
        println!("{sizes}");
    }
    Ok(())
}

/// One run: fresh namespaces, an operator, the Datasets, the figures; then the
/// operator stopped and the namespaces deleted and gone.
async fn run(
    cluster: &'static Cluster,
    client: &Client,
    opts: &Options,
    operator: &Path,
    name: &'static str,
    full: bool,
) -> anyhow::Result<(Figures, Option<String>)> {
    let label = if full {
        "whole objects cached (LLMOPS_CACHE_FULL_OBJECTS=1, as before)"
    } else {
        "trimmed caches and metadata-only watches"
    };
    println!("--- run {name}: {label}");
    let mut namespaces = Vec::new();
    for _ in 0..opts.namespaces {
        namespaces.push(TestNamespace::create(cluster, "scale-bench").await?);
    }
    let outcome = measure(cluster, client, opts, operator, name, full, &namespaces).await;
    let names: Vec<String> = namespaces.iter().map(|ns| ns.name().to_string()).collect();
    for ns in namespaces {
        ns.delete(cluster).await?;
    }
    let started = Instant::now();
    wait_gone(client, &names, Duration::from_secs(600)).await?;
    println!(
        "  namespaces deleted and gone in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    outcome
}

async fn measure(
    cluster: &Cluster,
    client: &Client,
    opts: &Options,
    operator: &Path,
    name: &'static str,
    full: bool,
    namespaces: &[TestNamespace],
) -> anyhow::Result<(Figures, Option<String>)> {
    let dir = tempfile::Builder::new()
        .prefix("llmops-scale-bench-")
        .tempdir()?;
    let mut process = OperatorProcess::start(cluster, operator, dir.path(), full)?;
    process.wait_ready(Duration::from_secs(180))?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_kib = process.rss_kib()?;
    println!("  operator ready, RSS idle {idle_kib} KiB");

    let watch = StatusWatch::start(cluster, name)?;
    let created = create_datasets(client, opts.datasets, namespaces, name).await?;
    let started = created.values().min().copied().unwrap_or_else(Instant::now);
    println!(
        "  {} Datasets created in {:.1} s",
        created.len(),
        started.elapsed().as_secs_f64()
    );

    let deadline = Instant::now() + opts.timeout;
    loop {
        let done = watch.reported(&created);
        if done >= created.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {done} of {} Datasets reported their Job within {:?}{}",
                created.len(),
                opts.timeout,
                process.log_tail()
            );
        }
        if !process.running()? {
            bail!("the operator exited{}", process.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (first_status, job_reported, last) = watch.latencies(&created);
    let reconcile_secs = last.duration_since(started).as_secs_f64();
    println!("  all reconciled in {reconcile_secs:.1} s; settling");
    tokio::time::sleep(SETTLE).await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(process.rss_kib()?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    samples.sort();
    let loaded_kib = samples[samples.len() / 2];
    let sizes = object_sizes(client, &namespaces[0]).await.ok();
    drop(watch);
    process.stop();
    Ok((
        Figures {
            name,
            datasets: created.len(),
            idle_kib,
            loaded_kib,
            first_status,
            job_reported,
            reconcile_secs,
        },
        sizes,
    ))
}

/// Create `count` Datasets round-robin over `namespaces`; the instant each create
/// was sent, by `namespace/name`.
async fn create_datasets(
    client: &Client,
    count: usize,
    namespaces: &[TestNamespace],
    run: &str,
) -> anyhow::Result<HashMap<String, Instant>> {
    let mut created = HashMap::new();
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let ns = namespaces[i % namespaces.len()].name().to_string();
        let name = format!("ds-{i:05}");
        let api: Api<Dataset> = Api::namespaced(client.clone(), &ns);
        let dataset = dataset(&name, run, i)?;
        if tasks.len() >= CREATE_CONCURRENCY
            && let Some(done) = tasks.join_next().await
        {
            let (key, at) = done??;
            created.insert(key, at);
        }
        tasks.spawn(async move {
            let at = Instant::now();
            api.create(&PostParams::default(), &dataset)
                .await
                .with_context(|| format!("creating Dataset {ns}/{name}"))?;
            anyhow::Ok((format!("{ns}/{name}"), at))
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (key, at) = done??;
        created.insert(key, at);
    }
    Ok(created)
}

/// A small Dataset: one inline source of a few lines, a tokenizer to train.
fn dataset(name: &str, run: &str, i: usize) -> anyhow::Result<Dataset> {
    let content = (0..8)
        .map(|line| {
            format!("Document {i}, line {line}: the quick brown fox jumps over the lazy dog.")
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "labels": {RUN_LABEL: run}},
        "spec": {
            "type": "pretraining",
            "sources": [{"inline": {"content": content}}],
            "tokenizer": {"train": {"vocabSize": 512}},
            "segmentation": {"sequenceLength": 64},
            "split": {"validation": 0.1, "seed": 1},
        },
    }))?)
}

/// The JSON size of one Dataset and its children as the API returns them (a
/// reference for the cached figures).
async fn object_sizes(client: &Client, ns: &TestNamespace) -> anyhow::Result<String> {
    // JSON bytes of an object, and of its managedFields.
    macro_rules! sizes {
        ($obj:expr) => {
            (
                serde_json::to_vec(&$obj).map_or(0, |v| v.len()),
                $obj.metadata
                    .managed_fields
                    .as_ref()
                    .map_or(0, |m| serde_json::to_vec(m).map_or(0, |v| v.len())),
            )
        };
    }
    let ns = ns.name();
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns);
    let ds = datasets.get("ds-00000").await?;
    let name = ds.name_any();
    let job: Job = Api::namespaced(client.clone(), ns)
        .get(&format!("{name}-prepare-g1"))
        .await?;
    let cm: ConfigMap = Api::namespaced(client.clone(), ns)
        .get(&format!("{name}-prepare"))
        .await?;
    let sa: ServiceAccount = Api::namespaced(client.clone(), ns)
        .get(&format!("{name}-trainer"))
        .await?;
    let role: Role = Api::namespaced(client.clone(), ns)
        .get(&format!("{name}-trainer"))
        .await?;
    let binding: RoleBinding = Api::namespaced(client.clone(), ns)
        .get(&format!("{name}-trainer"))
        .await?;
    let pods: Vec<Pod> = Api::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("job-name={name}-prepare-g1")))
        .await?
        .items;
    let pod = pods.iter().fold((0, 0), |(a, b), pod| {
        let (x, y) = sizes!(pod);
        (a + x, b + y)
    });
    let parts = [
        ("Dataset", sizes!(ds)),
        ("Job", sizes!(job)),
        ("ConfigMap", sizes!(cm)),
        ("ServiceAccount", sizes!(sa)),
        ("Role", sizes!(role)),
        ("RoleBinding", sizes!(binding)),
        ("Pod", pod),
    ];
    let total: usize = parts.iter().map(|p| p.1.0).sum();
    let total_managed: usize = parts.iter().map(|p| p.1.1).sum();
    let each = parts
        .iter()
        .map(|(kind, (bytes, managed))| format!("{kind} {bytes} B ({managed} B managedFields)"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "one Dataset with its children as JSON from the API: {total} B ({total_managed} B of it managedFields): {each}"
    ))
}

/// The operator binary run cluster-wide as the admin user.
struct OperatorProcess {
    child: Child,
    log: PathBuf,
    metrics_port: u16,
}

impl OperatorProcess {
    fn start(cluster: &Cluster, binary: &Path, dir: &Path, full: bool) -> anyhow::Result<Self> {
        let metrics_port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let log = dir.join("operator.log");
        let output = std::fs::File::create(&log)?;
        let store = dir.join("store");
        std::fs::create_dir_all(&store)?;
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg(format!("--metrics-port={metrics_port}"))
            .arg("--log-format=text")
            .arg("--log-level=warn")
            .arg("--trainer-image=ghcr.io/llmops-dev/trainer:bench")
            .arg("--server-image=ghcr.io/llmops-dev/server:bench")
            .arg(format!("--artifact-store=file://{}", store.display()))
            .env("KUBECONFIG", cluster.kubeconfig())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove(FULL_OBJECTS_ENV)
            .env("NO_COLOR", "1");
        if full {
            command.env(FULL_OBJECTS_ENV, "1");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            log,
            metrics_port,
        })
    }

    /// Wait until `/readyz` answers 200 (the controllers' caches synced).
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.metrics_port));
        loop {
            if let Ok((200, _)) = llmops_tests::local::http(address, "GET", "/readyz", None, None) {
                return Ok(());
            }
            if !self.running()? {
                bail!("the operator exited{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator was not ready within {timeout:?}{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// `VmRSS` of `/proc/<pid>/status`, in KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "\n--- operator log (last 30 lines) ---\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// By `namespace/name`: first seen with a status, first seen with its Job reported.
type Seen = HashMap<String, (Option<Instant>, Option<Instant>)>;

/// When each Dataset of a run was first seen with a status, and first seen with a
/// Ready reason past the first sight's (its Job made and observed): `kubectl get
/// -w` on the run's label, read on a thread of its own.
struct StatusWatch {
    child: Arc<Mutex<Child>>,
    stopped: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
}

impl StatusWatch {
    fn start(cluster: &Cluster, run: &str) -> anyhow::Result<Self> {
        let command = {
            let kubeconfig = cluster.kubeconfig().to_path_buf();
            let selector = format!("{RUN_LABEL}={run}");
            move || {
                let mut command = Command::new("kubectl");
                command
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "get",
                        "datasets.llmops.dev",
                        "--all-namespaces",
                        "--watch",
                        "--request-timeout=0",
                        "-l",
                        &selector,
                        "-o",
                        r#"jsonpath={.metadata.namespace}/{.metadata.name} {.status.conditions[?(@.type=="Ready")].reason}{"\n"}"#,
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                command
            }
        };
        let child = Arc::new(Mutex::new(
            command().spawn().context("starting kubectl get --watch")?,
        ));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let stopped = Arc::new(AtomicBool::new(false));
        let (record, current, stop) = (seen.clone(), child.clone(), stopped.clone());
        std::thread::spawn(move || {
            // kubectl ends its watch when the apiserver closes it: start it again
            // (it lists first, so nothing is missed, only seen later).
            loop {
                let Some(stdout) = current.lock().unwrap().stdout.take() else {
                    return;
                };
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let now = Instant::now();
                    let mut words = line.split_whitespace();
                    let (Some(key), Some(reason)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let mut seen = record.lock().unwrap();
                    let entry = seen.entry(key.to_string()).or_default();
                    entry.0.get_or_insert(now);
                    if reason != "Reconciling" {
                        entry.1.get_or_insert(now);
                    }
                }
                let mut child = current.lock().unwrap();
                let _ = child.wait();
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                match command().spawn() {
                    Ok(next) => *child = next,
                    Err(_) => return,
                }
            }
        });
        Ok(Self {
            child,
            stopped,
            seen,
        })
    }

    /// How many of `created` reported their Job.
    fn reported(&self, created: &HashMap<String, Instant>) -> usize {
        let seen = self.seen.lock().unwrap();
        created
            .keys()
            .filter(|k| seen.get(*k).is_some_and(|s| s.1.is_some()))
            .count()
    }

    /// Create → first status, create → Job reported, and the last report.
    fn latencies(
        &self,
        created: &HashMap<String, Instant>,
    ) -> (Vec<Duration>, Vec<Duration>, Instant) {
        let seen = self.seen.lock().unwrap();
        let (mut first, mut job, mut last) = (Vec::new(), Vec::new(), None::<Instant>);
        for (key, at) in created {
            let Some((status, reported)) = seen.get(key) else {
                continue;
            };
            // The first write may have been missed when the Job's came right after.
            if let Some(status) = status.or(*reported) {
                first.push(status.saturating_duration_since(*at));
            }
            if let Some(reported) = reported {
                job.push(reported.saturating_duration_since(*at));
                last = Some(last.map_or(*reported, |l| l.max(*reported)));
            }
        }
        (first, job, last.unwrap_or_else(Instant::now))
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Wait until none of `names` exists any more. Pods of a deleted Job keep the
/// Job controller's tracking finalizer while they run, and kwok's run until
/// deleted: the finalizer is taken off the terminating pods so they can go.
async fn wait_gone(client: &Client, names: &[String], timeout: Duration) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    for name in names {
        while api.get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                bail!("namespace {name} still exists after {timeout:?}");
            }
            release_pods(client, name).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

/// Remove the finalizers of the terminating pods in `namespace`.
async fn release_pods(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"finalizers": null}});
    let mut tasks = JoinSet::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        if pod.metadata.deletion_timestamp.is_none()
            || pod.metadata.finalizers.as_ref().is_none_or(Vec::is_empty)
        {
            continue;
        }
        let (pods, patch) = (pods.clone(), patch.clone());
        if tasks.len() >= CREATE_CONCURRENCY {
            tasks.join_next().await;
        }
        tasks.spawn(async move {
            // A pod gone meanwhile is fine.
            let _ = pods
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
