//! Validate: what the API accepts but the operator or trainer cannot carry out.
//! Each problem names the field to change and becomes a Stalled condition.

use kube::ResourceExt;
use llmops_crds::Dataset;

use super::build::{credential_secrets, job_name};
use super::resolve::Resolved;
use crate::workload::credentials::colliding_secrets;
use crate::workload::storage::pvc_claim;

/// Longest name of an object whose name is also a label value (Jobs label their pods).
const MAX_LABEL_VALUE: usize = 63;

/// Inline content travels to the trainer in a ConfigMap, which holds at most 1 MiB;
/// leave room for the rest of the resource.
const MAX_INLINE_BYTES: usize = 900 * 1024;

/// A spec the operator cannot act on, and the field to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

/// A Dataset that passed validation: what its children are built from.
#[derive(Clone, Debug)]
pub struct Valid<'a> {
    /// The resolved Dataset, which the ConfigMap holds for the trainer and the
    /// children name as their owner.
    pub dataset: &'a Dataset,
    /// Where the artifact is written; a `pvc://` URI names its claim.
    pub output_uri: &'a str,
    /// The prepare Job of this generation, short enough to label its pods.
    pub job_name: String,
    /// The distinct credential Secrets, sources first, then output; no two map to
    /// the same variables.
    pub secrets: Vec<String>,
}

fn invalid<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid {
        field: field.into(),
        message: message.into(),
    })
}

/// What the children of `resolved` are built from, once nothing stands in its way.
pub fn validate(resolved: &Resolved) -> Result<Valid<'_>, Invalid> {
    let ds = &resolved.dataset;
    let job_name = prepare_job_name(ds)?;
    own_tokenizer(ds)?;
    pvc_uri("spec.output.uri", &resolved.output_uri)?;
    if let Some(uri) = &ds.spec.tokenizer.uri {
        pvc_uri("spec.tokenizer.uri", uri)?;
    }
    inline_size(ds)?;
    let secrets = credential_secrets(ds);
    if let Some((a, b)) = colliding_secrets(&secrets.iter().map(String::as_str).collect::<Vec<_>>())
    {
        return invalid(
            "credentialsSecretRef",
            format!(
                "Secrets {a:?} and {b:?} map to the same environment variables; rename one of them"
            ),
        );
    }
    Ok(Valid {
        dataset: ds,
        output_uri: &resolved.output_uri,
        job_name,
        secrets,
    })
}

/// The prepare Job of this generation, whose name labels its pods.
fn prepare_job_name(ds: &Dataset) -> Result<String, Invalid> {
    let job = job_name(&ds.name_any(), ds.metadata.generation.unwrap_or(0));
    if job.len() > MAX_LABEL_VALUE {
        return invalid(
            "metadata.name",
            format!(
                "the name is too long for its prepare Job {job:?} ({} characters, at most {MAX_LABEL_VALUE}); use a shorter name",
                job.len()
            ),
        );
    }
    Ok(job)
}

/// A tokenizer can only come from another Dataset.
fn own_tokenizer(ds: &Dataset) -> Result<(), Invalid> {
    let reference = ds.spec.tokenizer.dataset_ref.as_ref();
    if reference.is_some_and(|r| r.name == ds.name_any()) {
        return invalid(
            "spec.tokenizer.datasetRef",
            "a Dataset cannot reuse its own tokenizer",
        );
    }
    Ok(())
}

/// A `pvc://` URI names its claim.
fn pvc_uri(field: &str, uri: &str) -> Result<(), Invalid> {
    if uri.starts_with("pvc://") && pvc_claim(uri).is_none() {
        return invalid(
            field,
            "a pvc:// URI needs a claim name: pvc://<claim>/<path>",
        );
    }
    Ok(())
}

/// Inline sources fit the ConfigMap that carries them.
fn inline_size(ds: &Dataset) -> Result<(), Invalid> {
    let inline_bytes: usize = ds
        .spec
        .sources
        .iter()
        .filter_map(|s| s.inline.as_ref())
        .map(|inline| inline.content.len())
        .sum();
    if inline_bytes > MAX_INLINE_BYTES {
        return invalid(
            "spec.sources[].inline",
            format!(
                "inline sources hold {inline_bytes} bytes, more than the {MAX_INLINE_BYTES} that fit the trainer's ConfigMap; move the larger ones to a configMap, pvc or objectStore source"
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OperatorConfig;
    use crate::controller::dataset::resolve::resolve_with;
    use crate::controller::dataset::tests::fixture;

    fn check(yaml: &str) -> Result<(), Invalid> {
        validate(&resolve_with(
            &fixture(yaml),
            &OperatorConfig::example(),
            None,
        ))
        .map(|_| ())
    }

    #[test]
    fn the_fixture_is_valid() {
        assert_eq!(check("metadata: {name: chats}"), Ok(()));
    }

    #[test]
    fn a_name_too_long_for_the_job_names_metadata_name() {
        let err = check(&format!(
            "metadata: {{name: {}, generation: 1}}",
            "a".repeat(60)
        ))
        .unwrap_err();
        assert_eq!(err.field, "metadata.name");
    }

    #[test]
    fn self_referencing_tokenizer_is_rejected() {
        let err = check(
            "metadata: {name: chats}\nspec:\n  tokenizer: {train: null, datasetRef: {name: chats}}",
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.tokenizer.datasetRef");
    }

    #[test]
    fn colliding_secret_names_are_rejected() {
        let err = check(
            r#"
metadata: {name: chats}
spec:
  sources:
    - objectStore: {uri: "s3://b/x", credentialsSecretRef: {name: s3-creds}}
    - objectStore: {uri: "s3://b/y", credentialsSecretRef: {name: s3.creds}}
"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "credentialsSecretRef");
        assert!(err.message.contains("s3-creds"));
    }

    #[test]
    fn inline_sources_too_large_for_a_config_map_are_rejected() {
        let big = "x".repeat(200 * 1024);
        let sources: Vec<String> = (0..5)
            .map(|_| format!("{{inline: {{content: {big}}}}}"))
            .collect();
        let err = check(&format!(
            "metadata: {{name: chats}}\nspec:\n  sources: [{}]",
            sources.join(", ")
        ))
        .unwrap_err();
        assert_eq!(err.field, "spec.sources[].inline");
        let fits: Vec<String> = (0..4)
            .map(|_| format!("{{inline: {{content: {big}}}}}"))
            .collect();
        assert_eq!(
            check(&format!(
                "metadata: {{name: chats}}\nspec:\n  sources: [{}]",
                fits.join(", ")
            )),
            Ok(())
        );
    }

    #[test]
    fn pvc_output_without_claim_is_rejected() {
        let err =
            check("metadata: {name: chats}\nspec:\n  output: {uri: \"pvc:///data\"}").unwrap_err();
        assert_eq!(err.field, "spec.output.uri");
    }
}
