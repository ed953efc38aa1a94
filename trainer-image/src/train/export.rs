//! The trained model in the Hugging Face layout, plus `llmops.json`, in a
//! directory of its own named by its digest (`llmops_store::model`):
//!
//! ```text
//! <output>/model-<16 hex>/config.json  model.safetensors  generation_config.json  tokenizer.json
//! <output>/model-<16 hex>/llmops.json    lineage (dataset uri and digest) and final metrics
//! <output>/model-<16 hex>/manifest.json  the files' sha256 and the digest; written last
//! <output>/checkpoints/                  beside the models, never in them
//! ```
//!
//! The artifact digest covers exactly the five model files. An export never
//! overwrites another: the same model exports to the same directory, byte for
//! byte, and a different one to a new directory.

use std::path::Path;

use llmops_crds::common::TrainingProgress;
use llmops_model::{Model, io};
use llmops_store::{FileDigest, MANIFEST_FILE, ModelManifest, Store, sha256_file};
use serde_json::json;
use tch::nn;

use super::TrainError;
use super::run::generation_config;

pub const LINEAGE_FILE: &str = "llmops.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What the model was trained from and how it ended.
pub struct Lineage<'a> {
    /// `PretrainJob` or `FineTune`.
    pub kind: &'a str,
    pub job: &'a str,
    pub namespace: Option<&'a str>,
    /// The artifacts it was made from, e.g. `{"dataset": {"uri", "digest"}}`.
    pub sources: serde_json::Value,
    pub tokenizer: &'a Path,
    /// Final metrics.
    pub metrics: serde_json::Value,
}

/// The metrics of a finished training run, for `llmops.json`.
pub fn training_metrics(p: &TrainingProgress) -> serde_json::Value {
    json!({
        "steps": p.step,
        "tokensSeen": p.tokens_seen,
        "trainLoss": p.train_loss,
        "validationLoss": p.validation_loss,
        "validationPerplexity": p.validation_perplexity,
    })
}

/// Writes the model files and their manifest into `staging`.
pub fn write(
    staging: &Path,
    vs: &nn::VarStore,
    model: &Model,
    lineage: &Lineage<'_>,
) -> Result<ModelManifest, TrainError> {
    io::save(staging, vs, model, &generation_config(model.config()))?;
    finish(
        staging,
        lineage,
        &[
            io::CONFIG_FILE,
            io::WEIGHTS_FILE,
            io::GENERATION_CONFIG_FILE,
        ],
    )
}

/// Writes an unmerged LoRA adapter in the PEFT layout (`llmops_model::peft`)
/// with the tokenizer, `llmops.json` and the manifest into `staging`. Its base
/// model is the `baseModel` of the lineage, by URI and digest: what a reader
/// loads the adapter onto.
pub fn write_adapter(
    staging: &Path,
    vs: &nn::VarStore,
    model: &Model,
    settings: &llmops_model::LoraSettings,
    lineage: &Lineage<'_>,
) -> Result<ModelManifest, TrainError> {
    let base = lineage.sources["baseModel"]["uri"]
        .as_str()
        .unwrap_or_default();
    llmops_model::peft::save_adapter(staging, vs, model, settings, base)?;
    finish(
        staging,
        lineage,
        &[
            llmops_model::peft::ADAPTER_CONFIG_FILE,
            llmops_model::peft::ADAPTER_WEIGHTS_FILE,
        ],
    )
}

/// Adds the tokenizer and `llmops.json` to the `files` written in `staging`,
/// then the manifest of them all.
fn finish(
    staging: &Path,
    lineage: &Lineage<'_>,
    files: &[&str],
) -> Result<ModelManifest, TrainError> {
    std::fs::copy(lineage.tokenizer, staging.join(TOKENIZER_FILE)).map_err(TrainError::io(
        format!("copy {}", lineage.tokenizer.display()),
    ))?;
    let record = json!({
        "kind": lineage.kind,
        "name": lineage.job,
        "namespace": lineage.namespace,
        "lineage": lineage.sources,
        "metrics": lineage.metrics,
    });
    let text = serde_json::to_string_pretty(&record).unwrap_or_default();
    std::fs::write(staging.join(LINEAGE_FILE), text)
        .map_err(TrainError::io("write llmops.json"))?;
    let mut digests = Vec::new();
    for name in files.iter().copied().chain([TOKENIZER_FILE, LINEAGE_FILE]) {
        digests.push(FileDigest {
            path: name.into(),
            sha256: sha256_file(&staging.join(name))?,
        });
    }
    let manifest = ModelManifest::new(&digests);
    let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    std::fs::write(staging.join(MANIFEST_FILE), text)
        .map_err(TrainError::io("write manifest.json"))?;
    Ok(manifest)
}

/// Moves the files of `staging` into the export's own directory below the
/// output, `manifest.json` last so that its presence means the export is
/// complete. Returns the directory's URI.
pub async fn publish(
    store: &Store,
    staging: &Path,
    manifest: &ModelManifest,
) -> Result<String, TrainError> {
    let dir = manifest.dir_name();
    let files = manifest.files.iter().map(|f| f.path.as_str());
    for name in files.chain([MANIFEST_FILE]) {
        let src = staging.join(name);
        let rel = format!("{dir}/{name}");
        match store.local_root() {
            // A rename within the output's filesystem: readers never see half a file.
            Some(root) => {
                let dest = root.join(&rel);
                let parent = root.join(&dir);
                std::fs::create_dir_all(&parent)
                    .map_err(TrainError::io(format!("create {}", parent.display())))?;
                if std::fs::rename(&src, &dest).is_err() {
                    let tmp = parent.join(format!(".{name}.tmp"));
                    std::fs::copy(&src, &tmp)
                        .map_err(TrainError::io(format!("copy to {}", tmp.display())))?;
                    std::fs::rename(&tmp, &dest)
                        .map_err(TrainError::io(format!("publish {}", dest.display())))?;
                }
            }
            None => store.put_file(&rel, &src).await?,
        }
    }
    Ok(store.child_uri(&dir))
}
