//! End to end, a flaky apiserver: the real operator reaches the control plane
//! only through a [`FaultProxy`] that answers some requests with 409, 429 or
//! 500, delays others and cuts watches, while the test itself and `local-node`
//! (with the trainer and server pods it runs) talk to the apiserver directly.
//! The whole quickstart pipeline must still come out as without faults: every
//! resource Ready, each child made once, no status going backwards.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, ListParams};
use kube::runtime::wait::await_condition;
use kube::{Client, Resource, ResourceExt};
use llmops_crds::{Dataset, FineTune, ModelDeployment, PretrainJob};
use llmops_tests::faults::{Fault, FaultProxy, Plan};
use llmops_tests::node::LocalNode;
use llmops_tests::operator::Operator;
use llmops_tests::{Cluster, TestNamespace, eventually, workspace_root};
use serde_json::Value;

use crate::e2e_dataset::{TRAINER_TIMEOUT, condition, has_condition, wait_for};

/// The trainer Jobs of the quickstart, each to be made exactly once.
const JOBS: [&str; 4] = [
    "quickstart-stories-prepare-g1",
    "quickstart-qa-prepare-g1",
    "quickstart-base-pretrain",
    "quickstart-qa-finetune",
];

/// What the watches saw break the rules: an object made again (another uid),
/// `status.observedGeneration` going down, Ready=True for a generation turning
/// into anything else.
#[derive(Default)]
struct History {
    violations: Vec<String>,
    uids: BTreeMap<String, String>,
    observed: BTreeMap<String, i64>,
    ready: BTreeMap<String, i64>,
}

impl History {
    fn see(&mut self, key: &str, object: &Value) {
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
        let first = self.uids.entry(key.to_string()).or_insert(uid.to_string());
        if first != uid {
            self.violations
                .push(format!("{key} was made again: uid {first}, then {uid}"));
        }
        if let Some(observed) = object
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64)
        {
            let highest = self.observed.entry(key.to_string()).or_insert(observed);
            if observed < *highest {
                self.violations.push(format!(
                    "{key}: status.observedGeneration went from {highest} down to {observed}"
                ));
            }
            *highest = (*highest).max(observed);
        }
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
        if has_condition(object, "Ready", "True").is_ok() {
            self.ready.insert(key.to_string(), generation);
        } else if self.ready.get(key) == Some(&generation) {
            self.violations.push(format!(
                "{key}: Ready=True for generation {generation} turned into {}",
                condition(object, "Ready").map_or("nothing".to_string(), Value::to_string)
            ));
        }
    }
}

/// Record every version the apiserver sends of object `name` (deletions are
/// left to the uid check: an object made again has another uid).
fn follow<K>(history: &Arc<Mutex<History>>, api: &Api<K>, name: &str) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync,
    K: 'static,
{
    let key = format!("{} {name}", K::kind(&()));
    let (history, api, name) = (history.clone(), api.clone(), name.to_string());
    tokio::spawn(async move {
        loop {
            let (history, key) = (history.clone(), key.clone());
            let never = move |object: Option<&K>| {
                if let Some(value) = object.and_then(|o| serde_json::to_value(o).ok()) {
                    history.lock().unwrap().see(&key, &value);
                }
                false
            };
            // Only a broken watch ends this; start it again (it lists first).
            let _ = await_condition(api.clone(), &name, never).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Kind and name → uid of every child the operator made in `namespace`.
async fn children(client: &Client, namespace: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let params = ListParams::default().labels("app.kubernetes.io/managed-by=llmops-operator");
    let mut found = BTreeMap::new();
    macro_rules! list {
        ($kind:ty) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), namespace);
            for item in api.list(&params).await?.items {
                let kind = <$kind as Resource>::kind(&());
                found.insert(
                    format!("{kind} {}", item.name_any()),
                    item.uid().unwrap_or_default(),
                );
            }
        }};
    }
    list!(Job);
    list!(ConfigMap);
    list!(ServiceAccount);
    list!(Role);
    list!(RoleBinding);
    list!(Deployment);
    list!(Service);
    Ok(found)
}

#[tokio::test]
async fn the_quickstart_runs_through_a_flaky_apiserver() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-apifaults").await?;
    let proxy = FaultProxy::start(cluster, Plan::default())?;
    let mut operator = Operator::start_through(cluster, &ns, &proxy.url()).await?;
    let node = LocalNode::start(cluster, ns.name())?;
    let client = cluster.client().await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let pretrains: Api<PretrainJob> = Api::namespaced(client.clone(), ns.name());
    let finetunes: Api<FineTune> = Api::namespaced(client.clone(), ns.name());
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());
    let history = Arc::new(Mutex::new(History::default()));
    let mut watches = vec![
        follow(&history, &datasets, "quickstart-stories"),
        follow(&history, &datasets, "quickstart-qa"),
        follow(&history, &pretrains, "quickstart-base"),
        follow(&history, &finetunes, "quickstart-qa"),
        follow(&history, &deployments, "quickstart"),
    ];
    watches.extend(JOBS.iter().map(|job| follow(&history, &jobs, job)));

    let examples = workspace_root().join("examples/quickstart");
    ns.apply(cluster, &examples).await?;

    let ready = |o: &Value| has_condition(o, "Ready", "True");
    let with_node = |e: anyhow::Error| anyhow::anyhow!("{e:#}\nlocal-node:\n{}", node.log());
    for name in ["quickstart-stories", "quickstart-qa"] {
        wait_for(
            &mut operator,
            &datasets,
            name,
            "a Dataset Ready",
            TRAINER_TIMEOUT,
            ready,
        )
        .await
        .map_err(with_node)?;
    }
    wait_for(
        &mut operator,
        &pretrains,
        "quickstart-base",
        "the base model Ready",
        TRAINER_TIMEOUT,
        ready,
    )
    .await
    .map_err(with_node)?;
    wait_for(
        &mut operator,
        &finetunes,
        "quickstart-qa",
        "the fine-tune Ready",
        TRAINER_TIMEOUT,
        ready,
    )
    .await
    .map_err(with_node)?;
    let served = wait_for(
        &mut operator,
        &deployments,
        "quickstart",
        "the model served",
        TRAINER_TIMEOUT,
        ready,
    )
    .await
    .map_err(with_node)?;
    let made = children(&client, ns.name()).await?;

    // Every fault was met on the way (the operator's traffic after Ready, its
    // watches cut and made again, may still be needed for the last ones).
    let injected = eventually("every fault injected", Duration::from_secs(60), || async {
        let injected = proxy.injected();
        for fault in [
            Fault::Conflict,
            Fault::TooManyRequests,
            Fault::ServerError,
            Fault::Slow,
            Fault::DropWatch,
        ] {
            ensure!(
                injected.get(&fault).copied().unwrap_or(0) >= 1,
                "no {fault:?} yet: {injected:?}"
            );
        }
        Ok(injected)
    })
    .await?;
    eprintln!(
        "the proxy saw {} requests and injected {injected:?}",
        proxy.requests()
    );

    // Past the controller's debounce and a few cut watches: nothing moves back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = serde_json::to_value(deployments.get("quickstart").await?)?;
    ready(&now).context("the ModelDeployment after the faults")?;
    ensure!(
        now["status"]["model"] == served["status"]["model"],
        "the served model changed: {} then {}",
        served["status"]["model"],
        now["status"]["model"]
    );
    let made_jobs: Vec<&str> = made.keys().filter_map(|k| k.strip_prefix("Job ")).collect();
    let mut expected = JOBS.to_vec();
    expected.sort();
    ensure!(made_jobs == expected, "Jobs {made_jobs:?}");
    let after = children(&client, ns.name()).await?;
    ensure!(
        after == made,
        "children changed after Ready:\nat Ready {made:?}\nlater    {after:?}"
    );

    for watch in &watches {
        watch.abort();
    }
    {
        let history = history.lock().unwrap();
        for job in JOBS {
            let key = format!("Job {job}");
            ensure!(
                history.uids.get(&key) == made.get(&key),
                "{key} first seen as uid {:?} is now {:?}",
                history.uids.get(&key),
                made.get(&key)
            );
        }
        if !history.violations.is_empty() {
            bail!(
                "{}\n{}",
                history.violations.join("\n"),
                operator.log_tail(60)
            );
        }
    }
    let mut node = node;
    node.stop()?;
    drop(operator);
    drop(proxy);
    ns.delete(cluster).await
}
