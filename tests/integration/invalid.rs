//! The table of invalid manifests (`tests/fixtures/invalid-manifests.yaml`): the
//! apiserver rejects each one, naming the field.

use anyhow::ensure;
use kube::ResourceExt;
use kube::api::PostParams;
use llmops_crds::manifest::InvalidCase;
use llmops_tests::{Cluster, TestNamespace, apply_crds, dynamic_api, workspace_root};
use serde_json::Value;

#[tokio::test]
async fn invalid_manifests_are_rejected_naming_the_field() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let client = cluster.client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::create(cluster, "invalid").await?;
    let root = workspace_root();
    let cases = InvalidCase::load_all(&root)?;
    ensure!(!cases.is_empty(), "the table is empty");

    let mut mismatches = Vec::new();
    for case in &cases {
        let (mut base, mut changed) = case.manifests(&root)?;
        // One object per case, so update cases do not collide.
        base["metadata"]["name"] = Value::from(case.name.clone());
        changed["metadata"]["name"] = Value::from(case.name.clone());
        let (api, base) = dynamic_api(&client, ns.name(), &base).await?;
        let (_, mut changed) = dynamic_api(&client, ns.name(), &changed).await?;
        let result = if case.update {
            match api.create(&PostParams::default(), &base).await {
                Ok(created) => {
                    changed.metadata.resource_version = created.resource_version();
                    api.replace(&case.name, &PostParams::default(), &changed)
                        .await
                }
                Err(err) => {
                    mismatches.push(format!("{}: the base was rejected: {err}", case.name));
                    continue;
                }
            }
        } else {
            api.create(&PostParams::default(), &changed).await
        };
        let message = match result {
            Ok(_) => {
                mismatches.push(format!("{}: accepted", case.name));
                continue;
            }
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
                status.message
            }
            Err(err) => {
                mismatches.push(format!("{}: failed otherwise: {err}", case.name));
                continue;
            }
        };
        eprintln!("{}: {message}", case.name);
        let mut missing = Vec::new();
        // The field as the apiserver names it: `<path>: <what is wrong>`.
        if !message.contains(&format!("{}: ", case.field)) {
            missing.push(format!("field {:?}", case.field));
        }
        if let Some(expected) = &case.message
            && !message.contains(expected.as_str())
        {
            missing.push(format!("message {expected:?}"));
        }
        if !missing.is_empty() {
            mismatches.push(format!(
                "{}: missing {}; the apiserver said: {message}",
                case.name,
                missing.join(" and ")
            ));
        }
    }
    for mismatch in &mismatches {
        eprintln!("MISMATCH {mismatch}");
    }
    ensure!(
        mismatches.is_empty(),
        "{} of {} invalid-manifest cases did not match",
        mismatches.len(),
        cases.len()
    );
    ns.delete(cluster).await
}
