//! The `server` binary serving `--model hf://<org>/<model>@<revision>` from a
//! Hugging Face Hub on loopback (`llmops_store::test_hub`, through `HF_ENDPOINT`):
//! a tiny random model (`tests/python/tiny_model.py`) at a tag, while `main` holds
//! a model that cannot load, so only the pinned files serve; a gated repository
//! refused without a token (naming the repository and the Secret key) and served
//! with the Secret's token; and the shared model cache, from which a second
//! server loads the model without downloading it.
//!
//! Needs the project venv (`scripts/setup-venv`), or `LLMOPS_PYTHON`.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{output_text, python, repo_root};
use llmops_store::hub::RepoKind;
use llmops_store::test_hub::{TestHub, TestRepo};

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const TOKEN: &str = "hf_test_token_4242";

fn tiny_model(python: &Path, dir: &Path, extra: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let made = Command::new(python)
        .arg(repo_root().join("tests/python/tiny_model.py"))
        .arg(dir)
        .args(extra)
        .output()
        .expect("run tiny_model.py");
    assert!(
        made.status.success(),
        "tiny_model.py failed:\n{}",
        output_text(&made)
    );
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect()
}

/// The `server` binary on `model`; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(hub: &TestHub, model: &str, token: Option<&str>) -> Server {
    start_with(hub, model, token, &[])
}

fn start_with(hub: &TestHub, model: &str, token: Option<&str>, env: &[(&str, &Path)]) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.args(["--model", model, "--port", &port.to_string()])
        .args(["--host", "127.0.0.1", "--served-model-name", "tiny"])
        .args(["--credentials-secret", "hub-creds"])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env_remove("HF_TOKEN")
        .env("RUST_LOG", "info")
        .env("LLMOPS_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match token {
        Some(token) => cmd.env("LLMOPS_CRED_HUB_CREDS_HF_TOKEN", token),
        None => cmd.env_remove("LLMOPS_CRED_HUB_CREDS_HF_TOKEN"),
    };
    cmd.env_remove(llmops_contract::env::MODEL_CACHE_DIR);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server {
        child: cmd.spawn().expect("start the server binary"),
        port,
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}

/// Waits for `/readyz`, or for the process to exit (then returns its output).
fn ready_or_exit(server: Server) -> Result<Server, Output> {
    let start = Instant::now();
    let mut server = server;
    while start.elapsed() < READY_TIMEOUT {
        if server.child.try_wait().unwrap().is_some() {
            let child = std::mem::replace(&mut server.child, Command::new("true").spawn().unwrap());
            return Err(child.wait_with_output().unwrap());
        }
        if get(server.port, "/readyz").is_some_and(|(s, _)| s == 200) {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the server was neither ready nor exited within {READY_TIMEOUT:?}");
}

/// Stops `server` and returns what it wrote.
fn stop(mut server: Server) -> String {
    let _ = server.child.kill();
    let child = std::mem::replace(&mut server.child, Command::new("true").spawn().unwrap());
    output_text(&child.wait_with_output().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_loads_a_pinned_hub_model_and_a_gated_one_with_its_token() {
    let python = python("tokenizers, torch, transformers");
    let dir = tempfile::tempdir().unwrap();
    let good = tiny_model(&python, &dir.path().join("good"), &[]);
    let broken = tiny_model(
        &python,
        &dir.path().join("broken"),
        &["--defect", "unloadable"],
    );
    let hub = TestHub::start().await.unwrap();
    let mut repo = TestRepo::new();
    let v1 = repo.commit("v1", good.clone());
    repo.commit("main", broken);
    hub.add(RepoKind::Model, "org/tiny", repo);
    let mut gated = TestRepo::new();
    gated.commit("main", good);
    hub.add(RepoKind::Model, "org/tiny-gated", gated.gated(TOKEN));

    // main cannot load: that the pin is honoured is what makes the server ready.
    let server = ready_or_exit(start(&hub, "hf://org/tiny@v1", None))
        .unwrap_or_else(|out| panic!("hf://org/tiny@v1 did not serve:\n{}", output_text(&out)));
    let (status, body) = get(server.port, "/v1/models").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tiny"), "{body}");
    let log = stop(server);
    assert!(log.contains(&format!("hf://org/tiny@{v1}")), "{log}");
    let out = ready_or_exit(start(&hub, "hf://org/tiny", None))
        .err()
        .expect("main holds a truncated model, which must not serve");
    assert!(!out.status.success());

    let out = ready_or_exit(start(&hub, "hf://org/tiny-gated", None))
        .err()
        .expect("a gated repository without a token must not serve");
    let text = output_text(&out);
    for needed in [
        "hf://org/tiny-gated",
        "401",
        "no token",
        "key HF_TOKEN of Secret \"hub-creds\"",
    ] {
        assert!(text.contains(needed), "{needed}:\n{text}");
    }

    let server =
        ready_or_exit(start(&hub, "hf://org/tiny-gated", Some(TOKEN))).unwrap_or_else(|out| {
            panic!(
                "the gated model with its token did not serve:\n{}",
                output_text(&out)
            )
        });
    let log = stop(server);
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
}

/// Seconds from start to ready, the files the Hub served meanwhile, and the log.
fn time_to_ready(hub: &TestHub, model: &str, cache: &Path) -> (f64, usize, String) {
    let before = hub.requests().len();
    let started = Instant::now();
    let server = ready_or_exit(start_with(
        hub,
        model,
        None,
        &[(llmops_contract::env::MODEL_CACHE_DIR, cache)],
    ))
    .unwrap_or_else(|out| panic!("{model} did not serve:\n{}", output_text(&out)));
    let seconds = started.elapsed().as_secs_f64();
    let files = hub.requests()[before..]
        .iter()
        .filter(|r| r.contains("/resolve/"))
        .count();
    (seconds, files, stop(server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_loads_the_model_from_the_shared_cache() {
    let python = python("tokenizers, torch, transformers");
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&python, &dir.path().join("model"), &[]);
    let hub = TestHub::start().await.unwrap();
    let mut repo = TestRepo::new();
    repo.commit("v1", model.clone());
    hub.add(RepoKind::Model, "org/tiny", repo);
    // At 512 KiB/s, as over a slow link to the Hub, the download of the tiny
    // model (some 0.6 MB) takes about a second: what the cache saves.
    hub.throttle(512 << 10);
    let cache = dir.path().join("cache");

    let (first, first_files, log) = time_to_ready(&hub, "hf://org/tiny@v1", &cache);
    assert_eq!(
        first_files,
        model.len(),
        "the first server downloads every file"
    );
    assert!(log.contains("hit=false"), "{log}");
    let (second, second_files, log) = time_to_ready(&hub, "hf://org/tiny@v1", &cache);
    assert_eq!(second_files, 0, "the second server downloads nothing");
    assert!(log.contains("hit=true"), "{log}");
    let bytes: usize = model.values().map(Vec::len).sum();
    eprintln!(
        "time to ready at 512 KiB/s: first server {first:.2}s (downloaded {} files, {bytes} bytes), second {second:.2}s (from the cache)",
        model.len()
    );
    assert!(second < first, "first {first:.2}s, second {second:.2}s");
}
