//! The `server` binary end to end: it serves a tiny random model
//! (`tests/python/tiny_model.py`) and the official Python `openai` client checks the
//! OpenAI API (`tests/python/test_openai_server.py`); plain HTTP checks the endpoints
//! the client does not reach (health, readiness, metrics, the error body without a key),
//! and how the server shuts down on SIGTERM.
//!
//! Needs the project venv (`scripts/setup-venv`), or `LLMOPS_PYTHON` naming a Python
//! with the packages of `tests/python/requirements.txt`.

mod common;

use common::{output_text, python, repo_root};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const API_KEY: &str = "sk-test-123";
const MODEL_NAME: &str = "tiny";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().unwrap().port()
}

/// A running `server`; killed when dropped, also when a check fails. Its output goes
/// to a log file, printed when the test fails (by `drop`, so panics do not repeat it).
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(model_dir: &Path, key_file: &Path, log: PathBuf, extra: &[&str]) -> Server {
        let port = free_port();
        let out = File::create(&log).expect("create the server log");
        let err = out.try_clone().expect("clone the server log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_server"))
            .arg("--model")
            .arg(format!("file://{}", model_dir.display()))
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .arg("--api-key-file")
            .arg(key_file)
            .args(["--served-model-name", MODEL_NAME])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start the server binary");
        Server { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http_get(self.port, path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Polls `/readyz` until it answers 200; panics if the server exits first or
    /// `READY_TIMEOUT` passes.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.child.try_wait().expect("poll the server process") {
                panic!("the server exited ({status}) before it was ready");
            }
            match http_get(self.port, "/readyz", &[]) {
                Ok(r) if r.status == 200 => return,
                Ok(r) => last = format!("{} {}", r.status, r.body),
                Err(e) => last = e.to_string(),
            }
            sleep(Duration::from_millis(200));
        }
        panic!("the server was not ready within {READY_TIMEOUT:?} (last /readyz: {last})");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET on a fresh connection (`Connection: close`).
fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    http_request(port, "GET", path, headers, None)
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), with a JSON
/// body if given.
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Response> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!(
            "malformed HTTP response: {}",
            String::from_utf8_lossy(&raw)
        ))
    })
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Response {
        status,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// A tiny model directory and an API key file under `dir`.
fn tiny_model_and_keys(python: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let model_dir = dir.join("model");
    let made = Command::new(python)
        .arg(repo_root().join("tests/python/tiny_model.py"))
        .arg(&model_dir)
        .output()
        .expect("run tiny_model.py");
    assert!(
        made.status.success(),
        "tiny_model.py failed:\n{}",
        output_text(&made)
    );
    let key_file = dir.join("api-keys");
    std::fs::write(&key_file, format!("sk-other-key\n{API_KEY}\n")).unwrap();
    (model_dir, key_file)
}

#[test]
fn openai_client_against_the_server() {
    let python = python("openai, pytest, tokenizers, torch, transformers");
    let root = repo_root();
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let (model_dir, key_file) = tiny_model_and_keys(&python, dir.path());

    let mut server = Server::start(&model_dir, &key_file, dir.path().join("server.log"), &[]);
    server.wait_ready();

    let health = server.get("/healthz", &[]);
    assert_eq!(health.status, 200, "/healthz: {}", health.body);

    // Without a key the API answers 401 with an OpenAI error object.
    let denied = server.get("/v1/models", &[]);
    assert_eq!(
        denied.status, 401,
        "/v1/models without a key: {}",
        denied.body
    );
    assert!(
        denied
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "401 content type: {:?}",
        denied.header("content-type")
    );
    let body: serde_json::Value = serde_json::from_str(&denied.body)
        .unwrap_or_else(|e| panic!("401 body is not JSON ({e}): {}", denied.body));
    let error = body
        .get("error")
        .and_then(|e| e.as_object())
        .unwrap_or_else(|| panic!("401 body has no error object: {body}"));
    assert!(
        error.get("message").is_some_and(|m| m.is_string()),
        "error.message: {body}"
    );
    assert!(
        error.get("type").is_some_and(|t| t.is_string()),
        "error.type: {body}"
    );
    for key in ["param", "code"] {
        assert!(error.contains_key(key), "error.{key} is missing: {body}");
    }

    // With the key (the second line of the key file) it lists the served model.
    let bearer = format!("Bearer {API_KEY}");
    let models = server.get("/v1/models", &[("Authorization", &bearer)]);
    assert_eq!(models.status, 200, "/v1/models: {}", models.body);
    assert!(
        models.body.contains(MODEL_NAME),
        "/v1/models: {}",
        models.body
    );

    let pytest = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg("tests/python/test_openai_server.py")
        .current_dir(&root)
        .env("LLMOPS_SERVER_URL", server.url())
        .env("LLMOPS_API_KEY", API_KEY)
        .env("LLMOPS_MODEL_NAME", MODEL_NAME)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run pytest");
    assert!(
        pytest.status.success(),
        "the openai client tests failed ({}):\n{}",
        pytest.status,
        output_text(&pytest)
    );

    let metrics = server.get("/metrics", &[]);
    assert_eq!(metrics.status, 200, "/metrics: {}", metrics.body);
    assert!(
        metrics.body.contains("llmops_server_requests_total"),
        "/metrics has no llmops_server_requests_total:\n{}",
        metrics.body
    );
}

/// The value of an unlabelled sample in a metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// SIGTERM while a request is in flight: `/readyz` turns 503 at once, the request
/// in flight and one arriving during the drain are both answered 200, and the
/// process then exits with status 0, without waiting out its grace period.
#[test]
fn sigterm_drains_the_requests_in_flight_then_exits() {
    const GRACE_SECONDS: u64 = 60;
    const PROMPTS: usize = 48;
    let python = python("openai, pytest, tokenizers, torch, transformers");
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let (model_dir, key_file) = tiny_model_and_keys(&python, dir.path());
    // One sequence at a time on one thread, so a request of many prompts stays
    // in flight across the checks below.
    let grace = GRACE_SECONDS.to_string();
    let mut server = Server::start(
        &model_dir,
        &key_file,
        dir.path().join("server.log"),
        &[
            "--shutdown-grace",
            &grace,
            "--max-batch-size",
            "1",
            "--threads",
            "1",
            "--max-prompts",
            &PROMPTS.to_string(),
        ],
    );
    server.wait_ready();
    let port = server.port;
    let bearer = format!("Bearer {API_KEY}");

    let prompts: Vec<String> = (0..PROMPTS)
        .map(|i| format!("the cat sees the {i} red house"))
        .collect();
    let long_body = serde_json::json!({
        "model": MODEL_NAME, "prompt": prompts, "max_tokens": 240, "temperature": 0,
    })
    .to_string();
    let long = {
        let bearer = bearer.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let answer = http_request(
                port,
                "POST",
                "/v1/completions",
                &[("Authorization", &bearer)],
                Some(&long_body),
            );
            (answer, started.elapsed())
        })
    };
    let start = Instant::now();
    loop {
        let metrics = server.get("/metrics", &[]);
        if sample(&metrics.body, "llmops_server_in_flight_requests") == Some(1.0) {
            break;
        }
        assert!(
            !long.is_finished() && start.elapsed() < Duration::from_secs(30),
            "the long request was never seen in flight"
        );
        sleep(Duration::from_millis(5));
    }

    let pid = server.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -TERM {pid} failed");
    let signalled = Instant::now();

    // Not ready any more, as soon as the signal is handled.
    let readyz = loop {
        let r = server.get("/readyz", &[]);
        if r.status != 200 || signalled.elapsed() > Duration::from_secs(5) {
            break r;
        }
        sleep(Duration::from_millis(10));
    };
    assert_eq!(
        readyz.status, 503,
        "/readyz while draining: {}",
        readyz.body
    );
    // A request arriving during the drain is still served (after the long
    // one's prompts: the queue is first come, first served).
    assert!(
        !long.is_finished(),
        "the long request ended before the drain was checked; it must be longer"
    );
    let short = std::thread::spawn(move || {
        let body = serde_json::json!({"model": MODEL_NAME, "prompt": "hello", "max_tokens": 2})
            .to_string();
        http_request(
            port,
            "POST",
            "/v1/completions",
            &[("Authorization", &bearer)],
            Some(&body),
        )
    });

    let (answer, took) = long.join().expect("the long request's thread");
    let answer = answer.expect("the request in flight at SIGTERM is answered");
    assert_eq!(answer.status, 200, "the request in flight: {}", answer.body);
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        body["choices"].as_array().map(Vec::len),
        Some(PROMPTS),
        "{body}"
    );
    eprintln!("the request in flight took {took:?}");
    let short = short
        .join()
        .expect("the short request's thread")
        .expect("a request during the drain is answered");
    assert_eq!(
        short.status, 200,
        "a request during the drain: {}",
        short.body
    );

    // Then the process ends, well before its grace period would.
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("poll the server process") {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(GRACE_SECONDS - 10),
            "the server did not exit once its requests were answered"
        );
        sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the server exited with {status}");
    let log = server.log();
    assert!(log.contains("shutting down"), "server log:\n{log}");
}
