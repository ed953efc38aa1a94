//! The real `trainer prepare` binary on sources past a limit: each fails with
//! one line naming the source, the line and the limit, and exits with
//! `exit::INVALID` so the operator does not retry it. HTTP sources are served
//! on loopback only; refusing link-local addresses is tested on the address
//! check itself (`prepare::sources::http`), never by connecting to one.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use llmops_contract::{env, exit};

fn dataset_with(source: &str) -> String {
    format!(
        "kind: Dataset\nmetadata: {{name: bad}}\nspec:\n  sources: [{source}]\n  tokenizer: {{train: {{vocabSize: 300}}}}\n  segmentation: {{sequenceLength: 8}}\n  split: {{validation: 0}}\n"
    )
}

/// Runs `trainer prepare` and returns its exit code and its one error line
/// (empty on success).
fn run(yaml: &str, env: &[(&str, String)]) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    write_pvc(tmp.path());
    let out = tmp.path().join("out");
    let run = common::prepare(tmp.path(), yaml, &format!("file://{}", out.display()), env);
    if run.code == 0 {
        return (0, String::new());
    }
    let lines = common::error_lines(&run);
    assert_eq!(lines.len(), 1, "exactly one line: {:?}", run.stderr);
    assert_eq!(run.termination, lines[0]);
    assert!(!out.exists(), "no artifact on failure");
    (run.code, lines[0].to_string())
}

/// A claim `bombs` holding a gzip file of 8 MiB of spaces after one line.
fn write_pvc(dir: &std::path::Path) {
    let claim = dir.join("pvc/bombs");
    std::fs::create_dir_all(&claim).unwrap();
    let mut body = b"a first document of several words\n".to_vec();
    body.resize(8 << 20, b' ');
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    std::fs::write(claim.join("bomb.txt.gz"), gz.finish().unwrap()).unwrap();
}

/// Serves each of `responses` (head and body) to one connection, in order,
/// on loopback; `{base}` in a response is replaced by the server's URL.
fn serve(responses: Vec<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let base_for_thread = base.clone();
    std::thread::spawn(move || {
        for response in responses {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let text = String::from_utf8_lossy(&response).replace("{base}", &base_for_thread);
            let _ = stream.write_all(text.as_bytes());
            // Keep a stalled response open while the client waits on it.
            std::thread::sleep(std::time::Duration::from_millis(
                if text.contains("stall") { 3000 } else { 0 },
            ));
        }
    });
    base
}

fn redirect(to: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const BODY: &str = "first document here\n\nsecond document here\n";

#[test]
fn redirects_are_followed_up_to_five_and_checked() {
    // Through a name, so the target goes through the resolver's check.
    let base = serve(vec![redirect("{base}/one"), redirect("/two"), ok(BODY)]);
    let via_name = base.replace("127.0.0.1", "localhost");
    let (code, line) = run(
        &dataset_with(&format!("{{http: {{url: \"{via_name}/start\"}}}}")),
        &[],
    );
    assert_eq!(code, 0, "{line}");

    let mut chain: Vec<Vec<u8>> = (0..6).map(|i| redirect(&format!("{{base}}/{i}"))).collect();
    chain.push(ok(BODY));
    let base = serve(chain);
    let (code, line) = run(
        &dataset_with(&format!("{{http: {{url: \"{base}/start\"}}}}")),
        &[],
    );
    assert_eq!(code, i32::from(exit::INVALID), "{line}");
    assert!(
        line.starts_with(&format!("error: source 0 ({base}/start): following redirects from {base}/start: more than 5 redirects (the last to {base}/5)")),
        "{line}"
    );
}

#[test]
fn a_redirect_to_another_scheme_is_refused() {
    let base = serve(vec![redirect("file:///etc/passwd")]);
    let (code, line) = run(
        &dataset_with(&format!("{{http: {{url: \"{base}/x\"}}}}")),
        &[],
    );
    assert_eq!(code, i32::from(exit::INVALID), "{line}");
    assert_eq!(
        line,
        format!(
            "error: source 0 ({base}/x): following redirects from {base}/x: redirected to file:///etc/passwd, which is not http(s); point the source at an http(s) URL"
        )
    );
}

#[test]
fn downloads_are_capped_declared_or_not() {
    let limit = [(env::SOURCE_MAX_BYTES, "16".to_string())];
    let base = serve(vec![ok(BODY)]);
    let (code, line) = run(
        &dataset_with(&format!("{{http: {{url: \"{base}/big\"}}}}")),
        &limit,
    );
    assert_eq!(code, i32::from(exit::INVALID), "{line}");
    assert_eq!(
        line,
        format!(
            "error: source 0 ({base}/big): the download is larger than the limit of 16 bytes; split the source into smaller files or raise LLMOPS_SOURCE_MAX_BYTES"
        )
    );

    // Without a content-length the bytes themselves are counted.
    let chunked = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{BODY}\r\n0\r\n\r\n",
        BODY.len()
    );
    let base = serve(vec![chunked.into_bytes()]);
    let (code, line) = run(
        &dataset_with(&format!("{{http: {{url: \"{base}/big\"}}}}")),
        &limit,
    );
    assert_eq!(code, i32::from(exit::INVALID), "{line}");
    assert!(
        line.starts_with(&format!("error: source 0 ({base}/big): line 1: the download is larger than the limit of 16 bytes")),
        "{line}"
    );
}

#[test]
fn a_stalled_server_times_out_naming_the_variable() {
    let stall =
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nconnection: close\r\n\r\nstall".to_vec();
    let base = serve(vec![stall]);
    let (code, line) = run(
        &dataset_with(&format!("{{http: {{url: \"{base}/slow\"}}}}")),
        &[(env::HTTP_READ_TIMEOUT_SECONDS, "0.5".to_string())],
    );
    assert_ne!(code, 0);
    assert!(
        line.contains(&format!("{base}/slow"))
            && line.contains("no bytes for 0.5 s (raise LLMOPS_HTTP_READ_TIMEOUT_SECONDS"),
        "{line}"
    );
}

#[test]
fn long_lines_fail_with_source_line_and_limit() {
    let yaml = dataset_with(
        r#"{inline: {content: "{\"text\": \"short\"}\n{\"text\": \"a line longer than forty bytes, which is the limit here\"}\n"}, format: {jsonl: {}}}"#,
    );
    let (code, line) = run(&yaml, &[(env::LINE_MAX_BYTES, "40".to_string())]);
    assert_eq!(code, i32::from(exit::INVALID), "{line}");
    assert!(
        line.starts_with(
            "error: source 0 (inline): line 2: the line is longer than the limit of 40 bytes; "
        ) && line.ends_with("raise LLMOPS_LINE_MAX_BYTES"),
        "{line}"
    );
}

#[test]
fn a_zip_bomb_fails_with_source_line_and_limit() {
    let (code, line) = run(
        &dataset_with("{pvc: {claimName: bombs, path: /}}"),
        &[(env::GZIP_MEMBER_MAX_BYTES, (1u64 << 20).to_string())],
    );
    assert_eq!(code, i32::from(exit::INVALID), "{line}");
    assert!(
        line.starts_with("error: source 0 (pvc://bombs/bomb.txt.gz): line 2: a gzip member decompresses to more than the limit of 1 MiB; ")
            && line.ends_with("raise LLMOPS_GZIP_MEMBER_MAX_BYTES"),
        "{line}"
    );
}

#[test]
fn an_unreadable_limit_variable_is_named() {
    let (code, line) = run(
        &dataset_with(r#"{inline: {content: "x"}}"#),
        &[(env::LINE_MAX_BYTES, "16M".to_string())],
    );
    assert_eq!(code, i32::from(exit::INVALID), "{line}");
    assert_eq!(
        line,
        "error: invalid spec: environment variable LLMOPS_LINE_MAX_BYTES=\"16M\" must be a positive number of bytes"
    );
}
