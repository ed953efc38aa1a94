use llmops_store::StoreError;

use super::sources::limits::human_bytes;
use crate::train::Permanence;

/// Why `trainer prepare` failed. Each message names the input at fault and what
/// to change; it becomes the Dataset's Stalled condition message.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{source_name}: line {line}: {reason}")]
    MalformedRecord {
        source_name: String,
        line: u64,
        reason: String,
    },
    #[error("{source_name}: {reason}")]
    UnreadableSource { source_name: String, reason: String },
    /// A source went past one of the limits of `sources::limits`.
    #[error("{source_name}: {limit}")]
    TooLarge {
        source_name: String,
        limit: LimitExceeded,
    },
    /// A source the trainer will not read from: an address it refuses, too many
    /// redirects, a redirect to another scheme.
    #[error("{source_name}: {reason}")]
    RefusedSource { source_name: String, reason: String },
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error(
        "nothing left after filtering: {documents_in} documents read, {filtered} filtered by length, {duplicates} duplicates; relax preprocessing.filters or check the sources"
    )]
    NothingLeft {
        documents_in: i64,
        filtered: i64,
        duplicates: i64,
    },
    #[error("the train split is empty; lower split.validation/split.test or add documents")]
    EmptyTrainSplit,
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

impl PrepareError {
    pub(crate) fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let op = op.into();
        move |source| Self::Io { op, source }
    }

    /// Recovers a store error carried through a synchronous reader (checksum
    /// mismatches surface at the end of the stream as I/O errors), or describes the
    /// I/O error as a problem of `source_name`.
    pub(crate) fn from_read(source_name: &str, err: std::io::Error) -> Self {
        let reason = err.to_string();
        let Some(inner) = err.into_inner() else {
            return Self::UnreadableSource {
                source_name: source_name.to_string(),
                reason,
            };
        };
        let inner = match inner.downcast::<StoreError>() {
            Ok(store) => return Self::Store(*store),
            Err(other) => other,
        };
        if let Ok(limit) = inner.downcast::<LimitExceeded>() {
            return Self::TooLarge {
                source_name: source_name.to_string(),
                limit: *limit,
            };
        }
        Self::UnreadableSource {
            source_name: source_name.to_string(),
            reason,
        }
    }
}

impl Permanence for PrepareError {
    /// The spec or the data must change before another run can succeed; a
    /// store that cannot be reached, an I/O failure or a tokenizer that cannot
    /// be loaded may succeed on a retry.
    fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidSpec(_)
            | Self::MalformedRecord { .. }
            | Self::TooLarge { .. }
            | Self::RefusedSource { .. }
            | Self::NothingLeft { .. }
            | Self::EmptyTrainSplit => true,
            // The Hub's refusals (no or a rejected token, a missing revision)
            // need a changed spec or Secret, like missing credentials.
            Self::Store(e) => matches!(
                e,
                StoreError::InvalidUri { .. }
                    | StoreError::MissingCredentials { .. }
                    | StoreError::Hub { .. }
            ),
            Self::UnreadableSource { .. } | Self::Tokenizer(_) | Self::Io { .. } => false,
        }
    }
}

/// Which limit a source went past, where, and what to change. Readers below
/// the parsers report it as an `io::Error` carrying this value, so that it
/// reaches [`PrepareError::from_read`] intact through decompression and CSV.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}{what} the limit of {}; {fix}",
    line.map(|l| format!("line {l}: ")).unwrap_or_default(),
    human_bytes(*limit)
)]
pub struct LimitExceeded {
    /// What went past the limit, worded to precede "the limit of ...".
    pub what: &'static str,
    /// The limit, in bytes.
    pub limit: u64,
    /// What to change: the data, or the variable that raises the limit.
    pub fix: String,
    /// The line (1-based, after decompression) being read when it happened;
    /// `None` when it was known before reading (a download's declared length).
    pub line: Option<u64>,
}

impl LimitExceeded {
    pub(crate) fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }

    /// Finds a `LimitExceeded` carried by `err`.
    pub(crate) fn in_io(err: &std::io::Error) -> Option<&LimitExceeded> {
        err.get_ref()
            .and_then(|e| e.downcast_ref::<LimitExceeded>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_survive_readers_and_name_source_line_and_fix() {
        let limit = LimitExceeded {
            what: "line is longer than",
            limit: 16 << 20,
            fix: "split the record or raise LLMOPS_LINE_MAX_BYTES".into(),
            line: Some(7),
        };
        let err = PrepareError::from_read("source 1 (x.jsonl)", limit.into_io());
        assert_eq!(
            err.to_string(),
            "source 1 (x.jsonl): line 7: line is longer than the limit of 16 MiB; split the record or raise LLMOPS_LINE_MAX_BYTES"
        );
        assert!(err.is_permanent());
        let other = PrepareError::from_read("s", std::io::Error::other("reset"));
        assert!(matches!(other, PrepareError::UnreadableSource { .. }));
        assert!(!other.is_permanent());
    }
}
