use std::path::PathBuf;

/// Why a store operation failed; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error(
        "missing credentials for {uri}: set {missing} in Secret {secret:?} (keys reach the pod as {prefix}<KEY>)"
    )]
    MissingCredentials {
        uri: String,
        secret: String,
        prefix: String,
        missing: String,
    },
    #[error("cannot reach {uri}: {reason}; check the URL and network access")]
    Unreachable { uri: String, reason: String },
    #[error("{uri} not found")]
    NotFound { uri: String },
    #[error(
        "checksum mismatch for {uri}: expected sha256 {expected}, got {actual}; fix the sha256 or the file"
    )]
    ChecksumMismatch {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("{uri} is read-only; write artifacts to s3://, gs://, az://, file:// or pvc://")]
    ReadOnly { uri: String },
    #[error("{op} {uri}: {source}")]
    ObjectStore {
        op: &'static str,
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}
