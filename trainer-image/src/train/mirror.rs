//! Checkpoints of a run whose output is an object store (s3://, gs://, az://):
//! they are written on local disk as usual and mirrored to
//! `<output>/checkpoints/`, so a pod restarted elsewhere finds them.
//!
//! `trainer_state.json` is uploaded last, so a remote checkpoint with a state
//! file is complete, as locally.

use std::path::Path;

use llmops_store::{Credentials, Store, StoreError};
use tokio::runtime::Handle;

use super::checkpoint::STATE_FILE;

/// Why checkpoints could not be mirrored.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("checkpoint mirror: {0}")]
    Store(#[from] StoreError),
    #[error("checkpoint mirror: cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MirrorError {
    let path = path.to_path_buf();
    move |source| MirrorError::Io { op, path, source }
}

/// The remote copy of a checkpoint directory.
pub struct Mirror {
    store: Store,
    credentials: Credentials,
    rt: Handle,
}

fn step_of(name: &str) -> Option<i64> {
    name.strip_prefix("step-")?.parse().ok()
}

impl Mirror {
    /// Mirrors into `<output>/checkpoints/`; `rt` runs the store's I/O from the
    /// (blocking) training thread.
    pub fn new(output: &str, credentials: &Credentials, rt: Handle) -> Result<Self, StoreError> {
        let uri = format!("{}/checkpoints/", output.trim_end_matches('/'));
        Ok(Self {
            store: Store::open(&uri, credentials)?,
            credentials: credentials.clone(),
            rt,
        })
    }

    /// Steps of the complete remote checkpoints, ascending.
    fn remote_steps(&self) -> Result<Vec<i64>, StoreError> {
        let entries = match self.rt.block_on(self.store.list()) {
            Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
            other => other?,
        };
        let mut steps: Vec<i64> = entries
            .iter()
            .filter_map(|e| {
                let (dir, file) = e.name.split_once('/')?;
                (file == STATE_FILE).then(|| step_of(dir)).flatten()
            })
            .collect();
        steps.sort();
        Ok(steps)
    }

    /// Uploads the local checkpoint `dir` (named `step-<n>`) and the training
    /// log, then deletes remote checkpoints not among `keep`.
    pub fn upload(&self, dir: &Path, log: &Path, keep: &[i64]) -> Result<(), MirrorError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .map_err(io("list", dir))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|f| f != STATE_FILE)
            .collect();
        files.sort();
        files.push(STATE_FILE.into());
        for file in files {
            self.rt.block_on(
                self.store
                    .put_file(&format!("{name}/{file}"), &dir.join(&file)),
            )?;
        }
        if log.is_file() {
            let log_name = log
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.rt.block_on(self.store.put_file(&log_name, log))?;
        }
        for step in self.remote_steps()? {
            if !keep.contains(&step) {
                let old = Store::open(
                    &format!("{}step-{step}/", self.store.uri()),
                    &self.credentials,
                )?;
                self.rt.block_on(old.delete_all())?;
            }
        }
        Ok(())
    }

    /// Downloads the newest remote checkpoint (and the log) into `root` unless
    /// `root` already has one at least as new. Returns the step downloaded.
    pub fn download_newest(
        &self,
        root: &Path,
        local_newest: Option<i64>,
        log_name: &str,
    ) -> Result<Option<i64>, MirrorError> {
        let Some(&step) = self.remote_steps()?.last() else {
            return Ok(None);
        };
        if local_newest.is_some_and(|l| l >= step) {
            return Ok(None);
        }
        let prefix = format!("step-{step}/");
        let staging = root.join(format!(".step-{step}.download-{}", std::process::id()));
        std::fs::create_dir_all(&staging).map_err(io("create", &staging))?;
        std::fs::create_dir_all(root).map_err(io("create", root))?;
        let entries = self.rt.block_on(self.store.list())?;
        for e in &entries {
            let target = if let Some(file) = e.name.strip_prefix(&prefix) {
                staging.join(file)
            } else if e.name == log_name {
                root.join(log_name)
            } else {
                continue;
            };
            let bytes = self.rt.block_on(self.store.get_bytes(&e.name))?;
            std::fs::write(&target, &bytes).map_err(io("write", &target))?;
        }
        let dir = root.join(format!("step-{step}"));
        if let Err(e) = std::fs::rename(&staging, &dir) {
            // Another process of the pod may have put the same checkpoint there.
            let _ = std::fs::remove_dir_all(&staging);
            if !dir.join(STATE_FILE).is_file() {
                return Err(io("publish", &dir)(e));
            }
        }
        Ok(Some(step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file:// store stands in for the object store.
    #[test]
    fn uploads_prunes_and_restores_the_newest() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let local = tempfile::tempdir().unwrap();
        let remote = tempfile::tempdir().unwrap();
        let output = format!("file://{}", remote.path().display());
        let mirror = Mirror::new(&output, &Credentials::Ambient, rt.handle().clone()).unwrap();
        let log = local.path().join("train_log.jsonl");
        std::fs::write(&log, "{\"step\":1}\n").unwrap();
        for step in [1, 2, 3] {
            let dir = local.path().join(format!("step-{step}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("model.safetensors"), format!("w{step}")).unwrap();
            std::fs::write(dir.join(STATE_FILE), "{}").unwrap();
            mirror.upload(&dir, &log, &[step - 1, step]).unwrap();
        }
        assert_eq!(mirror.remote_steps().unwrap(), vec![2, 3]);

        let fresh = tempfile::tempdir().unwrap();
        let got = mirror
            .download_newest(fresh.path(), None, "train_log.jsonl")
            .unwrap();
        assert_eq!(got, Some(3));
        let weights = std::fs::read_to_string(fresh.path().join("step-3/model.safetensors"));
        assert_eq!(weights.unwrap(), "w3");
        assert!(fresh.path().join("train_log.jsonl").is_file());
        // Nothing newer remotely: nothing downloaded.
        let again = mirror.download_newest(fresh.path(), Some(3), "train_log.jsonl");
        assert_eq!(again.unwrap(), None);
    }
}
