//! `trainer pretrain`: trains a PretrainJob's model from scratch on its dataset.
//!
//! [`plan`] resolves the spec against the dataset; the session in
//! [`crate::train`] fetches the data, runs the loop and exports the model with
//! its lineage; [`bench`] times a training step against PyTorch, and
//! [`zero_bench`] the ZeRO stages against each other.

pub mod bench;
pub mod error;
pub mod plan;
pub mod zero_bench;

use llmops_crds::PretrainJob;
use llmops_crds::common::{Artifact, TrainingProgress};
use llmops_store::{Credentials, Store};
use serde::Serialize;

pub use error::PretrainError;
pub use plan::plan;

use crate::artifact::{DatasetArtifact, owner_of};
use crate::progress::Reporter;
use crate::train::export::{self, Lineage};
use crate::train::interrupt::Interrupt;
use crate::train::run::{self, Trained};
use crate::train::session::{self, Outcome};

/// Command-line overrides of the resource.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Dataset artifact URI (else `status.dataset.uri`).
    pub dataset: Option<String>,
    /// Output URI (else `spec.output.uri`, else `file://./out/pretrainjobs/<name>`).
    pub output: Option<String>,
}

/// The result of a finished run: the termination message.
#[derive(Clone, Debug, Serialize)]
pub struct Pretrained {
    pub artifact: Artifact,
    pub progress: TrainingProgress,
}

/// Where the model goes.
pub fn output_uri(job: &PretrainJob, override_uri: Option<&str>) -> Result<String, PretrainError> {
    if let Some(uri) = override_uri.or(job.spec.output.uri.as_deref()) {
        return Ok(uri.to_string());
    }
    let name = job
        .metadata
        .name
        .as_deref()
        .ok_or_else(|| PretrainError::InvalidSpec("metadata.name is required".into()))?;
    Ok(format!("file://./out/pretrainjobs/{name}"))
}

/// What a PretrainJob trains from and writes to, with the options applied.
struct Resolved {
    name: String,
    dataset_uri: String,
    /// The Secret of the output store, if any.
    secret: Option<String>,
    store: Store,
}

/// The dataset (`--dataset`, else `status.dataset.uri`) and the output of `job`.
fn resolve(job: &PretrainJob, options: &Options) -> Result<Resolved, PretrainError> {
    let recorded = job
        .status
        .as_ref()
        .and_then(|s| s.operator.dataset.as_ref());
    let dataset_uri = options
        .dataset
        .clone()
        .or_else(|| recorded.map(|d| d.uri.clone()))
        .ok_or(PretrainError::NoDataset)?;
    let output = output_uri(job, options.output.as_deref())?;
    let secret = job
        .spec
        .output
        .credentials_secret_ref
        .as_ref()
        .map(|s| s.name.clone());
    let store = Store::open(&output, &Credentials::from_secret(secret.as_deref()))?;
    Ok(Resolved {
        name: job.metadata.name.clone().unwrap_or_default(),
        dataset_uri,
        secret,
        store,
    })
}

/// Fetches the dataset, joins the group, plans and runs the loop; returns the
/// loop's end state, the dataset and this process's rank.
async fn train(
    job: &PretrainJob,
    r: &Resolved,
    cache: &std::path::Path,
    reporter: Option<Reporter>,
    interrupt: Interrupt,
) -> Result<(Trained, DatasetArtifact, usize), PretrainError> {
    let recorded = job
        .status
        .as_ref()
        .and_then(|s| s.operator.dataset.as_ref());
    let dataset = session::fetch_dataset(&r.dataset_uri, recorded, cache).await?;
    let checkpoints = session::checkpoint_location(
        &r.store,
        &Credentials::from_secret(r.secret.as_deref()),
        &r.name,
    )?;
    let collective = session::join_group().await?;
    let world = collective.world_size();
    let plan = plan(job, &dataset.manifest, world)?;
    let rank = collective.rank();
    tracing::info!(
        rank,
        world,
        steps = plan.total_steps,
        accumulation = plan.accumulation,
        "training {} on {}",
        r.name,
        r.dataset_uri
    );
    let (trained, dataset) = session::run_loop(
        &plan,
        None,
        dataset,
        checkpoints,
        collective,
        reporter,
        interrupt,
    )
    .await?;
    Ok((trained, dataset, rank))
}

/// Exports the trained model with its lineage and training metrics.
async fn export(
    job: &PretrainJob,
    r: Resolved,
    trained: Trained,
    dataset: &DatasetArtifact,
) -> Result<Pretrained, PretrainError> {
    let lineage = Lineage {
        kind: "PretrainJob",
        job: &r.name,
        namespace: job.metadata.namespace.as_deref(),
        sources: serde_json::json!({
            "dataset": {"uri": r.dataset_uri, "digest": dataset.manifest.digest},
        }),
        tokenizer: &dataset.dir().join(&dataset.manifest.tokenizer),
        metrics: export::training_metrics(&trained.progress),
    };
    let artifact = session::export_model(&r.store, &trained, &lineage).await?;
    Ok(Pretrained {
        artifact,
        progress: trained.progress,
    })
}

/// Runs `job` to completion or to an interruption.
pub async fn pretrain(
    job: &PretrainJob,
    options: &Options,
    reporter: Option<Reporter>,
    interrupt: Interrupt,
) -> Result<Outcome<Pretrained>, PretrainError> {
    let resolved = resolve(job, options)?;
    session::claim_output(&resolved.store, &owner_of(job)).await?;
    let cache =
        tempfile::tempdir().map_err(crate::train::TrainError::io("create a dataset cache"))?;
    let (trained, dataset, rank) =
        train(job, &resolved, cache.path(), reporter.clone(), interrupt).await?;
    if let Some(early) = Outcome::before_export(&trained, rank) {
        return Ok(early);
    }
    let finished = export(job, resolved, trained, &dataset).await?;
    if let Some(reporter) = &reporter {
        reporter
            .finish(
                serde_json::to_value(&finished.progress).unwrap_or_default(),
                &format!("done: {}", run::summary(&finished.progress)),
            )
            .await;
    }
    Ok(Outcome::Finished(Some(finished)))
}
