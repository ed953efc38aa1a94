//! Adapters: `spec.adapters` → the ConfigMap the serving pods read them from,
//! and `status.adapters`.
//!
//! The list of adapters is not in the pod template: it is the key
//! [`ADAPTERS_KEY`] of ConfigMap `<name>-adapters`, mounted (as a directory,
//! so the kubelet updates it in place) at [`MOUNT_DIR`], which the server
//! reads every few seconds (`--adapters-file`). Adding, changing or removing
//! an adapter therefore changes no Deployment and restarts no pod.
//!
//! Resolving each entry:
//! - `uri`: served as given (its digest unknown to the operator, which never
//!   reads the store; the server checks the base its lineage names).
//! - `fineTuneRef`: the FineTune's `status.artifact` once it is Ready. It must
//!   have exported an adapter (`output.mergeAdapter: false`) trained on this
//!   deployment's model (its `status.lineage.baseModel`): a merged model or
//!   another base is refused, naming `spec.adapters[i].fineTuneRef`, as an
//!   invalid spec. While it is not Ready (not trained yet, or re-training) the
//!   version served before keeps serving, if there was one; a new artifact
//!   flows in once it is Ready (the FineTune is watched).
//!
//! An adapter on a PVC must be on the model's claim, the only one the pods
//! mount (mounting another would change the template).
//!
//! `status.adapters[i].loaded` counts the ready stable pods whose
//! `llmops_server_adapter_loaded{adapter, digest}` is 1 for the version asked
//! for; `ready` is true once every pod that answered has it.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume, VolumeMount};
use kube::{Api, ResourceExt};
use llmops_crds::deployment::{AdapterSource, AdapterStatus};
use llmops_crds::{Artifact, FineTune, LocalObjectRef, ModelDeployment};
use serde_json::json;

use super::Error;
use super::build::SERVER_COMPONENT;
use super::monitor::Summary;
use super::resolve::Model;
use crate::runtime::Context;
use crate::runtime::apply::child_meta;
use crate::runtime::invalid::{Invalid, invalid};
use crate::workload::lineage::ready_for_generation;
use crate::workload::storage::pvc_claim;

/// The ConfigMap's key holding the adapters file.
pub const ADAPTERS_KEY: &str = "adapters.json";
/// Where the ConfigMap is mounted in the server container.
pub const MOUNT_DIR: &str = "/etc/llmops/adapters";
/// The pod volume of the ConfigMap.
pub const VOLUME: &str = "adapters";

pub fn config_map_name(name: &str) -> String {
    format!("{name}-adapters")
}

/// The `--adapters-file` the server reads.
pub fn adapters_file() -> String {
    format!("{MOUNT_DIR}/{ADAPTERS_KEY}")
}

/// The ConfigMap volume of `md`'s serving pods and its mount. Optional, so
/// that a pod never waits for it; the operator writes it before the
/// Deployment anyway.
pub fn volume(md: &ModelDeployment) -> (Volume, VolumeMount) {
    (
        Volume {
            name: VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&md.name_any()),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: VOLUME.into(),
            mount_path: MOUNT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// What one adapter entry resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// One status per `spec.adapters` entry, in order (without pod counts).
    pub status: Vec<AdapterStatus>,
}

impl Resolved {
    /// The adapters the pods should serve: those with a URI.
    pub fn served(&self) -> impl Iterator<Item = &AdapterStatus> {
        self.status.iter().filter(|a| !a.uri.is_empty())
    }
}

/// Reads the FineTunes `spec.adapters` names and resolves every entry.
pub async fn resolve(
    md: &ModelDeployment,
    ctx: &Context,
    model: &Model,
) -> Result<Result<Resolved, Invalid>, Error> {
    let namespace = md.namespace().unwrap_or_default();
    let api: Api<FineTune> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut fine_tunes = HashMap::new();
    for reference in md
        .spec
        .adapters
        .iter()
        .filter_map(|a| a.fine_tune_ref.as_ref())
    {
        if fine_tunes.contains_key(&reference.name) {
            continue;
        }
        let found = api
            .get_opt(&reference.name)
            .await
            .map_err(|source| Error::ReadModel {
                kind: "FineTune",
                name: reference.name.clone(),
                source,
            })?;
        fine_tunes.insert(reference.name.clone(), found);
    }
    Ok(resolve_with(md, &fine_tunes, model))
}

/// The pure part of [`resolve`], given the FineTunes read (none: not found).
pub fn resolve_with(
    md: &ModelDeployment,
    fine_tunes: &HashMap<String, Option<FineTune>>,
    model: &Model,
) -> Result<Resolved, Invalid> {
    let previous: BTreeMap<&str, &AdapterStatus> = md
        .status
        .as_ref()
        .map(|s| {
            s.operator
                .adapters
                .iter()
                .map(|a| (a.name.as_str(), a))
                .collect()
        })
        .unwrap_or_default();
    let deployment = md.name_any();
    let mut status = Vec::with_capacity(md.spec.adapters.len());
    for (i, adapter) in md.spec.adapters.iter().enumerate() {
        if adapter.name == deployment {
            return invalid(
                format!("spec.adapters[{i}].name"),
                format!(
                    "{deployment} is the name the base model is served under; give the adapter another"
                ),
            );
        }
        let entry = match (&adapter.uri, &adapter.fine_tune_ref) {
            (Some(uri), _) => AdapterStatus {
                name: adapter.name.clone(),
                uri: uri.clone(),
                ..AdapterStatus::default()
            },
            (None, Some(reference)) => {
                let found = fine_tunes.get(&reference.name).and_then(Option::as_ref);
                let before = previous.get(adapter.name.as_str()).copied();
                from_fine_tune(i, adapter, reference, found, &model.artifact, before)?
            }
            (None, None) => {
                return invalid(
                    format!("spec.adapters[{i}]"),
                    "set one of fineTuneRef or uri",
                );
            }
        };
        if let Some(claim) = pvc_claim(&entry.uri)
            && pvc_claim(&model.artifact.uri) != Some(claim)
        {
            return invalid(
                format!("spec.adapters[{i}]"),
                format!(
                    "{}: an adapter on a PVC must be on the model's claim, the only one the serving pods mount",
                    entry.uri
                ),
            );
        }
        status.push(entry);
    }
    Ok(Resolved { status })
}

/// An adapter named by `fineTuneRef`: the FineTune's exported adapter, or the
/// version served `before` while there is none (yet, or while re-training).
fn from_fine_tune(
    i: usize,
    adapter: &AdapterSource,
    reference: &LocalObjectRef,
    found: Option<&FineTune>,
    base: &Artifact,
    before: Option<&AdapterStatus>,
) -> Result<AdapterStatus, Invalid> {
    let field = format!("spec.adapters[{i}].fineTuneRef");
    let name = &reference.name;
    let waiting = |why: String| {
        let kept = before.filter(|b| b.fine_tune_ref.as_ref() == Some(reference));
        let message = match kept {
            Some(_) => format!("FineTune {name} ({field}) {why}; serving its previous adapter"),
            None => format!("waiting for FineTune {name} ({field}): {why}"),
        };
        AdapterStatus {
            name: adapter.name.clone(),
            fine_tune_ref: Some(reference.clone()),
            message: Some(message),
            ..kept.cloned().unwrap_or_default()
        }
    };
    let Some(ft) = found else {
        return Ok(waiting("not found".into()));
    };
    if ft.spec.output.merge_adapter {
        return invalid(
            field,
            format!(
                "FineTune {name} exports a merged model (output.mergeAdapter: true), not an adapter: serve it as spec.model, or set its output.mergeAdapter: false"
            ),
        );
    }
    let status = ft.status.as_ref();
    let lineage = status.and_then(|s| s.operator.lineage.clone());
    if let Some(trained_on) = lineage.as_ref().and_then(|l| l.base_model.as_ref())
        && !same_model(trained_on, base)
    {
        return invalid(
            field,
            format!(
                "FineTune {name} trained its adapter on {}, but this deployment serves {}: an adapter runs only on its own base model",
                describe(trained_on),
                describe(base)
            ),
        );
    }
    let ready = ready_for_generation(
        status.map(|s| s.conditions.as_slice()).unwrap_or_default(),
        ft.metadata.generation,
    );
    let artifact = status.and_then(|s| s.operator.artifact.clone());
    match (ready, artifact, lineage) {
        (true, Some(artifact), Some(lineage)) => Ok(AdapterStatus {
            name: adapter.name.clone(),
            uri: artifact.uri,
            digest: artifact.digest,
            fine_tune_ref: Some(reference.clone()),
            lineage: Some(lineage),
            ..AdapterStatus::default()
        }),
        _ => {
            let gate = status
                .and_then(|s| s.operator.gate.as_ref())
                .filter(|g| !g.passed);
            Ok(waiting(match gate {
                Some(gate) => format!("its adapter failed the quality gates ({})", gate.message),
                None => "it is not Ready with an adapter yet".into(),
            }))
        }
    }
}

/// The ModelDeployments with an adapter from `ft` whose status does not have
/// its current artifact yet: a new export (or a first one) starts a pass.
pub fn referrers(
    deployments: &[std::sync::Arc<ModelDeployment>],
    ft: &FineTune,
) -> Vec<kube::runtime::reflector::ObjectRef<ModelDeployment>> {
    let Some(artifact) = ft
        .status
        .as_ref()
        .and_then(|s| s.operator.artifact.as_ref())
    else {
        return Vec::new();
    };
    let (name, namespace) = (ft.name_any(), ft.namespace());
    deployments
        .iter()
        .filter(|md| md.namespace() == namespace)
        .filter(|md| {
            md.spec.adapters.iter().any(|adapter| {
                adapter
                    .fine_tune_ref
                    .as_ref()
                    .is_some_and(|r| r.name == name)
                    && !md.status.as_ref().is_some_and(|s| {
                        s.operator.adapters.iter().any(|a| {
                            a.name == adapter.name
                                && a.uri == artifact.uri
                                && a.digest == artifact.digest
                        })
                    })
            })
        })
        .map(|md| kube::runtime::reflector::ObjectRef::from_obj(md.as_ref()))
        .collect()
}

/// The same model: by digest when both are known, else by URI.
fn same_model(a: &Artifact, b: &Artifact) -> bool {
    if !a.digest.is_empty() && !b.digest.is_empty() {
        return a.digest == b.digest;
    }
    a.uri.trim_end_matches('/') == b.uri.trim_end_matches('/')
}

fn describe(artifact: &Artifact) -> String {
    if artifact.digest.is_empty() {
        artifact.uri.clone()
    } else {
        format!("{} ({})", artifact.uri, artifact.digest)
    }
}

/// The ConfigMap the serving pods read their adapters from.
pub fn build_config_map(md: &ModelDeployment, resolved: &Resolved) -> ConfigMap {
    let adapters: Vec<_> = resolved
        .served()
        .map(|a| json!({"name": a.name, "uri": a.uri, "digest": a.digest}))
        .collect();
    let text = serde_json::to_string_pretty(&json!({ "adapters": adapters })).unwrap_or_default();
    ConfigMap {
        metadata: child_meta(md, config_map_name(&md.name_any()), SERVER_COMPONENT),
        data: Some(BTreeMap::from([(ADAPTERS_KEY.to_string(), text + "\n")])),
        ..ConfigMap::default()
    }
}

/// `resolved` with how many of the pods that answered the last scrape
/// (`stable`) serve each adapter's version.
pub fn with_loaded(resolved: Resolved, stable: &Summary) -> Vec<AdapterStatus> {
    resolved
        .status
        .into_iter()
        .map(|mut adapter| {
            if adapter.uri.is_empty() {
                return adapter;
            }
            let key = (adapter.name.clone(), adapter.digest.clone());
            let loaded = stable.adapters_loaded.get(&key).copied().unwrap_or(0);
            adapter.loaded = i32::try_from(loaded).unwrap_or(i32::MAX);
            adapter.ready = stable.pods > 0 && loaded == stable.pods;
            if !adapter.ready && adapter.message.is_none() {
                adapter.message = Some(format!(
                    "loaded on {loaded} of {} serving pods",
                    stable.pods
                ));
            }
            adapter
        })
        .collect()
}

#[cfg(test)]
mod tests;
