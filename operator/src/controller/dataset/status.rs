//! Status: what the prepare Job and its pod say, turned into the Dataset's
//! conditions and operator-owned status fields; and the decision whether anything
//! needs writing at all.
//!
//! The operator owns `observedGeneration`, `conditions`, `artifact`, `job`,
//! `startTime` and `completionTime`. `stats` belongs to the trainer (field manager
//! `llmops-trainer`) and is never part of the operator's apply.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use llmops_crds::dataset::DatasetStats;
use llmops_crds::{Artifact, Dataset, DatasetOperatorStatus, DatasetStatus, LocalObjectRef};
use serde::Deserialize;

use crate::runtime::conditions::{Outcome, next_conditions};
use crate::runtime::status::{ReportsStatus, Written};
use crate::workload::observe::{BLOCKING_WAIT_REASONS, JobState, job_condition};

/// Reasons of the Dataset's conditions.
pub mod reason {
    pub const PREPARING: &str = "Preparing";
    pub const PREPARED: &str = "Prepared";
    pub const PREPARE_FAILED: &str = "PrepareFailed";
    pub const POD_BLOCKED: &str = "PodBlocked";
    pub const INVALID_RESULT: &str = "InvalidTrainerResult";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const DELETING: &str = "Deleting";
}

/// What `trainer prepare` writes to its termination message on success.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainerResult {
    pub artifact: Artifact,
    #[serde(default)]
    pub stats: Option<DatasetStats>,
}

/// Parse the trainer's success message.
pub fn parse_result(message: &str) -> Result<TrainerResult, serde_json::Error> {
    serde_json::from_str(message.trim())
}

/// The Ready message of a prepared Dataset: `41,220 docs (3.1% dup), 12.4M tok`.
pub fn summary(stats: &DatasetStats) -> String {
    let duplicates = stats.exact_duplicates + stats.near_duplicates;
    let dup_percent = if stats.documents_in > 0 {
        100.0 * duplicates as f64 / stats.documents_in as f64
    } else {
        0.0
    };
    let tokens = stats.train_tokens + stats.validation_tokens + stats.test_tokens;
    format!(
        "{} docs ({dup_percent:.1}% dup), {} tok",
        thousands(stats.documents_out),
        si(tokens)
    )
}

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn si(n: i64) -> String {
    let x = n as f64;
    match n.abs() {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", x / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", x / 1e6),
        _ => format!("{:.1}B", x / 1e9),
    }
}

/// What the operator applies to a Dataset's status.
pub type OperatorStatus = Written<DatasetOperatorStatus>;

/// The Job-derived fields of a status, apart from conditions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobFields {
    pub artifact: Option<Artifact>,
    pub job: Option<String>,
    pub start_time: Option<Time>,
    pub completion_time: Option<Time>,
}

impl JobFields {
    /// The times and name of `job`.
    pub fn of(job: &Job) -> Self {
        let status = job.status.as_ref();
        let finished = status
            .and_then(|s| s.completion_time.clone())
            .or_else(|| job_condition(job, "Failed").and_then(|c| c.last_transition_time.clone()));
        Self {
            artifact: None,
            job: Some(job.name_any()),
            start_time: status
                .and_then(|s| s.start_time.clone())
                .or_else(|| job.metadata.creation_timestamp.clone()),
            completion_time: finished,
        }
    }
}

/// The outcome and Job fields of a Dataset whose current Job is in `state`.
pub fn observe(
    state: &JobState,
    job: &Job,
    current_stats: Option<&DatasetStats>,
) -> (Outcome, JobFields) {
    let mut fields = JobFields::of(job);
    let job_name = fields.job.clone().unwrap_or_default();
    let outcome = match state {
        JobState::Running { waiting: None } => {
            fields.completion_time = None;
            Outcome::progressing(reason::PREPARING, format!("preparing (Job {job_name})"))
        }
        JobState::Running {
            waiting: Some((why, detail)),
        } => {
            fields.completion_time = None;
            let message = if detail.is_empty() {
                why.clone()
            } else {
                format!("{why}: {detail}")
            };
            if BLOCKING_WAIT_REASONS.contains(&why.as_str()) {
                Outcome::stalled(reason::POD_BLOCKED, message)
            } else {
                Outcome::progressing(reason::PREPARING, format!("pod waiting: {message}"))
            }
        }
        JobState::Succeeded { message } => match message.as_deref().map(parse_result) {
            Some(Ok(result)) => {
                let stats = result.stats.as_ref().or(current_stats);
                let message = stats.map_or_else(|| "prepared".to_string(), summary);
                fields.artifact = Some(result.artifact);
                Outcome::ready(reason::PREPARED, message)
            }
            Some(Err(err)) => Outcome::stalled(
                reason::INVALID_RESULT,
                format!("trainer prepare succeeded but its result is not valid JSON: {err}"),
            ),
            None => Outcome::stalled(
                reason::INVALID_RESULT,
                "trainer prepare succeeded but wrote no result to its termination message",
            ),
        },
        JobState::Failed { error } => Outcome::stalled(reason::PREPARE_FAILED, error.clone()),
    };
    (outcome, fields)
}

/// The operator's status for `outcome`, keeping condition times from `current`.
pub fn desired_status(
    ds: &Dataset,
    outcome: &Outcome,
    fields: JobFields,
    now: &Time,
) -> OperatorStatus {
    let current = ds
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = ds.metadata.generation;
    Written {
        observed_generation: generation,
        conditions: next_conditions(current, outcome, generation, now),
        fields: DatasetOperatorStatus {
            artifact: fields.artifact,
            job: fields.job.map(|name| LocalObjectRef { name }),
            start_time: fields.start_time,
            completion_time: fields.completion_time,
        },
    }
}

impl ReportsStatus for Dataset {
    /// The trainer's live stats are not among them.
    type Fields = DatasetOperatorStatus;

    fn fields(status: &DatasetStatus) -> &DatasetOperatorStatus {
        &status.operator
    }

    fn fields_mut(status: &mut DatasetStatus) -> &mut DatasetOperatorStatus {
        &mut status.operator
    }
}
