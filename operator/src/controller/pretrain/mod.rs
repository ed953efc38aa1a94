//! The PretrainJob controller: runs `trainer pretrain` pods on a Ready Dataset,
//! keeps them going through restarts and disruptions (each resumes from the newest
//! checkpoint), suspends and resumes them, and reports the trained model.
//!
//! resolve (Dataset artifact, output URI) → validate → build (ConfigMap, RBAC,
//! Service, Job) → apply (server-side apply, orphans deleted) → status (from the Job
//! and its pods).
//!
//! Contracts:
//! - **Lineage.** The Dataset must be Ready for its current generation; its
//!   artifact `{uri, digest}` is recorded in `status.dataset` when the Job is made
//!   and never changes afterwards (the trainer refuses data whose digest differs).
//! - **Pods.** `trainer pretrain --resource /etc/llmops/resource.yaml`; the resource
//!   is the PretrainJob with `spec.output.uri` defaulted to
//!   `<store>/pretrainjobs/<ns>/<name>` and `status.dataset` set. Env
//!   `LLMOPS_OUTPUT_URI`, `LLMOPS_PVC_ROOT`, the output Secret's
//!   `LLMOPS_CRED_<SECRET>_*` and the dataset store's Secret under the plain key
//!   names (the trainer reads the dataset with ambient credentials); with more than
//!   one replica `RANK` (the completion index), `WORLD_SIZE` (pods),
//!   `MASTER_ADDR=<name>-pretrain-0.<name>-workers`, `MASTER_PORT=29500`; with
//!   more than one GPU per pod `LLMOPS_PROCS_PER_POD=<gpus>`, and the trainer runs
//!   one rank per GPU (`LOCAL_RANK`, `RANK = pod × gpus + local`).
//! - **Failures.** Disruptions and exit 143 (SIGTERM, checkpoint saved) are retried
//!   without counting; exit 2 fails at once; other failures are retried up to
//!   `failurePolicy.maxRestarts` group restarts, each resuming from the newest
//!   checkpoint. `status.restarts` counts them. Output is never deleted.
//! - **Runs.** The Job is replaced only when the spec changes (`suspend` aside), and
//!   only after the old pods stopped; `suspend` is set on the live Job.

mod build;
mod resolve;
mod status;
mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use llmops_crds::{Dataset, DeletionPolicy, JobPhase, PretrainJob, PretrainJobStatus};

use crate::config::OperatorConfig;
use crate::controller::training::reconcile::{TrainingKind, reconcile};
use crate::controller::training::run;
use crate::controller::training::validate::{Invalid, Valid};
use crate::runtime::Context;
use crate::runtime::conditions::Outcome;
use crate::runtime::controller::{
    ControllerRun, ReconcileError, Scope, controller_for, owned_children, referrers, scoped_api,
    start, watches_labelled,
};
use crate::runtime::status::WriteStatusError;
use crate::runtime::stop::Stop;
use crate::workload::cleanup::{CleanupError, OwnsArtifact};
use crate::workload::lineage::default_output;
use crate::workload::observe::JobState;
use resolve::{Resolution, Resolved};
use status::{Observed, OperatorStatus};

/// The kind label of metrics and logs.
pub const KIND: &str = "PretrainJob";

/// Why a PretrainJob reconcile failed; all are transient and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read Dataset {name} (spec.datasetRef): {source}")]
    ReadDataset { name: String, source: kube::Error },
    #[error("failed to render the resource file for the trainer: {0}")]
    RenderResource(#[from] serde_yaml_ng::Error),
    #[error(transparent)]
    Run(#[from] run::Error),
    #[error(transparent)]
    WriteStatus(#[from] WriteStatusError),
    #[error("deleting the PretrainJob's artifact: {0}")]
    Cleanup(#[from] CleanupError),
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::ReadDataset { .. } => "ReadDataset",
            Error::RenderResource(_) => "RenderResource",
            Error::Run(err) => err.reason(),
            Error::WriteStatus(_) => "WriteStatus",
            Error::Cleanup(_) => "Cleanup",
        }
    }
}

/// One PretrainJob controller per namespace in `scope`, each watching
/// PretrainJobs, their Jobs, ConfigMaps and Services, their pods (by label), and
/// Datasets (a Dataset becoming Ready starts the PretrainJobs waiting for it).
pub fn controllers(ctx: &Arc<Context>, scope: &Scope, stop: &Stop) -> Vec<ControllerRun> {
    let client = &ctx.client;
    scope.start_each(|ns| {
        let controller = controller_for::<PretrainJob>(client, ns);
        let store = controller.store();
        let controller = watches_labelled::<PretrainJob, Pod>(controller, client, ns);
        let controller = controller
            .owns(scoped_api::<Job>(client, ns), owned_children())
            .owns(scoped_api::<ConfigMap>(client, ns), owned_children())
            .owns(scoped_api::<Service>(client, ns), owned_children())
            .watches(
                scoped_api::<Dataset>(client, ns),
                watcher::Config::default(),
                move |ds| waiting_on(&store.state(), &ds),
            );
        start(
            KIND,
            controller,
            ctx.clone(),
            stop.clone(),
            reconcile::<PretrainJob>,
        )
    })
}

/// The PretrainJobs that reference `ds` and have not recorded their dataset yet:
/// only they care about the Dataset's changes.
fn waiting_on(jobs: &[Arc<PretrainJob>], ds: &Dataset) -> Vec<ObjectRef<PretrainJob>> {
    referrers(
        jobs,
        ds,
        |pt| Some(&pt.spec.dataset_ref),
        |pt| {
            pt.status
                .as_ref()
                .is_none_or(|s| s.operator.dataset.is_none())
        },
    )
}

impl OwnsArtifact for PretrainJob {
    fn deletes_artifact(&self) -> bool {
        self.spec.output.deletion_policy == DeletionPolicy::Delete
    }
}

impl TrainingKind for PretrainJob {
    type Resolved = Resolved;
    type Observed = Observed;
    type Error = Error;

    fn artifact_location(&self, config: &OperatorConfig) -> (String, Option<String>) {
        let mut output = self.spec.output.clone();
        let namespace = self.namespace().unwrap_or_default();
        let uri = default_output(
            &mut output,
            "pretrainjobs",
            &namespace,
            &self.name_any(),
            config,
        );
        (uri, output.credentials_secret_ref.map(|s| s.name))
    }

    async fn resolve(&self, ctx: &Context) -> Result<Resolution, Error> {
        resolve::resolve(self, ctx).await
    }

    fn validate(resolved: &Resolved) -> Result<Valid<'_, PretrainJob>, Invalid> {
        validate::validate(resolved)
    }

    fn without_job(
        outcome: Outcome,
        phase: JobPhase,
        current: Option<&PretrainJobStatus>,
    ) -> Observed {
        Observed::without_job(outcome, phase, current)
    }

    fn observe(&self, state: &JobState, job: &Job, resolved: &Resolved) -> Observed {
        let spec = &self.spec;
        let mut observed = status::observe(
            state,
            job,
            spec.suspend,
            spec.resources.replicas,
            self.status.as_ref(),
        );
        observed.dataset = Some(resolved.dataset.clone());
        observed
    }

    fn desired_status(&self, observed: Observed, now: &Time) -> OperatorStatus {
        status::desired_status(self, observed, now)
    }
}
