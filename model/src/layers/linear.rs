//! Affine projection with either weight layout used by Hugging Face checkpoints.

use tch::Tensor;

use crate::error::Result;
use crate::multi_lora::AdapterRoutes;
use crate::nf4::Nf4Tensor;

/// How a projection's weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]`, as `torch.nn.Linear` stores it (Llama, every `lm_head`).
    OutIn,
    /// `[in, out]`, as GPT-2's `Conv1D` stores it. Keeping the checkpoint's layout
    /// (instead of transposing on load) makes parameter names and shapes map 1:1 to
    /// the safetensors file, so saving needs no conversion either.
    InOut,
}

/// A projection `y = x W + b` whose tensors are variables of the model's `VarStore`.
///
/// Fields are public so fine-tuning code can wrap a projection (e.g. add a low-rank
/// adapter next to `weight`) without this crate knowing about it.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub layout: WeightLayout,
    /// A low-rank adapter added to the output (see [`crate::lora`]).
    pub lora: Option<LoraAdapter>,
    /// The frozen weight in NF4 (QLoRA, see [`crate::qlora`]): `weight` is then
    /// an empty placeholder and every forward dequantizes this one.
    pub quantized: Option<Box<Nf4Tensor>>,
    /// Adapters kept apart for serving, each applied only to the rows of a
    /// batch routed to it (see [`crate::multi_lora`]).
    pub served: Vec<ServedAdapter>,
}

/// One served adapter's `A` `[rank, in]` and `B` `[out, rank]` for this
/// projection, in the model's dtype and on its device.
#[derive(Debug)]
pub struct ServedAdapter {
    pub id: u32,
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

/// `scale · B(A(dropout(x)))` added to a projection's output: `a` is
/// `[rank, in]`, `b` is `[out, rank]` (zero-initialised, so a fresh adapter
/// changes nothing).
#[derive(Debug)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
}

impl Linear {
    /// Input features.
    pub fn in_features(&self) -> i64 {
        let size = self.weight_shape();
        match self.layout {
            WeightLayout::OutIn => size[1],
            WeightLayout::InOut => size[0],
        }
    }

    /// Output features.
    pub fn out_features(&self) -> i64 {
        let size = self.weight_shape();
        match self.layout {
            WeightLayout::OutIn => size[0],
            WeightLayout::InOut => size[1],
        }
    }

    /// The weight's shape as stored (also when it is held in NF4).
    pub fn weight_shape(&self) -> Vec<i64> {
        match &self.quantized {
            Some(q) => q.shape().to_vec(),
            None => self.weight.size(),
        }
    }

    /// The weight to multiply by: the variable itself, or the NF4 weight
    /// dequantized for this call in the input's dtype (a temporary: no
    /// full-precision copy outlives the call and its backward pass, and no
    /// gradient reaches the frozen base).
    pub fn effective_weight(&self, kind: tch::Kind) -> Result<Tensor> {
        match &self.quantized {
            Some(q) => q.dequantize(kind),
            None => Ok(self.weight.shallow_clone()),
        }
    }

    /// Applies the projection to the last dimension of `xs`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let weight = self.effective_weight(xs.kind())?;
        let out = match self.layout {
            WeightLayout::OutIn => xs.f_linear(&weight, self.bias.as_ref())?,
            // A transposed view costs nothing; `linear` then runs a plain matmul.
            WeightLayout::InOut => xs.f_linear(&weight.f_tr()?, self.bias.as_ref())?,
        };
        let Some(lora) = &self.lora else {
            return Ok(out);
        };
        // Dropout only while gradients are recorded, i.e. in training: a view of
        // a trainable leaf requires grad exactly then (not under `no_grad`).
        let recording = lora.dropout > 0.0 && lora.a.f_alias()?.requires_grad();
        let input = if recording {
            xs.f_dropout(lora.dropout, true)?
        } else {
            xs.shallow_clone()
        };
        let update = input
            .f_linear::<&Tensor>(&lora.a, None)?
            .f_linear::<&Tensor>(&lora.b, None)?;
        Ok(out.f_add(&update.f_mul_scalar(lora.scale)?)?)
    }

    /// [`Linear::forward`] on a batch `xs` `[batch, ...]` whose rows are routed
    /// to served adapters: each group of rows gets its own adapter's
    /// `scale · x Aᵀ Bᵀ` added (gathered by row index, scattered back with
    /// `index_add`); rows routed nowhere, and adapters without this
    /// projection, get the base output alone.
    pub fn forward_routed(&self, xs: &Tensor, routes: Option<&AdapterRoutes>) -> Result<Tensor> {
        let mut out = self.forward(xs)?;
        let Some(routes) = routes else {
            return Ok(out);
        };
        for (id, rows) in routes.groups() {
            let Some(adapter) = self.served.iter().find(|s| s.id == *id) else {
                continue;
            };
            let delta = xs
                .f_index_select(0, rows)?
                .f_linear::<&Tensor>(&adapter.a, None)?
                .f_linear::<&Tensor>(&adapter.b, None)?
                .f_mul_scalar(adapter.scale)?;
            out = out.f_index_add(0, rows, &delta)?;
        }
        Ok(out)
    }
}
