//! `trainer fetch-model`, the init step of a vLLM serving pod, run as the
//! binary: a Hub model (`llmops_store::test_hub` on loopback) downloaded into
//! place or taken from the shared model cache, a local export checked against
//! its manifest and pinned digest and linked, and what it refuses.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use llmops_store::hub::RepoKind;
use llmops_store::test_hub::{TestHub, TestRepo};
use llmops_store::{MANIFEST_FILE, ModelManifest, digest_dir};

const TRAINER: &str = env!("CARGO_BIN_EXE_trainer");

fn model_files() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("config.json".to_string(), b"{\"layers\": 2}".to_vec()),
        ("model.safetensors".to_string(), vec![5u8; 8192]),
        ("tokenizer.json".to_string(), b"{}".to_vec()),
    ])
}

/// An export with its manifest in `dir`; returns its digest.
fn export(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for (path, bytes) in model_files() {
        std::fs::write(dir.join(path), bytes).unwrap();
    }
    let manifest = ModelManifest::new(&digest_dir(dir).unwrap());
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    manifest.digest
}

fn fetch_model(work: &Path, args: &[&str], hub: Option<&TestHub>, cache: Option<&Path>) -> Output {
    let mut command = Command::new(TRAINER);
    command
        .arg("fetch-model")
        .args(args)
        .env(
            llmops_contract::env::TERMINATION_LOG,
            work.join("termination-log"),
        )
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("HF_TOKEN")
        .env_remove(llmops_contract::env::MODEL_CREDENTIALS_SECRET)
        .env_remove(llmops_contract::env::MODEL_CACHE_DIR);
    if let Some(hub) = hub {
        command.env("HF_ENDPOINT", &hub.endpoint);
    }
    if let Some(cache) = cache {
        command.env(llmops_contract::env::MODEL_CACHE_DIR, cache);
    }
    command.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The model's files as read through `dest` (a directory or a link).
fn files_at(dest: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dest)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

fn file_downloads(hub: &TestHub) -> usize {
    hub.requests()
        .iter()
        .filter(|p| p.contains("/resolve/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_model_is_downloaded_into_place_and_a_restart_replaces_it() {
    let work = tempfile::tempdir().unwrap();
    let hub = TestHub::start().await.unwrap();
    let mut repo = TestRepo::new();
    repo.commit("main", model_files());
    hub.add(RepoKind::Model, "org/big", repo);
    let dest = work.path().join("models/model");
    let dest_arg = dest.to_str().unwrap();

    let out = fetch_model(
        work.path(),
        &["--uri", "hf://org/big", "--dest", dest_arg],
        Some(&hub),
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dest.is_symlink() && dest.is_dir());
    assert_eq!(files_at(&dest), model_files());
    // Nothing half-written is left beside it.
    let beside: Vec<_> = std::fs::read_dir(work.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["model"]);

    // A restarted init container finds the last one's model and fetches anew.
    std::fs::write(dest.join("stale"), b"from the last run").unwrap();
    let again = fetch_model(
        work.path(),
        &["--uri", "hf://org/big", "--dest", dest_arg],
        Some(&hub),
        None,
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(files_at(&dest), model_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_model_cache_the_second_pod_links_to_the_first_pods_download() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let hub = TestHub::start().await.unwrap();
    let mut repo = TestRepo::new();
    repo.commit("main", model_files());
    hub.add(RepoKind::Model, "org/big", repo);

    let first = work.path().join("pod-1/model");
    let out = fetch_model(
        work.path(),
        &["--uri", "hf://org/big", "--dest", first.to_str().unwrap()],
        Some(&hub),
        Some(&cache),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(first.is_symlink());
    let entry = std::fs::read_link(&first).unwrap();
    assert!(entry.starts_with(&cache), "{}", entry.display());
    assert_eq!(files_at(&first), model_files());
    let downloads = file_downloads(&hub);
    assert_eq!(downloads, model_files().len());

    let second = work.path().join("pod-2/model");
    let out = fetch_model(
        work.path(),
        &["--uri", "hf://org/big", "--dest", second.to_str().unwrap()],
        Some(&hub),
        Some(&cache),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_link(&second).unwrap(), entry);
    assert_eq!(file_downloads(&hub), downloads, "no file downloaded again");
}

#[test]
fn a_local_export_is_checked_against_its_pinned_digest_and_linked() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("export");
    let digest = export(&model);
    let uri = format!("file://{}", model.display());
    let dest = work.path().join("models/model");
    let dest_arg = dest.to_str().unwrap();

    let out = fetch_model(
        work.path(),
        &["--uri", &uri, "--digest", &digest, "--dest", dest_arg],
        None,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_link(&dest).unwrap(), model);

    // Another model at the URI than the one the operator pinned.
    let other = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let out = fetch_model(
        work.path(),
        &["--uri", &uri, "--digest", other, "--dest", dest_arg],
        None,
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains(other), "{}", stderr(&out));
    assert!(
        !dest.exists() && !dest.is_symlink(),
        "no model left to serve"
    );

    // A weight file changed after the export.
    std::fs::write(model.join("model.safetensors"), vec![6u8; 8192]).unwrap();
    let out = fetch_model(
        work.path(),
        &["--uri", &uri, "--digest", &digest, "--dest", dest_arg],
        None,
        None,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("model.safetensors"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_adapter_or_a_directory_without_a_model_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let adapter = work.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(adapter.join("adapter_config.json"), b"{\"r\": 4}").unwrap();
    std::fs::write(adapter.join("config.json"), b"{}").unwrap();
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let dest = work.path().join("models/model");
    for (dir, says) in [(&adapter, "LoRA adapter"), (&empty, "no config.json")] {
        let uri = format!("file://{}", dir.display());
        let out = fetch_model(
            work.path(),
            &["--uri", &uri, "--dest", dest.to_str().unwrap()],
            None,
            None,
        );
        assert!(!out.status.success());
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
        assert!(!dest.is_symlink());
    }
}
