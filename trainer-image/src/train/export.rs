//! The trained model in the Hugging Face layout, plus `llmops.json`:
//!
//! ```text
//! <output>/config.json  model.safetensors  generation_config.json  tokenizer.json
//! <output>/llmops.json   lineage (dataset uri and digest) and final metrics; written last
//! ```
//!
//! The artifact digest covers exactly these five files (see `llmops-store`), not
//! the `checkpoints/` directory that shares the output.

use std::path::Path;

use llmops_crds::common::TrainingProgress;
use llmops_model::{Model, io};
use llmops_store::{FileDigest, Store, artifact_digest, sha256_file};
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

/// Writes the model files into `staging` and returns their digests.
pub fn write(
    staging: &Path,
    vs: &nn::VarStore,
    model: &Model,
    lineage: &Lineage<'_>,
) -> Result<Vec<FileDigest>, TrainError> {
    io::save(staging, vs, model, &generation_config(model.config()))?;
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
    for name in [
        io::CONFIG_FILE,
        io::WEIGHTS_FILE,
        io::GENERATION_CONFIG_FILE,
        TOKENIZER_FILE,
        LINEAGE_FILE,
    ] {
        digests.push(FileDigest {
            path: name.into(),
            sha256: sha256_file(&staging.join(name))?,
        });
    }
    Ok(digests)
}

/// Moves the files of `staging` to the output, `llmops.json` last so that its
/// presence means the export is complete. Returns the artifact digest.
pub async fn publish(
    store: &Store,
    staging: &Path,
    files: &[FileDigest],
) -> Result<String, TrainError> {
    let ordered = files
        .iter()
        .filter(|f| f.path != LINEAGE_FILE)
        .chain(files.iter().filter(|f| f.path == LINEAGE_FILE));
    for f in ordered {
        let src = staging.join(&f.path);
        match store.local_root() {
            // A rename within the output's filesystem: readers never see half a file.
            Some(root) => {
                std::fs::create_dir_all(root)
                    .map_err(TrainError::io(format!("create {}", root.display())))?;
                let dest = root.join(&f.path);
                if std::fs::rename(&src, &dest).is_err() {
                    let tmp = root.join(format!(".{}.tmp", f.path));
                    std::fs::copy(&src, &tmp)
                        .map_err(TrainError::io(format!("copy to {}", tmp.display())))?;
                    std::fs::rename(&tmp, &dest)
                        .map_err(TrainError::io(format!("publish {}", dest.display())))?;
                }
            }
            None => store.put_file(&f.path, &src).await?,
        }
    }
    Ok(artifact_digest(files))
}
