//! Resolving `spec.adapters`, the ConfigMap, the pods' load state in status,
//! and a template that does not change with the adapters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use llmops_crds::deployment::AdapterStatus;
use llmops_crds::{Artifact, FineTune, ModelDeployment};
use serde_json::{Value, json};

use super::*;
use crate::config::OperatorConfig;
use crate::controller::deployment::build;
use crate::controller::deployment::monitor::Summary;
use crate::test_support::with_overlay;

const BASE: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: ModelDeployment
metadata: {name: chat, namespace: ml, uid: 9c1d-uid, generation: 1}
spec:
  model: {uri: "s3://models/chat-v1"}
"#;

fn spec(overlay: &str) -> ModelDeployment {
    with_overlay(BASE, overlay)
}

fn base(digest: &str) -> Model {
    Model {
        artifact: Artifact {
            uri: "s3://models/chat-v1".into(),
            digest: digest.into(),
        },
        credentials_secret: None,
    }
}

/// FineTune `name`, exporting an adapter unless `merged`, trained on
/// `trained_on` (uri, digest), Ready with `artifact` when given.
fn fine_tune(
    name: &str,
    merged: bool,
    trained_on: (&str, &str),
    artifact: Option<(&str, &str)>,
) -> FineTune {
    let mut status = json!({
        "lineage": {
            "baseModel": {"uri": trained_on.0, "digest": trained_on.1},
            "dataset": {"uri": "s3://data/support", "digest": "sha256:d1"},
        },
        "conditions": [{"type": "Ready", "status": if artifact.is_some() {"True"} else {"False"},
            "reason": "x", "message": "x", "observedGeneration": 1,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    });
    if let Some((uri, digest)) = artifact {
        status["artifact"] = json!({"uri": uri, "digest": digest});
    }
    serde_json::from_value(json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": name, "namespace": "ml", "generation": 1},
        "spec": {
            "baseModel": {"uri": trained_on.0},
            "datasetRef": {"name": "d"},
            "method": {"type": "lora"},
            "output": {"mergeAdapter": merged},
        },
        "status": status,
    }))
    .unwrap()
}

fn found(fts: Vec<FineTune>) -> HashMap<String, Option<FineTune>> {
    fts.into_iter()
        .map(|ft| (ft.name_any(), Some(ft)))
        .collect()
}

const TWO: &str = r#"
spec:
  adapters:
    - {name: support, fineTuneRef: {name: ft-support}}
    - {name: legal, uri: "s3://adapters/legal"}
"#;

#[test]
fn a_fine_tunes_adapter_and_a_uri_are_served_with_lineage() {
    let md = spec(TWO);
    let fts = found(vec![fine_tune(
        "ft-support",
        false,
        ("s3://models/chat-v1", "sha256:b1"),
        Some(("s3://out/ft-support/model-1", "sha256:a1")),
    )]);
    let resolved = resolve_with(&md, &fts, &base("sha256:b1")).unwrap();
    let support = &resolved.status[0];
    assert_eq!(
        (support.uri.as_str(), support.digest.as_str()),
        ("s3://out/ft-support/model-1", "sha256:a1")
    );
    assert_eq!(support.fine_tune_ref.as_ref().unwrap().name, "ft-support");
    let lineage = support.lineage.as_ref().unwrap();
    assert_eq!(lineage.base_model.as_ref().unwrap().digest, "sha256:b1");
    assert_eq!(lineage.dataset.as_ref().unwrap().uri, "s3://data/support");
    assert_eq!(resolved.status[1].uri, "s3://adapters/legal");
    assert_eq!(resolved.status[1].digest, "");

    let cm = build_config_map(&md, &resolved);
    assert_eq!(cm.metadata.name.as_deref(), Some("chat-adapters"));
    let file: Value = serde_json::from_str(&cm.data.unwrap()[ADAPTERS_KEY]).unwrap();
    assert_eq!(
        file,
        json!({"adapters": [
            {"name": "support", "uri": "s3://out/ft-support/model-1", "digest": "sha256:a1"},
            {"name": "legal", "uri": "s3://adapters/legal", "digest": ""},
        ]})
    );
}

#[test]
fn a_merged_fine_tune_or_another_base_is_refused_naming_the_field() {
    let md = spec(TWO);
    let merged = found(vec![fine_tune(
        "ft-support",
        true,
        ("s3://models/chat-v1", "sha256:b1"),
        Some(("s3://out/m", "sha256:a1")),
    )]);
    let err = resolve_with(&md, &merged, &base("sha256:b1")).unwrap_err();
    assert_eq!(err.field, "spec.adapters[0].fineTuneRef");
    assert!(err.message.contains("mergeAdapter"), "{err}");

    let other = found(vec![fine_tune(
        "ft-support",
        false,
        ("s3://models/other", "sha256:b2"),
        Some(("s3://out/m", "sha256:a1")),
    )]);
    let err = resolve_with(&md, &other, &base("sha256:b1")).unwrap_err();
    assert_eq!(err.field, "spec.adapters[0].fineTuneRef");
    assert!(
        err.message.contains("sha256:b2") && err.message.contains("sha256:b1"),
        "{err}"
    );
    // A base known by URI alone is compared by URI.
    let by_uri = found(vec![fine_tune(
        "ft-support",
        false,
        ("s3://models/chat-v1/", ""),
        Some(("s3://out/m", "sha256:a1")),
    )]);
    assert!(resolve_with(&md, &by_uri, &base("")).is_ok());

    let named_as_base = spec(r#"spec: {adapters: [{name: chat, uri: "s3://a"}]}"#);
    let err = resolve_with(&named_as_base, &HashMap::new(), &base("")).unwrap_err();
    assert_eq!(err.field, "spec.adapters[0].name");

    let other_claim = spec(r#"spec: {adapters: [{name: a, uri: "pvc://other/a"}]}"#);
    let err = resolve_with(&other_claim, &HashMap::new(), &base("")).unwrap_err();
    assert_eq!(err.field, "spec.adapters[0]");
}

#[test]
fn a_fine_tune_not_ready_is_waited_for_and_a_retraining_one_keeps_its_version() {
    let mut md = spec(TWO);
    let training = found(vec![fine_tune(
        "ft-support",
        false,
        ("s3://models/chat-v1", "sha256:b1"),
        None,
    )]);
    let resolved = resolve_with(&md, &training, &base("sha256:b1")).unwrap();
    assert_eq!(resolved.status[0].uri, "");
    assert!(
        resolved.status[0]
            .message
            .as_deref()
            .unwrap()
            .contains("waiting for FineTune ft-support (spec.adapters[0].fineTuneRef)")
    );
    assert_eq!(resolved.served().count(), 1);

    // Served before: kept while the FineTune trains its next version.
    let before = AdapterStatus {
        name: "support".into(),
        uri: "s3://out/ft-support/model-1".into(),
        digest: "sha256:a1".into(),
        fine_tune_ref: Some(md.spec.adapters[0].fine_tune_ref.clone().unwrap()),
        ..AdapterStatus::default()
    };
    md.status = Some(Default::default());
    md.status.as_mut().unwrap().operator.adapters = vec![before];
    let resolved = resolve_with(&md, &training, &base("sha256:b1")).unwrap();
    assert_eq!(resolved.status[0].digest, "sha256:a1");
    assert!(
        resolved.status[0]
            .message
            .as_deref()
            .unwrap()
            .contains("serving its previous adapter")
    );
    let missing = resolve_with(&md, &HashMap::new(), &base("sha256:b1")).unwrap();
    assert_eq!(missing.status[0].digest, "sha256:a1");
}

#[test]
fn status_counts_the_pods_serving_each_version() {
    let md = spec(TWO);
    let fts = found(vec![fine_tune(
        "ft-support",
        false,
        ("s3://models/chat-v1", "sha256:b1"),
        Some(("s3://out/s", "sha256:a1")),
    )]);
    let resolved = resolve_with(&md, &fts, &base("sha256:b1")).unwrap();
    let stable = Summary {
        pods: 2,
        adapters_loaded: BTreeMap::from([
            (("support".to_string(), "sha256:a1".to_string()), 2),
            (("legal".to_string(), String::new()), 1),
            // An older version still loaded somewhere does not count.
            (("support".to_string(), "sha256:a0".to_string()), 1),
        ]),
        ..Summary::default()
    };
    let status = with_loaded(resolved, &stable);
    assert_eq!((status[0].loaded, status[0].ready), (2, true));
    assert_eq!(status[0].message, None);
    assert_eq!((status[1].loaded, status[1].ready), (1, false));
    assert_eq!(
        status[1].message.as_deref(),
        Some("loaded on 1 of 2 serving pods")
    );
}

#[test]
fn the_pod_template_is_the_same_whatever_the_adapters() {
    let config = OperatorConfig::example();
    let template = |overlay: &str| {
        let md = spec(overlay);
        let children = build::build(&md, &base("sha256:b1"), &config);
        children.deployment.spec.unwrap().template
    };
    let none = template("{}");
    assert_eq!(none, template(TWO));
    let spec = none.spec.unwrap();
    let volume = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == VOLUME)
        .unwrap();
    assert_eq!(volume.config_map.unwrap().name, "chat-adapters");
    let server = &spec.containers[0];
    let args = server.args.as_ref().unwrap();
    let at = args.iter().position(|a| a == "--adapters-file").unwrap();
    assert_eq!(args[at + 1], "/etc/llmops/adapters/adapters.json");
    let mount = server
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == VOLUME)
        .unwrap();
    assert_eq!(mount.mount_path, MOUNT_DIR);
    assert_eq!(mount.sub_path, None, "a subPath mount is never updated");
}

#[test]
fn a_new_export_of_an_adapters_fine_tune_starts_a_pass() {
    let ft = fine_tune(
        "ft-support",
        false,
        ("s3://models/chat-v1", "sha256:b1"),
        Some(("s3://out/s2", "sha256:a2")),
    );
    let mut serving_old = spec(TWO);
    serving_old.status = Some(Default::default());
    serving_old.status.as_mut().unwrap().operator.adapters = vec![AdapterStatus {
        name: "support".into(),
        uri: "s3://out/s1".into(),
        digest: "sha256:a1".into(),
        ..AdapterStatus::default()
    }];
    let mut serving_new = serving_old.clone();
    serving_new.metadata.name = Some("other".into());
    serving_new.status.as_mut().unwrap().operator.adapters[0].uri = "s3://out/s2".into();
    serving_new.status.as_mut().unwrap().operator.adapters[0].digest = "sha256:a2".into();
    let unrelated = spec("{}");
    let deployments = vec![
        Arc::new(serving_old),
        Arc::new(serving_new),
        Arc::new(unrelated),
    ];
    let refs = referrers(&deployments, &ft);
    let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["chat"]);
}
