//! Writing the operator's part of a status, the same way for every kind: applied
//! to the status subresource only when it differs, an Event per condition that
//! flipped, and the local copy updated so later steps of the pass compare
//! against what was written.
//!
//! Every status is the same three things: the generation it describes, conditions
//! (the operator's and others'), and fields. Each kind groups the fields the
//! operator writes in one part of its status type (`<Kind>OperatorStatus`,
//! flattened into `status`), and says which by implementing [`ReportsStatus`]; the
//! rest (the trainer's live progress) belongs to other writers.

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
    /// Record a written generation and the operator's conditions, keeping others'.
    fn record_header(&mut self, observed_generation: Option<i64>, conditions: Vec<Condition>);
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

            fn record_header(
                &mut self,
                observed_generation: Option<i64>,
                conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
            ) {
                self.observed_generation = observed_generation;
                $crate::runtime::conditions::replace_owned(&mut self.conditions, conditions);
            }
        }
    )*};
}

status_header!(
    llmops_crds::DatasetStatus,
    llmops_crds::PretrainJobStatus,
    llmops_crds::FineTuneStatus,
    llmops_crds::ModelDeploymentStatus
);

/// What the operator applies to a status: the header and the kind's part.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Written<P> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Only the operator's conditions.
    pub conditions: Vec<Condition>,
    #[serde(flatten)]
    pub fields: P,
}

impl<P> StatusHeader for Written<P> {
    fn observed_generation(&self) -> Option<i64> {
        self.observed_generation
    }

    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn record_header(&mut self, observed_generation: Option<i64>, conditions: Vec<Condition>) {
        self.observed_generation = observed_generation;
        self.conditions = conditions;
    }
}

/// A kind whose status the operator writes in part (other writers, such as the
/// trainer, own the rest).
pub trait ReportsStatus:
    Resource<DynamicType = ()>
    + HasStatus<Status: Default + StatusHeader>
    + Clone
    + Debug
    + DeserializeOwned
{
    /// The fields of the status the operator writes besides the header.
    type Fields: Serialize + PartialEq + Debug;

    /// The operator's fields in a stored status.
    fn fields(status: &Self::Status) -> &Self::Fields;

    fn fields_mut(status: &mut Self::Status) -> &mut Self::Fields;

    /// Copy what was written into the local copy of the status, keeping the fields
    /// and conditions others own.
    fn record(status: &mut Self::Status, written: Written<Self::Fields>) {
        status.record_header(written.observed_generation, written.conditions);
        *Self::fields_mut(status) = written.fields;
    }

    /// Whether writing `desired` would change anything the operator owns.
    fn needs_write(current: Option<&Self::Status>, desired: &Written<Self::Fields>) -> bool {
        current.is_none_or(|current| {
            current.observed_generation() != desired.observed_generation
                || !owned_conditions_equal(current.conditions(), &desired.conditions)
                || Self::fields(current) != &desired.fields
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

/// Whether the operator has not reported on `obj` yet (no observed generation and
/// no Ready condition): the first pass says so at once, before anything slow
/// happens. A held run has an observed generation and no Ready condition.
pub fn first_sight<K: ReportsStatus>(obj: &K) -> bool {
    !obj.status().is_some_and(|s| {
        s.observed_generation().is_some()
            || s.conditions()
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
    desired: Written<K::Fields>,
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
    let flipped = transitions(current, &desired.conditions);
    events.transitions(&*obj, &flipped).await;
    crate::workload::telemetry::record_outcome(
        &*obj,
        current,
        &flipped,
        desired.observed_generation,
    );
    K::record(obj.status_mut().get_or_insert_default(), desired);
    Ok(())
}
