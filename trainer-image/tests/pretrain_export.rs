//! The exported model is a Hugging Face model: it loads with `llmops_model::io`
//! and with `transformers`, and both give the same logits (fp32, within 1e-4).

mod pretrain_common;

use std::path::Path;
use std::process::Command;

use llmops_model::{Dtype, io};
use pretrain_common::*;
use serde_json::{Value, json};
use tch::{Device, Tensor};

const TOL: f64 = 1e-4;
const IDS: &[i64] = &[5, 17, 42, 99, 3, 64, 8, 23, 100, 150, 77, 31];

fn python_logits(model: &Path) -> Tensor {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let python = std::env::var_os("LLMOPS_PYTHON").map_or(python, Into::into);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/pretrain_logits.py");
    let ids: Vec<String> = IDS.iter().map(i64::to_string).collect();
    let out = Command::new(&python)
        .arg(&script)
        .arg("--model")
        .arg(model)
        .args(["--ids", &ids.join(",")])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "pretrain_logits.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<Vec<f64>> = serde_json::from_value(v["logits"].clone()).unwrap();
    let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

fn exported_model_matches_transformers(family: &str, tied: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    let mut job = job(family, family, json!({"maxSteps": 10}));
    job["spec"]["model"]["tiedEmbeddings"] = json!(tied);
    assert_ok(&pretrain(tmp.path(), &job, &dataset, "out"));
    let dir = model_dir(&tmp.path().join("out"));

    let loaded = io::load(&dir, Device::Cpu, Dtype::F32).unwrap();
    assert_eq!(loaded.model.config().tie_word_embeddings, tied);
    let ours = tch::no_grad(|| {
        loaded
            .model
            .forward_t(&Tensor::from_slice(IDS).unsqueeze(0), false)
            .unwrap()
            .squeeze_dim(0)
    });
    let theirs = python_logits(&dir);
    let diff = max_abs_diff(&ours, &theirs);
    println!("{family} tied={tied}: max |Δlogit| vs transformers = {diff:.2e}");
    assert!(diff < TOL, "logits differ from transformers by {diff}");
    // The logits carry signal (a trained model is not near-uniform), so the
    // comparison above could fail.
    assert!(ours.std(true).double_value(&[]) > 0.1);
}

#[test]
fn llama_export_matches_transformers() {
    exported_model_matches_transformers("llama", true);
}

#[test]
fn gpt2_untied_export_matches_transformers() {
    exported_model_matches_transformers("gpt2", false);
}
