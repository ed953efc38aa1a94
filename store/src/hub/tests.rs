use super::*;
use crate::test_hub::{Files, TestHub, TestRepo};
use crate::{ArtifactUri, Store, fetch_model};

fn parse(rest: &str) -> HubRef {
    HubRef::parse(rest).unwrap_or_else(|e| panic!("{rest}: {e}"))
}

#[test]
fn parses_models_datasets_revisions_and_paths() {
    let hub = parse("org/model");
    assert_eq!(
        hub,
        HubRef {
            kind: RepoKind::Model,
            repo: "org/model".into(),
            revision: "main".into(),
            path: String::new(),
        }
    );
    let hub = parse("datasets/org/data.v2@v1.0/data/train.parquet");
    assert_eq!(hub.kind, RepoKind::Dataset);
    assert_eq!(hub.repo, "org/data.v2");
    assert_eq!(hub.revision, "v1.0");
    assert_eq!(hub.path, "data/train.parquet");
    let hub = parse("org/m@refs%2Fpr%2F3/sub/");
    assert_eq!(hub.revision, "refs/pr/3");
    assert_eq!(hub.path, "sub/");
    assert_eq!(hub.uri_at("refs/pr/3"), "hf://org/m@refs%2Fpr%2F3/sub/");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    assert_eq!(
        parse("datasets/o/d/x.jsonl").uri_at(sha),
        format!("hf://datasets/o/d@{sha}/x.jsonl")
    );
    assert!(is_commit(sha) && !is_commit("main"));
}

#[test]
fn bad_uris_name_what_is_wrong() {
    for (bad, says) in [
        ("hf://gpt2", "organisation"),
        ("hf://org/", "repository name is empty"),
        ("hf:///model", "organisation is empty"),
        ("hf://org/mo del", "repository name"),
        ("hf://org/-model", "repository name"),
        ("hf://o rg/model", "organisation"),
        ("hf://org/model@", "revision"),
        ("hf://org/model@a..b", "revision"),
        ("hf://org/model@v1/../x", "path"),
        ("hf://org/model/a//b", "path"),
        ("hf://spaces/org/app", "Spaces"),
        ("hf://datasets/org", "organisation"),
    ] {
        let err = ArtifactUri::parse(bad).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
        assert!(err.contains(bad), "{bad}: {err}");
    }
}

fn files(entries: &[(&str, &str)]) -> Files {
    entries
        .iter()
        .map(|(p, b)| (p.to_string(), b.as_bytes().to_vec()))
        .collect()
}

/// A Hub with a public model (main and a tag v1 with other weights), a gated one
/// and a dataset.
async fn hub() -> (TestHub, String, String) {
    let hub = TestHub::start().await.unwrap();
    let mut model = TestRepo::new();
    let v1 = model.commit(
        "v1",
        files(&[("config.json", "{\"v\":1}"), ("model.safetensors", "one")]),
    );
    let main = model.commit(
        "main",
        files(&[
            (".gitattributes", "*.safetensors filter=lfs"),
            ("config.json", "{\"v\":2}"),
            ("model.safetensors", "two"),
            ("sub/extra.txt", "x"),
        ]),
    );
    hub.add(RepoKind::Model, "org/tiny", model);
    let mut gated = TestRepo::new();
    gated.commit("main", files(&[("config.json", "{}")]));
    hub.add(RepoKind::Model, "org/gated", gated.gated("hf_secret"));
    let mut data = TestRepo::new();
    data.commit(
        "main",
        files(&[
            ("README.md", "# data"),
            ("data/train.jsonl", "{\"text\":\"a\"}\n"),
            ("data/test.jsonl", "{\"text\":\"b\"}\n"),
        ]),
    );
    hub.add(RepoKind::Dataset, "org/chats", data);
    (hub, v1, main)
}

fn open(hub: &TestHub, uri: &str, token: Option<&str>) -> Store {
    Store::over_hub(uri, &Credentials::Ambient, &hub.endpoint, token).unwrap()
}

#[tokio::test]
async fn a_model_downloads_at_the_commit_its_revision_names() {
    let (hub, v1, main) = hub().await;
    let tmp = tempfile::tempdir().unwrap();
    let store = open(&hub, "hf://org/tiny", None);
    let dir = fetch_model(&store, tmp.path(), None).await.unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        b"two"
    );
    assert!(dir.join("sub/extra.txt").exists());
    assert!(
        !dir.join(".gitattributes").exists(),
        "hidden names are skipped"
    );
    assert_eq!(
        store.pinned_uri().await.unwrap().unwrap(),
        format!("hf://org/tiny@{main}")
    );
    // Every file came from the resolved commit, not from the moving branch.
    let resolves: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.contains("/resolve/"))
        .collect();
    assert!(!resolves.is_empty());
    assert!(
        resolves
            .iter()
            .all(|r| r.starts_with(&format!("/org/tiny/resolve/{main}/"))),
        "{resolves:?}"
    );

    let pinned_tag = tempfile::tempdir().unwrap();
    let store = open(&hub, "hf://org/tiny@v1", None);
    let dir = fetch_model(&store, pinned_tag.path(), None).await.unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        b"one"
    );
    assert!(!dir.join("sub").exists());
    assert_eq!(
        store.pinned_uri().await.unwrap().unwrap(),
        format!("hf://org/tiny@{v1}")
    );
    // The pinned URI reads the same files again.
    let again = tempfile::tempdir().unwrap();
    let store = open(&hub, &format!("hf://org/tiny@{v1}"), None);
    let dir = fetch_model(&store, again.path(), None).await.unwrap();
    assert_eq!(
        std::fs::read(dir.join("config.json")).unwrap(),
        b"{\"v\":1}"
    );
}

#[tokio::test]
async fn a_gated_repo_without_a_token_says_which_secret_key_to_set() {
    let (hub, ..) = hub().await;
    let err = open(&hub, "hf://org/gated", None).list().await.unwrap_err();
    let msg = err.to_string();
    for needed in [
        "hf://org/gated",
        "401",
        "gated",
        "no token",
        "HF_TOKEN",
        "credentialsSecretRef",
    ] {
        assert!(msg.contains(needed), "{needed}: {msg}");
    }
    let named = Store::over_hub(
        "hf://org/gated",
        &Credentials::Secret("hub-creds".into()),
        &hub.endpoint,
        None,
    )
    .unwrap();
    let msg = named.list().await.unwrap_err().to_string();
    assert!(
        msg.contains("key HF_TOKEN of Secret \"hub-creds\""),
        "{msg}"
    );

    let wrong = open(&hub, "hf://org/gated", Some("hf_wrong"));
    let msg = wrong.list().await.unwrap_err().to_string();
    assert!(msg.contains("rejected the token"), "{msg}");
    assert!(!msg.contains("hf_wrong"), "the token is never shown: {msg}");
    assert!(!format!("{wrong:?}").contains("hf_wrong"));

    let right = open(&hub, "hf://org/gated", Some("hf_secret"));
    assert_eq!(right.get_bytes("config.json").await.unwrap(), "{}");
}

#[tokio::test]
async fn missing_revisions_files_and_repos_are_named() {
    let (hub, ..) = hub().await;
    let msg = open(&hub, "hf://org/tiny@v9", None)
        .list()
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("has no revision v9"), "{msg}");
    let msg = open(&hub, "hf://org/tiny/nope.bin", None)
        .list()
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no file or folder \"nope.bin\""), "{msg}");
    let err = open(&hub, "hf://org/tiny", None)
        .get("nope.bin")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let msg = open(&hub, "hf://datasets/org/tiny", Some("hf_secret"))
        .list()
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no dataset repository org/tiny"), "{msg}");
}

#[tokio::test]
async fn dataset_files_and_folders_list_like_prefixes() {
    let (hub, ..) = hub().await;
    let names = |entries: Vec<crate::ObjectEntry>| -> Vec<String> {
        entries.into_iter().map(|e| e.name).collect()
    };
    let file = open(&hub, "hf://datasets/org/chats/data/train.jsonl", None);
    let entries = file.list().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].name.as_str(), entries[0].size), ("", 13));
    assert_eq!(file.get_bytes("").await.unwrap(), "{\"text\":\"a\"}\n");
    for folder in [
        "hf://datasets/org/chats/data",
        "hf://datasets/org/chats@main/data/",
    ] {
        let store = open(&hub, folder, None);
        assert_eq!(
            names(store.list().await.unwrap()),
            ["test.jsonl", "train.jsonl"]
        );
        assert_eq!(
            store.get_bytes("test.jsonl").await.unwrap(),
            "{\"text\":\"b\"}\n"
        );
    }
    let err = file.put_bytes("x", "y".into()).await.unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
    assert!(
        hub.requests()
            .iter()
            .any(|r| r.starts_with("/datasets/org/chats/resolve/")),
        "datasets are read under /datasets/"
    );
}

#[test]
fn a_bad_endpoint_is_refused() {
    let err = Store::over_hub("hf://org/m", &Credentials::Ambient, "ftp://x", None).unwrap_err();
    assert!(err.to_string().contains("HF_ENDPOINT"), "{err}");
}
