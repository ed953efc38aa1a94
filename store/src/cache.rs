//! A model cache shared by serving pods: a directory (on a volume the pods of a
//! node, or of the cluster, share) holding each downloaded model once, under a
//! key that names its bytes, so that the second pod to serve a model loads it
//! from the cache instead of downloading it again.
//!
//! - **Key**: an llmops export is keyed by its artifact digest
//!   (`sha256-<64 hex>`, from its `manifest.json`); a Hugging Face Hub model by
//!   the commit its revision resolved to (`hf-<sha256 of hf://...@<commit>>`).
//!   A model with neither (a directory without a manifest in an object store)
//!   has no key that names its bytes and is not cached.
//! - **Publishing**: a model is downloaded into a hidden directory beside its
//!   entry and renamed into place, so an entry is complete or absent; a lock
//!   file per key (`<key>.lock`, an advisory `flock`) makes concurrent pods wait
//!   for the one downloading rather than download too. Where the filesystem
//!   has no locks the rename still keeps entries whole; pods then may download
//!   the same model twice. The pod holding the lock removes what a pod that
//!   died mid-download left of the same key.
//! - **Reading**: an entry of an llmops export is checked file by file against
//!   its manifest on every use ([`fetch_model`] over the local copy), so a
//!   damaged entry is refused rather than served.
//!
//! Entries are never removed here: the cache volume's size bounds it, and an
//! entry no deployment uses may be deleted by hand (a pod holding the lock
//! file's lock is downloading it).

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::{Credentials, MANIFEST_FILE, ModelManifest, Store, StoreError, fetch_model};

/// A model found in, or just added to, the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    /// The entry's directory.
    pub path: PathBuf,
    /// Its name in the cache.
    pub key: String,
    /// Whether it was there already (nothing was downloaded).
    pub hit: bool,
}

/// The cache key of the model at `store`, if its bytes have a name: its
/// manifest's digest (checked against `pinned`; the manifest is returned to be
/// kept in the entry), else the commit of a Hub revision. `None` for a local
/// model (used in place) or one without either.
async fn key(
    store: &Store,
    pinned: Option<&str>,
) -> Result<Option<(String, Option<bytes::Bytes>)>, StoreError> {
    if store.local_root().is_some() {
        return Ok(None);
    }
    match store.get_bytes(MANIFEST_FILE).await {
        Ok(bytes) => {
            let manifest = ModelManifest::parse(&bytes, store.uri())?;
            if let Some(expected) = pinned
                && expected != manifest.digest
            {
                return Err(StoreError::InvalidModel {
                    uri: store.uri().to_string(),
                    reason: format!("it is {}, not {expected}", manifest.digest),
                });
            }
            let hex = manifest.digest.trim_start_matches("sha256:");
            Ok(Some((format!("sha256-{hex}"), Some(bytes))))
        }
        Err(StoreError::NotFound { .. }) => Ok(store.pinned_uri().await?.map(|uri| {
            let key = format!("hf-{}", hex::encode(Sha256::digest(uri.as_bytes())));
            (key, None)
        })),
        Err(e) => Err(e),
    }
}

/// The model at `store` from the cache at `cache`, downloading it into the cache
/// first when it is not there; `None` when the model has no cache key (the
/// caller fetches it as usual). `pinned` is checked as [`fetch_model`] checks it.
pub async fn fetch_model_cached(
    store: &Store,
    cache: &Path,
    pinned: Option<&str>,
) -> Result<Option<Cached>, StoreError> {
    let Some((key, manifest)) = key(store, pinned).await? else {
        return Ok(None);
    };
    let entry = cache.join(&key);
    if entry.is_dir() {
        return checked(entry, key, true, pinned).await.map(Some);
    }
    std::fs::create_dir_all(cache).map_err(StoreError::io("create", cache))?;
    let lock_path = cache.join(format!("{key}.lock"));
    let lock = lock(&lock_path).await?;
    // Whoever held the lock before may have added it meanwhile.
    if entry.is_dir() {
        drop(lock);
        return checked(entry, key, true, pinned).await.map(Some);
    }
    if lock.is_some() {
        // Whatever a pod that died mid-download left: with the lock held, no
        // one else is downloading this key.
        remove_incoming(cache, &key);
    }
    let incoming = cache.join(format!(".{key}.incoming-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&incoming);
    std::fs::create_dir_all(&incoming).map_err(StoreError::io("create", &incoming))?;
    // The manifest goes with the files, so that every use checks them.
    let downloaded = fetch_model(store, &incoming, pinned).await.and_then(|_| {
        let Some(bytes) = &manifest else {
            return Ok(());
        };
        let path = incoming.join(MANIFEST_FILE);
        std::fs::write(&path, bytes).map_err(StoreError::io("write", &path))
    });
    let published = downloaded.and_then(|()| {
        std::fs::rename(&incoming, &entry).map_err(StoreError::io("publish", &entry))
    });
    if let Err(e) = published {
        let _ = std::fs::remove_dir_all(&incoming);
        return Err(e);
    }
    drop(lock);
    Ok(Some(Cached {
        path: entry,
        key,
        hit: false,
    }))
}

/// Removes the download directories of `key` (`.<key>.incoming-<pid>`).
fn remove_incoming(cache: &Path, key: &str) {
    let prefix = format!(".{key}.incoming-");
    for entry in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The entry at `path`, checked against its manifest (when it has one).
async fn checked(
    path: PathBuf,
    key: String,
    hit: bool,
    pinned: Option<&str>,
) -> Result<Cached, StoreError> {
    let local = Store::open(&format!("file://{}", path.display()), &Credentials::Ambient)?;
    // Only an export has a manifest to check; a Hub entry's key is its commit.
    let pinned = if path.join(MANIFEST_FILE).exists() {
        pinned
    } else {
        None
    };
    fetch_model(&local, Path::new(""), pinned).await?;
    Ok(Cached { path, key, hit })
}

/// Takes the exclusive advisory lock on `path` (created if need be), waiting on
/// a blocking thread. `None` where the filesystem has no locks.
async fn lock(path: &Path) -> Result<Option<std::fs::File>, StoreError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(StoreError::io("open", path))?;
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || match file.lock() {
        Ok(()) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::warn!(lock = %owned.display(), "no file locks here: concurrent pods may download the same model");
            Ok(None)
        }
        Err(e) => Err(StoreError::io("lock", &owned)(e)),
    })
    .await
    .map_err(|e| StoreError::Io {
        op: "lock",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?
}

#[cfg(test)]
mod tests;
