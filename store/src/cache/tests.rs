use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::memory::InMemory;

use super::*;
use crate::digest::digest_dir;
use crate::hub::RepoKind;
use crate::test_hub::{TestHub, TestRepo};

fn hub_files() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("config.json".to_string(), b"{\"layers\": 2}".to_vec()),
        ("model.safetensors".to_string(), vec![7u8; 1 << 16]),
        ("tokenizer.json".to_string(), b"{}".to_vec()),
    ])
}

fn resolves(hub: &TestHub) -> usize {
    hub.requests()
        .iter()
        .filter(|r| r.contains("/resolve/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pods_download_a_hub_model_once() {
    let hub = TestHub::start().await.unwrap();
    let mut repo = TestRepo::new();
    let v1 = repo.commit("v1", hub_files());
    hub.add(RepoKind::Model, "org/tiny", repo);
    let cache = tempfile::tempdir().unwrap();
    let open = || {
        Store::over_hub(
            "hf://org/tiny@v1",
            &Credentials::Ambient,
            &hub.endpoint,
            None,
        )
        .unwrap()
    };
    // What a pod that died mid-download left behind.
    let key = format!(
        "hf-{}",
        hex::encode(Sha256::digest(format!("hf://org/tiny@{v1}").as_bytes()))
    );
    let stale = cache.path().join(format!(".{key}.incoming-999999"));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), b"half").unwrap();
    let (a, b) = (open(), open());
    let (a, b) = tokio::join!(
        fetch_model_cached(&a, cache.path(), None),
        fetch_model_cached(&b, cache.path(), None)
    );
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(a.path, b.path);
    assert_eq!(
        [a.hit, b.hit].iter().filter(|h| !**h).count(),
        1,
        "exactly one downloads: {a:?} {b:?}"
    );
    assert_eq!(resolves(&hub), 3, "each file once");
    assert_eq!(a.key, key);
    assert!(!stale.exists(), "the dead pod's download is removed");
    assert_eq!(
        std::fs::read(a.path.join("model.safetensors")).unwrap(),
        vec![7u8; 1 << 16]
    );
    // A later pod: a hit, nothing downloaded; only the entry and its lock remain.
    let c = fetch_model_cached(&open(), cache.path(), None)
        .await
        .unwrap()
        .unwrap();
    assert!(c.hit);
    assert_eq!(resolves(&hub), 3);
    let mut names: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [key.clone(), format!("{key}.lock")]);
}

/// An export with a manifest in an in-memory object store.
async fn exported() -> (Store, ModelManifest) {
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("config.json"), b"{\"layers\": 2}").unwrap();
    std::fs::write(source.path().join("model.safetensors"), vec![3u8; 4096]).unwrap();
    let manifest = ModelManifest::new(&digest_dir(source.path()).unwrap());
    std::fs::write(
        source.path().join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let store = Store::over("s3://models/chat", Arc::new(InMemory::new()), "chat");
    for rel in ["config.json", "model.safetensors", MANIFEST_FILE] {
        let bytes = std::fs::read(source.path().join(rel)).unwrap();
        store.put_bytes(rel, bytes.into()).await.unwrap();
    }
    (store, manifest)
}

#[tokio::test]
async fn an_export_is_keyed_by_its_digest_and_checked_on_every_use() {
    let (store, manifest) = exported().await;
    let cache = tempfile::tempdir().unwrap();
    let first = fetch_model_cached(&store, cache.path(), Some(&manifest.digest))
        .await
        .unwrap()
        .unwrap();
    assert!(!first.hit);
    assert_eq!(
        first.key,
        format!("sha256-{}", manifest.digest.trim_start_matches("sha256:"))
    );
    let again = fetch_model_cached(&store, cache.path(), Some(&manifest.digest))
        .await
        .unwrap()
        .unwrap();
    assert!(again.hit);
    // Another digest pinned: refused before the cache is looked at.
    let err = fetch_model_cached(&store, cache.path(), Some("sha256:00"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidModel { .. }), "{err}");
    // A damaged entry is refused, not served.
    std::fs::write(first.path.join("model.safetensors"), b"damaged").unwrap();
    let err = fetch_model_cached(&store, cache.path(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ChecksumMismatch { .. }), "{err}");
}

#[tokio::test]
async fn local_models_and_models_without_a_key_are_not_cached() {
    let cache = tempfile::tempdir().unwrap();
    let model = tempfile::tempdir().unwrap();
    std::fs::write(model.path().join("config.json"), b"{}").unwrap();
    let local = Store::open(
        &format!("file://{}", model.path().display()),
        &Credentials::Ambient,
    )
    .unwrap();
    assert_eq!(
        fetch_model_cached(&local, cache.path(), None)
            .await
            .unwrap(),
        None
    );
    let bare = Store::over("s3://models/bare", Arc::new(InMemory::new()), "bare");
    bare.put_bytes("config.json", "{}".into()).await.unwrap();
    assert_eq!(
        fetch_model_cached(&bare, cache.path(), None).await.unwrap(),
        None
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}
