//! Low-rank adaptation (LoRA): trainable `B·A` updates beside frozen
//! projections, merged into the weights for export.
//!
//! Adapter tensors are variables of the model's `VarStore`, named after their
//! projection as PEFT names them (`model.layers.0.self_attn.q_proj.lora_A.weight`
//! `[rank, in]`, `….lora_B.weight` `[out, rank]`), so optimisers and checkpoints
//! see them like any parameter. They are not part of the Hugging Face model
//! layout: [`crate::io::save`] leaves them out (merge them first with
//! [`Model::merge_lora`]), while checkpoints keep them in their own file
//! ([`crate::io::ADAPTERS_FILE`]).

use tch::{Kind, nn};

use crate::error::{Error, Result};
use crate::layers::{LoraAdapter, WeightLayout};
use crate::model::Model;

/// What marks an adapter variable's name.
const MARKER: &str = ".lora_";

/// Whether a `VarStore` variable is a LoRA adapter tensor.
pub fn is_adapter(name: &str) -> bool {
    name.contains(MARKER)
}

/// How adapters are added.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSettings {
    pub rank: i64,
    /// Updates are scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input, in training.
    pub dropout: f64,
    /// Projection names (`q_proj`, `c_attn`, ...) that get an adapter.
    pub targets: Vec<String>,
}

impl Model {
    /// Freezes every parameter in `vs` and adds a trainable adapter to each
    /// projection named in `settings.targets`. `A` starts as PEFT's default
    /// (Kaiming-uniform), `B` at zero, so the model's output is unchanged until
    /// training moves `B`. Returns the adapted projections' full names; a target
    /// that names no projection of this model is an error.
    pub fn add_lora(&mut self, vs: &nn::VarStore, settings: &LoraSettings) -> Result<Vec<String>> {
        if settings.rank < 1 {
            return Err(Error::InvalidInput(format!(
                "LoRA rank must be at least 1, got {}",
                settings.rank
            )));
        }
        for (_, var) in vs.variables() {
            let _ = var.shallow_clone().set_requires_grad(false);
        }
        let scale = settings.alpha / settings.rank as f64;
        let mut adapted = Vec::new();
        for (name, linear) in self.linears_mut() {
            let short = name.rsplit('.').next().unwrap_or_default();
            if !settings.targets.iter().any(|t| t == short) {
                continue;
            }
            let path = name.split('.').fold(vs.root(), |p, part| p / part);
            let (inputs, outputs) = (linear.in_features(), linear.out_features());
            // Kaiming-uniform with a = sqrt(5), as torch.nn.Linear and PEFT do.
            let bound = 1.0 / (inputs as f64).sqrt();
            let a = (&path / "lora_A").f_var(
                "weight",
                &[settings.rank, inputs],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?;
            let b = (&path / "lora_B").f_var(
                "weight",
                &[outputs, settings.rank],
                nn::Init::Const(0.0),
            )?;
            linear.lora = Some(LoraAdapter {
                a,
                b,
                scale,
                dropout: settings.dropout,
            });
            adapted.push(name);
        }
        for target in &settings.targets {
            if !adapted.iter().any(|n| n.ends_with(&format!(".{target}"))) {
                return Err(Error::InvalidInput(format!(
                    "LoRA target {target} names no projection of this {:?} model",
                    self.config().family
                )));
            }
        }
        Ok(adapted)
    }

    /// Folds every adapter into its projection's weight (`W += scale·B·A`) and
    /// removes it, leaving a plain model that computes the same function.
    pub fn merge_lora(&mut self) -> Result<()> {
        for (_, linear) in self.linears_mut() {
            let Some(lora) = linear.lora.take() else {
                continue;
            };
            let delta = lora
                .b
                .f_to_kind(Kind::Float)?
                .f_matmul(&lora.a.f_to_kind(Kind::Float)?)?
                .f_mul_scalar(lora.scale)?;
            let delta = match linear.layout {
                WeightLayout::OutIn => delta,
                WeightLayout::InOut => delta.f_tr()?,
            };
            let merged = linear
                .weight
                .f_to_kind(Kind::Float)?
                .f_add(&delta)?
                .f_to_kind(linear.weight.kind())?;
            tch::no_grad(|| linear.weight.shallow_clone().f_copy_(&merged))?;
        }
        Ok(())
    }
}
