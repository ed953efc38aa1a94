//! The real `trainer prepare` and `trainer clean` on local prefixes: an artifact is
//! marked with the Dataset it belongs to, and a prefix holding anything else is
//! neither replaced nor deleted.

mod common;

use std::path::Path;
use std::process::Command;

use llmops_store::{OWNER_FILE, Owner};

fn dataset(namespace: &str, name: &str, uid: &str) -> String {
    let mut docs = String::new();
    for i in 0..40 {
        docs.push_str(&common::words(i, 30).join(" "));
        docs.push_str("\\n\\n");
    }
    format!(
        r#"
apiVersion: llmops.dev/v1alpha1
kind: Dataset
metadata: {{name: {name}, namespace: {namespace}, uid: "{uid}", generation: 1}}
spec:
  sources: [{{inline: {{content: "{docs}"}}, format: {{text: {{separator: blankLine}}}}}}]
  tokenizer: {{train: {{vocabSize: 300}}}}
  segmentation: {{sequenceLength: 16}}
"#
    )
}

fn uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Every file under `dir` (hidden ones included) with its content.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A prefix holding someone else's files.
fn foreign(dir: &Path) -> std::path::PathBuf {
    let prefix = dir.join("shared");
    std::fs::create_dir_all(prefix.join("raw")).unwrap();
    std::fs::write(prefix.join("raw/a.jsonl"), "{\"text\": \"keep me\"}\n").unwrap();
    std::fs::write(prefix.join("notes.txt"), "keep me too").unwrap();
    prefix
}

fn clean(dir: &Path, uri: &str, args: &[&str]) -> common::Run {
    let termination = dir.join(format!("clean-{}.termination", args.len()));
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["clean", "--uri", uri])
        .args(args)
        .env(llmops_contract::env::TERMINATION_LOG, &termination)
        .env_remove(llmops_contract::env::RESOURCE)
        .output()
        .unwrap();
    let run = common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        termination: std::fs::read_to_string(&termination).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(&termination);
    run
}

fn invalid() -> i32 {
    i32::from(llmops_contract::exit::INVALID)
}

#[test]
fn a_publish_over_a_foreign_prefix_refuses_and_leaves_it_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = foreign(tmp.path());
    let before = snapshot(&prefix);
    let run = common::prepare(
        tmp.path(),
        &dataset("ml", "chats", "u1"),
        &uri(&prefix),
        &[],
    );
    assert_eq!(run.code, invalid(), "{}", run.stderr);
    let lines = common::error_lines(&run);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert_eq!(run.termination, lines[0]);
    assert!(
        run.termination.contains(&format!(
            "spec.output.uri: {} holds 2 objects (first: notes.txt) not written by Dataset ml/chats",
            uri(&prefix)
        )),
        "{}",
        run.termination
    );
    assert_eq!(snapshot(&prefix), before);
}

#[test]
fn a_publish_then_a_republish_by_the_same_dataset_works() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let yaml = dataset("ml", "chats", "u1");
    for _ in 0..2 {
        let run = common::prepare(tmp.path(), &yaml, &uri(&out), &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let marker: Owner =
        serde_json::from_slice(&std::fs::read(out.join(OWNER_FILE)).unwrap()).unwrap();
    assert_eq!(
        marker,
        Owner {
            api_version: "llmops.dev/v1alpha1".into(),
            kind: "Dataset".into(),
            namespace: "ml".into(),
            name: "chats".into(),
            uid: "u1".into(),
        }
    );
    let artifact = llmops_trainer::artifact::DatasetArtifact::open(&out).unwrap();
    assert!(artifact.manifest.stats.documents_out > 0);
}

#[test]
fn another_datasets_artifact_is_refused_by_publish_and_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = common::prepare(tmp.path(), &dataset("team-b", "web", "u9"), &uri(&out), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let before = snapshot(&out);
    let run = common::prepare(tmp.path(), &dataset("ml", "chats", "u1"), &uri(&out), &[]);
    assert_eq!(run.code, invalid(), "{}", run.stderr);
    assert!(
        run.termination
            .contains("holds the artifact of Dataset team-b/web (uid u9)"),
        "{}",
        run.termination
    );
    // The same name under a new uid: a Dataset recreated after a Retain.
    let run = common::prepare(
        tmp.path(),
        &dataset("team-b", "web", "u10"),
        &uri(&out),
        &[],
    );
    assert_eq!(run.code, invalid(), "{}", run.stderr);
    assert!(
        run.termination
            .contains("an earlier Dataset team-b/web (uid u9)"),
        "{}",
        run.termination
    );
    let run = clean(
        tmp.path(),
        &uri(&out),
        &["--dataset", "ml/chats", "--uid", "u1"],
    );
    assert_eq!(run.code, invalid(), "{}", run.stderr);
    assert!(
        run.termination.contains("spec.output.uri"),
        "{}",
        run.termination
    );
    assert_eq!(snapshot(&out), before);
}

#[test]
fn a_clean_of_a_foreign_prefix_keeps_every_object() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = foreign(tmp.path());
    let before = snapshot(&prefix);
    for args in [&["--dataset", "ml/chats", "--uid", "u1"][..], &[][..]] {
        let run = clean(tmp.path(), &uri(&prefix), args);
        assert_eq!(run.code, invalid(), "{args:?}: {}", run.stderr);
        assert!(
            run.termination.starts_with("error: kept "),
            "{}",
            run.termination
        );
        assert!(
            run.termination
                .contains("holds 2 objects (first: notes.txt)"),
            "{}",
            run.termination
        );
        assert_eq!(snapshot(&prefix), before, "{args:?}");
    }
}

#[test]
fn a_clean_deletes_its_own_artifact_and_what_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let yaml = dataset("ml", "chats", "u1");
    let neighbour = tmp.path().join("out-2");
    std::fs::create_dir_all(&neighbour).unwrap();
    std::fs::write(neighbour.join("keep.txt"), "k").unwrap();
    for by in ["flags", "resource"] {
        let run = common::prepare(tmp.path(), &yaml, &uri(&out), &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let resource = tmp.path().join("ds.yaml");
        std::fs::write(&resource, &yaml).unwrap();
        let resource = resource.display().to_string();
        let args: &[&str] = if by == "flags" {
            &["--dataset", "ml/chats", "--uid", "u1"]
        } else {
            &["--resource", &resource]
        };
        let run = clean(tmp.path(), &uri(&out), args);
        assert_eq!(run.code, 0, "{by}: {}", run.stderr);
        assert!(!out.exists(), "{by}");
        // Deleting what is gone succeeds, with or without an owner.
        assert_eq!(clean(tmp.path(), &uri(&out), args).code, 0);
        assert_eq!(clean(tmp.path(), &uri(&out), &[]).code, 0);
    }
    assert_eq!(snapshot(&neighbour), [("keep.txt".into(), b"k".to_vec())]);
}
