//! Leader election on a `coordination.k8s.io/v1` Lease, using only get, create and
//! update (all the chart's Role grants). Updates carry the resourceVersion read, so
//! two candidates racing for an expired Lease cannot both win.
//!
//! The decisions are pure functions of the Lease, the clock and our identity; the
//! [`Elector`] only performs the API calls they ask for.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::time::{Instant, sleep, sleep_until};

use super::stop::Stop;

/// Timing of the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a Lease stays valid after its last renewal.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// A leader that has not renewed for this long stops its controllers; shorter than
    /// `duration`, so it stops before a standby may take over.
    pub renew_deadline: Duration,
    /// How often a standby looks at the Lease.
    pub retry_every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// What a candidate should do after reading the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it holding it.
    Create,
    /// The Lease is free or expired: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a valid Lease: look again after `retry_after`.
    Wait {
        holder: String,
        retry_after: Duration,
    },
}

/// Decide from the Lease (if any) at wall-clock `now`.
pub fn decide(
    lease: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    timing: &LeaseTiming,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    match expires_at(spec, timing) {
        Some(expiry) if expiry > now => {
            let until_expiry = Duration::try_from(expiry.duration_since(now)).unwrap_or_default();
            // Look again just after it would expire, if that is sooner than the usual
            // retry, so a dead leader is replaced within the lease duration.
            let retry_after = timing
                .retry_every
                .min(until_expiry + Duration::from_millis(100));
            Decision::Wait {
                holder: holder.to_string(),
                retry_after,
            }
        }
        _ => Decision::Acquire,
    }
}

fn expires_at(spec: &LeaseSpec, timing: &LeaseTiming) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let seconds = spec
        .lease_duration_seconds
        .map_or(timing.duration.as_secs() as i64, i64::from);
    renewed.checked_add(SignedDuration::from_secs(seconds)).ok()
}

/// The Lease spec after `decision` (Create, Acquire or Renew) by `identity` at `now`.
pub fn claimed(
    current: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    timing: &LeaseTiming,
) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    let already_ours = spec.holder_identity.as_deref() == Some(identity);
    if !already_ours {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.map_or(0, |n| n + 1));
    }
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(timing.duration.as_secs() as i32);
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// The Lease spec after `identity` steps down: no holder, so a standby takes over
/// at its next look instead of waiting for expiry.
pub fn released(current: &LeaseSpec, identity: &str) -> Option<LeaseSpec> {
    (current.holder_identity.as_deref() == Some(identity)).then(|| LeaseSpec {
        holder_identity: None,
        ..current.clone()
    })
}

/// Why a leader stopped leading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reign {
    /// Shutdown was requested; the Lease should be released.
    Shutdown,
    /// The Lease could not be renewed in time or was taken over.
    Lost,
}

/// A candidate for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: LeaseTiming) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            timing,
        }
    }

    /// Wait until this candidate leads; `false` when `stop` fired first.
    pub async fn acquire(&self, stop: &Stop) -> bool {
        tracing::info!(identity = %self.identity, lease = %self.name, "standing by for the leader Lease");
        loop {
            let retry_after = match self.try_claim().await {
                Ok(None) => return true,
                Ok(Some(retry_after)) => retry_after,
                Err(err) => {
                    tracing::warn!(error = %err, lease = %self.name, "failed to read or claim the leader Lease");
                    self.timing.retry_every
                }
            };
            tokio::select! {
                () = stop.wait() => return false,
                () = sleep(retry_after) => {}
            }
        }
    }

    /// Renew the Lease until `stop` fires or renewal fails for `renew_deadline`.
    pub async fn hold(&self, stop: &Stop) -> Reign {
        let mut last_renewed = Instant::now();
        loop {
            let next = Instant::now() + self.timing.renew_every;
            tokio::select! {
                () = stop.wait() => return Reign::Shutdown,
                () = sleep_until(next) => {}
            }
            loop {
                match self.try_claim().await {
                    Ok(None) => {
                        last_renewed = Instant::now();
                        break;
                    }
                    Ok(Some(_)) => {
                        tracing::warn!(lease = %self.name, "the leader Lease was taken over");
                        return Reign::Lost;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, lease = %self.name, "failed to renew the leader Lease")
                    }
                }
                if last_renewed.elapsed() >= self.timing.renew_deadline {
                    return Reign::Lost;
                }
                tokio::select! {
                    () = stop.wait() => return Reign::Shutdown,
                    () = sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// Step down: clear the holder if it is still us.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease
            .spec
            .as_ref()
            .and_then(|spec| released(spec, &self.identity))
        else {
            return Ok(());
        };
        lease.spec = Some(spec);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }

    /// One look at the Lease: `None` when we now hold it, else how long to wait.
    async fn try_claim(&self) -> Result<Option<Duration>, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let spec = current.as_ref().and_then(|lease| lease.spec.clone());
        let spec = spec.as_ref();
        let now = Timestamp::now();
        match decide(spec, &self.identity, now, &self.timing) {
            Decision::Wait {
                holder,
                retry_after,
            } => {
                tracing::debug!(%holder, "standing by");
                Ok(Some(retry_after))
            }
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(claimed(None, &self.identity, now, &self.timing)),
                };
                self.api.create(&PostParams::default(), &lease).await?;
                tracing::info!(lease = %self.name, "acquired the leader Lease");
                Ok(None)
            }
            Decision::Acquire | Decision::Renew => {
                let mut lease = current.expect("decide returns Create without a Lease");
                let acquiring =
                    spec.and_then(|s| s.holder_identity.as_deref()) != Some(self.identity.as_str());
                lease.spec = Some(claimed(spec, &self.identity, now, &self.timing));
                // The resourceVersion read above makes this a compare-and-swap.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?;
                if acquiring {
                    tracing::info!(lease = %self.name, "acquired the leader Lease");
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(t(0))),
            renew_time: Some(MicroTime(t(renewed))),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn no_lease_means_create() {
        assert_eq!(
            decide(None, "a", t(0), &LeaseTiming::default()),
            Decision::Create
        );
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&held_by("a", 0)), "a", t(3), &LeaseTiming::default()),
            Decision::Renew
        );
    }

    #[test]
    fn a_valid_foreign_lease_means_wait_until_about_expiry() {
        let timing = LeaseTiming::default();
        match decide(Some(&held_by("b", 0)), "a", t(5), &timing) {
            Decision::Wait {
                holder,
                retry_after,
            } => {
                assert_eq!(holder, "b");
                assert_eq!(retry_after, timing.retry_every);
            }
            other => panic!("{other:?}"),
        }
        // One second before expiry: look again just after it.
        match decide(Some(&held_by("b", 0)), "a", t(14), &timing) {
            Decision::Wait { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_millis(1100))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_expired_or_released_lease_is_acquired() {
        let timing = LeaseTiming::default();
        assert_eq!(
            decide(Some(&held_by("b", 0)), "a", t(15), &timing),
            Decision::Acquire
        );
        let released = released(&held_by("b", 0), "b").unwrap();
        assert_eq!(
            decide(Some(&released), "a", t(1), &timing),
            Decision::Acquire
        );
    }

    #[test]
    fn acquiring_counts_a_transition_and_renewing_does_not() {
        let timing = LeaseTiming::default();
        let taken = claimed(Some(&held_by("b", 0)), "a", t(20), &timing);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(t(20))));
        let renewed = claimed(Some(&taken), "a", t(25), &timing);
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, Some(MicroTime(t(20))));
        assert_eq!(renewed.renew_time, Some(MicroTime(t(25))));
        assert_eq!(renewed.lease_duration_seconds, Some(15));
        let created = claimed(None, "a", t(0), &timing);
        assert_eq!(created.lease_transitions, Some(0));
    }

    #[test]
    fn only_the_holder_can_release() {
        assert!(released(&held_by("b", 0), "a").is_none());
        let spec = released(&held_by("a", 0), "a").unwrap();
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_transitions, Some(0));
    }

    /// Two candidates share one Lease on a simulated clock (100 ms ticks), each
    /// acting whenever its own schedule says so. The leader renews until it dies at
    /// 30 s; the standby must lead no later than the lease duration after that.
    #[test]
    fn a_standby_takes_over_within_the_lease_duration_after_the_leader_dies() {
        let timing = LeaseTiming::default();
        let tick = 100i64;
        let dies_at_ms = 30_000i64;
        let mut lease: Option<LeaseSpec> = None;
        let mut next_look = [0i64, 50]; // A looks first.
        let mut taken_over_at = None;
        for now_ms in (0..60_000).step_by(tick as usize) {
            let now = t(0)
                .checked_add(SignedDuration::from_millis(now_ms))
                .unwrap();
            for (i, identity) in ["a", "b"].into_iter().enumerate() {
                if (identity == "a" && now_ms >= dies_at_ms) || now_ms < next_look[i] {
                    continue;
                }
                match decide(lease.as_ref(), identity, now, &timing) {
                    Decision::Wait { retry_after, .. } => {
                        next_look[i] = now_ms + retry_after.as_millis() as i64
                    }
                    _ => {
                        if identity == "b" && taken_over_at.is_none() {
                            taken_over_at = Some(now_ms);
                        }
                        lease = Some(claimed(lease.as_ref(), identity, now, &timing));
                        next_look[i] = now_ms + timing.renew_every.as_millis() as i64;
                    }
                }
            }
        }
        let taken_over_at = taken_over_at.expect("b never took over");
        assert!(taken_over_at > dies_at_ms, "b took over while a was alive");
        let within = timing.duration.as_millis() as i64;
        assert!(
            taken_over_at - dies_at_ms <= within,
            "took {} ms",
            taken_over_at - dies_at_ms
        );
        assert_eq!(lease.unwrap().lease_transitions, Some(1));
    }

    #[test]
    fn the_renew_deadline_ends_before_the_lease_expires() {
        let timing = LeaseTiming::default();
        assert!(timing.renew_deadline < timing.duration);
        assert!(timing.renew_every < timing.renew_deadline);
    }
}
