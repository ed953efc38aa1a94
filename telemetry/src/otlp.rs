//! OTLP trace export, configured by the standard `OTEL_*` variables.
//!
//! Export is on only when an endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, or the operator's `--otlp-endpoint`) and
//! neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says
//! otherwise. The exporter itself reads the endpoint, headers, timeout and
//! compression variables; the resource reads `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES`.

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The variables that choose where and how spans go (and what every span says
/// of its origin), which the operator passes on to the pods it starts so that
/// they export to the same collector alike.
pub const EXPORT_VARIABLES: [&str; 9] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// The [`EXPORT_VARIABLES`] of this process for the processes it has started
/// elsewhere (the operator's pods), with `flag_endpoint` (the operator's
/// `--otlp-endpoint`) spelled as the variables that mean it: the traces
/// endpoint, over gRPC unless a protocol variable says otherwise.
pub fn export_env(flag_endpoint: Option<&str>) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = EXPORT_VARIABLES
        .iter()
        .filter_map(|name| Some((name.to_string(), var(name)?)))
        .collect();
    if let Some(endpoint) = flag_endpoint.map(str::trim).filter(|e| !e.is_empty()) {
        vars.retain(|(name, _)| name != "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        vars.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), endpoint.into()));
        if !vars.iter().any(|(name, _)| name.ends_with("_PROTOCOL")) {
            vars.push(("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL".into(), "grpc".into()));
        }
    }
    vars
}

/// The wire protocol of the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (`grpc`, usually port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (`http/protobuf`, usually port 4318),
    /// the specification's default.
    HttpProtobuf,
}

/// Where spans go, when anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    pub protocol: Protocol,
    /// An endpoint given on the command line, which wins over the variables.
    pub endpoint: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The export the environment asks for, with `flag_endpoint` (the operator's
/// `--otlp-endpoint`, gRPC unless a protocol variable says otherwise) taking the
/// place of the endpoint variables. `None`: no export.
pub fn from_env(flag_endpoint: Option<&str>) -> anyhow::Result<Option<Export>> {
    if let Some(disabled) = var("OTEL_SDK_DISABLED") {
        match disabled.to_ascii_lowercase().as_str() {
            "true" => return Ok(None),
            "false" => {}
            other => anyhow::bail!("invalid OTEL_SDK_DISABLED {other:?}: true or false"),
        }
    }
    if let Some(exporter) = var("OTEL_TRACES_EXPORTER") {
        match exporter.as_str() {
            "none" => return Ok(None),
            "otlp" => {}
            other => anyhow::bail!(
                "invalid OTEL_TRACES_EXPORTER {other:?}: otlp or none (no other exporter is built in)"
            ),
        }
    }
    let flag_endpoint = flag_endpoint.map(str::trim).filter(|e| !e.is_empty());
    let endpoint_set = flag_endpoint.is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    if !endpoint_set {
        return Ok(None);
    }
    let (name, protocol) = match (
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        var("OTEL_EXPORTER_OTLP_PROTOCOL"),
    ) {
        (Some(p), _) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(p)),
        (None, p) => ("OTEL_EXPORTER_OTLP_PROTOCOL", p),
    };
    let protocol = match protocol.as_deref() {
        Some("grpc") => Protocol::Grpc,
        Some("http/protobuf") => Protocol::HttpProtobuf,
        Some(other) => {
            anyhow::bail!(
                "invalid {name} {other:?}: grpc or http/protobuf (http/json is not built in)"
            )
        }
        // The flag has always meant gRPC; the specification's default otherwise.
        None if flag_endpoint.is_some() => Protocol::Grpc,
        None => Protocol::HttpProtobuf,
    };
    Ok(Some(Export {
        protocol,
        endpoint: flag_endpoint.map(str::to_string),
    }))
}

/// A tracer provider exporting in batches as `export` says. `service` is the
/// service name unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names
/// one; `attributes` are added to the resource (the pod's owner).
///
/// gRPC export needs a Tokio runtime to be current when this is called.
pub fn tracer_provider(
    export: &Export,
    service: &str,
    attributes: Vec<KeyValue>,
) -> anyhow::Result<SdkTracerProvider> {
    let exporter = match export.protocol {
        Protocol::Grpc => {
            let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            match &export.endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint).build(),
                None => builder.build(),
            }
        }
        Protocol::HttpProtobuf => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            match &export.endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint).build(),
                None => builder.build(),
            }
        }
    }
    .context("failed to set up OTLP trace export")?;
    let named = var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs
                .split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let mut resource = opentelemetry_sdk::Resource::builder().with_attributes(attributes);
    if !named {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // The generation roots take ids derived earlier (`root`).
        .with_id_generator(crate::root::DerivedIds::default())
        .with_resource(resource.build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reading the process environment only: these tests set no variables, so
    // they hold whatever the test runner's environment is, as long as it sets
    // no OTEL_* variable (CI does not).
    #[test]
    fn no_endpoint_means_no_export_and_the_flag_means_grpc() {
        if EXPORT_VARIABLES.iter().any(|v| var(v).is_some()) {
            return;
        }
        assert_eq!(from_env(None).unwrap(), None);
        assert_eq!(
            from_env(Some("http://collector:4317")).unwrap(),
            Some(Export {
                protocol: Protocol::Grpc,
                endpoint: Some("http://collector:4317".into()),
            })
        );
        assert_eq!(from_env(Some("  ")).unwrap(), None);
        assert!(export_env(None).is_empty());
        assert_eq!(
            export_env(Some("http://collector:4317")),
            [
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".to_string(),
                    "http://collector:4317".to_string()
                ),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL".to_string(),
                    "grpc".to_string()
                ),
            ]
        );
    }
}
