//! LoRA adapters in the layout of PEFT (`peft.PeftModel.save_pretrained`), so an
//! unmerged fine-tune is an ordinary adapter the Python ecosystem loads on its base
//! model, and one this crate loads back:
//!
//! ```text
//! adapter_config.json        peft_type LORA, r, lora_alpha, target_modules, ...
//! adapter_model.safetensors  base_model.model.<projection>.lora_A.weight [r, in]
//!                            base_model.model.<projection>.lora_B.weight [out, r]
//! ```
//!
//! The tensor names are the model's own adapter variables ([`crate::lora`]) under
//! PEFT's `base_model.model.` prefix; the shapes are PEFT's for `nn.Linear` and
//! GPT-2's `Conv1D` alike (PEFT marks the latter `fan_in_fan_out`).

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use serde_json::{Value, json};
use tch::{Kind, Tensor, nn};

use crate::config::Family;
use crate::error::{Error, Result};
use crate::lora::{self, LoraSettings};
use crate::model::Model;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// What PEFT puts before a projection's name in the saved keys.
pub(crate) const PREFIX: &str = "base_model.model.";

/// Writes the adapters of `vs` (added to `model` with `settings`) to `dir` in the
/// PEFT layout; `base_model` is recorded as `base_model_name_or_path`.
pub fn save_adapter(
    dir: &Path,
    vs: &nn::VarStore,
    model: &Model,
    settings: &LoraSettings,
    base_model: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut targets = settings.targets.clone();
    targets.sort();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": model.config().family == Family::Gpt2,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
    });
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| Error::InvalidConfig(e.to_string()))?;
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    std::fs::write(&config_path, text + "\n").map_err(|e| Error::io(&config_path, e))?;
    crate::io::write_renamed(vs, &dir.join(ADAPTER_WEIGHTS_FILE), |name| {
        lora::is_adapter(name).then(|| format!("{PREFIX}{name}"))
    })
}

/// Reads a PEFT LoRA adapter from `dir` onto `model` (whose parameters are in
/// `vs`): adds the adapters its config names and fills them from its weights.
/// Returns the settings read. What this crate cannot compute the same way (DoRA,
/// rsLoRA, trained biases, extra saved modules) is refused, naming the setting.
pub fn load_adapter(dir: &Path, model: &mut Model, vs: &nn::VarStore) -> Result<LoraSettings> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: config_path.clone(),
        source,
    })?;
    let settings = settings_from(&config)?;
    model.add_lora(vs, &settings)?;
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let variables: HashMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| lora::is_adapter(name))
        .collect();
    let mut filled = 0;
    for (name, view) in tensors.iter() {
        let ours = name
            .strip_prefix(PREFIX)
            .map(|n| n.replace(".default.", "."))
            .filter(|n| variables.contains_key(n))
            .ok_or_else(|| Error::UnexpectedTensor {
                name: name.to_owned(),
                path: path.clone(),
            })?;
        let var = &variables[&ours];
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape != var.size() {
            return Err(Error::ShapeMismatch {
                name: ours,
                expected: var.size(),
                found: shape,
                path: path.clone(),
            });
        }
        let kind = crate::io::tensor_kind(name, view.dtype(), &path)?;
        let src = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        tch::no_grad(|| var.shallow_clone().f_copy_(&src.f_to_kind(Kind::Float)?))?;
        filled += 1;
    }
    if filled != variables.len() {
        return Err(Error::InvalidInput(format!(
            "{} holds {filled} adapter tensors; the config's target_modules need {}",
            path.display(),
            variables.len()
        )));
    }
    Ok(settings)
}

pub(crate) fn settings_from(config: &Value) -> Result<LoraSettings> {
    let unsupported = |what: String| Err(Error::UnsupportedConfig(what));
    if config["peft_type"] != "LORA" {
        return unsupported(format!(
            "adapter peft_type {} (only LORA)",
            config["peft_type"]
        ));
    }
    for flag in ["use_rslora", "use_dora"] {
        if config[flag] == true {
            return unsupported(format!("adapter {flag}=true"));
        }
    }
    if config.get("bias").and_then(Value::as_str).unwrap_or("none") != "none" {
        return unsupported(format!("adapter bias={}", config["bias"]));
    }
    if config
        .get("modules_to_save")
        .is_some_and(|m| !m.is_null() && m != &json!([]))
    {
        return unsupported("adapter modules_to_save".into());
    }
    for per_module in ["rank_pattern", "alpha_pattern"] {
        if config
            .get(per_module)
            .is_some_and(|m| m.as_object().is_some_and(|o| !o.is_empty()))
        {
            return unsupported(format!("adapter {per_module}"));
        }
    }
    let number = |key: &str| {
        config[key]
            .as_f64()
            .ok_or_else(|| Error::InvalidConfig(format!("adapter {key} must be a number")))
    };
    let targets = match &config["target_modules"] {
        Value::Array(names) => names
            .iter()
            .map(|n| n.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>(),
        Value::String(name) => Some(vec![name.clone()]),
        _ => None,
    }
    .ok_or_else(|| Error::InvalidConfig("adapter target_modules must be a list of names".into()))?;
    Ok(LoraSettings {
        rank: number("r")? as i64,
        alpha: number("lora_alpha")?,
        dropout: config["lora_dropout"].as_f64().unwrap_or(0.0),
        targets,
    })
}
