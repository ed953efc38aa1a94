//! `trainer prepare`: turn a Dataset's sources into a tokenized, split, sharded
//! artifact at its output URI, with bounded memory and atomic publication.

mod clean;
pub mod dedup;
mod error;
pub mod formats;
mod label;
mod pii;
mod pipeline;
mod segment;
mod shards;
mod sources;
mod spill;
mod split;
pub mod tokenizer;

use llmops_crds::dataset::{DatasetStats, DatasetType};
use llmops_crds::{Artifact, Dataset};
use llmops_store::{Credentials, Store, StoreError};

pub use error::PrepareError;

use crate::artifact::{DatasetRef, Manifest, owner_of};
use crate::progress::Reporter;

/// The field that holds the output URI, named by errors about what is there.
const OUTPUT_FIELD: &str = "spec.output.uri";

/// Whether `err` is a refusal to replace an output prefix that holds another
/// object's data: permanent, since only a change of `spec.output.uri` (or of what
/// is there) helps.
pub fn is_refused_output(err: &PrepareError) -> bool {
    matches!(err, PrepareError::Store(StoreError::NotOwned { .. }))
}

/// The result of a successful run, as written to the termination message.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prepared {
    pub artifact: Artifact,
    pub stats: DatasetStats,
}

/// Checks what the CRD's CEL rules would (for local runs, which skip the
/// apiserver) and what only the trainer can know.
fn validate(dataset: &Dataset) -> Result<(), PrepareError> {
    let spec = &dataset.spec;
    let invalid = |m: &str| Err(PrepareError::InvalidSpec(m.into()));
    if spec.sources.is_empty() {
        return invalid("spec.sources must list at least one source");
    }
    match (&spec.labeling, spec.kind) {
        (None, DatasetType::Instruction) => {
            return invalid("type: instruction needs labeling (a template with {prompt})");
        }
        (Some(_), DatasetType::Pretraining) => {
            return invalid("labeling applies only to type: instruction");
        }
        (Some(l), _) if !l.template.contains("{prompt}") => {
            return invalid("labeling.template must contain {prompt}");
        }
        _ => {}
    }
    match (&spec.tokenizer.train, &spec.tokenizer.uri) {
        (Some(_), Some(_)) => return invalid("tokenizer: set only one of train or uri"),
        (None, None) => {
            return invalid(
                "tokenizer: set train or uri (a datasetRef reaches the trainer resolved to a uri)",
            );
        }
        _ => {}
    }
    if let Some(train) = &spec.tokenizer.train {
        if train.special_tokens.is_empty() {
            return invalid(
                "tokenizer.train.specialTokens must not be empty: the first is the end-of-sequence token",
            );
        }
        if train.vocab_size < 256 + train.special_tokens.len() as i32 {
            return invalid(
                "tokenizer.train.vocabSize must cover the 256 byte tokens plus the special tokens",
            );
        }
    }
    let seg = &spec.segmentation;
    if seg.sequence_length < 1 {
        return invalid("segmentation.sequenceLength must be positive");
    }
    if seg.stride.is_some_and(|s| s < 1 || s > seg.sequence_length) {
        return invalid("segmentation.stride must be between 1 and sequenceLength");
    }
    if spec.split.validation < 0.0
        || spec.split.test < 0.0
        || spec.split.validation + spec.split.test >= 1.0
    {
        return invalid(
            "split: validation and test must be non-negative with validation + test < 1",
        );
    }
    Ok(())
}

/// Where the artifact goes: the spec's (operator-resolved) URI, else `override_uri`
/// from the command line, else `file://./out/<name>`.
pub fn output_uri(dataset: &Dataset, override_uri: Option<&str>) -> Result<String, PrepareError> {
    if let Some(uri) = override_uri.or(dataset.spec.output.uri.as_deref()) {
        return Ok(uri.to_string());
    }
    let name = dataset
        .metadata
        .name
        .as_deref()
        .ok_or_else(|| PrepareError::InvalidSpec("metadata.name is required".into()))?;
    Ok(format!("file://./out/{name}"))
}

/// Prepares `dataset` into `output`, reporting progress through `reporter`.
pub async fn prepare(
    dataset: &Dataset,
    output: &str,
    reporter: &Reporter,
) -> Result<Prepared, PrepareError> {
    validate(dataset)?;
    let spec = dataset.spec.clone();
    let secret = spec
        .output
        .credentials_secret_ref
        .as_ref()
        .map(|s| s.name.as_str());
    let credentials = Credentials::from_secret(secret);
    let store = Store::open(output, &credentials)?;
    // Refuse a prefix holding what another object (or no one) wrote before the
    // hours of preparation, not after: publishing would replace all of it.
    let owner = owner_of(dataset);
    store
        .check_owner(&owner)
        .await
        .map_err(|e| e.for_field(OUTPUT_FIELD))?;
    // A reused tokenizer usually lives in the same artifact store as the output
    // (another Dataset's artifact, a model), so it is read with the same credentials.
    let tokenizer = match &spec.tokenizer.uri {
        Some(uri) => Some(tokenizer::load(uri, &credentials).await?),
        None => None,
    };
    // Stage next to a local target so publishing is a rename on one filesystem.
    let scratch = match store.local_root().and_then(|p| p.parent()) {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&scratch)
        .map_err(PrepareError::io(format!("create {}", scratch.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".llmops-staging-")
        .tempdir_in(&scratch)
        .map_err(PrepareError::io("create staging directory"))?;
    let spill = tempfile::tempfile_in(&scratch).map_err(PrepareError::io("create spill file"))?;
    let job = pipeline::Job {
        spec,
        dataset: DatasetRef {
            name: dataset.metadata.name.clone().unwrap_or_default(),
            namespace: dataset.metadata.namespace.clone(),
            generation: dataset.metadata.generation,
        },
        tokenizer,
        staging: staging.path().to_path_buf(),
        spill,
        reporter: reporter.clone(),
        rt: tokio::runtime::Handle::current(),
    };
    let manifest: Manifest = tokio::task::spawn_blocking(move || pipeline::run(job))
        .await
        .map_err(|e| PrepareError::Io {
            op: "run the preparation pipeline".into(),
            source: std::io::Error::other(e),
        })??;
    reporter.report(
        pipeline::stats_json(&manifest.stats),
        &format!("publishing to {output}"),
    );
    // Checked again: the prefix may have changed while the pipeline ran.
    store
        .publish_dir(staging.path(), &owner)
        .await
        .map_err(|e| e.for_field(OUTPUT_FIELD))?;
    let prepared = Prepared {
        artifact: Artifact {
            uri: output.to_string(),
            digest: manifest.digest.clone(),
        },
        stats: manifest.stats,
    };
    let s = &prepared.stats;
    let summary = format!(
        "done: {} docs kept of {}, {} tokens, {} sequences in {} shards",
        s.documents_out,
        s.documents_in,
        s.train_tokens + s.validation_tokens + s.test_tokens,
        s.sequences,
        s.shards
    );
    reporter.finish(pipeline::stats_json(s), &summary).await;
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(yaml: &str) -> Dataset {
        crate::resource::parse(yaml, "Dataset", "test").unwrap()
    }

    const BASE: &str = "metadata: {name: ds}\nspec:\n  sources: [{inline: {content: x}}]\n  tokenizer: {train: {vocabSize: 300}}\n";

    #[test]
    fn output_defaults_to_a_local_directory_named_after_the_dataset() {
        let ds = dataset(BASE);
        assert_eq!(output_uri(&ds, None).unwrap(), "file://./out/ds");
        assert_eq!(output_uri(&ds, Some("s3://b/x")).unwrap(), "s3://b/x");
        let with_spec = dataset(&format!("{BASE}  output: {{uri: 'pvc://c/d'}}\n"));
        assert_eq!(output_uri(&with_spec, None).unwrap(), "pvc://c/d");
    }

    #[test]
    fn validation_explains_what_to_fix() {
        assert!(validate(&dataset(BASE)).is_ok());
        let cases = [
            ("  type: instruction\n", "needs labeling"),
            (
                "  labeling: {template: '{prompt}'}\n",
                "only to type: instruction",
            ),
            ("  segmentation: {sequenceLength: 8, stride: 9}\n", "stride"),
            (
                "  split: {validation: 0.6, test: 0.5}\n",
                "validation + test < 1",
            ),
        ];
        for (extra, expected) in cases {
            let err = validate(&dataset(&format!("{BASE}{extra}")))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let small_vocab = BASE.replace("vocabSize: 300", "vocabSize: 200");
        let err = validate(&dataset(&small_vocab)).unwrap_err().to_string();
        assert!(err.contains("256 byte tokens"), "{err}");
    }
}
