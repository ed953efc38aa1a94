//! Status: what the fine-tune Job and its pods say, turned into the FineTune's
//! conditions, phase and operator-owned fields; and whether anything needs writing.
//!
//! The operator owns `observedGeneration`, `conditions`, `phase`, `restarts`,
//! `lineage`, `evaluation`, `gate`, `artifact`, `job`, `startTime` and
//! `completionTime`. `progress` belongs to the trainer (field manager
//! `llmops-trainer`) and is never part of the operator's apply.
//!
//! The trainer's result carries the model, its evaluation and the gate outcome.
//! A model that passed its gates (or had none) becomes `status.artifact` and the
//! FineTune Ready; one that failed them is never published: no artifact, so no
//! ModelDeployment or later FineTune uses it, and the FineTune is Stalled
//! (`GateFailed`) saying where the rejected model was left.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use llmops_crds::finetune::{EvaluationScores, GateResult, Gates, Lineage};
use llmops_crds::{
    Artifact, FineTune, FineTuneOperatorStatus, FineTuneStatus, JobPhase, LocalObjectRef,
    TrainingProgress,
};
use serde::Deserialize;

use crate::controller::training::status::{self as training, Current, summary};
use crate::runtime::conditions::{Outcome, next_conditions};
use crate::runtime::status::{ReportsStatus, Written};
use crate::workload::observe::JobState;

/// Reasons of the FineTune's conditions.
pub mod reason {
    pub use crate::controller::training::status::reason::*;
    pub const WAITING_FOR_BASE_MODEL: &str = "WaitingForBaseModel";
    pub const WAITING_FOR_DATASET: &str = "WaitingForDataset";
    pub const GATE_FAILED: &str = "GateFailed";
}

/// What `trainer finetune` writes to its termination message on success.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainerResult {
    pub artifact: Artifact,
    #[serde(default)]
    pub progress: Option<TrainingProgress>,
    #[serde(default)]
    pub evaluation: Option<EvaluationScores>,
    #[serde(default)]
    pub gate: Option<GateResult>,
}

/// Parse the trainer's success message.
pub fn parse_result(message: &str) -> Result<TrainerResult, serde_json::Error> {
    serde_json::from_str(message.trim())
}

/// `perplexity 6.20 (base 31.08), rougeL 0.412 (200 samples)`: the scores, for
/// messages.
pub fn scores(evaluation: &EvaluationScores) -> String {
    let scores: Vec<String> = [
        ("perplexity", evaluation.perplexity, 2),
        ("rougeL", evaluation.rouge_l, 3),
        ("bleu", evaluation.bleu, 2),
        ("exactMatch", evaluation.exact_match, 3),
    ]
    .into_iter()
    .filter_map(|(name, value, digits)| value.map(|v| format!("{name} {v:.digits$}")))
    .map(|score| match evaluation.base_perplexity {
        // What the fine-tune improved on, beside its own perplexity.
        Some(base) if score.starts_with("perplexity ") => format!("{score} (base {base:.2})"),
        _ => score,
    })
    .collect();
    if scores.is_empty() {
        return format!("evaluated {} samples", evaluation.samples);
    }
    format!("{} ({} samples)", scores.join(", "), evaluation.samples)
}

/// Whether `gates` sets any threshold.
fn has_gates(gates: &Gates) -> bool {
    gates.min_rouge_l.is_some()
        || gates.min_bleu.is_some()
        || gates.min_exact_match.is_some()
        || gates.max_perplexity.is_some()
}

/// What the operator applies to a FineTune's status.
pub type OperatorStatus = Written<FineTuneOperatorStatus>;

/// Everything a pass concluded, apart from conditions (which `desired_status`
/// derives from `outcome` and the current ones).
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub outcome: Outcome,
    pub phase: JobPhase,
    pub restarts: i32,
    /// The lineage recorded once the Job exists; `None` keeps the current one.
    pub lineage: Option<Lineage>,
    pub evaluation: Option<EvaluationScores>,
    pub gate: Option<GateResult>,
    pub artifact: Option<Artifact>,
    pub job: Option<String>,
    pub start_time: Option<Time>,
    pub completion_time: Option<Time>,
}

impl Observed {
    /// A pass that did not get as far as a Job: results, times and counters stay
    /// as they are, but the completion time, which belongs to a finished run of
    /// this generation (with it recorded the run would count as done, and a
    /// changed spec would never run).
    pub fn without_job(
        outcome: Outcome,
        phase: JobPhase,
        current: Option<&FineTuneStatus>,
    ) -> Self {
        Self {
            outcome,
            phase,
            restarts: current.map_or(0, |s| s.operator.restarts),
            lineage: None,
            evaluation: current.and_then(|s| s.operator.evaluation.clone()),
            gate: current.and_then(|s| s.operator.gate.clone()),
            artifact: current.and_then(|s| s.operator.artifact.clone()),
            job: current.and_then(|s| s.operator.job.as_ref().map(|j| j.name.clone())),
            start_time: current.and_then(|s| s.operator.start_time.clone()),
            completion_time: None,
        }
    }
}

/// The outcome of a FineTune whose Job is in `state`.
///
/// `ft` is the FineTune as last written (its gates decide whether a result
/// without a gate outcome is acceptable, its status keeps the start time across
/// suspensions); `output_uri` is where the trainer wrote the model.
pub fn observe(state: &JobState, job: &Job, ft: &FineTune, output_uri: &str) -> Observed {
    let current = ft.status.as_ref();
    let gated = has_gates(&ft.spec.evaluation.gates);
    let mut read = None;
    let run = training::observe(
        "finetune",
        state,
        job,
        ft.spec.suspend,
        ft.spec.resources.replicas,
        Current {
            progress: current.and_then(|s| s.progress.as_ref()),
            start_time: current.and_then(|s| s.operator.start_time.as_ref()),
        },
        |message, progress| {
            let result =
                parse_result(message).map_err(|err| format!("is not valid JSON: {err}"))?;
            if gated && result.gate.is_none() {
                return Err("has no gate outcome although spec.evaluation.gates are set".into());
            }
            let outcome = outcome_of(&result, progress, output_uri);
            read = Some(result);
            Ok(outcome)
        },
    );
    let (mut evaluation, mut gate, mut artifact) = (None, None, None);
    if let Some(result) = read {
        let passed = result.gate.as_ref().is_none_or(|g| g.passed);
        evaluation = result.evaluation;
        gate = result.gate;
        artifact = passed.then_some(result.artifact);
    }
    Observed {
        outcome: run.outcome,
        phase: run.phase,
        restarts: run.restarts,
        lineage: None,
        evaluation,
        gate,
        artifact,
        job: run.job,
        start_time: run.start_time,
        completion_time: run.completion_time,
    }
}

/// Ready with the scores when the gates passed (or there were none); Stalled
/// (`GateFailed`) naming the gates and where the rejected model lies otherwise.
fn outcome_of(
    result: &TrainerResult,
    progress: Option<&TrainingProgress>,
    output_uri: &str,
) -> (Outcome, JobPhase) {
    let gate_text = result
        .gate
        .as_ref()
        .map(|g| g.message.trim())
        .filter(|m| !m.is_empty());
    if result.gate.as_ref().is_some_and(|g| !g.passed) {
        let why = gate_text.unwrap_or("a gate was not met");
        let uri = if result.artifact.uri.is_empty() {
            output_uri
        } else {
            &result.artifact.uri
        };
        return (
            Outcome::stalled(
                reason::GATE_FAILED,
                format!(
                    "the model failed its quality gates ({why}); it is not published, and was left at {uri}"
                ),
            ),
            JobPhase::Failed,
        );
    }
    let mut text = match &result.evaluation {
        Some(evaluation) => scores(evaluation),
        None => result
            .progress
            .as_ref()
            .or(progress)
            .map_or_else(|| "trained".to_string(), summary),
    };
    if let Some(gates) = gate_text {
        text.push_str(&format!("; gates passed: {gates}"));
    }
    (Outcome::ready(reason::TRAINED, text), JobPhase::Succeeded)
}

/// The operator's status for `observed`, keeping condition times from `current`.
pub fn desired_status(ft: &FineTune, observed: Observed, now: &Time) -> OperatorStatus {
    let current = ft.status.as_ref();
    let conditions = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = ft.metadata.generation;
    Written {
        observed_generation: generation,
        conditions: next_conditions(conditions, &observed.outcome, generation, now),
        fields: FineTuneOperatorStatus {
            phase: Some(observed.phase),
            restarts: observed.restarts,
            lineage: observed
                .lineage
                .or_else(|| current.and_then(|s| s.operator.lineage.clone())),
            evaluation: observed.evaluation,
            gate: observed.gate,
            artifact: observed.artifact,
            job: observed.job.map(|name| LocalObjectRef { name }),
            start_time: observed.start_time,
            completion_time: observed.completion_time,
        },
    }
}

impl ReportsStatus for FineTune {
    /// The trainer's progress is not among them.
    type Fields = FineTuneOperatorStatus;

    fn fields(status: &FineTuneStatus) -> &FineTuneOperatorStatus {
        &status.operator
    }

    fn fields_mut(status: &mut FineTuneStatus) -> &mut FineTuneOperatorStatus {
        &mut status.operator
    }
}
