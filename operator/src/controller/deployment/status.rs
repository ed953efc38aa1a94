//! Status: what the Deployment says, turned into the ModelDeployment's
//! conditions, replicas, endpoint and served models.
//!
//! - `status.model.current` is the model the Deployment's pods serve: it becomes
//!   the new model only once the Deployment's newest ReplicaSet is fully available
//!   (`updatedReplicas == replicas == availableReplicas` for the current
//!   generation); the one it replaces becomes `previous`.
//! - While a new model rolls out and the old one still serves, Ready stays True
//!   (about the old model) beside Reconciling=True `rolling out <uri>`.
//! - When the Deployment reports `ProgressDeadlineExceeded`, the new model failed
//!   to become ready: Stalled=True `RolloutFailed` naming it, and Ready stays True
//!   while the old model keeps serving (the rolling update never took its pods
//!   away).
//!
//! The operator owns `observedGeneration`, `conditions`, `replicas`, `endpoint`,
//! `model`, `rollout`, `metrics`, `lastScaleTime`, `lastScaleReason` and
//! `adapters` (all but the first five kept as they are by a pass that does
//! not change them).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use llmops_crds::deployment::{
    AdapterStatus, ReplicaStatus, RolloutPhase, RolloutStatus, ServedModels, ServingMetrics,
};
use llmops_crds::{
    Artifact, ModelDeployment, ModelDeploymentOperatorStatus, ModelDeploymentStatus,
};

use super::autoscale;
use super::build::{MODEL_DIGEST_ANNOTATION, MODEL_URI_ANNOTATION};
use crate::runtime::conditions::{Outcome, next_conditions};
use crate::runtime::status::{ReportsStatus, Written};

pub(crate) use super::reason;

/// What the operator applies to a ModelDeployment's status.
pub type OperatorStatus = Written<ModelDeploymentOperatorStatus>;

/// Everything a pass concluded.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub outcome: Outcome,
    pub replicas: Option<ReplicaStatus>,
    pub endpoint: Option<String>,
    pub model: Option<ServedModels>,
    pub rollout: Option<RolloutStatus>,
    /// When and why this pass changed the replica count; none keeps the last.
    pub last_scale: Option<(Time, String)>,
    /// New serving figures; none keeps the last.
    pub metrics: Option<ServingMetrics>,
    /// The adapters and their state; none keeps the last.
    pub adapters: Option<Vec<AdapterStatus>>,
}

/// `<uri>` or `<uri> (<digest>)`.
fn describe(artifact: &Artifact) -> String {
    if artifact.digest.is_empty() {
        artifact.uri.clone()
    } else {
        format!("{} ({})", artifact.uri, artifact.digest)
    }
}

/// The model a Deployment's pod template serves, from its annotations.
pub fn template_model(deployment: &Deployment) -> Option<Artifact> {
    let annotations = deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?;
    Some(Artifact {
        uri: annotations.get(MODEL_URI_ANNOTATION)?.clone(),
        digest: annotations
            .get(MODEL_DIGEST_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
    })
}

/// Replica counts of a Deployment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    desired: i32,
    total: i32,
    updated: i32,
    ready: i32,
    available: i32,
}

fn counts(deployment: &Deployment) -> Counts {
    let status = deployment.status.as_ref();
    let get = |f: fn(&k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<i32>| {
        status.and_then(f).unwrap_or(0)
    };
    Counts {
        desired: deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1),
        total: get(|s| s.replicas),
        updated: get(|s| s.updated_replicas),
        ready: get(|s| s.ready_replicas),
        available: get(|s| s.available_replicas),
    }
}

fn replica_status(deployment: Option<&Deployment>) -> Option<ReplicaStatus> {
    deployment.map(|d| {
        let c = counts(d);
        ReplicaStatus {
            desired: c.desired,
            ready: c.ready,
        }
    })
}

/// Whether the Deployment's controller has seen its current spec.
fn generation_observed(deployment: &Deployment) -> bool {
    let observed = deployment
        .status
        .as_ref()
        .and_then(|s| s.observed_generation);
    observed.is_some() && observed >= deployment.metadata.generation
}

/// Whether the Deployment reports that its rollout stopped progressing.
pub fn deadline_exceeded(deployment: &Deployment) -> bool {
    generation_observed(deployment)
        && deployment
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions.iter().any(|c| {
                    c.type_ == "Progressing"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                })
            })
}

/// `serving <uri> with N replica(s)`, then what the autoscaler did (`note`, or
/// why it did not run) when the spec asks for a range, scale to zero included.
fn serving_message(
    md: &ModelDeployment,
    model: &Artifact,
    ready: i32,
    note: Option<&str>,
) -> String {
    let mut text = format!("serving {} with {ready} replica(s)", describe(model));
    let note = note
        .map(str::to_string)
        .or_else(|| autoscale::idle_note(md));
    if let Some(note) = note {
        text.push_str(&format!("; {note}"));
    }
    if md.spec.auth.is_none() {
        text.push_str("; no API key (spec.auth unset): reachable inside the cluster only");
    }
    text
}

/// The outcome of a pass that applied the children: read from the live
/// Deployment and the models the status says are served.
#[cfg(test)]
pub fn observe(md: &ModelDeployment, deployment: &Deployment, endpoint: String) -> Observed {
    observe_with(md, deployment, endpoint, None)
}

/// [`observe`], with the autoscaler's `note` for the Ready message.
pub fn observe_with(
    md: &ModelDeployment,
    deployment: &Deployment,
    endpoint: String,
    note: Option<&str>,
) -> Observed {
    let served = md.status.as_ref().and_then(|s| s.operator.model.clone());
    let current = served.as_ref().and_then(|m| m.current.clone());
    let target = template_model(deployment);
    let rolled_out = rolled_out(deployment);

    let mut model = served.clone().unwrap_or_default();
    model.canary = None;
    if rolled_out
        && let Some(target) = &target
        && current.as_ref() != Some(target)
    {
        model.previous = current.clone().or(model.previous);
        model.current = Some(target.clone());
    }
    let seen = Seen {
        md,
        deployment,
        counts: counts(deployment),
        current: current.as_ref(),
        target: target.as_ref(),
        note,
    };
    let (outcome, phase, message) = if rolled_out {
        let serving = model.current.clone().unwrap_or_default();
        let message = serving_message(md, &serving, seen.counts.ready, note);
        (
            Outcome::ready(reason::SERVING, message),
            RolloutPhase::Stable,
            None,
        )
    } else {
        rolling_outcome(&seen)
    };

    Observed {
        outcome,
        replicas: replica_status(Some(deployment)),
        endpoint: Some(endpoint),
        model: (model != ServedModels::default()).then_some(model),
        rollout: Some(RolloutStatus {
            phase,
            message,
            // What a rolled-back canary refuses outlives the rollouts after it.
            aborted: md
                .status
                .as_ref()
                .and_then(|s| s.operator.rollout.as_ref())
                .and_then(|r| r.aborted.clone()),
            ..RolloutStatus::default()
        }),
        last_scale: None,
        metrics: None,
        adapters: None,
    }
}

/// What a pass saw of the stable Deployment.
struct Seen<'a> {
    md: &'a ModelDeployment,
    deployment: &'a Deployment,
    counts: Counts,
    /// The model the status says is served.
    current: Option<&'a Artifact>,
    /// The model of the Deployment's pod template.
    target: Option<&'a Artifact>,
    note: Option<&'a str>,
}

/// The outcome, phase and rollout message of a Deployment not rolled out: its
/// new pods failed (past the progress deadline), or are still coming, with or
/// without the old pods serving meanwhile.
fn rolling_outcome(seen: &Seen) -> (Outcome, RolloutPhase, Option<String>) {
    let (md, c) = (seen.md, seen.counts);
    let name = seen.deployment.name_any();
    let target_text = seen.target.map_or_else(|| "?".into(), describe);
    // The old pods keep serving: new pods take traffic only once ready, and
    // `maxUnavailable: 0` keeps every old pod until a new one is.
    let old_serves = c.available > 0 && seen.current.is_some();
    let current = seen.current.cloned().unwrap_or_default();
    let still_serving = || serving_message(md, &current, c.available, seen.note);
    if deadline_exceeded(seen.deployment) {
        let failed = format!(
            "model {target_text} did not become ready within {}s",
            md.spec.rollout.progress_deadline_seconds
        );
        let (outcome, text) = if old_serves {
            let text = format!(
                "{failed}; {} keeps serving (see the pods of Deployment {name})",
                describe(&current)
            );
            let outcome = Outcome::ready_stalled(
                reason::SERVING,
                still_serving(),
                reason::ROLLOUT_FAILED,
                text.clone(),
            );
            (outcome, text)
        } else {
            let text = format!("{failed} (see the pods of Deployment {name})");
            (Outcome::stalled(reason::ROLLOUT_FAILED, text.clone()), text)
        };
        return (outcome, RolloutPhase::Failed, Some(text));
    }
    let (outcome, text) = if old_serves {
        let change = if seen.current == seen.target {
            format!("updating the pods of {target_text}")
        } else {
            format!("rolling out {target_text}")
        };
        let text = format!(
            "{change}: {}/{} updated, {} available",
            c.updated, c.desired, c.available
        );
        let outcome = Outcome::ready_reconciling(
            reason::SERVING,
            still_serving(),
            reason::ROLLING_OUT,
            text.clone(),
        );
        (outcome, text)
    } else if seen.current.is_some() {
        let text = format!(
            "no replica is available; starting {} replica(s) of {target_text}",
            c.desired
        );
        (
            Outcome::progressing(reason::UNAVAILABLE, text.clone()),
            text,
        )
    } else {
        let text = format!(
            "starting {} replica(s) of {target_text}: {} ready",
            c.desired, c.ready
        );
        (Outcome::progressing(reason::STARTING, text.clone()), text)
    };
    (outcome, RolloutPhase::Progressing, Some(text))
}

/// Whether `deployment` has rolled every pod to its template (for its current
/// generation).
pub fn rolled_out(deployment: &Deployment) -> bool {
    let c = counts(deployment);
    generation_observed(deployment)
        && c.updated == c.desired
        && c.total == c.desired
        && c.available == c.desired
}

/// `observed` (about the stable pods) with a canary's part: Ready stays about
/// the stable model while the canary runs beside it (Reconciling `Canary`), and
/// once the canary was rolled back (Stalled `RolloutAborted`); the rollout
/// status is the canary's, with its own figures.
pub fn with_canary(
    mut observed: Observed,
    rollout: RolloutStatus,
    message: &str,
    aborted: bool,
    canary: Option<Artifact>,
) -> Observed {
    if let Some((reason, ready_message)) = ready_parts(&observed.outcome) {
        observed.outcome = if aborted {
            Outcome::ready_stalled(&reason, ready_message, reason::ROLLOUT_ABORTED, message)
        } else {
            Outcome::ready_reconciling(&reason, ready_message, reason::CANARY, message)
        };
    }
    let mut model = observed.model.take().unwrap_or_default();
    model.canary = canary;
    observed.model = (model != ServedModels::default()).then_some(model);
    observed.rollout = Some(rollout);
    observed
}

/// The reason and message of Ready=True in `outcome`, if it says so.
fn ready_parts(outcome: &Outcome) -> Option<(String, String)> {
    match outcome {
        Outcome::Ready { reason, message }
        | Outcome::ReadyWhile {
            reason, message, ..
        } => Some((reason.clone(), message.clone())),
        _ => None,
    }
}

/// `observed` with an HTTPRoute the operator cannot weight
/// (`canary.trafficRouting`): Ready stays about the stable pods, which serve
/// through the Service, and Stalled `RouteNotUsable` says what to fix.
pub fn with_route_problem(mut observed: Observed, problem: &str) -> Observed {
    observed.outcome = match ready_parts(&observed.outcome) {
        Some((reason, message)) => {
            Outcome::ready_stalled(&reason, message, reason::ROUTE_NOT_USABLE, problem)
        }
        None => Outcome::stalled(reason::ROUTE_NOT_USABLE, problem),
    };
    observed
}

/// A pass that did not apply the children (waiting for the model, or a spec this
/// version cannot run): what was deployed before stays, and so does its status.
/// When the old model still serves, Ready stays True beside the condition about
/// the change (Reconciling while waiting, Stalled for a bad spec).
pub fn without_apply(
    md: &ModelDeployment,
    outcome: Outcome,
    deployment: Option<&Deployment>,
) -> Observed {
    let current = md.status.as_ref();
    let served = current.and_then(|s| s.operator.model.clone());
    let serving = served.as_ref().and_then(|m| m.current.as_ref());
    let available = deployment.map_or(0, |d| counts(d).available);
    let outcome = match (serving, outcome) {
        (Some(model), Outcome::Progressing { reason, message }) if available > 0 => {
            Outcome::ready_reconciling(
                reason::SERVING,
                serving_message(md, model, available, None),
                &reason,
                message,
            )
        }
        (Some(model), Outcome::Stalled { reason, message }) if available > 0 => {
            Outcome::ready_stalled(
                reason::SERVING,
                serving_message(md, model, available, None),
                &reason,
                message,
            )
        }
        (_, outcome) => outcome,
    };
    Observed {
        outcome,
        replicas: replica_status(deployment),
        endpoint: deployment.and(current.and_then(|s| s.operator.endpoint.clone())),
        model: served,
        rollout: current.and_then(|s| s.operator.rollout.clone()),
        last_scale: None,
        metrics: None,
        adapters: None,
    }
}

/// The operator's status for `observed`, keeping condition times from the
/// current status.
pub fn desired_status(md: &ModelDeployment, observed: Observed, now: &Time) -> OperatorStatus {
    let conditions = md
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = md.metadata.generation;
    let current = md.status.as_ref();
    let (last_scale_time, last_scale_reason) = match observed.last_scale {
        Some((time, reason)) => (Some(time), Some(reason)),
        None => (
            current.and_then(|s| s.operator.last_scale_time.clone()),
            current.and_then(|s| s.operator.last_scale_reason.clone()),
        ),
    };
    Written {
        observed_generation: generation,
        conditions: next_conditions(conditions, &observed.outcome, generation, now),
        fields: ModelDeploymentOperatorStatus {
            replicas: observed.replicas,
            endpoint: observed.endpoint,
            model: observed.model,
            rollout: observed.rollout,
            metrics: observed
                .metrics
                .or_else(|| current.and_then(|s| s.operator.metrics.clone())),
            last_scale_time,
            last_scale_reason,
            adapters: observed.adapters.unwrap_or_else(|| {
                current
                    .map(|s| s.operator.adapters.clone())
                    .unwrap_or_default()
            }),
        },
    }
}

impl ReportsStatus for ModelDeployment {
    type Fields = ModelDeploymentOperatorStatus;

    fn fields(status: &ModelDeploymentStatus) -> &ModelDeploymentOperatorStatus {
        &status.operator
    }

    fn fields_mut(status: &mut ModelDeploymentStatus) -> &mut ModelDeploymentOperatorStatus {
        &mut status.operator
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    fn observed(outcome: Outcome) -> Observed {
        Observed {
            outcome,
            replicas: None,
            endpoint: None,
            model: None,
            rollout: None,
            last_scale: None,
            metrics: None,
            adapters: None,
        }
    }

    #[test]
    fn an_unusable_route_stalls_beside_a_serving_ready() {
        let serving = observed(Outcome::Ready {
            reason: reason::SERVING.into(),
            message: "serving".into(),
        });
        let o = with_route_problem(serving, "HTTPRoute chat does not exist");
        assert_eq!(
            o.outcome,
            Outcome::ready_stalled(
                reason::SERVING,
                "serving",
                reason::ROUTE_NOT_USABLE,
                "HTTPRoute chat does not exist"
            )
        );
        let starting = observed(Outcome::Progressing {
            reason: reason::STARTING.into(),
            message: "starting".into(),
        });
        let o = with_route_problem(starting, "no rule");
        assert_eq!(
            o.outcome,
            Outcome::stalled(reason::ROUTE_NOT_USABLE, "no rule")
        );
    }
}
