//! What a kind that runs a trainer Job records about it in its status, and the
//! work a pass may skip because of it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use llmops_crds::{DatasetStatus, FineTuneStatus, JobPhase, LocalObjectRef, PretrainJobStatus};

use crate::runtime::status::{ReportsStatus, StatusHeader};

/// The fields of a status that record a trainer Job.
pub trait JobRecord: StatusHeader {
    /// The Job the status was last written from.
    fn job(&self) -> Option<&LocalObjectRef>;
    /// Set once the Job finished, succeeded or failed.
    fn completion_time(&self) -> Option<&Time>;
    /// The run's phase, for kinds that record one.
    fn phase(&self) -> Option<JobPhase> {
        None
    }
}

/// Whether an earlier pass for this generation got as far as recording `job` in
/// the status. That write comes after outdated children were deleted, so there is
/// nothing left to clean up; skipping it spares the frequent passes caused by the
/// trainer's status updates a list call per child kind each.
pub fn cleaned_up_for<K>(obj: &K, job: &str) -> bool
where
    K: ReportsStatus,
    K::Status: JobRecord,
{
    obj.status().is_some_and(|s| {
        s.observed_generation() == obj.meta().generation && s.job().is_some_and(|j| j.name == job)
    })
}

/// Whether the current generation already finished (succeeded or failed): its
/// Job is a final record, not created or started again until the spec changes,
/// and so is the status written from it.
pub fn finished_for_generation<K>(obj: &K) -> bool
where
    K: ReportsStatus,
    K::Status: JobRecord,
{
    // A status that records a phase says so too: one written for a new run
    // (replacing the Job, waiting for inputs) may still carry the completion time
    // of the run before.
    obj.status().is_some_and(|s| {
        s.observed_generation() == obj.meta().generation
            && s.completion_time().is_some()
            && s.phase()
                .is_none_or(|p| matches!(p, JobPhase::Succeeded | JobPhase::Failed))
    })
}

/// The statuses of the kinds that run a trainer Job name these fields alike, in
/// types of their own.
macro_rules! job_record {
    ($($status:ty),*) => {$(
        impl JobRecord for $status {
            fn job(&self) -> Option<&LocalObjectRef> {
                self.operator.job.as_ref()
            }

            fn completion_time(&self) -> Option<&Time> {
                self.operator.completion_time.as_ref()
            }
        }
    )*};
}

job_record!(DatasetStatus);

/// The kinds whose status records their run's phase.
macro_rules! job_record_with_phase {
    ($($status:ty),*) => {$(
        impl JobRecord for $status {
            fn job(&self) -> Option<&LocalObjectRef> {
                self.operator.job.as_ref()
            }

            fn completion_time(&self) -> Option<&Time> {
                self.operator.completion_time.as_ref()
            }

            fn phase(&self) -> Option<JobPhase> {
                self.operator.phase.clone()
            }
        }
    )*};
}

job_record_with_phase!(PretrainJobStatus, FineTuneStatus);
