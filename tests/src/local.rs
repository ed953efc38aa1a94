//! Local helpers the end-to-end tests share: the tiny Hugging Face model of the
//! reference script, and plain HTTP/1.1 to a replayed server at its pod address.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::workspace_root;

/// The project venv's python (or `LLMOPS_PYTHON`).
pub fn python() -> std::path::PathBuf {
    std::env::var_os("LLMOPS_PYTHON")
        .map_or_else(|| workspace_root().join(".venv/bin/python"), Into::into)
}

/// Writes the tiny random model of `tests/python/tiny_model.py` into `dir`.
pub fn tiny_model(dir: &Path) -> anyhow::Result<()> {
    tiny_model_with(dir, &[])
}

/// [`tiny_model`] with more arguments of the script (`--seed 1`, `--defect
/// non-finite`, ...).
pub fn tiny_model_with(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let python = python();
    let made = Command::new(&python)
        .arg(workspace_root().join("tests/python/tiny_model.py"))
        .arg(dir)
        .args(args)
        .output()
        .with_context(|| {
            format!(
                "running {} (create the venv with scripts/setup-venv, or set LLMOPS_PYTHON)",
                python.display()
            )
        })?;
    ensure!(
        made.status.success(),
        "tiny_model.py failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    Ok(())
}

/// One request to `address` (a replayed pod's, on loopback): `method path`, a
/// bearer key when given, a JSON body when given. Returns the status and the body.
pub fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    anyhow::ensure!(
        address.ip().is_loopback(),
        "{address} is not on loopback: tests never connect elsewhere"
    );
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let content = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}{content}Connection: close\r\n\r\n{body}"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or_else(String::new, |(_, b)| b.to_string());
    Ok((status, body))
}
