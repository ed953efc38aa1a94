//! Random access to the sequences of a prepared dataset.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use llmops_store::{Credentials, MANIFEST_FILE, Store, StoreError, artifact_digest, digest_dir};

use super::{FORMAT_VERSION, Manifest};

/// Why a dataset artifact cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("no {MANIFEST_FILE} at {0}: the dataset is not (completely) prepared")]
    NoManifest(String),
    #[error("invalid {MANIFEST_FILE} at {uri}: {reason}")]
    InvalidManifest { uri: String, reason: String },
    #[error("digest mismatch at {uri}: manifest says {expected}, files hash to {actual}")]
    DigestMismatch {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("the artifact has no split {0:?}")]
    UnknownSplit(String),
    #[error("sequence {index} out of range: the split has {len}")]
    OutOfRange { index: u64, len: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A prepared dataset in a local directory.
#[derive(Debug)]
pub struct DatasetArtifact {
    dir: PathBuf,
    pub manifest: Manifest,
}

/// One training row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    /// 1 = target; absent when every token is a target.
    pub mask: Option<Vec<u8>>,
}

impl DatasetArtifact {
    /// Opens the artifact in a local directory.
    pub fn open(dir: &Path) -> Result<Self, ArtifactError> {
        let path = dir.join(MANIFEST_FILE);
        let uri = dir.display().to_string();
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ArtifactError::NoManifest(uri.clone()),
            _ => ArtifactError::Io {
                op: "read",
                path,
                source: e,
            },
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| ArtifactError::InvalidManifest {
                uri: uri.clone(),
                reason: e.to_string(),
            })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(ArtifactError::InvalidManifest {
                uri,
                reason: format!(
                    "format version {} (this reader knows {FORMAT_VERSION})",
                    manifest.format_version
                ),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Opens the artifact at `uri`, downloading it into `cache` first unless it is
    /// already local, and checks its digest.
    pub async fn fetch(
        uri: &str,
        credentials: &Credentials,
        cache: &Path,
    ) -> Result<Self, ArtifactError> {
        let store = Store::open(uri, credentials)?;
        let dir = match store.local_root() {
            Some(root) => root.to_path_buf(),
            None => {
                match store.get_bytes(MANIFEST_FILE).await {
                    Err(StoreError::NotFound { .. }) => {
                        return Err(ArtifactError::NoManifest(uri.to_string()));
                    }
                    other => other?,
                };
                for entry in store.list().await? {
                    let dest = cache.join(&entry.name);
                    if let Some(p) = dest.parent() {
                        std::fs::create_dir_all(p).map_err(|source| ArtifactError::Io {
                            op: "create",
                            path: p.into(),
                            source,
                        })?;
                    }
                    let data = store.get_bytes(&entry.name).await?;
                    std::fs::write(&dest, &data).map_err(|source| ArtifactError::Io {
                        op: "write",
                        path: dest,
                        source,
                    })?;
                }
                cache.to_path_buf()
            }
        };
        let artifact = Self::open(&dir)?;
        artifact.verify()?;
        Ok(artifact)
    }

    /// Recomputes the digest of the files and compares it with the manifest's.
    pub fn verify(&self) -> Result<(), ArtifactError> {
        let actual = artifact_digest(&digest_dir(&self.dir)?);
        if actual != self.manifest.digest {
            return Err(ArtifactError::DigestMismatch {
                uri: self.dir.display().to_string(),
                expected: self.manifest.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// The local directory of the artifact (for `tokenizer.json`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens one split (`train`, `validation` or `test`).
    pub fn split(&self, name: &str) -> Result<SplitReader, ArtifactError> {
        let entry = self
            .manifest
            .splits
            .get(name)
            .ok_or_else(|| ArtifactError::UnknownSplit(name.into()))?;
        let open = |rel: &str| {
            let path = self.dir.join(rel);
            File::open(&path).map_err(|source| ArtifactError::Io {
                op: "open",
                path,
                source,
            })
        };
        let mut shards = Vec::with_capacity(entry.shards.len());
        let mut start = 0;
        for shard in &entry.shards {
            let mask = shard.mask_path.as_deref().map(open).transpose()?;
            shards.push(ShardFiles {
                start,
                bin: open(&shard.path)?,
                mask,
            });
            start += shard.sequences;
        }
        Ok(SplitReader {
            seq_len: self.manifest.sequence_length as usize,
            shards,
            len: start,
        })
    }
}

struct ShardFiles {
    /// Index of the shard's first sequence within the split.
    start: u64,
    bin: File,
    mask: Option<File>,
}

/// Sequences of one split, by index.
pub struct SplitReader {
    seq_len: usize,
    shards: Vec<ShardFiles>,
    len: u64,
}

impl SplitReader {
    /// Number of sequences.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens per sequence.
    pub fn sequence_length(&self) -> usize {
        self.seq_len
    }

    /// Reads sequence `index` (positioned reads; shareable across threads).
    pub fn get(&self, index: u64) -> Result<Sequence, ArtifactError> {
        if index >= self.len {
            return Err(ArtifactError::OutOfRange {
                index,
                len: self.len,
            });
        }
        let shard_at = self.shards.partition_point(|s| s.start <= index) - 1;
        let shard = &self.shards[shard_at];
        let row = index - shard.start;
        let io = |source| ArtifactError::Io {
            op: "read",
            path: PathBuf::from(format!("shard of sequence {index}")),
            source,
        };
        let mut bytes = vec![0u8; self.seq_len * 4];
        shard
            .bin
            .read_exact_at(&mut bytes, row * self.seq_len as u64 * 4)
            .map_err(io)?;
        let tokens = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mask = match &shard.mask {
            Some(file) => {
                let mut mask = vec![0u8; self.seq_len];
                file.read_exact_at(&mut mask, row * self.seq_len as u64)
                    .map_err(io)?;
                Some(mask)
            }
            None => None,
        };
        Ok(Sequence { tokens, mask })
    }

    /// All sequences in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Sequence, ArtifactError>> + '_ {
        (0..self.len).map(|i| self.get(i))
    }
}
