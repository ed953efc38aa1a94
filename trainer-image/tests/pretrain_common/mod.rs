//! Helpers for the `trainer pretrain` tests: a tiny corpus prepared with the real
//! `trainer prepare`, PretrainJob resources, and runs of the real binary.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

pub const TRAINER: &str = env!("CARGO_BIN_EXE_trainer");

/// A small language with real structure (a handful of sentence templates over a
/// few word lists) so that a tiny model's loss falls visibly within ~50 steps.
pub fn corpus(docs: usize) -> String {
    const SUBJECTS: [&str; 6] = [
        "the cat",
        "a dog",
        "the bird",
        "my friend",
        "the old man",
        "a child",
    ];
    const VERBS: [&str; 5] = ["sees", "likes", "follows", "finds", "calls"];
    const OBJECTS: [&str; 6] = [
        "the ball",
        "a tree",
        "the river",
        "some bread",
        "the moon",
        "a red box",
    ];
    let mut state = 7u64;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    (0..docs)
        .map(|_| {
            (0..4)
                .map(|_| {
                    format!(
                        "{} {} {}.",
                        SUBJECTS[next(6)],
                        VERBS[next(5)],
                        OBJECTS[next(6)]
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Prepares the corpus into `<dir>/dataset` with `trainer prepare`; returns its URI.
pub fn prepare_dataset(dir: &Path, sequence_length: u32) -> String {
    let out = dir.join("dataset");
    let resource = json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "tiny-corpus", "namespace": "ml"},
        "spec": {
            "type": "pretraining",
            "sources": [{"inline": {"content": corpus(400)}, "format": {"text": {"separator": "blankLine"}}}],
            "tokenizer": {"train": {"vocabSize": 300}},
            "segmentation": {"sequenceLength": sequence_length},
            "split": {"validation": 0.1, "seed": 1},
        },
    });
    let path = dir.join("dataset.json");
    std::fs::write(&path, resource.to_string()).unwrap();
    let uri = format!("file://{}", out.display());
    let run = Command::new(TRAINER)
        .args(["prepare", "--resource"])
        .arg(&path)
        .args(["--output", &uri])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "trainer prepare failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    uri
}

/// Question/answer records (JSONL) over the same small language.
pub fn qa_records(n: usize) -> String {
    const NAMES: [&str; 5] = ["cat", "dog", "bird", "child", "man"];
    const THINGS: [&str; 5] = ["ball", "tree", "river", "bread", "moon"];
    (0..n)
        .map(|i| {
            let (who, what) = (NAMES[i % 5], THINGS[(i / 5) % 5]);
            json!({"q": format!("what does the {who} see?"), "a": format!("the {who} sees the {what}.")})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prepares instruction data with prompt-masked loss into `<dir>/qa`.
pub fn prepare_instruction_dataset(dir: &Path) -> String {
    let out = dir.join("qa");
    let resource = json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "qa", "namespace": "ml"},
        "spec": {
            "type": "instruction",
            "sources": [{"inline": {"content": qa_records(200)},
                         "format": {"jsonl": {"promptField": "q", "responseField": "a"}}}],
            "tokenizer": {"train": {"vocabSize": 320}},
            "segmentation": {"sequenceLength": 32, "pack": false},
            "labeling": {"template": "Q: {prompt}\nA: ", "maskPrompt": true},
            "split": {"validation": 0.1, "seed": 1},
        },
    });
    let path = dir.join("qa.json");
    std::fs::write(&path, resource.to_string()).unwrap();
    let uri = format!("file://{}", out.display());
    let run = Command::new(TRAINER)
        .args(["prepare", "--resource"])
        .arg(&path)
        .args(["--output", &uri])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "trainer prepare failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["masks"], true,
        "instruction shards carry loss masks"
    );
    uri
}

/// A PretrainJob with a tiny model; `training` overrides the training fields.
pub fn job(name: &str, family: &str, training: Value) -> Value {
    let model = match family {
        "gpt2" => {
            json!({"family": "gpt2", "layers": 2, "heads": 4, "hidden": 32, "contextLength": 64})
        }
        _ => {
            json!({"family": "llama", "layers": 2, "heads": 4, "kvHeads": 2, "hidden": 32, "contextLength": 64})
        }
    };
    let mut t = json!({
        "maxSteps": 20, "batchSize": 8, "microBatchSize": 4, "learningRate": 3e-3,
        "warmupSteps": 5, "seed": 11, "evalEvery": 10, "checkpointEvery": 5, "checkpointsKept": 10,
    });
    for (k, v) in training.as_object().unwrap() {
        t[k] = v.clone();
    }
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"datasetRef": {"name": "tiny-corpus"}, "model": model, "training": t},
    })
}

/// One run of `trainer pretrain`.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub termination: String,
}

/// A `trainer pretrain` command for `job` (written into `dir`) reading `dataset`
/// and writing `<dir>/<output>`.
pub fn command(dir: &Path, job: &Value, dataset: &str, output: &str) -> Command {
    let name = job["metadata"]["name"].as_str().unwrap();
    let resource = dir.join(format!("{name}-{output}.json"));
    std::fs::write(&resource, job.to_string()).unwrap();
    let mut cmd = Command::new(TRAINER);
    cmd.args(["pretrain", "--resource"])
        .arg(&resource)
        .args(["--dataset", dataset])
        .args([
            "--output",
            &format!("file://{}", dir.join(output).display()),
        ])
        .env(
            llmops_contract::env::TERMINATION_LOG,
            termination_path(dir, output),
        )
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        // One thread per process keeps the arithmetic identical between runs
        // and leaves cores for the other process of a data-parallel pair.
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

pub fn termination_path(dir: &Path, output: &str) -> PathBuf {
    dir.join(format!("{output}.termination"))
}

pub fn finish(child: Child, dir: &Path, output: &str) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        termination: std::fs::read_to_string(termination_path(dir, output)).unwrap_or_default(),
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `trainer pretrain` started as `world` data-parallel ranks on loopback TCP,
/// each with its own termination log (`<output>-rank-<r>.termination`).
pub fn spawn_ranks(
    dir: &Path,
    job: &Value,
    dataset: &str,
    output: &str,
    world: usize,
) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|rank| {
            command(dir, job, dataset, output)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env(
                    llmops_contract::env::TERMINATION_LOG,
                    dir.join(format!("{output}-rank-{rank}.termination")),
                )
                .spawn()
                .unwrap()
        })
        .collect()
}

/// The largest difference between the exported weights of two outputs.
pub fn max_weight_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (
        tensors(&model_dir(a).join("model.safetensors")),
        tensors(&model_dir(b).join("model.safetensors")),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(name, t)| max_abs_diff(t, &b[name]))
        .fold(0.0, f64::max)
}

/// Runs `trainer pretrain` to the end.
pub fn pretrain(dir: &Path, job: &Value, dataset: &str, output: &str) -> Run {
    let child = command(dir, job, dataset, output).spawn().unwrap();
    finish(child, dir, output)
}

pub fn assert_ok(run: &Run) {
    assert_eq!(run.code, 0, "trainer pretrain failed:\n{}", run.stderr);
}

/// The per-step training log of an output.
pub fn log(dir: &Path, output: &str) -> Vec<Value> {
    let path = dir.join(output).join("checkpoints/train_log.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn losses(log: &[Value]) -> Vec<f64> {
    log.iter().map(|l| l["loss"].as_f64().unwrap()).collect()
}

/// The one exported model below the output directory `output`: each export
/// has a directory of its own, `model-<digest>`, beside the checkpoints.
pub fn model_dir(output: &Path) -> PathBuf {
    let models: Vec<PathBuf> = std::fs::read_dir(output)
        .unwrap_or_else(|e| panic!("{}: {e}", output.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("model-"))
        })
        .collect();
    match models.as_slice() {
        [one] => one.clone(),
        other => panic!(
            "{} holds {} exported models: {other:?}",
            output.display(),
            other.len()
        ),
    }
}

/// Tensors of a safetensors file, by name.
pub fn tensors(path: &Path) -> std::collections::BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}
