//! Rotary position embeddings in the `rotate_half` convention of `transformers`
//! (the two halves of each head are the rotated pairs, not interleaved elements),
//! which is the layout HF Llama checkpoints are permuted for.

use tch::{Device, Kind, Tensor};

use crate::config::RopeScaling;
use crate::error::Result;

/// Precomputed inverse frequencies of one attention head.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(
        head_dim: i64,
        theta: f64,
        scaling: Option<&RopeScaling>,
        device: Device,
    ) -> Result<Self> {
        // Same operation order as LlamaRotaryEmbedding: theta ** (2i / d) in fp32.
        let exponent = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(head_dim as f64)?;
        let inv_freq = Tensor::f_pow_scalar(theta, &exponent)?.f_reciprocal()?;
        let inv_freq = match scaling {
            Some(scaling) => llama3_scaled(&inv_freq, scaling)?,
            None => inv_freq,
        };
        Ok(Rope { inv_freq })
    }

    /// cos/sin tables for `positions` `[batch, seq]`, computed once per forward pass
    /// and shared by every layer. Computed in fp32 then cast to `kind`, as HF does.
    pub fn tables(&self, positions: &Tensor, kind: Kind) -> Result<RotaryTables> {
        let freqs = positions
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(1)?;
        let sin = emb.f_sin()?;
        // rotate_half(x) * sin == swap_halves(x) * [-sin | sin]: folding the sign
        // into the table turns rotate_half's narrow/neg/cat (and their backward
        // zero-fills and copies) into one roll, with bit-identical results.
        let half = freqs.size()[freqs.dim() - 1];
        let signed_sin = Tensor::f_cat(
            &[
                sin.f_narrow(-1, 0, half)?.f_neg()?,
                sin.f_narrow(-1, half, half)?,
            ],
            -1,
        )?;
        Ok(RotaryTables {
            cos: emb.f_cos()?.f_to_kind(kind)?,
            signed_sin: signed_sin.f_to_kind(kind)?,
        })
    }
}

/// Llama 3's frequency scaling, in the operation order of `transformers`'
/// `_compute_llama3_parameters`: low frequencies (wavelengths beyond
/// `original / low_freq_factor`) divided by `factor`, high ones kept, the band
/// between blended by where its wavelength falls.
fn llama3_scaled(inv_freq: &Tensor, s: &RopeScaling) -> Result<Tensor> {
    let original = s.original_max_position_embeddings as f64;
    let low_freq_wavelen = original / s.low_freq_factor;
    let high_freq_wavelen = original / s.high_freq_factor;
    let wavelen = inv_freq
        .f_reciprocal()?
        .f_mul_scalar(2.0 * std::f64::consts::PI)?;
    let divided = inv_freq.f_div_scalar(s.factor)?;
    let scaled = divided.f_where_self(&wavelen.f_gt(low_freq_wavelen)?, inv_freq)?;
    let smooth = wavelen
        .f_reciprocal()?
        .f_mul_scalar(original)?
        .f_sub_scalar(s.low_freq_factor)?
        .f_div_scalar(s.high_freq_factor - s.low_freq_factor)?;
    let smoothed = smooth
        .f_neg()?
        .f_add_scalar(1.0)?
        .f_mul(&scaled.f_div_scalar(s.factor)?)?
        .f_add(&smooth.f_mul(&scaled)?)?;
    let medium = wavelen
        .f_lt(high_freq_wavelen)?
        .f_logical_not()?
        .f_logical_and(&wavelen.f_gt(low_freq_wavelen)?.f_logical_not()?)?;
    Ok(smoothed.f_where_self(&medium, &scaled)?)
}

/// cos and sign-folded sin `[batch, 1, seq, head_dim]` for the positions of one
/// forward pass.
#[derive(Debug)]
pub struct RotaryTables {
    cos: Tensor,
    /// `[-sin | sin]` over the two halves of each head.
    signed_sin: Tensor,
}

impl RotaryTables {
    /// Rotates `xs` `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        let half = xs.size()[3] / 2;
        let swapped = xs.f_roll([half], [3])?;
        Ok(xs
            .f_mul(&self.cos)?
            .f_add(&swapped.f_mul(&self.signed_sin)?)?)
    }
}
