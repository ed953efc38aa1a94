//! Reading, listing and writing the objects under one URI.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest as _, Sha256};

use crate::hub::HubStore;
use crate::{ArtifactUri, Credentials, MANIFEST_FILE, StoreError};

/// An async stream of the bytes of one object.
pub type ByteStream = BoxStream<'static, Result<Bytes, StoreError>>;

/// One object found under a URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Name relative to the URI (`""` when the URI names the object itself).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// The objects under one URI: a directory-like prefix, or a single object.
#[derive(Clone, Debug)]
pub struct Store {
    uri: String,
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Object {
        store: Arc<dyn ObjectStore>,
        root: ObjectPath,
    },
    Local {
        root: PathBuf,
    },
    Http {
        client: reqwest::Client,
        url: url::Url,
    },
    Hub(Arc<HubStore>),
}

/// The Secret keys without which a store cannot authenticate at all.
fn required_keys(scheme: &str) -> &'static [&'static str] {
    match scheme {
        "s3" => &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        "gs" => &["GOOGLE_SERVICE_ACCOUNT_KEY"],
        "az" => &["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY"],
        _ => &[],
    }
}

macro_rules! build_store {
    ($builder:ty, $key:ty, $url:expr, $options:expr, $uri:expr) => {{
        // Start from the environment so ambient identities (web identity tokens,
        // metadata servers) keep working, then apply the Secret's keys on top.
        let mut builder = <$builder>::from_env().with_url($url.as_str());
        for (k, v) in $options {
            if let Ok(key) = k.parse::<$key>() {
                builder = builder.with_config(key, v);
            }
        }
        Arc::new(builder.build().map_err(|source| StoreError::ObjectStore {
            op: "configure",
            uri: $uri.to_string(),
            source,
        })?) as Arc<dyn ObjectStore>
    }};
}

impl Store {
    /// Opens `uri` with the given credentials. Fails fast when a referenced Secret
    /// lacks the keys its store needs.
    pub fn open(uri: &str, credentials: &Credentials) -> Result<Self, StoreError> {
        let backend = match ArtifactUri::parse(uri)? {
            ArtifactUri::Local { path } => Backend::Local { root: path },
            ArtifactUri::Http { url } => Backend::Http {
                client: reqwest::Client::new(),
                url,
            },
            ArtifactUri::Hub(hub) => Backend::Hub(Arc::new(HubStore::open(uri, hub, credentials)?)),
            ArtifactUri::Object { url } => {
                let scheme = url.scheme().to_string();
                if let Credentials::Secret(secret) = credentials {
                    let missing: Vec<&str> = required_keys(&scheme)
                        .iter()
                        .copied()
                        .filter(|k| credentials.get(k).is_none())
                        .collect();
                    if !missing.is_empty() {
                        return Err(StoreError::MissingCredentials {
                            uri: uri.to_string(),
                            secret: secret.clone(),
                            prefix: crate::credential_env_prefix(secret),
                            missing: missing.join(", "),
                        });
                    }
                }
                let options = credentials.options();
                let store = match scheme.as_str() {
                    "s3" => build_store!(
                        object_store::aws::AmazonS3Builder,
                        object_store::aws::AmazonS3ConfigKey,
                        url,
                        options,
                        uri
                    ),
                    "gs" => build_store!(
                        object_store::gcp::GoogleCloudStorageBuilder,
                        object_store::gcp::GoogleConfigKey,
                        url,
                        options,
                        uri
                    ),
                    _ => build_store!(
                        object_store::azure::MicrosoftAzureBuilder,
                        object_store::azure::AzureConfigKey,
                        url,
                        options,
                        uri
                    ),
                };
                let root = ObjectPath::parse(url.path().trim_matches('/')).map_err(|e| {
                    StoreError::InvalidUri {
                        uri: uri.to_string(),
                        reason: e.to_string(),
                    }
                })?;
                Backend::Object { store, root }
            }
        };
        Ok(Self {
            uri: uri.to_string(),
            backend,
        })
    }

    /// A store over `store` below `root`, shown as `uri`: how tests reach the
    /// object-store code paths with an in-memory or local backend.
    #[cfg(test)]
    pub(crate) fn over(uri: &str, store: Arc<dyn ObjectStore>, root: &str) -> Self {
        Self {
            uri: uri.to_string(),
            backend: Backend::Object {
                store,
                root: ObjectPath::from(root),
            },
        }
    }

    /// A store over the Hub URI `uri` at `endpoint` with `token`: how tests
    /// reach a Hub on loopback without changing the process's environment.
    #[cfg(test)]
    pub(crate) fn over_hub(
        uri: &str,
        credentials: &Credentials,
        endpoint: &str,
        token: Option<&str>,
    ) -> Result<Self, StoreError> {
        let ArtifactUri::Hub(hub) = ArtifactUri::parse(uri)? else {
            panic!("{uri} is not an hf:// URI");
        };
        let hub = HubStore::with(uri, hub, credentials, endpoint, token.map(str::to_string))?;
        Ok(Self {
            uri: uri.to_string(),
            backend: Backend::Hub(Arc::new(hub)),
        })
    }

    /// The URI this store was opened at.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The URI with the revision of an `hf://` URI replaced by the commit it
    /// resolves to (asking the Hub once per store), so that a record of it reads
    /// the same files again; `None` for other stores, whose URIs name their
    /// bytes by themselves.
    pub async fn pinned_uri(&self) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Hub(hub) => hub.pinned_uri().await.map(Some),
            _ => Ok(None),
        }
    }

    /// The local directory or file behind a `file://` or `pvc://` URI.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local { root } => Some(root),
            _ => None,
        }
    }

    /// The URI of the object `rel` below this store's URI.
    pub fn child_uri(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.uri.clone()
        } else {
            format!("{}/{rel}", self.uri.trim_end_matches('/'))
        }
    }

    fn object_path(root: &ObjectPath, rel: &str) -> ObjectPath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(root.clone(), |p, part| p.clone().join(part))
    }

    /// Streams the object `rel` (relative to the URI; `""` for the URI itself).
    pub async fn get(&self, rel: &str) -> Result<ByteStream, StoreError> {
        let uri = self.child_uri(rel);
        match &self.backend {
            Backend::Local { root } => {
                let path = if rel.is_empty() {
                    root.clone()
                } else {
                    root.join(rel)
                };
                let file = tokio::fs::File::open(&path).await.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        StoreError::NotFound { uri: uri.clone() }
                    } else {
                        StoreError::io("open", &path)(e)
                    }
                })?;
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
                Ok(stream
                    .map_err(move |source| StoreError::Io {
                        op: "read",
                        path: path.clone(),
                        source,
                    })
                    .boxed())
            }
            Backend::Object { store, root } => {
                let path = Self::object_path(root, rel);
                let result = store.get(&path).await.map_err(|source| match source {
                    object_store::Error::NotFound { .. } => {
                        StoreError::NotFound { uri: uri.clone() }
                    }
                    source => StoreError::ObjectStore {
                        op: "read",
                        uri: uri.clone(),
                        source,
                    },
                })?;
                Ok(result
                    .into_stream()
                    .map_err(move |source| StoreError::ObjectStore {
                        op: "read",
                        uri: uri.clone(),
                        source,
                    })
                    .boxed())
            }
            Backend::Hub(hub) => hub.get(rel).await,
            Backend::Http { client, url } => {
                let url = if rel.is_empty() {
                    url.clone()
                } else {
                    url.join(rel).map_err(|e| StoreError::InvalidUri {
                        uri: uri.clone(),
                        reason: e.to_string(),
                    })?
                };
                let unreachable = |e: reqwest::Error| StoreError::Unreachable {
                    uri: url.to_string(),
                    reason: e.without_url().to_string(),
                };
                let response = client.get(url.clone()).send().await.map_err(unreachable)?;
                if response.status() == reqwest::StatusCode::NOT_FOUND {
                    return Err(StoreError::NotFound {
                        uri: url.to_string(),
                    });
                }
                let response = response.error_for_status().map_err(unreachable)?;
                let url = url.to_string();
                Ok(response
                    .bytes_stream()
                    .map_err(move |e| StoreError::Unreachable {
                        uri: url.clone(),
                        reason: e.without_url().to_string(),
                    })
                    .boxed())
            }
        }
    }

    /// Reads the whole object `rel` into memory (for small files such as manifests).
    pub async fn get_bytes(&self, rel: &str) -> Result<Bytes, StoreError> {
        let chunks: Vec<Bytes> = self.get(rel).await?.try_collect().await?;
        Ok(chunks.concat().into())
    }

    /// Every object under the URI, sorted by name. A URI naming a single object
    /// lists just that object (with name `""`). Hidden names (`.x`) are skipped,
    /// which also hides the `..data` links of mounted ConfigMaps.
    pub async fn list(&self) -> Result<Vec<ObjectEntry>, StoreError> {
        let mut entries = match &self.backend {
            Backend::Local { root } => {
                let meta = std::fs::metadata(root).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        StoreError::NotFound {
                            uri: self.uri.clone(),
                        }
                    } else {
                        StoreError::io("stat", root)(e)
                    }
                })?;
                if meta.is_file() {
                    vec![ObjectEntry {
                        name: String::new(),
                        size: meta.len(),
                    }]
                } else {
                    local_files(root)?
                        .into_iter()
                        .map(|name| {
                            let size = std::fs::metadata(root.join(&name))
                                .map(|m| m.len())
                                .unwrap_or(0);
                            ObjectEntry { name, size }
                        })
                        .collect()
                }
            }
            Backend::Object { store, root } => {
                let object_err = |source| StoreError::ObjectStore {
                    op: "list",
                    uri: self.uri.clone(),
                    source,
                };
                if !self.uri.ends_with('/') {
                    match store.head(root).await {
                        Ok(meta) => {
                            return Ok(vec![ObjectEntry {
                                name: String::new(),
                                size: meta.size,
                            }]);
                        }
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(source) => return Err(object_err(source)),
                    }
                }
                let metas: Vec<_> = store
                    .list(Some(root))
                    .try_collect()
                    .await
                    .map_err(object_err)?;
                let prefix = format!("{}/", root.as_ref());
                metas
                    .into_iter()
                    .filter_map(|m| {
                        let full = m.location.as_ref();
                        let name = if root.as_ref().is_empty() {
                            full
                        } else {
                            full.strip_prefix(&prefix)?
                        };
                        (!name.split('/').any(|p| p.starts_with('.'))).then(|| ObjectEntry {
                            name: name.to_string(),
                            size: m.size,
                        })
                    })
                    .collect()
            }
            Backend::Hub(hub) => hub.list().await?,
            Backend::Http { .. } => {
                return Err(StoreError::InvalidUri {
                    uri: self.uri.clone(),
                    reason: "an http(s) URL names one file and cannot be listed".into(),
                });
            }
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Writes `data` as the object `rel`.
    pub async fn put_bytes(&self, rel: &str, data: Bytes) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local { root } => {
                let path = root.join(rel);
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(StoreError::io("create", parent))?;
                }
                tokio::fs::write(&path, &data)
                    .await
                    .map_err(StoreError::io("write", &path))
            }
            Backend::Object { store, root } => {
                store
                    .put(&Self::object_path(root, rel), PutPayload::from(data))
                    .await
                    .map_err(|source| StoreError::ObjectStore {
                        op: "write",
                        uri: self.child_uri(rel),
                        source,
                    })?;
                Ok(())
            }
            Backend::Http { .. } | Backend::Hub(_) => Err(StoreError::ReadOnly {
                uri: self.uri.clone(),
            }),
        }
    }

    /// Uploads the local file `local` as the object `rel`.
    /// The local directory holding every object under the URI: the directory
    /// itself for `file://`/`pvc://` URIs (nothing is copied), else a copy
    /// downloaded into `scratch`.
    pub async fn local_dir(&self, scratch: &Path) -> Result<PathBuf, StoreError> {
        if let Some(root) = self.local_root() {
            return Ok(root.to_path_buf());
        }
        for entry in self.list().await? {
            let chunks = self.get(&entry.name).await?;
            write_file(chunks, &scratch.join(&entry.name)).await?;
        }
        Ok(scratch.to_path_buf())
    }

    pub async fn put_file(&self, rel: &str, local: &Path) -> Result<(), StoreError> {
        // Artifact files are bounded (token shards stay under ~64 MiB), so a single
        // put keeps this simple and lets the store verify the whole object.
        let data = tokio::fs::read(local)
            .await
            .map_err(StoreError::io("read", local))?;
        self.put_bytes(rel, data.into()).await
    }

    /// Deletes every object under the URI, whoever wrote it: for the trainer's own
    /// working copies (checkpoint mirrors). Artifacts that other objects may share a
    /// store with are deleted with [`Store::delete_owned`], which checks first.
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local { root } => match tokio::fs::remove_dir_all(root).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(StoreError::io("delete", root)(e))
                }
                _ => Ok(()),
            },
            Backend::Object { .. } => self.delete_objects_under(None).await,
            Backend::Http { .. } | Backend::Hub(_) => Err(StoreError::ReadOnly {
                uri: self.uri.clone(),
            }),
        }
    }

    /// Deletes every object strictly below the prefix except the top-level object
    /// `keep`. Only names below the prefix by whole segments are deleted, whatever
    /// the backend's listing returns: `s3://b/data` never reaches `s3://b/data-2/x`
    /// or the object `s3://b/data` itself.
    async fn delete_objects_under(&self, keep: Option<&str>) -> Result<(), StoreError> {
        let Backend::Object { store, root } = &self.backend else {
            return Ok(());
        };
        let object_err = |source| StoreError::ObjectStore {
            op: "delete",
            uri: self.uri.clone(),
            source,
        };
        let keep = keep.map(|rel| Self::object_path(root, rel));
        let root_owned = root.clone();
        let locations = store
            .list(Some(root))
            .try_filter(move |m| {
                let below = strictly_below(&m.location, &root_owned);
                let kept = keep.as_ref() == Some(&m.location);
                futures::future::ready(below && !kept)
            })
            .map_ok(|m| m.location)
            .boxed();
        store
            .delete_stream(locations)
            .try_collect::<Vec<_>>()
            .await
            .map_err(object_err)?;
        Ok(())
    }

    /// Whether the URI names a single object or file rather than a directory-like
    /// prefix (a missing local path or an empty prefix is not one).
    pub(crate) async fn names_an_object(&self) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Local { root } => match std::fs::metadata(root) {
                Ok(meta) => Ok(!meta.is_dir()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(StoreError::io("stat", root)(e)),
            },
            Backend::Object { store, root } => {
                if root.as_ref().is_empty() {
                    return Ok(false);
                }
                match store.head(root).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(source) => Err(StoreError::ObjectStore {
                        op: "read",
                        uri: self.uri.clone(),
                        source,
                    }),
                }
            }
            // Read-only: nothing may be published over them either way.
            Backend::Http { .. } | Backend::Hub(_) => Ok(true),
        }
    }

    /// The names (relative, hidden ones included) of the objects strictly below
    /// the prefix, at most `limit` of them, and whether there were more. Unlike
    /// [`Store::list`] nothing is skipped: this is what a deletion would remove.
    pub(crate) async fn every_name(
        &self,
        limit: Option<usize>,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let limit = limit.unwrap_or(usize::MAX);
        match &self.backend {
            Backend::Local { root } => {
                let mut names = Vec::new();
                let more = walk_all(root, &mut names, limit)?;
                names.sort();
                Ok((names, more))
            }
            Backend::Object { store, root } => {
                let mut stream = store.list(Some(root));
                let mut names = Vec::new();
                while let Some(meta) = stream.next().await {
                    let meta = meta.map_err(|source| StoreError::ObjectStore {
                        op: "list",
                        uri: self.uri.clone(),
                        source,
                    })?;
                    let Some(parts) = meta.location.prefix_match(root) else {
                        continue;
                    };
                    let rel = parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>();
                    if rel.is_empty() {
                        continue;
                    }
                    if names.len() == limit {
                        names.sort();
                        return Ok((names, true));
                    }
                    names.push(rel.join("/"));
                }
                // Not every backend lists in name order (a local filesystem walks
                // in directory order); messages name the first one.
                names.sort();
                Ok((names, false))
            }
            Backend::Http { .. } | Backend::Hub(_) => Err(StoreError::ReadOnly {
                uri: self.uri.clone(),
            }),
        }
    }

    /// Deletes everything under the prefix, the object `last` (top-level) after all
    /// the others: an interrupted deletion leaves `last` in place, so a retry still
    /// finds what it was checked by.
    pub(crate) async fn delete_all_then(&self, last: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local { root } => {
                let entries = match std::fs::read_dir(root) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(StoreError::io("list", root)(e)),
                };
                for entry in entries {
                    let entry = entry.map_err(StoreError::io("list", root))?;
                    if entry.file_name().to_str() == Some(last) {
                        continue;
                    }
                    let path = entry.path();
                    // The entry itself, never what a link points to.
                    let is_dir = entry
                        .file_type()
                        .map_err(StoreError::io("stat", &path))?
                        .is_dir();
                    let removed = if is_dir {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed.map_err(StoreError::io("delete", &path))?;
                }
                let marker = root.join(last);
                match std::fs::remove_file(&marker) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(StoreError::io("delete", &marker)(e));
                    }
                    _ => {}
                }
                match std::fs::remove_dir(root) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(StoreError::io("delete", root)(e))
                    }
                    _ => Ok(()),
                }
            }
            Backend::Object { store, root } => {
                self.delete_objects_under(Some(last)).await?;
                match store.delete(&Self::object_path(root, last)).await {
                    Err(e) if !matches!(e, object_store::Error::NotFound { .. }) => {
                        Err(StoreError::ObjectStore {
                            op: "delete",
                            uri: self.child_uri(last),
                            source: e,
                        })
                    }
                    _ => Ok(()),
                }
            }
            Backend::Http { .. } | Backend::Hub(_) => Err(StoreError::ReadOnly {
                uri: self.uri.clone(),
            }),
        }
    }

    /// Publishes the finished local directory `dir` as the artifact at this URI,
    /// replacing any previous one, so that readers see either the old artifact, no
    /// artifact, or the complete new one — never a mix. The top-level object
    /// `marker` (name and content; hidden, so outside the artifact's files and
    /// digest) is written with it.
    ///
    /// Locally the directory is moved into place with renames, the marker already
    /// inside. In an object store, where there is no atomic directory rename, the
    /// marker is written first (an interrupted publish leaves a prefix its writer
    /// can still claim), then the old `manifest.json` removed, the other old
    /// objects deleted, the data files uploaded, and the new `manifest.json`
    /// written last: readers treat a prefix without a manifest as absent.
    ///
    /// Callers check first that the prefix may be replaced
    /// ([`Store::publish_dir`] does).
    pub(crate) async fn publish_dir_with(
        &self,
        dir: &Path,
        marker: (&str, Bytes),
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local { root } => publish_local(dir, root, marker),
            Backend::Object { .. } => {
                let files = local_files(dir)?;
                self.put_bytes(marker.0, marker.1).await?;
                if let Err(e) = self.delete_manifest().await {
                    tracing::debug!(error = %e, "no previous manifest removed");
                }
                self.delete_objects_under(Some(marker.0)).await?;
                for rel in files.iter().filter(|f| *f != MANIFEST_FILE) {
                    self.put_file(rel, &dir.join(rel)).await?;
                }
                if files.iter().any(|f| f == MANIFEST_FILE) {
                    self.put_file(MANIFEST_FILE, &dir.join(MANIFEST_FILE))
                        .await?;
                }
                Ok(())
            }
            Backend::Http { .. } | Backend::Hub(_) => Err(StoreError::ReadOnly {
                uri: self.uri.clone(),
            }),
        }
    }

    async fn delete_manifest(&self) -> Result<(), StoreError> {
        if let Backend::Object { store, root } = &self.backend {
            store
                .delete(&Self::object_path(root, MANIFEST_FILE))
                .await
                .map_err(|source| StoreError::ObjectStore {
                    op: "delete",
                    uri: self.child_uri(MANIFEST_FILE),
                    source,
                })?;
        }
        Ok(())
    }
}

/// Moves `dir` to `target` through a hidden sibling, so the swap is two renames on
/// the target's filesystem. A staging directory elsewhere is copied first.
fn publish_local(dir: &Path, target: &Path, marker: (&str, Bytes)) -> Result<(), StoreError> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(StoreError::io("create", &parent))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pid = std::process::id();
    let incoming = parent.join(format!(".{name}.incoming-{pid}"));
    let outgoing = parent.join(format!(".{name}.outgoing-{pid}"));
    let _ = std::fs::remove_dir_all(&incoming);
    if std::fs::rename(dir, &incoming).is_err() {
        copy_dir(dir, &incoming)?;
    }
    let marker_path = incoming.join(marker.0);
    std::fs::write(&marker_path, &marker.1).map_err(StoreError::io("write", &marker_path))?;
    let had_old = target.exists();
    if had_old {
        std::fs::rename(target, &outgoing).map_err(StoreError::io("move aside", target))?;
    }
    std::fs::rename(&incoming, target).map_err(StoreError::io("publish", target))?;
    if had_old {
        let _ = std::fs::remove_dir_all(&outgoing);
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), StoreError> {
    for rel in local_files(from)? {
        let dest = to.join(&rel);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(StoreError::io("create", p))?;
        }
        std::fs::copy(from.join(&rel), &dest).map_err(StoreError::io("copy", &dest))?;
    }
    Ok(())
}

/// Whether `location` lies below `root` by at least one whole segment.
fn strictly_below(location: &ObjectPath, root: &ObjectPath) -> bool {
    location
        .prefix_match(root)
        .is_some_and(|mut rest| rest.next().is_some())
}

/// Adds the relative paths of everything under `root` to `out` (hidden names
/// included, links counted as entries and not followed) until it holds `limit`;
/// returns whether more were left. A missing `root` holds nothing.
fn walk_all(root: &Path, out: &mut Vec<String>, limit: usize) -> Result<bool, StoreError> {
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && prefix.is_empty() => {
                return Ok(false);
            }
            Err(e) => return Err(StoreError::io("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let file_type = entry
                .file_type()
                .map_err(StoreError::io("stat", entry.path()))?;
            if file_type.is_dir() {
                stack.push((entry.path(), rel));
            } else {
                if out.len() == limit {
                    return Ok(true);
                }
                out.push(rel);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) fn walk_all_for_tests(root: &Path, out: &mut Vec<String>) {
    walk_all(root, out, usize::MAX).unwrap();
}

/// Relative `/`-separated paths of the files under `root`, sorted, hidden names skipped.
pub(crate) fn local_files(root: &Path) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            // Follow links: mounted ConfigMap keys are symlinks to their data.
            let meta =
                std::fs::metadata(entry.path()).map_err(StoreError::io("stat", entry.path()))?;
            if meta.is_dir() {
                stack.push((entry.path(), rel));
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Writes `chunks` to the local file `target`, creating its directory; an error
/// of the stream (a checksum that did not match, say) ends the copy with it.
pub(crate) async fn write_file(mut chunks: ByteStream, target: &Path) -> Result<(), StoreError> {
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(StoreError::io("create", parent))?;
    }
    let mut file = tokio::fs::File::create(target)
        .await
        .map_err(StoreError::io("create", target))?;
    while let Some(chunk) = chunks.next().await {
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk?)
            .await
            .map_err(StoreError::io("write", target))?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(StoreError::io("write", target))
}

/// Wraps `inner` so that, at its end, the sha256 of everything it yielded is
/// compared with `expected` (hex); a mismatch ends the stream with
/// [`StoreError::ChecksumMismatch`]. Consumers therefore see the error before they
/// can treat the data as complete.
pub fn verify_sha256(inner: ByteStream, expected: &str, uri: &str) -> ByteStream {
    let state = (
        inner,
        Some(Sha256::new()),
        expected.to_ascii_lowercase(),
        uri.to_string(),
    );
    futures::stream::unfold(state, |(mut inner, hasher, expected, uri)| async move {
        let mut hasher = hasher?;
        match inner.next().await {
            Some(Ok(chunk)) => {
                hasher.update(&chunk);
                Some((Ok(chunk), (inner, Some(hasher), expected, uri)))
            }
            Some(Err(e)) => Some((Err(e), (inner, None, expected, uri))),
            None => {
                let actual = hex::encode(hasher.finalize());
                if actual == expected {
                    None
                } else {
                    let err = StoreError::ChecksumMismatch {
                        uri: uri.clone(),
                        expected: expected.clone(),
                        actual,
                    };
                    Some((Err(err), (inner, None, expected, uri)))
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &Path) -> Store {
        Store::open(&format!("file://{}", dir.display()), &Credentials::Ambient).unwrap()
    }

    #[tokio::test]
    async fn local_round_trip_and_atomic_publish() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("art");
        let store = local(&target);
        let owner = crate::Owner {
            kind: "Dataset".into(),
            name: "art".into(),
            ..crate::Owner::default()
        };
        for generation in ["one", "two"] {
            let stage = tmp.path().join(format!("stage-{generation}"));
            std::fs::create_dir_all(stage.join("sub")).unwrap();
            std::fs::write(stage.join("sub/data.bin"), generation).unwrap();
            std::fs::write(stage.join(MANIFEST_FILE), "{}").unwrap();
            store.publish_dir(&stage, &owner).await.unwrap();
            assert!(!stage.exists());
        }
        let names: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["manifest.json", "sub/data.bin"]);
        assert_eq!(store.get_bytes("sub/data.bin").await.unwrap(), "two");
        let leftovers = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(leftovers, 1, "only the published artifact remains");
    }

    #[tokio::test]
    async fn checksum_mismatch_fails_at_end_of_stream() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "hello").unwrap();
        let store = local(&tmp.path().join("f"));
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let ok: Vec<Bytes> = verify_sha256(store.get("").await.unwrap(), good, "f")
            .try_collect()
            .await
            .unwrap();
        assert_eq!(ok.concat(), b"hello");
        let bad = verify_sha256(store.get("").await.unwrap(), &"0".repeat(64), "f")
            .try_collect::<Vec<Bytes>>()
            .await
            .unwrap_err();
        assert!(matches!(bad, StoreError::ChecksumMismatch { .. }), "{bad}");
    }

    #[test]
    fn secret_without_keys_is_missing_credentials() {
        let err = Store::open(
            "s3://bucket/key",
            &Credentials::Secret("no-such-secret-for-test".into()),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("AWS_ACCESS_KEY_ID")
                && msg.contains("LLMOPS_CRED_NO_SUCH_SECRET_FOR_TEST_"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn unreachable_url_says_so() {
        let store = Store::open("http://127.0.0.1:9/x", &Credentials::Ambient).unwrap();
        let err = store.get("").await.err().unwrap();
        assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
    }
}
