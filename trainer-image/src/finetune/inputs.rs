//! A FineTune's inputs: where its base model, dataset and output are (the
//! options, else what the operator recorded in `status.lineage`, else the spec),
//! fetched, and checked to share one tokenizer.

use std::path::{Path, PathBuf};

use llmops_crds::FineTune;
use llmops_model::{Config, io};
use llmops_store::{Credentials, Store, fetch_model};

use super::{FineTuneError, Options};
use crate::artifact::DatasetArtifact;
use crate::train::export::TOKENIZER_FILE;
use crate::train::{TrainError, session};

/// Where a FineTune trains from and writes to, with the options applied.
pub(super) struct Resolved {
    pub name: String,
    pub base_uri: String,
    /// The base model's digest as `status.lineage.baseModel` records it, if it does.
    pub base_digest: String,
    pub dataset_uri: String,
    /// The Secret of the output store, if any.
    pub secret: Option<String>,
    pub store: Store,
}

/// The inputs, local.
pub(super) struct Fetched {
    pub dataset: DatasetArtifact,
    pub base_dir: PathBuf,
    pub base_config: Config,
}

fn output_uri(ft: &FineTune, override_uri: Option<&str>) -> Result<String, FineTuneError> {
    if let Some(uri) = override_uri.or(ft.spec.output.location.uri.as_deref()) {
        return Ok(uri.to_string());
    }
    let name = ft
        .metadata
        .name
        .as_deref()
        .ok_or_else(|| FineTuneError::InvalidSpec("metadata.name is required".into()))?;
    Ok(format!("file://./out/finetunes/{name}"))
}

/// The base model (`--base-model`, else `status.lineage.baseModel.uri`, else
/// `spec.baseModel.uri`), the dataset (`--dataset`, else
/// `status.lineage.dataset.uri`) and the output of `ft`.
pub(super) fn resolve(ft: &FineTune, options: &Options) -> Result<Resolved, FineTuneError> {
    let lineage = ft.status.as_ref().and_then(|s| s.operator.lineage.as_ref());
    let recorded_base = lineage.and_then(|l| l.base_model.as_ref());
    let base_uri = options
        .base_model
        .clone()
        .or_else(|| recorded_base.map(|a| a.uri.clone()))
        .or_else(|| ft.spec.base_model.uri.clone())
        .ok_or(FineTuneError::NoBaseModel)?;
    let dataset_uri = options
        .dataset
        .clone()
        .or_else(|| {
            lineage
                .and_then(|l| l.dataset.as_ref())
                .map(|d| d.uri.clone())
        })
        .ok_or(FineTuneError::NoDataset)?;
    let output = output_uri(ft, options.output.as_deref())?;
    let secret = ft
        .spec
        .output
        .location
        .credentials_secret_ref
        .as_ref()
        .map(|s| s.name.clone());
    let store = Store::open(&output, &Credentials::from_secret(secret.as_deref()))?;
    Ok(Resolved {
        name: ft.metadata.name.clone().unwrap_or_default(),
        base_uri,
        base_digest: recorded_base.map(|a| a.digest.clone()).unwrap_or_default(),
        dataset_uri,
        secret,
        store,
    })
}

/// Downloads the dataset (checked against `status.lineage.dataset.digest`) and
/// the base model into `cache`. A base model from the Hugging Face Hub is
/// recorded from then on by the commit its revision resolved to
/// (`hf://org/model@<sha>`), so that the lineage names the bytes trained on.
pub(super) async fn fetch(
    ft: &FineTune,
    r: &mut Resolved,
    cache: &Path,
) -> Result<Fetched, FineTuneError> {
    let (dataset_scratch, base_scratch) = (cache.join("dataset"), cache.join("base"));
    for dir in [&dataset_scratch, &base_scratch] {
        std::fs::create_dir_all(dir).map_err(TrainError::io("create a download cache"))?;
    }
    let recorded = ft
        .status
        .as_ref()
        .and_then(|s| s.operator.lineage.as_ref())
        .and_then(|l| l.dataset.as_ref());
    let dataset = session::fetch_dataset(&r.dataset_uri, recorded, &dataset_scratch).await?;
    // The operator names the Secret that reaches the base model's store (the
    // producer's output Secret when the spec gives none).
    let base_secret = ft
        .spec
        .base_model
        .credentials_secret_ref
        .as_ref()
        .map(|s| s.name.as_str());
    // The digest the lineage recorded, when it did: a base model exported again
    // since (another directory) or changed in place is refused, not trained on.
    let pinned = Some(r.base_digest.as_str()).filter(|d| !d.is_empty());
    let base_store = Store::open(&r.base_uri, &Credentials::from_secret(base_secret))?;
    let base_dir = fetch_model(&base_store, &base_scratch, pinned).await?;
    if let Some(pinned_uri) = base_store.pinned_uri().await? {
        tracing::info!(base_model = %pinned_uri, "the base model's revision resolved");
        r.base_uri = pinned_uri;
    }
    let base_config = Config::from_file(base_dir.join(io::CONFIG_FILE)).map_err(|e| {
        FineTuneError::Incompatible(format!(
            "the base model at {} is not a model directory: {e}",
            r.base_uri
        ))
    })?;
    Ok(Fetched {
        dataset,
        base_dir,
        base_config,
    })
}

/// The tokenizer JSON of a file, for comparison.
fn tokenizer_json(path: &Path) -> Result<serde_json::Value, FineTuneError> {
    let text = std::fs::read_to_string(path)
        .map_err(TrainError::io(format!("read {}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| FineTuneError::Incompatible(format!("{} is not JSON: {e}", path.display())))
}

/// Refuses a dataset tokenized with another tokenizer than the base model's;
/// returns the dataset's tokenizer file.
pub(super) fn check_tokenizer(r: &Resolved, f: &Fetched) -> Result<PathBuf, FineTuneError> {
    let dataset_tokenizer = f.dataset.dir().join(&f.dataset.manifest.tokenizer);
    let base_tokenizer = f.base_dir.join(TOKENIZER_FILE);
    if !base_tokenizer.exists() {
        return Err(FineTuneError::Incompatible(format!(
            "the base model at {} has no {TOKENIZER_FILE}",
            r.base_uri
        )));
    }
    if tokenizer_json(&base_tokenizer)? != tokenizer_json(&dataset_tokenizer)? {
        return Err(FineTuneError::Incompatible(format!(
            "the dataset at {} was tokenized with a different tokenizer than the base model at {}; prepare it with tokenizer.uri set to the base model's tokenizer.json",
            r.dataset_uri, r.base_uri
        )));
    }
    Ok(dataset_tokenizer)
}
