//! What the server's end-to-end tests share: the repository root and the
//! project's Python (panicking, never skipping, when it lacks a package).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `LLMOPS_PYTHON`, else the project venv; panics (never skips) when it cannot run
/// or cannot import `modules` (a comma-separated Python import list).
pub fn python(modules: &str) -> PathBuf {
    let python = std::env::var_os("LLMOPS_PYTHON").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python")),
        PathBuf::from,
    );
    let probe = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
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

pub fn output_text(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
