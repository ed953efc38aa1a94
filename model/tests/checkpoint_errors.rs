//! Loading rejects directories that do not describe the model they claim to, with an
//! error naming the file, the tensor and the expected shape.

mod common;

use std::path::Path;

use common::tiny_model;
use llmops_model::{Dtype, Error, Family, GenerationConfig, io};
use tch::{Device, Kind, Tensor};

fn saved(family: Family, tied: bool) -> tempfile::TempDir {
    let (vs, model) = tiny_model(family, tied, 12);
    let dir = tempfile::tempdir().unwrap();
    io::save(
        dir.path(),
        &vs,
        &model,
        &GenerationConfig::from_model_config(model.config()),
    )
    .unwrap();
    dir
}

/// Rewrites the weights file through `edit`.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join(io::WEIGHTS_FILE);
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &path).unwrap();
}

#[test]
fn missing_tensor_is_named_with_its_shape() {
    let dir = saved(Family::Llama, false);
    edit_weights(dir.path(), |t| {
        t.retain(|(n, _)| n != "model.layers.1.self_attn.k_proj.weight")
    });
    let err = io::load(dir.path(), Device::Cpu, Dtype::F32).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingTensor { .. }), "{msg}");
    assert!(
        msg.contains("model.layers.1.self_attn.k_proj.weight") && msg.contains("[32, 64]"),
        "{msg}"
    );
}

#[test]
fn shape_mismatch_is_reported() {
    let dir = saved(Family::Gpt2, true);
    edit_weights(dir.path(), |t| {
        for (name, tensor) in t.iter_mut() {
            if name == "transformer.h.0.attn.c_attn.weight" {
                // The nn.Linear layout [out, in] instead of GPT-2's Conv1D [in, out].
                *tensor = tensor.tr().contiguous();
            }
        }
    });
    let msg = io::load(dir.path(), Device::Cpu, Dtype::F32)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("transformer.h.0.attn.c_attn.weight"), "{msg}");
    assert!(
        msg.contains("[192, 64]") && msg.contains("[64, 192]"),
        "{msg}"
    );
}

#[test]
fn unknown_tensors_are_rejected_but_hf_buffers_are_ignored() {
    let dir = saved(Family::Gpt2, true);
    edit_weights(dir.path(), |t| {
        // What old GPT-2 checkpoints carry: causal-mask buffers and a copy of the
        // tied lm_head; both are ignored, like transformers does.
        let wte = t
            .iter()
            .find(|(n, _)| n == "transformer.wte.weight")
            .unwrap()
            .1
            .copy();
        t.push(("lm_head.weight".into(), wte));
        t.push((
            "transformer.h.0.attn.bias".into(),
            Tensor::ones([1, 1, 64, 64], (Kind::Float, Device::Cpu)),
        ));
        t.push((
            "transformer.h.0.attn.masked_bias".into(),
            Tensor::from(-1e4f32),
        ));
    });
    io::load(dir.path(), Device::Cpu, Dtype::F32).unwrap();

    edit_weights(dir.path(), |t| {
        t.push((
            "transformer.h.9.mlp.c_fc.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ))
    });
    let msg = io::load(dir.path(), Device::Cpu, Dtype::F32)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("transformer.h.9.mlp.c_fc.weight") && msg.contains("not part of this model"),
        "{msg}"
    );
}

#[test]
fn gpt2_names_without_the_transformer_prefix_load() {
    let dir = saved(Family::Gpt2, true);
    edit_weights(dir.path(), |t| {
        for (name, _) in t.iter_mut() {
            *name = name.trim_start_matches("transformer.").to_string();
        }
    });
    io::load(dir.path(), Device::Cpu, Dtype::F32).unwrap();
}

#[test]
fn unsupported_config_and_missing_files_are_reported() {
    let dir = saved(Family::Llama, false);
    let config_path = dir.path().join(io::CONFIG_FILE);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(&config_path, config.to_string()).unwrap();
    let msg = io::load(dir.path(), Device::Cpu, Dtype::F32)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("rope_scaling") && msg.contains("yarn"),
        "{msg}"
    );

    std::fs::remove_file(&config_path).unwrap();
    let msg = io::load(dir.path(), Device::Cpu, Dtype::F32)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("config.json"), "{msg}");

    let dir = saved(Family::Gpt2, true);
    std::fs::remove_file(dir.path().join(io::WEIGHTS_FILE)).unwrap();
    let msg = io::load(dir.path(), Device::Cpu, Dtype::F32)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn saved_files_follow_the_hf_layout() {
    let dir = saved(Family::Llama, true);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(io::CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["dtype"], "float32");
    assert_eq!(config["num_key_value_heads"], 2);
    assert_eq!(config["tie_word_embeddings"], true);
    let generation: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(io::GENERATION_CONFIG_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(generation["eos_token_id"], 1);
    assert_eq!(generation["bos_token_id"], 0);
    let bytes = std::fs::read(dir.path().join(io::WEIGHTS_FILE)).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    // Saving from a bf16 store writes bf16 tensors and says so in config.json.
    let mut loaded = io::load(dir.path(), Device::Cpu, Dtype::F32).unwrap();
    loaded.vs.bfloat16();
    let out = tempfile::tempdir().unwrap();
    io::save(
        out.path(),
        &loaded.vs,
        &loaded.model,
        &loaded.generation_config,
    )
    .unwrap();
    let config = std::fs::read_to_string(out.path().join(io::CONFIG_FILE)).unwrap();
    assert!(config.contains("\"dtype\": \"bfloat16\""), "{config}");
    let reloaded = io::load(out.path(), Device::Cpu, Dtype::F32).unwrap();
    assert_eq!(reloaded.model.config().dtype, Some(Dtype::Bf16));
}
