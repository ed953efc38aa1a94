//! Checkpoints on local disk, written so that a crash at any moment leaves either
//! the previous set of checkpoints or the previous set plus one complete new one.
//!
//! ```text
//! <root>/step-<n>/config.json             the model as a Hugging Face directory
//! <root>/step-<n>/model.safetensors
//! <root>/step-<n>/generation_config.json
//! <root>/step-<n>/optimizer.safetensors   AdamW moments (exp_avg.*, exp_avg_sq.*)
//! <root>/step-<n>/optimizer-zero-rank-<r>.safetensors
//!                                         instead, with training.zero stage 1 or 2:
//!                                         rank r's shard (exp_avg, exp_avg_sq, master)
//! <root>/step-<n>/SHA256SUMS              each file's sha256 (`sha256sum` format)
//! <root>/step-<n>/trainer_state.json      step, tokens, data cursor, seed, metrics
//! ```
//!
//! A checkpoint is assembled in a hidden sibling directory and renamed into place
//! with `trainer_state.json` already inside, so `step-<n>` with a state file is
//! complete by construction; anything else (a hidden leftover from a crash) is
//! ignored and cleaned up. What a crash cannot explain (a disk or a copy that
//! changed bytes, a state file that does not parse) is caught by the sums when
//! resuming: such a checkpoint is set aside as `step-<n>.corrupt` and the one
//! before it is used ([`Checkpoints::newest`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::data::Cursor;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const SUMS_FILE: &str = "SHA256SUMS";

/// The optimizer shard of `rank` in a ZeRO checkpoint.
pub fn zero_optimizer_file(rank: usize) -> String {
    format!("optimizer-zero-rank-{rank}.safetensors")
}

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
    /// The ZeRO stage the optimizer state was saved with: 0 is one
    /// `optimizer.safetensors`, 1 and 2 one shard file per rank of `world_size`.
    #[serde(default, skip_serializing_if = "is_zero_stage")]
    pub zero_stage: u8,
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

fn is_zero_stage(n: &u8) -> bool {
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

    /// The newest checkpoint that is intact, and the newer ones that were not:
    /// each of those is renamed `step-<n>.corrupt` (kept for inspection, never
    /// picked again) so that a restart does not trip over it a second time.
    pub fn newest(&self) -> Result<Newest, CheckpointError> {
        let mut set_aside = Vec::new();
        for (step, dir) in self.list()?.into_iter().rev() {
            match read_intact(&dir) {
                Ok(state) => {
                    return Ok(Newest {
                        found: Some((state, dir)),
                        set_aside,
                    });
                }
                Err(reason) => {
                    let aside = self.root.join(format!("step-{step}.corrupt"));
                    let _ = std::fs::remove_dir_all(&aside);
                    std::fs::rename(&dir, &aside).map_err(io("set aside", &dir))?;
                    tracing::warn!(step, %reason, aside = %aside.display(), "checkpoint is corrupt; trying the one before");
                    set_aside.push(CorruptCheckpoint { step, reason });
                }
            }
        }
        Ok(Newest {
            found: None,
            set_aside,
        })
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
        let sums_path = staging.join(SUMS_FILE);
        std::fs::write(&sums_path, sums(&staging)?).map_err(io("write", &sums_path))?;
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

/// What [`Checkpoints::newest`] found.
#[derive(Debug, Default)]
pub struct Newest {
    /// The newest intact checkpoint and its state.
    pub found: Option<(TrainerState, PathBuf)>,
    /// Newer checkpoints that were corrupt, newest first.
    pub set_aside: Vec<CorruptCheckpoint>,
}

/// A checkpoint that failed its check, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptCheckpoint {
    pub step: i64,
    pub reason: String,
}

/// The `sha256sum` lines of every file in `dir`, by name.
fn sums(dir: &Path) -> Result<String, CheckpointError> {
    let digests = llmops_store::digest_dir(dir).map_err(|e| CheckpointError::Write {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(digests
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.path))
        .collect())
}

/// The state of the checkpoint in `dir` if its files are the ones that were
/// written, else what is wrong. A checkpoint without sums (written by an older
/// trainer) is checked for its state only.
fn read_intact(dir: &Path) -> Result<TrainerState, String> {
    let text =
        std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| format!("{STATE_FILE}: {e}"))?;
    let state = serde_json::from_str(&text).map_err(|e| format!("{STATE_FILE}: {e}"))?;
    let listed = match std::fs::read_to_string(dir.join(SUMS_FILE)) {
        Ok(listed) => listed,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
        Err(e) => return Err(format!("{SUMS_FILE}: {e}")),
    };
    for line in listed.lines() {
        let Some((expected, name)) = line.split_once("  ") else {
            return Err(format!("{SUMS_FILE}: a line without a sum: {line:?}"));
        };
        let actual =
            llmops_store::sha256_file(&dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if actual != expected {
            return Err(format!("{name}: sha256 {actual}, written as {expected}"));
        }
    }
    Ok(state)
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
            zero_stage: 0,
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
        let (newest, path) = ckpts.newest().unwrap().found.unwrap();
        assert_eq!(newest, state(15));
        assert!(path.ends_with("step-15"));
        // A failing writer leaves the published checkpoints alone.
        let err = ckpts.save(&state(25), |_| Err("disk full")).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(ckpts.newest().unwrap().found.unwrap().0.step, 15);
    }

    #[test]
    fn a_corrupt_newest_checkpoint_is_set_aside_for_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let ckpts = Checkpoints::new(dir.path(), 3);
        for step in [5, 10, 15] {
            ckpts
                .save(&state(step), |d| std::fs::write(d.join("w"), b"weights"))
                .unwrap();
        }
        // Bytes changed after the save (a bad disk, a truncated copy).
        std::fs::write(dir.path().join("step-15/w"), b"weigh").unwrap();
        let newest = ckpts.newest().unwrap();
        assert_eq!(newest.found.unwrap().0.step, 10);
        let [corrupt] = newest.set_aside.as_slice() else {
            panic!("one set aside: {:?}", newest.set_aside);
        };
        assert_eq!(corrupt.step, 15);
        assert!(
            corrupt.reason.starts_with("w: sha256"),
            "{}",
            corrupt.reason
        );
        assert!(dir.path().join("step-15.corrupt/w").is_file());
        // Set aside once: the next restart starts from step 10 without a word.
        let again = ckpts.newest().unwrap();
        assert_eq!(again.found.unwrap().0.step, 10);
        assert!(again.set_aside.is_empty());

        // A state file that does not parse, then one missing file.
        std::fs::write(dir.path().join("step-10").join(STATE_FILE), b"{").unwrap();
        std::fs::remove_file(dir.path().join("step-5/w")).unwrap();
        let newest = ckpts.newest().unwrap();
        assert!(newest.found.is_none());
        let steps: Vec<i64> = newest.set_aside.iter().map(|c| c.step).collect();
        assert_eq!(steps, [10, 5]);
    }

    #[test]
    fn a_checkpoint_without_sums_is_taken_on_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let ckpts = Checkpoints::new(dir.path(), 3);
        ckpts
            .save(&state(5), |d| std::fs::write(d.join("w"), b"x"))
            .unwrap();
        std::fs::remove_file(dir.path().join("step-5").join(SUMS_FILE)).unwrap();
        assert_eq!(ckpts.newest().unwrap().found.unwrap().0.step, 5);
    }
}
