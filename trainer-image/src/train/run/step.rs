//! One optimizer step after another: forward and backward over the micro-batches,
//! the all-reduce, clipping, AdamW, then evaluation, early stopping and
//! checkpoints.

use std::io::Write;
use std::time::Instant;

use llmops_model::io;
use tch::Tensor;

use super::sharded::save_optimizer;
use super::{LOSS_WINDOW, Loop, Optimizer, TRAIN_LOG, Trained, generation_config};
use crate::train::TrainError;
use crate::train::data::{self, MicroBatch};
use crate::train::loss::{evaluate, summed_loss};
use crate::train::plan::EarlyStop;

/// The dropout seed of one micro-step: a pure function of the counters, so a
/// resumed run draws exactly what the uninterrupted run would have.
fn micro_seed(seed: u64, step: i64, micro: usize, rank: usize) -> i64 {
    let mut s = seed
        ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (rank as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
    (data::splitmix64(&mut s) >> 1) as i64
}

/// A loss that is not a number ends the run before the update.
pub(super) fn diverged(step: i64, loss: f64) -> Result<(), TrainError> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(TrainError::Diverged {
        step: step + 1,
        loss,
    })
}

impl Loop<'_> {
    pub(super) fn rank(&self) -> usize {
        self.s.collective.rank()
    }

    /// Steps to the planned step, an early stop or a signal.
    pub(super) fn run(mut self) -> Result<Trained, TrainError> {
        let plan = self.s.plan;
        let world = self.s.collective.world_size();
        let params: Vec<Tensor> = self.opt.parameters();
        let mut interrupted = false;
        self.started = Instant::now();
        while self.state.step < plan.total_steps && !self.state.stopped_early {
            let step = self.state.step;
            let lr = plan.schedule.lr(step);
            let cursor_before = self.loader.cursor();
            let batch = self.loader.next_step().map_err(TrainError::dataset(
                self.s.dataset.dir().display().to_string(),
            ))?;
            let Some(local_sum) =
                self.accumulate(&batch.micro_batches, step, world, batch.global_targets)?
            else {
                // Stopped mid-step: the half-accumulated step is dropped; the
                // checkpoint is the last completed step, and a restart redoes
                // this one from its batch.
                self.loader.seek(cursor_before);
                self.opt.zero_grad();
                interrupted = true;
                break;
            };
            let (loss, stop, grad_norm) = match &self.opt {
                Optimizer::Full(_) => {
                    self.full_update(&params, local_sum, batch.global_targets, lr)?
                }
                Optimizer::Zero(_) => self.sharded_update(local_sum, batch.global_targets, lr)?,
            };
            self.state.step += 1;
            self.state.tokens_seen += plan.tokens_per_step();
            self.state.cursor = self.loader.cursor();
            self.state.train_loss = Some(loss);
            self.after_step(loss, lr, grad_norm)?;
            if self.state.stopped_early {
                tracing::info!(
                    step = self.state.step,
                    best = self.state.best_validation_loss,
                    "early stop: validation loss stopped improving"
                );
                break;
            }
            if stop {
                interrupted = true;
                break;
            }
        }
        if interrupted {
            self.checkpoint_now()?;
        }
        self.s.collective.barrier()?;
        Ok(Trained {
            vs: self.vs,
            model: self.model,
            state: self.state,
            progress: self.progress,
            interrupted,
        })
    }

    /// Stage 0: the gradients averaged over the ranks, clipped, and AdamW on
    /// every rank; returns the loss, the stop flag and the gradient norm.
    fn full_update(
        &mut self,
        params: &[Tensor],
        local_sum: f64,
        global_targets: i64,
        lr: f64,
    ) -> Result<(f64, bool, f64), TrainError> {
        let (loss, stop) = self.reduce(params, local_sum, global_targets)?;
        diverged(self.state.step, loss)?;
        let mut grad_norm = 0.0;
        if let Optimizer::Full(opt) = &mut self.opt {
            grad_norm = opt.clip_grad_norm(self.s.plan.grad_clip)?;
            opt.update(lr)?;
        }
        Ok((loss, stop, grad_norm))
    }

    /// Forward and backward over this rank's micro-batches, accumulating
    /// gradients; returns the summed loss, or `None` when a signal stopped a
    /// single process between micro-steps.
    fn accumulate(
        &mut self,
        micro_batches: &[MicroBatch],
        step: i64,
        world: usize,
        global_targets: i64,
    ) -> Result<Option<f64>, TrainError> {
        let plan = self.s.plan;
        let rank = self.rank();
        // Each rank's loss is scaled so that the mean over ranks of the summed
        // micro-batch gradients is the gradient of the global batch's mean loss.
        let scale = world as f64 / global_targets.max(1) as f64;
        self.opt.zero_grad();
        let mut local_sum = 0.0;
        for (i, mb) in micro_batches.iter().enumerate() {
            let seed = micro_seed(plan.seed, step, i, rank);
            let loss = if plan.activation_checkpointing {
                // Gradients land in `.grad` segment by segment (stage 0 and 1
                // only: the plan refuses stage 2 with it).
                let mut loss = None;
                let _scaled = self
                    .model
                    .checkpointed_backward(&mb.inputs, seed, |logits| {
                        let summed = summed_loss(logits, &mb.targets)?;
                        let scaled = summed.f_mul_scalar(scale)?;
                        loss = Some(summed.detach());
                        Ok(scaled)
                    })?;
                loss.ok_or_else(|| {
                    llmops_model::Error::InvalidInput("the checkpointed step took no loss".into())
                })?
            } else {
                tch::manual_seed(seed);
                let logits = self.model.forward_t(&mb.inputs, true)?;
                let loss = summed_loss(&logits, &mb.targets)?;
                let scaled = loss.f_mul_scalar(scale)?;
                match &mut self.opt {
                    Optimizer::Zero(opt) => opt.backward(&scaled)?,
                    Optimizer::Full(_) => scaled.f_backward()?,
                }
                loss
            };
            local_sum += loss.f_double_value(&[])?;
            // Several ranks stop together at the step's all-reduce instead.
            if world == 1 && self.s.interrupt.requested() && i + 1 < micro_batches.len() {
                return Ok(None);
            }
        }
        Ok(Some(local_sum))
    }

    /// Averages gradients over ranks; returns the global batch's mean loss and
    /// whether any rank was asked to stop.
    fn reduce(
        &mut self,
        params: &[Tensor],
        local_sum: f64,
        global_targets: i64,
    ) -> Result<(f64, bool), TrainError> {
        let world = self.s.collective.world_size();
        let targets = global_targets.max(1) as f64;
        let requested = self.s.interrupt.requested();
        if world == 1 {
            return Ok((local_sum / targets, requested));
        }
        // The loss sum and the stop flag ride along with the gradients: one
        // exchange per step.
        let mut tensors: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
        let extra = Tensor::f_from_slice(&[local_sum as f32, if requested { 1.0 } else { 0.0 }])?
            .f_to_device(self.s.device)?;
        tensors.push(extra.shallow_clone());
        self.s.collective.all_reduce_mean(&tensors)?;
        let (sum, stop) = (extra.f_double_value(&[0])?, extra.f_double_value(&[1])?);
        Ok((sum * world as f64 / targets, stop > 0.0))
    }

    /// Logging, evaluation, periodic checkpoints and progress after an update.
    fn after_step(&mut self, loss: f64, lr: f64, grad_norm: f64) -> Result<(), TrainError> {
        let plan = self.s.plan;
        let step = self.state.step;
        let mut validation = None;
        if self.rank() == 0 && (step % plan.eval_every == 0 || step == plan.total_steps) {
            validation = evaluate(&self.model, &self.eval)?;
            if validation.is_some() {
                self.state.validation_loss = validation;
            }
        }
        if let Some(log) = &mut self.log {
            let mut line = serde_json::json!({
                "step": step, "loss": loss, "lr": lr, "gradNorm": grad_norm,
                "tokensSeen": self.state.tokens_seen,
            });
            if let Some(v) = validation {
                line["validationLoss"] = v.into();
            }
            writeln!(log, "{line}").map_err(TrainError::io("append to the training log"))?;
        }
        if let Some(rule) = plan.early_stopping
            && (step % plan.eval_every == 0 || step == plan.total_steps)
        {
            let stop = self.rank() == 0 && self.no_improvement(rule, validation);
            self.state.stopped_early = self.agree(stop)?;
        }
        // The last step too (and an early stop's): a restart after training (e.g.
        // a failed upload) then only exports.
        if step % plan.checkpoint_every == 0 || step == plan.total_steps || self.state.stopped_early
        {
            self.checkpoint_now()?;
        }
        self.losses.push(loss);
        if self.losses.len() > LOSS_WINDOW {
            self.losses.remove(0);
        }
        self.report(lr);
        Ok(())
    }

    /// Records one evaluation for early stopping (rank 0); true once `rule`'s
    /// patience has run out.
    fn no_improvement(&mut self, rule: EarlyStop, validation: Option<f64>) -> bool {
        let Some(loss) = validation else {
            return false;
        };
        match self.state.best_validation_loss {
            Some(best) if loss > best - rule.min_delta => {
                self.state.evals_without_improvement += 1;
            }
            _ => {
                self.state.best_validation_loss = Some(loss);
                self.state.evals_without_improvement = 0;
            }
        }
        self.state.evals_without_improvement >= rule.patience
    }

    /// Rank 0's decision, on every rank.
    fn agree(&mut self, decision: bool) -> Result<bool, TrainError> {
        let world = self.s.collective.world_size();
        if world == 1 {
            return Ok(decision);
        }
        // The mean over ranks of (world on rank 0, else 0) is rank 0's flag.
        let value = if decision { world as f32 } else { 0.0 };
        let flag = Tensor::f_from_slice(&[value])?.f_to_device(self.s.device)?;
        self.s.collective.all_reduce_mean(&[flag.shallow_clone()])?;
        Ok(flag.f_double_value(&[0])? > 0.5)
    }

    /// Saves the current state (rank 0 writes, with the other ranks' optimizer
    /// shards under ZeRO; every rank waits for it).
    pub(super) fn checkpoint_now(&mut self) -> Result<(), TrainError> {
        let shards = self.stage_shard()?;
        if self.rank() == 0 {
            self.state.time = k8s_openapi::jiff::Timestamp::now().to_string();
            let (vs, model, opt) = (&self.vs, &self.model, &self.opt);
            let world = self.s.collective.world_size();
            let generation = generation_config(model.config());
            let dir = self
                .s
                .checkpoints
                .save(&self.state, |dir| -> Result<(), String> {
                    io::save(dir, vs, model, &generation).map_err(|e| e.to_string())?;
                    io::save_adapters(dir, vs).map_err(|e| e.to_string())?;
                    save_optimizer(opt, dir, shards.as_deref(), world)
                })?;
            if let Some(staged) = &shards {
                let _ = std::fs::remove_dir_all(staged);
            }
            if let Some(mirror) = &self.s.mirror {
                let kept: Vec<i64> = self
                    .s
                    .checkpoints
                    .list()?
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                let log = self.s.checkpoints.root().join(TRAIN_LOG);
                mirror.upload(&dir, &log, &kept)?;
            }
            self.progress.last_checkpoint =
                Some(self.checkpoint_info(self.state.step, &self.state.time));
            tracing::info!(step = self.state.step, "checkpoint saved");
        }
        self.s.collective.barrier()?;
        Ok(())
    }
}
