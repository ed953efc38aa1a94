//! Parsing of the URIs artifacts and sources live at.

use std::path::PathBuf;

use llmops_contract::{env, path};

use crate::StoreError;
use crate::hub::HubRef;

/// Where `pvc://<claim>/<path>` is found when `LLMOPS_PVC_ROOT` is not set: the
/// operator mounts each claim at `/mnt/pvc/<claim>`.
pub const DEFAULT_PVC_ROOT: &str = path::PVC_ROOT;

/// A parsed artifact or source location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactUri {
    /// `s3://`, `gs://` or `az://` (also `abfs://`-style Azure URLs object_store knows).
    Object { url: url::Url },
    /// A local path: `file://` or a mounted `pvc://`.
    Local { path: PathBuf },
    /// A read-only `http(s)://` URL.
    Http { url: url::Url },
    /// A read-only file or folder of a Hugging Face Hub repository:
    /// `hf://[datasets/]<org>/<name>[@<revision>][/<path>]` ([`crate::hub`]).
    Hub(HubRef),
}

impl ArtifactUri {
    /// Parses `uri`, mapping `pvc://` below `LLMOPS_PVC_ROOT` (default `/mnt/pvc`).
    pub fn parse(uri: &str) -> Result<Self, StoreError> {
        let pvc_root = std::env::var(env::PVC_ROOT).unwrap_or_else(|_| DEFAULT_PVC_ROOT.into());
        Self::parse_with_pvc_root(uri, &pvc_root)
    }

    /// Parses `uri` with an explicit mount root for `pvc://` claims.
    pub fn parse_with_pvc_root(uri: &str, pvc_root: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| invalid("expected <scheme>://..."))?;
        match scheme {
            "s3" | "gs" | "az" => {
                let url = url::Url::parse(uri).map_err(|e| invalid(&e.to_string()))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("missing bucket"));
                }
                Ok(Self::Object { url })
            }
            "http" | "https" => {
                let url = url::Url::parse(uri).map_err(|e| invalid(&e.to_string()))?;
                Ok(Self::Http { url })
            }
            "file" => {
                // `file:///abs` and `file://./rel` are both accepted; the latter keeps
                // local runs short (`file://./out/name`).
                if rest.is_empty() {
                    return Err(invalid("missing path"));
                }
                Ok(Self::Local {
                    path: PathBuf::from(rest),
                })
            }
            "pvc" => {
                let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
                if claim.is_empty() {
                    return Err(invalid("expected pvc://<claim>/<path>"));
                }
                if path.split('/').any(|c| c == "..") {
                    return Err(invalid("path must not contain '..'"));
                }
                let mut local = PathBuf::from(pvc_root);
                local.push(claim);
                local.extend(path.split('/').filter(|c| !c.is_empty()));
                Ok(Self::Local { path: local })
            }
            "hf" => HubRef::parse(rest).map(Self::Hub).map_err(|r| invalid(&r)),
            other => Err(invalid(&format!(
                "unsupported scheme {other:?}; use s3, gs, az, file, pvc, http, https or hf"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        let local = |p: &str| ArtifactUri::Local { path: p.into() };
        assert_eq!(
            ArtifactUri::parse_with_pvc_root("file:///data/x", "/r").unwrap(),
            local("/data/x")
        );
        assert_eq!(
            ArtifactUri::parse_with_pvc_root("file://./out/a", "/r").unwrap(),
            local("./out/a")
        );
        assert_eq!(
            ArtifactUri::parse_with_pvc_root("pvc://claim/dir/f.txt", "/r").unwrap(),
            local("/r/claim/dir/f.txt")
        );
        assert_eq!(
            ArtifactUri::parse_with_pvc_root("pvc://claim", "/r").unwrap(),
            local("/r/claim")
        );
        assert!(matches!(
            ArtifactUri::parse_with_pvc_root("s3://bucket/key/", "/r").unwrap(),
            ArtifactUri::Object { .. }
        ));
        assert!(matches!(
            ArtifactUri::parse_with_pvc_root("https://example.org/a.gz", "/r").unwrap(),
            ArtifactUri::Http { .. }
        ));
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "nope",
            "ftp://x/y",
            "s3:///key",
            "pvc:///x",
            "pvc://c/../etc",
            "file://",
        ] {
            assert!(
                ArtifactUri::parse_with_pvc_root(bad, "/r").is_err(),
                "{bad}"
            );
        }
    }
}
