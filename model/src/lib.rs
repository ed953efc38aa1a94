//! Decoder-only transformer models on libtorch, shared by the trainer and the server.
//!
//! - [`Config`]: architecture from/to a Hugging Face `config.json` (GPT-2, Llama).
//! - [`Model`]: the network; parameters live in a `tch::nn::VarStore` under their HF
//!   safetensors names, so an optimiser, [`io::load`] and [`io::save`] see the same
//!   tensors. [`Model::forward_t`] trains, [`Model::forward`] decodes with a [`KvCache`].
//! - [`sampling`], [`stop`], [`generation`]: turning logits into text.
//! - [`lora`]: low-rank adapters for fine-tuning, merged into the weights for export.
//! - [`nf4`], [`qlora`]: the frozen base's projections in 4-bit NormalFloat with
//!   double quantization, dequantized on the fly, under LoRA adapters (QLoRA).
//! - [`multi_lora`]: several adapters served unmerged on one base, routed per batch row.
//!
//! Models load in `transformers` and `transformers` models load here; the parity
//! tests in `tests/` hold the two implementations to the same logits.

pub mod config;
pub mod error;
pub mod generation;
mod gpt2;
pub mod io;
pub mod kv_cache;
pub mod layers;
mod llama;
pub mod lora;
pub mod model;
pub mod multi_lora;
pub mod nf4;
pub mod peft;
pub mod qlora;
pub mod sampling;
pub mod stop;

pub use config::{Activation, Config, Dtype, Family, RopeScaling};
pub use error::{Error, Result};
pub use generation::{FinishReason, Generation, GenerationConfig, generate};
pub use io::LoadedModel;
pub use kv_cache::KvCache;
pub use lora::LoraSettings;
pub use model::{Block, Model, segment_seed};
pub use multi_lora::{AdapterRoutes, PeftAdapter};
pub use qlora::QuantizedBase;
pub use sampling::{LogitsProcessor, Sampling};
pub use stop::{StopMatch, StopSequences};
