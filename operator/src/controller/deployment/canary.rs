//! Canary rollouts: a new model (a new digest from `uri`, `pretrainJobRef` or
//! `fineTuneRef`) under `rollout.strategy: Canary` first serves a share of the
//! traffic from a Deployment of its own, step by step, and takes over only
//! when its own figures pass the analysis.
//!
//! Traffic follows replicas: the Service spreads requests over every ready
//! serving pod, stable and canary alike, so a step's weight `w` asks for
//! `ceil(stable × w / (100 − w))` canary pods (at most `replicas.max`), and the
//! status reports the weight that really results (1 canary pod beside 2 stable
//! ones is 33%, whatever the step asked).
//!
//! Each step, once its canary pods are ready, holds for its `pause`; then the
//! canary's window (from the monitor) is analysed: at least
//! `analysis.minRequests` requests, a 5xx share at most `maxErrorRate`, and a p95
//! latency at most `maxP95LatencyMs` pass it to the next step; after the last
//! step the stable Deployment rolls to the new model (`maxUnavailable: 0`) and
//! the canary goes once the stable pods serve it. A failing analysis — checked
//! as soon as `minRequests` have been served, not only at the end of a pause —
//! or canary pods that are not ready within `progressDeadlineSeconds` roll the
//! canary back (with `autoRollback`, the default): the canary is removed, the
//! stable model never stopped serving, and that model is not tried again until
//! the spec changes. Too few requests make the step wait, saying how many it has.
//!
//! Everything here is pure: [`decide`] takes what the pass read and the clock.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use llmops_crds::deployment::{AbortedRollout, CanaryStep, RolloutPhase, RolloutStatus};
use llmops_crds::{Artifact, ModelDeployment};

use super::autoscale::parse_duration;
use super::monitor::Summary;
use super::status::deadline_exceeded;

/// What a canary pass read.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub md: &'a ModelDeployment,
    /// The model the stable pods serve.
    pub stable: &'a Artifact,
    /// The new model.
    pub new: &'a Artifact,
    /// Stable replicas wanted, and ready.
    pub stable_replicas: i32,
    pub stable_ready: i32,
    /// The live canary Deployment, if any.
    pub canary: Option<&'a Deployment>,
    /// The model the live canary serves.
    pub canary_model: Option<&'a Artifact>,
    /// The canary's figures over the window.
    pub figures: &'a Summary,
    pub now: &'a Time,
}

/// What to do with the canary this pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Run the canary with this many pods.
    Run { replicas: i32 },
    /// Roll the stable Deployment to the new model; the canary stays meanwhile.
    Promote { replicas: i32 },
    /// Remove the canary: the analysis failed (or its pods never got ready).
    Abort,
}

/// The pass's decision: the canary action, the rollout status, and the message
/// of the condition beside Ready (Reconciling while it runs, Stalled once aborted).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub rollout: RolloutStatus,
    pub message: String,
    pub aborted: bool,
}

impl Decision {
    /// The canary's weight on an HTTPRoute after this pass: the step's while it
    /// runs, none once it is promoted (the stable pods take the new model) or
    /// rolled back.
    pub fn routed_weight(&self) -> i32 {
        match self.action {
            Action::Run { .. } => self.rollout.weight,
            Action::Promote { .. } | Action::Abort => 0,
        }
    }
}

/// Canary pods for `weight` percent beside `stable` stable pods, at most `max`.
pub fn canary_replicas(weight: i32, stable: i32, max: i32) -> i32 {
    let stable = stable.max(1);
    let wanted = if weight >= 100 {
        stable
    } else {
        let w = f64::from(weight.max(1));
        (f64::from(stable) * w / (100.0 - w)).ceil() as i32
    };
    wanted.clamp(1, max.max(1))
}

/// The share of traffic (percent) `canary` ready pods get beside `stable` ones.
pub fn effective_weight(canary: i32, stable: i32) -> i32 {
    let total = canary.max(0) + stable.max(0);
    if total == 0 {
        return 0;
    }
    (f64::from(canary.max(0)) * 100.0 / f64::from(total)).round() as i32
}

/// Whether a rollout status marks `model` as rolled back under `generation`.
pub fn refused(rollout: Option<&RolloutStatus>, model: &Artifact, generation: i64) -> bool {
    rollout
        .and_then(|r| r.aborted.as_ref())
        .is_some_and(|a| &a.model == model && a.generation == generation)
}

/// The canary Deployment's ready pods, wanted pods, and whether it reports that
/// its rollout stopped progressing.
fn canary_state(canary: &Deployment) -> (i32, i32, bool) {
    let wanted = canary.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = canary
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    (ready, wanted, deadline_exceeded(canary))
}

/// The weight an HTTPRoute gives the canary at `step` (1-based): the step's own
/// once all `target` canary pods are ready, the previous step's while pods for a
/// bigger step are still starting (those of the previous step serve it), and
/// nothing before the first pod is ready.
pub fn routed_weight(steps: &[CanaryStep], step: i32, ready: i32, target: i32) -> i32 {
    let weight_of = |step: i32| {
        usize::try_from(step - 1)
            .ok()
            .and_then(|i| steps.get(i))
            .map_or(0, |s| s.weight)
    };
    if ready <= 0 {
        0
    } else if ready >= target {
        weight_of(step)
    } else {
        weight_of(step - 1)
    }
}

/// `x` as a percentage with at most two decimals.
fn percent(x: f64) -> String {
    format!("{}%", (x * 10000.0).round() / 100.0)
}

/// Why the canary's figures fail the analysis, if they do (with at least
/// `minRequests` served).
pub fn verdict(md: &ModelDeployment, figures: &Summary) -> Option<String> {
    let analysis = &md.spec.rollout.analysis;
    if figures.requests < analysis.min_requests as f64 {
        return None;
    }
    let mut failures = Vec::new();
    let error_rate = figures.error_rate.unwrap_or(0.0);
    if error_rate > analysis.max_error_rate {
        failures.push(format!(
            "error rate {} > maxErrorRate {} ({} of {} requests failed)",
            percent(error_rate),
            percent(analysis.max_error_rate),
            figures.server_errors,
            figures.requests
        ));
    }
    if let (Some(limit), Some(p95)) = (analysis.max_p95_latency_ms, figures.p95_latency) {
        let p95_ms = p95 * 1000.0;
        if p95_ms > limit as f64 {
            failures.push(format!(
                "p95 latency {}ms > maxP95LatencyMs {limit}",
                p95_ms.round()
            ));
        }
    }
    (!failures.is_empty()).then(|| failures.join("; "))
}

fn describe(artifact: &Artifact) -> String {
    if artifact.digest.is_empty() {
        artifact.uri.clone()
    } else {
        format!("{} ({})", artifact.uri, artifact.digest)
    }
}

/// A decision that keeps the canary going (not aborted), with `message` as the
/// rollout's too.
fn going(action: Action, mut rollout: RolloutStatus, message: String) -> Decision {
    rollout.message = Some(message.clone());
    Decision {
        action,
        rollout,
        message,
        aborted: false,
    }
}

/// Decides the canary pass.
pub fn decide(inputs: &Inputs) -> Decision {
    let md = inputs.md;
    let canary_spec = md.spec.rollout.canary.as_ref();
    let steps = canary_spec.map(|c| c.steps.clone()).unwrap_or_default();
    let routed = canary_spec.is_some_and(|c| c.traffic_routing.is_some());
    let total = steps.len() as i32;
    let previous = md.status.as_ref().and_then(|s| s.operator.rollout.clone());
    // A status about another model's canary starts over at step 1.
    let same_canary = inputs.canary_model == Some(inputs.new) && inputs.canary.is_some();
    let previous = previous.filter(|_| same_canary);
    let step = previous
        .as_ref()
        .map_or(1, |r| r.step.clamp(1, total.max(1)));
    let rollout = RolloutStatus {
        phase: RolloutPhase::Progressing,
        step,
        steps: total,
        ..RolloutStatus::default()
    };
    let weight_of = |step: i32| {
        steps
            .get((step - 1).max(0) as usize)
            .map_or(100, |s| s.weight)
    };
    let pods_for = |step: i32| {
        canary_replicas(
            weight_of(step),
            inputs.stable_replicas,
            md.spec.replicas.max,
        )
    };
    let new = describe(inputs.new);

    let Some(canary) = inputs.canary.filter(|_| same_canary) else {
        let message = format!("canary {new}: starting step 1/{total}");
        return going(
            Action::Run {
                replicas: pods_for(1),
            },
            rollout,
            message,
        );
    };
    let (ready, wanted, stuck) = canary_state(canary);
    let at = Step {
        inputs,
        new,
        step,
        total,
        asked: weight_of(step),
        target: pods_for(step),
        next_pods: pods_for(step + 1),
        pause: steps
            .get((step - 1) as usize)
            .and_then(|s| parse_duration(&s.pause))
            .unwrap_or_default(),
        started: previous.and_then(|r| r.step_start_time),
    };
    let mut rollout = rollout;
    rollout.weight = if routed {
        routed_weight(&steps, step, ready, at.target)
    } else {
        effective_weight(ready, inputs.stable_ready)
    };
    if stuck {
        let deadline = md.spec.rollout.progress_deadline_seconds;
        let why = format!("its pods did not become ready within {deadline}s");
        return at.abort(why, wanted, rollout);
    }
    if let Some(why) = verdict(md, inputs.figures) {
        return at.abort(why, wanted, rollout);
    }
    if ready < at.target || wanted != at.target {
        let message = format!(
            "canary {}: step {step}/{total} (weight {}%): {ready}/{} canary pod(s) ready",
            at.new, at.asked, at.target
        );
        return going(
            Action::Run {
                replicas: at.target,
            },
            rollout,
            message,
        );
    }
    at.analyse(rollout)
}

/// The step a canary with live pods is at.
struct Step<'a> {
    inputs: &'a Inputs<'a>,
    /// The new model, described.
    new: String,
    step: i32,
    total: i32,
    /// The step's weight.
    asked: i32,
    /// Canary pods for this step, and for the next.
    target: i32,
    next_pods: i32,
    pause: Duration,
    /// When this step's pause began, if it has.
    started: Option<Time>,
}

impl Step<'_> {
    /// Roll the canary back (or, without `autoRollback`, leave it failed with
    /// its `wanted` pods) because of `why`.
    fn abort(&self, why: String, wanted: i32, mut rollout: RolloutStatus) -> Decision {
        let md = self.inputs.md;
        let (new, step, total) = (&self.new, self.step, self.total);
        let rolled_back = md.spec.rollout.auto_rollback;
        let message = if rolled_back {
            format!(
                "canary {new} rolled back at step {step}/{total}: {why}; {} keeps serving",
                describe(self.inputs.stable)
            )
        } else {
            format!(
                "canary {new} failed at step {step}/{total}: {why}; autoRollback is off, so it keeps its share until the spec changes"
            )
        };
        rollout.phase = if rolled_back {
            RolloutPhase::RolledBack
        } else {
            RolloutPhase::Failed
        };
        rollout.aborted = Some(AbortedRollout {
            model: self.inputs.new.clone(),
            generation: md.metadata.generation.unwrap_or_default(),
        });
        let action = if rolled_back {
            Action::Abort
        } else {
            Action::Run { replicas: wanted }
        };
        Decision {
            aborted: true,
            ..going(action, rollout, message)
        }
    }

    /// A step whose pods are all ready: hold it for its pause and until the
    /// analysis has `minRequests`, then go to the next step, or promote after
    /// the last.
    fn analyse(&self, mut rollout: RolloutStatus) -> Decision {
        let (new, step, total, asked) = (&self.new, self.step, self.total, self.asked);
        let inputs = self.inputs;
        let since = self.started.clone().unwrap_or_else(|| inputs.now.clone());
        let elapsed = Duration::from_secs(
            inputs
                .now
                .0
                .as_second()
                .saturating_sub(since.0.as_second())
                .max(0) as u64,
        );
        rollout.step_start_time = Some(since);
        let requests = inputs.figures.requests;
        let min_requests = inputs.md.spec.rollout.analysis.min_requests;
        let weight_text = format!("weight {}% (asked {asked}%)", rollout.weight);
        let hold = Action::Run {
            replicas: self.target,
        };
        if elapsed < self.pause {
            rollout.phase = RolloutPhase::Paused;
            let message = format!(
                "canary {new}: step {step}/{total}, {weight_text}, analysing for {}s more ({requests} requests so far)",
                (self.pause - elapsed).as_secs(),
            );
            return going(hold, rollout, message);
        }
        if requests < min_requests as f64 {
            rollout.phase = RolloutPhase::Paused;
            let message = format!(
                "canary {new}: step {step}/{total}, {weight_text}, waiting for traffic: {requests} of {min_requests} requests"
            );
            return going(hold, rollout, message);
        }
        if step < total {
            rollout.step = step + 1;
            rollout.step_start_time = None;
            rollout.phase = RolloutPhase::Progressing;
            let message = format!(
                "canary {new}: step {step}/{total} passed, starting step {}/{total}",
                step + 1
            );
            let next = Action::Run {
                replicas: self.next_pods,
            };
            return going(next, rollout, message);
        }
        let message = format!("canary {new}: every step passed; promoting it to the stable pods");
        going(
            Action::Promote {
                replicas: self.target,
            },
            rollout,
            message,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn md(overlay: serde_json::Value) -> ModelDeployment {
        let mut base = json!({
            "apiVersion": "llmops.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "ns", "generation": 3},
            "spec": {
                "model": {"uri": "file:///models/new"},
                "replicas": {"min": 2, "max": 4},
                "rollout": {"strategy": "Canary",
                            "canary": {"steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "30s"}]},
                            "analysis": {"maxErrorRate": 0.01, "maxP95LatencyMs": 800, "minRequests": 20}}
            }
        });
        if let (Some(base), Some(overlay)) = (base.as_object_mut(), overlay.as_object()) {
            for (k, v) in overlay {
                base.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }

    fn artifact(digest: &str) -> Artifact {
        Artifact {
            uri: format!("file:///models/{digest}"),
            digest: format!("sha256:{digest}"),
        }
    }

    fn canary(wanted: i32, ready: i32, stuck: bool) -> Deployment {
        let conditions = if stuck {
            json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": {"name": "chat-canary", "generation": 1},
            "spec": {"replicas": wanted, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "readyReplicas": ready, "conditions": conditions}
        }))
        .unwrap()
    }

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap())
    }

    fn figures(requests: f64, errors: f64, p95: f64) -> Summary {
        Summary {
            requests,
            server_errors: errors,
            error_rate: (requests > 0.0).then(|| errors / requests),
            p95_latency: Some(p95),
            ..Summary::default()
        }
    }

    fn pass(md: &ModelDeployment, live: Option<&Deployment>, seen: &Summary, now: i64) -> Decision {
        let (stable, new) = (artifact("old"), artifact("new"));
        decide(&Inputs {
            md,
            stable: &stable,
            new: &new,
            stable_replicas: 2,
            stable_ready: 2,
            canary: live,
            canary_model: live.map(|_| &new),
            figures: seen,
            now: &at(now),
        })
    }

    fn with_rollout(step: i32, started: Option<i64>) -> ModelDeployment {
        md(json!({"status": {"rollout": {
            "phase": "Paused", "step": step, "weight": 33,
            "stepStartTime": started.map(at)
        }}}))
    }

    #[test]
    fn replicas_follow_the_weight_and_the_status_tells_the_real_share() {
        assert_eq!(canary_replicas(10, 2, 4), 1);
        assert_eq!(canary_replicas(50, 2, 4), 2);
        assert_eq!(canary_replicas(90, 2, 4), 4);
        assert_eq!(canary_replicas(100, 3, 8), 3);
        assert_eq!(effective_weight(1, 2), 33);
        assert_eq!(effective_weight(1, 3), 25);
        assert_eq!(effective_weight(0, 0), 0);
    }

    #[test]
    fn a_new_model_starts_a_canary_at_step_one() {
        let d = pass(&md(json!({})), None, &Summary::default(), 0);
        assert_eq!(d.action, Action::Run { replicas: 1 });
        assert_eq!((d.rollout.step, d.rollout.steps), (1, 2));
        assert!(!d.aborted);
    }

    #[test]
    fn the_pause_starts_once_the_canary_is_ready_and_holds_the_step() {
        let live = canary(1, 0, false);
        let d = pass(&with_rollout(1, None), Some(&live), &Summary::default(), 0);
        assert!(
            d.message.contains("0/1 canary pod(s) ready"),
            "{}",
            d.message
        );
        assert_eq!(d.rollout.step_start_time, None);
        let live = canary(1, 1, false);
        let d = pass(&with_rollout(1, None), Some(&live), &Summary::default(), 5);
        assert_eq!(d.rollout.phase, RolloutPhase::Paused);
        assert_eq!(d.rollout.step_start_time, Some(at(5)));
        assert_eq!(d.rollout.weight, 33);
    }

    #[test]
    fn a_step_passes_after_its_pause_with_enough_good_requests() {
        let live = canary(1, 1, false);
        let good = figures(40.0, 0.0, 0.2);
        let d = pass(&with_rollout(1, Some(0)), Some(&live), &good, 31);
        assert_eq!(d.rollout.step, 2);
        assert_eq!(d.action, Action::Run { replicas: 2 });
        // The last step promotes.
        let live = canary(2, 2, false);
        let d = pass(&with_rollout(2, Some(0)), Some(&live), &good, 31);
        assert_eq!(d.action, Action::Promote { replicas: 2 });
    }

    #[test]
    fn too_few_requests_wait_and_say_how_many() {
        let live = canary(1, 1, false);
        let d = pass(
            &with_rollout(1, Some(0)),
            Some(&live),
            &figures(7.0, 0.0, 0.1),
            60,
        );
        assert_eq!(d.rollout.step, 1);
        assert!(d.message.contains("7 of 20 requests"), "{}", d.message);
    }

    #[test]
    fn errors_roll_back_as_soon_as_enough_requests_show_them() {
        let live = canary(1, 1, false);
        let d = pass(
            &with_rollout(1, Some(0)),
            Some(&live),
            &figures(40.0, 10.0, 0.1),
            3,
        );
        assert_eq!(d.action, Action::Abort);
        assert!(d.aborted);
        assert_eq!(d.rollout.phase, RolloutPhase::RolledBack);
        assert!(
            d.message.contains("error rate 25% > maxErrorRate 1%"),
            "{}",
            d.message
        );
        assert!(d.message.contains("keeps serving"), "{}", d.message);
        let aborted = d.rollout.aborted.unwrap();
        assert_eq!((aborted.model, aborted.generation), (artifact("new"), 3));
    }

    #[test]
    fn slow_answers_roll_back_with_the_figure_against_its_limit() {
        let live = canary(1, 1, false);
        let d = pass(
            &with_rollout(1, Some(0)),
            Some(&live),
            &figures(40.0, 0.0, 1.2),
            31,
        );
        assert!(
            d.message
                .contains("p95 latency 1200ms > maxP95LatencyMs 800"),
            "{}",
            d.message
        );
    }

    #[test]
    fn canary_pods_that_never_get_ready_are_rolled_back() {
        let live = canary(1, 0, true);
        let d = pass(
            &with_rollout(1, None),
            Some(&live),
            &Summary::default(),
            700,
        );
        assert_eq!(d.action, Action::Abort);
        assert!(
            d.message.contains("did not become ready within 600s"),
            "{}",
            d.message
        );
    }

    #[test]
    fn without_auto_rollback_a_failed_canary_keeps_its_share() {
        let mut m = with_rollout(1, Some(0));
        m.spec.rollout.auto_rollback = false;
        let live = canary(1, 1, false);
        let d = pass(&m, Some(&live), &figures(40.0, 10.0, 0.1), 31);
        assert_eq!(d.action, Action::Run { replicas: 1 });
        assert_eq!(d.rollout.phase, RolloutPhase::Failed);
    }

    #[test]
    fn a_routed_canary_gets_its_steps_weight_once_its_pods_are_ready() {
        let steps: Vec<CanaryStep> =
            serde_json::from_value(json!([{"weight": 10}, {"weight": 50}])).unwrap();
        assert_eq!(routed_weight(&steps, 1, 0, 1), 0);
        assert_eq!(routed_weight(&steps, 1, 1, 1), 10);
        // Pods for step 2 still starting: the step-1 pods serve step 1's weight.
        assert_eq!(routed_weight(&steps, 2, 1, 2), 10);
        assert_eq!(routed_weight(&steps, 2, 2, 2), 50);
    }

    #[test]
    fn with_an_httproute_the_status_reports_the_weight_written_there() {
        let mut m = with_rollout(1, Some(0));
        if let Some(canary) = m.spec.rollout.canary.as_mut() {
            canary.traffic_routing =
                serde_json::from_value(json!({"httpRoute": {"name": "chat"}})).unwrap();
        }
        let live = canary(1, 1, false);
        let d = pass(&m, Some(&live), &Summary::default(), 5);
        assert_eq!(d.rollout.weight, 10, "the step's weight, not 1 pod of 3");
        let starting = canary(1, 0, false);
        let d = pass(&m, Some(&starting), &Summary::default(), 5);
        assert_eq!(d.rollout.weight, 0);
    }

    #[test]
    fn a_rolled_back_model_is_refused_until_the_spec_changes() {
        let rollout = RolloutStatus {
            aborted: Some(AbortedRollout {
                model: artifact("new"),
                generation: 3,
            }),
            ..RolloutStatus::default()
        };
        assert!(refused(Some(&rollout), &artifact("new"), 3));
        assert!(!refused(Some(&rollout), &artifact("new"), 4));
        assert!(!refused(Some(&rollout), &artifact("newer"), 3));
    }
}
