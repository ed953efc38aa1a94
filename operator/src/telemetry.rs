//! The operator's logs (JSON or text, on stdout) and OTLP trace export, set up
//! by [`llmops_telemetry`] as in the trainer and server.

pub use llmops_telemetry::{LogFormat, Telemetry};

/// Install the global subscriber. `level` is a level (`info`) or a full
/// `RUST_LOG`-style filter (`info,kube=debug`). `otlp_endpoint` (`--otlp-endpoint`)
/// exports over gRPC to it; without it the standard `OTEL_*` variables decide.
/// Must run inside the Tokio runtime (gRPC export).
pub fn init(
    level: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Telemetry> {
    llmops_telemetry::init(llmops_telemetry::Options {
        service: "llmops-operator",
        filter: level.to_string(),
        format: Some(format),
        output: llmops_telemetry::Output::Stdout,
        otlp_endpoint: otlp_endpoint.map(str::to_string),
        owner_from_env: false,
    })
    .map_err(|err| {
        // The filter is the operator's --log-level.
        if err.to_string().starts_with("invalid log filter") {
            anyhow::anyhow!("invalid --log-level {level:?}: {err:#}")
        } else {
            err
        }
    })
}
