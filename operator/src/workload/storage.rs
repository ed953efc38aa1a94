//! `pvc://<claim>/<path>` URIs: the claim is mounted at `/mnt/pvc/<claim>`, so the
//! program finds `<path>` at `/mnt/pvc/<claim>/<path>` (the root is also passed as
//! `LLMOPS_PVC_ROOT`). A claim that anything writes to is mounted read-write once;
//! claims only read from are mounted read-only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume, VolumeMount};
use llmops_contract::path::PVC_ROOT;

/// The claim of a `pvc://` URI; `None` for other schemes or an empty claim.
pub fn pvc_claim(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("pvc://")?;
    let claim = rest.split('/').next().unwrap_or_default();
    (!claim.is_empty()).then_some(claim)
}

/// The claims a pod needs, each with whether it must be writable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PvcMounts {
    writable: BTreeMap<String, bool>,
}

impl PvcMounts {
    /// Mount `claim` for reading (unless something already writes to it).
    pub fn read(&mut self, claim: &str) {
        self.writable.entry(claim.to_string()).or_insert(false);
    }

    /// Mount `claim` read-write.
    pub fn write(&mut self, claim: &str) {
        self.writable.insert(claim.to_string(), true);
    }

    /// Volumes `pvc-<n>` (claim names may be longer than a volume name allows) and
    /// their mounts, in claim-name order.
    pub fn volumes_and_mounts(&self) -> (Vec<Volume>, Vec<VolumeMount>) {
        self.writable
            .iter()
            .enumerate()
            .map(|(n, (claim, writable))| {
                let name = format!("pvc-{n}");
                let volume = Volume {
                    name: name.clone(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.clone(),
                        read_only: Some(!writable),
                    }),
                    ..Volume::default()
                };
                let mount = VolumeMount {
                    name,
                    mount_path: format!("{PVC_ROOT}/{claim}"),
                    read_only: Some(!writable),
                    ..VolumeMount::default()
                };
                (volume, mount)
            })
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_claim_of_pvc_uris_only() {
        assert_eq!(pvc_claim("pvc://corpus/raw/2026"), Some("corpus"));
        assert_eq!(pvc_claim("pvc://corpus"), Some("corpus"));
        assert_eq!(pvc_claim("pvc:///x"), None);
        assert_eq!(pvc_claim("s3://bucket/x"), None);
    }

    #[test]
    fn a_claim_both_read_and_written_is_mounted_once_read_write() {
        let mut mounts = PvcMounts::default();
        mounts.read("shared");
        mounts.write("shared");
        mounts.read("shared");
        mounts.read("corpus");
        let (volumes, mounts) = mounts.volumes_and_mounts();
        assert_eq!(volumes.len(), 2);
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "corpus"
        );
        assert_eq!(mounts[0].mount_path, "/mnt/pvc/corpus");
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[1].mount_path, "/mnt/pvc/shared");
        assert_eq!(mounts[1].read_only, Some(false));
        assert_eq!(
            volumes[1]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .read_only,
            Some(false)
        );
    }
}
