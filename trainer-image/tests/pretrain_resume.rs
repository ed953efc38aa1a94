//! Checkpoints and resume: a run continued from a checkpoint, or restarted after
//! SIGTERM, reproduces the uninterrupted run's loss curve and weights exactly
//! (fp32, CPU, same seed).

mod pretrain_common;

use std::path::Path;
use std::time::{Duration, Instant};

use pretrain_common::*;
use serde_json::{Value, json};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, t) in &a {
        assert_eq!(max_abs_diff(t, &b[name]), 0.0, "{name} differs");
    }
}

#[test]
fn resuming_from_a_checkpoint_reproduces_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    // Dropout on, so the RNG state has to be restored too.
    let mut job = job("resume", "gpt2", json!({"maxSteps": 20}));
    job["spec"]["model"]["dropout"] = json!(0.1);
    assert_ok(&pretrain(tmp.path(), &job, &dataset, "full"));
    let full = log(tmp.path(), "full");
    assert_eq!(full.len(), 20);

    // A run that stopped after step 10: its checkpoint and log so far.
    let ckpt = tmp.path().join("full/checkpoints/step-10");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 10);
    assert_eq!(state["tokensSeen"], 10 * 8 * 32);
    copy_dir(&ckpt, &tmp.path().join("resumed/checkpoints/step-10"));
    let head: String = full[..10].iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(
        tmp.path().join("resumed/checkpoints/train_log.jsonl"),
        &head,
    )
    .unwrap();

    let run = pretrain(tmp.path(), &job, &dataset, "resumed");
    assert_ok(&run);
    let resumed = log(tmp.path(), "resumed");
    assert_eq!(
        losses(&resumed),
        losses(&full),
        "loss curves differ after resume"
    );
    assert_same_weights(
        &model_dir(&tmp.path().join("full")).join("model.safetensors"),
        &model_dir(&tmp.path().join("resumed")).join("model.safetensors"),
    );

    // Sensitivity: resuming without the optimizer moments breaks the equality.
    let broken = tmp.path().join("broken/checkpoints/step-10");
    copy_dir(&ckpt, &broken);
    let zeroed: Vec<(String, tch::Tensor)> = tensors(&broken.join("optimizer.safetensors"))
        .into_iter()
        .map(|(k, v)| (k, v.zeros_like()))
        .collect();
    tch::Tensor::write_safetensors(&zeroed, broken.join("optimizer.safetensors")).unwrap();
    // Without its sums the checkpoint is taken on its state (as one written by
    // an older trainer would be), so the zeroed moments are used.
    std::fs::remove_file(broken.join("SHA256SUMS")).unwrap();
    assert_ok(&pretrain(tmp.path(), &job, &dataset, "broken"));
    let broken = losses(&log(tmp.path(), "broken"));
    assert_ne!(broken[10..], losses(&full)[10..]);

    // A newer checkpoint whose bytes changed after it was written (here a
    // truncated optimizer file) is set aside, and the run resumes from the one
    // before it exactly as from an intact one.
    let corrupt = tmp.path().join("corrupt/checkpoints");
    copy_dir(&ckpt, &corrupt.join("step-10"));
    copy_dir(&ckpt, &corrupt.join("step-12"));
    let optimizer = corrupt.join("step-12/optimizer.safetensors");
    let bytes = std::fs::read(&optimizer).unwrap();
    std::fs::write(&optimizer, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(corrupt.join("train_log.jsonl"), &head).unwrap();
    let run = pretrain(tmp.path(), &job, &dataset, "corrupt");
    assert_ok(&run);
    assert_eq!(losses(&log(tmp.path(), "corrupt")), losses(&full));
    assert!(corrupt.join("step-12.corrupt").is_dir());
    let result: Value = serde_json::from_str(&run.termination).unwrap();
    let note = result["progress"]["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("resumed from step-10")
            && note.contains("step-12 (optimizer.safetensors: sha256"),
        "progress.note: {note:?}"
    );
}

fn wait_for_steps(dir: &Path, output: &str, steps: usize) {
    let path = dir.join(output).join("checkpoints/train_log.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&path).map_or(0, |s| s.lines().count()) < steps {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_saves_a_checkpoint_and_a_restart_resumes_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    // Periodic checkpoints far apart, so the one found after SIGTERM is the
    // signal's; micro-batches of 2 so the signal can land mid-step.
    let job = job(
        "sigterm",
        "llama",
        json!({"maxSteps": 300, "microBatchSize": 2, "checkpointEvery": 1000, "evalEvery": 100}),
    );
    let child = command(tmp.path(), &job, &dataset, "run").spawn().unwrap();
    wait_for_steps(tmp.path(), "run", 3);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let run = finish(child, tmp.path(), "run");
    assert_eq!(run.code, 143, "exit code after SIGTERM:\n{}", run.stderr);
    let message: Value = serde_json::from_str(&run.termination).unwrap();
    let step = message["interrupted"]["step"].as_i64().unwrap();
    assert!((3..300).contains(&step), "interrupted at step {step}");
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("interrupted at step {step}")),
        "{message}"
    );
    let ckpt = tmp.path().join(format!("run/checkpoints/step-{step}"));
    assert!(
        ckpt.join("trainer_state.json").is_file(),
        "no checkpoint at step {step}"
    );
    assert!(ckpt.join("model.safetensors").is_file());
    assert!(ckpt.join("optimizer.safetensors").is_file());
    assert_eq!(
        message["interrupted"]["checkpoint"]["uri"],
        format!("file://{}", ckpt.display())
    );
    let exported = std::fs::read_dir(tmp.path().join("run")).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("model-")
    });
    assert!(!exported, "no export yet");

    let restarted = pretrain(tmp.path(), &job, &dataset, "run");
    assert_ok(&restarted);
    let uninterrupted = pretrain(tmp.path(), &job, &dataset, "reference");
    assert_ok(&uninterrupted);
    let resumed = log(tmp.path(), "run");
    let steps: Vec<i64> = resumed
        .iter()
        .map(|l| l["step"].as_i64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (1..=300).collect::<Vec<_>>(),
        "every step logged once"
    );
    assert_eq!(losses(&resumed), losses(&log(tmp.path(), "reference")));
    assert_same_weights(
        &model_dir(&tmp.path().join("run")).join("model.safetensors"),
        &model_dir(&tmp.path().join("reference")).join("model.safetensors"),
    );
}
