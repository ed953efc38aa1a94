use crate::artifact::ArtifactError;
use crate::train::checkpoint::CheckpointError;
use crate::train::distributed::CollectiveError;

/// Why `trainer pretrain` cannot run or finish; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error(
        "no dataset: pass --dataset or run through the operator, which records status.dataset.uri"
    )]
    NoDataset,
    #[error("cannot read the dataset at {uri}: {source}")]
    Dataset {
        uri: String,
        #[source]
        source: Box<ArtifactError>,
    },
    #[error("dataset at {uri} has digest {actual}, but the job records {expected}")]
    DatasetDigest {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("the dataset does not fit the model: {0}")]
    Incompatible(String),
    #[error(
        "checkpoint {path} does not belong to this run ({reason}); remove it or use another output"
    )]
    ForeignCheckpoint { path: String, reason: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    #[error(transparent)]
    Mirror(#[from] crate::train::mirror::MirrorError),
    #[error("model: {0}")]
    Model(#[from] llmops_model::Error),
    #[error("libtorch: {0}")]
    Torch(String),
    #[error(transparent)]
    Store(Box<llmops_store::StoreError>),
    #[error("cannot {op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "training diverged at step {step}: the loss is {loss}; lower learningRate or raise warmupSteps"
    )]
    Diverged { step: i64, loss: f64 },
}

impl PretrainError {
    /// Errors that a restart cannot fix: the spec, the data or the output must
    /// change first. The process exits with [`llmops_contract::exit::INVALID`] for these, and the
    /// operator's pod failure policy fails the Job at once instead of retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::InvalidSpec(_)
                | Self::NoDataset
                | Self::DatasetDigest { .. }
                | Self::Incompatible(_)
                | Self::ForeignCheckpoint { .. }
                | Self::Diverged { .. }
        )
    }

    pub(crate) fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let op = op.into();
        move |source| Self::Io { op, source }
    }
}

impl From<llmops_store::StoreError> for PretrainError {
    fn from(e: llmops_store::StoreError) -> Self {
        Self::Store(Box::new(e))
    }
}

impl PretrainError {
    pub(crate) fn dataset(uri: impl Into<String>) -> impl FnOnce(ArtifactError) -> Self {
        let uri = uri.into();
        move |source| Self::Dataset {
            uri,
            source: Box::new(source),
        }
    }
}

impl From<tch::TchError> for PretrainError {
    /// Keeps libtorch's message and drops the C++ stack trace it appends, so the
    /// failure stays one readable line.
    fn from(e: tch::TchError) -> Self {
        let text = e.to_string();
        let message = text.split(" Exception raised from").next().unwrap_or(&text);
        Self::Torch(message.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_and_data_errors_are_permanent_and_io_is_not() {
        assert!(PretrainError::InvalidSpec("x".into()).is_permanent());
        assert!(
            PretrainError::Diverged {
                step: 3,
                loss: f64::NAN
            }
            .is_permanent()
        );
        let io = PretrainError::Io {
            op: "write".into(),
            source: std::io::Error::other("disk"),
        };
        assert!(!io.is_permanent());
    }
}
