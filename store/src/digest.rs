//! Artifact digests: `sha256:<hex>` over the sorted list of `(path, sha256 of
//! file)` for every file of the artifact except `manifest.json` (which carries the
//! digest). Lines are `<hex>  <path>\n`, the `sha256sum` format, so a digest can
//! be checked by hand with `sha256sum`.

use std::io::Read;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::{MANIFEST_FILE, StoreError};

/// One file of an artifact and its content hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileDigest {
    /// Path relative to the artifact root, `/`-separated.
    pub path: String,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
}

/// The digest of an artifact made of `files`, in any order.
pub fn artifact_digest(files: &[FileDigest]) -> String {
    let mut sorted: Vec<&FileDigest> = files.iter().filter(|f| f.path != MANIFEST_FILE).collect();
    sorted.sort();
    let mut hasher = Sha256::new();
    for f in sorted {
        hasher.update(f.sha256.as_bytes());
        hasher.update(b"  ");
        hasher.update(f.path.as_bytes());
        hasher.update(b"\n");
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Hex sha256 of a local file, read in blocks.
pub fn sha256_file(path: &Path) -> Result<String, StoreError> {
    let mut file = std::fs::File::open(path).map_err(StoreError::io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(StoreError::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Digests of every file under a local directory, sorted by relative path,
/// `manifest.json` excluded.
pub fn digest_dir(dir: &Path) -> Result<Vec<FileDigest>, StoreError> {
    let mut out = Vec::new();
    for rel in crate::store::local_files(dir)? {
        if rel == MANIFEST_FILE {
            continue;
        }
        let sha256 = sha256_file(&dir.join(&rel))?;
        out.push(FileDigest { path: rel, sha256 });
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_order_and_manifest() {
        let a = FileDigest {
            path: "a.bin".into(),
            sha256: "00".into(),
        };
        let b = FileDigest {
            path: "b.bin".into(),
            sha256: "11".into(),
        };
        let m = FileDigest {
            path: MANIFEST_FILE.into(),
            sha256: "22".into(),
        };
        let d1 = artifact_digest(&[a.clone(), b.clone()]);
        assert_eq!(d1, artifact_digest(&[b.clone(), m, a.clone()]));
        assert!(d1.starts_with("sha256:") && d1.len() == 7 + 64);
        let changed = FileDigest {
            path: "b.bin".into(),
            sha256: "12".into(),
        };
        assert_ne!(d1, artifact_digest(&[a, changed]));
    }

    #[test]
    fn dir_digest_matches_sha256sum_format() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), b"hello").unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{}").unwrap();
        let files = digest_dir(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "sub/x");
        assert_eq!(
            files[0].sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
