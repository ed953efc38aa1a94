//! End to end, secrets: one random value in a Secret, used as a Dataset's store
//! credentials and as a ModelDeployment's API key, reaches the pods only through
//! `secretKeyRef`s. After the Dataset is prepared and the model served (and
//! answered with that key), the value is in no object of the namespace but the
//! Secret (Events, statuses, ConfigMaps, pod specs, termination messages: every
//! listable kind, found by discovery), in no log of the operator, the trainer or
//! the server, and in no file of the artifact store.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use llmops_crds::{Dataset, ModelDeployment};
use llmops_tests::local::tiny_model;
use llmops_tests::operator::Operator;
use llmops_tests::replay::tail;
use llmops_tests::runner::PodRunner;
use llmops_tests::traffic::{Backends, Load, Request, Traffic};
use llmops_tests::{Cluster, FIELD_MANAGER, TestNamespace, workspace_root};
use serde_json::{Value, json};

use crate::e2e_dataset::{CHILD_TIMEOUT, has_condition, replay_job, wait_for, wait_for_job};

const SECRET: &str = "store-creds";
const DATASET: &str = "quickstart-stories";
const DEPLOYMENT: &str = "chat";
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// `sentinel-<32 hex digits>`, fresh per run, so no fixture or earlier run can
/// hold it by chance.
fn sentinel() -> String {
    let random = |salt: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.finish()
    };
    format!("sentinel-{:016x}{:016x}", random(1), random(2))
}

/// The value, and its base64 form as a Secret's or a ConfigMap's `binaryData`
/// would carry it (cut to whole 3-byte groups: those encode the same whatever
/// follows).
fn needles(value: &str) -> anyhow::Result<Vec<String>> {
    let whole = &value.as_bytes()[..value.len() / 3 * 3];
    let encoded = serde_json::to_value(ByteString(whole.to_vec()))?;
    let encoded = encoded.as_str().context("ByteString is not a string")?;
    Ok(vec![value.to_string(), encoded.to_string()])
}

fn find_in(text: &str, needles: &[String]) -> Option<String> {
    needles.iter().find_map(|needle| {
        let at = text.find(needle.as_str())?;
        let start = text.floor_char_boundary(at.saturating_sub(200));
        let end = text.ceil_char_boundary((at + needle.len() + 200).min(text.len()));
        Some(text[start..end].to_string())
    })
}

/// Every object of every listable namespaced kind in `namespace` but Secrets
/// that holds a needle, as `kind/name: <the text around it>`; and how many
/// objects were read.
async fn leaks_in_objects(
    client: &Client,
    namespace: &str,
    needles: &[String],
) -> anyhow::Result<(Vec<String>, usize)> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut leaks = Vec::new();
    let mut read = 0;
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || (resource.group.is_empty() && resource.plural == "secrets")
            {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &resource);
            let items = api
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing {}", resource.plural))?
                .items;
            for item in items {
                read += 1;
                let text = serde_json::to_string(&item)?;
                if let Some(around) = find_in(&text, needles) {
                    let name = item.metadata.name.unwrap_or_default();
                    leaks.push(format!("{}/{name}: …{around}…", resource.kind));
                }
            }
        }
    }
    Ok((leaks, read))
}

fn leaks_in_files(dir: &Path, needles: &[String], leaks: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            leaks_in_files(&path, needles, leaks)?;
        } else {
            let bytes = std::fs::read(&path)?;
            if let Some(around) = find_in(&String::from_utf8_lossy(&bytes), needles) {
                leaks.push(format!("file {}: …{around}…", path.display()));
            }
        }
    }
    Ok(())
}

/// How many container variables of a pod template (as JSON) take `key` of
/// [`SECRET`]; an error when one of them also has a literal value.
fn secret_refs(template: &Value, key: &str) -> anyhow::Result<usize> {
    let mut found = 0;
    for container in template["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for var in container["env"].as_array().into_iter().flatten() {
            let selector = &var["valueFrom"]["secretKeyRef"];
            if selector["name"] == SECRET && selector["key"] == key {
                ensure!(var.get("value").is_none(), "{var} has a literal value");
                found += 1;
            }
        }
    }
    Ok(found)
}

#[tokio::test]
async fn a_secrets_value_appears_in_no_object_log_or_file() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-secrets").await?;
    let namespace = ns.name().to_string();
    let mut operator = Operator::start(cluster, &ns).await?;
    let client = cluster.client().await?;
    let value = sentinel();
    let needles = needles(&value)?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let data = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "api-key"]
        .map(|key| (key.to_string(), ByteString(value.clone().into_bytes())));
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from(data)),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    // Debug logging in the replayed trainer and server: more of what they do is
    // written where a leak would show.
    let replayer = Arc::new(cluster.replayer().await?.with_env("RUST_LOG", "debug"));
    let apply = PatchParams::apply(FIELD_MANAGER).force();

    // The Secret as the Dataset's store credentials.
    let path = workspace_root().join("examples/quickstart/01-dataset.yaml");
    let mut manifest: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path)?)?;
    manifest["spec"]["output"] = json!({"credentialsSecretRef": {"name": SECRET}});
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);
    datasets
        .patch(DATASET, &apply, &Patch::Apply(&manifest))
        .await?;
    let job_name = format!("{DATASET}-prepare-g1");
    let job = wait_for_job(&mut operator, &client, &job_name).await?;
    let template = serde_json::to_value(&job.spec.context("Job without spec")?.template)?;
    ensure!(
        secret_refs(&template, "AWS_SECRET_ACCESS_KEY")? == 1,
        "the prepare Job does not take AWS_SECRET_ACCESS_KEY from {SECRET}: {template}"
    );
    let prepared = replay_job(&mut operator, &replayer, &job_name).await?;
    ensure!(
        prepared.code == 0,
        "trainer prepare failed:\n{}",
        tail(&prepared.log, 40)
    );
    wait_for(
        &mut operator,
        &datasets,
        DATASET,
        "the Dataset Ready",
        CHILD_TIMEOUT,
        |d| has_condition(d, "Ready", "True"),
    )
    .await?;

    // The Secret as the API key of a served model, and one request with it.
    let model = operator.store().join("models/tiny");
    tiny_model(&model)?;
    let serving_pods = PodRunner::start(
        replayer.clone(),
        &namespace,
        &format!("llmops.dev/modeldeployment={DEPLOYMENT}"),
    );
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &namespace);
    let md = json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": DEPLOYMENT},
        "spec": {
            "model": {"uri": format!("file://{}", model.display())},
            "server": {"maxBatch": 2, "maxContext": 128, "maxNewTokens": 8, "threads": 1},
            "resources": {"cpu": "1", "memory": "1Gi"},
            "auth": {"apiKeySecretRef": {"name": SECRET, "key": "api-key"}},
        }
    });
    deployments
        .patch(DEPLOYMENT, &apply, &Patch::Apply(&md))
        .await?;
    wait_for(
        &mut operator,
        &deployments,
        DEPLOYMENT,
        "the ModelDeployment Ready",
        LOAD_TIMEOUT,
        |md| has_condition(md, "Ready", "True"),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", serving_pods.describe()))?;
    let apps: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let server = apps.get(&format!("{DEPLOYMENT}-server")).await?;
    let template = serde_json::to_value(&server.spec.context("Deployment without spec")?.template)?;
    ensure!(
        secret_refs(&template, "api-key")? == 1,
        "the server Deployment does not take the API key from {SECRET}: {template}"
    );
    let request = Request::post(
        "/v1/completions",
        json!({"model": DEPLOYMENT, "prompt": "the old man", "max_tokens": 4, "temperature": 0}),
    );
    let with_key = Load::new(request.clone().key(&value)).count(1);
    let report = Traffic::run(
        client.clone(),
        &namespace,
        Backends::service(DEPLOYMENT),
        with_key,
    )
    .await?;
    ensure!(report.ok == 1, "a request with the key failed: {report}");
    // The key is what let it through.
    let without = Traffic::run(
        client.clone(),
        &namespace,
        Backends::service(DEPLOYMENT),
        Load::new(request).count(1),
    )
    .await?;
    ensure!(
        without.failed.first().and_then(|f| f.status) == Some(401),
        "a request without the key was not refused: {without}"
    );

    // Everything the cluster and the processes recorded.
    let (mut leaks, read) = leaks_in_objects(&client, &namespace, &needles).await?;
    ensure!(
        read >= 10,
        "only {read} objects read: the scan missed the namespace"
    );
    for (what, text) in [
        ("the trainer's output", &prepared.log),
        ("the trainer's termination message", &prepared.message),
    ] {
        if let Some(around) = find_in(text, &needles) {
            leaks.push(format!("{what}: …{around}…"));
        }
    }
    let served = serving_pods.pods();
    ensure!(!served.is_empty(), "no serving pod was replayed");
    for pod in &served {
        if let Some(around) = find_in(&serving_pods.logs(&pod.name), &needles) {
            leaks.push(format!("the output of server pod {}: …{around}…", pod.name));
        }
    }
    serving_pods.stop().await;
    leaks_in_files(operator.store(), &needles, &mut leaks)?;
    if let Some(around) = find_in(&operator.log_tail(usize::MAX), &needles) {
        leaks.push(format!("the operator's log: …{around}…"));
    }
    if !leaks.is_empty() {
        bail!(
            "the Secret's value {value} leaked into:\n{}",
            leaks.join("\n")
        );
    }
    drop(operator);
    ns.delete(cluster).await
}
