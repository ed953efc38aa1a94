//! Kubernetes Events (events.k8s.io) for condition transitions, so `kubectl describe`
//! tells the story of an object without reading its status history.

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::conditions::Transition;

/// The reporting controller named in every Event.
pub const REPORTING_CONTROLLER: &str = "llmops-operator";

/// Publishes Events on behalf of the operator.
#[derive(Clone)]
pub struct EventPublisher {
    recorder: Recorder,
}

impl EventPublisher {
    /// `instance` is this replica's pod name, so Events say which replica acted.
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// One Event per transition. A failure to publish is logged, never fatal: the
    /// status already carries the same information.
    pub async fn transitions<K>(&self, obj: &K, transitions: &[Transition])
    where
        K: Resource<DynamicType = ()>,
    {
        let reference = obj.object_ref(&());
        for transition in transitions {
            let event = to_event(transition);
            if let Err(err) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(error = %err, reason = %event.reason, "failed to publish event");
            }
        }
    }
}

impl EventPublisher {
    /// A Warning Event about something that is no condition (the object is about
    /// to go): `reason` in CamelCase, `note` what happened and what is left to do.
    /// A failure to publish is logged, never fatal.
    pub async fn warning<K>(&self, obj: &K, reason: &str, note: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(truncate(note, 1024)),
            action: "Finalize".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %err, reason, note, "failed to publish event");
        }
    }
}

fn to_event(transition: &Transition) -> Event {
    Event {
        type_: if transition.is_problem {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: transition.reason.clone(),
        note: Some(truncate(
            &format!(
                "{}={}: {}",
                transition.type_, transition.status, transition.message
            ),
            1024,
        )),
        action: "Reconcile".into(),
        secondary: None,
    }
}

/// Cut `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_transition_is_a_warning_with_type_and_status_in_the_note() {
        let event = to_event(&Transition {
            type_: "Stalled".into(),
            status: "True".into(),
            reason: "PrepareFailed".into(),
            message: "line 3: not JSON".into(),
            is_problem: true,
        });
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.reason, "PrepareFailed");
        assert_eq!(
            event.note.as_deref(),
            Some("Stalled=True: line 3: not JSON")
        );
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate(&"é".repeat(600), 1024);
        assert!(cut.len() <= 1024);
        assert!(cut.ends_with('…'));
    }
}
