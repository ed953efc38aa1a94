//! Writing the operator's part of a status, the same way for every kind: applied
//! to the status subresource only when it differs, an Event per condition that
//! flipped, and the local copy updated so later steps of the pass compare
//! against what was written.
//!
//! What the operator's part holds differs by kind; each kind says so by
//! implementing [`ReportsStatus`] next to its status code.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::api::Api;
use kube::core::object::HasStatus;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::apply::apply_status;
use super::conditions::{owned_conditions_equal, transitions};
use super::events::EventPublisher;

/// The fields every status has, stored or about to be written by the operator.
pub trait StatusHeader {
    fn observed_generation(&self) -> Option<i64>;
    /// In a stored status, the operator's conditions and others'.
    fn conditions(&self) -> &[Condition];
}

/// Implements [`StatusHeader`] for status types with the usual
/// `observed_generation` and `conditions` fields: the CRD types spell them alike
/// but share no trait of the operator's.
macro_rules! status_header {
    ($($status:ty),*) => {$(
        impl $crate::runtime::status::StatusHeader for $status {
            fn observed_generation(&self) -> Option<i64> {
                self.observed_generation
            }

            fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                &self.conditions
            }
        }
    )*};
}
pub(crate) use status_header;

status_header!(
    llmops_crds::DatasetStatus,
    llmops_crds::PretrainJobStatus,
    llmops_crds::FineTuneStatus,
    llmops_crds::ModelDeploymentStatus
);

/// A kind whose status the operator writes in part (other writers, such as the
/// trainer, own the rest).
pub trait ReportsStatus:
    Resource<DynamicType = ()>
    + HasStatus<Status: Default + StatusHeader>
    + Clone
    + Debug
    + DeserializeOwned
{
    /// The fields of the status the operator applies.
    type Written: Serialize + StatusHeader;

    /// Whether `desired` differs from `current` in a field the operator owns
    /// besides the header.
    fn fields_differ(current: &Self::Status, desired: &Self::Written) -> bool;

    /// Copy what was written into the local copy of the status, keeping the fields
    /// and conditions others own.
    fn record(status: &mut Self::Status, written: Self::Written);

    /// Whether writing `desired` would change anything the operator owns.
    fn needs_write(current: Option<&Self::Status>, desired: &Self::Written) -> bool {
        current.is_none_or(|current| {
            current.observed_generation() != desired.observed_generation()
                || !owned_conditions_equal(current.conditions(), desired.conditions())
                || Self::fields_differ(current, desired)
        })
    }
}

/// The status could not be written.
#[derive(Debug, thiserror::Error)]
#[error("failed to write the {kind}'s status: {source}")]
pub struct WriteStatusError {
    pub kind: String,
    pub source: kube::Error,
}

/// Whether the operator has not reported on `obj` yet (no Ready condition): the
/// first pass says so at once, before anything slow happens.
pub fn first_sight<K: ReportsStatus>(obj: &K) -> bool {
    !obj.status().is_some_and(|s| {
        s.conditions()
            .iter()
            .any(|c| c.type_ == llmops_crds::condition::READY)
    })
}

/// Apply `desired` if it differs from the operator's fields in `obj`'s status,
/// publish an Event per condition transition, and record the write in `obj`.
pub async fn write<K: ReportsStatus>(
    obj: &mut K,
    api: &Api<K>,
    events: &EventPublisher,
    desired: K::Written,
) -> Result<(), WriteStatusError> {
    if !K::needs_write(obj.status(), &desired) {
        return Ok(());
    }
    apply_status(api, &*obj, &desired)
        .await
        .map_err(|source| WriteStatusError {
            kind: K::kind(&()).into_owned(),
            source,
        })?;
    let current = obj.status().map(|s| s.conditions()).unwrap_or_default();
    let flipped = transitions(current, desired.conditions());
    events.transitions(&*obj, &flipped).await;
    K::record(obj.status_mut().get_or_insert_default(), desired);
    Ok(())
}
