use llmops_store::StoreError;

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
        if let Some(Ok(store)) = err.into_inner().map(|e| e.downcast::<StoreError>()) {
            return Self::Store(*store);
        }
        Self::UnreadableSource {
            source_name: source_name.to_string(),
            reason,
        }
    }
}
