//! Multi-head self-attention with grouped-query heads, optional RoPE and a KV cache.

use tch::Tensor;

use super::{Linear, RotaryTables};
use crate::error::Result;
use crate::multi_lora::AdapterRoutes;

/// How queries, keys and values are projected from the hidden states.
// One per block, built once: boxing the split variant would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum QkvProjection {
    /// One projection producing `[q | k | v]` (GPT-2 `c_attn`).
    Fused(Linear),
    /// Separate projections (Llama `q_proj`, `k_proj`, `v_proj`); k and v may have
    /// fewer heads than q.
    Split {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
}

/// Which keys each query may attend to.
#[derive(Debug)]
pub enum AttentionMask {
    /// Query `i` sees keys `0..=i` (a fresh sequence without cache or padding). Lets
    /// libtorch pick its fused causal kernels.
    Causal,
    /// Every query sees every key (one new token per sequence, no padding).
    Full,
    /// Boolean `[batch, 1, queries, keys]`, `true` where attention is allowed.
    Explicit(Tensor),
}

/// Self-attention of one transformer block.
#[derive(Debug)]
pub struct Attention {
    pub qkv: QkvProjection,
    /// Output projection (GPT-2 `c_proj`, Llama `o_proj`).
    pub out_proj: Linear,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    /// Dropout on attention probabilities, applied only in training.
    pub dropout: f64,
}

impl Attention {
    /// Attends over `xs` `[batch, seq, hidden]`.
    ///
    /// `rope` rotates queries and keys when present. When `cache` is given, the new
    /// keys/values are appended to it and the queries attend over the whole cache.
    /// `routes` sends rows of the batch through served adapters.
    pub fn forward(
        &self,
        xs: &Tensor,
        rope: Option<&RotaryTables>,
        mask: &AttentionMask,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
        routes: Option<&AdapterRoutes>,
    ) -> Result<Tensor> {
        let (batch, seq) = (xs.size()[0], xs.size()[1]);
        let q_width = self.num_heads * self.head_dim;
        let kv_width = self.num_kv_heads * self.head_dim;
        let (q, k, v) = match &self.qkv {
            QkvProjection::Fused(proj) => {
                let qkv = proj.forward_routed(xs, routes)?;
                (
                    qkv.f_narrow(2, 0, q_width)?,
                    qkv.f_narrow(2, q_width, kv_width)?,
                    qkv.f_narrow(2, q_width + kv_width, kv_width)?,
                )
            }
            QkvProjection::Split {
                q_proj,
                k_proj,
                v_proj,
            } => (
                q_proj.forward_routed(xs, routes)?,
                k_proj.forward_routed(xs, routes)?,
                v_proj.forward_routed(xs, routes)?,
            ),
        };
        let heads = |t: Tensor, n: i64| -> Result<Tensor> {
            Ok(t.f_view([batch, seq, n, self.head_dim])?
                .f_transpose(1, 2)?)
        };
        let mut q = heads(q, self.num_heads)?;
        let mut k = heads(k, self.num_kv_heads)?;
        let mut v = heads(v, self.num_kv_heads)?;
        if let Some(rope) = rope {
            q = rope.apply(&q)?;
            k = rope.apply(&k)?;
        }
        if let Some(slot) = cache {
            if let Some((past_k, past_v)) = slot.as_ref() {
                k = Tensor::f_cat(&[past_k, &k], 2)?;
                v = Tensor::f_cat(&[past_v, &v], 2)?;
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let dropout = if train { self.dropout } else { 0.0 };
        let (explicit, is_causal) = match mask {
            AttentionMask::Causal => (None, true),
            AttentionMask::Full => (None, false),
            AttentionMask::Explicit(m) => (Some(m), false),
        };
        let out = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            explicit,
            dropout,
            is_causal,
            None::<f64>,
            self.num_kv_heads != self.num_heads,
        )?;
        let out = out.f_transpose(1, 2)?.f_reshape([batch, seq, q_width])?;
        self.out_proj.forward_routed(&out, routes)
    }

    /// The projections of this attention with their Hugging Face names.
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let out_name = match self.qkv {
            QkvProjection::Fused(_) => "c_proj",
            QkvProjection::Split { .. } => "o_proj",
        };
        let mut out = match &mut self.qkv {
            QkvProjection::Fused(c_attn) => vec![("c_attn", c_attn)],
            QkvProjection::Split {
                q_proj,
                k_proj,
                v_proj,
            } => vec![("q_proj", q_proj), ("k_proj", k_proj), ("v_proj", v_proj)],
        };
        out.push((out_name, &mut self.out_proj));
        out
    }
}
