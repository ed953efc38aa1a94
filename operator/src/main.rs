//! `operator`: run the llmops controllers, or print the CRDs they serve.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use llmops_operator::config::{OperatorConfig, TrainerResources, normalize_store_uri};
use llmops_operator::controller::deployment::vllm::DEFAULT_IMAGE as DEFAULT_VLLM_IMAGE;
use llmops_operator::controller::deployment::{GatewayMetrics, Monitoring};
use llmops_operator::runtime::controller::Scope;
use llmops_operator::runtime::{LeaderElection, Settings};
use llmops_operator::telemetry::{self, LogFormat};
use llmops_operator::workload::image::{ImagePull, PULL_POLICIES};

#[derive(Parser)]
#[command(name = "operator", version, about = "The llmops Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions of every kind as YAML.
    Crd,
    /// GET a URL and exit 0 on a 2xx answer, 1 otherwise: the chart's `helm test`
    /// pod checks the operator's /readyz with it, with no image but the operator's.
    Probe {
        /// An http:// URL, e.g. http://llmops-metrics.llmops-system.svc:8080/readyz.
        url: String,
        /// Give up after this long (`10s`, `1m`).
        #[arg(long, default_value = "10s", value_parser = duration)]
        timeout: Duration,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Port of /metrics, /healthz and /readyz.
    #[arg(long, default_value_t = 8080)]
    metrics_port: u16,
    /// Log level (trace, debug, info, warn, error) or a full filter (`info,kube=debug`).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// How log lines are written (also `$LLMOPS_LOG_FORMAT`).
    #[arg(long, value_enum, env = llmops_contract::env::LOG_FORMAT, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Image of the trainer pods.
    #[arg(long)]
    trainer_image: String,
    /// Image of the inference pods.
    #[arg(long)]
    server_image: String,
    /// Image of vLLM's OpenAI server, for ModelDeployments with
    /// `spec.server.runtime: vllm` (pulled with the inference pods' policy).
    #[arg(long, default_value = DEFAULT_VLLM_IMAGE)]
    vllm_image: String,
    /// Pull policy of the trainer pods' container (default: Kubernetes' own,
    /// by the image's tag).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(PULL_POLICIES))]
    trainer_image_pull_policy: Option<String>,
    /// Pull policy of the inference pods' container.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(PULL_POLICIES))]
    server_image_pull_policy: Option<String>,
    /// Secrets, comma-separated, that trainer and inference pods pull their
    /// images with; each must exist in the namespace of the pods.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    image_pull_secrets: Vec<String>,
    /// Default artifact store: s3://, gs://, az://, file:// or pvc://<claim>/<path>.
    #[arg(long, value_name = "URI")]
    artifact_store: String,
    /// Secret (in each namespace using the default store) with its credentials.
    #[arg(long, value_name = "NAME")]
    artifact_store_secret: Option<String>,
    /// Extended resource requested for GPUs when a resource names none.
    #[arg(long, default_value = "nvidia.com/gpu")]
    gpu_resource_name: String,
    /// Namespaces to manage, comma-separated; empty manages every namespace.
    #[arg(long, value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Elect a leader on a Lease in $POD_NAMESPACE, held as $POD_NAME.
    #[arg(long)]
    leader_election: bool,
    /// OTLP gRPC endpoint for traces, e.g. http://otel-collector:4317; the
    /// standard `OTEL_EXPORTER_OTLP_*` variables do the same (and choose HTTP).
    /// The trainer and serving pods get the same settings.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// How often each ModelDeployment's serving pods are scraped (`15s`, `1m`).
    #[arg(long, default_value = "15s", value_parser = duration)]
    metrics_interval: Duration,
    /// The window `status.metrics`, autoscaling and canary analysis summarise.
    #[arg(long, default_value = "1m", value_parser = duration)]
    metrics_window: Duration,
    /// Least time between two writes of a ModelDeployment's `status.metrics`.
    #[arg(long, default_value = "30s", value_parser = duration)]
    metrics_status_interval: Duration,
    /// Let Dataset sources read from link-local and cloud-metadata addresses
    /// (refused by default: they can hand out the node's credentials).
    #[arg(long)]
    allow_link_local_sources: bool,
    /// Give each ModelDeployment a NetworkPolicy that opens its serving port to
    /// its namespace and the operator only (to all when its Service or an
    /// HTTPRoute takes traffic from outside), and the trainer pods of each
    /// Dataset, PretrainJob and FineTune one that confines them to their own run,
    /// DNS and `--trainer-egress`. `false` leaves both to the cluster's own
    /// policies.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    network_policies: bool,
    /// With `--network-policies`: where trainer pods may connect besides their own
    /// run and DNS, as a JSON list of NetworkPolicy egress rules (`[{"to": [...],
    /// "ports": [...]}]`): the apiserver, the artifact store, data sources.
    /// Unset, every destination.
    #[arg(long)]
    trainer_egress: Option<String>,
    /// Serve no model without an API key: a ModelDeployment without
    /// `spec.auth` stalls.
    #[arg(long)]
    require_auth: bool,
    /// Reconciles of one kind run at once at most (per namespace with
    /// `--namespaces`). Each holds an apiserver connection while it runs.
    #[arg(long, default_value_t = llmops_operator::config::DEFAULT_RECONCILE_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
    /// Base URL of the Hugging Face Hub (or a mirror of it) that trainer and
    /// serving pods read `hf://` URIs from, as their `HF_ENDPOINT`. Unset, the
    /// pods use the public Hub.
    #[arg(long, value_name = "URL", value_parser = hub_endpoint)]
    hf_endpoint: Option<String>,
    /// The gateway's `/metrics`, read for scale to zero: every address the
    /// URL's host resolves to is a gateway replica (the chart's headless
    /// Service of the gateway pods). Without it a ModelDeployment keeps at
    /// least one replica.
    #[arg(long, value_name = "URL", value_parser = GatewayMetrics::parse)]
    gateway_metrics_url: Option<GatewayMetrics>,
}

/// An http(s) URL without a trailing slash, as the pods' `HF_ENDPOINT`.
fn hub_endpoint(text: &str) -> Result<String, String> {
    let url = text.trim_end_matches('/');
    match url.split_once("://") {
        Some(("http" | "https", host)) if !host.is_empty() => Ok(url.to_string()),
        _ => Err(format!(
            "{text:?} is not an http:// or https:// URL of a Hub, e.g. https://hub.internal"
        )),
    }
}

/// What every trainer and serving pod gets from the operator's own settings.
fn pod_env(otlp_endpoint: Option<&str>, hf_endpoint: Option<String>) -> Vec<(String, String)> {
    let mut vars = llmops_telemetry::otlp::export_env(otlp_endpoint);
    if let Some(url) = hf_endpoint {
        vars.push(("HF_ENDPOINT".into(), url));
    }
    vars
}

/// A duration as the CRDs spell them (`500ms`, `15s`, `1m30s`).
fn duration(text: &str) -> Result<Duration, String> {
    llmops_operator::controller::deployment::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 15s, 1m or 500ms"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Workspace builds enable more than one rustls backend (ring here, aws-lc-rs
    // through reqwest elsewhere), and then rustls refuses to guess: pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Crd => print_crds(),
        Command::Run(args) => run(*args).await,
        Command::Probe { url, timeout } => probe(&url, timeout).await,
    }
}

async fn probe(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let response = reqwest::Client::builder()
        .timeout(timeout)
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {}", body.trim());
    println!("GET {url}: {status}");
    Ok(())
}

fn print_crds() -> anyhow::Result<()> {
    let mut yaml = String::new();
    for crd in llmops_crds::all_crds() {
        yaml.push_str("---\n");
        yaml.push_str(&llmops_crds::render_crd(&crd)?);
    }
    match std::io::stdout().lock().write_all(yaml.as_bytes()) {
        // `operator crd | head` closing the pipe early is not a failure.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let telemetry = telemetry::init(
        &args.log_level,
        args.log_format,
        args.otlp_endpoint.as_deref(),
    )?;
    let pod_name = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty());
    let leader_election = if args.leader_election {
        Some(LeaderElection {
            namespace: std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
                .context("--leader-election needs POD_NAMESPACE (the namespace of the Lease)")?,
            identity: pod_name
                .clone()
                .context("--leader-election needs POD_NAME (this replica's identity)")?,
        })
    } else {
        None
    };
    let pull_secrets: Vec<String> = args
        .image_pull_secrets
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    let settings = Settings {
        config: OperatorConfig {
            trainer_image: args.trainer_image,
            server_image: args.server_image,
            vllm_image: args.vllm_image,
            trainer_image_pull: ImagePull {
                policy: args.trainer_image_pull_policy,
                secrets: pull_secrets.clone(),
            },
            server_image_pull: ImagePull {
                policy: args.server_image_pull_policy,
                secrets: pull_secrets,
            },
            artifact_store: normalize_store_uri(&args.artifact_store),
            artifact_store_secret: args.artifact_store_secret.filter(|s| !s.is_empty()),
            gpu_resource_name: args.gpu_resource_name,
            trainer_resources: TrainerResources::default(),
            monitoring: Monitoring {
                interval: args.metrics_interval,
                window: args.metrics_window,
                status_interval: args.metrics_status_interval,
                ..Monitoring::default()
            },
            allow_link_local_sources: args.allow_link_local_sources,
            network_policies: args.network_policies,
            trainer_egress: match &args.trainer_egress {
                Some(rules) => llmops_operator::workload::isolation::parse_egress(rules)
                    .map_err(anyhow::Error::msg)?,
                None => llmops_operator::workload::isolation::allow_all(),
            },
            operator_namespace: std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|ns| !ns.is_empty()),
            require_auth: args.require_auth,
            pod_export_env: pod_env(args.otlp_endpoint.as_deref(), args.hf_endpoint),
            reconcile_concurrency: args.max_concurrent_reconciles,
            gateway_metrics: args.gateway_metrics_url,
        },
        scope: Scope::new(
            args.namespaces
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect(),
        ),
        metrics_port: args.metrics_port,
        leader_election,
        instance: pod_name,
    };
    let result =
        llmops_operator::runtime::run(settings, llmops_operator::controller::start_all).await;
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "operator failed");
    }
    telemetry.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_flags_the_chart_passes() {
        let cli = Cli::try_parse_from([
            "operator",
            "run",
            "--metrics-port=9090",
            "--log-level=debug",
            "--log-format=text",
            "--trainer-image=ghcr.io/llmops-dev/trainer:0.1.0",
            "--server-image=ghcr.io/llmops-dev/server:0.1.0",
            "--artifact-store=s3://llmops-artifacts",
            "--artifact-store-secret=store-creds",
            "--gpu-resource-name=nvidia.com/gpu",
            "--namespaces=team-a,team-b",
            "--leader-election",
            "--otlp-endpoint=http://otel-collector:4317",
            "--trainer-image-pull-policy=Always",
            "--server-image-pull-policy=IfNotPresent",
            "--image-pull-secrets=regcred,mirror",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.metrics_port, 9090);
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.artifact_store_secret.as_deref(), Some("store-creds"));
        assert_eq!(args.namespaces, ["team-a", "team-b"]);
        assert!(args.leader_election);
        assert_eq!(
            args.otlp_endpoint.as_deref(),
            Some("http://otel-collector:4317")
        );
        assert_eq!(args.trainer_image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(
            args.server_image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        assert_eq!(args.image_pull_secrets, ["regcred", "mirror"]);
    }

    #[tokio::test]
    async fn probe_passes_on_2xx_and_fails_otherwise() {
        use axum::http::StatusCode;
        let app = axum::Router::new()
            .route("/readyz", axum::routing::get(|| async { "ok" }))
            .route(
                "/down",
                axum::routing::get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "not leader") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let timeout = Duration::from_secs(5);
        probe(&format!("http://{addr}/readyz"), timeout)
            .await
            .unwrap();
        let err = probe(&format!("http://{addr}/down"), timeout)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("503"), "{err:#}");
        let parsed =
            Cli::try_parse_from(["operator", "probe", "http://x/readyz", "--timeout=3s"]).unwrap();
        assert!(
            matches!(parsed.command, Command::Probe { timeout, .. } if timeout == Duration::from_secs(3))
        );
    }

    #[test]
    fn the_gateway_metrics_url_is_an_http_url() {
        let run = |flag: &str| {
            Cli::try_parse_from([
                "operator",
                "run",
                "--trainer-image=t",
                "--server-image=s",
                "--artifact-store=file:///tmp/store",
                flag,
            ])
        };
        let Command::Run(args) = run(
            "--gateway-metrics-url=http://rel-llmops-gateway-pods.llmops-system.svc:8080/metrics",
        )
        .unwrap()
        .command
        else {
            panic!("not run");
        };
        let gateway = args.gateway_metrics_url.expect("parsed");
        assert_eq!(
            (gateway.host.as_str(), gateway.port, gateway.path.as_str()),
            (
                "rel-llmops-gateway-pods.llmops-system.svc",
                8080,
                "/metrics"
            )
        );
        let Err(refused) = run("--gateway-metrics-url=rel-llmops-gateway-pods:8080") else {
            panic!("a URL without http:// was taken");
        };
        assert!(
            refused.to_string().contains("gateway's /metrics"),
            "{refused}"
        );
    }

    #[test]
    fn an_unknown_pull_policy_is_refused() {
        let parsed = Cli::try_parse_from([
            "operator",
            "run",
            "--trainer-image=t",
            "--server-image=s",
            "--artifact-store=file:///tmp/store",
            "--trainer-image-pull-policy=Sometimes",
        ]);
        assert!(parsed.is_err());
    }

    #[test]
    fn optional_flags_default_to_cluster_wide_json_without_election() {
        let cli = Cli::try_parse_from([
            "operator",
            "run",
            "--trainer-image=t",
            "--server-image=s",
            "--artifact-store=file:///tmp/store",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.metrics_port, 8080);
        assert_eq!(args.log_format, LogFormat::Json);
        assert!(args.namespaces.is_empty());
        assert!(!args.leader_election);
        assert!(args.artifact_store_secret.is_none());
        assert!(args.otlp_endpoint.is_none());
        assert!(args.trainer_image_pull_policy.is_none());
        assert!(args.image_pull_secrets.is_empty());
        // The release whose metric names the monitor reads.
        assert_eq!(args.vllm_image, "vllm/vllm-openai:v0.10.0");
        assert_eq!(
            args.max_concurrent_reconciles,
            llmops_operator::config::DEFAULT_RECONCILE_CONCURRENCY
        );
        assert!(args.hf_endpoint.is_none());
    }

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec![
            "operator",
            "run",
            "--trainer-image=t",
            "--server-image=s",
            "--artifact-store=file:///tmp/store",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(*args),
            _ => panic!("not run"),
        }
    }

    #[test]
    fn a_reconcile_concurrency_of_zero_is_refused() {
        let err = run_args(&["--max-concurrent-reconciles=0"]).err().unwrap();
        assert!(
            err.to_string().contains("max-concurrent-reconciles"),
            "{err}"
        );
        assert_eq!(
            run_args(&["--max-concurrent-reconciles=64"])
                .unwrap()
                .max_concurrent_reconciles,
            64
        );
    }

    #[test]
    fn the_hub_endpoint_reaches_every_pod_as_hf_endpoint() {
        let args = run_args(&["--hf-endpoint=https://hub.internal/"]).unwrap();
        let vars = pod_env(None, args.hf_endpoint);
        assert_eq!(
            vars,
            [(
                "HF_ENDPOINT".to_string(),
                "https://hub.internal".to_string()
            )]
        );
        let err = run_args(&["--hf-endpoint=hub.internal"]).err().unwrap();
        assert!(
            err.to_string().contains("not an http:// or https:// URL"),
            "{err}"
        );
    }
}
