//! `trainer finetune`: continues training a base model (every weight, or LoRA
//! adapters on the frozen model) on an instruction dataset with pretraining's
//! loop — checkpoints, resume, data parallelism and live progress included —
//! then merges the adapters, evaluates the result on the held-out split, checks
//! the gates and exports a servable Hugging Face model with `llmops.json`.
//!
//! The base model and the dataset must share one tokenizer (the dataset is
//! usually prepared with `tokenizer.uri` pointing at the base model's); a
//! different one is refused instead of training on ids that mean other words.

pub mod evaluate;
pub mod plan;

use llmops_crds::FineTune;
use llmops_crds::common::{Artifact, TrainingProgress};
use llmops_crds::finetune::{EvaluationScores, GateResult};
use llmops_model::{Config, io};
use llmops_store::{Credentials, Store};
use serde::Serialize;

use crate::pretrain::run::BaseModel;
use crate::pretrain::{
    PretrainError, checkpoint_location, device, export, export_model, fetch_dataset, join_group,
    train_blocking,
};
use crate::progress::Reporter;
use crate::train::checkpoint::Checkpoints;
use crate::train::interrupt::Interrupt;

/// Overrides for running outside a cluster (in a pod the resource carries
/// the operator's resolved `status.lineage` and `spec.output.uri`).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Base model URI (else `status.lineage.baseModel.uri`, else `spec.baseModel.uri`).
    pub base_model: Option<String>,
    /// Dataset artifact URI (else `status.lineage.dataset.uri`).
    pub dataset: Option<String>,
    /// Output URI (else `spec.output.uri`, else `file://./out/finetunes/<name>`).
    pub output: Option<String>,
}

/// The termination message of a finished run.
#[derive(Clone, Debug, Serialize)]
pub struct FineTuned {
    pub artifact: Artifact,
    pub progress: TrainingProgress,
    pub evaluation: EvaluationScores,
    pub gate: GateResult,
}

/// How a run ended without error (the result is boxed: it is large).
pub type Outcome = crate::pretrain::Outcome<Box<FineTuned>>;

fn output_uri(ft: &FineTune, override_uri: Option<&str>) -> Result<String, PretrainError> {
    if let Some(uri) = override_uri.or(ft.spec.output.location.uri.as_deref()) {
        return Ok(uri.to_string());
    }
    let name = ft
        .metadata
        .name
        .as_deref()
        .ok_or_else(|| PretrainError::InvalidSpec("metadata.name is required".into()))?;
    Ok(format!("file://./out/finetunes/{name}"))
}

/// The tokenizer JSON of a file, for comparison.
fn tokenizer_json(path: &std::path::Path) -> Result<serde_json::Value, PretrainError> {
    let text = std::fs::read_to_string(path)
        .map_err(PretrainError::io(format!("read {}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| PretrainError::Incompatible(format!("{} is not JSON: {e}", path.display())))
}

/// Runs `ft` to completion or to an interruption.
pub async fn finetune(
    ft: &FineTune,
    options: &Options,
    reporter: Option<Reporter>,
    interrupt: Interrupt,
) -> Result<Outcome, PretrainError> {
    let name = ft.metadata.name.clone().unwrap_or_default();
    let lineage = ft.status.as_ref().and_then(|s| s.lineage.as_ref());
    let recorded_dataset = lineage.and_then(|l| l.dataset.as_ref());
    let recorded_base = lineage.and_then(|l| l.base_model.as_ref());
    let base_uri = options
        .base_model
        .clone()
        .or_else(|| recorded_base.map(|a| a.uri.clone()))
        .or_else(|| ft.spec.base_model.uri.clone())
        .ok_or_else(|| {
            PretrainError::InvalidSpec(
                "no base model: pass --base-model, or let the operator resolve spec.baseModel into status.lineage.baseModel".into(),
            )
        })?;
    let dataset_uri = options
        .dataset
        .clone()
        .or_else(|| recorded_dataset.map(|d| d.uri.clone()))
        .ok_or(PretrainError::NoDataset)?;
    let output = output_uri(ft, options.output.as_deref())?;
    let secret = ft
        .spec
        .output
        .location
        .credentials_secret_ref
        .as_ref()
        .map(|s| s.name.as_str());
    let store = Store::open(&output, &Credentials::from_secret(secret))?;

    let cache = tempfile::tempdir().map_err(PretrainError::io("create a download cache"))?;
    let (dataset_scratch, base_scratch) = (cache.path().join("dataset"), cache.path().join("base"));
    for dir in [&dataset_scratch, &base_scratch] {
        std::fs::create_dir_all(dir).map_err(PretrainError::io("create a download cache"))?;
    }
    let dataset = fetch_dataset(&dataset_uri, recorded_dataset, &dataset_scratch).await?;
    // The operator names the Secret that reaches the base model's store (the
    // producer's output Secret when the spec gives none).
    let base_secret = ft
        .spec
        .base_model
        .credentials_secret_ref
        .as_ref()
        .map(|s| s.name.as_str());
    let base_dir = Store::open(&base_uri, &Credentials::from_secret(base_secret))?
        .local_dir(&base_scratch)
        .await?;
    let base_config = Config::from_file(base_dir.join(io::CONFIG_FILE)).map_err(|e| {
        PretrainError::Incompatible(format!(
            "the base model at {base_uri} is not a model directory: {e}"
        ))
    })?;
    let dataset_tokenizer = dataset.dir().join(&dataset.manifest.tokenizer);
    let base_tokenizer = base_dir.join(export::TOKENIZER_FILE);
    if !base_tokenizer.exists() {
        return Err(PretrainError::Incompatible(format!(
            "the base model at {base_uri} has no {}",
            export::TOKENIZER_FILE
        )));
    }
    if tokenizer_json(&base_tokenizer)? != tokenizer_json(&dataset_tokenizer)? {
        return Err(PretrainError::Incompatible(format!(
            "the dataset at {dataset_uri} was tokenized with a different tokenizer than the base model at {base_uri}; prepare it with tokenizer.uri set to the base model's tokenizer.json"
        )));
    }

    let (checkpoint_root, checkpoints_uri, mirror) =
        checkpoint_location(&store, &Credentials::from_secret(secret), &name)?;
    let collective = join_group().await?;
    let world = collective.world_size();
    let rank = collective.rank();
    let train_rows = dataset
        .split("train")
        .map_err(PretrainError::dataset(&dataset_uri))?
        .len();
    let plan = plan::plan(ft, &base_config, &dataset.manifest, train_rows, world)?;
    let lora = plan::lora(ft);
    tracing::info!(
        rank,
        world,
        steps = plan.total_steps,
        method = if lora.is_some() { "lora" } else { "full" },
        "fine-tuning {name} from {base_uri} on {dataset_uri}"
    );

    let session_reporter = if rank == 0 { reporter.clone() } else { None };
    let checkpoints = Checkpoints::new(checkpoint_root, plan.checkpoints_kept);
    let base = BaseModel {
        dir: base_dir.clone(),
        lora: lora.clone(),
    };
    let (mut trained, dataset) = train_blocking(
        &plan,
        Some(base),
        dataset,
        checkpoints,
        checkpoints_uri,
        collective,
        session_reporter,
        interrupt,
        mirror,
    )
    .await?;
    if let Some(early) = Outcome::before_export(&trained, rank) {
        return Ok(early);
    }

    trained.model.merge_lora()?;
    let tokenizer = tokenizers::Tokenizer::from_file(&dataset_tokenizer).map_err(|e| {
        PretrainError::Incompatible(format!("cannot load {}: {e}", dataset_tokenizer.display()))
    })?;
    let evaluation_spec = ft.spec.evaluation.clone();
    let sequence_length = plan.sequence_length;
    let (trained, dataset, evaluation) = tokio::task::spawn_blocking(move || {
        let scores = evaluate::evaluate(
            &trained.model,
            &dataset,
            &tokenizer,
            &evaluation_spec,
            sequence_length,
            device(),
        );
        (trained, dataset, scores)
    })
    .await
    .map_err(|e| PretrainError::Io {
        op: "evaluate the model".into(),
        source: std::io::Error::other(e),
    })?;
    let evaluation = evaluation?;
    let gate = evaluate::gate(&ft.spec.evaluation, &evaluation);
    tracing::info!(passed = gate.passed, "evaluation: {}", gate.message);

    let base_digest = recorded_base.map(|a| a.digest.clone()).unwrap_or_default();
    let lineage = export::Lineage {
        kind: "FineTune",
        job: &name,
        namespace: ft.metadata.namespace.as_deref(),
        sources: serde_json::json!({
            "baseModel": {"uri": base_uri, "digest": base_digest},
            "dataset": {"uri": dataset_uri, "digest": dataset.manifest.digest},
        }),
        tokenizer: &dataset_tokenizer,
        metrics: {
            let mut m = export::training_metrics(&trained.progress);
            m["evaluation"] = serde_json::to_value(&evaluation).unwrap_or_default();
            m["gate"] = serde_json::to_value(&gate).unwrap_or_default();
            m
        },
    };
    let digest = export_model(&store, &trained, &lineage).await?;
    let finished = FineTuned {
        artifact: Artifact {
            uri: output,
            digest,
        },
        progress: trained.progress,
        evaluation,
        gate,
    };
    if let Some(reporter) = &reporter {
        let verdict = if finished.gate.passed {
            "passed"
        } else {
            "FAILED"
        };
        reporter
            .finish(
                serde_json::to_value(&finished.progress).unwrap_or_default(),
                &format!("done; gates {verdict}: {}", finished.gate.message),
            )
            .await;
    }
    Ok(Outcome::Finished(Some(Box::new(finished))))
}
