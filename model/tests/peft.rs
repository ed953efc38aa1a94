//! Unmerged LoRA adapters in the PEFT layout: `peft` loads ours on the base model
//! in `transformers` with the same logits (fp32, within 1e-4), merged or not, and
//! this crate loads them back exactly.

mod common;

use common::{ids, ids_arg, max_abs_diff, read_tensors, run_script, tiny_model};
use llmops_model::{Dtype, Family, GenerationConfig, LoraSettings, io, peft};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
const PROMPT: &[i64] = &[0, 17, 42, 99, 3, 64, 8, 23, 100, 5, 77, 31];

fn check(family: Family, targets: &[&str]) {
    let (vs, mut model) = tiny_model(family, false, 5);
    let base_dir = tempfile::tempdir().unwrap();
    let generation = GenerationConfig::from_model_config(model.config());
    io::save(base_dir.path(), &vs, &model, &generation).unwrap();

    let settings = LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    };
    model.add_lora(&vs, &settings).unwrap();
    // As training leaves them: B away from its zero start.
    tch::no_grad(|| {
        for (name, var) in vs.variables() {
            if name.ends_with("lora_B.weight") {
                var.shallow_clone()
                    .copy_(&(Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * 0.2));
            }
        }
    });
    let adapter_dir = tempfile::tempdir().unwrap();
    peft::save_adapter(adapter_dir.path(), &vs, &model, &settings, "tiny-base").unwrap();
    let ours = tch::no_grad(|| model.forward_t(&ids(PROMPT), false)).unwrap();

    let out = adapter_dir.path().join("reference.safetensors");
    run_script(
        "peft_reference.py",
        &[
            "logits",
            "--base",
            base_dir.path().to_str().unwrap(),
            "--adapter",
            adapter_dir.path().to_str().unwrap(),
            "--ids",
            &ids_arg(PROMPT),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let reference = read_tensors(&out);
    let diff = max_abs_diff(&ours, &reference["logits"]);
    println!("{family:?}: our adapter in peft, max |Δlogit| = {diff:.2e}");
    assert!(diff < TOL, "peft computes different logits: {diff}");
    let diff = max_abs_diff(&ours, &reference["merged"]);
    assert!(diff < TOL, "peft's merged model differs: {diff}");
    let base_only = tch::no_grad(|| {
        io::load(base_dir.path(), Device::Cpu, Dtype::F32)
            .unwrap()
            .model
            .forward_t(&ids(PROMPT), false)
    })
    .unwrap();
    assert!(
        max_abs_diff(&base_only, &reference["logits"]) > TOL,
        "the adapter changed nothing, so the comparison proves nothing"
    );

    // Loaded back here on a fresh copy of the base: the same function.
    let mut loaded = io::load(base_dir.path(), Device::Cpu, Dtype::F32).unwrap();
    let read = peft::load_adapter(adapter_dir.path(), &mut loaded.model, &loaded.vs).unwrap();
    assert_eq!(read.rank, 4);
    assert_eq!(read.alpha, 8.0);
    let again = tch::no_grad(|| loaded.model.forward_t(&ids(PROMPT), false)).unwrap();
    assert_eq!(max_abs_diff(&again, &ours), 0.0);
}

#[test]
fn llama_adapters_load_in_peft_and_back() {
    check(Family::Llama, &["q_proj", "v_proj", "down_proj"]);
}

#[test]
fn qwen2_adapters_load_in_peft_and_back() {
    check(Family::Qwen2, &["q_proj", "k_proj", "o_proj"]);
}

#[test]
fn gpt2_conv1d_adapters_load_in_peft_and_back() {
    check(Family::Gpt2, &["c_attn", "c_fc"]);
}

#[test]
fn adapters_this_crate_cannot_compute_are_refused_naming_the_setting() {
    let (vs, mut model) = tiny_model(Family::Llama, false, 5);
    let dir = tempfile::tempdir().unwrap();
    let config = |extra: serde_json::Value| {
        let mut c = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
            "target_modules": ["q_proj"], "bias": "none"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        std::fs::write(dir.path().join(peft::ADAPTER_CONFIG_FILE), c.to_string()).unwrap();
    };
    for (extra, named) in [
        (serde_json::json!({"use_dora": true}), "use_dora"),
        (serde_json::json!({"use_rslora": true}), "use_rslora"),
        (serde_json::json!({"bias": "all"}), "bias"),
        (serde_json::json!({"peft_type": "IA3"}), "IA3"),
    ] {
        config(extra);
        let err = peft::load_adapter(dir.path(), &mut model, &vs)
            .unwrap_err()
            .to_string();
        assert!(err.contains(named), "{err}");
    }
}
