//! `trainer finetune` with LoRA and `training.zero.stage: 2` over two ranks
//! (TCP, CPU): only the adapters are trainable, so only they are sharded, and
//! the run tracks one process without ZeRO.

mod pretrain_common;

use std::path::Path;
use std::process::{Command, Stdio};

use pretrain_common::*;
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn resource(stage: u8) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": "ft-zero", "namespace": "ml"},
        "spec": {
            "baseModel": {"uri": "file:///unused"},
            "datasetRef": {"name": "qa"},
            "method": {"type": "lora", "lora": {"rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}},
            "training": {"maxSteps": 10, "batchSize": 8, "microBatchSize": 2,
                         "learningRate": 1e-2, "warmupSteps": 2, "seed": 3, "gradClip": 0.5,
                         "evalEvery": 5, "checkpointEvery": 5, "zero": {"stage": stage}},
            "evaluation": {"metrics": ["perplexity"], "samples": 2,
                           "generation": {"maxNewTokens": 4}},
        }
    })
}

/// `trainer finetune` of `resource`, as one process or (`procs` 2) a pod of two.
fn finetune(dir: &Path, resource: &Value, base: &str, dataset: &str, output: &str, procs: usize) {
    let path = dir.join(format!("{output}.json"));
    std::fs::write(&path, resource.to_string()).unwrap();
    let child = Command::new(TRAINER)
        .args(["finetune", "--resource"])
        .arg(&path)
        .args(["--base-model", base, "--dataset", dataset])
        .args([
            "--output",
            &format!("file://{}", dir.join(output).display()),
        ])
        .env(
            llmops_contract::env::TERMINATION_LOG,
            termination_path(dir, output),
        )
        .env(llmops_contract::env::PROCS_PER_POD, procs.to_string())
        .env("MASTER_PORT", free_port().to_string())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_ok(&finish(child, dir, output));
}

#[test]
fn lora_with_zero_2_over_two_ranks_tracks_one_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_instruction_dataset(tmp.path());
    let job = job("base", "llama", json!({"maxSteps": 20}));
    assert_ok(&pretrain(tmp.path(), &job, &dataset, "base"));
    let base = format!("file://{}", model_dir(&tmp.path().join("base")).display());

    finetune(tmp.path(), &resource(0), &base, &dataset, "one", 1);
    finetune(tmp.path(), &resource(2), &base, &dataset, "zero", 2);
    let (one, zero) = (
        losses(&log(tmp.path(), "one")),
        losses(&log(tmp.path(), "zero")),
    );
    assert_eq!(one.len(), 10);
    let dl = one
        .iter()
        .zip(&zero)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let a = tensors(&model_dir(&tmp.path().join("one")).join("model.safetensors"));
    let b = tensors(&model_dir(&tmp.path().join("zero")).join("model.safetensors"));
    let dw = a
        .iter()
        .map(|(name, t)| max_abs_diff(t, &b[name]))
        .fold(0.0, f64::max);
    println!("LoRA, ZeRO-2 on 2 ranks vs 1 rank: |Δloss| {dl:.2e}, |Δweight| {dw:.2e}");
    assert!(dl < 1e-5 && dw < 1e-5, "|Δloss| {dl}, |Δweight| {dw}");
    assert!(one[9] < one[0], "LoRA did not learn: {one:?}");
    // The shards hold the adapters' state only: far less than the model.
    let shard = tensors(
        &tmp.path()
            .join("zero/checkpoints/step-10/optimizer-zero-rank-1.safetensors"),
    );
    let model: usize = a.values().map(|t| t.numel()).sum();
    assert!(
        shard["exp_avg"].numel() * 10 < model,
        "{} of {model}",
        shard["exp_avg"].numel()
    );
}
