//! `trainer pretrain` end to end on a tiny corpus: the loss falls, the model is
//! exported with lineage, and bad inputs fail with one clear line.

mod pretrain_common;

use llmops_model::{Dtype, io};
use pretrain_common::*;
use serde_json::{Value, json};

#[test]
fn loss_falls_and_the_model_is_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    let job = job(
        "tiny-llama",
        "llama",
        json!({"maxSteps": 50, "evalEvery": 25}),
    );
    let run = pretrain(tmp.path(), &job, &dataset, "out");
    assert_ok(&run);

    let log = log(tmp.path(), "out");
    assert_eq!(log.len(), 50, "one log line per step");
    let losses = losses(&log);
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[45..].iter().sum::<f64>() / 5.0;
    println!("loss: first 5 steps {first:.3}, last 5 steps {last:.3}");
    for (i, l) in losses.iter().enumerate().step_by(5) {
        println!("step {:3} loss {l:.4}", i + 1);
    }
    assert!(last < 0.6 * first, "loss did not fall: {first} -> {last}");
    let validation: Vec<f64> = log
        .iter()
        .filter_map(|l| l["validationLoss"].as_f64())
        .collect();
    assert_eq!(validation.len(), 2, "evaluated at steps 25 and 50");
    assert!(
        validation[1] < first,
        "validation loss {validation:?} vs initial {first}"
    );

    // The termination message carries the artifact and final progress.
    let result: Value = serde_json::from_str(&run.termination).unwrap();
    let out = model_dir(&tmp.path().join("out"));
    assert_eq!(
        result["artifact"]["uri"],
        format!("file://{}", out.display())
    );
    assert!(
        result["artifact"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(result["progress"]["step"], 50);
    assert_eq!(result["progress"]["totalSteps"], 50);
    assert_eq!(result["progress"]["tokensSeen"], 50 * 8 * 32);
    assert!(result["progress"]["validationPerplexity"].as_f64().unwrap() > 1.0);

    // HF layout plus lineage.
    for f in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "llmops.json",
        "manifest.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing from the export");
    }
    assert!(
        !out.join("checkpoints").exists(),
        "checkpoints are kept beside the model, not in it"
    );
    let lineage: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("llmops.json")).unwrap()).unwrap();
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("dataset/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(lineage["lineage"]["dataset"]["uri"], dataset);
    assert_eq!(lineage["lineage"]["dataset"]["digest"], manifest["digest"]);
    assert_eq!(lineage["metrics"]["steps"], 50);

    let loaded = io::load(&out, tch::Device::Cpu, Dtype::F32).unwrap();
    assert_eq!(
        loaded.model.config().vocab_size,
        manifest["vocabSize"].as_i64().unwrap()
    );
    assert_eq!(
        loaded.model.config().eos_token_id,
        vec![manifest["eosId"].as_i64().unwrap()]
    );
}

#[test]
fn gpt2_trains_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    let job = job(
        "tiny-gpt2",
        "gpt2",
        json!({"maxSteps": 30, "schedule": "linear", "evalEvery": 30}),
    );
    let run = pretrain(tmp.path(), &job, &dataset, "out");
    assert_ok(&run);
    let losses = losses(&log(tmp.path(), "out"));
    assert!(losses[29] < losses[0] * 0.8, "{losses:?}");
}

/// Instruction data: only response tokens are targets, and the model learns them.
#[test]
fn instruction_data_trains_on_unmasked_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_instruction_dataset(tmp.path());
    let job = job("qa", "llama", json!({"maxSteps": 40, "evalEvery": 40}));
    assert_ok(&pretrain(tmp.path(), &job, &dataset, "out"));
    let log = log(tmp.path(), "out");
    let losses = losses(&log);
    assert!(losses[39] < 0.5 * losses[0], "{losses:?}");
    assert!(log[39]["validationLoss"].as_f64().unwrap() < losses[0]);
}

fn error_line(run: &Run) -> String {
    assert_ne!(run.code, 0, "expected a failure:\n{}", run.stderr);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{}", run.stderr);
    assert_eq!(run.termination, lines[0]);
    lines[0].to_string()
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);

    let mut long = job("long", "llama", json!({}));
    long["spec"]["model"]["contextLength"] = json!(16);
    let line = error_line(&pretrain(tmp.path(), &long, &dataset, "long"));
    assert!(
        line.contains("sequence length 32 exceeds model.contextLength 16"),
        "{line}"
    );

    let uneven = job(
        "uneven",
        "llama",
        json!({"batchSize": 6, "microBatchSize": 4}),
    );
    let line = error_line(&pretrain(tmp.path(), &uneven, &dataset, "uneven"));
    assert!(
        line.contains("batchSize 6 must be a multiple of microBatchSize 4"),
        "{line}"
    );

    let missing = format!("file://{}", tmp.path().join("nowhere").display());
    let line = error_line(&pretrain(
        tmp.path(),
        &job("lost", "llama", json!({})),
        &missing,
        "lost",
    ));
    assert!(
        line.contains("cannot read the dataset") && line.contains("not (completely) prepared"),
        "{line}"
    );

    // A checkpoint of another model in the output is refused, not overwritten.
    let small = job("shape", "llama", json!({"maxSteps": 5}));
    assert_ok(&pretrain(tmp.path(), &small, &dataset, "shape"));
    let mut wider = small.clone();
    wider["spec"]["model"]["hidden"] = json!(64);
    wider["spec"]["training"]["maxSteps"] = json!(10);
    let line = error_line(&pretrain(tmp.path(), &wider, &dataset, "shape"));
    assert!(line.contains("does not belong to this run"), "{line}");
    assert!(
        tmp.path()
            .join("shape/checkpoints/step-5/model.safetensors")
            .is_file()
    );
}

#[test]
fn an_output_another_job_owns_is_refused_and_its_deletion_removes_only_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    let mut first = job("first", "llama", json!({"maxSteps": 2}));
    first["metadata"]["uid"] = json!("u-first");
    assert_ok(&pretrain(tmp.path(), &first, &dataset, "shared"));
    let marker = tmp.path().join("shared/.llmops-owner.json");
    let owner: Value = serde_json::from_str(&std::fs::read_to_string(&marker).unwrap()).unwrap();
    assert_eq!(
        (&owner["kind"], &owner["name"], &owner["uid"]),
        (&json!("PretrainJob"), &json!("first"), &json!("u-first"))
    );

    // Another PretrainJob pointed at the same output writes nothing there.
    let mut second = job("second", "llama", json!({"maxSteps": 2}));
    second["metadata"]["uid"] = json!("u-second");
    let run = pretrain(tmp.path(), &second, &dataset, "shared");
    assert_eq!(run.code, 2, "a permanent error: {}", run.stderr);
    assert!(
        run.stderr.contains("spec.output.uri") && run.stderr.contains("PretrainJob ml/first"),
        "{}",
        run.stderr
    );

    // `trainer clean` for the first job deletes the whole output, marker last.
    let clean = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["clean", "--uri"])
        .arg(format!("file://{}", tmp.path().join("shared").display()))
        .args(["--owner", "PretrainJob/ml/first", "--uid", "u-first"])
        .env_remove(llmops_contract::env::RESOURCE)
        .output()
        .unwrap();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(!tmp.path().join("shared").join("checkpoints").exists());
    assert!(!marker.exists());
}
