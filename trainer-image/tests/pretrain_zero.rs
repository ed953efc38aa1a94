//! ZeRO over TCP (fp32, CPU): two ranks with the optimizer state sharded
//! (`training.zero.stage` 1 and 2) train the same model as one process without
//! it, with gradient accumulation and clipping on; their checkpoints hold one
//! optimizer shard per rank, half of the unsharded state each, and a run
//! resumed from one reproduces the uninterrupted run bit for bit.

mod pretrain_common;

use std::path::Path;

use pretrain_common::*;
use serde_json::{Value, json};

/// `trainer pretrain` as `world` ranks on loopback, to the end.
fn ranks(dir: &Path, job: &Value, dataset: &str, output: &str, world: usize) {
    let children = spawn_ranks(dir, job, dataset, output, world);
    for (rank, child) in children.into_iter().enumerate() {
        let run = finish(child, dir, output);
        assert_eq!(
            run.code, 0,
            "rank {rank} of {output} failed:\n{}",
            run.stderr
        );
    }
}

fn with_zero(job: &Value, stage: u8) -> Value {
    let mut job = job.clone();
    job["spec"]["training"]["zero"] = json!({"stage": stage});
    job
}

fn max_loss_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Values in the tensors of a safetensors file whose names pass `keep`.
fn values(path: &Path, keep: impl Fn(&str) -> bool) -> usize {
    tensors(path)
        .iter()
        .filter(|(name, _)| keep(name))
        .map(|(_, t)| t.numel())
        .sum()
}

#[test]
fn zero_1_and_2_over_two_ranks_track_one_rank_without_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    // Two ranks of micro-batches of 2 in a batch of 8: two micro-steps of
    // accumulation each; a clip low enough to scale every step's gradient.
    let job = job(
        "zero",
        "llama",
        json!({"maxSteps": 12, "batchSize": 8, "microBatchSize": 2, "evalEvery": 6,
               "checkpointEvery": 6, "gradClip": 0.3}),
    );
    assert_ok(&pretrain(tmp.path(), &job, &dataset, "one"));
    let one = log(tmp.path(), "one");
    let clipped = one
        .iter()
        .filter(|l| l["gradNorm"].as_f64().unwrap() > 0.3)
        .count();
    assert!(clipped >= 6, "clipping should be on: {clipped} of 12 steps");
    let unsharded = values(
        &tmp.path()
            .join("one/checkpoints/step-12/optimizer.safetensors"),
        |n| n.starts_with("exp_avg"),
    );

    for stage in [1u8, 2] {
        let output = format!("zero{stage}");
        ranks(tmp.path(), &with_zero(&job, stage), &dataset, &output, 2);
        let two = log(tmp.path(), &output);
        let dl = max_loss_diff(&losses(&one), &losses(&two));
        let norms = |l: &[Value]| -> Vec<f64> {
            l.iter().map(|l| l["gradNorm"].as_f64().unwrap()).collect()
        };
        let dn = max_loss_diff(&norms(&one), &norms(&two));
        let dw = max_weight_diff(&tmp.path().join("one"), &tmp.path().join(&output));
        println!(
            "ZeRO-{stage}, 2 ranks vs 1 rank: max |Δloss| {dl:.2e}, |Δgrad norm| {dn:.2e}, |Δweight| {dw:.2e}"
        );
        assert!(dl < 1e-5, "ZeRO-{stage} loss curve differs by {dl}");
        assert!(dn < 1e-4, "ZeRO-{stage} gradient norms differ by {dn}");
        assert!(dw < 1e-5, "ZeRO-{stage} weights differ by {dw}");

        // One optimizer shard per rank, each half of the unsharded moments
        // (the last rounded up to whole shards).
        let ckpt = tmp.path().join(format!("{output}/checkpoints/step-12"));
        assert!(!ckpt.join("optimizer.safetensors").exists());
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (state["zeroStage"].as_u64(), state["worldSize"].as_u64()),
            (Some(stage as u64), Some(2))
        );
        for rank in 0..2 {
            let shard = values(
                &ckpt.join(format!("optimizer-zero-rank-{rank}.safetensors")),
                |n| n.starts_with("exp_avg"),
            );
            println!("ZeRO-{stage} rank {rank}: {shard} moment values, unsharded {unsharded}");
            assert!(
                2 * shard >= unsharded && 2 * shard <= unsharded + 2,
                "rank {rank} holds {shard} of {unsharded} moment values"
            );
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// `output` as a run of `full` stopped after step `step`: its checkpoint and
/// its log so far.
fn stopped_at(dir: &Path, full: &str, output: &str, step: usize) {
    copy_dir(
        &dir.join(format!("{full}/checkpoints/step-{step}")),
        &dir.join(format!("{output}/checkpoints/step-{step}")),
    );
    let head: String = log(dir, full)[..step]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        dir.join(format!("{output}/checkpoints/train_log.jsonl")),
        head,
    )
    .unwrap();
}

#[test]
fn a_zero_2_run_resumed_from_its_checkpoint_reproduces_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    // Dropout on, so the per-rank RNG streams have to line up too.
    let mut job = job(
        "zero-resume",
        "gpt2",
        json!({"maxSteps": 16, "batchSize": 8, "microBatchSize": 2, "checkpointEvery": 8,
               "evalEvery": 8, "gradClip": 0.5}),
    );
    job["spec"]["model"]["dropout"] = json!(0.1);
    let job = with_zero(&job, 2);
    ranks(tmp.path(), &job, &dataset, "full", 2);
    let full = losses(&log(tmp.path(), "full"));

    stopped_at(tmp.path(), "full", "resumed", 8);
    ranks(tmp.path(), &job, &dataset, "resumed", 2);
    assert_eq!(
        losses(&log(tmp.path(), "resumed")),
        full,
        "loss curves differ"
    );
    let dw = max_weight_diff(&tmp.path().join("full"), &tmp.path().join("resumed"));
    assert_eq!(dw, 0.0, "resumed weights differ by {dw}");

    // The same checkpoint on one rank (stage 0): its shards are reassembled,
    // and the run continues as the two ranks did, up to fp32 rounding (the
    // dropout streams are per rank, so this job has none).
    let mut plain = job.clone();
    plain["spec"]["model"]["dropout"] = json!(0.0);
    plain["metadata"]["name"] = json!("zero-reshard");
    ranks(tmp.path(), &plain, &dataset, "plain", 2);
    stopped_at(tmp.path(), "plain", "one-rank", 8);
    // The checkpoint has no optimizer.safetensors: the run can only have
    // resumed from the shards.
    assert!(
        !tmp.path()
            .join("one-rank/checkpoints/step-8/optimizer.safetensors")
            .exists()
    );
    assert_ok(&pretrain(tmp.path(), &plain, &dataset, "one-rank"));
    assert!(
        tmp.path()
            .join("one-rank/checkpoints/step-16/optimizer.safetensors")
            .is_file()
    );
    let dl = max_loss_diff(
        &losses(&log(tmp.path(), "plain")),
        &losses(&log(tmp.path(), "one-rank")),
    );
    let dw = max_weight_diff(&tmp.path().join("plain"), &tmp.path().join("one-rank"));
    println!("ZeRO-2 checkpoint of 2 ranks resumed on 1: |Δloss| {dl:.2e}, |Δweight| {dw:.2e}");
    assert!(dl < 1e-5 && dw < 1e-5, "|Δloss| {dl}, |Δweight| {dw}");
}

/// SIGTERM to a pod's launcher mid-run: its two ZeRO-2 ranks agree on a step,
/// each writes its optimizer shard into that checkpoint, and the restarted run
/// ends with the uninterrupted run's weights, bit for bit.
#[test]
fn a_zero_2_run_stopped_by_sigterm_resumes_to_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    let job = with_zero(
        &job(
            "zero-term",
            "llama",
            json!({"maxSteps": 200, "microBatchSize": 2, "checkpointEvery": 1000, "evalEvery": 100}),
        ),
        2,
    );
    let launch = |output: &str| {
        command(tmp.path(), &job, &dataset, output)
            .env(llmops_contract::env::PROCS_PER_POD, "2")
            .env("MASTER_PORT", free_port().to_string())
            .spawn()
            .unwrap()
    };
    assert_ok(&finish(launch("reference"), tmp.path(), "reference"));

    let child = launch("run");
    let log_path = tmp.path().join("run/checkpoints/train_log.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&log_path).map_or(0, |s| s.lines().count()) < 3 {
        assert!(started.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let run = finish(child, tmp.path(), "run");
    assert_eq!(run.code, 143, "{}", run.stderr);
    let message: Value = serde_json::from_str(&run.termination).unwrap();
    let step = message["interrupted"]["step"].as_i64().unwrap();
    assert!(step < 200, "stopped at step {step}");
    let checkpoints = tmp.path().join("run/checkpoints");
    for rank in 0..2 {
        let shard = checkpoints.join(format!(
            "step-{step}/optimizer-zero-rank-{rank}.safetensors"
        ));
        assert!(shard.is_file(), "{} is missing", shard.display());
    }
    let staging_left: Vec<_> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(staging_left.is_empty(), "left behind: {staging_left:?}");

    assert_ok(&finish(launch("run"), tmp.path(), "run"));
    let resumed = log(tmp.path(), "run");
    let steps: Vec<i64> = resumed
        .iter()
        .map(|l| l["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, (1..=200).collect::<Vec<_>>());
    assert_eq!(losses(&resumed), losses(&log(tmp.path(), "reference")));
    let dw = max_weight_diff(&tmp.path().join("reference"), &tmp.path().join("run"));
    assert_eq!(dw, 0.0, "weights differ by {dw} after the restart");
}
