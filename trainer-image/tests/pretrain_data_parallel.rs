//! Data parallelism over TCP: two ranks with half of every global batch each
//! train the same model as one process with the whole batch (fp32, CPU).

mod pretrain_common;

use pretrain_common::*;
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn two_ranks_track_one_rank_with_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    let job = job(
        "dp",
        "llama",
        json!({"maxSteps": 12, "batchSize": 8, "microBatchSize": 2, "evalEvery": 6}),
    );
    let single = pretrain(tmp.path(), &job, &dataset, "one");
    assert_ok(&single);

    let port = free_port().to_string();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            command(tmp.path(), &job, &dataset, "two")
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env(
                    llmops_contract::env::TERMINATION_LOG,
                    tmp.path().join(format!("rank-{rank}.termination")),
                )
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        let run = finish(child, tmp.path(), "two");
        assert_eq!(run.code, 0, "rank {rank} failed:\n{}", run.stderr);
    }

    let one = losses(&log(tmp.path(), "one"));
    let two = losses(&log(tmp.path(), "two"));
    assert_close(&one, &two);

    let a = tensors(&model_dir(&tmp.path().join("one")).join("model.safetensors"));
    let b = tensors(&model_dir(&tmp.path().join("two")).join("model.safetensors"));
    let mut weights = 0.0f64;
    for (name, t) in &a {
        weights = weights.max(max_abs_diff(t, &b[name]));
    }
    println!("max |Δweight| after 12 steps: {weights:.2e}");
    assert!(weights < 1e-5, "weights differ by {weights}");

    // Two processes in one pod, started by the trainer itself (as for several
    // GPUs per pod): the same run again.
    let run = finish(
        command(tmp.path(), &job, &dataset, "pod")
            .env(llmops_contract::env::PROCS_PER_POD, "2")
            .env("MASTER_PORT", free_port().to_string())
            .spawn()
            .unwrap(),
        tmp.path(),
        "pod",
    );
    assert_ok(&run);
    assert_close(&one, &losses(&log(tmp.path(), "pod")));
    let result: serde_json::Value = serde_json::from_str(&run.termination).unwrap();
    assert_eq!(result["progress"]["step"], 12, "rank 0 reports the result");
}

fn assert_close(one: &[f64], two: &[f64]) {
    assert_eq!(one.len(), 12);
    assert_eq!(two.len(), 12);
    let worst = one
        .iter()
        .zip(two)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("max |Δloss| over 12 steps, 1 rank vs 2 ranks: {worst:.2e}");
    assert!(
        worst < 1e-5,
        "loss curves differ by {worst}:\n{one:?}\n{two:?}"
    );
    assert!(one[11] < one[0], "the run should learn something");
}

/// With loss masks the ranks hold different numbers of targets; normalising by
/// the global batch's target count keeps them equivalent to one process.
#[test]
fn two_ranks_track_one_rank_on_masked_instruction_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_instruction_dataset(tmp.path());
    let job = job(
        "dp-masked",
        "gpt2",
        json!({"maxSteps": 12, "batchSize": 8, "microBatchSize": 2, "evalEvery": 6}),
    );
    assert_ok(&pretrain(tmp.path(), &job, &dataset, "one"));
    let port = free_port().to_string();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            command(tmp.path(), &job, &dataset, "two")
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_PORT", &port)
                .env(
                    llmops_contract::env::TERMINATION_LOG,
                    tmp.path().join(format!("rank-{rank}.termination")),
                )
                .spawn()
                .unwrap()
        })
        .collect();
    for child in ranks {
        assert_ok(&finish(child, tmp.path(), "two"));
    }
    assert_close(
        &losses(&log(tmp.path(), "one")),
        &losses(&log(tmp.path(), "two")),
    );
}

/// SIGTERM reaches only the pod's first process (the launcher); it stops its
/// ranks, which agree on the step, checkpoint it and exit with 143.
#[test]
fn sigterm_to_the_launcher_checkpoints_every_rank_at_one_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare_dataset(tmp.path(), 32);
    let job = job(
        "dp-term",
        "llama",
        json!({"maxSteps": 200, "microBatchSize": 2, "checkpointEvery": 1000, "evalEvery": 100}),
    );
    let launch = |output: &str| {
        command(tmp.path(), &job, &dataset, output)
            .env(llmops_contract::env::PROCS_PER_POD, "2")
            .env("MASTER_PORT", free_port().to_string())
            .spawn()
            .unwrap()
    };
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
    let message: serde_json::Value = serde_json::from_str(&run.termination).unwrap();
    let step = message["interrupted"]["step"].as_i64().unwrap();
    assert!(
        tmp.path()
            .join(format!("run/checkpoints/step-{step}/trainer_state.json"))
            .is_file()
    );
    let again = finish(launch("run"), tmp.path(), "run");
    assert_ok(&again);
    let steps: Vec<i64> = log(tmp.path(), "run")
        .iter()
        .map(|l| l["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, (1..=200).collect::<Vec<_>>());
}
