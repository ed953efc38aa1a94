//! The real `trainer prepare` binary on generated corpora: text, gzip, CSV,
//! inline and ConfigMap sources for pretraining; gzip JSONL and CSV for
//! instruction data; and every failure that must produce exactly one line.

mod common;

use std::io::Write;
use std::path::Path;

use llmops_trainer::artifact::DatasetArtifact;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Writes the pretraining sources under `dir` (pvc claim `corpus`, ConfigMap 2).
fn pretraining_corpus(dir: &Path) {
    let pvc = dir.join("pvc/corpus/text");
    std::fs::create_dir_all(&pvc).unwrap();
    let mut plain = String::new();
    for i in 0..300 {
        plain.push_str(&common::words(i, 60 + (i as usize % 50)).join(" "));
        plain.push_str("\n\n");
        if i % 25 == 0 {
            // Exact duplicates after whitespace collapsing.
            plain.push_str(&common::words(i, 60 + (i as usize % 50)).join("   "));
            plain.push_str("\n\n");
        }
    }
    plain.push_str("Contact me at someone@example.com or 192.168.1.20 please.\n\nx\n\n");
    std::fs::write(pvc.join("a.txt"), &plain).unwrap();
    let mut more = String::new();
    for i in 1000..1200 {
        more.push_str(&common::words(i, 80).join(" "));
        more.push_str("\n\n");
    }
    std::fs::write(pvc.join("b.txt.gz"), gzip(more.as_bytes())).unwrap();
    let cm = dir.join("sources/2");
    std::fs::create_dir_all(&cm).unwrap();
    let mut csv = String::from("id,body\n");
    for i in 2000..2100 {
        csv.push_str(&format!("{i},\"{}\"\n", common::words(i, 40).join(" ")));
    }
    std::fs::write(cm.join("rows.csv"), csv).unwrap();
}

const PRETRAINING: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: Dataset
metadata: {name: corpus, namespace: ml, generation: 2}
spec:
  type: pretraining
  sources:
    - pvc: {claimName: corpus, path: /text}
    - inline: {content: "an inline document about nothing in particular\n\nand a second one"}
      format: {text: {separator: blankLine}}
    - configMap: {name: rows, key: rows.csv}
      format: {csv: {textField: body}}
  preprocessing:
    normalization: {unicode: NFKC}
    filters: {minChars: 5}
    dedup: {exact: true, nearDuplicate: {threshold: 0.8, permutations: 128, shingleSize: 5}}
    pii: {redact: [email, ipv4, phone, card]}
  tokenizer: {train: {vocabSize: 400}}
  segmentation: {sequenceLength: 64, stride: 48}
  split: {validation: 0.1, test: 0.05, seed: 3}
"#;

#[test]
fn pretraining_end_to_end_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    pretraining_corpus(tmp.path());
    let out1 = tmp.path().join("out1");
    let run = common::prepare(
        tmp.path(),
        PRETRAINING,
        &format!("file://{}", out1.display()),
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let result: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(run.termination.trim(), run.stdout.trim());
    let stats = &result["stats"];
    assert_eq!(stats["documentsIn"], 300 + 12 + 2 + 200 + 2 + 100);
    assert_eq!(stats["exactDuplicates"], 12);
    assert_eq!(stats["filtered"], 1, "the one-character document");
    assert_eq!(stats["redactions"], 2);
    assert_eq!(stats["vocabSize"], 400);
    assert!(stats["bytesIn"].as_i64().unwrap() > 10_000);

    let artifact = DatasetArtifact::open(&out1).unwrap();
    artifact.verify().unwrap();
    let m = &artifact.manifest;
    assert_eq!(result["artifact"]["digest"], m.digest.as_str());
    assert_eq!(
        (m.sequence_length, m.eos_id, m.pad_id, m.masks),
        (64, 0, 1, false)
    );
    assert_eq!(m.dataset.generation, Some(2));
    assert_eq!(m.redactions.email + m.redactions.ipv4, 2);
    let train = artifact.split("train").unwrap();
    assert!(train.len() > 50);
    assert_eq!(m.splits["train"].sequences, train.len());
    let first = train.get(0).unwrap();
    assert_eq!(first.tokens.len(), 64);
    assert!(first.mask.is_none());
    assert!(
        train
            .iter()
            .all(|s| s.unwrap().tokens.iter().all(|t| *t < 400))
    );
    assert!(!artifact.split("validation").unwrap().is_empty());
    let tokenizer = tokenizers::Tokenizer::from_file(out1.join("tokenizer.json")).unwrap();
    let text = tokenizer.decode(&first.tokens, false).unwrap();
    assert!(text.split_whitespace().count() > 5, "{text}");
    let redacted = train
        .iter()
        .chain(artifact.split("validation").unwrap().iter())
        .chain(artifact.split("test").unwrap().iter())
        .map(|s| tokenizer.decode(&s.unwrap().tokens, false).unwrap())
        .collect::<String>();
    assert!(redacted.contains("<EMAIL>") && !redacted.contains("someone@example.com"));

    let out2 = tmp.path().join("out2");
    let again = common::prepare(
        tmp.path(),
        PRETRAINING,
        &format!("file://{}", out2.display()),
        &[],
    );
    assert_eq!(again.code, 0, "{}", again.stderr);
    let again: serde_json::Value = serde_json::from_str(again.stdout.trim()).unwrap();
    assert_eq!(
        again["artifact"]["digest"], result["artifact"]["digest"],
        "same input and spec, same digest"
    );
    let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging cleaned up: {leftovers:?}");
}

const INSTRUCTION: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: Dataset
metadata: {name: chats}
spec:
  type: instruction
  sources:
    - pvc: {claimName: chats, path: qa.jsonl.gz}
      format: {jsonl: {promptField: question, responseField: answer}}
    - pvc: {claimName: chats, path: qa.tsv}
      format: {csv: {promptField: q, responseField: a, delimiter: "\t"}}
  tokenizer: {train: {vocabSize: 320, specialTokens: ["<|endoftext|>", "<|pad|>"]}}
  segmentation: {sequenceLength: 256, pack: false}
  labeling: {template: "Q: {prompt}\nA: ", maskPrompt: true}
  split: {validation: 0.1, seed: 1}
"#;

#[test]
fn instruction_masks_prompts_and_padding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pvc/chats");
    std::fs::create_dir_all(&dir).unwrap();
    let mut jsonl = String::new();
    for i in 0..150u64 {
        let q = common::words(i, 6).join(" ");
        let a = common::words(i + 7777, 10).join(" ");
        jsonl.push_str(&serde_json::json!({"question": q, "answer": a, "id": i}).to_string());
        jsonl.push('\n');
    }
    std::fs::write(dir.join("qa.jsonl.gz"), gzip(jsonl.as_bytes())).unwrap();
    let mut tsv = String::from("q\ta\n");
    for i in 500..560u64 {
        tsv.push_str(&format!(
            "{}\t{}\n",
            common::words(i, 5).join(" "),
            common::words(i + 1, 8).join(" ")
        ));
    }
    std::fs::write(dir.join("qa.tsv"), tsv).unwrap();
    let out = tmp.path().join("out");
    let run = common::prepare(
        tmp.path(),
        INSTRUCTION,
        &format!("file://{}", out.display()),
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let artifact = DatasetArtifact::open(&out).unwrap();
    let m = &artifact.manifest;
    assert!(m.masks);
    assert_eq!(m.stats.documents_out, 210);
    let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let train = artifact.split("train").unwrap();
    let mut seen = 0;
    for seq in train.iter() {
        let seq = seq.unwrap();
        let mask = seq.mask.unwrap();
        let first_target = mask.iter().position(|m| *m == 1).unwrap();
        let prompt = tokenizer
            .decode(&seq.tokens[..first_target], false)
            .unwrap();
        assert!(
            prompt.starts_with("Q: ") && prompt.ends_with("\nA: "),
            "{prompt:?}"
        );
        let last_target = mask.iter().rposition(|m| *m == 1).unwrap();
        assert_eq!(
            seq.tokens[last_target], m.eos_id,
            "the EOS after the response is a target"
        );
        assert!(seq.tokens[last_target + 1..].iter().all(|t| *t == m.pad_id));
        assert!(
            mask[last_target + 1..].iter().all(|x| *x == 0),
            "padding is masked"
        );
        seen += 1;
    }
    assert!(seen > 150);
    assert_eq!(
        m.splits.values().map(|s| s.sequences).sum::<u64>(),
        210,
        "one padded row per example at this length"
    );
}

fn failing(yaml: &str, env: &[(&str, String)]) -> (String, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = common::prepare(tmp.path(), yaml, &format!("file://{}", out.display()), env);
    assert_ne!(run.code, 0);
    let lines = common::error_lines(&run);
    assert_eq!(lines.len(), 1, "exactly one line: {:?}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert_eq!(run.termination, lines[0]);
    assert!(!out.exists(), "no artifact on failure");
    (lines[0].to_string(), tmp)
}

fn dataset_with(source: &str, extra: &str) -> String {
    format!(
        "kind: Dataset\nmetadata: {{name: bad}}\nspec:\n  sources: [{source}]\n  tokenizer: {{train: {{vocabSize: 300}}}}\n{extra}"
    )
}

#[test]
fn malformed_jsonl_names_source_and_line() {
    let yaml = dataset_with(
        r#"{inline: {content: "{\"text\": \"ok\"}\n{\"text\": \"fine\"}\n{broken\n"}, format: {jsonl: {}}}"#,
        "",
    );
    let (line, _) = failing(&yaml, &[]);
    assert!(
        line.starts_with("error: source 0 (inline): line 3: invalid JSON"),
        "{line}"
    );
}

#[test]
fn nothing_left_after_filtering() {
    let yaml = dataset_with(
        r#"{inline: {content: "short\n\ntiny"}}"#,
        "  preprocessing: {filters: {minChars: 1000}}\n",
    );
    let (line, _) = failing(&yaml, &[]);
    assert!(
        line.contains("nothing left after filtering") && line.contains("2 filtered"),
        "{line}"
    );
}

#[test]
fn unreachable_url() {
    let (line, _) = failing(
        &dataset_with(r#"{http: {url: "http://127.0.0.1:9/corpus.txt"}}"#, ""),
        &[],
    );
    assert!(
        line.contains("cannot reach http://127.0.0.1:9/corpus.txt"),
        "{line}"
    );
}

#[test]
fn missing_credentials() {
    let (line, _) = failing(
        &dataset_with(
            r#"{objectStore: {uri: "s3://bucket/data/", credentialsSecretRef: {name: s3-creds}}}"#,
            "",
        ),
        &[],
    );
    assert!(
        line.contains("missing credentials") && line.contains("LLMOPS_CRED_S3_CREDS_"),
        "{line}"
    );
}

/// Serves `body` once over plain HTTP on a free port.
fn serve_once(body: &'static [u8]) -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    format!("http://{addr}/corpus.txt")
}

#[test]
fn http_source_with_checksum() {
    let body: &'static [u8] = b"first document here\n\nsecond document here\n";
    let sha = "0".repeat(64);
    let url = serve_once(body);
    let (line, _) = failing(
        &dataset_with(
            &format!(r#"{{http: {{url: "{url}", sha256: "{sha}"}}}}"#),
            "",
        ),
        &[],
    );
    assert!(
        line.contains("checksum mismatch") && line.contains(&sha),
        "{line}"
    );

    let good = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body))
    };
    let url = serve_once(body);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let yaml = dataset_with(
        &format!(r#"{{http: {{url: "{url}", sha256: "{good}"}}}}"#),
        "  segmentation: {sequenceLength: 8}\n  split: {validation: 0}\n",
    );
    let run = common::prepare(tmp.path(), &yaml, &format!("file://{}", out.display()), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        DatasetArtifact::open(&out)
            .unwrap()
            .manifest
            .stats
            .documents_out,
        2
    );
}
