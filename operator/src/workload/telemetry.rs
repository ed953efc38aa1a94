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

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, PodTemplateSpec};
use kube::{Resource, ResourceExt};
use llmops_contract::{TRACEPARENT_ANNOTATION, env as var};
use llmops_telemetry::TraceParent;

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
