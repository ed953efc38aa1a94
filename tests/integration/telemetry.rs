//! Logs and traces of the real `trainer` and `server` binaries, as a pod runs
//! them: the `OTEL_*` variables, the `TRACEPARENT` and `LLMOPS_OWNER` the
//! operator sets, stderr piped. Spans go to a local OTLP receiver
//! ([`llmops_tests::otlp`]) over gRPC and over HTTP. No control plane needed.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use llmops_tests::operator::Binaries;
use llmops_tests::otlp::{ReceivedSpan, Receiver};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-01")
}

/// `binary args`, with the environment cleared of any `OTEL_*` of the test
/// runner's and then `vars` set; waits for the exit.
async fn run(binary: &std::path::Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .env_remove("LLMOPS_LOG_FORMAT")
        .env_remove("TRACEPARENT")
        .env_remove("LLMOPS_OWNER");
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    tokio::task::spawn_blocking(move || command.output().expect("the binary starts"))
        .await
        .unwrap()
}

fn export_env<'a>(receiver_endpoint: &'a str, protocol: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver_endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
    ]
}

/// The one span named `name`, checked to continue the test's trace.
fn child_of_the_traceparent<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
    let span = found[0];
    assert_eq!(span.trace_id, TRACE_ID, "{span:#?}");
    assert_eq!(span.parent_span_id, PARENT_ID, "{span:#?}");
    span
}

#[tokio::test]
async fn the_trainer_s_spans_reach_the_collector_under_the_pod_s_trace() {
    let binaries = Binaries::get().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gone = format!("file://{}/gone", dir.path().display());
    let args = [
        "clean",
        "--uri",
        &gone,
        "--owner",
        "FineTune/ml/qa",
        "--uid",
        "u1",
    ];
    for protocol in ["grpc", "http/protobuf"] {
        let receiver = Receiver::start().await.unwrap();
        let endpoint = match protocol {
            "grpc" => receiver.grpc_endpoint(),
            _ => receiver.http_endpoint(),
        };
        let traceparent = traceparent();
        let mut vars = export_env(&endpoint, protocol);
        vars.extend([
            ("TRACEPARENT", traceparent.as_str()),
            ("LLMOPS_OWNER", "FineTune/ml/qa"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ]);
        let out = run(&binaries.trainer, &args, &vars).await;
        assert!(
            out.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The process flushed before it exited: the span is there already.
        let spans = receiver.spans();
        let span = child_of_the_traceparent(&spans, "trainer");
        assert_eq!(span.protocol, protocol);
        assert_eq!(span.service(), Some("llmops-trainer"));
        assert_eq!(
            span.attributes.get("command").map(String::as_str),
            Some("clean")
        );
        assert_eq!(span.resource["k8s.namespace.name"], "ml");
        assert_eq!(span.resource["llmops.owner.kind"], "FineTune");
        assert_eq!(span.resource["llmops.owner.name"], "qa");
        assert_eq!(span.resource["deployment.environment"], "test");
        assert_ne!(span.status_code, 2, "a run that succeeded is no error");
    }
}

#[tokio::test]
async fn the_server_s_startup_span_reaches_the_collector_even_when_it_fails() {
    let binaries = Binaries::get().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = format!("file://{}/no-model", dir.path().display());
    let port = free_port();
    let port = port.to_string();
    let args = ["--model", &model, "--host", "127.0.0.1", "--port", &port];
    for protocol in ["grpc", "http/protobuf"] {
        let receiver = Receiver::start().await.unwrap();
        let endpoint = match protocol {
            "grpc" => receiver.grpc_endpoint(),
            _ => receiver.http_endpoint(),
        };
        let traceparent = traceparent();
        // The signal's own variable, used as given (no /v1/traces added).
        let traces_endpoint = format!("{endpoint}/v1/traces");
        let mut vars = vec![
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("TRACEPARENT", traceparent.as_str()),
            ("LLMOPS_OWNER", "ModelDeployment/ml/chat"),
            ("OTEL_SERVICE_NAME", "chat-server"),
        ];
        vars.push(match protocol {
            "grpc" => ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            _ => (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                traces_endpoint.as_str(),
            ),
        });
        let out = run(&binaries.server, &args, &vars).await;
        assert_eq!(out.status.code(), Some(1), "a model that is not there");
        let spans = receiver.spans();
        let span = child_of_the_traceparent(&spans, "server.start");
        assert_eq!(span.protocol, protocol);
        assert_eq!(
            span.service(),
            Some("chat-server"),
            "OTEL_SERVICE_NAME wins"
        );
        assert_eq!(
            span.status_code, 2,
            "the failed start is an error: {span:#?}"
        );
        assert_eq!(span.resource["llmops.owner.kind"], "ModelDeployment");
    }
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_bad_settings_are_named() {
    let binaries = Binaries::get().unwrap();
    let receiver = Receiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gone = format!("file://{}/gone", dir.path().display());
    let args = [
        "clean",
        "--uri",
        &gone,
        "--owner",
        "FineTune/ml/qa",
        "--uid",
        "u1",
    ];
    let traceparent = traceparent();
    let endpoint = receiver.http_endpoint();
    // Disabled: an endpoint, but OTEL_SDK_DISABLED.
    let out = run(
        &binaries.trainer,
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SDK_DISABLED", "true"),
            ("TRACEPARENT", traceparent.as_str()),
        ],
    )
    .await;
    assert!(out.status.success());
    // No endpoint at all.
    let out = run(&binaries.trainer, &args, &[("TRACEPARENT", &traceparent)]).await;
    assert!(out.status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.spans(), vec![]);

    for (name, value, named) in [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        ("LLMOPS_LOG_FORMAT", "yaml", "LLMOPS_LOG_FORMAT"),
        ("LLMOPS_OWNER", "qa", "LLMOPS_OWNER"),
    ] {
        let out = run(
            &binaries.trainer,
            &args,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                (name, value),
            ],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}={value} accepted");
        assert!(stderr.contains(named), "{name}={value}: {stderr}");
    }
}

#[tokio::test]
async fn log_lines_are_json_naming_the_owner_unless_on_a_terminal_or_asked() {
    let binaries = Binaries::get().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = format!("file://{}/no-model", dir.path().display());
    let port = free_port().to_string();
    let args = ["--model", &model, "--host", "127.0.0.1", "--port", &port];
    let owner = ("LLMOPS_OWNER", "ModelDeployment/ml/chat");

    let out = run(&binaries.server, &args, &[owner]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (json, other): (Vec<&str>, Vec<&str>) = stderr.lines().partition(|l| l.starts_with('{'));
    assert!(json.len() >= 3, "{stderr}");
    for line in &json {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            value["resource"],
            serde_json::json!({"kind": "ModelDeployment", "namespace": "ml", "name": "chat"}),
            "{line}"
        );
        assert!(
            value["level"].is_string() && value["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        json.iter().any(|l| l.contains("\"message\":\"listening\"")),
        "{stderr}"
    );
    // The one line that is not a log line: the exit's reason, for the
    // pod's termination message.
    assert_eq!(other.len(), 1, "{stderr}");
    assert!(other[0].starts_with("error: cannot serve"), "{stderr}");

    let out = run(
        &binaries.server,
        &args,
        &[owner, ("LLMOPS_LOG_FORMAT", "text")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("error:"))
        .collect();
    assert!(text.len() >= 3, "{stderr}");
    for line in text {
        assert!(line.starts_with("ModelDeployment ml/chat | "), "{line}");
    }
}

#[tokio::test]
async fn the_trainer_s_log_lines_name_the_owner_too_and_a_bad_traceparent_is_only_logged() {
    let binaries = Binaries::get().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gone = format!("file://{}/gone", dir.path().display());
    let args = [
        "clean",
        "--uri",
        &gone,
        "--owner",
        "FineTune/ml/qa",
        "--uid",
        "u1",
    ];
    let vars = [
        ("LLMOPS_OWNER", "FineTune/ml/qa"),
        ("TRACEPARENT", "00-not-a-trace-01"),
    ];
    let out = run(&binaries.trainer, &args, &vars).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "no log line");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert_eq!(
            value["resource"],
            serde_json::json!({"kind": "FineTune", "namespace": "ml", "name": "qa"}),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("invalid traceparent")),
        "{stderr}"
    );

    let mut text = vars.to_vec();
    text.push(("LLMOPS_LOG_FORMAT", "text"));
    let out = run(&binaries.trainer, &args, &text).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.is_empty());
    for line in stderr.lines() {
        assert!(line.starts_with("FineTune ml/qa | "), "{line}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
