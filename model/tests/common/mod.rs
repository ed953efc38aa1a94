//! Helpers shared by the integration tests: tiny random models and the Python
//! reference implementation (`tests/python/model_reference.py`).
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use llmops_model::{Config, Family, Model};
use tch::{Device, Kind, Tensor, nn};

/// The Python interpreter with `transformers`: `LLMOPS_PYTHON`, else the project venv.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LLMOPS_PYTHON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Runs `model_reference.py` with `args`; panics with its output on failure.
pub fn reference(args: &[&str]) {
    run_script("model_reference.py", args);
}

/// Runs `tests/python/<script>` with the venv's Python; panics with its output
/// when it fails.
pub fn run_script(script: &str, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/python")
        .join(script);
    let python = python();
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); create the venv with scripts/setup-venv or set LLMOPS_PYTHON",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tensors of a safetensors file by name.
pub fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let a = a.to_kind(Kind::Float).to_device(Device::Cpu);
    let b = b.to_kind(Kind::Float).to_device(Device::Cpu);
    (a - b).abs().max().double_value(&[])
}

pub fn ids(tokens: &[i64]) -> Tensor {
    Tensor::from_slice(tokens).unsqueeze(0)
}

pub fn ids_arg(tokens: &[i64]) -> String {
    tokens
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A tiny config of `family` (2 layers, hidden 64, 4 heads, 2 KV heads for Llama).
pub fn tiny_config(family: Family, tied: bool) -> Config {
    let mut cfg = Config::default_for(family);
    cfg.vocab_size = 101;
    cfg.hidden_size = 64;
    cfg.num_layers = 2;
    cfg.num_heads = 4;
    cfg.max_position_embeddings = 64;
    cfg.tie_word_embeddings = tied;
    cfg.bos_token_id = Some(0);
    cfg.eos_token_id = vec![1];
    match family {
        Family::Gpt2 => {
            cfg.embd_dropout = 0.1;
            cfg.attn_dropout = 0.1;
            cfg.resid_dropout = 0.1;
        }
        Family::Llama | Family::Qwen2 | Family::Mistral => {
            cfg.intermediate_size = Some(96);
            cfg.num_kv_heads = Some(2);
            cfg.rope_theta = 500.0;
            cfg.norm_eps = 1e-5;
            if family == Family::Mistral {
                // Shorter than the test prompts, so that the window masks something.
                cfg.sliding_window = Some(5);
            }
        }
    }
    cfg
}

/// A randomly initialised model whose weights are spread out (norm scales around 1,
/// non-zero biases, weights with std 0.25) so every part of the math shows in the
/// logits.
pub fn tiny_model(family: Family, tied: bool, seed: i64) -> (nn::VarStore, Model) {
    tiny_model_with(&tiny_config(family, tied), seed)
}

/// [`tiny_model`] for any config.
pub fn tiny_model_with(config: &llmops_model::Config, seed: i64) -> (nn::VarStore, Model) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::new(&vs.root(), config).unwrap();
    tch::no_grad(|| {
        for (name, var) in vs.variables() {
            let noise = Tensor::randn(var.size(), (Kind::Float, Device::Cpu));
            let value = if var.dim() == 1 && name.ends_with("weight") {
                noise * 0.2 + 1.0
            } else if var.dim() == 1 {
                noise * 0.2
            } else {
                noise * 0.25
            };
            var.shallow_clone().copy_(&value);
        }
    });
    (vs, model)
}
