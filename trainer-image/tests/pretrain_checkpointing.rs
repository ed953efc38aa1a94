//! Activation checkpointing in the training loop (`training.activationCheckpointing`):
//! a run with it trains the same model as one without (loss curve and final
//! weights within fp32 tolerance); ZeRO-2 with it is refused naming the field.

mod pretrain_common;

use pretrain_common::*;
use serde_json::{Value, json};

fn with_checkpointing(job: &Value) -> Value {
    let mut job = job.clone();
    job["spec"]["training"]["activationCheckpointing"] = json!(true);
    job
}

#[test]
fn a_checkpointed_run_trains_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    for family in ["llama", "gpt2"] {
        // Dropout off: with it, each segment draws its masks from its own seed
        // (the same in the forward pass and the recomputation), not from the
        // micro-step's one stream as the plain pass does.
        let mut job = job(
            "ckpt",
            family,
            json!({"maxSteps": 8, "batchSize": 4, "microBatchSize": 2, "evalEvery": 4,
                   "checkpointEvery": 4, "gradClip": 0.5}),
        );
        job["spec"]["model"]["dropout"] = json!(0.0);
        let (plain, checkpointed) = (format!("{family}-plain"), format!("{family}-ckpt"));
        assert_ok(&pretrain(tmp.path(), &job, &dataset, &plain));
        assert_ok(&pretrain(
            tmp.path(),
            &with_checkpointing(&job),
            &dataset,
            &checkpointed,
        ));
        let (a, b) = (
            losses(&log(tmp.path(), &plain)),
            losses(&log(tmp.path(), &checkpointed)),
        );
        assert_eq!(a.len(), b.len());
        let dl = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        let dw = max_weight_diff(&tmp.path().join(&plain), &tmp.path().join(&checkpointed));
        println!("{family}: checkpointed vs plain: max |Δloss| {dl:.2e}, |Δweight| {dw:.2e}");
        assert!(dl < 1e-4, "{family}: loss curves differ by {dl}");
        assert!(dw < 1e-4, "{family}: weights differ by {dw}");
    }
}

#[test]
fn zero_2_with_checkpointing_is_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    let mut job = with_checkpointing(&job(
        "ckpt-zero2",
        "llama",
        json!({"maxSteps": 2, "batchSize": 4, "microBatchSize": 2}),
    ));
    job["spec"]["training"]["zero"] = json!({"stage": 2});
    for child in spawn_ranks(tmp.path(), &job, &dataset, "refused", 2) {
        let run = finish(child, tmp.path(), "refused");
        assert_ne!(run.code, 0, "ZeRO-2 with checkpointing ran");
        assert!(
            run.stderr.contains("training.activationCheckpointing")
                || run.termination.contains("training.activationCheckpointing"),
            "{}\n{}",
            run.stderr,
            run.termination
        );
    }
}
