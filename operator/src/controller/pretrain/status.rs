//! Status: what the pretrain Job and its pods say, turned into the PretrainJob's
//! conditions, phase and operator-owned fields; and whether anything needs writing.
//!
//! The operator owns `observedGeneration`, `conditions`, `phase`, `restarts`,
//! `dataset`, `artifact`, `job`, `startTime` and `completionTime`. `progress`
//! belongs to the trainer (field manager `llmops-trainer`) and is never part of
//! the operator's apply.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use llmops_crds::{
    Artifact, JobPhase, LocalObjectRef, PretrainJob, PretrainJobStatus, TrainingProgress,
};
use serde::{Deserialize, Serialize};

use crate::controller::training::status::{self as training, Current, summary};
use crate::runtime::conditions::{Outcome, next_conditions, replace_owned};
use crate::runtime::status::{ReportsStatus, status_header};
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

/// The fields of `status` the operator writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    pub restarts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<Artifact>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<LocalObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

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
    /// A pass that did not get as far as a Job: times and counters stay as they are.
    pub fn without_job(
        outcome: Outcome,
        phase: JobPhase,
        current: Option<&PretrainJobStatus>,
    ) -> Self {
        Self {
            outcome,
            phase,
            restarts: current.map_or(0, |s| s.restarts),
            dataset: None,
            artifact: current.and_then(|s| s.artifact.clone()),
            job: current.and_then(|s| s.job.as_ref().map(|j| j.name.clone())),
            start_time: current.and_then(|s| s.start_time.clone()),
            completion_time: current.and_then(|s| s.completion_time.clone()),
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
            start_time: current.and_then(|s| s.start_time.as_ref()),
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
    OperatorStatus {
        observed_generation: generation,
        conditions: next_conditions(conditions, &observed.outcome, generation, now),
        phase: Some(observed.phase),
        restarts: observed.restarts,
        dataset: observed
            .dataset
            .or_else(|| current.and_then(|s| s.dataset.clone())),
        artifact: observed.artifact,
        job: observed.job.map(|name| LocalObjectRef { name }),
        start_time: observed.start_time,
        completion_time: observed.completion_time,
    }
}

status_header!(OperatorStatus);

impl ReportsStatus for PretrainJob {
    type Written = OperatorStatus;

    fn fields_differ(current: &PretrainJobStatus, desired: &OperatorStatus) -> bool {
        current.phase != desired.phase
            || current.restarts != desired.restarts
            || current.dataset != desired.dataset
            || current.artifact != desired.artifact
            || current.job.as_ref().map(|j| &j.name) != desired.job.as_ref().map(|j| &j.name)
            || current.start_time != desired.start_time
            || current.completion_time != desired.completion_time
    }

    /// Keeps the trainer's progress.
    fn record(status: &mut PretrainJobStatus, written: OperatorStatus) {
        status.observed_generation = written.observed_generation;
        replace_owned(&mut status.conditions, written.conditions);
        status.phase = written.phase;
        status.restarts = written.restarts;
        status.dataset = written.dataset;
        status.artifact = written.artifact;
        status.job = written.job;
        status.start_time = written.start_time;
        status.completion_time = written.completion_time;
    }
}
