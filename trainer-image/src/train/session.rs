//! The steps `trainer pretrain` and `trainer finetune` both take, in order:
//! fetch the dataset ([`fetch_dataset`]), find the checkpoints
//! ([`checkpoint_location`]), join the data-parallel group ([`join_group`]), run
//! the loop ([`run_loop`]), stop before the export unless this rank finished it
//! ([`Outcome::before_export`]), and export the model ([`export_model`]). Each
//! command resolves its own resource and plan between these steps.

use std::path::{Path, PathBuf};

use llmops_crds::common::{Artifact, CheckpointInfo};
use llmops_store::{Credentials, Owner, Store};
use tch::Device;

use super::TrainError;
use super::checkpoint::Checkpoints;
use super::distributed::{self, Collective};
use super::export;
use super::interrupt::Interrupt;
use super::memory;
use super::mirror::Mirror;
use super::plan::Plan;
use super::run::{self, BaseModel, Trained};
use crate::artifact::DatasetArtifact;
use crate::progress::Reporter;

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
    pub fn before_export(trained: &Trained, rank: usize) -> Option<Self> {
        if trained.interrupted {
            return Some(Outcome::Interrupted {
                step: trained.state.step,
                checkpoint: trained.progress.last_checkpoint.clone(),
            });
        }
        (rank != 0).then_some(Outcome::Finished(None))
    }
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

/// Fetches the dataset at `uri` into `cache` and checks it against the digest
/// the operator recorded for it, if any.
pub async fn fetch_dataset(
    uri: &str,
    recorded: Option<&Artifact>,
    cache: &Path,
) -> Result<DatasetArtifact, TrainError> {
    let dataset = DatasetArtifact::fetch(uri, &Credentials::Ambient, cache)
        .await
        .map_err(TrainError::dataset(uri))?;
    if let Some(expected) = recorded
        .filter(|d| d.uri == uri && !d.digest.is_empty() && d.digest != dataset.manifest.digest)
    {
        return Err(TrainError::DatasetDigest {
            uri: uri.to_string(),
            expected: expected.digest.clone(),
            actual: dataset.manifest.digest.clone(),
        });
    }
    Ok(dataset)
}

/// Where a run keeps its checkpoints.
pub struct CheckpointLocation {
    /// The local directory the loop writes.
    pub dir: PathBuf,
    /// The URI reported in status.
    pub uri: String,
    /// The remote copy, for outputs that are not local directories.
    pub mirror: Option<Mirror>,
}

/// Where checkpoints go: beside the model for file:// and pvc:// outputs; for
/// other stores, a local working copy (`LLMOPS_WORK_DIR`) mirrored to
/// `<output>/checkpoints/`.
pub fn checkpoint_location(
    store: &Store,
    credentials: &Credentials,
    name: &str,
) -> Result<CheckpointLocation, TrainError> {
    let uri = format!("{}/checkpoints", store.uri().trim_end_matches('/'));
    if let Some(root) = store.local_root() {
        return Ok(CheckpointLocation {
            dir: run::checkpoint_dir(root),
            uri,
            mirror: None,
        });
    }
    let work = std::env::var_os(llmops_contract::env::WORK_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("out/pretrainjobs").join(name));
    let mirror = Mirror::new(store.uri(), credentials, tokio::runtime::Handle::current())?;
    Ok(CheckpointLocation {
        dir: run::checkpoint_dir(&work),
        uri,
        mirror: Some(mirror),
    })
}

/// Joins the data-parallel group this process's environment describes.
pub async fn join_group() -> Result<Box<dyn Collective>, TrainError> {
    Ok(
        tokio::task::spawn_blocking(|| distributed::from_env(device()))
            .await
            .map_err(TrainError::task("join the data-parallel group"))??,
    )
}

/// Runs the training loop on a blocking thread, from `base` or from scratch,
/// keeping `plan.checkpointsKept` checkpoints at `checkpoints`; only rank 0
/// reports to `reporter`. Returns the loop's end state and the dataset back.
pub async fn run_loop(
    plan: &Plan,
    base: Option<BaseModel>,
    dataset: DatasetArtifact,
    checkpoints: CheckpointLocation,
    collective: Box<dyn Collective>,
    reporter: Option<Reporter>,
    interrupt: Interrupt,
) -> Result<(Trained, DatasetArtifact), TrainError> {
    memory::keep_freed_memory();
    let plan = plan.clone();
    let reporter = reporter.filter(|_| collective.rank() == 0);
    tokio::task::spawn_blocking(move || {
        let inputs = run::Inputs {
            plan: &plan,
            base,
            dataset: &dataset,
            checkpoints: Checkpoints::new(checkpoints.dir, plan.checkpoints_kept),
            checkpoints_uri: checkpoints.uri,
            device: device(),
            collective,
            reporter,
            interrupt,
            mirror: checkpoints.mirror,
        };
        run::train(inputs).map(|t| (t, dataset))
    })
    .await
    .map_err(TrainError::task("run the training loop"))?
}

/// Claims the output prefix for the resource being trained (`Store::claim`), so
/// that its deletion may delete it and another object's output is refused
/// before anything is written there.
pub async fn claim_output(store: &Store, owner: &Owner) -> Result<(), TrainError> {
    match store.claim(owner).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::warn!(
                uri = store.uri(),
                "the output holds files without an ownership marker (written by an earlier version): they are used, but never deleted with {owner}"
            );
            Ok(())
        }
        Err(e) => Err(e.for_field("spec.output.uri").into()),
    }
}

/// Writes the model next to the output (or in a temporary directory for remote
/// outputs) and publishes it in a directory of its own; returns that directory
/// and the artifact digest.
pub async fn export_model(
    store: &Store,
    trained: &Trained,
    lineage: &export::Lineage<'_>,
) -> Result<Artifact, TrainError> {
    export_with(store, |staging| {
        export::write(staging, &trained.vs, &trained.model, lineage)
    })
    .await
}

/// Exports the LoRA adapter of `trained` alone, in the PEFT layout, as its own
/// artifact (see [`export::write_adapter`]).
pub async fn export_adapter(
    store: &Store,
    trained: &Trained,
    settings: &llmops_model::LoraSettings,
    lineage: &export::Lineage<'_>,
) -> Result<Artifact, TrainError> {
    export_with(store, |staging| {
        export::write_adapter(staging, &trained.vs, &trained.model, settings, lineage)
    })
    .await
}

/// Writes an export with `write` into a staging directory, then publishes it.
async fn export_with(
    store: &Store,
    write: impl FnOnce(&Path) -> Result<llmops_store::ModelManifest, TrainError>,
) -> Result<Artifact, TrainError> {
    let scratch = store
        .local_root()
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty() && p.exists())
        .map_or_else(std::env::temp_dir, Path::to_path_buf);
    let staging =
        tempfile::tempdir_in(scratch).map_err(TrainError::io("create a staging directory"))?;
    let manifest = write(staging.path())?;
    let uri = export::publish(store, staging.path(), &manifest).await?;
    Ok(Artifact {
        uri,
        digest: manifest.digest,
    })
}
