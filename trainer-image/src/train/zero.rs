//! ZeRO stages 1 and 2 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward
//! Training Trillion Parameter Models"): AdamW whose state is sharded over the
//! data-parallel ranks.
//!
//! The trainable parameters, in the order of [`super::optimizer::AdamW`] (by
//! name), are seen as one flat fp32 buffer split into [`Shards`]. Each rank keeps
//! the AdamW moments (and, for reduced-precision parameters, the fp32 master
//! weights) of its shard only, so its optimizer state is `1 / world` of plain
//! data parallelism's (plus at most `world - 1` padding values). One step:
//!
//! 1. the averaged gradient of this rank's shard: stage 1 all-reduces the full
//!    gradients as stage 0 does and keeps its slice; stage 2 reduce-scatters
//!    them, so only the shard of the average ever reaches this rank;
//! 2. the global gradient norm from each shard's squared norm, summed over the
//!    ranks (one small all-reduce that also carries the loss and the stop flag),
//!    and clipping of the shard with it;
//! 3. AdamW on the shard, element for element the arithmetic of the unsharded
//!    optimizer;
//! 4. an all-gather of the updated shards into every rank's parameters.
//!
//! Stage 2 and autograd: `tch` cannot release a parameter's `.grad` (it binds no
//! setter), so stage 2 does not accumulate there. Its backward passes use
//! `run_backward`, which hands the gradients back instead of storing them, and
//! this module sums them over the micro-steps itself; after the reduce-scatter
//! those full-size buffers are dropped. What that saves: the full gradients do
//! not live from one step's reduce-scatter to the next step's backward (through
//! the update, the all-gather and the next forward pass, where activations
//! peak), which stage 0 and 1 keep allocated. What it does not: during the
//! backward passes of a step the full gradients exist on every rank, as they
//! do in stage 1 — the gradient is not reduce-scattered bucket by bucket while
//! backward runs, as DeepSpeed's stage 2 does.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use tch::{Kind, Tensor, nn};

use super::distributed::{Collective, CollectiveError, Shards};
use super::optimizer::AdamWConfig;

/// A piece of one parameter inside this rank's shard.
#[derive(Clone, Copy, Debug)]
struct Segment {
    param: usize,
    /// Offset in the flattened parameter.
    from: usize,
    /// Offset in the shard.
    at: usize,
    len: usize,
}

/// The optimizer state of every rank, reassembled (unpadded, in parameter
/// order), for resuming with another rank count or stage.
pub struct FullState {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// fp32 master weights, when the checkpoint has them.
    pub master: Option<Tensor>,
}

/// AdamW over this rank's shard of the parameters.
pub struct ZeroAdamW {
    config: AdamWConfig,
    stage: u8,
    rank: usize,
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Where each parameter starts in the flat buffer.
    offsets: Vec<usize>,
    shards: Shards,
    segments: Vec<Segment>,
    /// Shard ranges of parameters that decay (matrices and embeddings).
    decay: Vec<Range<usize>>,
    /// fp32 masters of the shard, when the parameters are not fp32; for fp32
    /// parameters the shard's values are read from the parameters each step.
    master: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Stage 2: gradients summed over this step's micro-steps, outside `.grad`.
    grads: Vec<Tensor>,
    step: i64,
}

impl ZeroAdamW {
    /// Stage `stage` (1 or 2) for `rank` of `world` over the trainable
    /// variables of `vs`.
    pub fn new(
        vs: &nn::VarStore,
        config: AdamWConfig,
        stage: u8,
        rank: usize,
        world: usize,
    ) -> Result<Self, tch::TchError> {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, params): (Vec<String>, Vec<Tensor>) = vars.into_iter().unzip();
        let mut offsets = Vec::with_capacity(params.len());
        let mut len = 0;
        for p in &params {
            offsets.push(len);
            len += p.numel();
        }
        let shards = Shards::new(len, world);
        let mine = shards.real(rank);
        let mut segments = Vec::new();
        let mut decay = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let (start, end) = (offsets[i], offsets[i] + p.numel());
            let (lo, hi) = (start.max(mine.start), end.min(mine.end));
            if lo >= hi {
                continue;
            }
            let segment = Segment {
                param: i,
                from: lo - start,
                at: lo - mine.start,
                len: hi - lo,
            };
            // As the unsharded optimizer: norms and biases (1-D) do not decay.
            if p.dim() >= 2 {
                decay.push(segment.at..segment.at + segment.len);
            }
            segments.push(segment);
        }
        let device = vs.device();
        let options = (Kind::Float, device);
        let mut opt = Self {
            config,
            stage,
            rank,
            names,
            offsets,
            shards,
            segments,
            decay,
            master: None,
            exp_avg: Tensor::f_zeros([shards.shard as i64], options)?,
            exp_avg_sq: Tensor::f_zeros([shards.shard as i64], options)?,
            grads: Vec::new(),
            step: 0,
            params,
        };
        if opt.params.iter().any(|p| p.kind() != Kind::Float) {
            opt.master = Some(opt.shard_values()?);
        }
        Ok(opt)
    }

    pub fn stage(&self) -> u8 {
        self.stage
    }

    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// The parameters in a fixed order (by name).
    pub fn parameters(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter()
    }

    /// Bytes of optimizer state this rank holds: moments and masters of its
    /// shard (gradients and transient buffers are not state).
    pub fn state_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        bytes(&self.exp_avg) + bytes(&self.exp_avg_sq) + self.master.as_ref().map_or(0, bytes)
    }

    /// Clears accumulated gradients: stage 1 zeroes `.grad` as AdamW does,
    /// stage 2 drops its own buffers.
    pub fn zero_grad(&mut self) {
        self.grads.clear();
        for p in &self.params {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    /// Backward from `loss`: into `.grad` for stage 1, into this optimizer's
    /// own buffers for stage 2 (see the module's notes).
    pub fn backward(&mut self, loss: &Tensor) -> Result<(), tch::TchError> {
        if self.stage < 2 {
            return loss.f_backward();
        }
        let grads = Tensor::f_run_backward(&[loss], &self.params, false, false)?;
        if self.grads.is_empty() {
            self.grads = grads;
            return Ok(());
        }
        tch::no_grad(|| {
            for (sum, g) in self.grads.iter_mut().zip(grads) {
                if !g.defined() {
                    continue;
                }
                if sum.defined() {
                    let _ = sum.f_add_(&g)?;
                } else {
                    *sum = g;
                }
            }
            Ok(())
        })
    }

    /// The gradient of this rank's shard, averaged over the ranks.
    pub fn reduce_gradients(
        &mut self,
        collective: &mut dyn Collective,
    ) -> Result<Tensor, CollectiveError> {
        if self.stage < 2 {
            let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
            collective.all_reduce_mean(&grads)?;
            let flat = self.shards.pad(&self.flat(&grads)?)?;
            let shard = flat.f_narrow(
                0,
                self.shards.start(self.rank) as i64,
                self.shards.shard as i64,
            )?;
            return Ok(shard.f_contiguous()?.f_detach_copy()?);
        }
        let grads = std::mem::take(&mut self.grads);
        let flat = self.shards.pad(&self.flat(&grads)?)?;
        drop(grads);
        collective.reduce_scatter_mean(&flat)
    }

    /// `tensors` (one per parameter, undefined meaning zero) as one flat fp32
    /// tensor on the parameters' device.
    fn flat(&self, tensors: &[Tensor]) -> Result<Tensor, tch::TchError> {
        let parts: Vec<Tensor> = tensors
            .iter()
            .zip(&self.params)
            .map(|(t, p)| {
                if t.defined() {
                    t.f_detach()?.f_to_kind(Kind::Float)?.f_reshape([-1])
                } else {
                    Tensor::f_zeros([p.numel() as i64], (Kind::Float, p.device()))
                }
            })
            .collect::<Result<_, _>>()?;
        if parts.is_empty() {
            return Tensor::f_zeros([0], (Kind::Float, self.exp_avg.device()));
        }
        Tensor::f_cat(&parts, 0)
    }

    /// The squared L2 norm of a gradient shard (padding is zero).
    pub fn norm_sq(grad: &Tensor) -> Result<f64, tch::TchError> {
        grad.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])
    }

    /// Scales `grad` down to `max_norm` when the global norm `total` is above it
    /// (as `clip_grad_norm_`); `max_norm == 0` does nothing.
    pub fn clip(grad: &mut Tensor, total: f64, max_norm: f64) -> Result<(), tch::TchError> {
        let coef = max_norm / (total + 1e-6);
        if max_norm > 0.0 && coef < 1.0 {
            let _ = grad.f_mul_scalar_(coef)?;
        }
        Ok(())
    }

    /// The fp32 values of this rank's shard, read from the parameters.
    fn shard_values(&self) -> Result<Tensor, tch::TchError> {
        let device = self.exp_avg.device();
        let out = Tensor::f_zeros([self.shards.shard as i64], (Kind::Float, device))?;
        tch::no_grad(|| {
            for s in &self.segments {
                let part = self.params[s.param].f_detach()?.f_reshape([-1])?.f_narrow(
                    0,
                    s.from as i64,
                    s.len as i64,
                )?;
                out.f_narrow(0, s.at as i64, s.len as i64)?.f_copy_(&part)?;
            }
            Ok::<_, tch::TchError>(())
        })?;
        Ok(out)
    }

    /// One AdamW update of this rank's shard with the (clipped) averaged
    /// gradient `grad`, then every rank's parameters from the gathered shards.
    pub fn update(
        &mut self,
        grad: &Tensor,
        lr: f64,
        collective: &mut dyn Collective,
    ) -> Result<(), CollectiveError> {
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let bias1 = 1.0 - beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - beta2.powi(self.step as i32)).sqrt();
        let mut value = match &self.master {
            Some(master) => master.shallow_clone(),
            None => self.shard_values()?,
        };
        tch::no_grad(|| {
            // The unsharded optimizer's arithmetic, per element (see
            // `AdamW::update` for the folded addcdiv_).
            if weight_decay > 0.0 {
                for r in &self.decay {
                    let _ = value
                        .f_narrow(0, r.start as i64, r.len() as i64)?
                        .f_mul_scalar_(1.0 - lr * weight_decay)?;
                }
            }
            let _ = self.exp_avg.f_lerp_(grad, 1.0 - beta1)?;
            let _ = self
                .exp_avg_sq
                .f_mul_scalar_(beta2)?
                .f_addcmul_(grad, &grad.f_mul_scalar(1.0 - beta2)?)?;
            if lr != 0.0 {
                let mut denom = self
                    .exp_avg_sq
                    .f_sqrt()?
                    .f_div_scalar_(bias2_sqrt)?
                    .f_add_scalar_(eps)?;
                let _ = denom.f_mul_scalar_(-bias1 / lr)?;
                let _ = value.f_addcdiv_(&self.exp_avg, &denom)?;
            }
            Ok::<_, tch::TchError>(())
        })?;
        self.gather_into_parameters(&value, collective)
    }

    /// Every rank's shard `value` gathered and written into the parameters.
    fn gather_into_parameters(
        &self,
        value: &Tensor,
        collective: &mut dyn Collective,
    ) -> Result<(), CollectiveError> {
        let full = collective.all_gather(value)?;
        tch::no_grad(|| {
            for (p, &offset) in self.params.iter().zip(&self.offsets) {
                let part = full
                    .f_narrow(0, offset as i64, p.numel() as i64)?
                    .f_view(p.size().as_slice())?;
                p.shallow_clone().f_copy_(&part)?;
            }
            Ok::<_, tch::TchError>(())
        })?;
        Ok(())
    }

    /// After loading masters: every rank's parameters from them (a checkpoint's
    /// weights are the masters rounded).
    pub fn parameters_from_masters(
        &self,
        collective: &mut dyn Collective,
    ) -> Result<(), CollectiveError> {
        match &self.master {
            Some(master) => self.gather_into_parameters(master, collective),
            None => Ok(()),
        }
    }

    /// Writes this rank's shard: `exp_avg`, `exp_avg_sq` and any `master`, each
    /// a flat fp32 tensor of the padded shard length.
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        let mut named = vec![
            ("exp_avg".to_string(), self.exp_avg.shallow_clone()),
            ("exp_avg_sq".to_string(), self.exp_avg_sq.shallow_clone()),
        ];
        if let Some(master) = &self.master {
            named.push(("master".to_string(), master.shallow_clone()));
        }
        Tensor::write_safetensors(&named, path)
    }

    /// Restores this rank's shard written by [`ZeroAdamW::save`] with the same
    /// rank count, and the step count.
    pub fn load(&mut self, path: &Path, step: i64) -> Result<(), String> {
        let mut saved = read(path)?;
        let shard = self.shards.shard as i64;
        for (key, slot) in [
            ("exp_avg", &mut self.exp_avg),
            ("exp_avg_sq", &mut self.exp_avg_sq),
        ] {
            let t = saved
                .remove(key)
                .ok_or_else(|| format!("{} has no {key}", path.display()))?;
            if t.size() != [shard] {
                return Err(format!(
                    "{} holds a shard of {:?} values, this rank's is {shard}",
                    path.display(),
                    t.size()
                ));
            }
            slot.f_copy_(&t).map_err(|e| e.to_string())?;
        }
        if let (Some(master), Some(t)) = (&mut self.master, saved.remove("master")) {
            master.f_copy_(&t).map_err(|e| e.to_string())?;
        }
        self.step = step;
        Ok(())
    }

    /// Restores this rank's shard from the state of every rank reassembled
    /// (another rank count or stage), and the step count.
    pub fn load_full(&mut self, full: &FullState, step: i64) -> Result<(), String> {
        let (shards, rank, device) = (self.shards, self.rank, self.exp_avg.device());
        let shard = |t: &Tensor| -> Result<Tensor, String> {
            if t.numel() != shards.len {
                return Err(format!(
                    "the optimizer state has {} values, the model's parameters {}",
                    t.numel(),
                    shards.len
                ));
            }
            let padded = shards
                .pad(&t.f_to_device(device).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            padded
                .f_narrow(0, shards.start(rank) as i64, shards.shard as i64)
                .map_err(|e| e.to_string())
        };
        self.exp_avg
            .f_copy_(&shard(&full.exp_avg)?)
            .map_err(|e| e.to_string())?;
        self.exp_avg_sq
            .f_copy_(&shard(&full.exp_avg_sq)?)
            .map_err(|e| e.to_string())?;
        if let (Some(master), Some(saved)) = (&mut self.master, &full.master) {
            master.f_copy_(&shard(saved)?).map_err(|e| e.to_string())?;
        }
        self.step = step;
        Ok(())
    }

    /// The parameters' names and sizes, in flat order.
    pub fn layout(&self) -> Vec<(String, usize)> {
        self.names
            .iter()
            .cloned()
            .zip(self.params.iter().map(Tensor::numel))
            .collect()
    }
}

fn read(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    Ok(Tensor::read_safetensors(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .into_iter()
        .collect())
}

/// The state of a stage-1/2 checkpoint of `world` ranks, reassembled from its
/// per-rank files `file(rank)` in `dir` and cut to `len` values.
pub fn read_shards(
    dir: &Path,
    world: usize,
    len: usize,
    file: impl Fn(usize) -> String,
) -> Result<FullState, String> {
    let mut parts: HashMap<&str, Vec<Tensor>> = HashMap::new();
    let mut masters = true;
    for rank in 0..world {
        let path = dir.join(file(rank));
        let mut saved = read(&path)?;
        for key in ["exp_avg", "exp_avg_sq"] {
            let t = saved
                .remove(key)
                .ok_or_else(|| format!("{} has no {key}", path.display()))?;
            parts.entry(key).or_default().push(t);
        }
        match saved.remove("master") {
            Some(t) => parts.entry("master").or_default().push(t),
            None => masters = false,
        }
    }
    let join = |key: &str| -> Result<Tensor, String> {
        let all = Tensor::f_cat(&parts[key], 0).map_err(|e| e.to_string())?;
        if all.numel() < len {
            return Err(format!(
                "the {world} optimizer shards hold {} values, the model's parameters {len}",
                all.numel()
            ));
        }
        all.f_narrow(0, 0, len as i64).map_err(|e| e.to_string())
    };
    Ok(FullState {
        exp_avg: join("exp_avg")?,
        exp_avg_sq: join("exp_avg_sq")?,
        master: if masters && world > 0 {
            Some(join("master")?)
        } else {
            None
        },
    })
}

/// The state of an unsharded checkpoint (`AdamW::save`'s per-parameter
/// tensors) flattened in the order of `layout`.
pub fn read_unsharded(path: &Path, layout: &[(String, usize)]) -> Result<FullState, String> {
    let saved = read(path)?;
    let join = |prefix: &str| -> Result<Option<Tensor>, String> {
        let mut parts = Vec::with_capacity(layout.len());
        for (name, numel) in layout {
            let key = format!("{prefix}.{name}");
            let Some(t) = saved.get(&key) else {
                return Ok(None);
            };
            if t.numel() != *numel {
                return Err(format!(
                    "optimizer state {key} has {} values, the model needs {numel}",
                    t.numel()
                ));
            }
            parts.push(t.f_reshape([-1]).map_err(|e| e.to_string())?);
        }
        Tensor::f_cat(&parts, 0)
            .map(Some)
            .map_err(|e| e.to_string())
    };
    let missing = |prefix: &str| format!("{} has no {prefix}.* tensors", path.display());
    Ok(FullState {
        exp_avg: join("exp_avg")?.ok_or_else(|| missing("exp_avg"))?,
        exp_avg_sq: join("exp_avg_sq")?.ok_or_else(|| missing("exp_avg_sq"))?,
        master: join("master")?,
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Duration;

    use tch::Device;

    use super::*;
    use crate::train::distributed::TcpCollective;
    use crate::train::optimizer::AdamW;

    const CONFIG: AdamWConfig = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };

    /// A matrix that decays and a bias that does not: 15 + 8 = 23 values, an
    /// odd count, so the second of two shards ends in one padding value.
    fn store(bf16: bool) -> (nn::VarStore, Tensor, Tensor) {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var_copy(
            "w",
            &Tensor::linspace(-1.0, 1.0, 15, (Kind::Float, Device::Cpu)).view([3, 5]),
        );
        let b = vs.root().var_copy(
            "b",
            &Tensor::linspace(0.5, 2.0, 8, (Kind::Float, Device::Cpu)),
        );
        if bf16 {
            vs.bfloat16();
        }
        (vs, w, b)
    }

    /// The same loss on every rank, so the mean gradient is each rank's.
    fn loss(w: &Tensor, b: &Tensor, step: usize) -> Tensor {
        let scale = 1.0 + step as f64;
        (w.to_kind(Kind::Float).square() * scale).sum(Kind::Float)
            + (b.to_kind(Kind::Float) * -3.0).sum(Kind::Float)
    }

    const STEPS: usize = 3;
    const CLIP: f64 = 2.0;

    /// Plain AdamW with clipping on one process: the weights after STEPS and
    /// the state bytes.
    fn unsharded(bf16: bool) -> (Vec<f32>, usize) {
        let (vs, w, b) = store(bf16);
        let mut opt = AdamW::new(&vs, CONFIG).unwrap();
        for step in 0..STEPS {
            opt.zero_grad();
            loss(&w, &b, step).backward();
            opt.clip_grad_norm(CLIP).unwrap();
            opt.update(0.05).unwrap();
        }
        let weights = crate::train::distributed::flatten(&[b, w]).unwrap();
        (weights, opt.state_bytes())
    }

    /// Each of two ranks with `stage`: the weights after STEPS and its state
    /// bytes.
    fn sharded(stage: u8, bf16: bool) -> Vec<(Vec<f32>, usize)> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut c =
                        TcpCollective::connect(rank, 2, &addr, Duration::from_secs(20)).unwrap();
                    let (vs, w, b) = store(bf16);
                    let mut opt = ZeroAdamW::new(&vs, CONFIG, stage, rank, 2).unwrap();
                    for step in 0..STEPS {
                        opt.zero_grad();
                        opt.backward(&loss(&w, &b, step)).unwrap();
                        let mut grad = opt.reduce_gradients(&mut c).unwrap();
                        let sq = Tensor::from_slice(&[ZeroAdamW::norm_sq(&grad).unwrap() as f32]);
                        c.all_reduce_mean(&[sq.shallow_clone()]).unwrap();
                        let norm = (2.0 * sq.double_value(&[0])).sqrt();
                        ZeroAdamW::clip(&mut grad, norm, CLIP).unwrap();
                        opt.update(&grad, 0.05, &mut c).unwrap();
                    }
                    let weights = crate::train::distributed::flatten(&[b, w]).unwrap();
                    (weights, opt.state_bytes())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Two ranks with ZeRO-1 or ZeRO-2 end with one process's weights, each
    /// holding half of its optimizer state (plus one padding value per
    /// tensor), for fp32 parameters and for bf16 ones with fp32 masters.
    #[test]
    fn two_ranks_hold_half_the_state_and_update_as_one() {
        for bf16 in [false, true] {
            let (expected, full_bytes) = unsharded(bf16);
            // Moments, and masters for bf16: 4 bytes per value each.
            let tensors = if bf16 { 3 } else { 2 };
            assert_eq!(full_bytes, tensors * 4 * 23);
            for stage in [1, 2] {
                for (rank, (weights, bytes)) in sharded(stage, bf16).into_iter().enumerate() {
                    let worst = weights
                        .iter()
                        .zip(&expected)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    // bf16: the unsharded optimizer clips the bf16 gradients
                    // in place (rounded to bf16), the sharded one its fp32
                    // shard, so the weights may differ by a bf16 step (2^-7
                    // at |w| < 2).
                    let tolerance = if bf16 { 2f32.powi(-7) } else { 1e-6 };
                    assert!(
                        worst < tolerance,
                        "stage {stage} bf16 {bf16} rank {rank}: weights differ by {worst}"
                    );
                    // 12 of the 24 padded values: half of 23, rounded up.
                    assert_eq!(
                        2 * bytes,
                        full_bytes + tensors * 4,
                        "stage {stage} rank {rank}"
                    );
                }
            }
        }
    }

    /// Moments reassembled from the shards of two ranks split again for one
    /// rank hold the same values.
    #[test]
    fn shards_reassemble_for_another_rank_count() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, w, b) = store(false);
        let mut parts = Vec::new();
        for rank in 0..2 {
            let mut opt = ZeroAdamW::new(&vs, CONFIG, 2, rank, 2).unwrap();
            let shards = opt.shards;
            let values = Tensor::arange(shards.padded() as i64, (Kind::Float, Device::Cpu));
            let mine = values.narrow(0, shards.start(rank) as i64, shards.shard as i64);
            opt.exp_avg.copy_(&mine);
            opt.exp_avg_sq.copy_(&(&mine * 2.0));
            opt.save(&dir.path().join(format!("r{rank}"))).unwrap();
            parts.push(opt);
        }
        let full = read_shards(dir.path(), 2, 23, |r| format!("r{r}")).unwrap();
        assert_eq!(full.exp_avg.numel(), 23, "the padding is cut");
        let mut one = ZeroAdamW::new(&vs, CONFIG, 1, 0, 1).unwrap();
        one.load_full(&full, 7).unwrap();
        let expected = Tensor::arange(23, (Kind::Float, Device::Cpu));
        assert_eq!(one.exp_avg, expected);
        assert_eq!(one.exp_avg_sq, &expected * 2.0);
        assert_eq!(one.step_count(), 7);
        let mut plain = AdamW::new(&vs, CONFIG).unwrap();
        plain.load_full(&full, 7).unwrap();
        // A shard of another model's size is refused, naming both sizes.
        drop((w, b));
        let other = nn::VarStore::new(Device::Cpu);
        let _ = other.root().var("x", &[4], nn::Init::Const(0.0));
        let mut small = ZeroAdamW::new(&other, CONFIG, 1, 0, 2).unwrap();
        let err = small.load_full(&full, 7).unwrap_err();
        assert!(
            err.contains("23 values") && err.contains("parameters 4"),
            "{err}"
        );
    }
}
