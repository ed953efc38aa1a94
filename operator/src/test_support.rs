//! Fixtures the controllers' tests share: objects from YAML with an overlay, Jobs
//! and pods in a given state, and lookups into what a pass builds and concludes.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::runtime::conditions::Outcome;

/// `base` with `overlay` merged in (objects merge, `null` removes a field).
pub fn with_overlay<T: DeserializeOwned>(base: &str, overlay: &str) -> T {
    let mut base: Value = serde_yaml_ng::from_str(base).unwrap();
    let overlay: Value = serde_yaml_ng::from_str(overlay).unwrap();
    merge(&mut base, overlay);
    serde_json::from_value(base).unwrap()
}

fn merge(target: &mut Value, overlay: Value) {
    match (target, overlay) {
        (Value::Object(target), Value::Object(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    target.remove(&key);
                } else {
                    merge(target.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        (target, overlay) => *target = overlay,
    }
}

/// A Job with `metadata` and `status` (both YAML flow mappings).
pub fn job(metadata: &str, status: &str) -> Job {
    with_overlay(
        "{apiVersion: batch/v1, kind: Job}",
        &format!("{{metadata: {metadata}, status: {status}}}"),
    )
}

/// A pod with `metadata` whose trainer container is in `state` (YAML flow mappings).
pub fn trainer_pod(metadata: &str, state: &str) -> Pod {
    serde_yaml_ng::from_str(&format!(
        r#"
metadata: {metadata}
status:
  containerStatuses: [{{name: trainer, image: t, imageID: "", ready: false, restartCount: 0, state: {state}}}]
"#
    ))
    .unwrap()
}

/// The pod template of `job`.
pub fn pod_spec(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

/// The trainer container of `job`'s pods.
pub fn trainer(job: &Job) -> &Container {
    &pod_spec(job).containers[0]
}

/// The trainer's variable `name`.
pub fn env_var<'a>(job: &'a Job, name: &str) -> Option<&'a EnvVar> {
    trainer(job).env.as_ref()?.iter().find(|e| e.name == name)
}

/// The literal value of the trainer's variable `name`.
pub fn env_value<'a>(job: &'a Job, name: &str) -> Option<&'a str> {
    env_var(job, name)?.value.as_deref()
}

/// The pod volume `name` of `job`.
pub fn volume<'a>(job: &'a Job, name: &str) -> &'a Volume {
    pod_spec(job)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == name)
        .unwrap()
}

/// The condition of type `type_`.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The reason and message of `outcome` (empty for a first sight).
pub fn text(outcome: &Outcome) -> (&str, &str) {
    match outcome {
        Outcome::Progressing { reason, message }
        | Outcome::Ready { reason, message }
        | Outcome::Stalled { reason, message }
        | Outcome::ReadyWhile {
            reason, message, ..
        } => (reason, message),
        Outcome::FirstSight | Outcome::Held => ("", ""),
    }
}

/// A fixed time for condition transitions.
pub fn now() -> Time {
    Time("2026-02-01T00:00:00Z".parse().unwrap())
}
