//! AdamW with decoupled weight decay (Loshchilov & Hutter), written out over the
//! `VarStore`'s tensors so that its moments can be checkpointed and restored
//! exactly and the update matches `torch.optim.AdamW` step for step.
//!
//! Parameters stored in a reduced precision (bf16 training) get fp32 master
//! copies: moments and updates are computed in fp32 on the masters, which are
//! then rounded into the model, so small updates are not lost to bf16 rounding.

use std::collections::HashMap;
use std::path::Path;

use tch::{Kind, Tensor, nn};

/// Hyperparameters other than the learning rate (which the schedule supplies).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

struct Param {
    name: String,
    value: Tensor,
    /// fp32 copy of a reduced-precision `value`; the optimizer updates this.
    master: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Matrices and embeddings decay; norms and biases (1-D) do not, since
    /// shrinking a gain or an offset toward zero only hurts.
    decay: bool,
}

/// AdamW over every trainable variable of a store.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    /// Updates applied so far (drives bias correction).
    step: i64,
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, config: AdamWConfig) -> Result<Self, tch::TchError> {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, value)| {
                let master = match value.kind() {
                    Kind::Float => None,
                    _ => Some(value.f_detach()?.f_to_kind(Kind::Float)?),
                };
                let like = master.as_ref().unwrap_or(&value);
                Ok(Param {
                    exp_avg: like.f_zeros_like()?,
                    exp_avg_sq: like.f_zeros_like()?,
                    decay: value.dim() >= 2,
                    name,
                    value,
                    master,
                })
            })
            .collect::<Result<_, tch::TchError>>()?;
        Ok(Self {
            config,
            params,
            step: 0,
        })
    }

    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// The parameters in a fixed order (by name), for flattening gradients.
    pub fn parameters(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|p| &p.value)
    }

    /// Bytes of optimizer state: the moments and any fp32 masters.
    pub fn state_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        self.params
            .iter()
            .map(|p| bytes(&p.exp_avg) + bytes(&p.exp_avg_sq) + p.master.as_ref().map_or(0, bytes))
            .sum()
    }

    /// The parameters' names and sizes, in order.
    pub fn layout(&self) -> Vec<(String, usize)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.value.numel()))
            .collect()
    }

    /// Restores the state of a sharded (ZeRO) checkpoint reassembled into one
    /// flat buffer per tensor, in the order of [`AdamW::layout`].
    pub fn load_full(&mut self, full: &super::zero::FullState, step: i64) -> Result<(), String> {
        let total: usize = self.params.iter().map(|p| p.value.numel()).sum();
        if full.exp_avg.numel() != total {
            return Err(format!(
                "the optimizer state has {} values, the model's parameters {total}",
                full.exp_avg.numel()
            ));
        }
        let mut offset = 0i64;
        let err = |e: tch::TchError| e.to_string();
        for p in &mut self.params {
            let n = p.value.numel() as i64;
            let part = |t: &Tensor| -> Result<Tensor, tch::TchError> {
                t.f_narrow(0, offset, n)?.f_view(p.value.size().as_slice())
            };
            p.exp_avg
                .f_copy_(&part(&full.exp_avg).map_err(err)?)
                .map_err(err)?;
            p.exp_avg_sq
                .f_copy_(&part(&full.exp_avg_sq).map_err(err)?)
                .map_err(err)?;
            if let Some(master) = &mut p.master {
                match &full.master {
                    Some(saved) => {
                        master.f_copy_(&part(saved).map_err(err)?).map_err(err)?;
                        tch::no_grad(|| p.value.shallow_clone().f_copy_(master)).map_err(err)?;
                    }
                    None => {
                        let value = p.value.f_to_kind(Kind::Float).map_err(err)?;
                        master.f_copy_(&value).map_err(err)?;
                    }
                }
            }
            offset += n;
        }
        self.step = step;
        Ok(())
    }

    /// Clears accumulated gradients.
    pub fn zero_grad(&self) {
        for p in &self.params {
            let mut grad = p.value.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    /// Global L2 norm of the gradients; scales them down to `max_norm` when above
    /// (as `clip_grad_norm_`). `max_norm == 0` only measures.
    pub fn clip_grad_norm(&self, max_norm: f64) -> Result<f64, tch::TchError> {
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.value.grad())
            .filter(Tensor::defined)
            .map(|g| g.f_to_kind(Kind::Float)?.f_norm())
            .collect::<Result<_, _>>()?;
        if norms.is_empty() {
            return Ok(0.0);
        }
        let total = Tensor::f_stack(&norms, 0)?.f_norm()?.f_double_value(&[])?;
        let coef = max_norm / (total + 1e-6);
        if max_norm > 0.0 && coef < 1.0 {
            for p in &self.params {
                let mut grad = p.value.grad();
                if grad.defined() {
                    let _ = grad.f_mul_scalar_(coef)?;
                }
            }
        }
        Ok(total)
    }

    /// Applies one update with learning rate `lr`.
    pub fn update(&mut self, lr: f64) -> Result<(), tch::TchError> {
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let bias1 = 1.0 - beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - beta2.powi(self.step as i32)).sqrt();
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.value.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = match &p.master {
                    Some(_) => grad.f_to_kind(Kind::Float)?,
                    None => grad,
                };
                let mut value = p.master.as_ref().unwrap_or(&p.value).shallow_clone();
                if p.decay && weight_decay > 0.0 {
                    let _ = value.f_mul_scalar_(1.0 - lr * weight_decay)?;
                }
                let _ = p.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
                let _ = p
                    .exp_avg_sq
                    .f_mul_scalar_(beta2)?
                    .f_addcmul_(&grad, &grad.f_mul_scalar(1.0 - beta2)?)?;
                if lr == 0.0 {
                    continue;
                }
                // p -= lr/bias1 · m / (√v/√bias2 + eps), folded into one addcdiv_
                // by giving the denominator the factor -bias1/lr.
                let mut denom = p
                    .exp_avg_sq
                    .f_sqrt()?
                    .f_div_scalar_(bias2_sqrt)?
                    .f_add_scalar_(eps)?;
                let _ = denom.f_mul_scalar_(-bias1 / lr)?;
                let _ = value.f_addcdiv_(&p.exp_avg, &denom)?;
                if p.master.is_some() {
                    p.value.shallow_clone().f_copy_(&value)?;
                }
            }
            Ok(())
        })
    }

    /// Writes the moments (`exp_avg.<param>`, `exp_avg_sq.<param>`) and any fp32
    /// masters (`master.<param>`) to a safetensors file; the step count goes into
    /// the checkpoint's state.
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        let mut named = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            named.push((
                format!("exp_avg.{}", p.name),
                p.exp_avg.f_to_kind(Kind::Float)?,
            ));
            named.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.f_to_kind(Kind::Float)?,
            ));
            if let Some(master) = &p.master {
                named.push((format!("master.{}", p.name), master.shallow_clone()));
            }
        }
        Tensor::write_safetensors(&named, path)
    }

    /// Restores moments written by [`AdamW::save`] and the step count.
    pub fn load(&mut self, path: &Path, step: i64) -> Result<(), String> {
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        for p in &mut self.params {
            for (prefix, slot) in [
                ("exp_avg", &mut p.exp_avg),
                ("exp_avg_sq", &mut p.exp_avg_sq),
            ] {
                let key = format!("{prefix}.{}", p.name);
                let saved = tensors
                    .get(&key)
                    .ok_or_else(|| format!("optimizer state has no {key}"))?;
                if saved.size() != slot.size() {
                    return Err(format!(
                        "optimizer state {key} has shape {:?}, the model needs {:?}",
                        saved.size(),
                        slot.size()
                    ));
                }
                slot.f_copy_(saved).map_err(|e| e.to_string())?;
            }
            if let Some(master) = &mut p.master {
                let key = format!("master.{}", p.name);
                match tensors.get(&key) {
                    Some(saved) => {
                        master.f_copy_(saved).map_err(|e| e.to_string())?;
                        tch::no_grad(|| p.value.shallow_clone().f_copy_(master))
                            .map_err(|e| e.to_string())?;
                    }
                    // Written by an fp32 run: the loaded weights are the masters.
                    None => {
                        let value = p.value.f_to_kind(Kind::Float).map_err(|e| e.to_string())?;
                        master.f_copy_(&value).map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// One hand-computed AdamW step with decay on a matrix and none on a bias.
    #[test]
    fn matches_the_adamw_formula() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[1, 2], nn::Init::Const(1.0));
        let b = vs.root().var("b", &[1], nn::Init::Const(1.0));
        let config = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(&vs, config).unwrap();
        let loss = (&w * 2.0).sum(Kind::Float) + (&b * -3.0).sum(Kind::Float);
        loss.backward();
        opt.update(0.01).unwrap();
        // First step: m̂ = g, v̂ = g², so the step is lr·sign(g) (up to eps).
        let w_expected = 1.0 * (1.0 - 0.01 * 0.1) - 0.01;
        assert!((w.double_value(&[0, 0]) - w_expected).abs() < 1e-6);
        assert!(
            (b.double_value(&[0]) - 1.01).abs() < 1e-6,
            "no decay on 1-D"
        );
        assert_eq!(opt.step_count(), 1);
    }

    /// bf16 parameters are updated through fp32 masters: an update far below
    /// bf16's resolution accumulates instead of vanishing.
    #[test]
    fn bf16_parameters_keep_fp32_masters() {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[4, 4], nn::Init::Const(1.0));
        vs.bfloat16();
        assert_eq!(w.kind(), Kind::BFloat16);
        let config = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = AdamW::new(&vs, config).unwrap();
        for _ in 0..10 {
            opt.zero_grad();
            w.sum(Kind::Float).backward();
            opt.update(1e-3).unwrap();
        }
        // Ten steps of 1e-3 down from 1.0: in bf16 alone (spacing 2^-8 just
        // below 1) each step would round back to 1.0.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        opt.save(&path).unwrap();
        let saved: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
            .unwrap()
            .into_iter()
            .collect();
        let master = saved["master.w"].double_value(&[0, 0]);
        assert!((master - 0.99).abs() < 1e-5, "master {master}");
        assert!(
            w.double_value(&[0, 0]) < 1.0,
            "the model follows its master"
        );
    }

    #[test]
    fn clips_the_global_norm() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2], nn::Init::Const(0.0));
        let opt = AdamW::new(
            &vs,
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.0,
            },
        )
        .unwrap();
        (&w * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let norm = opt.clip_grad_norm(1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let clipped = w.grad();
        assert!((clipped.double_value(&[0]) - 0.6).abs() < 1e-5);
        assert!((clipped.double_value(&[1]) - 0.8).abs() < 1e-5);
    }
}
