//! The model configuration, read from and written to a Hugging Face `config.json`.
//!
//! One [`Config`] describes every family; the JSON layout differs per `model_type`
//! (GPT-2 says `n_embd`, Llama, Qwen2 and Mistral say `hidden_size`). Parsing is
//! strict on purpose: a setting that would change the forward pass and that we do not
//! implement (a RoPE scaling other than `llama3`, per-layer sliding windows,
//! cross-attention, an unknown activation, an unknown key) is an error naming it, so
//! a checkpoint is never run with silently different math.

mod hf;
mod keys;

use crate::error::{Error, Result};

pub(crate) use hf::{token_ids, token_ids_json};

/// The model family, i.e. the `model_type` of `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// GPT-2: learned positions, LayerNorm, GELU MLP, fused QKV stored as Conv1D.
    Gpt2,
    /// Llama (1–3): RoPE (optionally `llama3`-scaled), RMSNorm, SwiGLU MLP,
    /// grouped-query attention.
    Llama,
    /// Qwen2 (and Qwen2.5): Llama's layout with biases on the query, key and value
    /// projections.
    Qwen2,
    /// Mistral: Llama's layout with sliding-window attention.
    Mistral,
}

impl Family {
    /// The `model_type` string used by `transformers`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Mistral => "mistral",
        }
    }

    /// Whether the family has Llama's layout (RoPE, RMSNorm, gated MLP, split
    /// projections under `model.layers`).
    pub fn is_llama_like(self) -> bool {
        !matches!(self, Family::Gpt2)
    }

    /// The causal-LM class `transformers` instantiates (`architectures[0]`).
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Gpt2 => "GPT2LMHeadModel",
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Mistral => "MistralForCausalLM",
        }
    }
}

/// MLP activation. GPT-2 applies it between `c_fc` and `c_proj`; Llama applies it to
/// the gate projection before multiplying by the up projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluNew,
    /// Exact (erf) GELU (`gelu`).
    Gelu,
    /// SiLU / swish (`silu`, `swish`).
    Silu,
    /// ReLU (`relu`).
    Relu,
}

impl Activation {
    fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
            "gelu" => Activation::Gelu,
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            other => {
                return Err(Error::UnsupportedConfig(format!(
                    "activation `{other}` (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, silu, relu)"
                )));
            }
        })
    }

    fn hf_name(self) -> &'static str {
        match self {
            Activation::GeluNew => "gelu_new",
            Activation::Gelu => "gelu",
            Activation::Silu => "silu",
            Activation::Relu => "relu",
        }
    }
}

/// Floating-point storage types a checkpoint may use (`dtype`, formerly `torch_dtype`,
/// in `config.json`; written as `dtype`, which `transformers` 5 reads without a
/// deprecation warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    /// The libtorch kind for this dtype.
    pub fn kind(self) -> tch::Kind {
        match self {
            Dtype::F32 => tch::Kind::Float,
            Dtype::F16 => tch::Kind::Half,
            Dtype::Bf16 => tch::Kind::BFloat16,
        }
    }

    /// The dtype of a libtorch kind, if it is one a checkpoint can be stored in.
    pub fn from_kind(kind: tch::Kind) -> Option<Self> {
        match kind {
            tch::Kind::Float => Some(Dtype::F32),
            tch::Kind::Half => Some(Dtype::F16),
            tch::Kind::BFloat16 => Some(Dtype::Bf16),
            _ => None,
        }
    }

    /// The name `transformers` uses (`float32`, `float16`, `bfloat16`).
    pub fn hf_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }

    fn from_hf(name: &str) -> Result<Self> {
        match name {
            "float32" => Ok(Dtype::F32),
            "float16" => Ok(Dtype::F16),
            "bfloat16" => Ok(Dtype::Bf16),
            other => Err(Error::UnsupportedConfig(format!(
                "dtype `{other}` (supported: float32, float16, bfloat16)"
            ))),
        }
    }
}

/// Llama 3's RoPE frequency scaling (`rope_type: llama3`): wavelengths longer than
/// `original_max_position_embeddings / low_freq_factor` are stretched by `factor`,
/// shorter than `original_max_position_embeddings / high_freq_factor` kept, and the
/// band between interpolated.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: i64,
}

impl RopeScaling {
    fn validate(&self, max_position_embeddings: i64) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidConfig(msg));
        for (name, value) in [
            ("factor", self.factor),
            ("low_freq_factor", self.low_freq_factor),
            ("high_freq_factor", self.high_freq_factor),
        ] {
            if value.is_nan() || value <= 0.0 {
                return invalid(format!("rope_scaling.{name} must be positive, got {value}"));
            }
        }
        if self.high_freq_factor <= self.low_freq_factor {
            return invalid(format!(
                "rope_scaling.high_freq_factor ({}) must exceed low_freq_factor ({})",
                self.high_freq_factor, self.low_freq_factor
            ));
        }
        if self.original_max_position_embeddings <= 0
            || self.original_max_position_embeddings > max_position_embeddings
        {
            return invalid(format!(
                "rope_scaling.original_max_position_embeddings must be in 1..={max_position_embeddings}, got {}",
                self.original_max_position_embeddings
            ));
        }
        Ok(())
    }
}

/// Architecture and special tokens of a decoder-only model.
///
/// Fields are public so a trainer can build a fresh config from a resource spec;
/// call [`Config::validate`] (done by `Model::new`) before use.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub family: Family,
    pub vocab_size: i64,
    pub hidden_size: i64,
    /// MLP inner width; `None` means the family default (4 × hidden for GPT-2).
    pub intermediate_size: Option<i64>,
    pub num_layers: i64,
    pub num_heads: i64,
    /// Key/value heads for grouped-query attention; `None` means `num_heads`.
    pub num_kv_heads: Option<i64>,
    /// Per-head width; `None` means `hidden_size / num_heads`.
    pub head_dim: Option<i64>,
    /// Context length: the number of learned positions (GPT-2) or the longest
    /// sequence the model was trained for (Llama).
    pub max_position_embeddings: i64,
    /// Epsilon of LayerNorm (GPT-2) or RMSNorm (Llama).
    pub norm_eps: f64,
    /// RoPE base frequency (Llama-like families).
    pub rope_theta: f64,
    /// RoPE frequency scaling (`rope_type: llama3`), when any.
    pub rope_scaling: Option<RopeScaling>,
    /// Each query attends to at most this many most recent positions, itself
    /// included (Mistral's `sliding_window`); `None` attends to all.
    pub sliding_window: Option<i64>,
    pub activation: Activation,
    /// Bias on the attention projections (always true for GPT-2).
    pub attention_bias: bool,
    /// Bias on the query, key and value projections only, not the output one
    /// (Qwen2).
    pub qkv_bias: bool,
    /// Bias on the MLP projections (always true for GPT-2).
    pub mlp_bias: bool,
    /// Share the token embedding with the output projection (`lm_head`).
    pub tie_word_embeddings: bool,
    /// Dropout on the embeddings (GPT-2 `embd_pdrop`).
    pub embd_dropout: f64,
    /// Dropout on attention probabilities (GPT-2 `attn_pdrop`, Llama `attention_dropout`).
    pub attn_dropout: f64,
    /// Dropout on each residual branch (GPT-2 `resid_pdrop`).
    pub resid_dropout: f64,
    /// Standard deviation of the random initialisation.
    pub initializer_range: f64,
    pub bos_token_id: Option<i64>,
    /// End-of-sequence ids; HF allows one id or a list.
    pub eos_token_id: Vec<i64>,
    pub pad_token_id: Option<i64>,
    /// Storage dtype recorded in `config.json` (informational; loading picks its own).
    pub dtype: Option<Dtype>,
}

impl Config {
    /// The `transformers` defaults of a family (GPT-2 small; Llama-7B shapes).
    pub fn default_for(family: Family) -> Self {
        match family {
            Family::Gpt2 => Config {
                family,
                vocab_size: 50257,
                hidden_size: 768,
                intermediate_size: None,
                num_layers: 12,
                num_heads: 12,
                num_kv_heads: None,
                head_dim: None,
                max_position_embeddings: 1024,
                norm_eps: 1e-5,
                rope_theta: 10000.0,
                rope_scaling: None,
                sliding_window: None,
                activation: Activation::GeluNew,
                attention_bias: true,
                qkv_bias: false,
                mlp_bias: true,
                tie_word_embeddings: true,
                embd_dropout: 0.1,
                attn_dropout: 0.1,
                resid_dropout: 0.1,
                initializer_range: 0.02,
                bos_token_id: Some(50256),
                eos_token_id: vec![50256],
                pad_token_id: None,
                dtype: None,
            },
            Family::Llama | Family::Qwen2 | Family::Mistral => Config {
                family,
                vocab_size: 32000,
                hidden_size: 4096,
                intermediate_size: Some(11008),
                num_layers: 32,
                num_heads: 32,
                num_kv_heads: None,
                head_dim: None,
                max_position_embeddings: 2048,
                norm_eps: 1e-6,
                rope_theta: 10000.0,
                rope_scaling: None,
                // transformers' MistralConfig default.
                sliding_window: (family == Family::Mistral).then_some(4096),
                activation: Activation::Silu,
                attention_bias: false,
                qkv_bias: family == Family::Qwen2,
                mlp_bias: false,
                tie_word_embeddings: false,
                embd_dropout: 0.0,
                attn_dropout: 0.0,
                resid_dropout: 0.0,
                initializer_range: 0.02,
                bos_token_id: Some(1),
                eos_token_id: vec![2],
                pad_token_id: None,
                dtype: None,
            },
        }
    }

    /// MLP inner width.
    pub fn intermediate_size(&self) -> i64 {
        self.intermediate_size.unwrap_or(4 * self.hidden_size)
    }

    /// Number of key/value heads.
    pub fn num_kv_heads(&self) -> i64 {
        self.num_kv_heads.unwrap_or(self.num_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        match self.head_dim {
            Some(d) => d,
            None if self.num_heads > 0 => self.hidden_size / self.num_heads,
            None => 0,
        }
    }

    /// Checks that the numbers describe a buildable model.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidConfig(msg));
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size()),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value <= 0 {
                return invalid(format!("{name} must be positive, got {value}"));
            }
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_heads != 0 {
            return invalid(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if self.num_heads % self.num_kv_heads() != 0 {
            return invalid(format!(
                "num_heads {} is not a multiple of num_kv_heads {}",
                self.num_heads,
                self.num_kv_heads()
            ));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return invalid(format!(
                "norm epsilon must be positive, got {}",
                self.norm_eps
            ));
        }
        for (name, p) in [
            ("embd_dropout", self.embd_dropout),
            ("attn_dropout", self.attn_dropout),
            ("resid_dropout", self.resid_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return invalid(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        match self.family {
            Family::Gpt2 => {
                if self.num_kv_heads() != self.num_heads {
                    return invalid(
                        "GPT-2 has no grouped-query attention: num_kv_heads must equal num_heads"
                            .into(),
                    );
                }
                if self.head_dim() * self.num_heads != self.hidden_size {
                    return invalid("GPT-2 requires head_dim × num_heads = hidden_size".into());
                }
                if !self.attention_bias || !self.mlp_bias {
                    return invalid("GPT-2 always has attention and MLP biases".into());
                }
                if self.rope_scaling.is_some() || self.sliding_window.is_some() {
                    return invalid("GPT-2 has no RoPE scaling or sliding window".into());
                }
            }
            Family::Llama | Family::Qwen2 | Family::Mistral => {
                if let Some(window) = self.sliding_window
                    && window <= 0
                {
                    return invalid(format!("sliding_window must be positive, got {window}"));
                }
                if let Some(scaling) = &self.rope_scaling {
                    scaling.validate(self.max_position_embeddings)?;
                }
                if self.embd_dropout != 0.0 || self.resid_dropout != 0.0 {
                    return invalid(
                        "Llama has only attention dropout; embd_dropout and resid_dropout must be 0".into(),
                    );
                }
                if self.head_dim() % 2 != 0 {
                    return invalid(format!(
                        "RoPE needs an even head_dim, got {}",
                        self.head_dim()
                    ));
                }
                if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
                    return invalid(format!(
                        "rope_theta must be positive, got {}",
                        self.rope_theta
                    ));
                }
            }
        }
        Ok(())
    }
}
