//! `trainer prepare` on Parquet files written by pyarrow as Hugging Face
//! `datasets` writes them (snappy pages, several row groups, `large_string` and
//! `string` columns, extra columns it ignores): the same documents as the same
//! data given as JSONL.

mod common;

use std::path::Path;
use std::process::Command;

use llmops_trainer::artifact::DatasetArtifact;

/// Writes `rows` (question, answer) as `path` with pyarrow, and as JSONL beside it.
fn write_parquet(path: &Path, rows: &[(String, String)], compression: &str) {
    let json = serde_json::to_string(rows).unwrap();
    let script = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
rows = json.loads(sys.argv[1])
table = pa.table({
    "id": pa.array(range(len(rows)), pa.int64()),
    "question": pa.array([q for q, _ in rows], pa.large_string()),
    "answer": pa.array([a for _, a in rows], pa.string()),
})
pq.write_table(table, sys.argv[2], compression=sys.argv[3], row_group_size=16)
"#;
    let out = Command::new(common::venv_python())
        .args(["-c", script, &json])
        .arg(path)
        .arg(compression)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const INSTRUCTION: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: Dataset
metadata: {name: qa, namespace: ml, generation: 1}
spec:
  type: instruction
  sources:
    - pvc: {claimName: data, path: /FILE}
      format: FORMAT
  tokenizer: {train: {vocabSize: 300}}
  segmentation: {sequenceLength: 48, pack: false}
  labeling: {template: "Q: {prompt}\nA: ", maskPrompt: true}
  split: {validation: 0.1, seed: 1}
"#;

fn prepared(dir: &Path, file: &str, format: &str) -> DatasetArtifact {
    let yaml = INSTRUCTION.replace("FILE", file).replace("FORMAT", format);
    let out = dir.join(format!("out-{file}"));
    let run = common::prepare(dir, &yaml, &format!("file://{}", out.display()), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    DatasetArtifact::open(&out).unwrap()
}

#[test]
fn parquet_from_pyarrow_prepares_like_the_same_rows_in_jsonl() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pvc/data");
    std::fs::create_dir_all(&data).unwrap();
    let rows: Vec<(String, String)> = (0..90u64)
        .map(|i| {
            (
                common::words(i, 6).join(" "),
                common::words(i + 5000, 9).join(" "),
            )
        })
        .collect();
    for compression in ["snappy", "zstd"] {
        write_parquet(
            &data.join(format!("qa-{compression}.parquet")),
            &rows,
            compression,
        );
    }
    let jsonl: String = rows
        .iter()
        .map(|(q, a)| serde_json::json!({"question": q, "answer": a}).to_string() + "\n")
        .collect();
    std::fs::write(data.join("qa.jsonl"), jsonl).unwrap();

    let fields = "{promptField: question, responseField: answer}";
    let reference = prepared(tmp.path(), "qa.jsonl", &format!("{{jsonl: {fields}}}"));
    for compression in ["snappy", "zstd"] {
        let file = format!("qa-{compression}.parquet");
        let got = prepared(tmp.path(), &file, &format!("{{parquet: {fields}}}"));
        assert_eq!(got.manifest.stats.documents_out, 90, "{compression}");
        // The same documents make the same tokenizer and the same shards.
        assert_eq!(
            got.manifest.splits, reference.manifest.splits,
            "{compression}"
        );
        let tokens = |a: &DatasetArtifact| -> Vec<Vec<u32>> {
            a.split("train")
                .unwrap()
                .iter()
                .map(|s| s.unwrap().tokens)
                .collect()
        };
        assert_eq!(tokens(&got), tokens(&reference), "{compression}");
    }
}

#[test]
fn a_parquet_column_that_is_not_there_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pvc/data");
    std::fs::create_dir_all(&data).unwrap();
    write_parquet(
        &data.join("qa.parquet"),
        &[("q".into(), "a".into())],
        "snappy",
    );
    let yaml = INSTRUCTION.replace("FILE", "qa.parquet").replace(
        "FORMAT",
        "{parquet: {promptField: prompt, responseField: answer}}",
    );
    let run = common::prepare(
        tmp.path(),
        &yaml,
        &format!("file://{}", tmp.path().join("o").display()),
        &[],
    );
    assert_ne!(run.code, 0);
    assert!(
        run.termination.contains("missing column \\\"prompt\\\"")
            || run.termination.contains("missing column \"prompt\""),
        "{}",
        run.termination
    );
    assert!(
        run.termination.contains("id, question, answer"),
        "{}",
        run.termination
    );
}
