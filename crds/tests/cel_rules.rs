//! The CEL rules of the CRDs, evaluated without an apiserver: every rule compiles,
//! every example manifest passes, and every CEL case of the invalid-manifest table
//! fails with its message. (The apiserver tests in `tests/` check the same table,
//! plus enums and bounds, for real.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kube::core::cel::{Validator, compile_schema};
use llmops_crds::manifest::{InvalidCase, read_documents};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// openAPIV3Schema of each kind, by kind name.
fn schemas() -> BTreeMap<String, Value> {
    llmops_crds::all_crds()
        .into_iter()
        .map(|crd| {
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap();
            (
                crd.spec.names.kind.clone(),
                serde_json::to_value(schema).unwrap(),
            )
        })
        .collect()
}

fn kind_of(manifest: &Value) -> String {
    manifest["kind"]
        .as_str()
        .expect("manifest has a kind")
        .to_string()
}

fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["examples/quickstart", "examples/reference"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_rule_compiles() {
    for (kind, schema) in schemas() {
        let compiled = compile_schema(&schema);
        assert!(
            !compiled.has_errors(),
            "{kind}: {:?}",
            compiled.compilation_errors()
        );
    }
}

#[test]
fn every_example_passes_the_rules() {
    let schemas = schemas();
    let files = example_files();
    assert!(
        files.len() >= 8,
        "expected the quickstart and reference examples"
    );
    for file in files {
        for doc in read_documents(&file).unwrap() {
            let schema = &schemas[&kind_of(&doc)];
            if let Err(errors) = Validator::new().validate(schema, &doc, None) {
                panic!(
                    "{} ({}): {errors:?}",
                    file.display(),
                    doc["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn every_cel_case_is_rejected_with_its_message() {
    let schemas = schemas();
    let cases = InvalidCase::load_all(&root()).unwrap();
    let cel_cases: Vec<_> = cases.iter().filter(|c| c.cel).collect();
    assert!(cel_cases.len() >= 25, "the table covers every CEL rule");
    for case in cel_cases {
        let (base, changed) = case.manifests(&root()).unwrap();
        let schema = &schemas[&kind_of(&changed)];
        let old = case.update.then_some(&base);
        let errors = match Validator::new().validate(schema, &changed, old) {
            Ok(()) => panic!("{}: accepted, expected {:?}", case.name, case.message),
            Err(errors) => errors,
        };
        let expected = case.message.as_deref().unwrap();
        assert!(
            errors.iter().any(|e| e.message.contains(expected)),
            "{}: expected {expected:?}, got {errors:?}",
            case.name
        );
    }
}

#[test]
fn the_table_names_unique_cases() {
    let cases = InvalidCase::load_all(&root()).unwrap();
    let mut names: Vec<_> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "case names must be unique");
}
