//! Status: what the pretrain Job and its pods say, turned into the PretrainJob's
//! conditions, phase and operator-owned fields; and whether anything needs writing.
//!
//! The operator owns `observedGeneration`, `conditions`, `phase`, `restarts`,
//! `dataset`, `artifact`, `job`, `startTime` and `completionTime`. `progress`
//! belongs to the trainer (field manager `llmops-trainer`) and is never part of
//! the operator's apply.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use llmops_crds::{
    Artifact, JobPhase, LocalObjectRef, PretrainJob, PretrainJobOperatorStatus, PretrainJobStatus,
    TrainingProgress,
};
use serde::Deserialize;

use crate::controller::training::status::{self as training, Current, summary};
use crate::runtime::conditions::{Outcome, next_conditions};
use crate::runtime::status::{ReportsStatus, Written};
use crate::workload::observe::JobState;

/// Reasons of the PretrainJob's conditions.
pub mod reason {
    pub use crate::controller::training::status::reason::*;
    pub const WAITING_FOR_DATASET: &str = "WaitingForDataset";
}

/// What `trainer pretrain` writes to its termination message on success.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainerResult {
    pub artifact: Artifact,
    #[serde(default)]
    pub progress: Option<TrainingProgress>,
}

/// Parse the trainer's success message.
pub fn parse_result(message: &str) -> Result<TrainerResult, serde_json::Error> {
    serde_json::from_str(message.trim())
}

/// What the operator applies to a PretrainJob's status.
pub type OperatorStatus = Written<PretrainJobOperatorStatus>;

/// Everything a pass concluded, apart from conditions (which `desired_status`
/// derives from `outcome` and the current ones).
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub outcome: Outcome,
    pub phase: JobPhase,
    pub restarts: i32,
    /// The lineage recorded once the Job exists; `None` keeps the current one.
    pub dataset: Option<Artifact>,
    pub artifact: Option<Artifact>,
    pub job: Option<String>,
    pub start_time: Option<Time>,
    pub completion_time: Option<Time>,
}

impl Observed {
    /// A pass that did not get as far as a Job: times and counters stay as they are,
    /// but the completion time, which belongs to a finished run of this generation
    /// (with it recorded the run would count as done, and a changed spec would
    /// never run).
    pub fn without_job(
        outcome: Outcome,
        phase: JobPhase,
        current: Option<&PretrainJobStatus>,
    ) -> Self {
        Self {
            outcome,
            phase,
            restarts: current.map_or(0, |s| s.operator.restarts),
            dataset: None,
            artifact: current.and_then(|s| s.operator.artifact.clone()),
            job: current.and_then(|s| s.operator.job.as_ref().map(|j| j.name.clone())),
            start_time: current.and_then(|s| s.operator.start_time.clone()),
            completion_time: None,
        }
    }
}

/// The outcome of a PretrainJob whose Job is in `state`.
///
/// `suspend` is the spec's wish; `current` the status as last written (its start
/// time is kept across suspensions, and the trainer's progress feeds messages).
pub fn observe(
    state: &JobState,
    job: &Job,
    suspend: bool,
    replicas: i32,
    current: Option<&PretrainJobStatus>,
) -> Observed {
    let mut artifact = None;
    let run = training::observe(
        "pretrain",
        state,
        job,
        suspend,
        replicas,
        Current {
            progress: current.and_then(|s| s.progress.as_ref()),
            start_time: current.and_then(|s| s.operator.start_time.as_ref()),
        },
        |message, progress| {
            let result =
                parse_result(message).map_err(|err| format!("is not valid JSON: {err}"))?;
            let progress = result.progress.as_ref().or(progress);
            let text = progress.map_or_else(|| "trained".to_string(), summary);
            artifact = Some(result.artifact);
            Ok((Outcome::ready(reason::TRAINED, text), JobPhase::Succeeded))
        },
    );
    Observed {
        outcome: run.outcome,
        phase: run.phase,
        restarts: run.restarts,
        dataset: None,
        artifact,
        job: run.job,
        start_time: run.start_time,
        completion_time: run.completion_time,
    }
}

/// The operator's status for `observed`, keeping condition times from `current`.
pub fn desired_status(pt: &PretrainJob, observed: Observed, now: &Time) -> OperatorStatus {
    let current = pt.status.as_ref();
    let conditions = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = pt.metadata.generation;
    Written {
        observed_generation: generation,
        conditions: next_conditions(conditions, &observed.outcome, generation, now),
        fields: PretrainJobOperatorStatus {
            phase: Some(observed.phase),
            restarts: observed.restarts,
            dataset: observed
                .dataset
                .or_else(|| current.and_then(|s| s.operator.dataset.clone())),
            artifact: observed.artifact,
            job: observed.job.map(|name| LocalObjectRef { name }),
            start_time: observed.start_time,
            completion_time: observed.completion_time,
        },
    }
}

impl ReportsStatus for PretrainJob {
    /// The trainer's progress is not among them.
    type Fields = PretrainJobOperatorStatus;

    fn fields(status: &PretrainJobStatus) -> &PretrainJobOperatorStatus {
        &status.operator
    }

    fn fields_mut(status: &mut PretrainJobStatus) -> &mut PretrainJobOperatorStatus {
        &mut status.operator
    }
}
