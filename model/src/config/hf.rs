//! The `config.json` layouts of `transformers`: one per `model_type`, plus the keys
//! every config may carry. Parsing rejects what it does not understand.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::path::Path;

use super::keys::{GENERIC_KEYS, GPT2_KEYS, LLAMA_KEYS};
use super::{Activation, Config, Dtype, Family};
use crate::error::{Error, Result};

impl Config {
    /// Reads and validates a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hf_json(&value)
    }

    /// Writes `config.json` in the layout `transformers` expects.
    pub fn to_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(&self.to_hf_json())
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }

    /// Parses a Hugging Face config object and validates it.
    pub fn from_hf_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::InvalidConfig("config.json must be a JSON object".into()))?;
        let model_type = obj
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::InvalidConfig("`model_type` is missing".into()))?;
        let family = match model_type {
            "gpt2" => Family::Gpt2,
            "llama" => Family::Llama,
            other => {
                return Err(Error::UnsupportedConfig(format!(
                    "model_type `{other}` (supported: gpt2, llama)"
                )));
            }
        };
        check_keys(obj, family)?;
        let json = Json { obj };
        check_generic(&json)?;
        let mut cfg = Config::default_for(family);
        match family {
            Family::Gpt2 => read_gpt2(&json, &mut cfg)?,
            Family::Llama => read_llama(&json, &mut cfg)?,
        }
        cfg.tie_word_embeddings = json.bool_or("tie_word_embeddings", cfg.tie_word_embeddings)?;
        cfg.initializer_range = json.f64_or("initializer_range", cfg.initializer_range)?;
        if obj.contains_key("bos_token_id") {
            cfg.bos_token_id = json.opt_i64("bos_token_id")?;
        }
        if obj.contains_key("eos_token_id") {
            cfg.eos_token_id = token_ids(obj.get("eos_token_id"), "eos_token_id")?;
        }
        cfg.pad_token_id = json.opt_i64("pad_token_id")?;
        // `transformers` 5 writes `dtype`; earlier versions wrote `torch_dtype`.
        let dtype = obj.get("dtype").or_else(|| obj.get("torch_dtype"));
        cfg.dtype = match dtype {
            Some(Value::String(name)) => Some(Dtype::from_hf(name)?),
            Some(Value::Null) | None => None,
            Some(other) => {
                return Err(Error::InvalidConfig(format!(
                    "dtype must be a string, got {other}"
                )));
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The Hugging Face config object for this model (what `config.json` holds).
    pub fn to_hf_json(&self) -> Value {
        let mut obj = match self.family {
            Family::Gpt2 => json!({
                "n_embd": self.hidden_size,
                "n_layer": self.num_layers,
                "n_head": self.num_heads,
                "n_positions": self.max_position_embeddings,
                "n_inner": self.intermediate_size,
                "activation_function": self.activation.hf_name(),
                "layer_norm_epsilon": self.norm_eps,
                "embd_pdrop": self.embd_dropout,
                "attn_pdrop": self.attn_dropout,
                "resid_pdrop": self.resid_dropout,
                "scale_attn_weights": true,
            }),
            Family::Llama => json!({
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size(),
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads,
                "num_key_value_heads": self.num_kv_heads(),
                "head_dim": self.head_dim(),
                "max_position_embeddings": self.max_position_embeddings,
                "hidden_act": self.activation.hf_name(),
                "rms_norm_eps": self.norm_eps,
                "rope_theta": self.rope_theta,
                "rope_scaling": null,
                "attention_bias": self.attention_bias,
                "mlp_bias": self.mlp_bias,
                "attention_dropout": self.attn_dropout,
            }),
        };
        let map = obj.as_object_mut().expect("json! object literal");
        map.insert("architectures".into(), json!([self.family.architecture()]));
        map.insert("model_type".into(), json!(self.family.model_type()));
        map.insert("vocab_size".into(), json!(self.vocab_size));
        map.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        map.insert("initializer_range".into(), json!(self.initializer_range));
        map.insert("bos_token_id".into(), json!(self.bos_token_id));
        map.insert("eos_token_id".into(), token_ids_json(&self.eos_token_id));
        map.insert("pad_token_id".into(), json!(self.pad_token_id));
        map.insert("use_cache".into(), json!(true));
        if let Some(dtype) = self.dtype {
            map.insert("dtype".into(), json!(dtype.hf_name()));
        }
        obj
    }
}

impl Serialize for Config {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_hf_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Config::from_hf_json(&value).map_err(serde::de::Error::custom)
    }
}

fn read_gpt2(json: &Json, cfg: &mut Config) -> Result<()> {
    cfg.vocab_size = json.i64_or("vocab_size", cfg.vocab_size)?;
    cfg.hidden_size = json.i64_or("n_embd", cfg.hidden_size)?;
    cfg.num_layers = json.i64_or("n_layer", cfg.num_layers)?;
    cfg.num_heads = json.i64_or("n_head", cfg.num_heads)?;
    cfg.max_position_embeddings = json.i64_or("n_positions", cfg.max_position_embeddings)?;
    cfg.intermediate_size = json.opt_i64("n_inner")?;
    cfg.activation = Activation::from_hf(&json.str_or("activation_function", "gelu_new")?)?;
    cfg.norm_eps = json.f64_or("layer_norm_epsilon", cfg.norm_eps)?;
    cfg.embd_dropout = json.f64_or("embd_pdrop", cfg.embd_dropout)?;
    cfg.attn_dropout = json.f64_or("attn_pdrop", cfg.attn_dropout)?;
    cfg.resid_dropout = json.f64_or("resid_pdrop", cfg.resid_dropout)?;
    if !json.bool_or("scale_attn_weights", true)? {
        return Err(Error::UnsupportedConfig("scale_attn_weights=false".into()));
    }
    if json.bool_or("scale_attn_by_inverse_layer_idx", false)? {
        return Err(Error::UnsupportedConfig(
            "scale_attn_by_inverse_layer_idx=true".into(),
        ));
    }
    Ok(())
}

fn read_llama(json: &Json, cfg: &mut Config) -> Result<()> {
    cfg.vocab_size = json.i64_or("vocab_size", cfg.vocab_size)?;
    cfg.hidden_size = json.i64_or("hidden_size", cfg.hidden_size)?;
    cfg.intermediate_size = Some(json.i64_or("intermediate_size", cfg.intermediate_size())?);
    cfg.num_layers = json.i64_or("num_hidden_layers", cfg.num_layers)?;
    cfg.num_heads = json.i64_or("num_attention_heads", cfg.num_heads)?;
    cfg.num_kv_heads = json.opt_i64("num_key_value_heads")?;
    cfg.head_dim = json.opt_i64("head_dim")?;
    cfg.max_position_embeddings =
        json.i64_or("max_position_embeddings", cfg.max_position_embeddings)?;
    cfg.activation = Activation::from_hf(&json.str_or("hidden_act", "silu")?)?;
    cfg.norm_eps = json.f64_or("rms_norm_eps", cfg.norm_eps)?;
    cfg.attention_bias = json.bool_or("attention_bias", false)?;
    cfg.mlp_bias = json.bool_or("mlp_bias", false)?;
    cfg.attn_dropout = json.f64_or("attention_dropout", 0.0)?;
    cfg.rope_theta = json.f64_or("rope_theta", cfg.rope_theta)?;
    // `transformers` 5 moved RoPE settings into `rope_parameters`; older versions use
    // `rope_theta` + `rope_scaling`. Only the unscaled ("default") rotation is supported.
    for key in ["rope_scaling", "rope_parameters"] {
        match json.obj.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(params)) => {
                let rope_type = params
                    .get("rope_type")
                    .or_else(|| params.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if rope_type != "default" {
                    return Err(Error::UnsupportedConfig(format!(
                        "{key} with rope_type `{rope_type}` (only unscaled RoPE is implemented)"
                    )));
                }
                if let Some((name, _)) = params
                    .iter()
                    .find(|(k, _)| !matches!(k.as_str(), "rope_type" | "type" | "rope_theta"))
                {
                    return Err(Error::UnsupportedConfig(format!("{key}.{name}")));
                }
                if let Some(theta) = params.get("rope_theta") {
                    cfg.rope_theta = theta.as_f64().ok_or_else(|| {
                        Error::InvalidConfig(format!("{key}.rope_theta must be a number"))
                    })?;
                }
            }
            Some(other) => {
                return Err(Error::UnsupportedConfig(format!("{key}={other}")));
            }
        }
    }
    Ok(())
}

/// Settings shared by every `transformers` config that must keep their default
/// for a plain decoder-only model.
fn check_generic(json: &Json) -> Result<()> {
    for key in ["is_encoder_decoder", "add_cross_attention"] {
        if json.bool_or(key, false)? {
            return Err(Error::UnsupportedConfig(format!("{key}=true")));
        }
    }
    match json.obj.get("pruned_heads") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(_) => Err(Error::UnsupportedConfig("pruned_heads".into())),
    }
}
fn check_keys(obj: &Map<String, Value>, family: Family) -> Result<()> {
    let specific = match family {
        Family::Gpt2 => GPT2_KEYS,
        Family::Llama => LLAMA_KEYS,
    };
    match obj
        .keys()
        .find(|k| !specific.contains(&k.as_str()) && !GENERIC_KEYS.contains(&k.as_str()))
    {
        Some(key) => Err(Error::UnsupportedConfig(format!(
            "unknown setting `{key}` for model_type {}",
            family.model_type()
        ))),
        None => Ok(()),
    }
}

/// Typed access to a config object with `transformers` semantics: a missing key or
/// an explicit `null` means "use the default".
struct Json<'a> {
    obj: &'a Map<String, Value>,
}

impl Json<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn wrong_type(key: &str, want: &str, got: &Value) -> Error {
        Error::InvalidConfig(format!("`{key}` must be {want}, got {got}"))
    }

    fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        self.get(key)
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| Self::wrong_type(key, "an integer", v))
            })
            .transpose()
    }

    fn i64_or(&self, key: &str, default: i64) -> Result<i64> {
        Ok(self.opt_i64(key)?.unwrap_or(default))
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| Self::wrong_type(key, "a number", v))
            })
            .transpose()
            .map(|v| v.unwrap_or(default))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| Self::wrong_type(key, "a boolean", v))
            })
            .transpose()
            .map(|v| v.unwrap_or(default))
    }

    fn str_or(&self, key: &str, default: &str) -> Result<String> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Self::wrong_type(key, "a string", v))
            })
            .transpose()
            .map(|v| v.unwrap_or_else(|| default.to_owned()))
    }
}

/// Reads a token-id setting that `transformers` allows as `null`, one id, or a list.
pub(crate) fn token_ids(value: Option<&Value>, key: &str) -> Result<Vec<i64>> {
    let bad = |v: &Value| {
        Error::InvalidConfig(format!("`{key}` must be an id or a list of ids, got {v}"))
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(|id| vec![id])
            .ok_or_else(|| bad(value.unwrap_or(&Value::Null))),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| bad(v)))
            .collect(),
        Some(other) => Err(bad(other)),
    }
}

/// Writes token ids the way `transformers` does: `null`, a bare id, or a list.
pub(crate) fn token_ids_json(ids: &[i64]) -> Value {
    match ids {
        [] => Value::Null,
        [id] => json!(id),
        ids => json!(ids),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Config> {
        Config::from_hf_json(&v)
    }

    #[test]
    fn gpt2_defaults_and_fields() {
        let cfg = parse(json!({
            "model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4,
            "n_positions": 128, "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 0,
            "transformers_version": "4.0", "n_ctx": 128, "summary_type": "cls_index"
        }))
        .unwrap();
        assert_eq!(cfg.family, Family::Gpt2);
        assert_eq!(cfg.intermediate_size(), 256);
        assert_eq!(cfg.head_dim(), 16);
        assert!(cfg.tie_word_embeddings);
        assert_eq!(cfg.activation, Activation::GeluNew);
        assert_eq!(cfg.eos_token_id, vec![0]);
    }

    #[test]
    fn llama_fields_and_gqa() {
        let cfg = parse(json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "rope_theta": 500000.0, "eos_token_id": [1, 2],
            "bos_token_id": 0, "rope_scaling": null
        }))
        .unwrap();
        assert_eq!(cfg.num_kv_heads(), 2);
        assert_eq!(cfg.rope_theta, 500000.0);
        assert_eq!(cfg.eos_token_id, vec![1, 2]);
        assert!(!cfg.tie_word_embeddings);
    }

    #[test]
    fn rope_parameters_default_is_accepted() {
        let cfg = parse(json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
            "bos_token_id": 1, "eos_token_id": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1234.0}
        }))
        .unwrap();
        assert_eq!(cfg.rope_theta, 1234.0);
    }

    #[test]
    fn unsupported_settings_are_errors() {
        let base = json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
            "bos_token_id": 1, "eos_token_id": 2
        });
        let with = |key: &str, value: Value| {
            let mut v = base.clone();
            v[key] = value;
            parse(v).unwrap_err().to_string()
        };
        let err = with(
            "rope_scaling",
            json!({"rope_type": "linear", "factor": 2.0}),
        );
        assert!(
            err.contains("rope_scaling") && err.contains("linear"),
            "{err}"
        );
        let err = with("hidden_act", json!("quick_gelu"));
        assert!(err.contains("quick_gelu"), "{err}");
        let err = with("sliding_window", json!(4096));
        assert!(err.contains("sliding_window"), "{err}");
        let err = with("num_key_value_heads", json!(3));
        assert!(err.contains("num_kv_heads"), "{err}");
        let err = parse(json!({"model_type": "mistral"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mistral"), "{err}");
        let err = parse(json!({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": true}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("scale_attn_by_inverse_layer_idx"), "{err}");
        let err = parse(json!({"model_type": "gpt2", "n_embd": "big"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("n_embd"), "{err}");
    }

    #[test]
    fn round_trips_through_hf_json() {
        for family in [Family::Gpt2, Family::Llama] {
            let mut cfg = Config::default_for(family);
            cfg.hidden_size = 64;
            cfg.num_heads = 4;
            cfg.num_layers = 2;
            cfg.vocab_size = 100;
            cfg.bos_token_id = Some(1);
            cfg.eos_token_id = vec![2];
            cfg.dtype = Some(Dtype::Bf16);
            if family == Family::Llama {
                cfg.intermediate_size = Some(96);
                cfg.num_kv_heads = Some(2);
            }
            let text = serde_json::to_string(&cfg).unwrap();
            let back: Config = serde_json::from_str(&text).unwrap();
            // Derived defaults are written out explicitly, so compare the derived view.
            assert_eq!(back.intermediate_size(), cfg.intermediate_size());
            assert_eq!(back.head_dim(), cfg.head_dim());
            assert_eq!(back.num_kv_heads(), cfg.num_kv_heads());
            assert_eq!(back.to_hf_json(), cfg.to_hf_json());
            assert_eq!(back.dtype, Some(Dtype::Bf16));
        }
    }
}
