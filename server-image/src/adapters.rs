//! LoRA adapters served beside the base model, each under its own model name.
//!
//! The list comes from a file (`--adapters-file`, mounted from the
//! ModelDeployment's ConfigMap), a JSON object
//! `{"adapters": [{"name", "uri", "digest"}]}`. Kubelet rewrites a mounted
//! ConfigMap in place, so [`watch`] reads the file every few seconds and, when
//! its content changed, loads what is new or changed and unloads what is gone,
//! while the server keeps serving: the pod never restarts for it.
//!
//! Loading fetches the adapter with the store code that fetches models (its
//! digest checked when one is given), refuses one whose lineage names a base
//! other than the one served, reads it and attaches it to the engine's model
//! unmerged. A new version of an adapter replaces the old one only once it is
//! attached; until then (and when it fails) the old one keeps serving. A failed
//! load is retried every [`RETRY`] while the file still asks for it.
//!
//! What each adapter's state is shows in `llmops_server_adapter_loaded`
//! (`{adapter, digest}`: 1 serving, 0 loading or failed), which the operator
//! reads into the ModelDeployment's status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use llmops_model::PeftAdapter;
use llmops_store::Credentials;
use serde::Deserialize;

use crate::load::{self, Served};
use crate::metrics::{AdapterLabels, Metrics};

/// How long a failed load waits before it is tried again.
pub const RETRY: Duration = Duration::from_secs(30);

/// The adapters file: what to serve.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdaptersFile {
    #[serde(default)]
    pub adapters: Vec<AdapterSpec>,
}

/// One adapter to serve.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    /// The model name clients send.
    pub name: String,
    pub uri: String,
    /// `sha256:<hex>` of its manifest; empty or absent: not checked.
    #[serde(default)]
    pub digest: String,
}

impl AdaptersFile {
    /// Parses and checks the file: names valid, distinct, not the base's.
    pub fn parse(text: &str, base: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(AdaptersFile::default());
        }
        let file: AdaptersFile =
            serde_json::from_str(text).map_err(|e| format!("not an adapters file: {e}"))?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, adapter) in file.adapters.iter().enumerate() {
            if !valid_name(&adapter.name) {
                return Err(format!(
                    "adapters[{i}].name {:?} is not a model name (letters, digits, '.', '_', '-', ':', '/'; at most 128)",
                    adapter.name
                ));
            }
            if adapter.name == base {
                return Err(format!(
                    "adapters[{i}].name {:?} is the base model's name",
                    adapter.name
                ));
            }
            if !seen.insert(&adapter.name) {
                return Err(format!(
                    "adapters[{i}].name {:?} appears twice",
                    adapter.name
                ));
            }
        }
        Ok(file)
    }
}

/// What a model name may hold.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
}

/// Where an adapter stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Loading,
    Loaded,
    Failed(String),
}

/// One adapter named in the file.
#[derive(Clone, Debug)]
struct Entry {
    /// The version asked for.
    uri: String,
    digest: String,
    state: State,
    /// When the last load failed, to retry after [`RETRY`].
    failed_at: Option<Instant>,
    /// The engine id of the version serving, if one does (the one asked for
    /// once `state` is `Loaded`, an older one before that).
    serving: Option<u32>,
    /// Unix seconds when the serving version was attached.
    created: u64,
}

/// An adapter as `/v1/models` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub uri: String,
    pub created: u64,
}

/// The adapters of this server: shared by the API (which routes requests by
/// name) and the loader.
#[derive(Debug, Default)]
pub struct Adapters {
    entries: RwLock<BTreeMap<String, Entry>>,
    next_id: AtomicU32,
}

impl Adapters {
    /// The engine id of the adapter named `name`, if one serves.
    pub fn route(&self, name: &str) -> Option<u32> {
        self.read().get(name).and_then(|e| e.serving)
    }

    /// The adapters serving, by name.
    pub fn listed(&self) -> Vec<Listed> {
        self.read()
            .iter()
            .filter(|(_, e)| e.serving.is_some())
            .map(|(name, e)| Listed {
                name: name.clone(),
                uri: e.uri.clone(),
                created: e.created,
            })
            .collect()
    }

    /// Each named adapter's state.
    pub fn states(&self) -> BTreeMap<String, State> {
        self.read()
            .iter()
            .map(|(name, e)| (name.clone(), e.state.clone()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// What loading adapters needs besides the list.
pub struct Loader {
    pub adapters: Arc<Adapters>,
    pub served: Arc<Served>,
    pub credentials: Credentials,
    /// The served base model's digest, when known: an adapter whose lineage
    /// names another base is refused.
    pub base_digest: Option<String>,
    pub metrics: Arc<Metrics>,
}

impl Loader {
    /// Brings the adapters in line with `file`: unloads those it no longer
    /// names, then loads those new, changed, or failed more than [`RETRY`] ago.
    pub async fn apply(&self, file: &AdaptersFile) {
        let wanted: BTreeMap<&str, &AdapterSpec> =
            file.adapters.iter().map(|a| (a.name.as_str(), a)).collect();
        let gone: Vec<(String, Entry)> = {
            let mut entries = self.adapters.write();
            let names: Vec<String> = entries
                .keys()
                .filter(|n| !wanted.contains_key(n.as_str()))
                .cloned()
                .collect();
            names
                .into_iter()
                .filter_map(|n| entries.remove(&n).map(|e| (n, e)))
                .collect()
        };
        for (name, entry) in gone {
            self.forget_metric(&name, &entry.digest);
            if let Some(id) = entry.serving {
                self.served.engine.detach_adapter(id);
            }
            tracing::info!(adapter = %name, "adapter unloaded");
        }
        for spec in file.adapters.iter() {
            let due = {
                let entries = self.adapters.read();
                match entries.get(&spec.name) {
                    None => true,
                    Some(e) if e.uri != spec.uri || e.digest != spec.digest => true,
                    Some(e) => e.failed_at.is_some_and(|t| t.elapsed() >= RETRY),
                }
            };
            if due {
                self.load(spec).await;
            }
        }
    }

    /// Loads one adapter version and swaps it in for the one serving.
    async fn load(&self, spec: &AdapterSpec) {
        let previous_digest = {
            let mut entries = self.adapters.write();
            let entry = entries.entry(spec.name.clone()).or_insert(Entry {
                uri: spec.uri.clone(),
                digest: spec.digest.clone(),
                state: State::Loading,
                failed_at: None,
                serving: None,
                created: 0,
            });
            let previous = std::mem::replace(&mut entry.digest, spec.digest.clone());
            entry.uri = spec.uri.clone();
            entry.state = State::Loading;
            entry.failed_at = None;
            previous
        };
        if previous_digest != spec.digest {
            self.forget_metric(&spec.name, &previous_digest);
        }
        self.set_metric(&spec.name, &spec.digest, 0);
        tracing::info!(adapter = %spec.name, uri = %spec.uri, "loading adapter");
        let id = self.adapters.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let result = self.fetch_and_attach(spec, id).await;
        let mut entries = self.adapters.write();
        // The file may have changed meanwhile: then this result is stale.
        let Some(entry) = entries
            .get_mut(&spec.name)
            .filter(|e| e.uri == spec.uri && e.digest == spec.digest)
        else {
            if result.is_ok() {
                self.served.engine.detach_adapter(id);
            }
            return;
        };
        match result {
            Ok(()) => {
                if let Some(old) = entry.serving.replace(id) {
                    self.served.engine.detach_adapter(old);
                }
                entry.state = State::Loaded;
                entry.created = unix_now();
                self.set_metric(&spec.name, &spec.digest, 1);
                tracing::info!(adapter = %spec.name, uri = %spec.uri, "adapter loaded");
            }
            Err(message) => {
                tracing::error!(adapter = %spec.name, uri = %spec.uri, %message, "cannot load the adapter");
                entry.state = State::Failed(message);
                entry.failed_at = Some(Instant::now());
            }
        }
    }

    async fn fetch_and_attach(&self, spec: &AdapterSpec, id: u32) -> Result<(), String> {
        let digest = Some(spec.digest.as_str()).filter(|d| !d.is_empty());
        let (dir, base) = load::fetch_adapter(&spec.uri, &self.credentials, digest)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if let (Some(trained_on), Some(served)) = (&base, &self.base_digest)
            && trained_on != served
        {
            return Err(format!(
                "{} was trained on the base model {trained_on}, but this server serves {served}",
                spec.uri
            ));
        }
        let adapter = tokio::task::spawn_blocking(move || PeftAdapter::read(&dir.path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.served.engine.attach_adapter(id, adapter).await
    }

    fn set_metric(&self, name: &str, digest: &str, value: i64) {
        self.metrics
            .adapter_loaded
            .get_or_create(&labels(name, digest))
            .set(value);
    }

    fn forget_metric(&self, name: &str, digest: &str) {
        self.metrics.adapter_loaded.remove(&labels(name, digest));
    }
}

fn labels(name: &str, digest: &str) -> AdapterLabels {
    AdapterLabels {
        adapter: name.to_string(),
        digest: digest.to_string(),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads `path` every `every` and applies it when its content changed (or a
/// failed load is due again). A missing file means no adapters; a file that
/// cannot be parsed changes nothing (it is reported, and read again).
pub async fn watch(path: PathBuf, every: Duration, loader: Loader) {
    let mut applied: Option<AdaptersFile> = None;
    let mut reported: Option<String> = None;
    loop {
        match read(&path, &loader.served.name).await {
            Ok(file) => {
                reported = None;
                let retry = loader
                    .adapters
                    .read()
                    .values()
                    .any(|e| e.failed_at.is_some_and(|t| t.elapsed() >= RETRY));
                if applied.as_ref() != Some(&file) || retry {
                    loader.apply(&file).await;
                    applied = Some(file);
                }
            }
            Err(problem) => {
                if reported.as_ref() != Some(&problem) {
                    tracing::error!(path = %path.display(), %problem, "ignoring the adapters file");
                    reported = Some(problem);
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn read(path: &Path, base: &str) -> Result<AdaptersFile, String> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => AdaptersFile::parse(&text, base),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AdaptersFile::default()),
        Err(e) => Err(format!("cannot read it: {e}")),
    }
}

#[cfg(test)]
mod tests;
