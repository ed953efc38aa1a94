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
    /// The Hugging Face Hub refused or could not serve a repository, revision
    /// or file; the reason says what to change (a token, the revision).
    #[error("{uri}: {reason}")]
    Hub { uri: String, reason: String },
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
    /// Not a model the reader can trust: no manifest where one is needed, a
    /// manifest that does not add up, or another model than the one expected.
    #[error("the model at {uri} cannot be used: {reason}")]
    InvalidModel { uri: String, reason: String },
    #[error("{uri} is read-only; write artifacts to s3://, gs://, az://, file:// or pvc://")]
    ReadOnly { uri: String },
    /// The prefix holds something its would-be writer did not write; nothing
    /// under it was replaced or deleted.
    #[error("{}", not_owned(field.as_deref(), uri, found))]
    NotOwned {
        /// The field of the resource that holds `uri`, when the caller named it.
        field: Option<String>,
        uri: String,
        /// What is there, as a clause (`holds 12 objects ... not written by ...`).
        found: String,
    },
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

fn not_owned(field: Option<&str>, uri: &str, found: &str) -> String {
    let field_prefix = field.map(|f| format!("{f}: ")).unwrap_or_default();
    let field = field.unwrap_or("the URI");
    format!(
        "{field_prefix}{uri} {found}; nothing under it was replaced or deleted: point {field} at an empty prefix, or remove what is there by hand if it is no longer needed"
    )
}

impl StoreError {
    /// Names the resource field that holds the URI in a [`StoreError::NotOwned`],
    /// so the message says what to change.
    pub fn for_field(self, field: &str) -> Self {
        match self {
            Self::NotOwned { uri, found, .. } => Self::NotOwned {
                field: Some(field.to_string()),
                uri,
                found,
            },
            other => other,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}
