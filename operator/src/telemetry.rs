//! Logs (JSON or text) and optional OTLP trace export.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

/// Keeps the trace exporter alive; flush it with [`Telemetry::shutdown`] before exit so
/// the last spans are not lost.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flush and stop the trace exporter, if any.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "failed to flush traces");
        }
    }
}

/// Install the global subscriber. `level` is a level (`info`) or a full
/// `RUST_LOG`-style filter (`info,kube=debug`).
pub fn init(
    level: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_new(level).with_context(|| format!("invalid --log-level {level:?}"))?;
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
    });
    let text = (format == LogFormat::Text)
        .then(|| tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()));

    let tracer_provider = otlp_endpoint.map(otlp_tracer_provider).transpose()?;
    let otel = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("llmops-operator"))
    });

    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(otel)
        .try_init()
        .context("failed to install the log subscriber")?;
    Ok(Telemetry { tracer_provider })
}

fn otlp_tracer_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("failed to set up OTLP export to {endpoint}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("llmops-operator")
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
