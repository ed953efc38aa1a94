use crate::artifact::ArtifactError;
use crate::train::{Permanence, TrainError};

/// Why `trainer finetune` cannot run or finish; each message says what to fix,
/// naming the FineTune's fields.
#[derive(Debug, thiserror::Error)]
pub enum FineTuneError {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error(
        "invalid spec: no base model: pass --base-model, or let the operator resolve spec.baseModel into status.lineage.baseModel"
    )]
    NoBaseModel,
    #[error(
        "no dataset: pass --dataset or run through the operator, which records status.lineage.dataset.uri"
    )]
    NoDataset,
    /// The dataset, the base model or the evaluation do not go together.
    #[error("the dataset does not fit the model: {0}")]
    Incompatible(String),
    /// A failure of the training session itself.
    #[error(transparent)]
    Train(#[from] TrainError),
}

impl Permanence for FineTuneError {
    fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidSpec(_) | Self::NoBaseModel | Self::NoDataset | Self::Incompatible(_) => {
                true
            }
            Self::Train(e) => e.is_permanent(),
        }
    }
}

impl FineTuneError {
    pub(crate) fn dataset(uri: impl Into<String>) -> impl FnOnce(ArtifactError) -> Self {
        let dataset = TrainError::dataset(uri);
        move |source| Self::Train(dataset(source))
    }
}

impl From<llmops_store::StoreError> for FineTuneError {
    fn from(e: llmops_store::StoreError) -> Self {
        Self::Train(e.into())
    }
}

impl From<llmops_model::Error> for FineTuneError {
    fn from(e: llmops_model::Error) -> Self {
        Self::Train(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_inputs_name_the_fine_tunes_fields_and_are_permanent() {
        let none = FineTuneError::NoDataset;
        assert!(none.to_string().contains("status.lineage.dataset.uri"));
        assert!(none.is_permanent());
        assert!(
            FineTuneError::NoBaseModel
                .to_string()
                .contains("spec.baseModel")
        );
        let io = FineTuneError::from(TrainError::Io {
            op: "write".into(),
            source: std::io::Error::other("disk"),
        });
        assert!(!io.is_permanent());
    }
}
