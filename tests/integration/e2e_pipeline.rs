//! End to end, the whole quickstart on the real control plane: the five manifests
//! of `examples/quickstart/` applied at once, every trainer pod replayed with the
//! real `trainer` (prepare, prepare, pretrain, finetune) and the serving pod with
//! the real `server`. Each kind waits for the one before it, and the lineage
//! chains by digest from the served model back to the data.

use std::time::Duration;

use anyhow::{Context, ensure};
use kube::api::Api;
use llmops_crds::{Dataset, FineTune, ModelDeployment, PretrainJob};
use llmops_tests::local::http;
use llmops_tests::operator::Operator;
use llmops_tests::replay::{Replayer, tail};
use llmops_tests::serving::ServingPods;
use llmops_tests::{Cluster, TestNamespace, eventually, workspace_root};
use serde_json::{Value, json};

use crate::e2e_dataset::{CHILD_TIMEOUT, TRAINER_TIMEOUT, has_condition, replay_job, wait_for};

/// Replays Job `job` and requires a clean exit.
async fn run_job(operator: &mut Operator, replayer: &Replayer, job: &str) -> anyhow::Result<()> {
    let exit = replay_job(operator, replayer, job).await?;
    ensure!(exit.code == 0, "{job} failed:\n{}", tail(&exit.log, 40));
    Ok(())
}

fn digest(object: &Value, pointer: &str) -> anyhow::Result<String> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_string)
        .with_context(|| format!("no digest at {pointer}: {}", object["status"]))
}

#[tokio::test]
async fn the_quickstart_runs_from_data_to_a_served_model() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let ns = TestNamespace::create(cluster, "e2e-pipeline").await?;
    let mut operator = Operator::start(cluster, &ns).await?;
    let replayer = Replayer::new(cluster).await?;
    let client = cluster.client().await?;
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), ns.name());
    let pretrains: Api<PretrainJob> = Api::namespaced(client.clone(), ns.name());
    let finetunes: Api<FineTune> = Api::namespaced(client.clone(), ns.name());
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());

    let examples = workspace_root().join("examples/quickstart");
    cluster
        .kubectl([
            "apply",
            "--server-side",
            "--field-manager=llmops-tests",
            "-n",
            ns.name(),
            "-f",
            &examples.display().to_string(),
        ])
        .await?
        .check()?;

    // Data: the corpus, then the Q&A set with the corpus's tokenizer.
    run_job(&mut operator, &replayer, "quickstart-stories-prepare-g1").await?;
    let ready = |o: &Value| has_condition(o, "Ready", "True");
    let stories = wait_for(
        &mut operator,
        &datasets,
        "quickstart-stories",
        "the corpus Ready",
        CHILD_TIMEOUT,
        ready,
    )
    .await?;
    run_job(&mut operator, &replayer, "quickstart-qa-prepare-g1").await?;
    let qa = wait_for(
        &mut operator,
        &datasets,
        "quickstart-qa",
        "the Q&A set Ready",
        CHILD_TIMEOUT,
        ready,
    )
    .await?;

    // The base model, then the fine-tune on top of it.
    run_job(&mut operator, &replayer, "quickstart-base-pretrain").await?;
    let base = wait_for(
        &mut operator,
        &pretrains,
        "quickstart-base",
        "the base model Ready",
        TRAINER_TIMEOUT,
        ready,
    )
    .await?;
    run_job(&mut operator, &replayer, "quickstart-qa-finetune").await?;
    let tuned = wait_for(
        &mut operator,
        &finetunes,
        "quickstart-qa",
        "the fine-tune Ready",
        TRAINER_TIMEOUT,
        |o| {
            has_condition(o, "Ready", "True")?;
            ensure!(
                o.pointer("/status/gate/passed") == Some(&json!(true)),
                "gate: {}",
                o["status"]["gate"]
            );
            Ok(())
        },
    )
    .await?;

    // Served: the ModelDeployment picks up the fine-tune's artifact.
    let tuned_digest = digest(&tuned, "/status/artifact/digest")?;
    // The serving pod runs the real server, Ready once it has loaded the model.
    let serving_pods = ServingPods::start(
        std::sync::Arc::new(Replayer::new(cluster).await?),
        ns.name(),
        "llmops.dev/modeldeployment=quickstart",
    );
    let served = wait_for(
        &mut operator,
        &deployments,
        "quickstart",
        "the fine-tuned model served",
        CHILD_TIMEOUT,
        |o| {
            has_condition(o, "Ready", "True")?;
            ensure!(
                o.pointer("/status/model/current/digest") == Some(&json!(tuned_digest)),
                "serving {}",
                o["status"]["model"]
            );
            Ok(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", serving_pods.describe()))?;

    // Lineage, by digest, from the served model back to the data.
    ensure!(digest(&served, "/status/model/current/digest")? == tuned_digest);
    ensure!(
        digest(&tuned, "/status/lineage/baseModel/digest")?
            == digest(&base, "/status/artifact/digest")?,
        "the fine-tune's base is not the pretrained model"
    );
    ensure!(
        digest(&tuned, "/status/lineage/dataset/digest")?
            == digest(&qa, "/status/artifact/digest")?,
        "the fine-tune's data is not the Q&A set"
    );
    ensure!(
        digest(&base, "/status/dataset/digest")? == digest(&stories, "/status/artifact/digest")?,
        "the base model's data is not the corpus"
    );

    // The real server from the serving pod answers a completion.
    let pod = serving_pods
        .ready()
        .into_iter()
        .next()
        .with_context(|| format!("no ready serving pod\n{}", serving_pods.describe()))?;
    let address = pod
        .address
        .context("the serving pod declares no http port")?;
    let answer = eventually("the replayed server to answer", Duration::from_secs(60), || async {
        let (status, body) = http(
            address,
            "POST",
            "/v1/completions",
            None,
            Some(&json!({"model": "quickstart", "prompt": "Q: Where did Cleo go in the morning?\nA: ",
                    "max_tokens": 8, "temperature": 0})),
        )?;
        ensure!(status == 200, "/v1/completions: {status} {body}");
        Ok(serde_json::from_str::<Value>(&body)?)
    })
    .await;
    let answer = answer.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nserver log ({}):\n{}",
            pod.name,
            tail(&serving_pods.logs(&pod.name), 30)
        )
    })?;
    ensure!(
        answer["usage"]["completion_tokens"]
            .as_i64()
            .is_some_and(|n| n > 0),
        "{answer}"
    );
    serving_pods.stop().await;
    drop(operator);
    ns.delete(cluster).await
}
