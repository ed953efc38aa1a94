//! What the operator's pods get for logs and traces.
//!
//! Every trainer and server pod is told the object it works for
//! (`LLMOPS_OWNER=Kind/namespace/name`, on each of its log lines), the
//! operator's own OTLP export settings (so its spans reach the same
//! collector), and the trace it continues: the pod template's
//! [`TRACEPARENT_ANNOTATION`], read into `TRACEPARENT` by the downward API.
//!
//! The trace of an object is derived from its uid and generation
//! ([`TraceParent::derived`]): every reconcile of one generation, on any
//! replica and after any restart, is a child of the same root, and so are the
//! pods that generation starts. Nothing is written to the object for it (no
//! write per reconcile, no annotation a GitOps tool would see drift in).
//!
//! A trainer Job's template is immutable and the Job is created once per run,
//! so it keeps the trace of the generation that started it. A Deployment's
//! template is not: a changed annotation rolls every pod. So a serving
//! template keeps the traceparent it already has unless something else in it
//! changed ([`stamp_deployment`]): a new generation that only scales, or an
//! operator restart, never restarts a pod.
//!
//! The generation's root span itself is recorded when a status write gives
//! the generation its outcome ([`record_outcome`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Resource, ResourceExt};
use llmops_contract::{TRACEPARENT_ANNOTATION, env as var};
use llmops_crds::condition::{READY, STALLED};
use llmops_telemetry::TraceParent;
use llmops_telemetry::root::{KeyValue, Root};

use crate::runtime::conditions::Transition;

use super::job::env;

/// Pod template annotation: a hash of the rest of a serving template, telling
/// whether the template changed since its traceparent was set.
pub const TEMPLATE_HASH_ANNOTATION: &str = "llmops.dev/template-hash";

/// `Kind/namespace/name` of `obj`, the pods' `LLMOPS_OWNER`.
pub fn owner<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// The trace of `obj`'s current generation; `None` for an object the API has
/// not stored (no uid).
pub fn trace_of<K: Resource>(obj: &K) -> Option<TraceParent> {
    let meta = obj.meta();
    let uid = meta.uid.as_deref().filter(|u| !u.is_empty())?;
    Some(TraceParent::derived(uid, meta.generation.unwrap_or(0)))
}

/// The telemetry of a trainer pod: who it works for, the trace it continues,
/// and where spans go.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodTelemetry {
    /// `LLMOPS_OWNER`.
    pub owner: String,
    /// The template's [`TRACEPARENT_ANNOTATION`]; `None` sets none.
    pub traceparent: Option<String>,
    /// The operator's `OTEL_*` export variables, passed on.
    pub export_env: Vec<(String, String)>,
}

impl PodTelemetry {
    /// For a pod `obj`'s current generation starts.
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K, export_env: &[(String, String)]) -> Self {
        Self {
            owner: owner(obj),
            traceparent: trace_of(obj).map(|t| t.to_string()),
            export_env: export_env.to_vec(),
        }
    }

    /// Put it on `template`: the annotation, and on every container the
    /// variables (replacing any of the same name).
    pub fn apply(&self, template: &mut PodTemplateSpec) {
        if let Some(traceparent) = &self.traceparent {
            template
                .metadata
                .get_or_insert_default()
                .annotations
                .get_or_insert_default()
                .insert(TRACEPARENT_ANNOTATION.into(), traceparent.clone());
        }
        let mut vars = vec![env(var::OWNER, self.owner.clone())];
        if self.traceparent.is_some() {
            vars.push(traceparent_env());
        }
        vars.extend(
            self.export_env
                .iter()
                .map(|(name, value)| env(name, value.clone())),
        );
        let Some(spec) = template.spec.as_mut() else {
            return;
        };
        for container in &mut spec.containers {
            let container_env = container.env.get_or_insert_default();
            container_env.retain(|e| !vars.iter().any(|v| v.name == e.name));
            container_env.extend(vars.iter().cloned());
        }
    }
}

/// `TRACEPARENT` from the pod's own annotation: the variable stays the same
/// whatever the trace, so only the annotation differs between templates.
fn traceparent_env() -> EnvVar {
    EnvVar {
        name: var::TRACEPARENT.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: format!("metadata.annotations['{TRACEPARENT_ANNOTATION}']"),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Stamp a serving Deployment `desired` (built for `parent`) with its pods'
/// telemetry. The template's traceparent is the one `live` (the Deployment as it
/// runs) already has when the rest of the template is unchanged, so that
/// nothing but a real change of the pods rolls them; otherwise the trace of
/// `parent`'s current generation, the one that changed them.
pub fn stamp_deployment<K: Resource<DynamicType = ()>>(
    parent: &K,
    desired: &mut Deployment,
    live: Option<&Deployment>,
    export_env: &[(String, String)],
) {
    let Some(spec) = desired.spec.as_mut() else {
        return;
    };
    let mut telemetry = PodTelemetry::of(parent, export_env);
    // Everything but the traceparent, so its hash says whether the pods change.
    let without_trace = PodTelemetry {
        traceparent: None,
        ..telemetry.clone()
    };
    without_trace.apply(&mut spec.template);
    // The variable is there whenever a traceparent will be, so it is hashed too.
    if telemetry.traceparent.is_some()
        && let Some(pod) = spec.template.spec.as_mut()
    {
        for container in &mut pod.containers {
            container
                .env
                .get_or_insert_default()
                .push(traceparent_env());
        }
    }
    let hash = template_hash(&spec.template);
    let live_annotations = live
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref());
    if let Some(annotations) = live_annotations
        && annotations.get(TEMPLATE_HASH_ANNOTATION) == Some(&hash)
        && let Some(kept) = annotations.get(TRACEPARENT_ANNOTATION)
    {
        telemetry.traceparent = Some(kept.clone());
    }
    let annotations = spec
        .template
        .metadata
        .get_or_insert_default()
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.insert(TEMPLATE_HASH_ANNOTATION.into(), hash);
    if let Some(traceparent) = telemetry.traceparent {
        annotations.insert(TRACEPARENT_ANNOTATION.into(), traceparent);
    }
}

/// Record the root span of `obj`'s current generation when a status write
/// (`before` → `flipped`, for `observed_generation`) gives the generation its
/// outcome: Ready or Stalled turning True. It spans from when the generation
/// was taken up (the object's creation for the first; the last condition
/// change before the outcome for later ones, when the new spec was seen) to
/// now, and is an error when the generation stalled. Only the status write
/// that flips the condition records it, so it is recorded once however often
/// the object is reconciled.
pub fn record_outcome<K: Resource<DynamicType = ()>>(
    obj: &K,
    before: &[Condition],
    flipped: &[Transition],
    observed_generation: Option<i64>,
) {
    if let Some(root) = outcome_root(obj, before, flipped, observed_generation, SystemTime::now()) {
        llmops_telemetry::root::record(root);
    }
}

/// The root span [`record_outcome`] records, ending at `now`; `None` when the
/// write gives the generation no outcome.
fn outcome_root<K: Resource<DynamicType = ()>>(
    obj: &K,
    before: &[Condition],
    flipped: &[Transition],
    observed_generation: Option<i64>,
    now: SystemTime,
) -> Option<Root> {
    let meta = obj.meta();
    if observed_generation.is_none() || observed_generation != meta.generation {
        return None;
    }
    let trace = trace_of(obj)?;
    let outcome = flipped
        .iter()
        .find(|t| t.status == "True" && (t.type_ == READY || t.type_ == STALLED))?;
    let created = meta
        .creation_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0));
    let last_change = before
        .iter()
        .map(|c| SystemTime::from(c.last_transition_time.0))
        .max();
    let start = match meta.generation {
        Some(1) | None => created.or(last_change),
        Some(_) => last_change.or(created),
    }
    .unwrap_or(now);
    let kind = K::kind(&());
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    Some(Root {
        trace,
        name: format!("{kind} {namespace}/{name}"),
        start,
        end: now,
        attributes: vec![
            KeyValue::new("k8s.namespace.name", namespace),
            KeyValue::new("llmops.kind", kind.into_owned()),
            KeyValue::new("llmops.name", name),
            KeyValue::new("llmops.generation", meta.generation.unwrap_or(0)),
            KeyValue::new("llmops.outcome", outcome.type_.clone()),
            KeyValue::new("llmops.reason", outcome.reason.clone()),
        ],
        error: (outcome.type_ == STALLED)
            .then(|| format!("{}: {}", outcome.reason, outcome.message)),
    })
}

/// A stable hash (FNV-1a over the JSON, the same across operator builds) of a
/// pod template without its trace annotations.
fn template_hash(template: &PodTemplateSpec) -> String {
    let mut template = template.clone();
    if let Some(annotations) = template
        .metadata
        .as_mut()
        .and_then(|m| m.annotations.as_mut())
    {
        annotations.remove(TRACEPARENT_ANNOTATION);
        annotations.remove(TEMPLATE_HASH_ANNOTATION);
    }
    let input = serde_json::to_string(&template).unwrap_or_default();
    let hash = input.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests;
