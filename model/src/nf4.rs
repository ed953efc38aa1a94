//! 4-bit NormalFloat (NF4) with double quantization, as the QLoRA paper
//! (Dettmers et al. 2023) and bitsandbytes define it.
//!
//! - The codebook: 16 values at quantiles of N(0, 1), 8 on the positive side and
//!   7 on the negative one plus an exact 0 (asymmetric so that zero — common in
//!   weights — is representable), normalised to [-1, 1]. [`NF4_CODE`] holds the
//!   exact fp32 values bitsandbytes uses; [`nf4_codebook`] recomputes them.
//! - Blockwise absmax quantization: the flattened tensor in blocks of
//!   [`BLOCK`] = 64 values, each divided by its block's absolute maximum and
//!   mapped to the nearest code; two 4-bit codes a byte, the first in the high
//!   nibble (bitsandbytes' packing).
//! - Double quantization (bitsandbytes' `compress_statistics`): the fp32
//!   absmax constants, their mean subtracted, quantized again to 8 bits with
//!   the signed dynamic map ([`dynamic_map`]) in blocks of [`STAT_BLOCK`] = 256,
//!   each with its own fp32 absmax. This takes the constants from 32/64 = 0.5 to
//!   8/64 + 32/(64·256) ≈ 0.127 bits a parameter.
//!
//! A tensor that is not a multiple of 64 values is padded with zeros; a block of
//! zeros gets scale 1 (every code then decodes to 0) instead of a division by 0.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Values per absmax block.
pub const BLOCK: i64 = 64;
/// Absmax constants per block of the second quantization.
pub const STAT_BLOCK: i64 = 256;
/// The probability range of the quantiles: halfway between 1 − 1/(2·15) and
/// 1 − 1/(2·16), so that the outermost quantiles are finite
/// (bitsandbytes' `create_normal_map(offset=0.9677083)`).
pub const QUANTILE_OFFSET: f64 = 0.9677083;

/// The NF4 codebook, ascending: bitsandbytes' table, bit for bit.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Recomputes the NF4 codebook as the paper constructs it: the standard
/// normal's quantiles at 9 points from [`QUANTILE_OFFSET`] down to 0.5 (the
/// last, 0.5, dropped: 8 positive values) and at 8 points (7 negative values),
/// with 0, normalised by the largest. The points are taken in fp32, as
/// bitsandbytes took them (`torch.linspace`), and the quantiles in fp64.
pub fn nf4_codebook() -> Result<[f32; 16]> {
    let quantiles = |steps: i64| -> Result<Vec<f64>> {
        let p = Tensor::f_linspace(QUANTILE_OFFSET, 0.5, steps, (Kind::Float, Device::Cpu))?
            .f_to_kind(Kind::Double)?;
        // Φ⁻¹(p) = √2 · erfinv(2p − 1)
        let z = p
            .f_mul_scalar(2.0)?
            .f_sub_scalar(1.0)?
            .f_erfinv()?
            .f_mul_scalar(std::f64::consts::SQRT_2)?;
        let mut values = Vec::<f64>::try_from(&z)?;
        values.pop();
        Ok(values)
    };
    let mut values = quantiles(9)?;
    values.push(0.0);
    values.extend(quantiles(8)?.into_iter().map(|v| -v));
    values.sort_by(f64::total_cmp);
    let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
    let max = values[15];
    let mut code = [0f32; 16];
    for (c, v) in code.iter_mut().zip(values) {
        *c = v / max;
    }
    Ok(code)
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`),
/// ascending: for each exponent 10⁻⁶ … 10⁰, the 2^i midpoints of
/// `linspace(0.1, 1, 2^i + 1)`, both signs, and 0 and 1.
pub fn dynamic_map() -> [f32; 256] {
    const SCALES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1e0];
    let mut data = Vec::with_capacity(256);
    for (i, scale) in SCALES.iter().enumerate() {
        let n = (1usize << i) + 1;
        let step = (1.0 - 0.1) / (n - 1) as f64;
        let bound = |j: usize| {
            if j == n - 1 {
                1.0
            } else {
                0.1 + j as f64 * step
            }
        };
        for j in 0..n - 1 {
            let mean = (bound(j) + bound(j + 1)) / 2.0;
            data.push(scale * mean);
            data.push(-scale * mean);
        }
    }
    data.extend([0.0, 1.0]);
    data.sort_by(f64::total_cmp);
    let mut map = [0f32; 256];
    for (m, v) in map.iter_mut().zip(data) {
        *m = v as f32;
    }
    map
}

/// A tensor in NF4 with double-quantized constants, on the device it came from.
#[derive(Debug)]
pub struct Nf4Tensor {
    /// Two codes a byte, `[ceil(numel / 64) · 32]` uint8.
    pub packed: Tensor,
    /// The absmax constants' 8-bit codes, `[blocks]` uint8.
    pub stat_codes: Tensor,
    /// One fp32 absmax per [`STAT_BLOCK`] constants.
    pub stat_absmax: Tensor,
    /// The constants' mean, subtracted before their quantization.
    pub stat_offset: f32,
    shape: Vec<i64>,
    numel: i64,
    /// [`NF4_CODE`] and [`dynamic_map`] on the tensor's device.
    code: Tensor,
    map: Tensor,
}

impl Nf4Tensor {
    /// Quantizes `weights` (any float dtype and shape).
    pub fn quantize(weights: &Tensor) -> Result<Self> {
        let shape = weights.size();
        let numel = shape.iter().product::<i64>();
        if numel == 0 {
            return Err(Error::InvalidInput(
                "cannot quantize an empty tensor to NF4".into(),
            ));
        }
        let device = weights.device();
        let code = Tensor::f_from_slice(&NF4_CODE)?.f_to_device(device)?;
        let map = Tensor::f_from_slice(&dynamic_map())?.f_to_device(device)?;
        let flat = weights
            .f_detach()?
            .f_to_kind(Kind::Float)?
            .f_reshape([-1])?;
        let blocks = padded(&flat, BLOCK)?;
        let absmax = blocks.f_abs()?.f_amax([1], false)?;
        let codes = nearest(&blocks.f_div(&safe(&absmax)?.f_unsqueeze(1)?)?, &code)?;
        let pairs = codes.f_reshape([-1, 2])?;
        let packed = pairs
            .f_select(1, 0)?
            .f_mul_scalar(16)?
            .f_add(&pairs.f_select(1, 1)?)?
            .f_to_kind(Kind::Uint8)?;

        // The mean in fp64 so that it does not depend on the summation order.
        let offset = absmax
            .f_to_kind(Kind::Double)?
            .f_mean(None)?
            .f_double_value(&[])? as f32;
        let centred = absmax.f_sub(&Tensor::f_from_slice(&[offset])?.f_to_device(device)?)?;
        let stats = padded(&centred, STAT_BLOCK)?;
        let stat_absmax = stats.f_abs()?.f_amax([1], false)?;
        let stat_codes = nearest(&stats.f_div(&safe(&stat_absmax)?.f_unsqueeze(1)?)?, &map)?
            .f_reshape([-1])?
            .f_narrow(0, 0, absmax.size()[0])?
            .f_to_kind(Kind::Uint8)?;
        Ok(Self {
            packed,
            stat_codes,
            stat_absmax,
            stat_offset: offset,
            shape,
            numel,
            code,
            map,
        })
    }

    /// The shape of the quantized tensor.
    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// The NF4 codes, one a value (`[numel]` uint8, 0..16).
    pub fn codes(&self) -> Result<Tensor> {
        let high = self.packed.f_floor_divide_scalar(16)?;
        let low = self.packed.f_bitwise_and(15)?;
        Ok(Tensor::f_stack(&[high, low], 1)?
            .f_reshape([-1])?
            .f_narrow(0, 0, self.numel)?)
    }

    /// The absmax constants as the second quantization restores them (fp32,
    /// one a block of 64).
    pub fn absmax(&self) -> Result<Tensor> {
        let blocks = self.stat_codes.size()[0];
        let values = self
            .map
            .f_index_select(0, &self.stat_codes.f_to_kind(Kind::Int64)?)?;
        let values = padded(&values, STAT_BLOCK)?
            .f_mul(&self.stat_absmax.f_unsqueeze(1)?)?
            .f_reshape([-1])?
            .f_narrow(0, 0, blocks)?;
        let offset = Tensor::f_from_slice(&[self.stat_offset])?.f_to_device(values.device())?;
        Ok(values.f_add(&offset)?)
    }

    /// The tensor back in `kind`: `code[c] · absmax` per value, computed in
    /// fp32 (then rounded once to `kind`).
    pub fn dequantize(&self, kind: Kind) -> Result<Tensor> {
        let high = self.packed.f_floor_divide_scalar(16)?;
        let low = self.packed.f_bitwise_and(15)?;
        let codes = Tensor::f_stack(&[high, low], 1)?.f_to_kind(Kind::Int)?;
        let values = self
            .code
            .f_index_select(0, &codes.f_reshape([-1])?)?
            .f_reshape([-1, BLOCK])?
            .f_mul(&self.absmax()?.f_unsqueeze(1)?)?
            .f_reshape([-1])?
            .f_narrow(0, 0, self.numel)?
            .f_reshape(self.shape.as_slice())?;
        Ok(values.f_to_kind(kind)?)
    }

    /// Bytes held for this tensor: codes, 8-bit constants, their fp32 absmax and
    /// offset (the 16- and 256-entry tables, shared by every tensor, left out).
    pub fn bytes(&self) -> i64 {
        self.packed.numel() as i64
            + self.stat_codes.numel() as i64
            + 4 * self.stat_absmax.numel() as i64
            + 4
    }

    /// Values quantized.
    pub fn numel(&self) -> i64 {
        self.numel
    }
}

/// `flat` (1-D) as rows of `size`, the last padded with zeros.
fn padded(flat: &Tensor, size: i64) -> Result<Tensor> {
    let n = flat.size()[0];
    let pad = (size - n % size) % size;
    Ok(flat.f_constant_pad_nd([0, pad])?.f_reshape([-1, size])?)
}

/// `absmax` with zeros replaced by 1 (an all-zero block then stays zero).
fn safe(absmax: &Tensor) -> Result<Tensor> {
    Ok(absmax.f_where_scalarother(&absmax.f_gt(0.0)?, 1.0)?)
}

/// The index of the nearest entry of the ascending `table` for each value:
/// how many midpoints between neighbours (in fp32) lie strictly below it.
fn nearest(values: &Tensor, table: &Tensor) -> Result<Tensor> {
    let n = table.size()[0];
    let mids = table
        .f_narrow(0, 0, n - 1)?
        .f_add(&table.f_narrow(0, 1, n - 1)?)?
        .f_div_scalar(2.0)?;
    Ok(values.f_bucketize(&mids, false, false)?)
}
