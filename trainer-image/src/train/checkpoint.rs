//! Checkpoints on local disk, written so that a crash at any moment leaves either
//! the previous set of checkpoints or the previous set plus one complete new one.
//!
//! ```text
//! <root>/step-<n>/config.json             the model as a Hugging Face directory
//! <root>/step-<n>/model.safetensors
//! <root>/step-<n>/generation_config.json
//! <root>/step-<n>/optimizer.safetensors   AdamW moments (exp_avg.*, exp_avg_sq.*)
//! <root>/step-<n>/trainer_state.json      step, tokens, data cursor, seed, metrics
//! ```
//!
//! A checkpoint is assembled in a hidden sibling directory and renamed into place
//! with `trainer_state.json` already inside, so `step-<n>` with a state file is
//! complete by construction; anything else (a hidden leftover from a crash) is
//! ignored and cleaned up.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::data::Cursor;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Everything besides tensors needed to continue exactly where training stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainerState {
    /// Optimizer updates applied.
    pub step: i64,
    /// Training tokens consumed.
    pub tokens_seen: i64,
    /// Where the next global batch starts.
    pub cursor: Cursor,
    /// The seed everything random derives from: data order from (seed, epoch),
    /// dropout from (seed, step, micro-step, rank). With those counters in the
    /// state, the seed is the whole RNG state.
    pub seed: u64,
    /// Ranks the run had; resuming with another count changes the dropout
    /// streams but nothing else.
    pub world_size: usize,
    /// The dataset artifact trained on, to refuse resuming on other data.
    pub dataset_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// Early stopping: the best validation loss so far, evaluations since it
    /// last improved, and whether the run stopped for it (a restart then only
    /// exports instead of training on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_validation_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub evals_without_improvement: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_early: bool,
    /// RFC 3339 time the checkpoint was written.
    pub time: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why checkpoints cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {} is unreadable: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write checkpoint {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io { op, path, source }
}

/// The checkpoint directory of one training run.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    root: PathBuf,
    keep: usize,
}

impl Checkpoints {
    /// Checkpoints under `root`, keeping the newest `keep`.
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            root: root.into(),
            keep: keep.max(1),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Complete checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<(i64, PathBuf)>, CheckpointError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("list", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(step) = name
                .strip_prefix("step-")
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            if entry.path().join(STATE_FILE).is_file() {
                out.push((step, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest complete checkpoint and its state.
    pub fn newest(&self) -> Result<Option<(TrainerState, PathBuf)>, CheckpointError> {
        let Some((_, dir)) = self.list()?.pop() else {
            return Ok(None);
        };
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        let state = serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some((state, dir)))
    }

    /// Writes checkpoint `state.step`: `write_tensors` fills a fresh directory,
    /// then the state file is added and the directory renamed into place. Older
    /// checkpoints beyond the newest `keep` are removed afterwards.
    pub fn save<E: std::fmt::Display>(
        &self,
        state: &TrainerState,
        write_tensors: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<PathBuf, CheckpointError> {
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let target = self.root.join(format!("step-{}", state.step));
        let staging = self.root.join(format!(
            ".step-{}.partial-{}",
            state.step,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io("create", &staging))?;
        write_tensors(&staging).map_err(|e| CheckpointError::Write {
            path: target.clone(),
            reason: e.to_string(),
        })?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| CheckpointError::Write {
            path: target.clone(),
            reason: e.to_string(),
        })?;
        let state_path = staging.join(STATE_FILE);
        std::fs::write(&state_path, json).map_err(io("write", &state_path))?;
        sync_dir(&staging);
        if target.exists() {
            // Same step saved again (e.g. SIGTERM right after a periodic save):
            // the contents are identical, so replacing is safe.
            std::fs::remove_dir_all(&target).map_err(io("replace", &target))?;
        }
        std::fs::rename(&staging, &target).map_err(io("publish", &target))?;
        sync_dir(&self.root);
        self.prune()?;
        Ok(target)
    }

    /// Removes all but the newest `keep` checkpoints and leftovers of
    /// interrupted saves.
    fn prune(&self) -> Result<(), CheckpointError> {
        let complete = self.list()?;
        let excess = complete.len().saturating_sub(self.keep);
        for (_, dir) in &complete[..excess] {
            std::fs::remove_dir_all(dir).map_err(io("remove", dir))?;
        }
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = format!(".partial-{}", std::process::id());
                if name.starts_with(".step-") && !name.ends_with(&ours) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(())
    }
}

/// Makes renames durable where the platform allows; best-effort.
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: i64) -> TrainerState {
        TrainerState {
            step,
            tokens_seen: step * 10,
            cursor: Cursor {
                epoch: 0,
                position: step as u64,
            },
            seed: 1,
            world_size: 1,
            dataset_digest: "sha256:x".into(),
            train_loss: Some(1.0),
            validation_loss: None,
            best_validation_loss: None,
            evals_without_improvement: 0,
            stopped_early: false,
            time: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn keeps_the_newest_and_ignores_partial_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ckpts = Checkpoints::new(dir.path(), 2);
        for step in [5, 10, 15] {
            ckpts
                .save(&state(step), |d| std::fs::write(d.join("w"), b"x"))
                .unwrap();
        }
        let steps: Vec<i64> = ckpts.list().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![10, 15]);
        // A crash mid-save leaves a directory without state: never picked.
        std::fs::create_dir_all(dir.path().join("step-20")).unwrap();
        let (newest, path) = ckpts.newest().unwrap().unwrap();
        assert_eq!(newest, state(15));
        assert!(path.ends_with("step-15"));
        // A failing writer leaves the published checkpoints alone.
        let err = ckpts.save(&state(25), |_| Err("disk full")).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(ckpts.newest().unwrap().unwrap().0.step, 15);
    }
}
