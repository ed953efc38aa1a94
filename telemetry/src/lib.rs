//! Logs and traces of the llmops binaries (`operator`, `trainer`, `server`),
//! set up alike:
//!
//! - log lines are JSON when stderr/stdout is not a terminal (a pod's log) and
//!   text on a terminal, or as `--log-format` / `$LLMOPS_LOG_FORMAT` say; in a
//!   pod every line names the object it works for (`$LLMOPS_OWNER`, set by the
//!   operator);
//! - spans are exported over OTLP (gRPC or HTTP/protobuf) when the standard
//!   `OTEL_*` variables name an endpoint ([`otlp`]);
//! - a process started with `$TRACEPARENT` (the operator sets it on its pods)
//!   makes its root span a child of that trace ([`context`]).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let telemetry = llmops_telemetry::init(llmops_telemetry::Options::new("llmops-trainer", "warn"))?;
//! let root = telemetry.root_span(tracing::info_span!("trainer", command = "finetune"));
//! let _entered = root.enter();
//! // ... the work ...
//! # drop(_entered);
//! telemetry.shutdown();
//! # Ok(()) }
//! ```

pub mod context;
pub mod format;
pub mod otlp;
pub mod root;

use std::io::IsTerminal as _;
use std::sync::Mutex;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

pub use context::TraceParent;
pub use format::{LogFormat, Owner};

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// What [`init`] sets up.
#[derive(Clone, Debug)]
pub struct Options {
    /// `service.name` of the spans, unless `OTEL_SERVICE_NAME` names one.
    pub service: &'static str,
    /// The log filter (`info`, `warn,llmops_trainer=info`), `RUST_LOG` syntax.
    pub filter: String,
    /// The log format; `None`: [`LogFormat::resolve`].
    pub format: Option<LogFormat>,
    pub output: Output,
    /// An OTLP endpoint from the command line, over the `OTEL_*` variables.
    pub otlp_endpoint: Option<String>,
    /// Name the owner from `$LLMOPS_OWNER` on every line and on the spans.
    pub owner_from_env: bool,
}

impl Options {
    /// Logs on stderr filtered by `$RUST_LOG`, else `default_filter`; the owner
    /// from the environment.
    pub fn new(service: &'static str, default_filter: &str) -> Self {
        Self {
            service,
            filter: std::env::var("RUST_LOG")
                .ok()
                .filter(|f| !f.trim().is_empty())
                .unwrap_or_else(|| default_filter.to_string()),
            format: None,
            output: Output::Stderr,
            otlp_endpoint: None,
            owner_from_env: true,
        }
    }
}

/// Spans of these targets are never exported: the exporter's own HTTP and gRPC
/// calls would otherwise be traced, and export themselves; and kube-runtime's
/// per-object span around each reconcile would be a one-span trace of its own
/// every time (the operator's `reconcile` span joins the object's trace
/// instead).
const NOT_EXPORTED: [&str; 8] = [
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "reqwest",
    "opentelemetry",
    "kube_runtime",
];

/// The installed logging and tracing. [`Telemetry::shutdown`] flushes the spans
/// still queued; call it before the process exits.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    owner: Option<Owner>,
}

/// The provider, for [`shutdown`] from code that has no [`Telemetry`] (an exit
/// from a spawned task).
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// Install the global subscriber: logs as `options` say, and OTLP export when
/// the environment (or `options.otlp_endpoint`) names an endpoint. gRPC export
/// needs a Tokio runtime to be current.
pub fn init(options: Options) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&options.filter)
        .with_context(|| format!("invalid log filter {:?}", options.filter))?;
    let terminal = match options.output {
        Output::Stdout => std::io::stdout().is_terminal(),
        Output::Stderr => std::io::stderr().is_terminal(),
    };
    let format = LogFormat::resolve(options.format, terminal)?;
    let owner = if options.owner_from_env {
        Owner::from_env()?
    } else {
        None
    };
    let export = otlp::from_env(options.otlp_endpoint.as_deref())?;
    let provider = export
        .as_ref()
        .map(|export| {
            let attributes = owner
                .iter()
                .flat_map(|o| {
                    [
                        KeyValue::new("k8s.namespace.name", o.namespace.clone()),
                        KeyValue::new("llmops.owner.kind", o.kind.clone()),
                        KeyValue::new("llmops.owner.name", o.name.clone()),
                    ]
                })
                .collect();
            otlp::tracer_provider(export, options.service, attributes)
        })
        .transpose()?;

    let logs = match options.output {
        Output::Stdout => log_layer(format, terminal, owner.clone(), std::io::stdout),
        Output::Stderr => log_layer(format, terminal, owner.clone(), std::io::stderr),
    }
    .with_filter(filter);
    let traces = provider.as_ref().map(|provider| {
        let not_exported = Targets::new()
            .with_default(tracing::Level::INFO)
            .with_targets(NOT_EXPORTED.map(|t| (t, tracing::level_filters::LevelFilter::OFF)));
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(options.service))
            .with_filter(not_exported)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("failed to install the log subscriber")?;
    if let Some(provider) = &provider {
        *PROVIDER.lock().unwrap_or_else(|e| e.into_inner()) = Some(provider.clone());
    }
    Ok(Telemetry { provider, owner })
}

type BoxedLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

fn log_layer<W>(format: LogFormat, terminal: bool, owner: Option<Owner>, writer: W) -> BoxedLayer
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false);
            Box::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(writer)
                    .event_format(format::WithOwner::new(inner, owner, true)),
            )
        }
        LogFormat::Text => {
            // Colour codes only on a terminal: pod logs and pipes get plain text.
            let inner = tracing_subscriber::fmt::format().with_ansi(terminal);
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_ansi(terminal)
                    .with_writer(writer)
                    .event_format(format::WithOwner::new(inner, owner, false)),
            )
        }
    }
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// The object this process works for, from `$LLMOPS_OWNER`.
    pub fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }

    /// `span`, made the child of `$TRACEPARENT` when the process has one, with
    /// the owner recorded on it. Call before entering it.
    pub fn root_span(&self, span: tracing::Span) -> tracing::Span {
        if let Some(parent) = context::from_env() {
            parent.adopt(&span);
        }
        span
    }

    /// Flush the queued spans and stop the export.
    pub fn shutdown(self) {
        shutdown();
    }
}

/// Flush the queued spans and stop the export, if [`init`] started one; for
/// exits where the [`Telemetry`] is out of reach. Later calls do nothing.
pub fn shutdown() {
    let provider = PROVIDER.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(provider) = provider
        && let Err(err) = provider.shutdown()
    {
        tracing::warn!(error = %err, "failed to flush traces");
    }
}
