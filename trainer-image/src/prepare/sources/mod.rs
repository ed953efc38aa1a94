//! Turning each `spec.sources[i]` into a sequence of named byte readers.
//!
//! Sources are read synchronously on the pipeline's blocking thread; remote
//! bytes arrive as async streams from `llmops-store` and are bridged into
//! `std::io::Read` so every format parser works the same on all of them.

pub(crate) mod bounded;
mod counting;
pub(crate) mod http;
pub(crate) mod limits;
#[cfg(test)]
mod props;

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use futures::TryStreamExt;
use llmops_crds::dataset::Source;
use llmops_store::{ArtifactUri, Credentials, Store, StoreError, verify_sha256};
use tokio::runtime::Handle;

pub use counting::CountingReader;
pub use limits::Limits;

use super::PrepareError;

/// Where the operator mounts ConfigMap sources: `<dir>/<index>/<key>`.
pub const DEFAULT_SOURCES_DIR: &str = llmops_contract::path::SOURCES_DIR;

/// One readable input of a source (a prefix source has several).
pub struct Input {
    /// Names the input in error messages: `source 2 (s3://b/x.jsonl)`.
    pub name: String,
    location: Location,
}

enum Location {
    Inline(String),
    File(PathBuf),
    Remote {
        store: Store,
        rel: String,
        sha256: Option<String>,
    },
    Http {
        /// As the spec spells it, for messages.
        display: String,
        url: url::Url,
        sha256: Option<String>,
    },
}

/// Lists the inputs of `source` (the `index`-th of the spec), in name order.
pub fn inputs(index: usize, source: &Source, rt: &Handle) -> Result<Vec<Input>, PrepareError> {
    // An unreadable limit variable fails here, before any source is read.
    Limits::current()?;
    let named = |what: &str| format!("source {index} ({what})");
    if let Some(inline) = &source.inline {
        return Ok(vec![Input {
            name: named("inline"),
            location: Location::Inline(inline.content.clone()),
        }]);
    }
    if let Some(cm) = &source.config_map {
        let dir = std::env::var(llmops_contract::env::SOURCES_DIR)
            .unwrap_or_else(|_| DEFAULT_SOURCES_DIR.into());
        let path = PathBuf::from(dir).join(index.to_string()).join(&cm.key);
        return Ok(vec![Input {
            name: named(&format!("configMap {}/{}", cm.name, cm.key)),
            location: Location::File(path),
        }]);
    }
    if let Some(http) = &source.http {
        let ArtifactUri::Http { url } = ArtifactUri::parse(&http.url)? else {
            return Err(StoreError::InvalidUri {
                uri: http.url.clone(),
                reason: "an http source needs an http:// or https:// URL".into(),
            }
            .into());
        };
        return Ok(vec![Input {
            name: named(&http.url),
            location: Location::Http {
                display: http.url.clone(),
                url,
                sha256: http.sha256.clone(),
            },
        }]);
    }
    let (uri, credentials) = if let Some(os) = &source.object_store {
        let secret = os.credentials_secret_ref.as_ref().map(|s| s.name.as_str());
        (os.uri.clone(), Credentials::from_secret(secret))
    } else if let Some(pvc) = &source.pvc {
        // A claim name is one path component below the mount root; `..` or a
        // `/` would read outside the claims (no valid claim name has either).
        if matches!(pvc.claim_name.as_str(), "" | "." | "..") || pvc.claim_name.contains('/') {
            return Err(PrepareError::InvalidSpec(format!(
                "sources[{index}].pvc.claimName {:?} is not a PersistentVolumeClaim name",
                pvc.claim_name
            )));
        }
        let path = pvc.path.trim_start_matches('/');
        (
            format!("pvc://{}/{path}", pvc.claim_name),
            Credentials::Ambient,
        )
    } else {
        return Err(PrepareError::InvalidSpec(format!(
            "sources[{index}] sets no location; set one of http, objectStore, inline, configMap or pvc"
        )));
    };
    let store = Store::open(&uri, &credentials)?;
    let entries = rt.block_on(store.list())?;
    if entries.is_empty() {
        return Err(PrepareError::UnreadableSource {
            source_name: named(&uri),
            reason: "no objects found; check the URI (a prefix ends with '/')".into(),
        });
    }
    Ok(entries
        .into_iter()
        .map(|e| {
            let display = if e.name.is_empty() {
                uri.clone()
            } else {
                format!("{}/{}", uri.trim_end_matches('/'), e.name)
            };
            let location = match store.local_root() {
                Some(root) if e.name.is_empty() => Location::File(root.to_path_buf()),
                Some(root) => Location::File(root.join(&e.name)),
                None => Location::Remote {
                    store: store.clone(),
                    rel: e.name,
                    sha256: None,
                },
            };
            Input {
                name: named(&display),
                location,
            }
        })
        .collect())
}

impl Input {
    /// Opens the input's raw (possibly compressed) bytes, counting them into `bytes_in`.
    pub fn open(
        &self,
        rt: &Handle,
        bytes_in: Arc<AtomicU64>,
    ) -> Result<Box<dyn Read + Send>, PrepareError> {
        let reader: Box<dyn Read + Send> = match &self.location {
            Location::Inline(text) => Box::new(std::io::Cursor::new(text.clone().into_bytes())),
            Location::File(path) => {
                Box::new(
                    std::fs::File::open(path).map_err(|e| PrepareError::UnreadableSource {
                        source_name: self.name.clone(),
                        reason: format!("cannot open {}: {e}", path.display()),
                    })?,
                )
            }
            Location::Remote { store, rel, sha256 } => {
                let mut stream = rt.block_on(store.get(rel))?;
                if let Some(expected) = sha256 {
                    stream = verify_sha256(stream, expected, store.uri());
                }
                // Carry store errors (checksum mismatch, unreachable) through the
                // reader so they can be recovered intact by `PrepareError::from_read`.
                let stream = stream.map_err(std::io::Error::other);
                let reader = tokio_util::io::StreamReader::new(stream);
                Box::new(tokio_util::io::SyncIoBridge::new_with_handle(
                    reader,
                    rt.clone(),
                ))
            }
            Location::Http {
                display,
                url,
                sha256,
            } => {
                let limits = Limits::current()?;
                let client = http::client(limits).map_err(|e| PrepareError::UnreadableSource {
                    source_name: self.name.clone(),
                    reason: format!("cannot set up an HTTP client: {e}"),
                })?;
                let mut stream =
                    rt.block_on(http::get(&client, url, display, limits, &self.name))?;
                if let Some(expected) = sha256 {
                    stream = verify_sha256(stream, expected, display);
                }
                let stream = stream.map_err(std::io::Error::other);
                let reader = tokio_util::io::StreamReader::new(stream);
                Box::new(bounded::Capped::download(
                    tokio_util::io::SyncIoBridge::new_with_handle(reader, rt.clone()),
                    limits.source_bytes,
                ))
            }
        };
        Ok(Box::new(CountingReader::new(reader, bytes_in)))
    }
}
