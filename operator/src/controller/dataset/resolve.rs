//! Resolve: turn a Dataset into the resource the trainer runs — output URI and its
//! credentials defaulted from the operator's store, and `tokenizer.datasetRef`
//! replaced by the referenced Dataset's artifact URI (with its digest recorded).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, ResourceExt};
use llmops_crds::dataset::ConfigMapSource;
use llmops_crds::{Artifact, Dataset, SecretRef};

use super::Error;
use crate::config::OperatorConfig;
use crate::runtime::Context;
use crate::runtime::conditions::Outcome;

/// Annotation on the resolved resource recording the digest of a reused tokenizer.
pub const TOKENIZER_DIGEST_ANNOTATION: &str = "llmops.dev/tokenizer-digest";

/// A Dataset ready to be validated and built.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The Dataset as the trainer sees it: identity metadata and the resolved spec.
    pub dataset: Dataset,
    /// Where the artifact is written.
    pub output_uri: String,
}

/// The result of resolving: ready to go, or waiting for something outside our control.
#[derive(Clone, Debug)]
pub enum Resolution {
    Resolved(Box<Resolved>),
    Waiting(Outcome),
}

/// Read what the Dataset refers to and resolve it.
pub async fn resolve(ds: &Dataset, ctx: &Context) -> Result<Resolution, Error> {
    if let Some(waiting) = missing_config_map_source(ds, ctx).await? {
        return Ok(Resolution::Waiting(waiting));
    }
    let own_name = ds.name_any();
    let tokenizer = match &ds.spec.tokenizer.dataset_ref {
        // A self-reference stays unresolved and is rejected by validation.
        Some(reference) if reference.name != own_name => {
            let api: Api<Dataset> =
                Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
            let referenced =
                api.get_opt(&reference.name)
                    .await
                    .map_err(|source| Error::ReadReference {
                        name: format!("Dataset {}", reference.name),
                        source,
                    })?;
            match referenced.as_ref().and_then(ready_artifact) {
                Some(artifact) => Some(artifact),
                None => {
                    return Ok(Resolution::Waiting(Outcome::progressing(
                        "WaitingForTokenizer",
                        format!(
                            "waiting for Dataset {} (spec.tokenizer.datasetRef) to be Ready",
                            reference.name
                        ),
                    )));
                }
            }
        }
        _ => None,
    };
    Ok(Resolution::Resolved(Box::new(resolve_with(
        ds,
        &ctx.config,
        tokenizer.as_ref(),
    ))))
}

/// The first configMap source whose ConfigMap or key does not exist. The pod would
/// otherwise wait in ContainerCreating on a failed mount, which only events show.
async fn missing_config_map_source(ds: &Dataset, ctx: &Context) -> Result<Option<Outcome>, Error> {
    let api: Api<ConfigMap> =
        Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    for (index, source) in ds.spec.sources.iter().enumerate() {
        let Some(wanted) = &source.config_map else {
            continue;
        };
        let found = api
            .get_opt(&wanted.name)
            .await
            .map_err(|source| Error::ReadReference {
                name: format!("ConfigMap {}", wanted.name),
                source,
            })?;
        if let Some(message) = config_map_problem(index, wanted, found.as_ref()) {
            return Ok(Some(Outcome::progressing("WaitingForConfigMap", message)));
        }
    }
    Ok(None)
}

/// What is wrong with configMap source `index`, given the ConfigMap found (if any).
pub fn config_map_problem(
    index: usize,
    wanted: &ConfigMapSource,
    found: Option<&ConfigMap>,
) -> Option<String> {
    let Some(config_map) = found else {
        return Some(format!(
            "waiting for ConfigMap {} (spec.sources[{index}].configMap.name) to exist",
            wanted.name
        ));
    };
    let has_key = config_map
        .data
        .as_ref()
        .is_some_and(|d| d.contains_key(&wanted.key))
        || config_map
            .binary_data
            .as_ref()
            .is_some_and(|d| d.contains_key(&wanted.key));
    (!has_key).then(|| {
        format!(
            "waiting for ConfigMap {} to have key {} (spec.sources[{index}].configMap.key)",
            wanted.name, wanted.key
        )
    })
}

/// The artifact of a Dataset that is Ready for its current generation.
fn ready_artifact(ds: &Dataset) -> Option<Artifact> {
    let status = ds.status.as_ref()?;
    let ready = status.conditions.iter().any(|c| {
        c.type_ == llmops_crds::condition::READY
            && c.status == "True"
            && c.observed_generation == ds.metadata.generation
    });
    ready.then(|| status.operator.artifact.clone()).flatten()
}

/// The pure part of resolving, given the referenced tokenizer artifact (if any).
pub fn resolve_with(
    ds: &Dataset,
    config: &OperatorConfig,
    tokenizer: Option<&Artifact>,
) -> Resolved {
    let name = ds.name_any();
    let namespace = ds.namespace().unwrap_or_default();
    let mut spec = ds.spec.clone();

    if spec.output.uri.is_none() {
        spec.output.uri = Some(config.default_artifact_uri("datasets", &namespace, &name));
        if spec.output.credentials_secret_ref.is_none() {
            spec.output.credentials_secret_ref =
                config
                    .artifact_store_secret
                    .as_ref()
                    .map(|secret| SecretRef {
                        name: secret.clone(),
                    });
        }
    }
    let output_uri = spec.output.uri.clone().unwrap_or_default();

    let mut annotations = std::collections::BTreeMap::new();
    if let Some(artifact) = tokenizer {
        spec.tokenizer.dataset_ref = None;
        spec.tokenizer.uri = Some(artifact.uri.clone());
        annotations.insert(
            TOKENIZER_DIGEST_ANNOTATION.to_string(),
            artifact.digest.clone(),
        );
    }

    let mut dataset = Dataset::new(&name, spec);
    dataset.metadata.namespace = Some(namespace);
    dataset.metadata.uid = ds.metadata.uid.clone();
    dataset.metadata.generation = ds.metadata.generation;
    dataset.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    Resolved {
        dataset,
        output_uri,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::dataset::tests::fixture;

    #[test]
    fn output_defaults_to_the_store_with_its_secret() {
        let ds = fixture("metadata: {name: chats, namespace: ml, uid: u1, generation: 3}");
        let resolved = resolve_with(&ds, &OperatorConfig::example(), None);
        assert_eq!(
            resolved.output_uri,
            "s3://llmops-artifacts/datasets/ml/chats"
        );
        let output = &resolved.dataset.spec.output;
        assert_eq!(
            output.uri.as_deref(),
            Some("s3://llmops-artifacts/datasets/ml/chats")
        );
        assert_eq!(
            output.credentials_secret_ref.as_ref().unwrap().name,
            "store-creds"
        );
        assert_eq!(resolved.dataset.metadata.generation, Some(3));
        assert_eq!(resolved.dataset.metadata.uid.as_deref(), Some("u1"));
        assert!(resolved.dataset.status.is_none());
    }

    #[test]
    fn an_explicit_output_keeps_its_own_credentials_only() {
        let ds =
            fixture("metadata: {name: chats, namespace: ml}\nspec:\n  output: {uri: \"gs://b/x\"}");
        let resolved = resolve_with(&ds, &OperatorConfig::example(), None);
        assert_eq!(resolved.output_uri, "gs://b/x");
        assert!(
            resolved
                .dataset
                .spec
                .output
                .credentials_secret_ref
                .is_none()
        );
    }

    #[test]
    fn a_tokenizer_reference_becomes_the_artifact_uri_and_digest() {
        let ds = fixture(
            "metadata: {name: chats, namespace: ml}\nspec:\n  tokenizer: {datasetRef: {name: web}}",
        );
        let artifact = Artifact {
            uri: "s3://a/datasets/ml/web".into(),
            digest: "sha256:ab".into(),
        };
        let resolved = resolve_with(&ds, &OperatorConfig::example(), Some(&artifact));
        let tokenizer = &resolved.dataset.spec.tokenizer;
        assert!(tokenizer.dataset_ref.is_none());
        assert_eq!(tokenizer.uri.as_deref(), Some("s3://a/datasets/ml/web"));
        assert_eq!(
            resolved.dataset.annotations()[TOKENIZER_DIGEST_ANNOTATION],
            "sha256:ab"
        );
    }

    #[test]
    fn config_map_sources_need_the_map_and_the_key() {
        let wanted = ConfigMapSource {
            name: "docs".into(),
            key: "a.txt".into(),
        };
        let missing = config_map_problem(1, &wanted, None).unwrap();
        assert!(
            missing.contains("spec.sources[1].configMap.name"),
            "{missing}"
        );
        let mut found: ConfigMap =
            serde_yaml_ng::from_str("metadata: {name: docs}\ndata: {b.txt: x}").unwrap();
        let no_key = config_map_problem(1, &wanted, Some(&found)).unwrap();
        assert!(no_key.contains("spec.sources[1].configMap.key"), "{no_key}");
        found
            .data
            .as_mut()
            .unwrap()
            .insert("a.txt".into(), "x".into());
        assert_eq!(config_map_problem(1, &wanted, Some(&found)), None);
    }

    #[test]
    fn only_a_ready_current_artifact_counts() {
        let mut web = fixture("metadata: {name: web, namespace: ml, generation: 2}");
        assert!(ready_artifact(&web).is_none());
        web.status = Some(serde_yaml_ng::from_str(
            r#"
observedGeneration: 2
conditions:
  - {type: Ready, status: "True", reason: Prepared, message: ok, observedGeneration: 2, lastTransitionTime: "2026-01-01T00:00:00Z"}
artifact: {uri: "s3://a/web", digest: "sha256:1"}
"#,
        )
        .unwrap());
        assert_eq!(ready_artifact(&web).unwrap().uri, "s3://a/web");
        web.metadata.generation = Some(3);
        assert!(ready_artifact(&web).is_none());
    }
}
