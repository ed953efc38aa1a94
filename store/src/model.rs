//! Model artifacts. An export is a directory of files (the Hugging Face layout
//! plus `llmops.json`) and a `manifest.json`, written last, that lists them with
//! their sha256 and the artifact digest over them.
//!
//! Each export goes to a directory of its own named by that digest,
//! `<output>/model-<first 16 hex digits>/`, so a published model is never
//! overwritten: a pod that restarts loads the same bytes it loaded before, and a
//! crashed export leaves a directory without a manifest that no reader takes for
//! a model. Checkpoints live beside these directories, never in them.
//!
//! Readers ([`fetch_model`]) fetch exactly the files the manifest lists and check
//! each against its sha256, and the whole against the digest they were told to
//! expect.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::write_file;
use crate::{
    FileDigest, MANIFEST_FILE, Store, StoreError, artifact_digest, sha256_file, verify_sha256,
};

/// The start of the name of each export's directory.
pub const MODEL_DIR_PREFIX: &str = "model-";
/// Hex digits of the digest in a directory's name: 64 bits tell apart the
/// exports of one output.
const DIR_DIGEST_DIGITS: usize = 16;

/// `manifest.json` of a model artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// `sha256:<hex>` over `files` ([`artifact_digest`]).
    pub digest: String,
    pub files: Vec<ManifestEntry>,
}

/// One file of a model artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative to the artifact's directory, `/`-separated.
    pub path: String,
    /// Lower-case hex.
    pub sha256: String,
}

impl ModelManifest {
    /// The manifest of an artifact made of `files`.
    pub fn new(files: &[FileDigest]) -> Self {
        Self {
            digest: artifact_digest(files),
            files: files
                .iter()
                .filter(|f| f.path != MANIFEST_FILE)
                .map(|f| ManifestEntry {
                    path: f.path.clone(),
                    sha256: f.sha256.clone(),
                })
                .collect(),
        }
    }

    /// The name of the directory this export is published in.
    pub fn dir_name(&self) -> String {
        let hex = self.digest.trim_start_matches("sha256:");
        format!(
            "{MODEL_DIR_PREFIX}{}",
            &hex[..DIR_DIGEST_DIGITS.min(hex.len())]
        )
    }

    fn file_digests(&self) -> Vec<FileDigest> {
        self.files
            .iter()
            .map(|f| FileDigest {
                path: f.path.clone(),
                sha256: f.sha256.clone(),
            })
            .collect()
    }

    /// Reads a manifest, checking that its digest is the one over its files and
    /// that every path stays inside the artifact.
    pub fn parse(bytes: &[u8], uri: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidModel {
            uri: uri.to_string(),
            reason,
        };
        let manifest: Self = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("{MANIFEST_FILE} is not a model manifest: {e}")))?;
        if let Some(bad) = manifest.files.iter().find(|f| !inside(&f.path)) {
            return Err(invalid(format!(
                "{MANIFEST_FILE} lists {:?}, which is not a path inside the model",
                bad.path
            )));
        }
        let actual = artifact_digest(&manifest.file_digests());
        if actual != manifest.digest {
            return Err(invalid(format!(
                "{MANIFEST_FILE} says {} but its files hash to {actual}",
                manifest.digest
            )));
        }
        Ok(manifest)
    }
}

/// Whether `path` is relative and never leaves its directory.
fn inside(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The local directory holding the model at `store`: in place for
/// `file://`/`pvc://`, else downloaded into `scratch`. With a manifest, exactly
/// its files, each checked against its sha256, and the artifact's digest against
/// `pinned` when given. Without one, `pinned` cannot be checked and is an error
/// (an export that never finished); unpinned, the whole directory is taken as it
/// is (a model exported elsewhere, named by `spec.model.uri`).
pub async fn fetch_model(
    store: &Store,
    scratch: &Path,
    pinned: Option<&str>,
) -> Result<PathBuf, StoreError> {
    let uri = store.uri().to_string();
    let manifest = match store.get_bytes(MANIFEST_FILE).await {
        Ok(bytes) => ModelManifest::parse(&bytes, &uri)?,
        Err(StoreError::NotFound { .. }) => {
            if let Some(expected) = pinned {
                return Err(StoreError::InvalidModel {
                    uri,
                    reason: format!(
                        "it has no {MANIFEST_FILE}, so it is not a complete export of {expected}"
                    ),
                });
            }
            return store.local_dir(scratch).await;
        }
        Err(e) => return Err(e),
    };
    if let Some(expected) = pinned
        && expected != manifest.digest
    {
        return Err(StoreError::InvalidModel {
            uri,
            reason: format!("it is {}, not {expected}", manifest.digest),
        });
    }
    if let Some(root) = store.local_root() {
        for f in &manifest.files {
            let actual = sha256_file(&root.join(&f.path))?;
            if actual != f.sha256 {
                return Err(StoreError::ChecksumMismatch {
                    uri: store.child_uri(&f.path),
                    expected: f.sha256.clone(),
                    actual,
                });
            }
        }
        return Ok(root.to_path_buf());
    }
    for f in &manifest.files {
        let checked = verify_sha256(
            store.get(&f.path).await?,
            &f.sha256,
            &store.child_uri(&f.path),
        );
        write_file(checked, &scratch.join(&f.path)).await?;
    }
    Ok(scratch.to_path_buf())
}

#[cfg(test)]
mod tests;
