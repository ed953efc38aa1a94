//! `trainer finetune`: continues training a base model (every weight, or LoRA
//! adapters on the frozen model, its block projections held in NF4 for QLoRA)
//! on an instruction dataset with the training session of [`crate::train`] —
//! checkpoints, resume, data parallelism and live progress included — then
//! merges the adapters, evaluates the result on the held-out split, checks the
//! gates and exports a servable Hugging Face model with `llmops.json`.
//!
//! The steps: resolve and fetch the inputs (`inputs.rs`), check the tokenizer,
//! plan ([`plan`]) and train, evaluate and gate ([`evaluate`]), export.
//!
//! The base model and the dataset must share one tokenizer (the dataset is
//! usually prepared with `tokenizer.uri` pointing at the base model's); a
//! different one is refused instead of training on ids that mean other words.

pub mod error;
pub mod evaluate;
mod inputs;
pub mod plan;

use std::path::Path;

use llmops_crds::FineTune;
use llmops_crds::common::{Artifact, TrainingProgress};
use llmops_crds::finetune::{EvaluationScores, GateResult};
use serde::Serialize;

pub use error::FineTuneError;

use crate::artifact::{DatasetArtifact, owner_of};
use crate::progress::Reporter;
use crate::train::export::{self, Lineage};
use crate::train::interrupt::Interrupt;
use crate::train::run::{BaseModel, Trained};
use crate::train::{TrainError, session};
use inputs::{Fetched, Resolved};

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
pub type Outcome = session::Outcome<Box<FineTuned>>;

/// Runs `ft` to completion or to an interruption.
pub async fn finetune(
    ft: &FineTune,
    options: &Options,
    reporter: Option<Reporter>,
    interrupt: Interrupt,
) -> Result<Outcome, FineTuneError> {
    let mut resolved = inputs::resolve(ft, options)?;
    session::claim_output(&resolved.store, &owner_of(ft)).await?;
    let cache = tempfile::tempdir().map_err(TrainError::io("create a download cache"))?;
    let fetched = inputs::fetch(ft, &mut resolved, cache.path()).await?;
    let tokenizer = inputs::check_tokenizer(&resolved, &fetched)?;
    let run = train(ft, &resolved, fetched, reporter.clone(), interrupt).await?;
    if let Some(early) = Outcome::before_export(&run.trained, run.rank) {
        return Ok(early);
    }
    let evaluated = evaluate_model(ft, run, &tokenizer).await?;
    let finished = export(ft, resolved, evaluated, &tokenizer).await?;
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

/// The end of the training loop on this rank.
struct Run {
    trained: Trained,
    dataset: DatasetArtifact,
    rank: usize,
    sequence_length: usize,
    /// The base model's held-out perplexity (rank 0, when asked for).
    base_perplexity: Option<f64>,
}

/// Joins the group, plans and runs the loop from the base model (with LoRA
/// adapters when the spec asks for them).
async fn train(
    ft: &FineTune,
    r: &Resolved,
    fetched: Fetched,
    reporter: Option<Reporter>,
    interrupt: Interrupt,
) -> Result<Run, FineTuneError> {
    let Fetched {
        dataset,
        base_dir,
        base_config,
    } = fetched;
    let checkpoints = session::checkpoint_location(
        &r.store,
        &llmops_store::Credentials::from_secret(r.secret.as_deref()),
        &r.name,
    )?;
    let collective = session::join_group().await?;
    let world = collective.world_size();
    let rank = collective.rank();
    let train_rows = dataset
        .split("train")
        .map_err(FineTuneError::dataset(&r.dataset_uri))?
        .len();
    let plan = plan::plan(ft, &base_config, &dataset.manifest, train_rows, world)?;
    let lora = plan::lora(ft);
    let quantize = plan::quantize_base(ft);
    tracing::info!(
        rank,
        world,
        steps = plan.total_steps,
        method = match (&lora, quantize) {
            (Some(_), true) => "qlora",
            (Some(_), false) => "lora",
            (None, _) => "full",
        },
        "fine-tuning {} from {} on {}",
        r.name,
        r.base_uri,
        r.dataset_uri
    );
    // The base model's score first, so that two models never share the memory.
    let (dataset, base_perplexity) = if rank == 0 {
        let (dir, spec, length) = (
            base_dir.clone(),
            ft.spec.evaluation.clone(),
            plan.sequence_length,
        );
        let (dataset, scored) = tokio::task::spawn_blocking(move || {
            let scored =
                evaluate::base_perplexity(&dir, &dataset, &spec, length, session::device());
            (dataset, scored)
        })
        .await
        .map_err(TrainError::task("score the base model"))?;
        (dataset, scored?)
    } else {
        (dataset, None)
    };
    if let Some(ppl) = base_perplexity {
        tracing::info!(perplexity = ppl, "the base model on the held-out split");
    }
    let base = BaseModel {
        dir: base_dir,
        lora,
        quantize,
    };
    let (trained, dataset) = session::run_loop(
        &plan,
        Some(base),
        dataset,
        checkpoints,
        collective,
        reporter,
        interrupt,
    )
    .await?;
    Ok(Run {
        trained,
        dataset,
        rank,
        sequence_length: plan.sequence_length,
        base_perplexity,
    })
}

/// The trained model, merged, with its scores and gates.
struct Evaluated {
    trained: Trained,
    dataset: DatasetArtifact,
    evaluation: EvaluationScores,
    gate: GateResult,
}

/// Merges the adapters, scores the model on the held-out split (on a blocking
/// thread) and checks the gates.
async fn evaluate_model(
    ft: &FineTune,
    run: Run,
    tokenizer_file: &Path,
) -> Result<Evaluated, FineTuneError> {
    let Run {
        mut trained,
        dataset,
        sequence_length,
        base_perplexity,
        ..
    } = run;
    // QLoRA: the NF4 base dequantized to the compute dtype, then merged.
    trained.model.dequantize_base(&trained.vs)?;
    trained.model.merge_lora()?;
    let tokenizer = tokenizers::Tokenizer::from_file(tokenizer_file).map_err(|e| {
        FineTuneError::Incompatible(format!("cannot load {}: {e}", tokenizer_file.display()))
    })?;
    let evaluation_spec = ft.spec.evaluation.clone();
    let (trained, dataset, evaluation) = tokio::task::spawn_blocking(move || {
        let scores = evaluate::evaluate(
            &trained.model,
            &dataset,
            &tokenizer,
            &evaluation_spec,
            sequence_length,
            session::device(),
        );
        (trained, dataset, scores)
    })
    .await
    .map_err(TrainError::task("evaluate the model"))?;
    let evaluation = EvaluationScores {
        base_perplexity,
        ..evaluation?
    };
    let gate = evaluate::gate(&ft.spec.evaluation, &evaluation);
    tracing::info!(passed = gate.passed, "evaluation: {}", gate.message);
    Ok(Evaluated {
        trained,
        dataset,
        evaluation,
        gate,
    })
}

/// Exports the merged model (or, with `output.mergeAdapter: false`, the adapter)
/// with its lineage, training metrics, scores and gates.
async fn export(
    ft: &FineTune,
    r: Resolved,
    e: Evaluated,
    tokenizer: &Path,
) -> Result<FineTuned, FineTuneError> {
    let lineage = Lineage {
        kind: "FineTune",
        job: &r.name,
        namespace: ft.metadata.namespace.as_deref(),
        sources: serde_json::json!({
            "baseModel": {"uri": r.base_uri, "digest": r.base_digest},
            "dataset": {"uri": r.dataset_uri, "digest": e.dataset.manifest.digest},
        }),
        tokenizer,
        metrics: {
            let mut m = export::training_metrics(&e.trained.progress);
            m["evaluation"] = serde_json::to_value(&e.evaluation).unwrap_or_default();
            m["gate"] = serde_json::to_value(&e.gate).unwrap_or_default();
            m
        },
    };
    // A LoRA fine-tune kept apart from its base exports only the adapter; it is
    // evaluated merged all the same (the function is the same).
    let artifact = match plan::lora(ft).filter(|_| !ft.spec.output.merge_adapter) {
        Some(settings) => {
            session::export_adapter(&r.store, &e.trained, &settings, &lineage).await?
        }
        None => session::export_model(&r.store, &e.trained, &lineage).await?,
    };
    Ok(FineTuned {
        artifact,
        progress: e.trained.progress,
        evaluation: e.evaluation,
        gate: e.gate,
    })
}
