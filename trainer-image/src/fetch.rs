//! `trainer fetch-model`: a served model put at a fixed path for a server that
//! cannot read the artifact stores itself (vLLM, the init container of a
//! `spec.server.runtime: vllm` pod).
//!
//! The model is fetched as the built-in server fetches it
//! (`llmops_store::fetch_model`): only the files its manifest lists, each
//! checked against its sha256, and the manifest's digest against the one the
//! operator pinned. Where it already lies in a mounted directory — the shared
//! model cache (`LLMOPS_MODEL_CACHE_DIR`, adding it there first when missing) or
//! a `file://`/`pvc://` model — the destination is a link to it, which the
//! server resolves as long as it mounts that directory at the same path.
//! Otherwise it is downloaded beside the destination and renamed into place
//! once complete, so a fetch cut short never leaves something that looks like a
//! model. Running it again (a restarted init container) replaces what is there.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use llmops_model::io::CONFIG_FILE;
use llmops_model::peft::ADAPTER_CONFIG_FILE;
use llmops_store::{Credentials, Store, fetch_model_cached};

/// Where the model went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// Downloaded into the destination.
    Downloaded,
    /// The destination links to `target` (in the cache, or a local model).
    Linked {
        target: PathBuf,
        cache_hit: Option<bool>,
    },
}

/// Puts the model at `uri` (pinned to `digest` when given) at `dest`.
pub async fn fetch(
    uri: &str,
    digest: Option<&str>,
    dest: &Path,
    credentials: &Credentials,
    cache: Option<&Path>,
) -> anyhow::Result<Fetched> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    remove(dest)?;
    let store = Store::open(uri, credentials).with_context(|| format!("cannot open {uri}"))?;
    if let Some(cache) = cache
        && let Some(cached) = fetch_model_cached(&store, cache, digest).await?
    {
        return link(uri, &cached.path, dest, Some(cached.hit));
    }
    if store.local_root().is_some() {
        // Checked in place; nothing is written to the scratch directory.
        let root = llmops_store::fetch_model(&store, Path::new(""), digest).await?;
        return link(uri, &root, dest, None);
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let incoming = parent.join(format!(".{name}.incoming"));
    remove(&incoming)?;
    std::fs::create_dir_all(&incoming)
        .with_context(|| format!("cannot create {}", incoming.display()))?;
    let fetched = async {
        let path = llmops_store::fetch_model(&store, &incoming, digest).await?;
        servable(uri, &path)?;
        std::fs::rename(&path, dest)
            .with_context(|| format!("cannot move the model to {}", dest.display()))
    }
    .await;
    if let Err(e) = fetched {
        let _ = remove(&incoming);
        return Err(e);
    }
    Ok(Fetched::Downloaded)
}

/// `dest` as a link to the model at `target`.
fn link(uri: &str, target: &Path, dest: &Path, cache_hit: Option<bool>) -> anyhow::Result<Fetched> {
    servable(uri, target)?;
    std::os::unix::fs::symlink(target, dest)
        .with_context(|| format!("cannot link {} to {}", dest.display(), target.display()))?;
    Ok(Fetched::Linked {
        target: target.to_path_buf(),
        cache_hit,
    })
}

/// A full model, not an adapter: vLLM is given one directory to load.
fn servable(uri: &str, dir: &Path) -> anyhow::Result<()> {
    if dir.join(ADAPTER_CONFIG_FILE).exists() {
        bail!(
            "{uri} is a LoRA adapter, not a full model: export it merged (output.mergeAdapter: true), or serve it with spec.server.runtime: builtin"
        );
    }
    if !dir.join(CONFIG_FILE).exists() {
        bail!("{uri} is not a model directory: it has no {CONFIG_FILE}");
    }
    Ok(())
}

/// Removes `path`, a link (never what it points to), a file or a directory.
fn remove(path: &Path) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.with_context(|| format!("cannot remove {}", path.display()))
}
