//! Autoregressive generation with a KV cache, and the `generation_config.json` file.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::ops::ControlFlow;
use std::path::Path;

use tch::Tensor;

use crate::config::{Config, token_ids, token_ids_json};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampling::LogitsProcessor;

/// Generation defaults shipped with a model (`generation_config.json`).
///
/// Keys this crate does not use are kept in `extra` so a load/save round trip does
/// not lose them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<i64>,
    /// Token ids that end generation; HF writes one id or a list.
    #[serde(
        default,
        deserialize_with = "de_token_ids",
        serialize_with = "ser_token_ids",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub eos_token_id: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn de_token_ids<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<i64>, D::Error> {
    let value = Value::deserialize(d)?;
    token_ids(Some(&value), "eos_token_id").map_err(serde::de::Error::custom)
}

fn ser_token_ids<S: serde::Serializer>(ids: &[i64], s: S) -> std::result::Result<S::Ok, S::Error> {
    token_ids_json(ids).serialize(s)
}

impl GenerationConfig {
    /// The special tokens of a model config, as `transformers` derives them when a
    /// checkpoint has no `generation_config.json`.
    pub fn from_model_config(config: &Config) -> Self {
        GenerationConfig {
            bos_token_id: config.bos_token_id,
            eos_token_id: config.eos_token_id.clone(),
            pad_token_id: config.pad_token_id,
            ..Default::default()
        }
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn to_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` were produced or the context window is full.
    Length,
    /// The model produced one of the stop token ids.
    StopToken,
    /// The per-token callback asked to stop (e.g. a stop string matched).
    Stopped,
}

/// The outcome of [`generate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// New tokens, without the prompt and without a final stop token.
    pub tokens: Vec<i64>,
    pub finish_reason: FinishReason,
}

/// Generates up to `max_new_tokens` tokens after `prompt` for a single sequence.
///
/// The prompt is run once to fill a KV cache, then each step feeds only the newest
/// token. `on_token` sees every new token (streaming) and may break to stop early.
pub fn generate(
    model: &Model,
    prompt: &[i64],
    max_new_tokens: usize,
    stop_token_ids: &[i64],
    sampler: &mut LogitsProcessor,
    mut on_token: impl FnMut(i64) -> ControlFlow<()>,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::InvalidInput(
            "the prompt must contain at least one token".into(),
        ));
    }
    let context = model.config().max_position_embeddings;
    let mut cache = model.new_cache();
    let mut tokens = Vec::new();
    let mut input = Tensor::f_from_slice(prompt)?.f_unsqueeze(0)?;
    let mut used = prompt.len() as i64;
    while tokens.len() < max_new_tokens {
        let logits = model.forward_last(&input, None, &mut cache)?;
        let token = sampler.sample(&logits.f_get(0)?)?;
        if stop_token_ids.contains(&token) {
            return Ok(Generation {
                tokens,
                finish_reason: FinishReason::StopToken,
            });
        }
        tokens.push(token);
        if on_token(token).is_break() {
            return Ok(Generation {
                tokens,
                finish_reason: FinishReason::Stopped,
            });
        }
        // The next step would need one more position than the model has.
        if used >= context {
            break;
        }
        used += 1;
        input = Tensor::f_from_slice(&[token])?.f_unsqueeze(0)?;
    }
    Ok(Generation {
        tokens,
        finish_reason: FinishReason::Length,
    })
}
