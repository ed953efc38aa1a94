//! `objectStore` sources and an `s3://` output against a real S3-compatible
//! server (moto, from the project venv), with credentials passed the way the
//! operator passes them: `LLMOPS_CRED_<SECRET>_<KEY>` variables.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llmops_store::Credentials;
use llmops_trainer::artifact::DatasetArtifact;

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto() -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = common::venv_python().with_file_name("moto_server");
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server from the venv (scripts/setup-venv)");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto { child, endpoint }
}

fn boto(endpoint: &str, script: &str) {
    let full = format!(
        "import boto3, gzip\n\
         s3 = boto3.client('s3', endpoint_url={endpoint:?}, aws_access_key_id='test', \
         aws_secret_access_key='secret', region_name='us-east-1')\n{script}"
    );
    let status = Command::new(common::venv_python())
        .args(["-c", &full])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
#[allow(
    unsafe_code,
    reason = "setting the environment is unsafe in edition 2024"
)]
fn reads_a_prefix_and_publishes_to_s3() {
    let moto = start_moto();
    let docs: Vec<String> = (0..120).map(|i| common::words(i, 40).join(" ")).collect();
    let part1 = docs[..60].join("\n\n");
    let part2 = docs[60..].join("\n\n");
    boto(
        &moto.endpoint,
        &format!(
            "s3.create_bucket(Bucket='corpus')\n\
             s3.create_bucket(Bucket='artifacts')\n\
             s3.put_object(Bucket='corpus', Key='web/part-1.txt', Body={part1:?}.encode())\n\
             s3.put_object(Bucket='corpus', Key='web/part-2.txt.gz', Body=gzip.compress({part2:?}.encode()))\n\
             s3.put_object(Bucket='corpus', Key='other/ignored.txt', Body=b'not under the prefix')\n"
        ),
    );
    let yaml = r#"
kind: Dataset
metadata: {name: web, namespace: ml}
spec:
  sources:
    - objectStore: {uri: "s3://corpus/web/", credentialsSecretRef: {name: corpus-creds}}
  tokenizer: {train: {vocabSize: 320}}
  segmentation: {sequenceLength: 32}
  output: {credentialsSecretRef: {name: store.creds}}
"#;
    let mut env = Vec::new();
    for secret in ["CORPUS_CREDS", "STORE_CREDS"] {
        let var = |k: &str| format!("LLMOPS_CRED_{secret}_{k}");
        env.push((var("AWS_ACCESS_KEY_ID"), "test".to_string()));
        env.push((var("AWS_SECRET_ACCESS_KEY"), "secret".to_string()));
        env.push((var("AWS_REGION"), "us-east-1".to_string()));
        env.push((var("AWS_ENDPOINT"), moto.endpoint.clone()));
        env.push((var("AWS_ALLOW_HTTP"), "true".to_string()));
    }
    let env_refs: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tmp = tempfile::tempdir().unwrap();
    let run = common::prepare(tmp.path(), yaml, "s3://artifacts/datasets/web", &env_refs);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let result: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(result["stats"]["documentsIn"], 120);
    assert_eq!(result["artifact"]["uri"], "s3://artifacts/datasets/web");

    // Read the published artifact back through the store with the same contract.
    for (k, v) in &env {
        // SAFETY: this test sets variables before spawning any thread that reads them.
        unsafe { std::env::set_var(k, v) };
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let artifact = rt
        .block_on(DatasetArtifact::fetch(
            "s3://artifacts/datasets/web",
            &Credentials::Secret("store.creds".into()),
            cache.path(),
        ))
        .unwrap();
    assert_eq!(
        artifact.manifest.digest,
        result["artifact"]["digest"].as_str().unwrap()
    );
    assert!(artifact.split("train").unwrap().len() > 10);
}
