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
    output_apart_from_sources(ds, &resolved.output_uri)?;
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

/// Where a URI points, for comparing locations: the store (`s3`, `gs`, `az`,
/// `pvc`, `file`), its bucket, container or claim, and the path's segments.
#[derive(Debug, PartialEq, Eq)]
struct Location<'a> {
    scheme: &'a str,
    root: &'a str,
    segments: Vec<&'a str>,
}

impl<'a> Location<'a> {
    /// `None` for URIs that name no writable place (http sources).
    fn parse(uri: &'a str) -> Option<Self> {
        let (scheme, rest) = uri.split_once("://")?;
        if !matches!(scheme, "s3" | "gs" | "az" | "pvc" | "file") {
            return None;
        }
        let (root, path) = match scheme {
            // A file:// URI has no bucket: the whole path is compared.
            "file" => ("", rest),
            _ => rest.split_once('/').unwrap_or((rest, "")),
        };
        // `a//b` and `a/b/` name the same place as `a/b`.
        let segments = path.split('/').filter(|s| !s.is_empty()).collect();
        Some(Self {
            scheme,
            root,
            segments,
        })
    }

    fn pvc(claim: &'a str, path: &'a str) -> Self {
        Self {
            scheme: "pvc",
            root: claim,
            segments: path.split('/').filter(|s| !s.is_empty()).collect(),
        }
    }

    /// How `self` relates to `other`, compared by whole segments: `data` contains
    /// `data/raw` but not `data-2`.
    fn overlap(&self, other: &Location<'_>) -> Option<&'static str> {
        if self.scheme != other.scheme || self.root != other.root {
            return None;
        }
        let common = self
            .segments
            .iter()
            .zip(&other.segments)
            .take_while(|(a, b)| a == b)
            .count();
        match (
            common == self.segments.len(),
            common == other.segments.len(),
        ) {
            (true, true) => Some("is the same location as"),
            (true, false) => Some("contains"),
            (false, true) => Some("is inside"),
            (false, false) => None,
        }
    }
}

/// The output must not share a prefix with a source: publishing replaces, and a
/// cleanup deletes, everything under the output URI, and a source prefix around
/// the output would read the artifact back as data.
fn output_apart_from_sources(ds: &Dataset, output_uri: &str) -> Result<(), Invalid> {
    let Some(output) = Location::parse(output_uri) else {
        return Ok(());
    };
    for (index, source) in ds.spec.sources.iter().enumerate() {
        let (field, shown, location) = if let Some(store) = &source.object_store {
            let Some(location) = Location::parse(&store.uri) else {
                continue;
            };
            (
                format!("spec.sources[{index}].objectStore.uri"),
                store.uri.clone(),
                location,
            )
        } else if let Some(pvc) = &source.pvc {
            (
                format!("spec.sources[{index}].pvc"),
                format!("claim {} path {}", pvc.claim_name, pvc.path),
                Location::pvc(&pvc.claim_name, &pvc.path),
            )
        } else {
            continue;
        };
        if let Some(relation) = output.overlap(&location) {
            return invalid(
                "spec.output.uri",
                format!(
                    "{output_uri} {relation} source {field} ({shown}); publishing the artifact replaces everything under spec.output.uri, so point it at a prefix of its own"
                ),
            );
        }
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
    fn locations_overlap_by_whole_segments() {
        let at = |uri| Location::parse(uri).unwrap();
        let data = at("s3://b/data");
        assert_eq!(
            data.overlap(&at("s3://b/data/")),
            Some("is the same location as")
        );
        assert_eq!(
            data.overlap(&at("s3://b//data//")),
            Some("is the same location as")
        );
        assert_eq!(
            data.overlap(&at("s3://b/data/raw/a.jsonl")),
            Some("contains")
        );
        assert_eq!(at("s3://b/data/out").overlap(&data), Some("is inside"));
        assert_eq!(at("s3://b").overlap(&data), Some("contains"), "bucket root");
        assert_eq!(
            at("s3://b/").overlap(&data),
            Some("contains"),
            "bucket root"
        );
        for apart in [
            "s3://b/data-2",
            "s3://b/dat",
            "s3://b/other/data",
            "s3://other/data",
            "gs://b/data",
            "pvc://b/data",
        ] {
            assert_eq!(data.overlap(&at(apart)), None, "{apart}");
        }
        assert_eq!(Location::parse("https://example.com/data"), None);
        let claim = Location::pvc("shared", "/chats/archive.jsonl");
        assert_eq!(at("pvc://shared/chats").overlap(&claim), Some("contains"));
        assert_eq!(at("pvc://shared/chats-out").overlap(&claim), None);
        assert_eq!(
            at("pvc://shared/x").overlap(&Location::pvc("shared", "/")),
            Some("is inside")
        );
        assert_eq!(at("pvc://other/chats").overlap(&claim), None);
    }

    #[test]
    fn an_output_overlapping_a_source_is_rejected_naming_both() {
        let cases = [
            (
                "s3://b/corpus",
                "- objectStore: {uri: \"s3://b/corpus/raw/\"}",
                "s3://b/corpus contains source spec.sources[1].objectStore.uri (s3://b/corpus/raw/)",
            ),
            (
                "s3://b/corpus/",
                "- objectStore: {uri: \"s3://b/corpus\"}",
                "is the same location as source spec.sources[1].objectStore.uri",
            ),
            (
                "s3://b/corpus/out",
                "- objectStore: {uri: \"s3://b/corpus/\"}",
                "is inside source spec.sources[1].objectStore.uri",
            ),
            (
                "s3://b",
                "- objectStore: {uri: \"s3://b/corpus/a.jsonl\"}",
                "s3://b contains source",
            ),
            (
                "pvc://data/chats",
                "- pvc: {claimName: data, path: /chats/archive.jsonl}",
                "contains source spec.sources[1].pvc (claim data path /chats/archive.jsonl)",
            ),
        ];
        for (output, source, expected) in cases {
            let err = check(&format!(
                "metadata: {{name: chats}}\nspec:\n  output: {{uri: \"{output}\"}}\n  sources:\n    - inline: {{content: x}}\n    {source}\n"
            ))
            .unwrap_err();
            assert_eq!(err.field, "spec.output.uri", "{output}");
            assert!(err.message.contains(expected), "{output}: {}", err.message);
        }
    }

    #[test]
    fn an_output_beside_its_sources_is_valid() {
        assert_eq!(
            check(
                r#"
metadata: {name: chats}
spec:
  output: {uri: "s3://b/corpus-prepared"}
  sources:
    - objectStore: {uri: "s3://b/corpus/"}
    - objectStore: {uri: "s3://b/corpus-2/a.jsonl"}
    - objectStore: {uri: "gs://b/corpus-prepared/a.jsonl"}
    - pvc: {claimName: b, path: /corpus-prepared}
    - http: {url: "https://b/corpus-prepared/a.jsonl"}
"#
            ),
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
