//! The termination message: the one line (or JSON result) the operator reads
//! from the finished pod's `terminationMessagePath`.

use std::path::PathBuf;

use llmops_contract::{env, path};

/// Where Kubernetes reads the termination message by default.
pub const DEFAULT_PATH: &str = path::TERMINATION_MESSAGE;

/// `$LLMOPS_TERMINATION_LOG`, else the Kubernetes default when it exists (it
/// does only in a pod).
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env::TERMINATION_LOG).filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let default = PathBuf::from(DEFAULT_PATH);
    default.exists().then_some(default)
}

/// Writes `message`, best-effort: failing to write it must not mask the outcome.
pub fn write(message: &str) {
    if let Some(path) = path()
        && let Err(e) = std::fs::write(&path, message)
    {
        tracing::warn!(path = %path.display(), error = %e, "termination message not written");
    }
}
