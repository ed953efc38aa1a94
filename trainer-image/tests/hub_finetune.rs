//! `trainer finetune` on a base model from a Hugging Face Hub repository
//! (`hf://<org>/<model>@<revision>`, served by `llmops_store::test_hub` on
//! loopback through `HF_ENDPOINT`): the revision's files are trained on, and the
//! export's lineage names the commit the revision resolved to, so that the base
//! can be read again byte for byte.

mod pretrain_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use llmops_store::hub::RepoKind;
use llmops_store::test_hub::{TestHub, TestRepo};
use pretrain_common::*;
use serde_json::{Value, json};

/// Every file below `dir`, by `/`-separated relative path.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_base_model_is_fine_tuned_and_recorded_by_its_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dataset = prepare_instruction_dataset(dir);
    assert_ok(&pretrain(
        dir,
        &job("base", "llama", json!({"maxSteps": 10})),
        &dataset,
        "base",
    ));
    let hub = TestHub::start().await.unwrap();
    let mut repo = TestRepo::new();
    let v1 = repo.commit("v1", files(&model_dir(&dir.join("base"))));
    // `main` has moved on to something that is not a model: only the pin works.
    repo.commit(
        "main",
        BTreeMap::from([("README.md".to_string(), b"# moved".to_vec())]),
    );
    hub.add(RepoKind::Model, "org/base", repo);

    let resource = json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": "ft", "namespace": "ml"},
        "spec": {
            "baseModel": {"uri": "hf://org/base@v1"},
            "datasetRef": {"name": "qa"},
            "method": {"type": "lora", "lora": {"rank": 4, "alpha": 8,
                       "targetModules": ["q_proj", "v_proj"]}},
            "training": {"maxSteps": 4, "batchSize": 8, "microBatchSize": 4,
                         "learningRate": 1e-2, "warmupSteps": 1, "seed": 3,
                         "evalEvery": 4, "checkpointEvery": 4},
            "evaluation": {"metrics": ["perplexity"], "samples": 2,
                           "generation": {"maxNewTokens": 4}},
        }
    });
    let path = dir.join("ft.json");
    std::fs::write(&path, resource.to_string()).unwrap();
    let output = dir.join("ft");
    let child = Command::new(TRAINER)
        .args(["finetune", "--resource"])
        .arg(&path)
        .args(["--dataset", &dataset])
        .args(["--output", &format!("file://{}", output.display())])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env(
            llmops_contract::env::TERMINATION_LOG,
            termination_path(dir, "ft"),
        )
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        .env_remove("HF_TOKEN")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = finish(child, dir, "ft");
    assert_eq!(run.code, 0, "trainer finetune failed:\n{}", run.stderr);

    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir(&output).join("llmops.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["lineage"]["baseModel"]["uri"],
        format!("hf://org/base@{v1}"),
        "{record}"
    );
    // Every file came from the commit `v1` named, none from `main`.
    let reads: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.contains("/resolve/"))
        .collect();
    assert!(
        reads.iter().any(|r| r.ends_with("/model.safetensors")),
        "{reads:?}"
    );
    assert!(
        reads
            .iter()
            .all(|r| r.starts_with(&format!("/org/base/resolve/{v1}/"))),
        "{reads:?}"
    );
}
