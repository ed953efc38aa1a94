//! The numbers the training loop runs with, and how a resource's
//! `spec.training` becomes them once the model, row length, rank count and step
//! count are known (each command resolves those from its own resource).

use llmops_crds::TrainingSpec;
use llmops_crds::common::{LrSchedule, Precision};
use llmops_model::Config;

use super::TrainError;
use super::optimizer::AdamWConfig;
use super::schedule::Schedule;

/// What one run does, resolved and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub model: Config,
    /// Tokens per training row (the model sees `sequence_length - 1` inputs).
    pub sequence_length: usize,
    /// Global batch in rows.
    pub batch: usize,
    /// Rows per forward/backward pass.
    pub micro_batch: usize,
    /// Micro-steps per optimizer step on each rank.
    pub accumulation: usize,
    pub total_steps: i64,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    pub grad_clip: f64,
    pub seed: u64,
    pub eval_every: i64,
    pub checkpoint_every: i64,
    pub checkpoints_kept: usize,
    pub precision: Precision,
    /// Stop when validation loss has not improved for a while.
    pub early_stopping: Option<EarlyStop>,
    /// ZeRO stage (`training.zero.stage`): 0, 1 or 2. With one rank it is
    /// 0 whatever the spec says, as there is nothing to shard over.
    pub zero_stage: u8,
    /// Recompute each block in the backward pass instead of keeping its
    /// intermediates (`training.activationCheckpointing`).
    pub activation_checkpointing: bool,
}

/// Stop after `patience` evaluations in a row that did not lower the best
/// validation loss by more than `min_delta`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EarlyStop {
    pub patience: u32,
    pub min_delta: f64,
}

impl Plan {
    /// Tokens one optimizer step consumes (all ranks).
    pub fn tokens_per_step(&self) -> i64 {
        (self.batch * self.sequence_length) as i64
    }
}

/// The plan of `t` once the model, row length, rank count and step count are
/// known. `t.batchSize` must already split over
/// `world` ranks of `microBatchSize`.
pub fn assemble(
    t: &TrainingSpec,
    model: Config,
    sequence_length: usize,
    world: usize,
    total_steps: i64,
) -> Result<Plan, TrainError> {
    let (batch, micro) = (t.batch_size as usize, t.micro_batch_size as usize);
    let min_lr = t.min_learning_rate.unwrap_or(t.learning_rate / 10.0);
    if min_lr > t.learning_rate {
        return Err(TrainError::InvalidSpec(
            "training.minLearningRate exceeds learningRate".into(),
        ));
    }
    let zero_stage = match t.zero.stage {
        0..=2 => t.zero.stage as u8,
        other => {
            return Err(TrainError::InvalidSpec(format!(
                "training.zero.stage is {other}; it is 0, 1 or 2"
            )));
        }
    };
    if t.activation_checkpointing && zero_stage == 2 && world > 1 {
        // Stage 2 takes each micro-step's gradients as values (run_backward),
        // while the recomputed blocks leave theirs in `.grad`.
        return Err(TrainError::InvalidSpec(
            "training.activationCheckpointing cannot be combined with training.zero.stage 2 yet: use stage 1, or turn checkpointing off".into(),
        ));
    }
    if zero_stage > 0 && world == 1 {
        tracing::info!(
            stage = zero_stage,
            "training.zero has nothing to shard over with one rank: training as stage 0"
        );
    }
    Ok(Plan {
        model,
        sequence_length,
        batch,
        micro_batch: micro,
        accumulation: batch / (micro * world),
        total_steps,
        schedule: Schedule {
            kind: t.schedule,
            peak: t.learning_rate,
            min: if t.schedule == LrSchedule::Constant {
                t.learning_rate
            } else {
                min_lr
            },
            warmup: t.warmup_steps,
            total: total_steps,
        },
        adamw: AdamWConfig {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: 1e-8,
            weight_decay: t.weight_decay,
        },
        grad_clip: t.grad_clip,
        seed: t.seed as u64,
        eval_every: t.eval_every.max(1),
        checkpoint_every: t.checkpoint_every.max(1),
        checkpoints_kept: t.checkpoints_kept.max(1) as usize,
        precision: t.precision,
        early_stopping: None,
        zero_stage: if world > 1 { zero_stage } else { 0 },
        activation_checkpointing: t.activation_checkpointing,
    })
}
