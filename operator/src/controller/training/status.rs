//! Reading a training run: what its Job and pods say, as an outcome, phase,
//! restart count and times. What a successful trainer reports differs by kind and
//! is read by the caller.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use llmops_contract::exit;
use llmops_crds::{JobPhase, TrainingProgress};

use super::COMPLETION_INDEX_ANNOTATION;
use crate::runtime::conditions::Outcome;
use crate::workload::job::TRAINER_CONTAINER;
use crate::workload::observe::{BLOCKING_WAIT_REASONS, JobState, job_condition};

/// Condition reasons every training kind uses.
pub mod reason {
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

/// `step 120/1000, loss 2.31`: where training stands, for the Ready message.
pub fn summary(progress: &TrainingProgress) -> String {
    let mut text = format!("step {}/{}", progress.step, progress.total_steps);
    if let Some(loss) = progress.train_loss {
        text.push_str(&format!(", loss {loss:.2}"));
    }
    if let Some(loss) = progress.validation_loss {
        text.push_str(&format!(", val loss {loss:.2}"));
    }
    // What the trainer worked around (a corrupt checkpoint set aside) stays in
    // the message for the rest of the run.
    if let Some(note) = &progress.note {
        text.push_str(&format!("; {note}"));
    }
    text
}

/// The outcome of a pass that waits for an outdated Job (`job`) to go.
pub fn replacing(job: &str) -> Outcome {
    Outcome::progressing(
        reason::REPLACING,
        format!("replacing Job {job}: waiting for the previous pods to save a checkpoint and stop"),
    )
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
            .filter(|pod| {
                exit_code(pod).is_some_and(|code| code != 0 && code != i32::from(exit::INTERRUPTED))
            })
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

/// Where a run stands, read from its Job.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStatus {
    pub outcome: Outcome,
    pub phase: JobPhase,
    pub restarts: i32,
    pub job: Option<String>,
    pub start_time: Option<Time>,
    pub completion_time: Option<Time>,
}

/// What the status held before this pass, as far as reading a run needs it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Current<'a> {
    /// The trainer's live progress.
    pub progress: Option<&'a TrainingProgress>,
    /// When the run first started (kept across suspensions).
    pub start_time: Option<&'a Time>,
}

/// The outcome of a run whose Job is in `state`.
///
/// `suspend` is the spec's wish. `succeeded` reads the trainer's result (its
/// termination message, and the live progress) into the outcome and phase, or says
/// what is wrong with it (`is not valid JSON: ...`); such a result, or none at
/// all, is Stalled (`InvalidTrainerResult`).
pub fn observe(
    command: &str,
    state: &JobState,
    job: &Job,
    suspend: bool,
    replicas: i32,
    current: Current<'_>,
    succeeded: impl FnOnce(&str, Option<&TrainingProgress>) -> Result<(Outcome, JobPhase), String>,
) -> RunStatus {
    let job_status = job.status.as_ref();
    let progress = current.progress;
    let restarts = restarts(job, replicas);
    let finished_at = job_status
        .and_then(|s| s.completion_time.clone())
        .or_else(|| job_condition(job, "Failed").and_then(|c| c.last_transition_time.clone()));
    // Training started when the Job first started; a resumed Job restarts its clock.
    let start_time = current
        .start_time
        .cloned()
        .or_else(|| job_status.and_then(|s| s.start_time.clone()));
    let mut observed = RunStatus {
        outcome: Outcome::FirstSight,
        phase: JobPhase::Pending,
        restarts,
        job: Some(job.name_any()),
        start_time,
        completion_time: None,
    };

    (observed.outcome, observed.phase) = match state {
        JobState::Succeeded { message } => {
            observed.completion_time = finished_at;
            let read = match message.as_deref() {
                Some(message) => succeeded(message, progress)
                    .map_err(|err| format!("trainer {command} succeeded but its result {err}")),
                None => Err(format!(
                    "trainer {command} succeeded but wrote no result to its termination message"
                )),
            };
            read.unwrap_or_else(|text| {
                (
                    Outcome::stalled(reason::INVALID_RESULT, text),
                    JobPhase::Failed,
                )
            })
        }
        JobState::Failed { error } => {
            // The checkpoints stay where they are: a fixed spec resumes from them.
            observed.completion_time = finished_at;
            (
                Outcome::stalled(reason::TRAINING_FAILED, error.clone()),
                JobPhase::Failed,
            )
        }
        JobState::Running { .. } if suspend => suspended(job, progress),
        JobState::Running {
            waiting: Some((why, detail)),
        } => (waiting(why, detail, restarts), JobPhase::Pending),
        JobState::Running { waiting: None } => running(job, restarts),
    };
    observed
}

/// A suspended run: its pods saving a checkpoint, then none.
fn suspended(job: &Job, progress: Option<&TrainingProgress>) -> (Outcome, JobPhase) {
    let active = job.status.as_ref().and_then(|s| s.active).unwrap_or(0);
    let at = progress.map_or_else(String::new, |p| format!(" at step {}", p.step));
    // Reconciling while pods still stop. Once none is left, nothing is in flight:
    // held, with no condition (phase Suspended), so kstatus and Flux see the
    // suspension as settled.
    let outcome = if active > 0 {
        Outcome::progressing(
            reason::SUSPENDED,
            format!("suspending{at}: {active} pod(s) saving a checkpoint"),
        )
    } else {
        Outcome::Held
    };
    (outcome, JobPhase::Suspended)
}

/// A pod that cannot start (`why`): Stalled when only a change helps, starting
/// otherwise.
fn waiting(why: &str, detail: &str, restarts: i32) -> Outcome {
    let text = if detail.is_empty() {
        why.to_string()
    } else {
        format!("{why}: {detail}")
    };
    if BLOCKING_WAIT_REASONS.contains(&why) {
        Outcome::stalled(reason::POD_BLOCKED, text)
    } else {
        Outcome::progressing(
            reason::STARTING,
            with_restarts(format!("pod waiting: {text}"), restarts),
        )
    }
}

/// A run whose pods are active, or about to be.
fn running(job: &Job, restarts: i32) -> (Outcome, JobPhase) {
    let job_name = job.name_any();
    let active = job.status.as_ref().and_then(|s| s.active).unwrap_or(0);
    if active > 0 {
        // Not the step and loss: the trainer updates them every few seconds
        // (they are columns of their own), and a message following them
        // would double the status writes.
        let text = format!("training (Job {job_name})");
        (
            Outcome::progressing(reason::TRAINING, with_restarts(text, restarts)),
            JobPhase::Running,
        )
    } else {
        let text = format!("starting pods (Job {job_name})");
        (
            Outcome::progressing(reason::STARTING, with_restarts(text, restarts)),
            JobPhase::Pending,
        )
    }
}

/// `text`, with the restarts so far.
fn with_restarts(text: String, restarts: i32) -> String {
    match restarts {
        0 => text,
        1 => format!("{text} (1 restart)"),
        n => format!("{text} ({n} restarts)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trainers_note_follows_the_figures() {
        let mut progress = TrainingProgress {
            step: 12,
            total_steps: 20,
            train_loss: Some(2.5),
            ..TrainingProgress::default()
        };
        assert_eq!(summary(&progress), "step 12/20, loss 2.50");
        progress.note = Some("resumed from step-10: corrupt checkpoints set aside".into());
        assert_eq!(
            summary(&progress),
            "step 12/20, loss 2.50; resumed from step-10: corrupt checkpoints set aside"
        );
    }
}
