use crate::train::{Permanence, TrainError};

/// Why `trainer pretrain` cannot run or finish; each message says what to fix,
/// naming the PretrainJob's fields.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error(
        "no dataset: pass --dataset or run through the operator, which records status.dataset.uri"
    )]
    NoDataset,
    #[error("the dataset does not fit the model: {0}")]
    Incompatible(String),
    /// A failure of the training session itself.
    #[error(transparent)]
    Train(#[from] TrainError),
}

impl Permanence for PretrainError {
    fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidSpec(_) | Self::NoDataset | Self::Incompatible(_) => true,
            Self::Train(e) => e.is_permanent(),
        }
    }
}

impl From<llmops_store::StoreError> for PretrainError {
    fn from(e: llmops_store::StoreError) -> Self {
        Self::Train(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_and_data_errors_are_permanent_and_io_is_not() {
        assert!(PretrainError::InvalidSpec("x".into()).is_permanent());
        assert!(
            PretrainError::from(TrainError::Diverged {
                step: 3,
                loss: f64::NAN
            })
            .is_permanent()
        );
        let io = PretrainError::from(TrainError::Io {
            op: "write".into(),
            source: std::io::Error::other("disk"),
        });
        assert!(!io.is_permanent());
    }
}
