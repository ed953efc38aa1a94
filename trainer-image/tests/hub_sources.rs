//! Dataset sources from Hugging Face Hub dataset repositories: `trainer prepare`
//! reads `hf://datasets/...` files and folders from a Hub on loopback
//! (`llmops_store::test_hub`, reached through `HF_ENDPOINT`), at the revision the
//! URI pins, with the token of the source's Secret for a gated repository, and
//! says which Secret key is missing when there is none.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use llmops_store::hub::RepoKind;
use llmops_store::test_hub::{TestHub, TestRepo};
use llmops_trainer::artifact::DatasetArtifact;

/// `rows` (question, answer) as Parquet bytes, written by pyarrow as Hugging Face
/// `datasets` writes them.
fn parquet(dir: &Path, rows: &[(String, String)]) -> Vec<u8> {
    let path = dir.join("rows.parquet");
    let json = serde_json::to_string(rows).unwrap();
    let script = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
rows = json.loads(sys.argv[1])
pq.write_table(pa.table({
    "question": pa.array([q for q, _ in rows], pa.large_string()),
    "answer": pa.array([a for _, a in rows], pa.string()),
}), sys.argv[2], compression="snappy", row_group_size=16)
"#;
    let out = Command::new(common::venv_python())
        .args(["-c", script, &json])
        .arg(&path)
        .output()
        .expect("the project venv (scripts/setup-venv)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(path).unwrap()
}

fn rows(seed: u64, n: u64) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                common::words(seed + i, 6).join(" "),
                common::words(seed + i + 5000, 9).join(" "),
            )
        })
        .collect()
}

fn jsonl(rows: &[(String, String)]) -> Vec<u8> {
    rows.iter()
        .map(|(q, a)| serde_json::json!({"question": q, "answer": a}).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

const DATASET: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: Dataset
metadata: {name: qa, namespace: ml, generation: 1}
spec:
  type: instruction
  sources:
    - objectStore: {uri: "URI", credentialsSecretRef: {name: hub-creds}}
      format: FORMAT
  tokenizer: {train: {vocabSize: 300}}
  segmentation: {sequenceLength: 48, pack: false}
  labeling: {template: "Q: {prompt}\nA: ", maskPrompt: true}
  split: {validation: 0.1, seed: 1}
"#;

/// `trainer prepare` of `uri` into `<dir>/<name>`.
fn prepare(
    dir: &Path,
    name: &str,
    hub: &TestHub,
    uri: &str,
    format: &str,
    token: Option<&str>,
) -> common::Run {
    let yaml = DATASET.replace("URI", uri).replace("FORMAT", format);
    let out = dir.join(name);
    let mut env = vec![("HF_ENDPOINT", hub.endpoint.clone())];
    if let Some(token) = token {
        env.push(("LLMOPS_CRED_HUB_CREDS_HF_TOKEN", token.to_string()));
    }
    common::prepare(dir, &yaml, &format!("file://{}", out.display()), &env)
}

fn documents_in(run: &common::Run) -> u64 {
    assert_eq!(run.code, 0, "{}", run.stderr);
    let result: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    result["stats"]["documentsIn"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_dataset_files_and_folders_prepare_at_their_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = TestHub::start().await.unwrap();
    let mut repo = TestRepo::new();
    // v1 has 60 rows in one Parquet file; main has more rows in two JSONL files.
    repo.commit(
        "v1",
        BTreeMap::from([
            ("README.md".to_string(), b"# qa".to_vec()),
            (
                "data/train.parquet".to_string(),
                parquet(tmp.path(), &rows(0, 60)),
            ),
        ]),
    );
    repo.commit(
        "main",
        BTreeMap::from([
            ("README.md".to_string(), b"# qa".to_vec()),
            ("data/part-0.jsonl".to_string(), jsonl(&rows(100, 70))),
            ("data/part-1.jsonl".to_string(), jsonl(&rows(200, 50))),
        ]),
    );
    hub.add(RepoKind::Dataset, "org/qa", repo.clone());
    hub.add(RepoKind::Dataset, "org/qa-gated", repo.gated("hf_right"));
    let parquet_format = "{parquet: {promptField: question, responseField: answer}}";
    let jsonl_format = "{jsonl: {promptField: question, responseField: answer}}";

    let run = prepare(
        tmp.path(),
        "v1",
        &hub,
        "hf://datasets/org/qa@v1/data/train.parquet",
        parquet_format,
        None,
    );
    assert_eq!(documents_in(&run), 60);
    let artifact = DatasetArtifact::open(&tmp.path().join("v1")).unwrap();
    assert!(artifact.split("train").unwrap().len() > 40);

    // A folder at main: both files, in name order, and not the README.
    let run = prepare(
        tmp.path(),
        "main",
        &hub,
        "hf://datasets/org/qa/data/",
        jsonl_format,
        None,
    );
    assert_eq!(documents_in(&run), 120);

    // Gated: refused without a token, naming the repository and the Secret key.
    let run = prepare(
        tmp.path(),
        "gated-no-token",
        &hub,
        "hf://datasets/org/qa-gated@v1/data/train.parquet",
        parquet_format,
        None,
    );
    assert_eq!(
        run.code,
        i32::from(llmops_contract::exit::INVALID),
        "no retry gives a token: {}",
        run.stderr
    );
    let message = format!("{}{}", run.termination, run.stderr);
    for needed in [
        "org/qa-gated",
        "401",
        "no token",
        "HF_TOKEN",
        "\"hub-creds\"",
    ] {
        assert!(message.contains(needed), "{needed}: {message}");
    }
    // With the Secret's token it prepares, and the token is in no output.
    let run = prepare(
        tmp.path(),
        "gated",
        &hub,
        "hf://datasets/org/qa-gated@v1/data/train.parquet",
        parquet_format,
        Some("hf_right"),
    );
    assert_eq!(documents_in(&run), 60);
    assert!(!format!("{}{}{}", run.stdout, run.stderr, run.termination).contains("hf_right"));
}
