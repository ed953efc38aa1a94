//! Why a training session cannot run or finish, and which failures a restart
//! cannot fix.

use crate::artifact::ArtifactError;
use crate::train::checkpoint::CheckpointError;
use crate::train::distributed::CollectiveError;

/// A failure of a training command, as its exit code sees it.
pub trait Permanence {
    /// Errors that a restart cannot fix: the spec, the data or the output must
    /// change first. The process exits with [`llmops_contract::exit::INVALID`]
    /// for these, and the operator's pod failure policy fails the Job at once
    /// instead of retrying.
    fn is_permanent(&self) -> bool;
}

/// Why the session shared by `trainer pretrain` and `trainer finetune` (dataset,
/// data-parallel group, loop, checkpoints, export) cannot run or finish. Its
/// messages name only what both resources share (`spec.training`); the
/// commands' own errors name their resource's fields.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
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

impl Permanence for TrainError {
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::InvalidSpec(_)
                | Self::DatasetDigest { .. }
                | Self::Incompatible(_)
                | Self::ForeignCheckpoint { .. }
                | Self::Diverged { .. }
        ) || matches!(
            self,
            // Another object's output, a model that is not the one recorded, or
            // the Hub's refusal (no or a rejected token, a missing revision): no
            // retry changes any of them.
            Self::Store(e) if matches!(
                **e,
                llmops_store::StoreError::NotOwned { .. }
                    | llmops_store::StoreError::InvalidModel { .. }
                    | llmops_store::StoreError::Hub { .. }
            )
        )
    }
}

impl TrainError {
    pub(crate) fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let op = op.into();
        move |source| Self::Io { op, source }
    }

    pub(crate) fn dataset(uri: impl Into<String>) -> impl FnOnce(ArtifactError) -> Self {
        let uri = uri.into();
        move |source| Self::Dataset {
            uri,
            source: Box::new(source),
        }
    }

    /// A blocking task that panicked or was cancelled while it would `op`.
    pub(crate) fn task(op: &str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        let op = op.to_string();
        move |e| Self::Io {
            op,
            source: std::io::Error::other(e),
        }
    }
}

impl From<llmops_store::StoreError> for TrainError {
    fn from(e: llmops_store::StoreError) -> Self {
        Self::Store(Box::new(e))
    }
}

impl From<tch::TchError> for TrainError {
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
        assert!(TrainError::InvalidSpec("x".into()).is_permanent());
        assert!(
            TrainError::Diverged {
                step: 3,
                loss: f64::NAN
            }
            .is_permanent()
        );
        let io = TrainError::Io {
            op: "write".into(),
            source: std::io::Error::other("disk"),
        };
        assert!(!io.is_permanent());
    }
}
