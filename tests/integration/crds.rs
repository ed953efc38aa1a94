//! The CRDs on a real apiserver.

use std::time::Duration;

use anyhow::{Context, ensure};
use kube::CustomResourceExt;
use llmops_tests::{Cluster, apply_crds, eventually};

#[tokio::test]
async fn every_crd_is_established_and_structural() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let client = cluster.client().await?;
    let crds = apply_crds(&client).await?;
    ensure!(crds.len() == llmops_crds::all_crds().len());
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        let status_of = |kind: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == kind)
                .map(|c| c.status.as_str())
        };
        ensure!(
            status_of("Established") == Some("True"),
            "{name} is not Established: {conditions:?}"
        );
        ensure!(
            status_of("NamesAccepted") == Some("True"),
            "{name} names not accepted: {conditions:?}"
        );
        ensure!(
            status_of("NonStructuralSchema") != Some("True"),
            "{name} has a non-structural schema: {conditions:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_shows_the_doc_comments() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    apply_crds(&cluster.client().await?).await?;
    let dataset = serde_json::to_value(<llmops_crds::Dataset as CustomResourceExt>::crd())?;
    let tokenizer = dataset
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/tokenizer")
        .context("no spec.tokenizer in the Dataset schema")?;
    let mut expected = vec![
        tokenizer["description"]
            .as_str()
            .context("spec.tokenizer has no description")?,
    ];
    expected.push(
        tokenizer["properties"]["train"]["description"]
            .as_str()
            .context("no train description")?,
    );

    // The OpenAPI document that kubectl explain reads is published a moment after
    // the CRD is Established.
    eventually(
        "kubectl explain dataset.spec.tokenizer",
        Duration::from_secs(60),
        || async {
            let out = cluster
                .kubectl([
                    "explain",
                    "dataset.spec.tokenizer",
                    "--api-version=llmops.dev/v1alpha1",
                ])
                .await?
                .check()?;
            let out = squash(&out);
            for text in &expected {
                ensure!(
                    out.contains(&squash(text)),
                    "explain does not show {text:?}:\n{out}"
                );
            }
            Ok(())
        },
    )
    .await
}

/// Whitespace collapsed to single spaces (kubectl explain wraps lines).
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
