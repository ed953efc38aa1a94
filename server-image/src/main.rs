//! `server --model URI [--port] [--api-key-file]`: serves a model directory
//! (Hugging Face layout) over an OpenAI-compatible HTTP API.
//!
//! The HTTP port opens at once (`/healthz` answers, `/readyz` says 503) and the
//! model loads in the background; a model that cannot be loaded ends the
//! process with one line saying why.
//!
//! On SIGTERM (or Ctrl-C) `/readyz` turns 503 at once while every request,
//! also one arriving meanwhile, is still served; once no request is in flight,
//! or `--shutdown-grace` has passed, the process exits with status 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use llmops_contract::{SERVER_PORT, env};
use llmops_server::api::{self, AppState, router};
use llmops_server::load::{self, DtypeChoice};
use llmops_server::metrics::Metrics;
use llmops_store::Credentials;
use tracing::Instrument as _;

/// Serve a model over an OpenAI-compatible HTTP API.
#[derive(Parser, Debug)]
#[command(name = "server", version)]
struct Cli {
    /// Model directory URI (Hugging Face layout): file://, pvc://, s3://, gs://,
    /// az:// or a plain path.
    #[arg(long)]
    model: String,
    /// The model's artifact digest (`sha256:<hex>`, from its manifest): a model
    /// that is not this one, or an export without a manifest, is refused before
    /// the server reports ready.
    #[arg(long)]
    model_digest: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = SERVER_PORT)]
    port: u16,
    /// File with the accepted API keys, one per line. Without it (and without
    /// LLMOPS_API_KEYS) the API is open.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Accepted API keys, separated by newlines or commas; meant to come from a
    /// Secret (`secretKeyRef`), never from the command line.
    #[arg(
        long = "api-keys-env-only",
        env = env::API_KEYS,
        hide = true,
        hide_env_values = true
    )]
    api_keys: Option<String>,
    /// The model id clients send (`model`); defaults to the URI's last segment.
    #[arg(long)]
    served_model_name: Option<String>,
    /// Secret whose keys (as LLMOPS_CRED_<SECRET>_<KEY> variables) reach the
    /// model's object store.
    #[arg(long, env = env::MODEL_CREDENTIALS_SECRET)]
    credentials_secret: Option<String>,
    /// Weight precision.
    #[arg(long, value_enum, default_value_t = DtypeChoice::Auto)]
    dtype: DtypeChoice,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 16)]
    max_batch_size: usize,
    /// Caps prompt plus completion below the model's own context length
    /// (0: the model's).
    #[arg(long, default_value_t = 0)]
    max_context: usize,
    /// Caps the tokens one request may generate (0: no cap beyond the context).
    #[arg(long, default_value_t = 0)]
    max_new_tokens: usize,
    /// CPU threads for the model (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Most prompts waiting for the decoding batch; a request that does not
    /// fit is answered 429 with `Retry-After` at once (at least 1).
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Seconds a request may take, queueing included; then a whole answer is a
    /// 504, a stream ends with an error event, and its generation stops.
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Most prompts in one completions request (also at most --max-queue).
    #[arg(long, default_value_t = 16)]
    max_prompts: usize,
    /// Seconds the requests in flight get to finish after SIGTERM.
    #[arg(long, default_value_t = 25)]
    shutdown_grace: u64,
    /// JSON file of LoRA adapters to serve beside the model, read again every
    /// --adapters-poll-seconds (see the `adapters` module).
    #[arg(long)]
    adapters_file: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    adapters_poll_seconds: u64,
    /// `vllm`: `/metrics` under vLLM's metric names and `/health` as vLLM's
    /// (200 once the model serves). For the local node's vLLM stand-in only.
    #[arg(long, value_enum, default_value_t = MetricsNames::Llmops, hide = true)]
    metrics_names: MetricsNames,
}

/// Whose metric names `/metrics` uses.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum MetricsNames {
    Llmops,
    Vllm,
}

/// The request limits, or why the flags are wrong.
fn limits(cli: &Cli) -> Result<api::Limits, String> {
    for (flag, value) in [
        ("--max-queue", cli.max_queue as u64),
        ("--request-timeout", cli.request_timeout),
        ("--max-body-bytes", cli.max_body_bytes as u64),
        ("--max-prompts", cli.max_prompts as u64),
    ] {
        if value == 0 {
            return Err(format!("{flag} must be at least 1"));
        }
    }
    Ok(api::Limits {
        max_body_bytes: cli.max_body_bytes,
        max_prompts: cli.max_prompts,
        request_timeout: Duration::from_secs(cli.request_timeout),
    })
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// Keys separated by newlines or commas; blanks and surrounding spaces ignored.
fn split_keys(text: &str) -> Vec<String> {
    text.split(['\n', ','])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The accepted keys from `--api-key-file` and `LLMOPS_API_KEYS`. A source
/// that is given but holds no key is an error: it would silently open the API.
fn api_keys(cli: &Cli) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    if let Some(path) = &cli.api_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --api-key-file {}: {e}", path.display()))?;
        let found = split_keys(&text);
        if found.is_empty() {
            return Err(format!(
                "--api-key-file {} has no keys; add one per line, or leave the option out to serve without authentication",
                path.display()
            ));
        }
        keys.extend(found);
    }
    if let Some(text) = &cli.api_keys {
        let found = split_keys(text);
        if found.is_empty() {
            return Err(format!("{} is set but holds no key", env::API_KEYS));
        }
        keys.extend(found);
    }
    Ok(keys)
}

fn default_name(uri: &str) -> String {
    uri.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("model")
        .to_string()
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
}

/// Waits for the shutdown signal, then drains: `/readyz` answers 503 while the
/// requests in flight (and new ones) are served, until none is in flight or
/// `grace` has passed. Sends the grace deadline on `deadline` when it starts.
async fn drain(
    state: Arc<AppState>,
    grace: Duration,
    deadline: tokio::sync::oneshot::Sender<tokio::time::Instant>,
) {
    shutdown_signal().await;
    state.start_draining();
    let until = tokio::time::Instant::now() + grace;
    let _ = deadline.send(until);
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "shutting down: not ready any more; finishing the requests in flight"
    );
    while state.metrics.in_flight_requests.get() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn main() -> ExitCode {
    // Workspace builds enable more than one rustls backend; pick one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    // Logs on stderr (JSON in a pod, text on a terminal) and, with OTEL_* set,
    // spans exported under the pod's TRACEPARENT; gRPC export needs the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        match llmops_telemetry::init(llmops_telemetry::Options::new("llmops-server", "info")) {
            Ok(telemetry) => telemetry,
            Err(e) => return fail(&format!("{e:#}")),
        }
    };
    let api_keys = match api_keys(&cli) {
        Ok(keys) => keys,
        Err(e) => return fail(&e),
    };
    if cli.threads > 0 {
        tch::set_num_threads(cli.threads);
    }
    if api_keys.is_empty() {
        tracing::warn!("no --api-key-file: the API accepts requests without a key");
    }
    let limits = match limits(&cli) {
        Ok(limits) => limits,
        Err(e) => return fail(&e),
    };
    let code = runtime.block_on(serve(cli, api_keys, limits));
    telemetry.shutdown();
    // Do not wait for a model still loading, nor for cut-off requests.
    runtime.shutdown_background();
    code
}

async fn serve(cli: Cli, api_keys: Vec<String>, limits: api::Limits) -> ExitCode {
    let metrics = Arc::new(Metrics::new());
    let vllm = cli.metrics_names == MetricsNames::Vllm;
    if vllm {
        let name = cli.served_model_name.clone();
        metrics.use_vllm_names(&name.unwrap_or_else(|| default_name(&cli.model)));
    }
    let state = Arc::new(AppState::new(api_keys, metrics.clone(), limits));
    let address = format!("{}:{}", cli.host, cli.port);
    let listener = match tokio::net::TcpListener::bind(&address).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot listen on {address}: {e}")),
    };
    tracing::info!(%address, "listening");
    let grace = Duration::from_secs(cli.shutdown_grace);

    let loader_state = state.clone();
    // The pod's part of its trace: from the start to a loaded model (or the
    // error that ends the process), a child of the pod's TRACEPARENT.
    let startup = tracing::info_span!(
        "server.start",
        model = %cli.model,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(parent) = llmops_telemetry::context::from_env() {
        parent.adopt(&startup);
    }
    tokio::spawn(async move {
        let name = cli
            .served_model_name
            .clone()
            .unwrap_or_else(|| default_name(&cli.model));
        let credentials = Credentials::from_secret(cli.credentials_secret.as_deref());
        let result = async {
            let dir = load::fetch(&cli.model, &credentials, cli.model_digest.as_deref()).await?;
            let served = tokio::task::spawn_blocking(move || {
                let limits = load::Limits {
                    max_batch: cli.max_batch_size,
                    max_context: cli.max_context,
                    max_new_tokens: cli.max_new_tokens,
                    max_queue: cli.max_queue,
                };
                load::load(&dir, name, cli.dtype, limits, metrics.clone())
                    .map(|served| (served, dir, metrics))
            })
            .await??;
            anyhow::Ok(served)
        }
        .instrument(startup.clone())
        .await;
        match result {
            Ok((served, dir, metrics)) => {
                // Everything is in memory now; a downloaded copy is deleted.
                drop(dir);
                let served = Arc::new(served);
                let _ = loader_state.served.set(served.clone());
                metrics.ready.set(1);
                if let Some(path) = cli.adapters_file {
                    let loader = llmops_server::adapters::Loader {
                        adapters: loader_state.adapters.clone(),
                        served,
                        credentials,
                        base_digest: cli.model_digest,
                        metrics,
                    };
                    let every = Duration::from_secs(cli.adapters_poll_seconds.max(1));
                    tokio::spawn(llmops_server::adapters::watch(path, every, loader));
                }
                startup.in_scope(|| tracing::info!("ready"));
            }
            Err(e) => {
                startup.in_scope(|| tracing::error!(error = format!("{e:#}"), "cannot serve"));
                startup.record("otel.status_code", "ERROR");
                eprintln!("error: cannot serve {}: {e:#}", cli.model);
                // The span ends here; flush it, as exit skips every destructor.
                drop(startup);
                llmops_telemetry::shutdown();
                std::process::exit(1);
            }
        }
    });

    let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel();
    let mut app = router(state.clone());
    if vllm {
        // vLLM's `/health`: 200 once the engine serves, whatever the draining.
        let health = state.clone();
        app = app.route(
            "/health",
            axum::routing::get(move || async move {
                if health.served.get().is_some() {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        );
    }
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(drain(state.clone(), grace, deadline_tx))
        .into_future();
    // Connections still busy at the end of the grace period (a stream that
    // outlived it) do not hold the process.
    let grace_over = async move {
        match deadline_rx.await {
            Ok(until) => tokio::time::sleep_until(until).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => match result {
            Ok(()) => {
                tracing::info!("shut down");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("the HTTP server failed: {e}")),
        },
        () = grace_over => {
            tracing::warn!(
                in_flight = state.metrics.in_flight_requests.get(),
                "shutting down: the grace period ended with requests in flight"
            );
            ExitCode::SUCCESS
        }
    }
}
