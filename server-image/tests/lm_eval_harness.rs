//! lm-evaluation-harness, a client nobody here wrote, scores a served model: the
//! `server` binary serves a tiny random model (`tests/python/tiny_model.py`) on
//! 127.0.0.1, and `tests/lm_eval/test_lm_eval.py` checks its log-probabilities
//! against `transformers` (within 1e-4 per token in fp32), then runs `lm_eval
//! --model local-completions` on a multiple-choice task defined there over a
//! local JSONL file, offline, and checks each sample's log-likelihoods against
//! `transformers` (within 1e-3) and the accuracy (identical).
//!
//! Needs the project venv (`scripts/setup-venv`, which installs `lm-eval`), or
//! `LLMOPS_PYTHON` naming a Python with the packages of `tests/python/requirements.txt`.

mod common;

use common::{output_text, python, repo_root};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const MODEL_NAME: &str = "tiny";

/// The running `server`, killed when dropped; its log is printed if the test failed.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- server log ---\n{log}");
        }
    }
}

/// The status code of `GET path`, on a fresh connection.
fn get_status(port: u16, path: &str) -> std::io::Result<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed response: {raw}")))
}

fn start_server(model_dir: &Path, log: PathBuf) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port();
    let out = File::create(&log).expect("create the server log");
    let err = out.try_clone().expect("clone the server log handle");
    let child = Command::new(env!("CARGO_BIN_EXE_server"))
        .arg("--model")
        .arg(format!("file://{}", model_dir.display()))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--served-model-name", MODEL_NAME, "--dtype", "float32"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start the server binary");
    let mut server = Server { child, port, log };
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().expect("poll the server") {
            panic!("the server exited ({status}) before it was ready");
        }
        if get_status(port, "/readyz").is_ok_and(|s| s == 200) {
            return server;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the server was not ready within a minute"
        );
        sleep(Duration::from_millis(200));
    }
}

#[test]
fn lm_eval_harness_scores_the_served_model_as_transformers_does() {
    let python = python("lm_eval, pytest, torch, transformers");
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
    let server = start_server(&model_dir, dir.path().join("server.log"));

    let pytest = Command::new(&python)
        .args(["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"])
        .arg("server-image/tests/lm_eval/test_lm_eval.py")
        .current_dir(&root)
        .env(
            "LLMOPS_SERVER_URL",
            format!("http://127.0.0.1:{}", server.port),
        )
        .env("LLMOPS_MODEL_NAME", MODEL_NAME)
        .env("LLMOPS_MODEL_DIR", &model_dir)
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run pytest");
    println!("{}", String::from_utf8_lossy(&pytest.stdout));
    assert!(
        pytest.status.success(),
        "the lm-eval checks failed ({}):\n{}",
        pytest.status,
        output_text(&pytest)
    );
}
