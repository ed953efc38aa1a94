//! Rotary position embeddings in the `rotate_half` convention of `transformers`
//! (the two halves of each head are the rotated pairs, not interleaved elements),
//! which is the layout HF Llama checkpoints are permuted for.

use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// Precomputed inverse frequencies of one attention head.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(head_dim: i64, theta: f64, device: Device) -> Result<Self> {
        // Same operation order as LlamaRotaryEmbedding: theta ** (2i / d) in fp32.
        let exponent = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(head_dim as f64)?;
        let inv_freq = Tensor::f_pow_scalar(theta, &exponent)?.f_reciprocal()?;
        Ok(Rope { inv_freq })
    }

    /// Rotates `xs` `[batch, heads, seq, head_dim]` by `positions` `[batch, seq]`.
    pub fn apply(&self, xs: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (cos, sin) = self.cos_sin(positions, xs.kind())?;
        let half = xs.size()[3] / 2;
        let x1 = xs.f_narrow(3, 0, half)?;
        let x2 = xs.f_narrow(3, half, half)?;
        let rotated = Tensor::f_cat(&[x2.f_neg()?, x1], 3)?;
        Ok(xs.f_mul(&cos)?.f_add(&rotated.f_mul(&sin)?)?)
    }

    /// cos/sin tables `[batch, 1, seq, head_dim]`, computed in fp32 then cast, as HF does.
    fn cos_sin(&self, positions: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
        let freqs = positions
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(1)?;
        Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
    }
}
