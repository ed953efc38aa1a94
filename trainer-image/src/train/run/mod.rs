//! The training loop: micro-steps with gradient accumulation, the data-parallel
//! all-reduce, clipping, AdamW, evaluation, checkpoints and progress.
//!
//! This module sets the loop up; `step.rs` runs it, `resume.rs` continues a run
//! from its newest checkpoint, and `report.rs` turns its state into progress.

use std::path::PathBuf;
use std::time::Instant;

use llmops_crds::common::{Precision, TrainingProgress};
use llmops_model::{Config, Dtype, GenerationConfig, LoraSettings, Model, io};
use tch::{Device, nn};

mod report;
mod resume;
mod sharded;
mod step;

pub use report::summary;

use super::TrainError;
use super::checkpoint::{Checkpoints, TrainerState};
use super::data::{self, Loader, MicroBatch};
use super::distributed::Collective;
use super::interrupt::Interrupt;
use super::mirror::Mirror;
use super::optimizer::AdamW;
use super::plan::Plan;
use super::zero::ZeroAdamW;
use crate::artifact::DatasetArtifact;
use crate::progress::Reporter;

/// Validation rows scored at each evaluation: enough for a stable estimate,
/// few enough that evaluation stays a small fraction of training time.
pub const MAX_EVAL_ROWS: u64 = 256;
/// Training losses averaged into `progress.trainLoss`.
const LOSS_WINDOW: usize = 10;
/// The per-step log, inside the checkpoint directory so it never mixes with the
/// exported model files.
pub const TRAIN_LOG: &str = "train_log.jsonl";

/// A model to continue training instead of a fresh one (fine-tuning).
#[derive(Clone, Debug)]
pub struct BaseModel {
    /// A local Hugging Face model directory.
    pub dir: PathBuf,
    /// Train low-rank adapters on the frozen model instead of every weight.
    pub lora: Option<LoraSettings>,
    /// Hold the frozen block projections in NF4 under the adapters (QLoRA).
    pub quantize: bool,
}

/// Everything the loop needs.
pub struct Inputs<'a> {
    pub plan: &'a Plan,
    /// Start from this model; `None` initialises `plan.model` randomly.
    pub base: Option<BaseModel>,
    pub dataset: &'a DatasetArtifact,
    pub checkpoints: Checkpoints,
    /// URI of the checkpoint directory, for status.
    pub checkpoints_uri: String,
    pub device: Device,
    pub collective: Box<dyn Collective>,
    /// Only rank 0 reports.
    pub reporter: Option<Reporter>,
    pub interrupt: Interrupt,
    /// Remote copy of the checkpoints, for object-store outputs.
    pub mirror: Option<Mirror>,
}

/// The state at the end of the loop.
pub struct Trained {
    pub vs: nn::VarStore,
    pub model: Model,
    pub state: TrainerState,
    pub progress: TrainingProgress,
    /// Stopped by a signal (a checkpoint holds `state`).
    pub interrupted: bool,
}

/// The generation defaults written next to every saved model.
pub fn generation_config(config: &Config) -> GenerationConfig {
    GenerationConfig::from_model_config(config)
}

/// AdamW with all of its state on every rank (`training.zero.stage` 0), or
/// sharded over the ranks (1 or 2, see [`super::zero`]).
enum Optimizer {
    Full(AdamW),
    Zero(ZeroAdamW),
}

impl Optimizer {
    fn new(vs: &nn::VarStore, plan: &Plan, rank: usize, world: usize) -> Result<Self, TrainError> {
        Ok(match plan.zero_stage {
            0 => Optimizer::Full(AdamW::new(vs, plan.adamw)?),
            stage => Optimizer::Zero(ZeroAdamW::new(vs, plan.adamw, stage, rank, world)?),
        })
    }

    /// The trainable parameters, in the optimizer's order.
    fn parameters(&self) -> Vec<tch::Tensor> {
        match self {
            Optimizer::Full(o) => o.parameters().map(tch::Tensor::shallow_clone).collect(),
            Optimizer::Zero(o) => o.parameters().map(tch::Tensor::shallow_clone).collect(),
        }
    }

    fn zero_grad(&mut self) {
        match self {
            Optimizer::Full(o) => o.zero_grad(),
            Optimizer::Zero(o) => o.zero_grad(),
        }
    }

    /// The stage the state is kept in.
    fn zero_stage(&self) -> u8 {
        match self {
            Optimizer::Full(_) => 0,
            Optimizer::Zero(o) => o.stage(),
        }
    }
}

/// The training loop's state; its parts live in `step`, `sharded`, `resume`
/// and `report`.
struct Loop<'a> {
    s: Inputs<'a>,
    model: Model,
    vs: nn::VarStore,
    opt: Optimizer,
    loader: Loader,
    eval: Vec<MicroBatch>,
    state: TrainerState,
    progress: TrainingProgress,
    losses: Vec<f64>,
    log: Option<std::fs::File>,
    started: Instant,
    started_step: i64,
}

/// Trains from the newest checkpoint (or from scratch) to the planned step.
pub fn train(s: Inputs<'_>) -> Result<Trained, TrainError> {
    let plan = s.plan;
    let rank = s.collective.rank();
    let world = s.collective.world_size();
    tch::manual_seed(plan.seed as i64);
    let (vs, model) = build_model(&s)?;
    let opt = Optimizer::new(&vs, plan, rank, world)?;
    let (loader, eval) = load_data(&s, rank, world)?;
    let state = TrainerState {
        step: 0,
        tokens_seen: 0,
        cursor: loader.cursor(),
        seed: plan.seed,
        world_size: world,
        zero_stage: plan.zero_stage,
        dataset_digest: s.dataset.manifest.digest.clone(),
        train_loss: None,
        validation_loss: None,
        best_validation_loss: None,
        evals_without_improvement: 0,
        stopped_early: false,
        time: String::new(),
    };
    let progress = TrainingProgress {
        total_steps: plan.total_steps,
        ..Default::default()
    };
    let mut l = Loop {
        s,
        model,
        vs,
        opt,
        loader,
        eval,
        state,
        progress,
        losses: Vec::new(),
        log: None,
        started: Instant::now(),
        started_step: 0,
    };
    l.resume()?;
    l.sync_initial_weights()?;
    l.open_log()?;
    l.run()
}

/// The model to train: `plan.model` initialised from the seed, or the base
/// model with LoRA adapters when asked.
fn build_model(s: &Inputs<'_>) -> Result<(nn::VarStore, Model), TrainError> {
    let (mut vs, model) = match &s.base {
        None => {
            let vs = nn::VarStore::new(s.device);
            let model = Model::new(&vs.root(), &s.plan.model)?;
            (vs, model)
        }
        Some(base) => {
            let loaded = io::load(&base.dir, s.device, Dtype::F32)?;
            let mut model = loaded.model;
            if let Some(lora) = &base.lora {
                let adapted = model.add_lora(&loaded.vs, lora)?;
                tracing::info!(
                    adapters = adapted.len(),
                    rank = lora.rank,
                    "LoRA adapters added"
                );
            }
            if base.quantize {
                let q = model.quantize_base(&loaded.vs)?;
                tracing::info!(
                    layers = q.layers,
                    fp32_bytes = q.fp32_bytes,
                    nf4_bytes = q.nf4_bytes,
                    "base projections quantized to NF4"
                );
            }
            (loaded.vs, model)
        }
    };
    // bf16 on a GPU: the model computes in bf16, AdamW keeps fp32 masters and
    // moments, and the loss is taken in fp32. CPUs train in fp32 (bf16 matmuls
    // there are slower, not faster).
    if s.plan.precision == Precision::Bf16 && s.device.is_cuda() {
        vs.bfloat16();
    }
    Ok((vs, model))
}

/// This rank's share of the train split, and the validation batches (rank 0
/// evaluates; the others get none).
fn load_data(
    s: &Inputs<'_>,
    rank: usize,
    world: usize,
) -> Result<(Loader, Vec<MicroBatch>), TrainError> {
    let plan = s.plan;
    let dataset_uri = s.dataset.dir().display().to_string();
    let dataset_err = |e| TrainError::dataset(&dataset_uri)(e);
    let train_split = s.dataset.split("train").map_err(dataset_err)?;
    if train_split.is_empty() {
        return Err(TrainError::Incompatible("the train split is empty".into()));
    }
    let validation = s.dataset.split("validation").map_err(dataset_err)?;
    let eval = if rank == 0 {
        data::eval_batches(
            &validation,
            plan.sequence_length,
            plan.micro_batch,
            MAX_EVAL_ROWS,
            s.device,
        )
        .map_err(dataset_err)?
    } else {
        Vec::new()
    };
    let loader = Loader::new(
        train_split,
        plan.sequence_length,
        plan.seed,
        plan.batch,
        plan.micro_batch,
        rank,
        world,
        s.device,
    );
    Ok((loader, eval))
}

/// Where checkpoints of a local output live.
pub fn checkpoint_dir(output_root: &std::path::Path) -> PathBuf {
    output_root.join("checkpoints")
}
