//! `gateway`: one OpenAI base URL for every ModelDeployment.
//!
//! Watches ModelDeployments, their Services' ready endpoints and the key
//! Secrets, and serves `/v1/models`, `/v1/completions` and
//! `/v1/chat/completions`, routing each request by its `model` to a ready
//! serving pod. Stateless: replicas share nothing but what they read from the
//! API (each keeps its own rate buckets).
//!
//! On SIGTERM `/readyz` keeps answering until the listener closes; requests in
//! flight, streams included, finish within `--shutdown-grace`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use llmops_gateway::discovery::{self, EndpointSource, Scope};
use llmops_gateway::metrics::Metrics;
use llmops_gateway::proxy::{Gateway, Options, router};
use llmops_gateway::registry::Registry;

/// One OpenAI base URL for every ModelDeployment.
#[derive(Parser, Debug)]
#[command(name = "gateway", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Serve the ModelDeployments of these namespaces (comma-separated or
    /// repeated); without it, those of every namespace. Models are named
    /// `<namespace>/<name>`, or just `<name>` when one namespace is served.
    #[arg(long = "namespaces", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Where the ready pods of a ModelDeployment's Service are read.
    #[arg(long, value_enum, default_value_t = EndpointSource::Endpointslices)]
    endpoints: EndpointSource,
    /// Namespace of the key Secrets (default: the pod's own, from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    keys_namespace: String,
    /// Secrets of API keys (comma-separated or repeated), in --keys-namespace;
    /// each data entry of each is one key.
    #[arg(long = "key-secrets", required = true, value_delimiter = ',')]
    key_secrets: Vec<String>,
    /// Characters of a prompt that make its affinity key (0: no affinity).
    #[arg(long, default_value_t = 256)]
    affinity_prefix_chars: usize,
    /// Requests in flight a pod may have beyond the least busy one and still
    /// take the prompts it is preferred for.
    #[arg(long, default_value_t = 4)]
    affinity_bound: usize,
    /// Seconds a request waits for its model to have a ready pod.
    #[arg(long, default_value_t = 10)]
    queue_timeout: u64,
    /// Requests one model may have waiting for a ready pod; more get a 503
    /// with Retry-After at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
    max_queued: i64,
    /// `max_tokens` counted against a token limit when a request sets none.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: u32,
    /// Seconds requests in flight get to finish after SIGTERM.
    #[arg(long, default_value_t = 25)]
    shutdown_grace: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.key_secrets.iter().any(String::is_empty) {
        anyhow::bail!("--key-secrets: a Secret name must not be empty");
    }
    if cli.namespaces.iter().any(String::is_empty) {
        anyhow::bail!("--namespaces: a namespace must not be empty");
    }
    let client = kube::Client::try_default().await?;
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::new());
    let scope = Scope {
        namespaces: cli.namespaces.clone(),
        endpoints: cli.endpoints,
        keys_namespace: cli.keys_namespace.clone(),
        key_secrets: cli.key_secrets.clone(),
    };
    let discovery = tokio::spawn(discovery::run(
        client,
        scope,
        registry.clone(),
        metrics.clone(),
    ));
    let options = Options {
        affinity_chars: cli.affinity_prefix_chars,
        affinity_bound: cli.affinity_bound,
        queue_timeout: Duration::from_secs(cli.queue_timeout),
        max_queued: cli.max_queued,
        default_max_tokens: cli.default_max_tokens,
        ..Options::default()
    };
    let gateway = Arc::new(Gateway::new(registry, metrics, options)?);
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "gateway listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopped = stop_rx.clone();
    let server = axum::serve(listener, router(gateway)).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(async move { server.await });
    tokio::select! {
        () = shutdown_signal() => {}
        ended = discovery => {
            anyhow::bail!("discovery ended: {ended:?}");
        }
    }
    tracing::info!("stopping: finishing requests in flight");
    let _ = stop_tx.send(true);
    drop(stop_rx);
    match tokio::time::timeout(Duration::from_secs(cli.shutdown_grace), server).await {
        Ok(result) => result??,
        Err(_) => tracing::warn!("requests still in flight after the shutdown grace"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
