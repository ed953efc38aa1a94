//! Loading and saving models in the Hugging Face directory layout, so checkpoints
//! move freely between this crate and `transformers`:
//!
//! ```text
//! config.json              architecture (see `Config`)
//! model.safetensors        weights, HF parameter names (or sharded, with an index)
//! generation_config.json   special tokens and sampling defaults
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype as StDtype, SafeTensors};
use tch::{Device, Kind, Tensor, nn};

use crate::config::{Config, Dtype};
use crate::error::{Error, Result};
use crate::generation::GenerationConfig;
use crate::lora;
use crate::model::{Init, Model};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// LoRA adapter tensors of a training checkpoint (not part of the HF layout).
pub const ADAPTERS_FILE: &str = "adapters.safetensors";

/// A model loaded from a directory, with the store that owns its parameters.
#[derive(Debug)]
pub struct LoadedModel {
    /// Owns every parameter; hand it to an optimiser or to [`save`].
    pub vs: nn::VarStore,
    pub model: Model,
    pub generation_config: GenerationConfig,
}

/// Loads a model directory onto `device`, converting weights to `dtype`.
pub fn load(dir: impl AsRef<Path>, device: Device, dtype: Dtype) -> Result<LoadedModel> {
    let dir = dir.as_ref();
    let config = Config::from_file(dir.join(CONFIG_FILE))?;
    let mut vs = nn::VarStore::new(device);
    vs.set_kind(dtype.kind());
    let model = Model::build(&vs.root(), &config, Init::Zeros)?;
    load_weights(&vs, &config, dir)?;
    let generation_path = dir.join(GENERATION_CONFIG_FILE);
    let generation_config = if generation_path.exists() {
        GenerationConfig::from_file(&generation_path)?
    } else {
        GenerationConfig::from_model_config(&config)
    };
    Ok(LoadedModel {
        vs,
        model,
        generation_config,
    })
}

/// Fills every variable of `vs` from the safetensors file(s) in `dir`.
///
/// Every variable must be present with its exact shape, and every tensor in the
/// files must belong to the model, except buffers `transformers` itself ignores.
pub fn load_weights(vs: &nn::VarStore, config: &Config, dir: &Path) -> Result<()> {
    let variables = vs.variables();
    let mut loaded = BTreeSet::new();
    for file in weight_files(dir)? {
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
            path: file.clone(),
            message: e.to_string(),
        })?;
        for (name, view) in tensors.iter() {
            let Some(target) = resolve_name(name, &variables) else {
                if ignored(name, config) {
                    continue;
                }
                return Err(Error::UnexpectedTensor {
                    name: name.to_owned(),
                    path: file.clone(),
                });
            };
            let var = &variables[&target];
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != var.size() {
                return Err(Error::ShapeMismatch {
                    name: target,
                    expected: var.size(),
                    found: shape,
                    path: file.clone(),
                });
            }
            let kind = tensor_kind(name, view.dtype(), &file)?;
            let src = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            // `copy_` converts dtype and device; parameters are leaves that require
            // grad, so the in-place write must not be recorded.
            tch::no_grad(|| var.shallow_clone().f_copy_(&src))?;
            loaded.insert(target);
        }
    }
    let mut missing: Vec<_> = variables.keys().filter(|k| !loaded.contains(*k)).collect();
    missing.sort();
    if let Some(name) = missing.first() {
        return Err(Error::MissingTensor {
            name: (*name).clone(),
            expected: variables[*name].size(),
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Writes `model` (whose parameters live in `vs`) as an HF model directory.
///
/// Weights are stored in the store's dtype; with tied embeddings `lm_head.weight` is
/// omitted, exactly as `save_pretrained` does.
pub fn save(
    dir: impl AsRef<Path>,
    vs: &nn::VarStore,
    model: &Model,
    generation_config: &GenerationConfig,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut config = model.config().clone();
    config.dtype = Dtype::from_kind(model.embed_tokens.kind());
    write_atomically(&dir.join(CONFIG_FILE), |p| config.to_file(p))?;
    write_atomically(&dir.join(WEIGHTS_FILE), |p| write_safetensors(vs, p))?;
    write_atomically(&dir.join(GENERATION_CONFIG_FILE), |p| {
        generation_config.to_file(p)
    })
}

/// Writes every model variable of `vs` (LoRA adapters left out: they are not
/// part of the HF layout) to one safetensors file with the `{"format": "pt"}`
/// metadata `transformers` checks for.
pub fn write_safetensors(vs: &nn::VarStore, path: &Path) -> Result<()> {
    write_variables(vs, path, |name| !lora::is_adapter(name))
}

/// Writes the LoRA adapters of `vs` to `dir/adapters.safetensors`, if it has any,
/// for checkpoints: [`load_weights`] reads the file back when it is there.
pub fn save_adapters(dir: &Path, vs: &nn::VarStore) -> Result<bool> {
    if !vs.variables().keys().any(|n| lora::is_adapter(n)) {
        return Ok(false);
    }
    write_atomically(&dir.join(ADAPTERS_FILE), |p| {
        write_variables(vs, p, lora::is_adapter)
    })?;
    Ok(true)
}

fn write_variables(vs: &nn::VarStore, path: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
    write_renamed(vs, path, |name| keep(name).then(|| name.to_owned()))
}

/// Writes the variables of `vs` that `rename` names (under that name) to one
/// safetensors file.
pub(crate) fn write_renamed(
    vs: &nn::VarStore,
    path: &Path,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let mut variables: Vec<_> = vs
        .variables()
        .into_iter()
        .filter_map(|(name, tensor)| rename(&name).map(|n| (n, tensor)))
        .collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut buffers = Vec::with_capacity(variables.len());
    for (name, tensor) in &variables {
        let tensor = tensor.f_to_device(Device::Cpu)?.f_contiguous()?;
        let dtype = match tensor.kind() {
            Kind::Float => StDtype::F32,
            Kind::Half => StDtype::F16,
            Kind::BFloat16 => StDtype::BF16,
            Kind::Double => StDtype::F64,
            other => {
                return Err(Error::UnsupportedDtype {
                    name: name.clone(),
                    dtype: format!("{other:?}"),
                    path: path.to_path_buf(),
                });
            }
        };
        let numel = tensor.numel();
        let mut data = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
        tensor.f_copy_data_u8(&mut data, numel)?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), dtype, shape, data));
    }
    let st_err = |e: safetensors::SafeTensorError| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(st_err)?;
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::tensor::serialize_to_file(views, Some(metadata), path).map_err(st_err)
}

/// The libtorch kind of a safetensors dtype a checkpoint may hold.
pub(crate) fn tensor_kind(name: &str, dtype: StDtype, path: &Path) -> Result<Kind> {
    match dtype {
        StDtype::F32 => Ok(Kind::Float),
        StDtype::F16 => Ok(Kind::Half),
        StDtype::BF16 => Ok(Kind::BFloat16),
        StDtype::F64 => Ok(Kind::Double),
        other => Err(Error::UnsupportedDtype {
            name: name.to_owned(),
            dtype: format!("{other:?}"),
            path: path.to_path_buf(),
        }),
    }
}

/// The weight files of a directory: one `model.safetensors`, or the shards an
/// index names (large HF checkpoints); plus the adapters of a LoRA checkpoint.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = model_weight_files(dir)?;
    let adapters = dir.join(ADAPTERS_FILE);
    if adapters.exists() {
        files.push(adapters);
    }
    Ok(files)
}

fn model_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(WEIGHTS_INDEX_FILE);
    if !index_path.exists() {
        return Err(Error::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} exists"),
            ),
        ));
    }
    let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
    let index: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index_path.clone(),
        source,
    })?;
    let shards: BTreeSet<&str> = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Safetensors {
            path: index_path.clone(),
            message: "missing `weight_map` object".into(),
        })?
        .values()
        .filter_map(|v| v.as_str())
        .collect();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// Maps a checkpoint name to a variable name. Original GPT-2 checkpoints store the
/// base model without its `transformer.` prefix (`h.0.attn.c_attn.weight`), which
/// `transformers` also accepts.
fn resolve_name(name: &str, variables: &HashMap<String, Tensor>) -> Option<String> {
    if variables.contains_key(name) {
        return Some(name.to_owned());
    }
    let prefixed = format!("transformer.{name}");
    variables.contains_key(&prefixed).then_some(prefixed)
}

/// Checkpoint entries that are not parameters: GPT-2's causal-mask buffers, RoPE
/// frequency buffers of old Llama exports, and a redundant `lm_head.weight` next to
/// tied embeddings.
fn ignored(name: &str, config: &Config) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with(".rotary_emb.inv_freq")
        || (config.tie_word_embeddings && name == "lm_head.weight")
}

/// Writes through a temporary file and renames, so a crash never leaves a truncated
/// file under the final name.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
