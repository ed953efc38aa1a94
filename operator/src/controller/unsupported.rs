//! Kinds whose API is published but that this operator version does not run yet
//! (FineTune). Rather than leaving such objects without a status —
//! which reads as "still working" to GitOps tools — each is marked Stalled with a
//! message saying so. No children are created and the object is left untouched, so
//! a later version that runs the kind picks it up as it is.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use llmops_crds::FineTune;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::runtime::Context;
use crate::runtime::apply::apply_status;
use crate::runtime::conditions::{self, Outcome, next_conditions, transitions};
use crate::runtime::controller::{ControllerRun, ReconcileError, Scope, scoped_api, start};
use crate::runtime::stop::Stop;

/// The condition reason on objects of a kind this version does not run.
pub const REASON: &str = "KindNotSupported";

/// A kind this version publishes the API of but does not run.
pub trait Unsupported:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The conditions the object's status holds now.
    fn conditions(&self) -> &[Condition];
    /// The generation the status describes.
    fn observed_generation(&self) -> Option<i64>;
}

impl Unsupported for FineTune {
    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default()
    }
    fn observed_generation(&self) -> Option<i64> {
        self.status.as_ref().and_then(|s| s.observed_generation)
    }
}

/// Why marking an object failed; always transient.
#[derive(Debug, thiserror::Error)]
#[error("failed to write the status of {object}: {source}")]
pub struct Error {
    object: String,
    source: kube::Error,
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        "ApplyStatus"
    }
}

/// Controllers marking FineTunes as not run by this version.
pub fn controllers(ctx: &Arc<Context>, scope: &Scope, stop: &Stop) -> Vec<ControllerRun> {
    let mut runs = Vec::new();
    for namespace in scope.targets() {
        runs.push(controller::<FineTune>(
            "FineTune",
            ctx,
            namespace.as_deref(),
            stop,
        ));
    }
    runs
}

fn controller<K: Unsupported>(
    kind: &'static str,
    ctx: &Arc<Context>,
    ns: Option<&str>,
    stop: &Stop,
) -> ControllerRun {
    let controller = Controller::new(scoped_api::<K>(&ctx.client, ns), watcher::Config::default());
    start(kind, controller, ctx.clone(), stop.clone(), reconcile::<K>)
}

/// The message every object of `kind` gets.
pub fn message(kind: &str) -> String {
    format!(
        "{kind} is not run by this llmops version yet: nothing was created; the object is kept for a version that runs it"
    )
}

/// The operator's status fields of an object of a kind this version does not run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnsupportedStatus {
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
}

/// The status to write, or `None` when the object already says it.
pub fn desired_status<K: Unsupported>(
    obj: &K,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Option<UnsupportedStatus> {
    let generation = obj.meta().generation;
    let outcome = Outcome::stalled(REASON, message(&K::kind(&())));
    let next = next_conditions(obj.conditions(), &outcome, generation, now);
    if conditions::owned_conditions_equal(obj.conditions(), &next)
        && obj.observed_generation() == generation
    {
        return None;
    }
    Some(UnsupportedStatus {
        observed_generation: generation,
        conditions: next,
    })
}

async fn reconcile<K: Unsupported>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    if let Some(status) = desired_status(obj.as_ref(), &conditions::now()) {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
        apply_status(&api, obj.as_ref(), &status)
            .await
            .map_err(|source| Error {
                object: obj.name_any(),
                source,
            })?;
        ctx.events
            .transitions(
                obj.as_ref(),
                &transitions(obj.conditions(), &status.conditions),
            )
            .await;
    }
    Ok(Action::requeue(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finetune(status: &str) -> FineTune {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: llmops.dev/v1alpha1\nkind: FineTune\nmetadata: {{name: ft, namespace: ml, generation: 2}}\nspec:\n  baseModel: {{uri: 's3://m/base'}}\n  datasetRef: {{name: d}}\n{status}"
        ))
        .unwrap()
    }

    #[test]
    fn a_new_object_is_marked_stalled_with_a_message_naming_its_kind() {
        let status = desired_status(&finetune(""), &conditions::now()).expect("a write");
        assert_eq!(status.observed_generation, Some(2));
        let conditions = status.conditions;
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        let stalled = conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(
            (ready.status.as_str(), stalled.status.as_str()),
            ("False", "True")
        );
        assert_eq!(ready.reason, REASON);
        assert!(
            ready
                .message
                .starts_with("FineTune is not run by this llmops version yet")
        );
    }

    #[test]
    fn an_object_already_marked_is_not_written_again() {
        let now = conditions::now();
        let first = desired_status(&finetune(""), &now).unwrap();
        let marked = finetune(&format!(
            "status: {}",
            serde_json::to_string(&first).unwrap()
        ));
        assert_eq!(desired_status(&marked, &now), None);
    }
}
