//! `trainer pretrain`: trains a PretrainJob's model from scratch on its dataset.
//!
//! [`plan`] resolves the spec against the dataset, [`run`] is the training loop
//! (built from [`crate::train`]), [`export`] writes the Hugging Face model with
//! its lineage, and [`bench`] times a training step against PyTorch.

pub mod bench;
pub mod error;
pub mod export;
pub mod plan;
mod report;
mod resume;
pub mod run;

use std::path::{Path, PathBuf};

use llmops_crds::PretrainJob;
use llmops_crds::common::{Artifact, CheckpointInfo, TrainingProgress};
use llmops_store::{Credentials, Store};
use serde::Serialize;
use tch::Device;

pub use error::PretrainError;
pub use plan::{Plan, plan};

use crate::artifact::DatasetArtifact;
use crate::progress::Reporter;
use crate::train::checkpoint::Checkpoints;
use crate::train::distributed::{self, Collective};
use crate::train::interrupt::Interrupt;
use crate::train::memory;
use crate::train::mirror::Mirror;

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

/// How a run ended without error.
#[derive(Clone, Debug)]
pub enum Outcome<R> {
    /// Trained to the end and exported (rank 0; other ranks get no result).
    Finished(Option<R>),
    /// Stopped by a signal after saving a checkpoint.
    Interrupted {
        step: i64,
        checkpoint: Option<CheckpointInfo>,
    },
}

impl<R> Outcome<R> {
    /// How a run ends before its export: interrupted, or finished on a rank
    /// other than 0 (which exports nothing). `None` when rank 0 should export.
    pub(crate) fn before_export(trained: &run::Trained, rank: usize) -> Option<Self> {
        if trained.interrupted {
            return Some(Outcome::Interrupted {
                step: trained.state.step,
                checkpoint: trained.progress.last_checkpoint.clone(),
            });
        }
        (rank != 0).then_some(Outcome::Finished(None))
    }
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

/// The device of this rank: its GPU (`LOCAL_RANK`) when CUDA is available.
pub fn device() -> Device {
    if tch::Cuda::is_available() {
        let local = std::env::var(llmops_contract::env::LOCAL_RANK)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Device::Cuda(local)
    } else {
        Device::Cpu
    }
}

/// Where checkpoints go: beside the model for file:// and pvc:// outputs; for
/// other stores, a local working copy (`LLMOPS_WORK_DIR`) mirrored to
/// `<output>/checkpoints/`. Returns the local directory, the URI reported in
/// status, and the mirror if any.
pub(crate) fn checkpoint_location(
    store: &Store,
    credentials: &Credentials,
    name: &str,
) -> Result<(PathBuf, String, Option<Mirror>), PretrainError> {
    let uri = format!("{}/checkpoints", store.uri().trim_end_matches('/'));
    if let Some(root) = store.local_root() {
        return Ok((run::checkpoint_dir(root), uri, None));
    }
    let work = std::env::var_os(llmops_contract::env::WORK_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("out/pretrainjobs").join(name));
    let mirror = Mirror::new(store.uri(), credentials, tokio::runtime::Handle::current())?;
    Ok((run::checkpoint_dir(&work), uri, Some(mirror)))
}

/// Writes the model next to the output (or in a temporary directory for remote
/// outputs) and publishes it; returns the artifact digest.
pub(crate) async fn export_model(
    store: &Store,
    trained: &run::Trained,
    lineage: &export::Lineage<'_>,
) -> Result<String, PretrainError> {
    let scratch = store
        .local_root()
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty() && p.exists())
        .map_or_else(std::env::temp_dir, Path::to_path_buf);
    let staging =
        tempfile::tempdir_in(scratch).map_err(PretrainError::io("create a staging directory"))?;
    let files = export::write(staging.path(), &trained.vs, &trained.model, lineage)?;
    export::publish(store, staging.path(), &files).await
}

/// Fetches the dataset at `uri` into `cache` and checks it against the digest
/// the operator recorded for it, if any.
pub(crate) async fn fetch_dataset(
    uri: &str,
    recorded: Option<&Artifact>,
    cache: &Path,
) -> Result<DatasetArtifact, PretrainError> {
    let dataset = DatasetArtifact::fetch(uri, &Credentials::Ambient, cache)
        .await
        .map_err(PretrainError::dataset(uri))?;
    if let Some(expected) = recorded
        .filter(|d| d.uri == uri && !d.digest.is_empty() && d.digest != dataset.manifest.digest)
    {
        return Err(PretrainError::DatasetDigest {
            uri: uri.to_string(),
            expected: expected.digest.clone(),
            actual: dataset.manifest.digest.clone(),
        });
    }
    Ok(dataset)
}

/// Joins the data-parallel group this process's environment describes.
pub(crate) async fn join_group() -> Result<Box<dyn Collective>, PretrainError> {
    Ok(
        tokio::task::spawn_blocking(|| distributed::from_env(device()))
            .await
            .map_err(|e| PretrainError::Io {
                op: "join the data-parallel group".into(),
                source: std::io::Error::other(e),
            })??,
    )
}

/// Runs the training loop on a blocking thread, from `base` or from scratch;
/// returns its end state and the dataset back.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn train_blocking(
    plan: &Plan,
    base: Option<run::BaseModel>,
    dataset: DatasetArtifact,
    checkpoints: Checkpoints,
    checkpoints_uri: String,
    collective: Box<dyn Collective>,
    reporter: Option<Reporter>,
    interrupt: Interrupt,
    mirror: Option<Mirror>,
) -> Result<(run::Trained, DatasetArtifact), PretrainError> {
    memory::keep_freed_memory();
    let plan = plan.clone();
    tokio::task::spawn_blocking(move || {
        let session = run::Session {
            plan: &plan,
            base,
            dataset: &dataset,
            checkpoints,
            checkpoints_uri,
            device: device(),
            collective,
            reporter,
            interrupt,
            mirror,
        };
        run::train(session).map(|t| (t, dataset))
    })
    .await
    .map_err(|e| PretrainError::Io {
        op: "run the training loop".into(),
        source: std::io::Error::other(e),
    })?
}

/// Runs `job` to completion or to an interruption.
pub async fn pretrain(
    job: &PretrainJob,
    options: &Options,
    reporter: Option<Reporter>,
    interrupt: Interrupt,
) -> Result<Outcome<Pretrained>, PretrainError> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let recorded = job.status.as_ref().and_then(|s| s.dataset.as_ref());
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
        .map(|s| s.name.as_str());
    let store = Store::open(&output, &Credentials::from_secret(secret))?;

    let cache = tempfile::tempdir().map_err(PretrainError::io("create a dataset cache"))?;
    let dataset = fetch_dataset(&dataset_uri, recorded, cache.path()).await?;

    let (checkpoint_root, checkpoints_uri, mirror) =
        checkpoint_location(&store, &Credentials::from_secret(secret), &name)?;

    let collective = join_group().await?;
    let world = collective.world_size();
    let plan = plan(job, &dataset.manifest, world)?;
    let rank = collective.rank();
    tracing::info!(
        rank,
        world,
        steps = plan.total_steps,
        accumulation = plan.accumulation,
        "training {} on {dataset_uri}",
        name
    );

    let session_reporter = if rank == 0 { reporter.clone() } else { None };
    let checkpoints = Checkpoints::new(checkpoint_root, plan.checkpoints_kept);
    let (trained, dataset) = train_blocking(
        &plan,
        None,
        dataset,
        checkpoints,
        checkpoints_uri,
        collective,
        session_reporter,
        interrupt,
        mirror,
    )
    .await?;
    if let Some(early) = Outcome::before_export(&trained, rank) {
        return Ok(early);
    }
    let lineage = export::Lineage {
        kind: "PretrainJob",
        job: &name,
        namespace: job.metadata.namespace.as_deref(),
        sources: serde_json::json!({
            "dataset": {"uri": dataset_uri, "digest": dataset.manifest.digest},
        }),
        tokenizer: &dataset.dir().join(&dataset.manifest.tokenizer),
        metrics: export::training_metrics(&trained.progress),
    };
    let digest = export_model(&store, &trained, &lineage).await?;
    let finished = Pretrained {
        artifact: Artifact {
            uri: output,
            digest,
        },
        progress: trained.progress,
    };
    if let Some(reporter) = &reporter {
        reporter
            .finish(
                serde_json::to_value(&finished.progress).unwrap_or_default(),
                &format!("done: {}", report::summary(&finished.progress)),
            )
            .await;
    }
    Ok(Outcome::Finished(Some(finished)))
}
