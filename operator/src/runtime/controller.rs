//! Running a kube-runtime `Controller` the same way for every kind: metrics and
//! tracing around each reconcile, backoff on errors, a stop signal, and a future
//! that resolves once the controller's cache has synced.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::NamespaceResourceScope;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt as _};
use kube::runtime::controller::{Action, Config, Controller, Error as ControllerError};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use llmops_crds::LocalObjectRef;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use super::Context;
use super::apply::{FIELD_MANAGER, MANAGED_BY_LABEL, parent_label_key};
use super::stop::Stop;

/// Requests for the same object within this window become one reconcile: a Job,
/// its pod and the trainer's live stats often change together.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// An error a reconcile can end with. Every such error is transient (the API, the
/// network): the object is retried with backoff. Problems only the user can fix are
/// not errors but a Stalled condition.
pub trait ReconcileError: std::error::Error + Send + Sync + 'static {
    /// A short, stable name for the errors metric, e.g. `ApplyChild`.
    fn reason(&self) -> &'static str;
}

/// The namespaces the operator manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    namespaces: Vec<String>,
}

impl Scope {
    /// `namespaces` empty means every namespace.
    pub fn new(namespaces: Vec<String>) -> Self {
        Self { namespaces }
    }

    /// One entry per controller to run: each listed namespace, or `None` for all.
    pub fn targets(&self) -> Vec<Option<String>> {
        if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        }
    }

    /// One controller per target, started by `start` with its namespace (`None`
    /// for all).
    pub fn start_each(
        &self,
        mut start: impl FnMut(Option<&str>) -> ControllerRun,
    ) -> Vec<ControllerRun> {
        self.targets()
            .iter()
            .map(|namespace| start(namespace.as_deref()))
            .collect()
    }
}

/// Set to `1`, the caches keep whole objects as the API returns them and the
/// watches of other objects decode them whole, as before they were trimmed: for
/// measuring what trimming saves (`tests/src/bin/scale-bench.rs`), not for use.
pub const FULL_OBJECTS_ENV: &str = "LLMOPS_CACHE_FULL_OBJECTS";

/// The annotation `kubectl apply` (client-side) keeps a whole copy of the object in.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn full_objects() -> bool {
    std::env::var_os(FULL_OBJECTS_ENV).is_some_and(|v| v == "1")
}

/// A controller for the `K`s in `namespace` (or all), before its watches are added.
/// Its cache holds each `K` without what no reconcile reads ([`trim`]).
pub fn controller_for<K>(client: &Client, namespace: Option<&str>) -> Controller<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let api = scoped_api::<K>(client, namespace);
    if full_objects() {
        return Controller::new(api, watcher::Config::default());
    }
    // What `Controller::new` does, with each object trimmed before it is cached.
    let (reader, writer) = reflector::store();
    let objects = watcher(api, watcher::Config::default())
        .modify(trim)
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(objects, reader)
}

/// Drop from a cached object what the operator never reads and what is often most
/// of its size: `metadata.managedFields` and the client-side apply annotation.
pub fn trim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Add a watch of the `O`s in `namespace` (or all) that `wc` selects, by their
/// metadata only: `mapper` names the `K`s to reconcile on a change to one (any
/// change, status included).
pub fn watches_metadata<K, O, I>(
    controller: Controller<K>,
    client: &Client,
    namespace: Option<&str>,
    wc: watcher::Config,
    mapper: impl Fn(PartialObjectMeta<O>) -> I + Sync + Send + 'static,
) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    O: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    I: 'static + IntoIterator<Item = ObjectRef<K>>,
    I::IntoIter: Send,
{
    if full_objects() {
        return controller.watches(scoped_api::<O>(client, namespace), wc, move |obj: O| {
            mapper(obj.meta().clone().into_request_partial::<O>())
        });
    }
    // An `Api` of `PartialObjectMeta` lists and watches metadata only.
    let api = scoped_api::<PartialObjectMeta<O>>(client, namespace);
    controller.watches_stream(watcher(api, wc).touched_objects(), mapper)
}

/// Add a watch of the `C`s labelled as some `K`'s ([`labelled_children`]), by
/// their metadata only; a change to one reconciles its parent ([`parent_of`]).
pub fn watches_labelled<K, C>(
    controller: Controller<K>,
    client: &Client,
    namespace: Option<&str>,
) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    C: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    watches_metadata::<K, C, _>(
        controller,
        client,
        namespace,
        labelled_children::<K>(),
        parent_of,
    )
}

/// Watches the children the operator applied (by the managed-by label); their
/// owner reference leads back to the parent.
pub fn owned_children() -> watcher::Config {
    watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"))
}

/// Watches the objects labelled as some `P`'s, which includes those without an
/// owner reference (pods, a cleanup Job); [`parent_of`] leads back to the parent.
pub fn labelled_children<P: Resource<DynamicType = ()>>() -> watcher::Config {
    watcher::Config::default().labels(&parent_label_key::<P>())
}

/// The `P` a labelled child belongs to.
pub fn parent_of<P, C>(child: C) -> Option<ObjectRef<P>>
where
    P: Resource<DynamicType = ()>,
    C: ResourceExt,
{
    let name = child.labels().get(&parent_label_key::<P>())?;
    Some(ObjectRef::new(name).within(&child.namespace()?))
}

/// The objects among `objs` whose `reference` names `target` (in its namespace)
/// and that still `want` it: only they care about a change to `target`.
pub fn referrers<K, T>(
    objs: &[Arc<K>],
    target: &T,
    reference: impl Fn(&K) -> Option<&LocalObjectRef>,
    want: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
    T: ResourceExt,
{
    let (name, namespace) = (target.name_any(), target.namespace());
    objs.iter()
        .filter(|obj| {
            obj.namespace() == namespace
                && reference(obj).is_some_and(|r| r.name == name)
                && want(obj)
        })
        .map(|obj| ObjectRef::from_obj(obj.as_ref()))
        .collect()
}

/// An API handle for `K` in `namespace`, or across all namespaces.
pub fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// A controller started for one kind in one namespace (or all).
pub struct ControllerRun {
    /// Runs until the stop signal, then until in-flight reconciles finish.
    pub run: BoxFuture<'static, ()>,
    /// Resolves once the controller's cache holds the initial list.
    pub synced: BoxFuture<'static, ()>,
}

/// Start `controller` for `kind`, calling `reconcile` for each object.
pub fn start<K, E, Fut>(
    kind: &'static str,
    controller: Controller<K>,
    ctx: Arc<Context>,
    stop: Stop,
    reconcile: fn(Arc<K>, Arc<Context>) -> Fut,
) -> ControllerRun
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: ReconcileError,
{
    let store = controller.store();
    let concurrency = ctx.config.reconcile_concurrency;
    let synced = async move {
        // Only fails if the controller is dropped before syncing; then nothing waits.
        let _ = store.wait_until_ready().await;
    }
    .boxed();

    let run = controller
        .with_config(
            Config::default()
                .debounce(DEBOUNCE)
                .concurrency(concurrency),
        )
        .graceful_shutdown_on(async move { stop.wait().await })
        .run(
            move |obj, ctx: Arc<Context>| {
                let key = ObjectRef::from_obj(obj.as_ref()).to_string();
                let span = tracing::info_span!("reconcile", kind, object = %key);
                // Every pass over one generation joins that generation's trace,
                // with the pods it starts (`workload::telemetry`).
                if let Some(trace) = crate::workload::telemetry::trace_of(obj.as_ref()) {
                    trace.adopt(&span);
                }
                async move {
                    let started = Instant::now();
                    let result = reconcile(obj, ctx.clone()).await;
                    ctx.metrics.reconciled(kind, started.elapsed());
                    if result.is_ok() {
                        ctx.backoff.succeeded(&key);
                    }
                    result
                }
                .instrument(span)
            },
            move |obj, err: &E, ctx| {
                let key = ObjectRef::from_obj(obj.as_ref()).to_string();
                ctx.metrics.failed(kind, err.reason());
                let wait = ctx.backoff.failed(&key);
                tracing::warn!(kind, object = %key, reason = err.reason(), error = %err, retry_in = ?wait, "reconcile failed");
                Action::requeue(wait)
            },
            ctx,
        )
        .for_each(move |result| async move {
            match result {
                Ok(_) | Err(ControllerError::ReconcilerFailed(..)) => {}
                Err(ControllerError::ObjectNotFound(obj)) => {
                    tracing::debug!(kind, object = %obj, "object gone before it was reconciled");
                }
                Err(err) => tracing::warn!(kind, error = %err, "controller stream error"),
            }
        })
        .boxed();

    ControllerRun { run, synced }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_scope_is_one_cluster_wide_controller() {
        assert_eq!(Scope::new(vec![]).targets(), vec![None]);
        assert_eq!(
            Scope::new(vec!["a".into(), "b".into()]).targets(),
            vec![Some("a".to_string()), Some("b".to_string())]
        );
    }

    #[test]
    fn trimming_drops_managed_fields_and_the_last_applied_copy_only() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

        let annotations = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let mut cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("a".into()),
                resource_version: Some("7".into()),
                annotations: annotations(&[(LAST_APPLIED_ANNOTATION, "{}"), ("keep", "me")]),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..Default::default()
            },
            ..Default::default()
        };
        trim(&mut cm);
        assert_eq!(cm.metadata.managed_fields, None);
        assert_eq!(cm.metadata.annotations, annotations(&[("keep", "me")]));
        assert_eq!(cm.metadata.resource_version.as_deref(), Some("7"));

        cm.metadata.annotations = annotations(&[(LAST_APPLIED_ANNOTATION, "{}")]);
        trim(&mut cm);
        assert_eq!(cm.metadata.annotations, None);
    }
}
