//! Helpers shared by the integration tests: run the real `trainer` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub termination: String,
}

/// Runs `trainer prepare` on `yaml` with extra environment `env`.
pub fn prepare(dir: &Path, yaml: &str, output: &str, env: &[(&str, String)]) -> Run {
    let resource = dir.join(format!(
        "resource-{}.yaml",
        std::process::id() as u64 + rand_suffix()
    ));
    std::fs::write(&resource, yaml).unwrap();
    let termination = resource.with_extension("termination");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.args(["prepare", "--resource"])
        .arg(&resource)
        .args(["--output", output])
        .env(llmops_contract::env::TERMINATION_LOG, &termination)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env(llmops_contract::env::PVC_ROOT, dir.join("pvc"))
        .env(llmops_contract::env::SOURCES_DIR, dir.join("sources"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        termination: std::fs::read_to_string(&termination).unwrap_or_default(),
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1_000_000
}

/// The lines of stderr that are not progress JSON.
pub fn error_lines(run: &Run) -> Vec<&str> {
    run.stderr.lines().filter(|l| !l.starts_with('{')).collect()
}

pub fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

pub fn reference_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/prepare_reference.py")
}

/// Deterministic pseudo-random words.
pub fn words(seed: u64, n: usize) -> Vec<String> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (state >> 33) as usize;
            const SYL: [&str; 12] = [
                "ka", "lo", "ri", "ne", "ta", "mo", "su", "vi", "de", "an", "or", "el",
            ];
            format!(
                "{}{}{}",
                SYL[v % 12],
                SYL[(v / 12) % 12],
                SYL[(v / 144) % 12]
            )
        })
        .collect()
}
