//! ConfigMap volumes kept current while a replayed container runs, as the
//! kubelet keeps them: every [`PERIOD`] each ConfigMap volume mounted as a
//! directory is read again and each changed key rewritten atomically (a new
//! file renamed over the old, so a reader never sees half of one); keys that
//! are gone are removed. A volume mounted with `subPath` anywhere is left as
//! it was, as the kubelet leaves it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath};
use kube::Client;
use kube::api::Api;

/// How often the volumes are read again (the kubelet's sync is a minute or
/// so; a test wants seconds).
pub const PERIOD: Duration = Duration::from_secs(2);

/// One ConfigMap volume: the ConfigMap, its `items`, and its directory.
#[derive(Clone, Debug)]
pub struct Synced {
    pub config_map: String,
    pub items: Option<Vec<KeyToPath>>,
    pub dir: PathBuf,
}

/// Refreshes `volumes` until the returned task is aborted (see
/// [`SyncTask`]).
pub fn spawn(client: Client, namespace: String, volumes: Vec<Synced>) -> Option<SyncTask> {
    if volumes.is_empty() {
        return None;
    }
    let maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
    Some(SyncTask(tokio::spawn(async move {
        loop {
            tokio::time::sleep(PERIOD).await;
            for volume in &volumes {
                // A ConfigMap that cannot be read now is tried again next time;
                // one that is gone leaves its files, as the kubelet does.
                if let Ok(Some(cm)) = maps.get_opt(&volume.config_map).await {
                    let data = cm.data.unwrap_or_default();
                    if let Err(e) = refresh(volume, &data) {
                        eprintln!("local-node: refreshing {}: {e:#}", volume.dir.display());
                    }
                }
            }
        }
    })))
}

/// Rewrites the files of `volume` whose content differs from `data`.
fn refresh(volume: &Synced, data: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let files: BTreeMap<String, &String> = match &volume.items {
        Some(items) => items
            .iter()
            .filter_map(|item| data.get(&item.key).map(|v| (item.path.clone(), v)))
            .collect(),
        None => data.iter().map(|(k, v)| (k.clone(), v)).collect(),
    };
    for (path, content) in &files {
        let file = volume.dir.join(path);
        if std::fs::read_to_string(&file).ok().as_ref() == Some(*content) {
            continue;
        }
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let staged = file.with_extension("local-node-new");
        std::fs::write(&staged, content)?;
        std::fs::rename(&staged, &file)?;
    }
    if volume.items.is_none() {
        for entry in std::fs::read_dir(&volume.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_file() && !files.contains_key(&name) {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

/// The refreshing task; aborted when dropped.
#[derive(Debug)]
pub struct SyncTask(tokio::task::JoinHandle<()>);

impl Drop for SyncTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_rewritten_and_gone_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let volume = Synced {
            config_map: "cm".into(),
            items: None,
            dir: dir.path().to_path_buf(),
        };
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        refresh(&volume, &data(&[("a.json", "1"), ("b", "x")])).unwrap();
        refresh(&volume, &data(&[("a.json", "2")])).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.json")).unwrap(),
            "2"
        );
        assert!(!dir.path().join("b").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"], "no staged file is left behind");
    }
}
