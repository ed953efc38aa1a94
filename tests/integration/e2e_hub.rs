//! End to end, a ModelDeployment of a Hugging Face Hub model with a shared model
//! cache: the real operator serves `hf://org/tiny@v1` from a gated repository of
//! a Hub on loopback (`llmops_store::test_hub`, throttled to 512 KiB/s as a
//! remote link would be), the token reaching the replayed `server` pods only as
//! the `HF_TOKEN` key of the model's `credentialsSecretRef` Secret. With
//! `spec.server.modelCache` the first pod downloads the model into the claim and
//! the second loads it from there: the test measures each pod's time from
//! process start to `/readyz` answering 200, and checks that the Hub served no
//! file to the second.
//!
//! Pods reach the Hub through `HF_ENDPOINT`, set on the replayed processes: it
//! stands for the route to the Hub that a cluster's pods have. The cache claim is
//! a statically bound PersistentVolume (the replayer gives each claim one
//! directory shared by the pods that mount it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use llmops_crds::ModelDeployment;
use llmops_store::hub::RepoKind;
use llmops_store::test_hub::{TestHub, TestRepo};
use llmops_tests::local::{http, tiny_model};
use llmops_tests::runner::PodRunner;
use llmops_tests::{Cluster, TestNamespace};
use serde_json::json;

const NAME: &str = "hub";
const TOKEN_SECRET: &str = "hub-token";
const TOKEN: &str = "hf_e2e_token_77";
const CACHE_CLAIM: &str = "model-cache";
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

fn model_deployment(replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": "hf://org/tiny@v1", "credentialsSecretRef": {"name": TOKEN_SECRET}},
            "replicas": {"min": replicas, "max": replicas},
            "server": {"maxBatch": 4, "maxContext": 128, "maxNewTokens": 16, "threads": 1,
                       "modelCache": {"claimName": CACHE_CLAIM}},
            "resources": {"cpu": "1", "memory": "1Gi"},
        }
    })
}

/// A claim bound to a PersistentVolume of its own, so that the scheduler places
/// the pods that mount it.
async fn bound_claim(client: &kube::Client, namespace: &str) -> anyhow::Result<String> {
    let pv_name = format!("{namespace}-{CACHE_CLAIM}");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name, "labels": {"llmops.dev/test": "true"}},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "",
            "hostPath": {"path": format!("/tmp/{pv_name}")},
            "claimRef": {"namespace": namespace, "name": CACHE_CLAIM},
        }
    }))?;
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .context("creating the cache PersistentVolume")?;
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": CACHE_CLAIM},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "",
            "volumeName": pv_name,
        }
    }))?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pvc)
        .await
        .context("creating the cache claim")?;
    Ok(pv_name)
}

/// Waits for a pod other than `known` to run, then for its `/readyz` to answer
/// 200; returns its name and the seconds from its process's start to ready.
async fn next_pod_ready(pods: &PodRunner, known: &[String]) -> anyhow::Result<(String, f64)> {
    let deadline = Instant::now() + LOAD_TIMEOUT;
    loop {
        ensure!(
            Instant::now() < deadline,
            "no new pod became ready in {LOAD_TIMEOUT:?}:\n{}",
            pods.describe()
        );
        let new = pods
            .running()
            .into_iter()
            .find(|p| !known.contains(&p.name) && p.address.is_some());
        if let Some(pod) = new {
            let address = pod.address.context("a serving pod without an address")?;
            let ready =
                tokio::task::spawn_blocking(move || http(address, "GET", "/readyz", None, None))
                    .await?
                    .is_ok_and(|(status, _)| status == 200);
            if ready {
                return Ok((pod.name, pod.started.elapsed().as_secs_f64()));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn files_served(hub: &TestHub) -> usize {
    hub.requests()
        .iter()
        .filter(|r| r.contains("/resolve/"))
        .count()
}

#[tokio::test]
async fn a_gated_hub_model_serves_and_a_second_pod_loads_it_from_the_shared_cache()
-> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-hub").await?;
    let operator = llmops_tests::operator::Operator::start(cluster, &ns).await?;
    let client = cluster.client().await?;
    let namespace = ns.name().to_string();

    let model_dir = tempfile::tempdir()?;
    tiny_model(model_dir.path())?;
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(model_dir.path())? {
        let path = entry?.path();
        files.insert(
            path.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read(&path)?,
        );
    }
    let model_files = files.len();
    let hub = TestHub::start().await?;
    let mut repo = TestRepo::new();
    repo.commit("v1", files);
    hub.add(RepoKind::Model, "org/tiny", repo.gated(TOKEN));
    hub.throttle(512 << 10);

    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(TOKEN_SECRET.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "HF_TOKEN".to_string(),
            ByteString(TOKEN.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    let pv_name = bound_claim(&client, &namespace).await?;

    let replayer = Arc::new(
        cluster
            .replayer()
            .await?
            .with_env("HF_ENDPOINT", &hub.endpoint),
    );
    let pods = PodRunner::start(
        replayer,
        &namespace,
        &format!("llmops.dev/modeldeployment={NAME}"),
    );
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &namespace);
    let apply = PatchParams::apply(llmops_tests::FIELD_MANAGER).force();
    deployments
        .patch(NAME, &apply, &Patch::Apply(model_deployment(1)))
        .await
        .context("applying the ModelDeployment")?;

    let outcome = async {
        let (first, first_seconds) = next_pod_ready(&pods, &[]).await?;
        let downloaded = files_served(&hub);
        ensure!(
            downloaded == model_files,
            "the first pod fetched {downloaded} files, not the model's {model_files}"
        );
        deployments
            .patch(NAME, &apply, &Patch::Apply(model_deployment(2)))
            .await?;
        let (second, second_seconds) = next_pod_ready(&pods, std::slice::from_ref(&first)).await?;
        ensure!(
            files_served(&hub) == downloaded,
            "the second pod downloaded the model again"
        );
        let log = pods.logs(&second);
        ensure!(
            log.contains("hit=true") || log.contains("hit: true") || log.contains("\"hit\":true"),
            "the second pod did not load from the cache:\n{log}"
        );
        for pod in [&first, &second] {
            ensure!(
                !pods.logs(pod).contains(TOKEN),
                "the Hub token is in the log of {pod}"
            );
        }
        eprintln!(
            "time to ready (process start to /readyz 200) at 512 KiB/s from the Hub: first pod {first_seconds:.2}s (downloaded {model_files} files), second pod {second_seconds:.2}s (from the cache)"
        );
        ensure!(
            second_seconds < first_seconds,
            "the cached pod was not faster: {first_seconds:.2}s then {second_seconds:.2}s"
        );
        anyhow::Ok(())
    }
    .await;
    let _ = Api::<PersistentVolume>::all(client.clone())
        .delete(&pv_name, &DeleteParams::default())
        .await;
    outcome.map_err(|e| anyhow::anyhow!("{e:#}\n{}", pods.describe()))?;
    drop(operator);
    ns.delete(cluster).await?;
    Ok(())
}
