//! The loop's side of ZeRO (see [`crate::train::zero`]): the sharded update,
//! and the optimizer state in checkpoints: one file per rank, gathered into the
//! checkpoint by rank 0, and reassembled on resume when the rank count or the
//! stage changed.

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::step::diverged;
use super::{Loop, Optimizer};
use crate::train::TrainError;
use crate::train::checkpoint::{OPTIMIZER_FILE, TrainerState, zero_optimizer_file};
use crate::train::zero::{self, ZeroAdamW};

impl Loop<'_> {
    /// Stages 1 and 2: this rank's shard of the averaged gradient, the global
    /// norm from every shard's, clipping, AdamW on the shard and the
    /// all-gather; returns the loss, the stop flag and the gradient norm.
    pub(super) fn sharded_update(
        &mut self,
        local_sum: f64,
        global_targets: i64,
        lr: f64,
    ) -> Result<(f64, bool, f64), TrainError> {
        let world = self.s.collective.world_size() as f64;
        let requested = self.s.interrupt.requested();
        let (step, max_norm, device) = (self.state.step, self.s.plan.grad_clip, self.s.device);
        let Optimizer::Zero(opt) = &mut self.opt else {
            return Err(TrainError::Incompatible(
                "the sharded update needs training.zero stage 1 or 2".into(),
            ));
        };
        let collective = self.s.collective.as_mut();
        let mut grad = opt.reduce_gradients(collective)?;
        // The shard's squared norm, the loss sum and the stop flag, summed over
        // the ranks in one small exchange.
        let sums = Tensor::f_from_slice(&[
            ZeroAdamW::norm_sq(&grad)? as f32,
            local_sum as f32,
            if requested { 1.0 } else { 0.0 },
        ])?
        .f_to_device(device)?;
        collective.all_reduce_mean(&[sums.shallow_clone()])?;
        let norm = (sums.f_double_value(&[0])? * world).sqrt();
        let loss = sums.f_double_value(&[1])? * world / global_targets.max(1) as f64;
        let stop = sums.f_double_value(&[2])? > 0.0;
        diverged(step, loss)?;
        ZeroAdamW::clip(&mut grad, norm, max_norm)?;
        opt.update(&grad, lr, collective)?;
        Ok((loss, stop, norm))
    }

    /// Under ZeRO, every rank but 0 writes its optimizer shard into
    /// `<checkpoints>/.step-<n>.shards/` and all wait for each other; returns
    /// that directory, from which rank 0 takes the shards into the checkpoint.
    pub(super) fn stage_shard(&mut self) -> Result<Option<PathBuf>, TrainError> {
        let Optimizer::Zero(opt) = &self.opt else {
            return Ok(None);
        };
        let staged = self
            .s
            .checkpoints
            .root()
            .join(format!(".step-{}.shards", self.state.step));
        let rank = self.s.collective.rank();
        if rank != 0 {
            std::fs::create_dir_all(&staged)
                .map_err(TrainError::io(format!("create {}", staged.display())))?;
            let target = staged.join(zero_optimizer_file(rank));
            let partial = staged.join(format!(".rank-{rank}.partial"));
            opt.save(&partial)?;
            std::fs::rename(&partial, &target)
                .map_err(TrainError::io(format!("write {}", target.display())))?;
        }
        self.s.collective.barrier()?;
        Ok(Some(staged))
    }

    /// Restores the optimizer from the checkpoint in `dir`: directly when it
    /// was saved as this run keeps it, else reassembled from every rank's
    /// state and split again (another rank count, or another stage).
    pub(super) fn load_optimizer(
        &mut self,
        dir: &Path,
        state: &TrainerState,
    ) -> Result<(), String> {
        let (rank, world) = (self.s.collective.rank(), self.s.collective.world_size());
        let reshard = |to: u8| {
            tracing::info!(
                from_stage = state.zero_stage,
                from_ranks = state.world_size,
                to_stage = to,
                to_ranks = world,
                "reassembling the optimizer state for training.zero and this rank count"
            );
        };
        match &mut self.opt {
            Optimizer::Full(opt) if state.zero_stage == 0 => {
                opt.load(&dir.join(OPTIMIZER_FILE), state.step)
            }
            Optimizer::Full(opt) => {
                reshard(0);
                let len = opt.layout().iter().map(|(_, n)| n).sum();
                let full = zero::read_shards(dir, state.world_size, len, zero_optimizer_file)?;
                opt.load_full(&full, state.step)
            }
            Optimizer::Zero(opt) if state.zero_stage > 0 && state.world_size == world => {
                opt.load(&dir.join(zero_optimizer_file(rank)), state.step)
            }
            Optimizer::Zero(opt) => {
                reshard(opt.stage());
                let layout = opt.layout();
                let full = if state.zero_stage == 0 {
                    zero::read_unsharded(&dir.join(OPTIMIZER_FILE), &layout)?
                } else {
                    let len = layout.iter().map(|(_, n)| n).sum();
                    zero::read_shards(dir, state.world_size, len, zero_optimizer_file)?
                };
                opt.load_full(&full, state.step)
            }
        }
    }

    /// After a resume under ZeRO with fp32 masters (bf16 parameters): every
    /// rank's parameters from the gathered masters.
    pub(super) fn parameters_from_masters(&mut self) -> Result<(), TrainError> {
        if let Optimizer::Zero(opt) = &self.opt {
            opt.parameters_from_masters(self.s.collective.as_mut())?;
        }
        Ok(())
    }
}

/// Writes the optimizer state into the checkpoint being assembled in `dir`
/// (rank 0): stage 0's one file, or rank 0's shard and the other ranks' from
/// `staged`.
pub(super) fn save_optimizer(
    opt: &Optimizer,
    dir: &Path,
    staged: Option<&Path>,
    world: usize,
) -> Result<(), String> {
    let opt = match opt {
        Optimizer::Full(opt) => {
            return opt
                .save(&dir.join(OPTIMIZER_FILE))
                .map_err(|e| e.to_string());
        }
        Optimizer::Zero(opt) => opt,
    };
    opt.save(&dir.join(zero_optimizer_file(0)))
        .map_err(|e| e.to_string())?;
    let staged = staged.ok_or("the other ranks' optimizer shards were not staged")?;
    for rank in 1..world {
        let from = staged.join(zero_optimizer_file(rank));
        if !from.is_file() {
            return Err(format!(
                "rank {rank}'s optimizer shard (training.zero) is not in {}: with ZeRO every rank writes its shard into the checkpoint directory, which all ranks must share (a file:// output, or a pvc:// one on a ReadWriteMany claim when ranks run in several pods)",
                staged.display()
            ));
        }
        std::fs::rename(&from, dir.join(zero_optimizer_file(rank)))
            .map_err(|e| format!("cannot move {}: {e}", from.display()))?;
    }
    Ok(())
}
