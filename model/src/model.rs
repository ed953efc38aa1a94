//! The decoder-only transformer shared by both families.
//!
//! GPT-2 and Llama differ only in their building blocks (learned positions vs RoPE,
//! LayerNorm vs RMSNorm, GELU MLP vs gated MLP, fused vs split QKV) and in parameter
//! names; [`crate::gpt2`] and [`crate::llama`] build those blocks with the right names,
//! and the forward pass here runs either.

use tch::{Device, Kind, Tensor, nn};

use crate::config::{Config, Family};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::layers::{
    Attention, AttentionMask, Linear, Mlp, Norm, Rope, RotaryTables, WeightLayout,
};
use crate::multi_lora::AdapterRoutes;

mod checkpointing;
pub use checkpointing::segment_seed;

/// One transformer block: pre-norm attention and pre-norm MLP, each residual.
#[derive(Debug)]
pub struct Block {
    pub attn_norm: Norm,
    pub attn: Attention,
    pub mlp_norm: Norm,
    pub mlp: Mlp,
    /// Dropout on each residual branch, applied only in training.
    pub resid_dropout: f64,
}

impl Block {
    fn forward(
        &self,
        xs: &Tensor,
        rope: Option<&RotaryTables>,
        mask: &AttentionMask,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
        routes: Option<&AdapterRoutes>,
    ) -> Result<Tensor> {
        let normed = self.attn_norm.forward(xs)?;
        let attn = self
            .attn
            .forward(&normed, rope, mask, cache, train, routes)?;
        let xs = xs.f_add(&dropout(&attn, self.resid_dropout, train)?)?;
        let mlp = self.mlp.forward(&self.mlp_norm.forward(&xs)?, routes)?;
        Ok(xs.f_add(&dropout(&mlp, self.resid_dropout, train)?)?)
    }
}

/// A causal language model whose parameters live in a `tch` `VarStore`.
///
/// The parameter names in the store are the Hugging Face safetensors names, so the
/// store can be filled from, and written to, an HF checkpoint directly.
#[derive(Debug)]
pub struct Model {
    config: Config,
    /// Token embedding `[vocab, hidden]` (`transformer.wte` / `model.embed_tokens`).
    pub embed_tokens: Tensor,
    /// Learned position embedding `[positions, hidden]` (GPT-2 `transformer.wpe`).
    pub embed_positions: Option<Tensor>,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    /// Output projection; shares `embed_tokens` when embeddings are tied.
    pub lm_head: Linear,
    pub(crate) rope: Option<Rope>,
    pub(crate) embd_dropout: f64,
    device: Device,
}

/// How freshly created parameters are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Init {
    /// The initialisation `transformers` uses for training from scratch.
    Random,
    /// Zeros, for parameters that are about to be overwritten by a checkpoint.
    Zeros,
}

impl Init {
    /// A weight drawn from N(0, std²).
    pub(crate) fn normal(self, p: &nn::Path, name: &str, dims: &[i64], std: f64) -> Result<Tensor> {
        let init = match self {
            Init::Random => nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            Init::Zeros => nn::Init::Const(0.0),
        };
        Ok(p.f_var(name, dims, init)?)
    }

    /// A norm scale, initialised to one.
    pub(crate) fn ones(self, p: &nn::Path, name: &str, dims: &[i64]) -> Result<Tensor> {
        Ok(p.f_var(name, dims, nn::Init::Const(1.0))?)
    }

    /// A projection with optional zero-initialised bias.
    pub(crate) fn linear(
        self,
        p: &nn::Path,
        in_dim: i64,
        out_dim: i64,
        layout: WeightLayout,
        bias: bool,
        std: f64,
    ) -> Result<Linear> {
        let dims = match layout {
            WeightLayout::OutIn => [out_dim, in_dim],
            WeightLayout::InOut => [in_dim, out_dim],
        };
        let weight = self.normal(p, "weight", &dims, std)?;
        let bias = if bias {
            Some(p.f_var("bias", &[out_dim], nn::Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            layout,
            lora: None,
            quantized: None,
            served: Vec::new(),
        })
    }
}

impl Model {
    /// Creates a randomly initialised model whose variables are registered under
    /// `vs` (pass `vs.root()`); the store's kind decides the parameter dtype.
    pub fn new(vs: &nn::Path, config: &Config) -> Result<Self> {
        Self::build(vs, config, Init::Random)
    }

    pub(crate) fn build(vs: &nn::Path, config: &Config, init: Init) -> Result<Self> {
        config.validate()?;
        match config.family {
            Family::Gpt2 => crate::gpt2::build(vs, config, init),
            Family::Llama | Family::Qwen2 | Family::Mistral => {
                crate::llama::build(vs, config, init)
            }
        }
    }

    /// Assembles a model from built parts (used by the family builders).
    pub(crate) fn from_parts(
        config: &Config,
        embed_tokens: Tensor,
        embed_positions: Option<Tensor>,
        blocks: Vec<Block>,
        final_norm: Norm,
        lm_head: Linear,
        rope: Option<Rope>,
    ) -> Self {
        let device = embed_tokens.device();
        Model {
            config: config.clone(),
            embed_tokens,
            embed_positions,
            blocks,
            final_norm,
            lm_head,
            rope,
            embd_dropout: config.embd_dropout,
            device,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// An empty KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len())
    }

    /// Full-sequence forward pass for training and scoring: `ids` `[batch, seq]`
    /// (positions `0..seq`, causal attention, no cache) → logits `[batch, seq, vocab]`.
    ///
    /// With `train` set, dropout is active; gradients flow unless the caller runs this
    /// under `tch::no_grad`.
    pub fn forward_t(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        self.lm_head
            .forward(&self.hidden_states(ids, None, None, train, None)?)
    }

    /// Inference step: runs `ids` `[batch, seq]` after the tokens already in `cache`,
    /// appends their keys/values, and returns logits `[batch, seq, vocab]`.
    ///
    /// Use it for the prompt (prefill) and then for each new token. Runs without
    /// gradient tracking and without dropout. If it fails, clear the cache: layers
    /// that already ran may have appended their keys and values.
    pub fn forward(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        tch::no_grad(|| {
            self.lm_head
                .forward(&self.hidden_states(ids, None, Some(cache), false, None)?)
        })
    }

    /// Like [`Model::forward`] for a batch whose rows contain padding: `mask`
    /// `[batch, seq]` is non-zero for real tokens. Padding may sit anywhere (left
    /// padding is usual); padded slots are never attended to and do not advance
    /// positions. Logits at padded slots are meaningless.
    pub fn forward_padded(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        self.forward_padded_routed(ids, mask, cache, None)
    }

    /// [`Model::forward_padded`] with rows routed to served adapters.
    pub fn forward_padded_routed(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
        routes: Option<&AdapterRoutes>,
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            self.lm_head.forward(&self.hidden_states(
                ids,
                Some(mask),
                Some(cache),
                false,
                routes,
            )?)
        })
    }

    /// A decoding step that returns only the logits of each row's last slot,
    /// `[batch, vocab]`, sparing the `seq × vocab` logits of a long prompt that
    /// sampling never looks at. With a `mask`, rows must be left-padded so that the
    /// last slot holds a real token.
    pub fn forward_last(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        self.forward_last_routed(ids, mask, cache, None)
    }

    /// [`Model::forward_last`] with rows routed to served adapters
    /// ([`crate::multi_lora`]): rows of different adapters decode together.
    pub fn forward_last_routed(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        routes: Option<&AdapterRoutes>,
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            let hidden = self.hidden_states(ids, mask, Some(cache), false, routes)?;
            self.lm_head.forward(&hidden.f_select(1, -1)?)
        })
    }

    /// Final-normed hidden states `[batch, seq, hidden]`; appends to `cache` if given.
    fn hidden_states(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        train: bool,
        routes: Option<&AdapterRoutes>,
    ) -> Result<Tensor> {
        let step = self.plan(ids, mask, cache.as_deref())?;
        let mut xs = dropout(
            &self.embed(&step.ids, &step.positions)?,
            self.embd_dropout,
            train,
        )?;
        let rope = match &self.rope {
            Some(rope) => Some(rope.tables(&step.positions, xs.kind())?),
            None => None,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let slot = match cache.as_deref_mut() {
                Some(c) => Some(c.layer_mut(i).ok_or_else(|| {
                    Error::InvalidInput("KV cache has fewer layers than the model".into())
                })?),
                None => None,
            };
            xs = block.forward(&xs, rope.as_ref(), &step.mask, slot, train, routes)?;
        }
        if let Some(c) = cache {
            c.set_valid(step.valid, step.new_padding);
        }
        self.final_norm.forward(&xs)
    }

    /// Token embeddings, plus learned positions where the family has them.
    fn embed(&self, ids: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let xs = Tensor::f_embedding(&self.embed_tokens, ids, -1, false, false)?;
        match &self.embed_positions {
            Some(wpe) => Ok(xs.f_add(&Tensor::f_embedding(wpe, positions, -1, false, false)?)?),
            None => Ok(xs),
        }
    }

    /// Works out positions, the attention mask and slot validity for `ids` following
    /// whatever `cache` already holds.
    fn plan(&self, ids: &Tensor, mask: Option<&Tensor>, cache: Option<&KvCache>) -> Result<Step> {
        let ids = self.check_ids(ids)?;
        let (batch, seq) = (ids.size()[0], ids.size()[1]);
        let opts = (Kind::Bool, self.device);
        let input_valid = match mask {
            Some(m) if m.size() != [batch, seq] => {
                return Err(Error::InvalidInput(format!(
                    "attention mask has shape {:?}, expected [{batch}, {seq}]",
                    m.size()
                )));
            }
            Some(m) => m.f_to(self.device)?.f_ne(0)?,
            None => Tensor::f_ones([batch, seq], opts)?,
        };
        let new_padding = mask.is_some() && !all_true(&input_valid)?;
        let past = match cache {
            Some(c) => self.check_cache(c, batch)?,
            None => None,
        };
        let past_slots = past.map_or(0, |v| v.size()[1]);
        // Positions count real tokens only, so padding never shifts a sequence.
        let past_len = match past {
            Some(v) => v.f_sum_dim_intlist(1, true, Kind::Int64)?,
            None => Tensor::f_zeros([batch, 1], (Kind::Int64, self.device))?,
        };
        let positions = past_len
            .f_add(&input_valid.f_cumsum(1, Kind::Int64)?)?
            .f_sub_scalar(1)?
            .f_clamp_min(0)?;
        let needed = positions.f_max()?.f_int64_value(&[])? + 1;
        let max = self.config.max_position_embeddings;
        if needed > max {
            return Err(Error::ContextOverflow { needed, max });
        }
        let valid = match past {
            Some(p) => Tensor::f_cat(&[p, &input_valid], 1)?,
            None => input_valid,
        };
        let cache_padded = cache.is_some_and(KvCache::is_padded);
        // A sliding window that some query cannot see past needs an explicit mask.
        let window = self.config.sliding_window.filter(|&w| past_slots + seq > w);
        let mask = if past_slots == 0 && !new_padding && window.is_none() {
            AttentionMask::Causal
        } else if seq == 1 && !new_padding && !cache_padded && window.is_none() {
            AttentionMask::Full
        } else {
            AttentionMask::Explicit(explicit_mask(&valid, past_slots, seq, window)?)
        };
        Ok(Step {
            ids,
            positions,
            mask,
            valid,
            new_padding,
        })
    }

    /// Validates token ids and moves them to the model's device as int64.
    fn check_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let size = ids.size();
        if size.len() != 2 || size[0] == 0 || size[1] == 0 {
            return Err(Error::InvalidInput(format!(
                "token ids must be a non-empty [batch, seq] tensor, got shape {size:?}"
            )));
        }
        if !matches!(
            ids.kind(),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
        ) {
            return Err(Error::InvalidInput(format!(
                "token ids must be integers, got {:?}",
                ids.kind()
            )));
        }
        let ids = ids.f_to_kind(Kind::Int64)?.f_to(self.device)?;
        // An out-of-range id is a device-side assert on CUDA (the process is lost), so
        // check on our side and report it as bad input.
        let min = ids.f_min()?.f_int64_value(&[])?;
        let max = ids.f_max()?.f_int64_value(&[])?;
        if min < 0 || max >= self.config.vocab_size {
            let bad = if min < 0 { min } else { max };
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.config.vocab_size
            )));
        }
        Ok(ids)
    }

    fn check_cache<'c>(&self, cache: &'c KvCache, batch: i64) -> Result<Option<&'c Tensor>> {
        if cache.num_layers() != self.blocks.len() {
            return Err(Error::InvalidInput(format!(
                "KV cache has {} layers, the model has {}",
                cache.num_layers(),
                self.blocks.len()
            )));
        }
        if !cache.is_empty() && cache.batch_size() != batch {
            return Err(Error::InvalidInput(format!(
                "KV cache holds {} sequences but the input has {batch} rows",
                cache.batch_size()
            )));
        }
        Ok(cache.valid())
    }

    /// Every projection of every block, named by its Hugging Face path prefix
    /// (e.g. `model.layers.0.self_attn.q_proj`), for code that wraps or freezes
    /// specific projections such as low-rank adapters.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let (blocks, attn, mlp) = match self.config.family {
            Family::Gpt2 => ("transformer.h", "attn", "mlp"),
            Family::Llama | Family::Qwen2 | Family::Mistral => ("model.layers", "self_attn", "mlp"),
        };
        let mut out = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            for (name, linear) in block.attn.linears_mut() {
                out.push((format!("{blocks}.{i}.{attn}.{name}"), linear));
            }
            for (name, linear) in block.mlp.linears_mut() {
                out.push((format!("{blocks}.{i}.{mlp}.{name}"), linear));
            }
        }
        out
    }
}

/// What one forward pass needs besides the weights.
struct Step {
    /// Token ids `[batch, seq]`, int64 on the model's device.
    ids: Tensor,
    /// Position of every token `[batch, seq]`.
    positions: Tensor,
    mask: AttentionMask,
    /// `[batch, past + seq]`: which slots hold real tokens after this pass.
    valid: Tensor,
    /// Whether this pass adds padding slots.
    new_padding: bool,
}

fn all_true(t: &Tensor) -> Result<bool> {
    Ok(t.f_all()?.f_to_kind(Kind::Int64)?.f_int64_value(&[])? != 0)
}

/// `[batch, 1, seq, past + seq]` bool: query `j` (slot `past + j`) may attend to slot
/// `t` when `t` holds a real token and `t <= past + j`. Every query also sees its own
/// slot, so a padding query never has an empty row (which would give NaN).
fn explicit_mask(valid: &Tensor, past: i64, seq: i64, window: Option<i64>) -> Result<Tensor> {
    let device = valid.device();
    let keys = Tensor::f_arange(past + seq, (Kind::Int64, device))?.f_unsqueeze(0)?;
    let queries =
        Tensor::f_arange_start(past, past + seq, (Kind::Int64, device))?.f_unsqueeze(1)?;
    let mut causal = keys.f_le_tensor(&queries)?;
    if let Some(window) = window {
        // As transformers' sliding window: key slot k is visible to query slot q
        // when q - k < window.
        let near = queries.f_sub(&keys)?.f_lt(window)?;
        causal = causal.f_logical_and(&near)?;
    }
    let own = keys.f_eq_tensor(&queries)?;
    let allowed = causal
        .f_unsqueeze(0)?
        .f_logical_and(&valid.f_unsqueeze(1)?)?
        .f_logical_or(&own.f_unsqueeze(0)?)?;
    Ok(allowed.f_unsqueeze(1)?)
}

fn dropout(xs: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        Ok(xs.f_dropout(p, true)?)
    } else {
        Ok(xs.shallow_clone())
    }
}
