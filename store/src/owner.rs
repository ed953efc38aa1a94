//! Ownership of an artifact prefix: the marker its writer leaves, and the check
//! that publishing and deleting pass first.
//!
//! Publishing replaces everything under a prefix and deleting removes it, so a
//! mistyped URI (a bucket root, the prefix holding the sources, another object's
//! artifact) would destroy data that was never the writer's. Each artifact
//! therefore carries a marker naming the object it belongs to, and a prefix is
//! replaced or deleted only when it is empty or its marker names that object.

use std::path::Path;

use bytes::Bytes;

use crate::{Store, StoreError};

/// The marker at the top of an artifact prefix. Hidden (leading dot), so listings
/// of the artifact's files, and its digest, leave it out.
pub const OWNER_FILE: &str = ".llmops-owner.json";

/// How many foreign objects a refusal counts before it stops listing: enough to
/// say what is there without walking a whole bucket.
const COUNT_LIMIT: usize = 10_000;

/// The object an artifact belongs to, as its marker records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Owner {
    /// Recorded for whoever reads the marker; not compared, so a new version of
    /// the API still owns what the old one wrote.
    pub api_version: String,
    pub kind: String,
    /// Empty for a cluster-scoped object, or a local run of a resource without one.
    pub namespace: String,
    pub name: String,
    /// Tells an object from an earlier one of the same name.
    pub uid: String,
}

impl Owner {
    /// Whether `other` names the same object: kind, namespace, name and uid.
    pub fn is(&self, other: &Owner) -> bool {
        self.kind == other.kind
            && self.namespace == other.namespace
            && self.name == other.name
            && self.uid == other.uid
    }

    /// The marker's content.
    pub fn to_json(&self) -> Bytes {
        let mut json = serde_json::to_vec_pretty(self).unwrap_or_default();
        json.push(b'\n');
        json.into()
    }

    fn parse(bytes: &[u8]) -> Result<Owner, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    fn same_name(&self, other: &Owner) -> bool {
        self.kind == other.kind && self.namespace == other.namespace && self.name == other.name
    }
}

impl std::fmt::Display for Owner {
    /// `Dataset ml/chats`, or `Dataset chats` without a namespace.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.kind.is_empty() {
            "object"
        } else {
            &self.kind
        };
        if self.namespace.is_empty() {
            write!(f, "{kind} {}", self.name)
        } else {
            write!(f, "{kind} {}/{}", self.namespace, self.name)
        }
    }
}

impl Store {
    /// Checks that `owner` may replace or delete what is under this URI: nothing
    /// is there, or the marker at its top names `owner` and no marker below it
    /// names anyone else. Otherwise [`StoreError::NotOwned`] says what was found.
    pub async fn check_owner(&self, owner: &Owner) -> Result<(), StoreError> {
        let refuse = |found: String| {
            Err(StoreError::NotOwned {
                field: None,
                uri: self.uri().to_string(),
                found,
            })
        };
        if self.names_an_object().await? {
            return refuse("is a single object or file, not a directory".into());
        }
        let marker = self.marker(OWNER_FILE).await?;
        match &marker {
            Some(Ok(found)) if !found.is(owner) => {
                return refuse(format!("holds {}", other_owner(found, owner)));
            }
            Some(Err(reason)) => {
                return refuse(format!(
                    "holds an ownership marker {OWNER_FILE} that cannot be read ({reason})"
                ));
            }
            _ => {}
        }
        // With our marker every name is needed, to find artifacts nested below;
        // without one, a count is enough to refuse.
        let limit = marker.is_none().then_some(COUNT_LIMIT);
        let (names, more) = self.every_name(limit).await?;
        let nested_suffix = format!("/{OWNER_FILE}");
        for nested in names.iter().filter(|n| n.ends_with(&nested_suffix)) {
            let below = &nested[..nested.len() - OWNER_FILE.len()];
            match self.marker(nested).await? {
                Some(Ok(found)) if found.is(owner) => {}
                Some(Ok(found)) => {
                    return refuse(format!(
                        "holds, under {below}, {}",
                        other_owner(&found, owner)
                    ));
                }
                Some(Err(reason)) => {
                    return refuse(format!(
                        "holds an ownership marker {nested} that cannot be read ({reason})"
                    ));
                }
                None => {}
            }
        }
        if marker.is_none() && !names.is_empty() {
            return refuse(format!(
                "holds {} (first: {}) not written by {owner} (no {OWNER_FILE} marker)",
                count(names.len(), more),
                names[0]
            ));
        }
        Ok(())
    }

    /// Publishes `dir` as the artifact of `owner` (see [`Store::check_owner`]),
    /// replacing the previous one atomically where the store allows and with
    /// `manifest.json` written last, and leaves the marker naming `owner`.
    pub async fn publish_dir(&self, dir: &Path, owner: &Owner) -> Result<(), StoreError> {
        self.check_owner(owner).await?;
        self.publish_dir_with(dir, (OWNER_FILE, owner.to_json()))
            .await
    }

    /// Deletes the artifact of `owner` (see [`Store::check_owner`]): every object
    /// under the prefix, the marker last. Deleting what is gone succeeds.
    pub async fn delete_owned(&self, owner: &Owner) -> Result<(), StoreError> {
        self.check_owner(owner).await?;
        self.delete_all_then(OWNER_FILE).await
    }

    /// Claims a prefix that its owner writes into file by file (a training run's
    /// checkpoints and model exports): leaves the marker naming `owner` when the
    /// prefix is empty, and accepts it when the marker already names `owner`. A
    /// marker naming anyone else is refused ([`StoreError::NotOwned`]). Files
    /// without any marker (written before markers existed) are left unmarked, so
    /// nothing is ever deleted on `owner`'s behalf there. Returns whether the
    /// prefix is marked as `owner`'s.
    pub async fn claim(&self, owner: &Owner) -> Result<bool, StoreError> {
        let refuse = |found: String| {
            Err(StoreError::NotOwned {
                field: None,
                uri: self.uri().to_string(),
                found,
            })
        };
        match self.marker(OWNER_FILE).await? {
            Some(Ok(found)) if found.is(owner) => Ok(true),
            Some(Ok(found)) => refuse(format!("holds {}", other_owner(&found, owner))),
            Some(Err(reason)) => refuse(format!(
                "holds an ownership marker {OWNER_FILE} that cannot be read ({reason})"
            )),
            None => {
                if self.names_an_object().await? {
                    return refuse("is a single object or file, not a directory".into());
                }
                let (names, _) = self.every_name(Some(1)).await?;
                if !names.is_empty() {
                    return Ok(false);
                }
                self.put_bytes(OWNER_FILE, owner.to_json()).await?;
                Ok(true)
            }
        }
    }

    /// Deletes what is under the prefix only if nothing is, which is all a caller
    /// that cannot say whose artifact it is may do.
    pub async fn delete_if_empty(&self) -> Result<(), StoreError> {
        let refuse = |found: String| {
            Err(StoreError::NotOwned {
                field: None,
                uri: self.uri().to_string(),
                found,
            })
        };
        if self.names_an_object().await? {
            return refuse("is a single object or file, not a directory".into());
        }
        let (names, more) = self.every_name(Some(COUNT_LIMIT)).await?;
        if let Some(first) = names.first() {
            return refuse(format!(
                "holds {} (first: {first}) and no owner was given to check its {OWNER_FILE} marker against",
                count(names.len(), more)
            ));
        }
        self.delete_all_then(OWNER_FILE).await
    }

    /// The marker at `rel`: absent, parsed, or why it cannot be parsed.
    async fn marker(&self, rel: &str) -> Result<Option<Result<Owner, String>>, StoreError> {
        match self.get_bytes(rel).await {
            Ok(bytes) => Ok(Some(Owner::parse(&bytes))),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `1 object`, `12 objects`, or `more than 10000 objects` when the count stopped.
fn count(n: usize, more: bool) -> String {
    match (n, more) {
        (_, true) => format!("more than {COUNT_LIMIT} objects"),
        (1, false) => "1 object".into(),
        (n, false) => format!("{n} objects"),
    }
}

/// What a marker naming `found` rather than `owner` means, in words.
fn other_owner(found: &Owner, owner: &Owner) -> String {
    if found.same_name(owner) {
        format!(
            "the artifact of an earlier {found} (uid {}), not of this one (uid {})",
            found.uid, owner.uid
        )
    } else {
        format!("the artifact of {found} (uid {})", found.uid)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    use super::*;
    use crate::{Credentials, MANIFEST_FILE};

    fn owner(namespace: &str, name: &str, uid: &str) -> Owner {
        Owner {
            api_version: "llmops.dev/v1alpha1".into(),
            kind: "Dataset".into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn local(dir: &Path) -> Store {
        Store::open(&format!("file://{}", dir.display()), &Credentials::Ambient).unwrap()
    }

    /// A finished artifact directory to publish.
    fn stage(parent: &Path, content: &str) -> std::path::PathBuf {
        let dir = tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(parent)
            .unwrap()
            .keep();
        std::fs::create_dir_all(dir.join("train")).unwrap();
        std::fs::write(dir.join("train/00000.bin"), content).unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), "{}").unwrap();
        dir
    }

    async fn put(store: &dyn ObjectStore, key: &str, data: &str) {
        store
            .put(&ObjectPath::from(key), PutPayload::from(data.to_string()))
            .await
            .unwrap();
    }

    async fn keys(store: &dyn ObjectStore) -> Vec<String> {
        let mut keys: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(None))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        keys.sort();
        keys
    }

    /// Every file under `dir` with its content.
    fn snapshot(dir: &Path) -> Vec<(String, String)> {
        let mut names = Vec::new();
        crate::store::walk_all_for_tests(dir, &mut names);
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let content = std::fs::read_to_string(dir.join(&n)).unwrap();
                (n, content)
            })
            .collect()
    }

    /// The two object-store backends without a network: in memory, and the local
    /// filesystem through object_store.
    fn object_backends(tmp: &Path) -> Vec<Arc<dyn ObjectStore>> {
        let tmp = tmp.join("objects");
        std::fs::create_dir_all(&tmp).unwrap();
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&tmp).unwrap();
        vec![Arc::new(InMemory::new()), Arc::new(fs)]
    }

    #[tokio::test]
    async fn a_training_output_is_claimed_when_empty_or_ours_and_refused_when_anothers() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("pt");
        let mut job = owner("ml", "base", "u1");
        job.kind = "PretrainJob".into();
        let store = local(&out);
        assert!(
            store.claim(&job).await.unwrap(),
            "an empty prefix is claimed"
        );
        std::fs::create_dir_all(out.join("checkpoints/step-5")).unwrap();
        std::fs::write(out.join("checkpoints/step-5/w"), "w").unwrap();
        assert!(
            store.claim(&job).await.unwrap(),
            "a restart keeps its claim"
        );
        // And its deletion removes everything, the marker last.
        store.delete_owned(&job).await.unwrap();
        assert!(!out.join(OWNER_FILE).exists() && !out.join("checkpoints").exists());

        assert!(store.claim(&job).await.unwrap());
        let other = owner("ml", "base", "u2");
        let err = store
            .claim(&Owner {
                kind: "PretrainJob".into(),
                ..other
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotOwned { .. }), "{err}");

        // Files from before markers existed: used, but never marked (so never
        // deleted on the job's behalf).
        let legacy = tmp.path().join("legacy");
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join("config.json"), "{}").unwrap();
        assert!(!local(&legacy).claim(&job).await.unwrap());
        assert!(!legacy.join(OWNER_FILE).exists());
    }

    #[tokio::test]
    async fn a_publish_over_a_foreign_local_prefix_is_refused_and_leaves_it_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("corpus");
        std::fs::create_dir_all(target.join("raw")).unwrap();
        std::fs::write(target.join("raw/a.jsonl"), "{\"text\": \"a\"}").unwrap();
        std::fs::write(target.join("b.txt"), "b").unwrap();
        std::fs::write(target.join(".hidden"), "c").unwrap();
        let before = snapshot(&target);
        let staged = stage(tmp.path(), "new");
        let err = local(&target)
            .publish_dir(&staged, &owner("ml", "chats", "u1"))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::NotOwned { .. }), "{msg}");
        assert!(
            msg.contains("holds 3 objects (first: .hidden) not written by Dataset ml/chats"),
            "{msg}"
        );
        assert_eq!(snapshot(&target), before);
    }

    #[tokio::test]
    async fn a_publish_over_a_foreign_object_prefix_is_refused_and_leaves_it_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        for backend in object_backends(tmp.path()) {
            put(&*backend, "data/raw/a.jsonl", "a").await;
            put(&*backend, "data/manifest.json", "{}").await;
            let before = keys(&*backend).await;
            let store = Store::over("s3://bucket/data", backend.clone(), "data");
            let staged = stage(tmp.path(), "new");
            let err = store
                .publish_dir(&staged, &owner("ml", "chats", "u1"))
                .await
                .unwrap_err()
                .for_field("spec.output.uri")
                .to_string();
            assert!(
                err.starts_with(
                    "spec.output.uri: s3://bucket/data holds 2 objects (first: manifest.json) not written by Dataset ml/chats"
                ),
                "{err}"
            );
            assert_eq!(keys(&*backend).await, before);
        }
    }

    #[tokio::test]
    async fn a_bucket_root_holding_anything_is_refused() {
        let backend: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        put(&*backend, "sources/a.txt", "a").await;
        let store = Store::over("s3://bucket", backend.clone(), "");
        let who = owner("ml", "chats", "u1");
        let err = store.delete_owned(&who).await.unwrap_err().to_string();
        assert!(
            err.contains("holds 1 object (first: sources/a.txt)"),
            "{err}"
        );
        let err = store
            .publish_dir(&stage(&std::env::temp_dir(), "x"), &who)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotOwned { .. }), "{err}");
        assert_eq!(keys(&*backend).await, ["sources/a.txt"]);
    }

    #[tokio::test]
    async fn republishing_by_the_same_owner_replaces_the_artifact() {
        let tmp = tempfile::tempdir().unwrap();
        let who = owner("ml", "chats", "u1");
        // Locally.
        let target = tmp.path().join("out/chats");
        let store = local(&target);
        for content in ["one", "two"] {
            store
                .publish_dir(&stage(tmp.path(), content), &who)
                .await
                .unwrap();
        }
        assert_eq!(store.get_bytes("train/00000.bin").await.unwrap(), "two");
        let marker: Owner =
            serde_json::from_slice(&std::fs::read(target.join(OWNER_FILE)).unwrap()).unwrap();
        assert_eq!(marker, who);
        let listed: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(listed, [MANIFEST_FILE, "train/00000.bin"], "marker hidden");
        // In object stores, where stale files of the previous artifact go too.
        for backend in object_backends(tmp.path()) {
            let store = Store::over("s3://bucket/ds", backend.clone(), "ds");
            let first = stage(tmp.path(), "one");
            std::fs::write(first.join("train/00001.bin"), "stale").unwrap();
            store.publish_dir(&first, &who).await.unwrap();
            store
                .publish_dir(&stage(tmp.path(), "two"), &who)
                .await
                .unwrap();
            let mut found = keys(&*backend).await;
            found.retain(|k| k.starts_with("ds/"));
            assert_eq!(
                found,
                [
                    "ds/.llmops-owner.json",
                    "ds/manifest.json",
                    "ds/train/00000.bin"
                ]
            );
            assert_eq!(store.get_bytes("train/00000.bin").await.unwrap(), "two");
        }
    }

    #[tokio::test]
    async fn another_owners_marker_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("shared");
        let store = local(&target);
        store
            .publish_dir(&stage(tmp.path(), "theirs"), &owner("team-b", "web", "u9"))
            .await
            .unwrap();
        let before = snapshot(&target);
        let err = store
            .publish_dir(&stage(tmp.path(), "ours"), &owner("ml", "chats", "u1"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holds the artifact of Dataset team-b/web (uid u9)"),
            "{err}"
        );
        let err = store
            .delete_owned(&owner("ml", "chats", "u1"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("Dataset team-b/web"), "{err}");
        // A Dataset recreated under the same name is another object.
        let err = store
            .delete_owned(&owner("team-b", "web", "u10"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "the artifact of an earlier Dataset team-b/web (uid u9), not of this one (uid u10)"
            ),
            "{err}"
        );
        assert_eq!(snapshot(&target), before);
    }

    #[tokio::test]
    async fn an_artifact_nested_below_another_owner_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outer = tmp.path().join("data");
        let ours = owner("ml", "outer", "u1");
        local(&outer)
            .publish_dir(&stage(tmp.path(), "outer"), &ours)
            .await
            .unwrap();
        local(&outer.join("sub"))
            .publish_dir(&stage(tmp.path(), "inner"), &owner("ml", "inner", "u2"))
            .await
            .unwrap();
        let before = snapshot(&outer);
        let err = local(&outer)
            .delete_owned(&ours)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holds, under sub/, the artifact of Dataset ml/inner (uid u2)"),
            "{err}"
        );
        assert_eq!(snapshot(&outer), before);
    }

    #[tokio::test]
    async fn a_clean_of_a_foreign_prefix_keeps_every_object() {
        let tmp = tempfile::tempdir().unwrap();
        let who = owner("ml", "chats", "u1");
        let target = tmp.path().join("sources");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("a.txt"), "a").unwrap();
        let err = local(&target).delete_owned(&who).await.unwrap_err();
        assert!(matches!(err, StoreError::NotOwned { .. }), "{err}");
        assert_eq!(snapshot(&target), [("a.txt".into(), "a".into())]);
        for backend in object_backends(tmp.path()) {
            put(&*backend, "data/a.txt", "a").await;
            put(&*backend, "data/nested/b.txt", "b").await;
            let before = keys(&*backend).await;
            let store = Store::over("s3://bucket/data", backend.clone(), "data");
            let err = store.delete_owned(&who).await.unwrap_err();
            assert!(matches!(err, StoreError::NotOwned { .. }), "{err}");
            let err = store.delete_if_empty().await.unwrap_err();
            assert!(matches!(err, StoreError::NotOwned { .. }), "{err}");
            assert_eq!(keys(&*backend).await, before);
        }
    }

    #[tokio::test]
    async fn a_clean_deletes_its_own_artifact_and_nothing_beside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let who = owner("ml", "chats", "u1");
        for backend in object_backends(tmp.path()) {
            // Neighbours whose names start like the prefix, and an object at the
            // prefix's own name, are not under it.
            put(&*backend, "data-2/keep.bin", "k").await;
            put(&*backend, "datax", "k").await;
            put(&*backend, "other/data/keep.bin", "k").await;
            let store = Store::over("s3://bucket/data", backend.clone(), "data");
            store
                .publish_dir(&stage(tmp.path(), "ours"), &who)
                .await
                .unwrap();
            store.delete_owned(&who).await.unwrap();
            assert_eq!(
                keys(&*backend).await,
                ["data-2/keep.bin", "datax", "other/data/keep.bin"]
            );
            // Gone already: succeeds.
            store.delete_owned(&who).await.unwrap();
            store.delete_if_empty().await.unwrap();
            // The unchecked deletion is bounded by segments too.
            put(&*backend, "data/x", "x").await;
            store.delete_all().await.unwrap();
            assert_eq!(
                keys(&*backend).await,
                ["data-2/keep.bin", "datax", "other/data/keep.bin"]
            );
        }
        let target = tmp.path().join("local/data");
        std::fs::create_dir_all(tmp.path().join("local/data-2")).unwrap();
        std::fs::write(tmp.path().join("local/data-2/keep.bin"), "k").unwrap();
        local(&target)
            .publish_dir(&stage(tmp.path(), "ours"), &who)
            .await
            .unwrap();
        local(&target).delete_owned(&who).await.unwrap();
        assert!(!target.exists());
        assert_eq!(
            snapshot(&tmp.path().join("local")),
            [("data-2/keep.bin".into(), "k".into())]
        );
    }

    #[tokio::test]
    async fn an_object_at_the_prefix_itself_is_refused() {
        let backend: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        put(&*backend, "data", "a file, not a prefix").await;
        let store = Store::over("s3://bucket/data", backend.clone(), "data");
        let err = store
            .delete_owned(&owner("ml", "chats", "u1"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a single object or file"), "{err}");
        assert_eq!(keys(&*backend).await, ["data"]);
    }

    #[test]
    fn the_marker_round_trips_and_compares_identity_not_api_version() {
        let who = owner("ml", "chats", "u1");
        let json = who.to_json();
        let text = std::str::from_utf8(&json).unwrap();
        for key in ["apiVersion", "kind", "namespace", "name", "uid"] {
            assert!(text.contains(&format!("\"{key}\"")), "{text}");
        }
        let parsed = Owner::parse(&json).unwrap();
        assert_eq!(parsed, who);
        let newer = Owner {
            api_version: "llmops.dev/v1".into(),
            ..who.clone()
        };
        assert!(newer.is(&who));
        assert!(!owner("ml", "chats", "u2").is(&who));
        assert!(!owner("other", "chats", "u1").is(&who));
    }
}
