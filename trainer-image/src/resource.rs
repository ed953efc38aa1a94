//! Reading the resource a trainer command runs for: the CR itself, as YAML or JSON.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Why the resource file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("cannot read resource file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("resource file {path} is not valid YAML or JSON: {reason}")]
    Syntax { path: String, reason: String },
    #[error("resource file {path} holds a {found}, expected a {expected}")]
    WrongKind {
        path: String,
        found: String,
        expected: String,
    },
    #[error("resource file {path} is not a valid {kind}: {reason}")]
    Invalid {
        path: String,
        kind: String,
        reason: String,
    },
}

/// Loads the resource of kind `kind` (e.g. `Dataset`) from `path`.
pub fn load<K: DeserializeOwned>(path: &Path, kind: &str) -> Result<K, ResourceError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ResourceError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, kind, &shown)
}

/// Parses a resource document; `path` only names it in errors.
pub fn parse<K: DeserializeOwned>(text: &str, kind: &str, path: &str) -> Result<K, ResourceError> {
    // YAML is a superset of JSON, so one parser reads both.
    let value: serde_json::Value =
        serde_yaml_ng::from_str(text).map_err(|e| ResourceError::Syntax {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if let Some(found) = value.get("kind").and_then(|k| k.as_str())
        && found != kind
    {
        return Err(ResourceError::WrongKind {
            path: path.into(),
            found: found.into(),
            expected: kind.into(),
        });
    }
    serde_json::from_value(value).map_err(|e| ResourceError::Invalid {
        path: path.into(),
        kind: kind.into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmops_crds::Dataset;

    const YAML: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: Dataset
metadata: {name: tiny, namespace: ml, generation: 3}
spec:
  sources: [{inline: {content: "hello"}}]
  tokenizer: {train: {vocabSize: 300}}
"#;

    #[test]
    fn reads_yaml_and_json() {
        let ds: Dataset = parse(YAML, "Dataset", "f").unwrap();
        assert_eq!(ds.metadata.name.as_deref(), Some("tiny"));
        assert_eq!(ds.spec.segmentation.sequence_length, 1024);
        let json = serde_json::to_string(&ds).unwrap();
        let again: Dataset = parse(&json, "Dataset", "f").unwrap();
        assert_eq!(again.spec, ds.spec);
    }

    #[test]
    fn names_the_problem() {
        let err = parse::<Dataset>("kind: FineTune\n", "Dataset", "f").unwrap_err();
        assert_eq!(
            err.to_string(),
            "resource file f holds a FineTune, expected a Dataset"
        );
        let err = parse::<Dataset>("kind: Dataset\nspec: {}\n", "Dataset", "f").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("resource file f is not a valid Dataset"),
            "{err}"
        );
    }
}
