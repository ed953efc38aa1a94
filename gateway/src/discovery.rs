//! Discovery: the models and pods to route to, and the keys, from the API.
//!
//! Reflectors keep ModelDeployments, the endpoints of their Services, and the
//! key Secrets; any change rebuilds the routing table and the key set as a
//! whole ([`build_table`]). A ModelDeployment `<name>` is served by the
//! Service `<name>` (port `http`, the server's port), whose ready endpoints
//! are what the EndpointSlices labelled `kubernetes.io/service-name: <name>`
//! hold: a serving pod is ready once its model is loaded, and turns unready as
//! soon as it starts draining, so new requests go only where they can be served.
//!
//! With `--endpoints=pods` the ready pods the Service selects are read
//! instead of its EndpointSlices: for clusters where no EndpointSlice
//! controller runs (a local node whose pods have loopback addresses, which
//! EndpointSlices refuse). Both give the same set of addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use llmops_crds::ModelDeployment;
use tokio::sync::Notify;

use crate::keys::KeySet;
use crate::metrics::Metrics;
use crate::registry::{Backend, CanarySplit, Registry, Table};

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The serving pods' labels, as the operator sets them and the Service
/// selects them: the ModelDeployment's name, and the component.
pub const MODEL_DEPLOYMENT_LABEL: &str = "llmops.dev/modeldeployment";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const SERVER_COMPONENT: &str = "server";
/// The serving port's name, on the Service, the EndpointSlices and the pods.
pub const PORT_NAME: &str = "http";
/// A canary's pods carry `llmops.dev/revision: canary`, and while a canary
/// runs the operator keeps a Service `<name>-canary` selecting them.
pub const REVISION_LABEL: &str = "llmops.dev/revision";
pub const CANARY: &str = "canary";

/// The Service of a ModelDeployment's canary pods.
pub fn canary_service_name(name: &str) -> String {
    format!("{name}-canary")
}

/// Where the ready endpoints come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointSource {
    /// The Services' EndpointSlices.
    Endpointslices,
    /// The ready pods the Services select.
    Pods,
}

/// What to watch.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The namespaces of the ModelDeployments served; all when empty.
    pub namespaces: Vec<String>,
    pub endpoints: EndpointSource,
    /// Where the key Secrets are, and their names.
    pub keys_namespace: String,
    pub key_secrets: Vec<String>,
}

/// The id clients use for a ModelDeployment: its name when the gateway serves
/// one namespace, `<namespace>/<name>` when it serves several or all.
pub fn model_id(namespace: &str, name: &str, single_namespace: bool) -> String {
    if single_namespace {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// The ready serving addresses of a Service's EndpointSlices.
pub fn slice_endpoints<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<SocketAddr> {
    let mut out = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(PORT_NAME))
            .or(match ports {
                [only] => Some(only),
                _ => None,
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for endpoint in &slice.endpoints {
            // Ready unset means ready, as for kube-proxy.
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            if let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            {
                out.insert(SocketAddr::new(ip, port));
            }
        }
    }
    out.into_iter().collect()
}

/// The ready serving addresses among a ModelDeployment's pods.
pub fn pod_endpoints<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<SocketAddr> {
    let mut out = BTreeSet::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(status) = &pod.status else { continue };
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let ip = status
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let port = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(PORT_NAME))
            .and_then(|p| u16::try_from(p.container_port).ok());
        if let (true, Some(ip), Some(port)) = (ready, ip, port) {
            out.insert(SocketAddr::new(ip, port));
        }
    }
    out.into_iter().collect()
}

/// The routing table of `mds`, given the ready endpoints of each
/// `(namespace, name)`; a ModelDeployment with its own `auth` is left out
/// (its pods want a key the gateway does not hold), which the warnings say.
///
/// Each of a deployment's `spec.adapters` is a model of its own, named like a
/// deployment (`<name>`, or `<namespace>/<name>`), routed to the deployment's
/// pods under the adapter's name once its status says every ready pod has it
/// loaded (or the deployment is scaled to zero: its pods load their adapters
/// before they turn ready). An adapter named like a deployment of the same
/// namespace is left out, which the warnings say.
pub fn build_table(
    mds: &[Arc<ModelDeployment>],
    endpoints: &BTreeMap<(String, String), Vec<SocketAddr>>,
    single_namespace: bool,
) -> (Table, Vec<String>) {
    let mut table = Table::default();
    let mut warnings = Vec::new();
    let mut adapters = Vec::new();
    for md in mds {
        let (namespace, name) = (md.namespace().unwrap_or_default(), md.name_any());
        if md.spec.auth.is_some() {
            warnings.push(format!(
                "ModelDeployment {namespace}/{name} has spec.auth: not served through the gateway"
            ));
            continue;
        }
        let id = model_id(&namespace, &name, single_namespace);
        let backend = Backend {
            id: id.clone(),
            created: md
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
            endpoints: endpoints
                .get(&(namespace.clone(), name.clone()))
                .cloned()
                .unwrap_or_default(),
            canary: canary_split(md, endpoints),
            namespace,
            deployment: name.clone(),
            served_name: name,
            parent: None,
        };
        for adapter in routable_adapters(md) {
            adapters.push(Backend {
                id: model_id(&backend.namespace, &adapter, single_namespace),
                served_name: adapter,
                parent: Some(id.clone()),
                ..backend.clone()
            });
        }
        table.backends.insert(id, Arc::new(backend));
    }
    for adapter in adapters {
        if table.backends.contains_key(&adapter.id) {
            warnings.push(format!(
                "adapter {} of ModelDeployment {}/{} is named like a ModelDeployment: not served through the gateway",
                adapter.served_name, adapter.namespace, adapter.deployment
            ));
            continue;
        }
        table.backends.insert(adapter.id.clone(), Arc::new(adapter));
    }
    (table, warnings)
}

/// The canary of `md` while one takes a step of traffic: the ready pods of its
/// Service `<name>-canary` and the step's weight. None outside a canary step
/// (after a promotion both revisions serve the new model; after a rollback
/// the canary pods are gone).
fn canary_split(
    md: &ModelDeployment,
    endpoints: &BTreeMap<(String, String), Vec<SocketAddr>>,
) -> Option<CanarySplit> {
    use llmops_crds::deployment::{RolloutPhase, RolloutStrategy};
    if md.spec.rollout.strategy != RolloutStrategy::Canary {
        return None;
    }
    let rollout = md.status.as_ref()?.operator.rollout.as_ref()?;
    if !matches!(
        rollout.phase,
        RolloutPhase::Progressing | RolloutPhase::Paused
    ) {
        return None;
    }
    let step = usize::try_from(rollout.step).ok()?.checked_sub(1)?;
    let weight = md.spec.rollout.canary.as_ref()?.steps.get(step)?.weight;
    let key = (
        md.namespace().unwrap_or_default(),
        canary_service_name(&md.name_any()),
    );
    let pods = endpoints.get(&key).filter(|e| !e.is_empty())?;
    Some(CanarySplit {
        endpoints: pods.clone(),
        weight: u32::try_from(weight).ok()?.clamp(1, 100),
    })
}

/// The names of `md`'s adapters that its pods serve: in the spec, and loaded
/// on every ready pod by the status (any resolved one while at zero replicas).
fn routable_adapters(md: &ModelDeployment) -> Vec<String> {
    let Some(status) = &md.status else {
        return Vec::new();
    };
    let at_zero = status
        .operator
        .replicas
        .as_ref()
        .is_some_and(|r| r.desired == 0);
    md.spec
        .adapters
        .iter()
        .filter(|a| {
            status
                .operator
                .adapters
                .iter()
                .any(|s| s.name == a.name && !s.uri.is_empty() && (s.ready || at_zero))
        })
        .map(|a| a.name.clone())
        .collect()
}

/// Forwards a reflector's events as change notices until the stream ends.
async fn drive<S, T, E>(stream: S, what: &'static str, changed: Arc<Notify>)
where
    S: Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(e) => tracing::warn!("watching {what}: {e}"),
        }
    }
}

enum Endpoints {
    Slices(Vec<Store<EndpointSlice>>),
    Pods(Vec<Store<Pod>>),
}

impl Endpoints {
    fn by_service(&self) -> BTreeMap<(String, String), Vec<SocketAddr>> {
        let mut grouped: BTreeMap<(String, String), Vec<Arc<EndpointSlice>>> = BTreeMap::new();
        let mut pods: BTreeMap<(String, String), Vec<Arc<Pod>>> = BTreeMap::new();
        match self {
            Endpoints::Slices(stores) => {
                for slice in stores.iter().flat_map(Store::state) {
                    if let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) {
                        let key = (slice.namespace().unwrap_or_default(), service.clone());
                        grouped.entry(key).or_default().push(slice);
                    }
                }
            }
            Endpoints::Pods(stores) => {
                for pod in stores.iter().flat_map(Store::state) {
                    if let Some(md) = pod.labels().get(MODEL_DEPLOYMENT_LABEL) {
                        let namespace = pod.namespace().unwrap_or_default();
                        // A canary's pods also under its revision Service's name,
                        // as its EndpointSlices would list them.
                        if pod.labels().get(REVISION_LABEL).map(String::as_str) == Some(CANARY) {
                            let key = (namespace.clone(), canary_service_name(md));
                            pods.entry(key).or_default().push(pod.clone());
                        }
                        pods.entry((namespace, md.clone())).or_default().push(pod);
                    }
                }
            }
        }
        let slices = grouped
            .into_iter()
            .map(|(k, v)| (k, slice_endpoints(v.iter().map(|s| &**s))));
        let pods = pods
            .into_iter()
            .map(|(k, v)| (k, pod_endpoints(v.iter().map(|p| &**p))));
        slices.chain(pods).collect()
    }

    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        match self {
            Endpoints::Slices(stores) => {
                for store in stores {
                    store.wait_until_ready().await?;
                }
            }
            Endpoints::Pods(stores) => {
                for store in stores {
                    store.wait_until_ready().await?;
                }
            }
        }
        Ok(())
    }
}

fn namespaced<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Watches everything and keeps `registry` current; runs until the process
/// ends.
pub async fn run(
    client: Client,
    scope: Scope,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let changed = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    // One watch per namespace served (RoleBindings there suffice), or one
    // over all of them.
    let namespaces: Vec<Option<&str>> = if scope.namespaces.is_empty() {
        vec![None]
    } else {
        scope.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };

    let mut mds = Vec::new();
    let mut slices = Vec::new();
    let mut pods = Vec::new();
    for &ns in &namespaces {
        let (store, writer) = reflector::store::<ModelDeployment>();
        let stream = watcher(namespaced(&client, ns), watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        tasks.spawn(drive(stream, "ModelDeployments", changed.clone()));
        mds.push(store);
        match scope.endpoints {
            EndpointSource::Endpointslices => {
                let (store, writer) = reflector::store::<EndpointSlice>();
                let config = watcher::Config::default().labels(SERVICE_NAME_LABEL);
                let stream = watcher(namespaced(&client, ns), config)
                    .default_backoff()
                    .reflect(writer);
                tasks.spawn(drive(stream, "EndpointSlices", changed.clone()));
                slices.push(store);
            }
            EndpointSource::Pods => {
                let (store, writer) = reflector::store::<Pod>();
                let config = watcher::Config::default().labels(&format!(
                    "{COMPONENT_LABEL}={SERVER_COMPONENT},{MODEL_DEPLOYMENT_LABEL}"
                ));
                let stream = watcher(namespaced(&client, ns), config)
                    .default_backoff()
                    .reflect(writer);
                tasks.spawn(drive(stream, "serving pods", changed.clone()));
                pods.push(store);
            }
        }
    }
    let endpoints = match scope.endpoints {
        EndpointSource::Endpointslices => Endpoints::Slices(slices),
        EndpointSource::Pods => Endpoints::Pods(pods),
    };

    // One watch per key Secret, by name: RBAC can then grant these Secrets
    // only (resourceNames), not every Secret of the namespace.
    let mut key_stores = Vec::new();
    for name in &scope.key_secrets {
        let (store, writer) = reflector::store::<Secret>();
        let api: Api<Secret> = Api::namespaced(client.clone(), &scope.keys_namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(api, config).default_backoff().reflect(writer);
        tasks.spawn(drive(stream, "key Secrets", changed.clone()));
        key_stores.push(store);
    }

    for store in &mds {
        store.wait_until_ready().await?;
    }
    endpoints.wait_until_ready().await?;
    for store in &key_stores {
        store.wait_until_ready().await?;
    }

    let single = scope.namespaces.len() == 1;
    let mut reported = BTreeSet::new();
    loop {
        let all: Vec<Arc<ModelDeployment>> = mds.iter().flat_map(Store::state).collect();
        let (table, warnings) = build_table(&all, &endpoints.by_service(), single);
        let secrets: Vec<Arc<Secret>> = key_stores.iter().flat_map(Store::state).collect();
        let (keys, key_errors) = KeySet::from_secrets(secrets.iter().map(|s| &**s));
        let now: BTreeSet<String> = warnings.into_iter().chain(key_errors).collect();
        for warning in now.difference(&reported) {
            tracing::warn!("{warning}");
        }
        reported = now;
        for backend in table.backends.values() {
            metrics
                .endpoints
                .get_or_create(&Metrics::model(&backend.id))
                .set(backend.endpoints.len() as i64);
        }
        for gone in registry
            .table()
            .backends
            .keys()
            .filter(|id| !table.backends.contains_key(*id))
        {
            metrics
                .endpoints
                .get_or_create(&Metrics::model(gone))
                .set(0);
        }
        if !registry.synced() {
            tracing::info!(
                models = table.backends.len(),
                keys = keys.len(),
                "discovery synced"
            );
        }
        registry.set_keys(keys);
        registry.set_table(table);
        registry.set_synced();
        tokio::select! {
            () = changed.notified() => {}
            Some(ended) = tasks.join_next() => {
                anyhow::bail!("a watch ended: {ended:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(ports: &str, endpoints: &str) -> EndpointSlice {
        serde_json::from_str(&format!(
            r#"{{"addressType": "IPv4", "metadata": {{"name": "s"}}, "ports": {ports}, "endpoints": {endpoints}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn ready_slice_endpoints_on_the_http_port() {
        let one = slice(
            r#"[{"name": "metrics", "port": 9000}, {"name": "http", "port": 8000}]"#,
            r#"[{"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.3"]}]"#,
        );
        let two = slice(
            r#"[{"name": "http", "port": 8000}]"#,
            r#"[{"addresses": ["10.0.0.4"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}}]"#,
        );
        let addrs: Vec<String> = slice_endpoints([&one, &two])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["10.0.0.1:8000", "10.0.0.3:8000", "10.0.0.4:8000"]);
        // A slice without a port to use gives nothing.
        let none = slice("[]", r#"[{"addresses": ["10.0.0.9"]}]"#);
        assert!(slice_endpoints([&none]).is_empty());
    }

    fn pod(ip: &str, ready: &str, deleting: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "server", "ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
        }))
        .unwrap();
        if deleting {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        pod
    }

    #[test]
    fn ready_pods_not_being_deleted() {
        let pods = [
            pod("127.244.0.1", "True", false),
            pod("127.244.0.2", "False", false),
            pod("127.244.0.3", "True", true),
        ];
        let addrs: Vec<String> = pod_endpoints(&pods)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["127.244.0.1:8000"]);
    }

    fn md(namespace: &str, name: &str, auth: bool) -> Arc<ModelDeployment> {
        let mut spec = serde_json::json!({"model": {"uri": "file:///m"}});
        if auth {
            spec["auth"] = serde_json::json!({"apiKeySecretRef": {"name": "k", "key": "keys"}});
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "llmops.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_table_names_models_by_namespace_unless_one_is_served() {
        let mds = [
            md("a", "chat", false),
            md("b", "chat", false),
            md("b", "own", true),
        ];
        let endpoints = BTreeMap::from([(
            ("a".to_string(), "chat".to_string()),
            vec!["127.0.0.1:8000".parse().unwrap()],
        )]);
        let (table, warnings) = build_table(&mds, &endpoints, false);
        let ids: Vec<&String> = table.backends.keys().collect();
        assert_eq!(ids, ["a/chat", "b/chat"]);
        assert_eq!(table.backends["a/chat"].endpoints.len(), 1);
        assert_eq!(table.backends["a/chat"].served_name, "chat");
        assert!(table.backends["b/chat"].endpoints.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("b/own"), "{warnings:?}");
        let (table, _) = build_table(&mds[..1], &endpoints, true);
        assert_eq!(table.backends.keys().collect::<Vec<_>>(), ["chat"]);
    }

    fn with_adapters(name: &str, adapters: &[(&str, bool)], desired: i32) -> Arc<ModelDeployment> {
        let spec: Vec<serde_json::Value> = adapters
            .iter()
            .map(|(a, _)| serde_json::json!({"name": a, "uri": format!("file:///adapters/{a}")}))
            .collect();
        let status: Vec<serde_json::Value> = adapters
            .iter()
            .map(|(a, ready)| {
                serde_json::json!({"name": a, "uri": format!("file:///adapters/{a}"), "ready": ready})
            })
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "llmops.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": name, "namespace": "a"},
                "spec": {"model": {"uri": "file:///m"}, "adapters": spec},
                "status": {"adapters": status, "replicas": {"desired": desired, "ready": desired}},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_canary_step_splits_by_its_weight_between_the_revisions() {
        let canary = |phase: &str, step: i32| -> Arc<ModelDeployment> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "llmops.dev/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": "chat", "namespace": "a"},
                    "spec": {"model": {"uri": "file:///m"}, "rollout": {
                        "strategy": "Canary",
                        "canary": {"steps": [{"weight": 25}, {"weight": 50}]}}},
                    "status": {"rollout": {"phase": phase, "step": step, "weight": 33}},
                }))
                .unwrap(),
            )
        };
        let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let endpoints = BTreeMap::from([
            (
                ("a".to_string(), "chat".to_string()),
                vec![
                    addr("127.0.0.1:8000"),
                    addr("127.0.0.2:8000"),
                    addr("127.0.0.3:8000"),
                ],
            ),
            (
                ("a".to_string(), "chat-canary".to_string()),
                vec![addr("127.0.0.3:8000")],
            ),
        ]);
        let split = |md| {
            build_table(&[md], &endpoints, true).0.backends["chat"]
                .canary
                .clone()
        };
        let second = split(canary("Paused", 2)).expect("a split in step 2");
        assert_eq!(
            (second.weight, second.endpoints),
            (50, vec![addr("127.0.0.3:8000")])
        );
        assert_eq!(split(canary("Progressing", 1)).map(|s| s.weight), Some(25));
        // Outside a step: promoted, rolled back, or no rollout.
        assert!(split(canary("Stable", 0)).is_none());
        assert!(split(canary("RolledBack", 1)).is_none());
        assert!(split(md("a", "chat", false)).is_none());
    }

    #[test]
    fn adapters_loaded_on_every_pod_are_models_routed_to_their_deployment() {
        let mds = [
            with_adapters(
                "chat",
                &[("support", true), ("legal", false), ("other", true)],
                2,
            ),
            md("a", "other", false),
        ];
        let endpoints = BTreeMap::from([(
            ("a".to_string(), "chat".to_string()),
            vec!["127.0.0.1:8000".parse().unwrap()],
        )]);
        let (table, warnings) = build_table(&mds, &endpoints, true);
        let ids: Vec<&String> = table.backends.keys().collect();
        // `legal` is not loaded everywhere yet; `other` is a deployment's name.
        assert_eq!(ids, ["chat", "other", "support"]);
        let support = &table.backends["support"];
        assert_eq!(
            (support.served_name.as_str(), support.deployment.as_str()),
            ("support", "chat")
        );
        assert_eq!(support.parent.as_deref(), Some("chat"));
        assert_eq!(support.endpoints, table.backends["chat"].endpoints);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("adapter other"), "{warnings:?}");
        // At zero replicas no pod has anything loaded: resolved adapters stay
        // models, so that a request for one wakes the deployment.
        let (asleep, _) = build_table(
            &[with_adapters("chat", &[("legal", false)], 0)],
            &endpoints,
            true,
        );
        assert!(asleep.backends.contains_key("legal"));
    }
}
