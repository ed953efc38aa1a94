//! Loading the served model: fetch the directory behind `--model`, then the
//! weights (Hugging Face layout), the tokenizer, the chat template and the
//! end-of-sequence tokens. A LoRA adapter in the PEFT layout (a FineTune with
//! `output.mergeAdapter: false`) is served on its base model: the base named by
//! the adapter's lineage (`llmops.json`, `lineage.baseModel` URI and digest) is
//! fetched and checked too, and the adapter merged into it on load.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use llmops_model::{Dtype, GenerationConfig, io, peft};
use llmops_store::{Credentials, Store, fetch_model, fetch_model_cached};
use tch::Device;
use tokenizers::Tokenizer;

use crate::chat::ChatTemplate;
use crate::engine::Engine;
use crate::metrics::Metrics;

pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The lineage record of an llmops export.
const LINEAGE_FILE: &str = "llmops.json";

/// A local copy of the model directory; a downloaded one is removed on drop.
pub struct ModelDir {
    pub path: PathBuf,
    /// The adapter served on the model in `path`, when `--model` named one.
    pub adapter: Option<Box<ModelDir>>,
    _download: Option<tempfile::TempDir>,
}

/// The directory behind `uri`: used in place for `file://`/`pvc://` (and plain
/// paths), downloaded to a temporary directory from object stores and the
/// Hugging Face Hub (`hf://`, at the commit its revision resolves to). With a
/// manifest only the files it lists (no checkpoints), each checked; `digest`,
/// the one the operator pinned, must be the model's (`llmops_store::model`).
pub async fn fetch(
    uri: &str,
    credentials: &Credentials,
    digest: Option<&str>,
) -> anyhow::Result<ModelDir> {
    let (uri, path, download) = fetch_plain(uri, credentials, digest).await?;
    if path.join(peft::ADAPTER_CONFIG_FILE).exists() {
        let (base_uri, base_digest) = adapter_base(&path, &uri)?;
        let base = Box::pin(fetch(&base_uri, credentials, base_digest.as_deref())).await?;
        if base.adapter.is_some() {
            bail!(
                "{uri} is an adapter on {base_uri}, itself an adapter: serve merged models or adapters on a full base"
            );
        }
        let adapter = ModelDir {
            path,
            adapter: None,
            _download: download,
        };
        return Ok(ModelDir {
            adapter: Some(Box::new(adapter)),
            ..base
        });
    }
    if !path.join(io::CONFIG_FILE).exists() {
        bail!(
            "{uri} is not a model directory: it has no {}",
            io::CONFIG_FILE
        );
    }
    Ok(ModelDir {
        path,
        adapter: None,
        _download: download,
    })
}

/// The directory behind `uri` as it is: its full URI, its local path, and the
/// download directory holding it (none when used in place).
async fn fetch_plain(
    uri: &str,
    credentials: &Credentials,
    digest: Option<&str>,
) -> anyhow::Result<(String, PathBuf, Option<tempfile::TempDir>)> {
    let uri = if uri.contains("://") {
        uri.to_string()
    } else {
        let path = std::path::absolute(uri).with_context(|| format!("bad model path {uri}"))?;
        format!("file://{}", path.display())
    };
    let store = Store::open(&uri, credentials)?;
    if let Some(cache) = model_cache_dir() {
        let started = std::time::Instant::now();
        if let Some(cached) = fetch_model_cached(&store, &cache, digest).await? {
            tracing::info!(
                model = %uri,
                entry = %cached.path.display(),
                hit = cached.hit,
                seconds = started.elapsed().as_secs_f64(),
                "the model is in the shared cache"
            );
            log_commit(&store, &uri).await?;
            return Ok((uri, cached.path, None));
        }
    }
    let download = match store.local_root() {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("cannot create a download directory")?),
    };
    let scratch = download
        .as_ref()
        .map_or_else(PathBuf::new, |d| d.path().to_path_buf());
    let path = fetch_model(&store, &scratch, digest).await?;
    log_commit(&store, &uri).await?;
    Ok((uri, path, download))
}

/// `LLMOPS_MODEL_CACHE_DIR`, when set: the shared model cache
/// (`llmops_store::cache`), which the operator mounts for a ModelDeployment with
/// a model cache.
fn model_cache_dir() -> Option<PathBuf> {
    std::env::var_os(llmops_contract::env::MODEL_CACHE_DIR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Logs the commit a Hub revision (a branch, a tag) named: what a rollback or a
/// second replica must ask for to load the same bytes.
async fn log_commit(store: &Store, uri: &str) -> anyhow::Result<()> {
    if let Some(pinned) = store.pinned_uri().await? {
        tracing::info!(model = %uri, commit = %pinned, "the model's revision resolved");
    }
    Ok(())
}

/// A LoRA adapter in the PEFT layout, fetched (and its digest checked) like a
/// model, to serve beside the base model rather than merged into it; with the
/// base digest its lineage records, if any.
pub async fn fetch_adapter(
    uri: &str,
    credentials: &Credentials,
    digest: Option<&str>,
) -> anyhow::Result<(ModelDir, Option<String>)> {
    let (uri, path, download) = fetch_plain(uri, credentials, digest).await?;
    if !path.join(peft::ADAPTER_CONFIG_FILE).exists() {
        bail!(
            "{uri} is not a LoRA adapter: it has no {} (a FineTune exports one with output.mergeAdapter: false)",
            peft::ADAPTER_CONFIG_FILE
        );
    }
    let base_digest = if path.join(LINEAGE_FILE).exists() {
        adapter_base(&path, &uri)?.1
    } else {
        None
    };
    let dir = ModelDir {
        path,
        adapter: None,
        _download: download,
    };
    Ok((dir, base_digest))
}

/// The base model an adapter was trained on: `lineage.baseModel` of its
/// `llmops.json`, by URI and (when recorded) digest.
fn adapter_base(dir: &Path, uri: &str) -> anyhow::Result<(String, Option<String>)> {
    let lineage_path = dir.join(LINEAGE_FILE);
    let text = std::fs::read_to_string(&lineage_path).with_context(|| {
        format!("{uri} is a LoRA adapter without {LINEAGE_FILE} naming its base model")
    })?;
    let record: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{uri}: {LINEAGE_FILE} is not JSON"))?;
    let base = &record["lineage"]["baseModel"];
    let base_uri = base["uri"].as_str().with_context(|| {
        format!("{uri} is a LoRA adapter whose {LINEAGE_FILE} names no lineage.baseModel.uri")
    })?;
    // A base given by URI alone (no lineage digest) records an empty digest.
    Ok((
        base_uri.to_string(),
        base["digest"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map(str::to_string),
    ))
}

/// What `--dtype` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeChoice {
    /// bf16 on a GPU, fp32 on the CPU.
    Auto,
    Float32,
    Bfloat16,
    Float16,
}

impl DtypeChoice {
    fn resolve(self, device: Device) -> Dtype {
        match self {
            DtypeChoice::Auto if device.is_cuda() => Dtype::Bf16,
            DtypeChoice::Auto | DtypeChoice::Float32 => Dtype::F32,
            DtypeChoice::Bfloat16 => Dtype::Bf16,
            DtypeChoice::Float16 => Dtype::F16,
        }
    }
}

/// Serving limits (0 means none beyond the model's own).
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Prompt plus completion, at most the model's context length.
    pub max_context: usize,
    /// Tokens one request may generate.
    pub max_new_tokens: usize,
    /// Prompts that may wait for the decoding batch (at least 1).
    pub max_queue: usize,
}

/// The model being served, ready to take requests.
#[derive(Debug)]
pub struct Served {
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub chat: ChatTemplate,
    /// Positions a request may use: prompt plus completion must fit.
    pub context_length: usize,
    /// Most tokens one request may generate (`usize::MAX`: no cap).
    pub max_new_tokens: usize,
    pub generation: GenerationConfig,
    /// Unix seconds when loading finished (`created` in `/v1/models`).
    pub created: u64,
    pub engine: Engine,
}

/// Loads the model in `model` (with its adapter merged in, when it has one)
/// onto the GPU if there is one and starts its engine.
pub fn load(
    model: &ModelDir,
    name: String,
    dtype: DtypeChoice,
    limits: Limits,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Served> {
    let device = Device::cuda_if_available();
    let dtype = dtype.resolve(device);
    let mut loaded = io::load(&model.path, device, dtype)
        .with_context(|| format!("cannot load the model in {}", model.path.display()))?;
    // The adapter's own tokenizer and chat template when it has them: they are
    // what it was trained with.
    let dir = match &model.adapter {
        Some(adapter) => {
            peft::load_adapter(&adapter.path, &mut loaded.model, &loaded.vs).with_context(
                || format!("cannot load the adapter in {}", adapter.path.display()),
            )?;
            loaded.model.merge_lora()?;
            if adapter.path.join(TOKENIZER_FILE).exists() {
                adapter.path.as_path()
            } else {
                model.path.as_path()
            }
        }
        None => model.path.as_path(),
    };
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let tokenizer = Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", tokenizer_path.display()))?;
    let chat = ChatTemplate::from_model_dir(dir)?;
    let mut eos: Vec<i64> = loaded.generation_config.eos_token_id.clone();
    if let Some(id) = chat.eos_token().and_then(|t| tokenizer.token_to_id(t))
        && !eos.contains(&(id as i64))
    {
        eos.push(id as i64);
    }
    let model_context = loaded.model.config().max_position_embeddings as usize;
    let context_length = match limits.max_context {
        0 => model_context,
        cap => cap.min(model_context),
    };
    tracing::info!(
        model = %name,
        adapter = model.adapter.is_some(),
        ?device,
        ?dtype,
        context_length,
        chat_template = if chat.from_model { "model" } else { "fallback" },
        "model loaded"
    );
    let tokenizer = Arc::new(tokenizer);
    let generation = loaded.generation_config.clone();
    // The model's tensors share storage with the parameter store, so the
    // engine owning the model keeps the weights alive.
    let engine = Engine::start(
        loaded.model,
        tokenizer.clone(),
        eos,
        limits.max_batch,
        limits.max_queue,
        metrics,
    );
    Ok(Served {
        name,
        tokenizer,
        chat,
        context_length,
        max_new_tokens: match limits.max_new_tokens {
            0 => usize::MAX,
            cap => cap,
        },
        generation,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        engine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapters_base_comes_from_its_lineage_with_its_digest_when_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let write = |digest: &str| {
            let record = serde_json::json!({"kind": "FineTune", "lineage": {"baseModel": {
                "uri": "file:///models/base/model-0123", "digest": digest}}});
            std::fs::write(dir.path().join(LINEAGE_FILE), record.to_string()).unwrap();
        };
        write("sha256:abc");
        assert_eq!(
            adapter_base(dir.path(), "a").unwrap(),
            (
                "file:///models/base/model-0123".to_string(),
                Some("sha256:abc".to_string())
            )
        );
        // A base given by URI alone: nothing to pin.
        write("");
        assert_eq!(adapter_base(dir.path(), "a").unwrap().1, None);
        std::fs::remove_file(dir.path().join(LINEAGE_FILE)).unwrap();
        let err = adapter_base(dir.path(), "file:///adapter").unwrap_err();
        assert!(err.to_string().contains("llmops.json"), "{err}");
    }
}
