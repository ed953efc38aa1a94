//! Normalisation layers: LayerNorm (GPT-2) and RMSNorm (Llama).

use tch::{Kind, Tensor};

use crate::error::Result;

/// A normalisation over the hidden dimension.
#[derive(Debug)]
pub enum Norm {
    /// `(x - mean) / sqrt(var + eps) * weight + bias`.
    Layer {
        weight: Tensor,
        bias: Tensor,
        eps: f64,
    },
    /// `x / sqrt(mean(x²) + eps) * weight`, computed in fp32 like `LlamaRMSNorm` so
    /// bf16 models normalise with the same precision as in `transformers`.
    Rms { weight: Tensor, eps: f64 },
}

impl Norm {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Layer { weight, bias, eps } => {
                let dim = *weight.size().first().unwrap_or(&0);
                Ok(xs.f_layer_norm([dim], Some(weight), Some(bias), *eps, true)?)
            }
            Norm::Rms { weight, eps } => {
                let kind = xs.kind();
                let x = xs.f_to_kind(Kind::Float)?;
                let variance = x.f_square()?.f_mean_dim(-1, true, Kind::Float)?;
                let normed = x.f_mul(&variance.f_add_scalar(*eps)?.f_rsqrt()?)?;
                Ok(weight.f_mul(&normed.f_to_kind(kind)?)?)
            }
        }
    }
}
