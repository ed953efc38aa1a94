//! GPT-2 layout: learned positions, LayerNorm, fused QKV and GELU MLP, with
//! `transformers`' `Conv1D` weights stored `[in, out]` under `transformer.*`.

use tch::nn;

use crate::config::Config;
use crate::error::Result;
use crate::layers::{Attention, Linear, Mlp, Norm, QkvProjection, WeightLayout};
use crate::model::{Block, Init, Model};

pub(crate) fn build(vs: &nn::Path, cfg: &Config, init: Init) -> Result<Model> {
    let h = cfg.hidden_size;
    let std = cfg.initializer_range;
    // GPT-2 scales the init of projections that write into the residual stream by
    // 1/sqrt(2 × layers), so the residual variance does not grow with depth.
    let resid_std = std / ((2 * cfg.num_layers) as f64).sqrt();
    let t = vs / "transformer";
    let wte = init.normal(&(&t / "wte"), "weight", &[cfg.vocab_size, h], std)?;
    let wpe = init.normal(
        &(&t / "wpe"),
        "weight",
        &[cfg.max_position_embeddings, h],
        std,
    )?;
    let layer_norm = |p: nn::Path| -> Result<Norm> {
        Ok(Norm::Layer {
            weight: init.ones(&p, "weight", &[h])?,
            bias: p.f_var("bias", &[h], nn::Init::Const(0.0))?,
            eps: cfg.norm_eps,
        })
    };
    let mut blocks = Vec::new();
    for i in 0..cfg.num_layers {
        let b = &t / "h" / i;
        let conv1d = |p: nn::Path, i: i64, o: i64, std: f64| {
            init.linear(&p, i, o, WeightLayout::InOut, true, std)
        };
        let attn = Attention {
            qkv: QkvProjection::Fused(conv1d(&b / "attn" / "c_attn", h, 3 * h, std)?),
            out_proj: conv1d(&b / "attn" / "c_proj", h, h, resid_std)?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
            dropout: cfg.attn_dropout,
        };
        let inner = cfg.intermediate_size();
        let mlp = Mlp::Plain {
            c_fc: conv1d(&b / "mlp" / "c_fc", h, inner, std)?,
            c_proj: conv1d(&b / "mlp" / "c_proj", inner, h, resid_std)?,
            activation: cfg.activation,
        };
        blocks.push(Block {
            attn_norm: layer_norm(&b / "ln_1")?,
            attn,
            mlp_norm: layer_norm(&b / "ln_2")?,
            mlp,
            resid_dropout: cfg.resid_dropout,
        });
    }
    let ln_f = layer_norm(&t / "ln_f")?;
    let lm_head = if cfg.tie_word_embeddings {
        Linear {
            weight: wte.shallow_clone(),
            bias: None,
            layout: WeightLayout::OutIn,
            lora: None,
            quantized: None,
            served: Vec::new(),
        }
    } else {
        init.linear(
            &(vs / "lm_head"),
            h,
            cfg.vocab_size,
            WeightLayout::OutIn,
            false,
            std,
        )?
    };
    Ok(Model::from_parts(
        cfg,
        wte,
        Some(wpe),
        blocks,
        ln_f,
        lm_head,
        None,
    ))
}
