//! Reading manifests and editing them by dotted path: used by the tests that check
//! the example manifests and the table of invalid ones against the schema.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

/// Every YAML document in a file, as JSON values (empty documents skipped).
pub fn read_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc)
            .with_context(|| format!("invalid YAML in {}", path.display()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The document named by `path#index` (index 0 when omitted), relative to `root`.
pub fn read_document(root: &Path, reference: &str) -> anyhow::Result<Value> {
    let (file, index) = match reference.split_once('#') {
        Some((file, index)) => (
            file,
            index.parse::<usize>().context("document index after '#'")?,
        ),
        None => (reference, 0),
    };
    let mut docs = read_documents(&root.join(file))?;
    if index >= docs.len() {
        bail!("{file} has {} documents, not {}", docs.len(), index + 1);
    }
    Ok(docs.swap_remove(index))
}

/// Set the field at a dotted path (`spec.sources.0.http`), creating objects on the
/// way; numeric segments index lists. Setting `null` removes the field.
pub fn set_path(target: &mut Value, dotted: &str, value: Value) -> anyhow::Result<()> {
    let segments: Vec<&str> = dotted.split('.').collect();
    let (last, parents) = segments.split_last().context("empty path")?;
    let mut node = target;
    for segment in parents {
        node = match node {
            Value::Array(items) => {
                let index: usize = segment
                    .parse()
                    .with_context(|| format!("{segment} is not a list index in {dotted}"))?;
                items
                    .get_mut(index)
                    .with_context(|| format!("no item {index} in {dotted}"))?
            }
            Value::Object(map) => map
                .entry(segment.to_string())
                .or_insert_with(|| Value::Object(Default::default())),
            _ => bail!("{segment} of {dotted} is not inside an object or list"),
        };
    }
    match node {
        Value::Array(items) => {
            let index: usize = last
                .parse()
                .with_context(|| format!("{last} is not a list index in {dotted}"))?;
            let slot = items
                .get_mut(index)
                .with_context(|| format!("no item {index} in {dotted}"))?;
            *slot = value;
        }
        Value::Object(map) if value.is_null() => {
            map.remove(*last);
        }
        Value::Object(map) => {
            map.insert(last.to_string(), value);
        }
        _ => bail!("parent of {last} in {dotted} is not an object or list"),
    }
    Ok(())
}

/// One case of the table of invalid manifests (`tests/fixtures/invalid-manifests.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidCase {
    /// Unique name of the case.
    pub name: String,
    /// The valid manifest it starts from, `file#index`.
    pub base: String,
    /// Changes by dotted path.
    pub set: serde_json::Map<String, Value>,
    /// The field the error must name.
    pub field: String,
    /// Text the error must contain, when set.
    #[serde(default)]
    pub message: Option<String>,
    /// A CEL rule, checkable without an apiserver.
    #[serde(default)]
    pub cel: bool,
    /// The change is an update of the base (transition rules).
    #[serde(default)]
    pub update: bool,
}

impl InvalidCase {
    /// Load the table from the workspace root.
    pub fn load_all(root: &Path) -> anyhow::Result<Vec<InvalidCase>> {
        let path = root.join("tests/fixtures/invalid-manifests.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(serde_yaml_ng::from_str(&text)?)
    }

    /// The base manifest and the changed one.
    pub fn manifests(&self, root: &Path) -> anyhow::Result<(Value, Value)> {
        let base = read_document(root, &self.base)?;
        let mut changed = base.clone();
        for (path, value) in &self.set {
            set_path(&mut changed, path, value.clone())
                .with_context(|| format!("case {}", self.name))?;
        }
        Ok((base, changed))
    }
}
