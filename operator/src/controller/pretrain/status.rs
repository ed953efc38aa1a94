//! Status: what the pretrain Job and its pods say, turned into the PretrainJob's
//! conditions, phase and operator-owned fields; and whether anything needs writing.
//!
//! The operator owns `observedGeneration`, `conditions`, `phase`, `restarts`,
//! `dataset`, `artifact`, `job`, `startTime` and `completionTime`. `progress`
//! belongs to the trainer (field manager `llmops-trainer`) and is never part of
//! the operator's apply.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use llmops_crds::{
    Artifact, JobPhase, LocalObjectRef, PretrainJob, PretrainJobStatus, TrainingProgress,
};
use serde::{Deserialize, Serialize};

use super::build::{COMPLETION_INDEX_ANNOTATION, EXIT_INTERRUPTED};
use crate::runtime::conditions::{Outcome, next_conditions, owned_conditions_equal};
use crate::workload::job::TRAINER_CONTAINER;
use crate::workload::observe::{BLOCKING_WAIT_REASONS, JobState, job_condition};

/// Reasons of the PretrainJob's conditions.
pub mod reason {
    pub const WAITING_FOR_DATASET: &str = "WaitingForDataset";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const STARTING: &str = "Starting";
    pub const TRAINING: &str = "Training";
    pub const TRAINED: &str = "Trained";
    pub const TRAINING_FAILED: &str = "TrainingFailed";
    pub const POD_BLOCKED: &str = "PodBlocked";
    pub const SUSPENDED: &str = "Suspended";
    pub const REPLACING: &str = "Replacing";
    pub const INVALID_RESULT: &str = "InvalidTrainerResult";
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

/// `step 120/1000, loss 2.31`: where training stands, for the Ready message.
pub fn summary(progress: &TrainingProgress) -> String {
    let mut text = format!("step {}/{}", progress.step, progress.total_steps);
    if let Some(loss) = progress.train_loss {
        text.push_str(&format!(", loss {loss:.2}"));
    }
    if let Some(loss) = progress.validation_loss {
        text.push_str(&format!(", val loss {loss:.2}"));
    }
    text
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

/// Restarts of the data-parallel group: failed pods (disruptions and SIGTERM are
/// not counted by the Job) per replica, rounded up, since one failing rank takes
/// the others down with it.
pub fn restarts(job: &Job, replicas: i32) -> i32 {
    let failed = job.status.as_ref().and_then(|s| s.failed).unwrap_or(0);
    let replicas = replicas.max(1);
    (failed + replicas - 1) / replicas
}

/// The pods whose termination message tells the Job's story, for
/// [`crate::workload::observe::job_state`] (which reads the newest of them):
/// - a completed Job: rank 0's pods, the only rank that writes the result;
/// - a failed Job: the pods whose trainer failed by itself, not those stopped
///   (exit 143) or finished (exit 0) when the Job gave up on the others;
/// - otherwise all of them.
pub fn telling_pods(job: &Job, pods: Vec<Pod>) -> Vec<Pod> {
    if job_condition(job, "Complete").is_some() {
        return pods.into_iter().filter(is_rank_zero).collect();
    }
    if job_condition(job, "Failed").is_some() {
        let failed: Vec<Pod> = pods
            .iter()
            .filter(|pod| exit_code(pod).is_some_and(|code| code != 0 && code != EXIT_INTERRUPTED))
            .cloned()
            .collect();
        if !failed.is_empty() {
            return failed;
        }
    }
    pods
}

fn is_rank_zero(pod: &Pod) -> bool {
    pod.annotations()
        .get(COMPLETION_INDEX_ANNOTATION)
        .is_none_or(|index| index == "0")
}

fn exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == TRAINER_CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
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
    let job_status = job.status.as_ref();
    let job_name = job.name_any();
    let progress = current.and_then(|s| s.progress.as_ref());
    let restarts = restarts(job, replicas);
    let finished_at = job_status
        .and_then(|s| s.completion_time.clone())
        .or_else(|| job_condition(job, "Failed").and_then(|c| c.last_transition_time.clone()));
    // Training started when the Job first started; a resumed Job restarts its clock.
    let start_time = current
        .and_then(|s| s.start_time.clone())
        .or_else(|| job_status.and_then(|s| s.start_time.clone()));
    let mut observed = Observed {
        outcome: Outcome::FirstSight,
        phase: JobPhase::Pending,
        restarts,
        dataset: None,
        artifact: None,
        job: Some(job_name.clone()),
        start_time,
        completion_time: None,
    };

    let with_restarts = |text: String| match restarts {
        0 => text,
        1 => format!("{text} (1 restart)"),
        n => format!("{text} ({n} restarts)"),
    };

    match state {
        JobState::Succeeded { message } => {
            observed.completion_time = finished_at;
            match message.as_deref().map(parse_result) {
                Some(Ok(result)) => {
                    let progress = result.progress.as_ref().or(progress);
                    let text = progress.map_or_else(|| "trained".to_string(), summary);
                    observed.artifact = Some(result.artifact);
                    observed.phase = JobPhase::Succeeded;
                    observed.outcome = Outcome::ready(reason::TRAINED, text);
                }
                Some(Err(err)) => {
                    observed.phase = JobPhase::Failed;
                    observed.outcome = Outcome::stalled(
                        reason::INVALID_RESULT,
                        format!(
                            "trainer pretrain succeeded but its result is not valid JSON: {err}"
                        ),
                    );
                }
                None => {
                    observed.phase = JobPhase::Failed;
                    observed.outcome = Outcome::stalled(
                        reason::INVALID_RESULT,
                        "trainer pretrain succeeded but wrote no result to its termination message",
                    );
                }
            }
        }
        JobState::Failed { error } => {
            // The checkpoints stay where they are: a fixed spec resumes from them.
            observed.completion_time = finished_at;
            observed.phase = JobPhase::Failed;
            observed.outcome = Outcome::stalled(reason::TRAINING_FAILED, error.clone());
        }
        JobState::Running { .. } if suspend => {
            observed.phase = JobPhase::Suspended;
            let active = job_status.and_then(|s| s.active).unwrap_or(0);
            let at = progress.map_or_else(String::new, |p| format!(" at step {}", p.step));
            let text = if active > 0 {
                format!("suspending{at}: {active} pod(s) saving a checkpoint")
            } else {
                format!(
                    "suspended{at}; set spec.suspend to false to resume from the newest checkpoint"
                )
            };
            observed.outcome = Outcome::progressing(reason::SUSPENDED, text);
        }
        JobState::Running {
            waiting: Some((why, detail)),
        } => {
            let text = if detail.is_empty() {
                why.clone()
            } else {
                format!("{why}: {detail}")
            };
            observed.outcome = if BLOCKING_WAIT_REASONS.contains(&why.as_str()) {
                Outcome::stalled(reason::POD_BLOCKED, text)
            } else {
                Outcome::progressing(
                    reason::STARTING,
                    with_restarts(format!("pod waiting: {text}")),
                )
            };
        }
        JobState::Running { waiting: None } => {
            let active = job_status.and_then(|s| s.active).unwrap_or(0);
            if active > 0 {
                observed.phase = JobPhase::Running;
                // Not the step and loss: the trainer updates them every few seconds
                // (they are columns of their own), and a message following them
                // would double the status writes.
                let text = format!("training (Job {job_name})");
                observed.outcome = Outcome::progressing(reason::TRAINING, with_restarts(text));
            } else {
                observed.outcome = Outcome::progressing(
                    reason::STARTING,
                    with_restarts(format!("starting pods (Job {job_name})")),
                );
            }
        }
    }
    observed
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

/// Whether writing `desired` would change anything the operator owns.
pub fn needs_write(current: Option<&PretrainJobStatus>, desired: &OperatorStatus) -> bool {
    let Some(current) = current else {
        return true;
    };
    current.observed_generation != desired.observed_generation
        || !owned_conditions_equal(&current.conditions, &desired.conditions)
        || current.phase != desired.phase
        || current.restarts != desired.restarts
        || current.dataset != desired.dataset
        || current.artifact != desired.artifact
        || current.job.as_ref().map(|j| &j.name) != desired.job.as_ref().map(|j| &j.name)
        || current.start_time != desired.start_time
        || current.completion_time != desired.completion_time
}

/// Copy what was written into the local copy of the status, keeping the
/// trainer's progress and conditions owned by others.
pub fn record(status: &mut PretrainJobStatus, written: OperatorStatus) {
    status.observed_generation = written.observed_generation;
    crate::runtime::conditions::replace_owned(&mut status.conditions, written.conditions);
    status.phase = written.phase;
    status.restarts = written.restarts;
    status.dataset = written.dataset;
    status.artifact = written.artifact;
    status.job = written.job;
    status.start_time = written.start_time;
    status.completion_time = written.completion_time;
}

/// Whether an earlier pass for this generation got as far as recording `job` in the
/// status. That write comes after outdated children were deleted, so there is
/// nothing left to clean up; skipping it spares the frequent passes caused by the
/// trainer's progress updates six list calls each.
pub fn cleaned_up_for(pt: &PretrainJob, job: &str) -> bool {
    pt.status.as_ref().is_some_and(|s| {
        s.observed_generation == pt.metadata.generation
            && s.job.as_ref().is_some_and(|j| j.name == job)
    })
}

/// Whether the current generation already finished (succeeded or failed): its Job
/// is a final record, and the run is not started again until the spec changes.
pub fn finished_for_generation(pt: &PretrainJob) -> bool {
    pt.status.as_ref().is_some_and(|s| {
        s.observed_generation == pt.metadata.generation && s.completion_time.is_some()
    })
}
