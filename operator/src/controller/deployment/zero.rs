//! Scale to zero: a ModelDeployment with `replicas.min: 0` and
//! `autoscaling.scaleToZeroAfter` runs no pod while nobody asks for it, and
//! the first request wakes it.
//!
//! - **Only behind the gateway.** A request for a deployment without pods has
//!   to be held while one starts; the gateway holds it in the model's bounded
//!   queue and exports the demand on each deployment, which the operator reads
//!   (`--gateway-metrics-url`, [`super::monitor::gateway`]). Without it the
//!   floor stays one replica, and the Ready message says why.
//! - **Idle** is no request anywhere for `scaleToZeroAfter`: none admitted by
//!   the gateway (its counter unchanged), none in flight or queued there, and
//!   none in the pods' own figures (generation requests over the monitoring
//!   window, in flight, queued), so traffic that reaches the pods' Service
//!   without the gateway keeps the deployment up too; so do pods still
//!   starting (the clock runs only while one is ready). The idle clock lives in
//!   the operator's memory and starts again after a restart: a restart never
//!   scales anything to zero early.
//! - **Down to zero** only from one replica (the autoscaler's own floor, after
//!   its stabilization window), with every ready pod's metrics read, the
//!   gateway read, and no canary running.
//! - **Waking**: at zero, requests queued or in flight at the gateway scale the
//!   deployment at once to the replicas they ask for (`inFlightRequests` and
//!   `queueDepth` count them against the target, at least one). The wake loop
//!   ([`super::wake`]) reads the gateway every second and reconciles each
//!   deployment at zero with demand, so a request waits about a second plus
//!   its pod's start.
//!
//! Everything here is pure: [`plan`] takes the autoscaler's plan, what the
//! gateway said and the idle clock.

use std::time::Duration;

use llmops_crds::ModelDeployment;
use llmops_crds::deployment::ScalingMetric;

use super::autoscale::{self, Plan};
use super::monitor::Observation;
use super::monitor::gateway::Demand;

/// How long without requests before the deployment goes to zero, when its spec
/// asks for scale to zero (`replicas.min: 0` and a valid `scaleToZeroAfter`).
pub fn after(md: &ModelDeployment) -> Option<Duration> {
    if md.spec.replicas.min != 0 || !autoscale::active(md) {
        return None;
    }
    md.spec
        .autoscaling
        .scale_to_zero_after
        .as_deref()
        .and_then(autoscale::parse_duration)
}

/// What the gateway said of this deployment.
#[derive(Clone, Debug, PartialEq)]
pub enum Gateway {
    /// The operator has no `--gateway-metrics-url`.
    Unconfigured,
    /// The gateway could not be read (why).
    Unreadable(String),
    /// Its demand (zero when it has seen no request for the deployment).
    Read(Demand),
}

/// When the deployment was last asked for, and the gateway's counter then.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IdleClock {
    /// Last time (on [`super::monitor::now`]'s clock) a pass saw a request.
    last_busy: Option<f64>,
    /// The gateway's admitted-requests counter at the last pass.
    admitted: Option<f64>,
}

impl IdleClock {
    /// Records what this pass saw at `now` and returns how long the deployment
    /// has been idle. The first pass starts the clock.
    pub fn tick(&mut self, observation: &Observation, gateway: &Gateway, now: f64) -> Duration {
        let demand = match gateway {
            Gateway::Read(demand) => Some(demand),
            _ => None,
        };
        let pods = &observation.stable;
        // Pods still starting (or none yet) are not idleness: the clock starts
        // once one is ready to be asked.
        let asked = observation.ready == 0
            || pods.in_flight > 0.0
            || pods.queue_depth > 0.0
            || pods.requests_per_second.is_some_and(|r| r > 0.0)
            || observation.canary.pods > 0
            || demand.is_some_and(|d| {
                d.waiting() > 0.0 || self.admitted.is_some_and(|a| a != d.admitted)
            });
        if let Some(demand) = demand {
            self.admitted = Some(demand.admitted);
        }
        if asked || self.last_busy.is_none() {
            self.last_busy = Some(now);
        }
        Duration::from_secs_f64((now - self.last_busy.unwrap_or(now)).max(0.0))
    }
}

/// What scale to zero makes of the autoscaler's `plan` for a deployment with
/// `current` live replicas (none: no Deployment yet), idle for `idle`; none
/// when the spec does not ask for scale to zero.
pub fn plan(
    md: &ModelDeployment,
    current: Option<i32>,
    observation: &Observation,
    gateway: &Gateway,
    idle: Duration,
    scaling: Plan,
) -> Plan {
    let Some(after) = after(md) else {
        return scaling;
    };
    let after_text = text(after);
    let demand = match gateway {
        Gateway::Unconfigured => {
            return with_note(
                scaling,
                "scale to zero needs the gateway (the operator's --gateway-metrics-url, chart gateway.enabled): the floor is one replica",
            );
        }
        Gateway::Unreadable(why) => Err(why),
        Gateway::Read(demand) => Ok(demand),
    };
    if current == Some(0) {
        return match demand {
            Ok(demand) if demand.waiting() > 0.0 => wake(md, demand),
            Ok(_) => Plan {
                replicas: 0,
                note: format!(
                    "scaled to zero after {after_text} without requests; the next request at the gateway wakes it"
                ),
                change: None,
            },
            Err(why) => Plan {
                replicas: 0,
                note: format!("scaled to zero; requests held at the gateway cannot be seen: {why}"),
                change: None,
            },
        };
    }
    if let Err(why) = demand {
        return with_note(
            scaling,
            &format!("scale to zero waits until the gateway's metrics can be read ({why})"),
        );
    }
    let every_pod_read = observation.ready > 0 && observation.answered == observation.ready;
    if current == Some(1) && scaling.replicas <= 1 && every_pod_read && idle >= after {
        return Plan {
            replicas: 0,
            note: format!(
                "scaled to zero after {after_text} without requests; the next request at the gateway wakes it"
            ),
            change: Some(format!(
                "no requests for {} (autoscaling.scaleToZeroAfter {after_text}): 1 → 0",
                text(idle)
            )),
        };
    }
    with_note(
        scaling,
        &format!("scales to zero after {after_text} without requests"),
    )
}

/// Scale up from zero for `demand`: the replicas the held requests ask for.
fn wake(md: &ModelDeployment, demand: &Demand) -> Plan {
    let policy = autoscale::policy(md);
    let waiting = demand.waiting();
    let replicas = match md.spec.autoscaling.metric {
        ScalingMetric::InFlightRequests | ScalingMetric::QueueDepth => {
            let load = autoscale::Load {
                total: waiting,
                scraped: 1,
                skipped: 0,
            };
            autoscale::recommend(&load, &policy)
        }
        // A rate is only known once pods serve.
        ScalingMetric::TokensPerSecond => policy.min,
    };
    let replicas = replicas.max(1);
    Plan {
        replicas,
        note: format!("waking from zero for {waiting} request(s) held at the gateway"),
        change: Some(format!(
            "{waiting} request(s) held at the gateway: 0 → {replicas}"
        )),
    }
}

fn with_note(mut plan: Plan, note: &str) -> Plan {
    plan.note.push_str("; ");
    plan.note.push_str(note);
    plan
}

/// A duration for messages: `90s`, `10m`, `1h30m`.
fn text(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::deployment::monitor::Summary;

    fn md(min: i32, max: i32, after: Option<&str>) -> ModelDeployment {
        let mut spec = serde_json::json!({
            "model": {"uri": "s3://m/model"},
            "replicas": {"min": min, "max": max},
            "autoscaling": {"metric": "inFlightRequests", "target": 2.0},
        });
        if let Some(after) = after {
            spec["autoscaling"]["scaleToZeroAfter"] = after.into();
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "llmops.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "team"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn scaling(replicas: i32) -> Plan {
        Plan {
            replicas,
            note: "autoscaling on inFlightRequests".into(),
            change: None,
        }
    }

    fn quiet(ready: usize) -> Observation {
        Observation {
            stable: Summary {
                pods: ready,
                requests_per_second: Some(0.0),
                ..Summary::default()
            },
            ready,
            answered: ready,
            ..Observation::default()
        }
    }

    fn read(admitted: f64, in_flight: f64, queued: f64) -> Gateway {
        Gateway::Read(Demand {
            admitted,
            in_flight,
            queued,
        })
    }

    const TEN_MIN: Duration = Duration::from_secs(600);

    #[test]
    fn only_a_zero_floor_with_a_delay_asks_for_it() {
        assert_eq!(after(&md(0, 2, Some("10m"))), Some(TEN_MIN));
        assert_eq!(after(&md(1, 2, Some("10m"))), None);
        assert_eq!(after(&md(0, 2, None)), None);
        // A fixed count is not autoscaled.
        assert_eq!(after(&md(1, 1, Some("10m"))), None);
    }

    #[test]
    fn an_idle_deployment_goes_from_one_replica_to_zero() {
        let md = md(0, 3, Some("10m"));
        let plan = plan(
            &md,
            Some(1),
            &quiet(1),
            &read(5.0, 0.0, 0.0),
            TEN_MIN,
            scaling(1),
        );
        assert_eq!(plan.replicas, 0);
        assert_eq!(
            plan.change.as_deref(),
            Some("no requests for 10m (autoscaling.scaleToZeroAfter 10m): 1 → 0")
        );
        assert!(
            plan.note
                .contains("the next request at the gateway wakes it")
        );
    }

    #[test]
    fn it_stays_up_while_idle_for_less_or_not_everything_is_known() {
        let md = md(0, 3, Some("10m"));
        let gateway = read(5.0, 0.0, 0.0);
        let short = Duration::from_secs(599);
        let stays = |p: Plan| assert_eq!((p.replicas, p.change), (1, None));
        stays(plan(&md, Some(1), &quiet(1), &gateway, short, scaling(1)));
        // A pod whose metrics did not answer may be serving.
        let partial = Observation {
            answered: 0,
            ..quiet(1)
        };
        stays(plan(&md, Some(1), &partial, &gateway, TEN_MIN, scaling(1)));
        // The autoscaler wants more than one: its plan stands.
        let busy = plan(&md, Some(2), &quiet(2), &gateway, TEN_MIN, scaling(2));
        assert_eq!(busy.replicas, 2);
        // Two replicas go down to one first, by the autoscaler's own rule.
        let two = plan(&md, Some(2), &quiet(2), &gateway, TEN_MIN, scaling(1));
        assert_eq!(two.replicas, 1);
        // The gateway unread: no request can be ruled out.
        let unread = Gateway::Unreadable("connection refused".into());
        let p = plan(&md, Some(1), &quiet(1), &unread, TEN_MIN, scaling(1));
        assert_eq!(p.replicas, 1);
        assert!(p.note.contains("connection refused"), "{}", p.note);
    }

    #[test]
    fn without_the_gateway_the_floor_is_one_and_the_note_says_why() {
        let md = md(0, 3, Some("10m"));
        let p = plan(
            &md,
            Some(1),
            &quiet(1),
            &Gateway::Unconfigured,
            TEN_MIN,
            scaling(1),
        );
        assert_eq!(p.replicas, 1);
        assert!(p.note.contains("--gateway-metrics-url"), "{}", p.note);
    }

    #[test]
    fn requests_held_at_the_gateway_wake_it_with_the_replicas_they_ask_for() {
        let md = md(0, 3, Some("10m"));
        let none = Observation::default();
        let one = plan(
            &md,
            Some(0),
            &none,
            &read(7.0, 1.0, 1.0),
            TEN_MIN,
            scaling(1),
        );
        assert_eq!(one.replicas, 1);
        assert_eq!(
            one.change.as_deref(),
            Some("1 request(s) held at the gateway: 0 → 1")
        );
        // Five at a target of two per replica.
        let three = plan(
            &md,
            Some(0),
            &none,
            &read(7.0, 5.0, 5.0),
            TEN_MIN,
            scaling(1),
        );
        assert_eq!(three.replicas, 3);
        // Nothing held: it stays at zero, whatever the autoscaler's floor says.
        let stays = plan(
            &md,
            Some(0),
            &none,
            &read(7.0, 0.0, 0.0),
            TEN_MIN,
            scaling(1),
        );
        assert_eq!((stays.replicas, stays.change), (0, None));
        let unread = Gateway::Unreadable("timed out".into());
        assert_eq!(
            plan(&md, Some(0), &none, &unread, TEN_MIN, scaling(1)).replicas,
            0
        );
    }

    #[test]
    fn the_idle_clock_restarts_on_any_request() {
        let mut clock = IdleClock::default();
        let gateway = read(3.0, 0.0, 0.0);
        assert_eq!(clock.tick(&quiet(1), &gateway, 100.0), Duration::ZERO);
        assert_eq!(
            clock.tick(&quiet(1), &gateway, 160.0),
            Duration::from_secs(60)
        );
        // A request admitted at the gateway since the last pass.
        assert_eq!(
            clock.tick(&quiet(1), &read(4.0, 0.0, 0.0), 170.0),
            Duration::ZERO
        );
        assert_eq!(
            clock.tick(&quiet(1), &read(4.0, 0.0, 0.0), 200.0),
            Duration::from_secs(30)
        );
        // Requests the pods saw without the gateway.
        let served = Observation {
            stable: Summary {
                requests_per_second: Some(0.2),
                pods: 1,
                ..Summary::default()
            },
            ready: 1,
            answered: 1,
            ..Observation::default()
        };
        assert_eq!(
            clock.tick(&served, &read(4.0, 0.0, 0.0), 230.0),
            Duration::ZERO
        );
        // One in flight at the gateway.
        assert_eq!(
            clock.tick(&quiet(1), &read(4.0, 1.0, 0.0), 300.0),
            Duration::ZERO
        );
        assert_eq!(
            clock.tick(&quiet(1), &read(4.0, 0.0, 0.0), 330.0),
            Duration::from_secs(30)
        );
        // No ready pod (starting, or restarting): not idle.
        assert_eq!(
            clock.tick(&quiet(0), &read(4.0, 0.0, 0.0), 400.0),
            Duration::ZERO
        );
        assert_eq!(
            clock.tick(&quiet(1), &read(4.0, 0.0, 0.0), 410.0),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn durations_read_as_the_spec_writes_them() {
        assert_eq!(text(Duration::from_secs(600)), "10m");
        assert_eq!(text(Duration::from_secs(5400)), "1h30m");
        assert_eq!(text(Duration::from_secs(45)), "45s");
        assert_eq!(text(Duration::from_millis(500)), "500ms");
    }
}
