//! Autoscale: the replica count of a ModelDeployment whose `replicas.max`
//! exceeds `replicas.min`, from the figures the monitor reads off the serving
//! pods ([`super::monitor`]).
//!
//! The signal is summed over the stable pods: `inFlightRequests` and
//! `queueDepth` are the pods' gauges at the last scrape, `tokensPerSecond` the
//! generated-token rate over the monitoring window. Each pass recommends
//! `ceil(total / target)` replicas within `[max(replicas.min, 1), replicas.max]`:
//! - a recommendation above the current count is applied at once;
//! - below it, the count follows the Horizontal Pod Autoscaler's rule: the
//!   highest recommendation over the last `autoscaling.stabilizationWindow`, so a
//!   brief lull does not remove pods that the next burst needs. The
//!   recommendations live in the operator's memory; until they cover a whole
//!   window (after the operator starts), scale-downs wait;
//! - a scale-down also waits until every ready pod's metrics answered, and
//!   nothing scales without data (no ready pod, none answered, no rate yet);
//!   only the spec's bounds move the count then;
//! - the floor is one replica: going to zero and back is [`super::zero`]'s part,
//!   on top of the plan made here.
//!
//! Everything here is pure: [`plan`] takes the observation, the current count,
//! the remembered recommendations and the clock.

use std::collections::VecDeque;
use std::time::Duration;

use llmops_crds::ModelDeployment;
use llmops_crds::deployment::ScalingMetric;

use super::monitor::Observation;

/// Whether the spec asks for a range of replicas.
pub fn active(md: &ModelDeployment) -> bool {
    md.spec.replicas.max > md.spec.replicas.min
}

/// The fewest replicas the load decides: `replicas.min`, at least one (zero is
/// decided by [`super::zero`]).
pub fn floor(md: &ModelDeployment) -> i32 {
    md.spec.replicas.min.max(1)
}

/// `autoscaling.metric` as the spec spells it.
pub fn metric_name(metric: ScalingMetric) -> &'static str {
    match metric {
        ScalingMetric::InFlightRequests => "inFlightRequests",
        ScalingMetric::QueueDepth => "queueDepth",
        ScalingMetric::TokensPerSecond => "tokensPerSecond",
    }
}

/// How messages name a unit of `metric`.
fn unit(metric: ScalingMetric) -> &'static str {
    match metric {
        ScalingMetric::InFlightRequests => "in-flight requests",
        ScalingMetric::QueueDepth => "queued requests",
        ScalingMetric::TokensPerSecond => "tokens/s",
    }
}

/// The load `metric` measures over the stable pods, or none without data.
pub fn load(metric: ScalingMetric, observation: &Observation) -> Option<Load> {
    let stable = &observation.stable;
    if stable.pods == 0 {
        return None;
    }
    let total = match metric {
        ScalingMetric::InFlightRequests => stable.in_flight,
        ScalingMetric::QueueDepth => stable.queue_depth,
        ScalingMetric::TokensPerSecond => stable.tokens_per_second?,
    };
    Some(Load {
        total,
        scraped: observation.answered,
        skipped: observation.ready.saturating_sub(observation.answered),
    })
}

/// A duration as the CRD spells it: `5m`, `1h30m`, `10.5s`, `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (seconds, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        total += number * seconds;
        rest = &rest[len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The signal summed over the pods that answered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    pub total: f64,
    /// Ready pods that answered.
    pub scraped: usize,
    /// Ready pods that did not (unreachable, timed out, unreadable text).
    pub skipped: usize,
}

/// What the spec asks of the autoscaler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub unit: &'static str,
    pub target: f64,
    pub min: i32,
    pub max: i32,
    pub window: Duration,
}

/// What the stabilization window allows a scale-down to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stabilized {
    /// The highest recommendation over the whole window.
    Highest(i32),
    /// The recommendations cover only `seen` of the window so far.
    Covering { seen: Duration },
}

/// The replica count to run, and why it changed or why a change waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub replicas: i32,
    /// The reason, when `replicas` differs from the current count.
    pub change: Option<String>,
    /// Why a scale-down the load asks for does not happen yet.
    pub held: Option<String>,
}

/// A number for messages: at most two decimals.
fn number(x: f64) -> String {
    format!("{}", (x * 100.0).round() / 100.0)
}

/// The replicas `load` asks for within the spec's bounds.
pub fn recommend(load: &Load, policy: &Policy) -> i32 {
    let (min, max) = (policy.min, policy.max.max(policy.min));
    // Clamped as a float first, so the cast cannot overflow.
    (load.total / policy.target)
        .ceil()
        .clamp(f64::from(min), f64::from(max)) as i32
}

/// The replicas for `load` (none: no data) with `current` replicas running and
/// what the stabilization window allows.
pub fn decide(
    load: Option<&Load>,
    current: i32,
    policy: &Policy,
    stabilized: Stabilized,
) -> Decision {
    let (min, max) = (policy.min, policy.max.max(policy.min));
    let unchanged = Decision {
        replicas: current,
        change: None,
        held: None,
    };
    let bounded = current.clamp(min, max);
    let spec_bound = |to: i32| Decision {
        replicas: to,
        change: Some(if to > current {
            format!("replicas.min is {min}: {current} → {to}")
        } else {
            format!("replicas.max is {max}: {current} → {to}")
        }),
        held: None,
    };
    let Some(load) = load.filter(|l| l.scraped > 0 && l.total.is_finite() && l.total >= 0.0) else {
        // Never scale on missing data; only the spec's bounds move the count.
        return if bounded == current {
            unchanged
        } else {
            spec_bound(bounded)
        };
    };
    let needed = (load.total / policy.target).ceil();
    let wanted = recommend(load, policy);
    if wanted == current {
        return unchanged;
    }
    let per_replica = number(load.total / f64::from(current.max(1)));
    let target = number(policy.target);
    let unit = policy.unit;
    if wanted > current {
        if needed <= f64::from(current) {
            return spec_bound(wanted);
        }
        let capped = if needed > f64::from(max) {
            " (replicas.max)"
        } else {
            ""
        };
        return Decision {
            replicas: wanted,
            change: Some(format!(
                "{per_replica} {unit} per replica > target {target}: {current} → {wanted}{capped}"
            )),
            held: None,
        };
    }
    if needed >= f64::from(current) {
        return spec_bound(wanted);
    }
    let to = match scale_down_to(load, current, wanted, policy, stabilized) {
        Ok(to) => to,
        Err(why) => {
            return Decision {
                held: Some(why),
                ..unchanged
            };
        }
    };
    let floored = if needed < f64::from(min) && to == min {
        " (replicas.min)"
    } else {
        ""
    };
    Decision {
        replicas: to,
        change: Some(format!(
            "{per_replica} {unit} per replica < target {target}: {current} → {to}{floored}"
        )),
        held: None,
    }
}

/// Where a scale-down to `wanted` may go now — the highest recommendation over
/// the stabilization window, once the window is covered and every ready pod
/// answered — or why it waits.
fn scale_down_to(
    load: &Load,
    current: i32,
    wanted: i32,
    policy: &Policy,
    stabilized: Stabilized,
) -> Result<i32, String> {
    if load.skipped > 0 {
        return Err(format!(
            "scale-down to {wanted} waits until every ready pod's metrics answer"
        ));
    }
    let to = match stabilized {
        Stabilized::Covering { seen } => {
            return Err(format!(
                "scale-down to {wanted} waits for a whole stabilization window of load ({}s of {}s seen)",
                seen.as_secs(),
                policy.window.as_secs()
            ));
        }
        Stabilized::Highest(highest) => highest
            .max(wanted)
            .clamp(policy.min, policy.max.max(policy.min)),
    };
    if to >= current {
        return Err(format!(
            "scale-down to {wanted} held by the stabilization window (highest recommendation in the last {}s: {to})",
            policy.window.as_secs()
        ));
    }
    Ok(to)
}

/// Remembers `recommendation` made at `now` and answers what the window allows:
/// the highest recommendation over it once the remembered ones cover it.
/// Recommendations older than the window are forgotten (the newest of those
/// is kept: it marks that the window is covered).
pub fn stabilize(
    recommendations: &mut VecDeque<(f64, i32)>,
    recommendation: Option<i32>,
    now: f64,
    window: Duration,
) -> Stabilized {
    if let Some(r) = recommendation {
        recommendations.push_back((now, r));
    }
    let start = now - window.as_secs_f64();
    while recommendations.len() > 1 && recommendations[1].0 <= start {
        recommendations.pop_front();
    }
    let Some(&(oldest, _)) = recommendations.front() else {
        return Stabilized::Covering {
            seen: Duration::ZERO,
        };
    };
    if oldest > start {
        return Stabilized::Covering {
            seen: Duration::from_secs_f64((now - oldest).max(0.0)),
        };
    }
    let highest = recommendations
        .iter()
        .filter(|(t, _)| *t > start)
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(i32::MIN);
    Stabilized::Highest(highest)
}

/// What a pass runs: the replica count, the note for the Ready message, and the
/// reason when the count changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub replicas: i32,
    pub note: String,
    pub change: Option<String>,
}

/// The note of a ModelDeployment whose range is not being acted on this pass.
pub fn idle_note(md: &ModelDeployment) -> Option<String> {
    active(md).then(|| {
        format!(
            "autoscaling on {} resumes once the spec can be applied",
            metric_name(md.spec.autoscaling.metric)
        )
    })
}

/// The policy the spec asks for.
pub fn policy(md: &ModelDeployment) -> Policy {
    let spec = &md.spec.autoscaling;
    Policy {
        unit: unit(spec.metric),
        target: spec.target,
        min: floor(md),
        max: md.spec.replicas.max,
        window: parse_duration(&spec.stabilization_window).unwrap_or(Duration::from_secs(300)),
    }
}

/// Decides the replica count of an autoscaled ModelDeployment from what the
/// monitor observed, with `current` replicas in the live Deployment (none: not
/// created yet), remembering the recommendation at `now`.
pub fn plan(
    md: &ModelDeployment,
    current: Option<i32>,
    observation: &Observation,
    recommendations: &mut VecDeque<(f64, i32)>,
    now: f64,
) -> Plan {
    let policy = policy(md);
    let metric = md.spec.autoscaling.metric;
    let head = format!(
        "autoscaling on {} (target {} per replica, {}-{} replicas)",
        metric_name(metric),
        number(policy.target),
        policy.min,
        policy.max
    );
    let Some(current) = current else {
        return Plan {
            replicas: policy.min,
            note: format!("{head}: starting at {}", policy.min),
            change: None,
        };
    };
    let load = load(metric, observation);
    let stabilized = stabilize(
        recommendations,
        load.as_ref().map(|l| recommend(l, &policy)),
        now,
        policy.window,
    );
    let decision = decide(load.as_ref(), current, &policy, stabilized);
    let mut note = head;
    if observation.ready == 0 {
        note.push_str(&format!(
            ": metrics unavailable (no ready pod); running {} replica(s)",
            decision.replicas
        ));
    } else if observation.answered == 0 {
        note.push_str(&format!(
            ": metrics unavailable (0 of {} ready pod(s) answered); running {} replica(s)",
            observation.ready, decision.replicas
        ));
    } else if load.is_none() {
        note.push_str(&format!(
            ": waiting for a second scrape to measure {}; running {} replica(s)",
            metric_name(metric),
            decision.replicas
        ));
    } else if observation.answered < observation.ready {
        note.push_str(&format!(
            "; metrics of {} of {} ready pod(s) unavailable",
            observation.ready - observation.answered,
            observation.ready
        ));
    }
    if let Some(held) = &decision.held {
        note.push_str(&format!("; {held}"));
    }
    Plan {
        replicas: decision.replicas,
        note,
        change: decision.change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::deployment::monitor::Summary;

    fn policy(min: i32, max: i32) -> Policy {
        Policy {
            unit: "in-flight requests",
            target: 2.0,
            min,
            max,
            window: Duration::from_secs(300),
        }
    }

    fn load(total: f64, scraped: usize) -> Load {
        Load {
            total,
            scraped,
            skipped: 0,
        }
    }

    const COVERING: Stabilized = Stabilized::Covering {
        seen: Duration::from_secs(60),
    };

    #[test]
    fn durations_parse_as_the_crd_spells_them() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn every_metric_reads_its_figure_of_the_stable_pods() {
        let observation = Observation {
            stable: Summary {
                in_flight: 7.0,
                queue_depth: 3.0,
                tokens_per_second: Some(420.0),
                pods: 2,
                ..Summary::default()
            },
            ready: 3,
            answered: 2,
            ..Observation::default()
        };
        let read = |m| super::load(m, &observation).map(|l| (l.total, l.scraped, l.skipped));
        assert_eq!(read(ScalingMetric::InFlightRequests), Some((7.0, 2, 1)));
        assert_eq!(read(ScalingMetric::QueueDepth), Some((3.0, 2, 1)));
        assert_eq!(read(ScalingMetric::TokensPerSecond), Some((420.0, 2, 1)));
        // A rate needs two scrapes; gauges need one pod that answered.
        let first = Observation {
            stable: Summary {
                pods: 1,
                ..Summary::default()
            },
            ready: 1,
            answered: 1,
            ..Observation::default()
        };
        assert!(super::load(ScalingMetric::TokensPerSecond, &first).is_none());
        assert!(super::load(ScalingMetric::InFlightRequests, &Observation::default()).is_none());
    }

    #[test]
    fn load_above_target_scales_up_at_once() {
        let d = decide(Some(&load(6.0, 2)), 2, &policy(1, 8), COVERING);
        assert_eq!(d.replicas, 3);
        assert_eq!(
            d.change.as_deref(),
            Some("3 in-flight requests per replica > target 2: 2 → 3")
        );
    }

    #[test]
    fn a_scale_up_stops_at_max() {
        let d = decide(Some(&load(40.0, 2)), 2, &policy(1, 4), COVERING);
        assert_eq!(d.replicas, 4);
        assert!(d.change.unwrap().ends_with("(replicas.max)"));
    }

    #[test]
    fn a_scale_down_goes_to_the_highest_recommendation_of_the_window() {
        let d = decide(
            Some(&load(0.0, 3)),
            3,
            &policy(1, 4),
            Stabilized::Highest(1),
        );
        assert_eq!(d.replicas, 1);
        assert_eq!(
            d.change.as_deref(),
            Some("0 in-flight requests per replica < target 2: 3 → 1 (replicas.min)")
        );
        // A burst two minutes ago asked for 2: the count goes no lower.
        let d = decide(
            Some(&load(0.0, 3)),
            3,
            &policy(1, 4),
            Stabilized::Highest(2),
        );
        assert_eq!(d.replicas, 2);
        // The burst asked for all 3: held.
        let d = decide(
            Some(&load(0.0, 3)),
            3,
            &policy(1, 4),
            Stabilized::Highest(3),
        );
        assert_eq!((d.replicas, d.change), (3, None));
        assert!(d.held.unwrap().contains("highest recommendation"));
    }

    #[test]
    fn a_scale_down_waits_until_the_window_is_covered() {
        let d = decide(Some(&load(1.0, 3)), 3, &policy(1, 4), COVERING);
        assert_eq!((d.replicas, d.change), (3, None));
        assert!(d.held.unwrap().contains("60s of 300s"));
    }

    #[test]
    fn a_scale_down_waits_for_every_ready_pod() {
        let partial = Load {
            total: 0.0,
            scraped: 1,
            skipped: 1,
        };
        let d = decide(Some(&partial), 2, &policy(1, 4), Stabilized::Highest(1));
        assert_eq!((d.replicas, d.change), (2, None));
        assert!(d.held.is_some());
        // A scale-up on partial data still goes.
        let busy = Load {
            total: 9.0,
            ..partial
        };
        assert_eq!(decide(Some(&busy), 2, &policy(1, 8), COVERING).replicas, 5);
    }

    #[test]
    fn no_data_keeps_the_count() {
        let none = decide(None, 3, &policy(1, 4), Stabilized::Highest(1));
        assert_eq!(
            none,
            Decision {
                replicas: 3,
                change: None,
                held: None
            }
        );
        let nobody = decide(
            Some(&load(0.0, 0)),
            3,
            &policy(1, 4),
            Stabilized::Highest(1),
        );
        assert_eq!((nobody.replicas, nobody.change), (3, None));
    }

    #[test]
    fn the_spec_bounds_move_the_count_even_without_data() {
        let raised = decide(None, 1, &policy(2, 4), COVERING);
        assert_eq!(raised.replicas, 2);
        assert_eq!(raised.change.as_deref(), Some("replicas.min is 2: 1 → 2"));
        let lowered = decide(Some(&load(20.0, 6)), 6, &policy(1, 4), COVERING);
        assert_eq!(lowered.replicas, 4);
        assert_eq!(lowered.change.as_deref(), Some("replicas.max is 4: 6 → 4"));
    }

    #[test]
    fn load_at_target_keeps_the_count() {
        let d = decide(Some(&load(4.0, 2)), 2, &policy(1, 4), COVERING);
        assert_eq!((d.replicas, d.change, d.held), (2, None, None));
    }

    #[test]
    fn the_window_remembers_the_highest_recommendation() {
        let window = Duration::from_secs(60);
        let mut recs = VecDeque::new();
        assert_eq!(
            stabilize(&mut recs, Some(4), 0.0, window),
            Stabilized::Covering {
                seen: Duration::ZERO
            }
        );
        assert_eq!(
            stabilize(&mut recs, Some(1), 30.0, window),
            Stabilized::Covering {
                seen: Duration::from_secs(30)
            }
        );
        // At 60 s the window (0, 60] holds 1 and 2; the 4 at 0 s only marks coverage.
        assert_eq!(
            stabilize(&mut recs, Some(2), 60.0, window),
            Stabilized::Highest(2)
        );
        // Missing data adds nothing but time moves on.
        assert_eq!(
            stabilize(&mut recs, None, 100.0, window),
            Stabilized::Highest(2)
        );
        assert_eq!(
            stabilize(&mut recs, Some(1), 125.0, window),
            Stabilized::Highest(1)
        );
        assert!(recs.len() <= 3);
    }
}
