//! The `server` binary end to end: it serves a tiny random model
//! (`tests/python/tiny_model.py`) and the official Python `openai` client checks the
//! OpenAI API (`tests/python/test_openai_server.py`); plain HTTP checks the endpoints
//! the client does not reach (health, readiness, metrics, the error body without a key).
//!
//! Needs the project venv (`scripts/setup-venv`), or `LLMOPS_PYTHON` naming a Python
//! with the packages of `tests/python/requirements.txt`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const API_KEY: &str = "sk-test-123";
const MODEL_NAME: &str = "tiny";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `LLMOPS_PYTHON`, else the project venv; panics (never skips) when it cannot run
/// or lacks the packages the tests use.
fn python() -> PathBuf {
    let python = std::env::var_os("LLMOPS_PYTHON").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python")),
        PathBuf::from,
    );
    let probe = Command::new(&python)
        .args([
            "-c",
            "import openai, pytest, tokenizers, torch, transformers",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): create the project venv with scripts/setup-venv \
                 or set LLMOPS_PYTHON",
                python.display()
            )
        });
    assert!(
        probe.status.success(),
        "{} lacks the test packages; run scripts/setup-venv:\n{}",
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

fn output_text(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

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
    fn start(model_dir: &Path, key_file: &Path, log: PathBuf) -> Server {
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
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
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

#[test]
fn openai_client_against_the_server() {
    let python = python();
    let root = repo_root();
    let dir = tempfile::tempdir().expect("create a temporary directory");

    let model_dir = dir.path().join("model");
    let made = Command::new(&python)
        .arg(root.join("tests/python/tiny_model.py"))
        .arg(&model_dir)
        .output()
        .expect("run tiny_model.py");
    assert!(
        made.status.success(),
        "tiny_model.py failed:\n{}",
        output_text(&made)
    );

    let key_file = dir.path().join("api-keys");
    std::fs::write(&key_file, format!("sk-other-key\n{API_KEY}\n")).unwrap();

    let mut server = Server::start(&model_dir, &key_file, dir.path().join("server.log"));
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
