//! Llama layout: RoPE, RMSNorm, grouped-query attention and a gated MLP, with
//! `torch.nn.Linear` weights `[out, in]` under `model.*`. Qwen2 adds biases to the
//! query, key and value projections; Mistral's sliding window is a mask
//! ([`crate::model`]); Llama 3's RoPE scaling lives in [`Rope`].

use tch::nn;

use crate::config::Config;
use crate::error::Result;
use crate::layers::{Attention, Linear, Mlp, Norm, QkvProjection, Rope, WeightLayout};
use crate::model::{Block, Init, Model};

pub(crate) fn build(vs: &nn::Path, cfg: &Config, init: Init) -> Result<Model> {
    let h = cfg.hidden_size;
    let std = cfg.initializer_range;
    let (heads, kv_heads, head_dim) = (cfg.num_heads, cfg.num_kv_heads(), cfg.head_dim());
    let m = vs / "model";
    let embed = init.normal(&(&m / "embed_tokens"), "weight", &[cfg.vocab_size, h], std)?;
    let rms_norm = |p: nn::Path| -> Result<Norm> {
        Ok(Norm::Rms {
            weight: init.ones(&p, "weight", &[h])?,
            eps: cfg.norm_eps,
        })
    };
    let linear = |p: nn::Path, i: i64, o: i64, bias: bool| {
        init.linear(&p, i, o, WeightLayout::OutIn, bias, std)
    };
    let mut blocks = Vec::new();
    for i in 0..cfg.num_layers {
        let b = &m / "layers" / i;
        let a = &b / "self_attn";
        let qkv_bias = cfg.attention_bias || cfg.qkv_bias;
        let attn = Attention {
            qkv: QkvProjection::Split {
                q_proj: linear(&a / "q_proj", h, heads * head_dim, qkv_bias)?,
                k_proj: linear(&a / "k_proj", h, kv_heads * head_dim, qkv_bias)?,
                v_proj: linear(&a / "v_proj", h, kv_heads * head_dim, qkv_bias)?,
            },
            out_proj: linear(&a / "o_proj", heads * head_dim, h, cfg.attention_bias)?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            dropout: cfg.attn_dropout,
        };
        let p = &b / "mlp";
        let inner = cfg.intermediate_size();
        let mlp = Mlp::Gated {
            gate_proj: linear(&p / "gate_proj", h, inner, cfg.mlp_bias)?,
            up_proj: linear(&p / "up_proj", h, inner, cfg.mlp_bias)?,
            down_proj: linear(&p / "down_proj", inner, h, cfg.mlp_bias)?,
            activation: cfg.activation,
        };
        blocks.push(Block {
            attn_norm: rms_norm(&b / "input_layernorm")?,
            attn,
            mlp_norm: rms_norm(&b / "post_attention_layernorm")?,
            mlp,
            resid_dropout: 0.0,
        });
    }
    let norm = rms_norm(&m / "norm")?;
    let lm_head = if cfg.tie_word_embeddings {
        Linear {
            weight: embed.shallow_clone(),
            bias: None,
            layout: WeightLayout::OutIn,
            lora: None,
            quantized: None,
            served: Vec::new(),
        }
    } else {
        linear(vs / "lm_head", h, cfg.vocab_size, false)?
    };
    let rope = Rope::new(
        head_dim,
        cfg.rope_theta,
        cfg.rope_scaling.as_ref(),
        vs.device(),
    )?;
    Ok(Model::from_parts(
        cfg,
        embed,
        None,
        blocks,
        norm,
        lm_head,
        Some(rope),
    ))
}
