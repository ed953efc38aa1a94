//! Conditions in the kstatus vocabulary, computed as a pure function of
//! what a reconcile pass concluded and what the object already says.
//!
//! `Ready` is always present, but on a run held by the user ([`Outcome::Held`]).
//! `Reconciling` and `Stalled` appear only while true and are removed otherwise, as
//! kstatus recommends for abnormal-true conditions.
//! `lastTransitionTime` moves only when a condition's status flips, so a pass that
//! concludes the same thing produces identical conditions and therefore no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use llmops_crds::condition::{READY, RECONCILING, STALLED};

/// The condition types this operator owns; others on the object are left alone.
pub const OWNED_TYPES: [&str; 3] = [READY, RECONCILING, STALLED];

/// What a reconcile pass concluded about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Seen for the first time; nothing is known yet.
    FirstSight,
    /// Work is in flight: Ready=False, Reconciling=True.
    Progressing { reason: String, message: String },
    /// The desired state is reached: Ready=True.
    Ready { reason: String, message: String },
    /// No progress without a change by the user: Ready=False, Stalled=True.
    Stalled { reason: String, message: String },
    /// Held by the user's wish (a suspended run whose pods have stopped): no owned
    /// condition at all. Nothing is in flight and nothing is wrong, so kstatus reads
    /// it as Current (Ready=False would read as InProgress, and Flux would wait for
    /// it until its timeout); nothing was produced, so it is not Ready either.
    Held,
    /// The desired state is not reached, but what runs still serves: Ready=True
    /// about what serves, and `aside` (Reconciling=True while a change is in
    /// flight, Stalled=True when the change cannot go through) about the change.
    /// A model deployment rolling out, or failing to roll out, a new model while
    /// the old one keeps serving.
    ReadyWhile {
        reason: String,
        message: String,
        aside: Aside,
    },
}

/// The condition beside Ready=True in [`Outcome::ReadyWhile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Aside {
    /// Reconciling=True: a change is in flight.
    Reconciling { reason: String, message: String },
    /// Stalled=True: a change cannot go through without the user.
    Stalled { reason: String, message: String },
}

impl Outcome {
    pub fn progressing(reason: &str, message: impl Into<String>) -> Self {
        Self::Progressing {
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn ready(reason: &str, message: impl Into<String>) -> Self {
        Self::Ready {
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn stalled(reason: &str, message: impl Into<String>) -> Self {
        Self::Stalled {
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// Ready=True about what serves, Reconciling=True about the change in flight.
    pub fn ready_reconciling(
        reason: &str,
        message: impl Into<String>,
        aside_reason: &str,
        aside_message: impl Into<String>,
    ) -> Self {
        Self::ReadyWhile {
            reason: reason.into(),
            message: message.into(),
            aside: Aside::Reconciling {
                reason: aside_reason.into(),
                message: aside_message.into(),
            },
        }
    }

    /// Ready=True about what serves, Stalled=True about the change that failed.
    pub fn ready_stalled(
        reason: &str,
        message: impl Into<String>,
        aside_reason: &str,
        aside_message: impl Into<String>,
    ) -> Self {
        Self::ReadyWhile {
            reason: reason.into(),
            message: message.into(),
            aside: Aside::Stalled {
                reason: aside_reason.into(),
                message: aside_message.into(),
            },
        }
    }

    /// The owned conditions this outcome implies: (type, status, reason, message).
    fn desired(&self) -> Vec<(&'static str, &'static str, &str, &str)> {
        match self {
            Outcome::FirstSight => vec![
                (
                    READY,
                    "Unknown",
                    "Reconciling",
                    "Reconciling for the first time",
                ),
                (
                    RECONCILING,
                    "True",
                    "Reconciling",
                    "Reconciling for the first time",
                ),
            ],
            Outcome::Progressing { reason, message } => vec![
                (READY, "False", reason, message),
                (RECONCILING, "True", reason, message),
            ],
            Outcome::Ready { reason, message } => vec![(READY, "True", reason, message)],
            Outcome::Stalled { reason, message } => vec![
                (READY, "False", reason, message),
                (STALLED, "True", reason, message),
            ],
            Outcome::Held => vec![],
            Outcome::ReadyWhile {
                reason,
                message,
                aside,
            } => {
                let (type_, aside_reason, aside_message) = match aside {
                    Aside::Reconciling { reason, message } => (RECONCILING, reason, message),
                    Aside::Stalled { reason, message } => (STALLED, reason, message),
                };
                vec![
                    (READY, "True", reason, message),
                    (type_, "True", aside_reason, aside_message),
                ]
            }
        }
    }
}

/// The owned conditions for `outcome` at `generation`, keeping each condition's
/// `lastTransitionTime` from `current` unless its status flips (then `now`).
pub fn next_conditions(
    current: &[Condition],
    outcome: &Outcome,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    outcome
        .desired()
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let last_transition_time = find(current, type_)
                .filter(|c| c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message: message.to_string(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Whether the owned conditions in `current` already equal `next` (order aside).
pub fn owned_conditions_equal(current: &[Condition], next: &[Condition]) -> bool {
    let owned: Vec<&Condition> = current
        .iter()
        .filter(|c| OWNED_TYPES.contains(&c.type_.as_str()))
        .collect();
    owned.len() == next.len() && next.iter().all(|n| owned.contains(&n))
}

/// A condition whose status flipped (or that appeared); each becomes an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    /// Stalled=True: the user has to act, so the Event is a Warning.
    pub is_problem: bool,
}

/// The conditions in `next` whose status differs from `current` (or that are new).
/// Conditions that disappear (Reconciling, Stalled) are reported by the Ready
/// transition that accompanies them.
pub fn transitions(current: &[Condition], next: &[Condition]) -> Vec<Transition> {
    next.iter()
        .filter(|n| find(current, &n.type_).is_none_or(|c| c.status != n.status))
        .map(|n| Transition {
            type_: n.type_.clone(),
            status: n.status.clone(),
            reason: n.reason.clone(),
            message: n.message.clone(),
            is_problem: n.type_ == STALLED && n.status == "True",
        })
        .collect()
}

/// Replace the operator's conditions in `conditions` by `written`, keeping the
/// conditions other writers own: the local copy after a status write.
pub fn replace_owned(conditions: &mut Vec<Condition>, written: Vec<Condition>) {
    conditions.retain(|c| !OWNED_TYPES.contains(&c.type_.as_str()));
    conditions.extend(written);
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The current time truncated to whole seconds, the precision the API server keeps,
/// so a written time compares equal to the one read back.
pub fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).expect("now is in range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + second).unwrap())
    }

    fn get<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        find(conditions, type_).unwrap_or_else(|| panic!("{type_} missing"))
    }

    #[test]
    fn first_sight_is_ready_unknown_and_reconciling() {
        let next = next_conditions(&[], &Outcome::FirstSight, Some(1), &at(0));
        assert_eq!(get(&next, READY).status, "Unknown");
        assert_eq!(get(&next, READY).reason, "Reconciling");
        assert_eq!(get(&next, RECONCILING).status, "True");
        assert!(find(&next, STALLED).is_none());
        assert!(next.iter().all(|c| c.observed_generation == Some(1)));
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let preparing = Outcome::progressing("Preparing", "job d-prepare-g1 running");
        let first = next_conditions(&[], &preparing, Some(1), &at(0));
        // Same status, new message and generation: time kept.
        let again = next_conditions(
            &first,
            &Outcome::progressing("Preparing", "pod running"),
            Some(2),
            &at(10),
        );
        assert_eq!(get(&again, READY).last_transition_time, at(0));
        assert_eq!(get(&again, READY).observed_generation, Some(2));
        assert_eq!(get(&again, READY).message, "pod running");
        // Ready flips to True: new time; Reconciling disappears.
        let done = next_conditions(&again, &Outcome::ready("Prepared", "ok"), Some(2), &at(20));
        assert_eq!(get(&done, READY).last_transition_time, at(20));
        assert!(find(&done, RECONCILING).is_none());
    }

    #[test]
    fn stalled_sets_ready_false_and_stalled_true() {
        let next = next_conditions(
            &[],
            &Outcome::stalled("PrepareFailed", "bad line 3"),
            Some(4),
            &at(0),
        );
        assert_eq!(get(&next, READY).status, "False");
        assert_eq!(get(&next, STALLED).status, "True");
        assert_eq!(get(&next, STALLED).message, "bad line 3");
        assert!(find(&next, RECONCILING).is_none());
    }

    #[test]
    fn held_removes_every_owned_condition() {
        let suspending = next_conditions(
            &[],
            &Outcome::progressing("Suspended", "suspending"),
            Some(2),
            &at(0),
        );
        let next = next_conditions(&suspending, &Outcome::Held, Some(2), &at(5));
        // Neither Reconciling (kstatus: InProgress) nor Ready=False (also InProgress):
        // kstatus falls through to Current.
        assert!(next.is_empty());
        let mut written = suspending.clone();
        replace_owned(&mut written, next.clone());
        assert!(written.is_empty());
        assert!(!owned_conditions_equal(&suspending, &next));
        assert!(owned_conditions_equal(&written, &next));
    }

    #[test]
    fn same_outcome_twice_is_equal_so_nothing_is_written() {
        let outcome = Outcome::ready("Prepared", "41,220 docs");
        let first = next_conditions(&[], &outcome, Some(3), &at(0));
        let second = next_conditions(&first, &outcome, Some(3), &at(99));
        assert_eq!(first, second);
        assert!(owned_conditions_equal(&first, &second));
        assert!(transitions(&first, &second).is_empty());
    }

    #[test]
    fn foreign_conditions_are_ignored_when_comparing() {
        let outcome = Outcome::ready("Prepared", "ok");
        let mut current = next_conditions(&[], &outcome, Some(1), &at(0));
        current.push(Condition {
            type_: "Audited".into(),
            status: "True".into(),
            reason: "Audit".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: at(0),
        });
        let next = next_conditions(&current, &outcome, Some(1), &at(5));
        assert!(owned_conditions_equal(&current, &next));
    }

    #[test]
    fn ready_while_keeps_ready_true_beside_reconciling_or_stalled() {
        let rolling = Outcome::ready_reconciling("Serving", "old serves", "RollingOut", "new");
        let next = next_conditions(&[], &rolling, Some(2), &at(0));
        assert_eq!(get(&next, READY).status, "True");
        assert_eq!(get(&next, RECONCILING).status, "True");
        assert_eq!(get(&next, RECONCILING).reason, "RollingOut");
        assert!(find(&next, STALLED).is_none());

        let failed = Outcome::ready_stalled("Serving", "old serves", "RolloutFailed", "new failed");
        let after = next_conditions(&next, &failed, Some(2), &at(5));
        // Ready did not flip: its time stays.
        assert_eq!(get(&after, READY).last_transition_time, at(0));
        assert_eq!(get(&after, STALLED).message, "new failed");
        assert!(find(&after, RECONCILING).is_none());
        let flips = transitions(&next, &after);
        assert_eq!(flips.len(), 1);
        assert!(flips[0].is_problem);
    }

    #[test]
    fn transitions_report_flips_and_new_conditions() {
        let preparing = next_conditions(
            &[],
            &Outcome::progressing("Preparing", "x"),
            Some(1),
            &at(0),
        );
        let failed = next_conditions(
            &preparing,
            &Outcome::stalled("PrepareFailed", "boom"),
            Some(1),
            &at(1),
        );
        let flips = transitions(&preparing, &failed);
        // Ready stays False (no flip); Stalled appears as a problem.
        assert_eq!(flips.len(), 1);
        assert_eq!(flips[0].type_, STALLED);
        assert!(flips[0].is_problem);

        let first = transitions(&[], &preparing);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|t| !t.is_problem));
    }
}
