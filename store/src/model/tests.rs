use std::sync::Arc;

use object_store::memory::InMemory;

use super::*;
use crate::Credentials;
use crate::digest::digest_dir;

/// A model directory with a manifest; returns its manifest.
fn export(dir: &Path) -> ModelManifest {
    std::fs::write(dir.join("config.json"), b"{\"layers\": 2}").unwrap();
    std::fs::write(dir.join("model.safetensors"), vec![7u8; 4096]).unwrap();
    let manifest = ModelManifest::new(&digest_dir(dir).unwrap());
    let text = serde_json::to_vec(&manifest).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), text).unwrap();
    manifest
}

fn local(dir: &Path) -> Store {
    Store::open(
        &format!("file://{}", dir.display()),
        &Credentials::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_local_model_is_checked_in_place_against_its_pinned_digest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = export(dir.path());
    assert!(manifest.dir_name().starts_with("model-"));
    assert_eq!(manifest.dir_name().len(), "model-".len() + 16);
    let store = local(dir.path());
    let scratch = tempfile::tempdir().unwrap();
    let got = fetch_model(&store, scratch.path(), Some(&manifest.digest))
        .await
        .unwrap();
    assert_eq!(got, dir.path());

    let err = fetch_model(&store, scratch.path(), Some("sha256:other"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&manifest.digest) && err.contains("sha256:other"),
        "{err}"
    );

    // A weight file changed after the export.
    std::fs::write(dir.path().join("model.safetensors"), vec![8u8; 4096]).unwrap();
    let err = fetch_model(&store, scratch.path(), None).await.unwrap_err();
    assert!(matches!(err, StoreError::ChecksumMismatch { .. }), "{err}");
}

#[tokio::test]
async fn without_a_manifest_only_an_unpinned_model_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
    let store = local(dir.path());
    let scratch = tempfile::tempdir().unwrap();
    assert_eq!(
        fetch_model(&store, scratch.path(), None).await.unwrap(),
        dir.path()
    );
    let err = fetch_model(&store, scratch.path(), Some("sha256:abc"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no manifest.json") && err.contains("sha256:abc"),
        "{err}"
    );
}

#[tokio::test]
async fn an_object_store_model_downloads_the_listed_files_only() {
    let source = tempfile::tempdir().unwrap();
    let manifest = export(source.path());
    let memory = Arc::new(InMemory::new());
    let store = Store::over("s3://models/chat", memory, "chat");
    for rel in ["config.json", "model.safetensors", MANIFEST_FILE] {
        let bytes = std::fs::read(source.path().join(rel)).unwrap();
        store.put_bytes(rel, bytes.into()).await.unwrap();
    }
    // Something else under the same prefix (optimizer state, say) is not fetched.
    store
        .put_bytes("checkpoints/step-1/optimizer.bin", vec![0u8; 64].into())
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let got = fetch_model(&store, scratch.path(), Some(&manifest.digest))
        .await
        .unwrap();
    let mut files = crate::store::local_files(&got).unwrap();
    files.sort();
    assert_eq!(files, ["config.json", "model.safetensors"]);

    // An object replaced behind the manifest's back fails its download.
    store
        .put_bytes("model.safetensors", vec![9u8; 4096].into())
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let err = fetch_model(&store, scratch.path(), None).await.unwrap_err();
    assert!(matches!(err, StoreError::ChecksumMismatch { .. }), "{err}");
}

#[test]
fn a_manifest_that_does_not_add_up_or_leaves_the_model_is_refused() {
    let files = [FileDigest {
        path: "config.json".into(),
        sha256: "ab".into(),
    }];
    let mut manifest = ModelManifest::new(&files);
    let ok = serde_json::to_vec(&manifest).unwrap();
    assert!(ModelManifest::parse(&ok, "file:///m").is_ok());

    manifest.digest = "sha256:0".into();
    let err = ModelManifest::parse(&serde_json::to_vec(&manifest).unwrap(), "file:///m")
        .unwrap_err()
        .to_string();
    assert!(err.contains("hash to"), "{err}");

    let escaping = ModelManifest::new(&[FileDigest {
        path: "../secrets".into(),
        sha256: "ab".into(),
    }]);
    let err = ModelManifest::parse(&serde_json::to_vec(&escaping).unwrap(), "file:///m")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a path inside the model"), "{err}");
}
