//! The FineTune controller: runs `trainer finetune` pods on a base model and a
//! Ready Dataset, keeps them going through restarts and disruptions (each resumes
//! from the newest checkpoint), suspends and resumes them, and publishes the
//! model only when it passes its quality gates.
//!
//! resolve (base model and Dataset artifacts, output URI) → validate → build
//! (ConfigMap, RBAC, Service, Job) → apply (server-side apply, orphans deleted) →
//! status (from the Job and its pods). The Job, its pods and its lifecycle are
//! those of a PretrainJob ([`crate::controller::training`]).
//!
//! Contracts:
//! - **Lineage.** `spec.baseModel` is a `uri` (digest unknown to the operator), or
//!   a PretrainJob or FineTune that must be Ready for its current generation (its
//!   `status.artifact`); the Dataset must be Ready too. Until then the FineTune
//!   waits (`WaitingForBaseModel`, `WaitingForDataset`, naming what). Both
//!   artifacts are recorded in `status.lineage` when the Job is made and never
//!   change afterwards.
//! - **Pods.** `trainer finetune --resource /etc/llmops/resource.yaml`; the
//!   resource is the FineTune with `spec.output.uri` defaulted to
//!   `<store>/finetunes/<ns>/<name>`, `spec.baseModel.credentialsSecretRef` set to
//!   the Secret the base model is read with, and `status.lineage` set. Env,
//!   replicas, GPUs and failures as for a PretrainJob; the base model's Secret
//!   also arrives as `LLMOPS_CRED_<SECRET>_*`.
//! - **Result.** `{"artifact", "progress", "evaluation", "gate"}` on the
//!   termination message: `status.evaluation` and `status.gate` always; a passed
//!   gate (or none) → `status.artifact`, Ready; a failed gate → no artifact,
//!   Stalled (`GateFailed`) with the gate message and where the model was left.
//!   Nothing is deleted.

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
use llmops_crds::{
    Artifact, Dataset, DeletionPolicy, FineTune, FineTuneStatus, JobPhase, LocalObjectRef,
    PretrainJob,
};

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
pub const KIND: &str = "FineTune";

/// Why a FineTune reconcile failed; all are transient and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {kind} {name}: {source}")]
    ReadInput {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("failed to render the resource file for the trainer: {0}")]
    RenderResource(#[from] serde_yaml_ng::Error),
    #[error(transparent)]
    Run(#[from] run::Error),
    #[error(transparent)]
    WriteStatus(#[from] WriteStatusError),
    #[error("deleting the FineTune's artifact: {0}")]
    Cleanup(#[from] CleanupError),
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::ReadInput { .. } => "ReadInput",
            Error::RenderResource(_) => "RenderResource",
            Error::Run(err) => err.reason(),
            Error::WriteStatus(_) => "WriteStatus",
            Error::Cleanup(_) => "Cleanup",
        }
    }
}

/// One FineTune controller per namespace in `scope`, each watching FineTunes,
/// their Jobs, ConfigMaps and Services, their pods (by label), and the Datasets,
/// PretrainJobs and FineTunes they start from (a new artifact starts the
/// FineTunes waiting for it).
pub fn controllers(ctx: &Arc<Context>, scope: &Scope, stop: &Stop) -> Vec<ControllerRun> {
    let client = &ctx.client;
    scope.start_each(|ns| {
        let controller = controller_for::<FineTune>(client, ns);
        let (for_dataset, for_pretrain, for_finetune) =
            (controller.store(), controller.store(), controller.store());
        let controller = watches_labelled::<FineTune, Pod>(controller, client, ns);
        let controller = controller
            .owns(scoped_api::<Job>(client, ns), owned_children())
            .owns(scoped_api::<ConfigMap>(client, ns), owned_children())
            .owns(scoped_api::<Service>(client, ns), owned_children())
            .watches(
                scoped_api::<Dataset>(client, ns),
                watcher::Config::default(),
                move |ds| {
                    let artifact = ds
                        .status
                        .as_ref()
                        .and_then(|s| s.operator.artifact.as_ref());
                    waiting_for(&for_dataset.state(), &ds, artifact, |ft| {
                        Some(&ft.spec.dataset_ref)
                    })
                },
            )
            .watches(
                scoped_api::<PretrainJob>(client, ns),
                watcher::Config::default(),
                move |pt| {
                    let artifact = pt
                        .status
                        .as_ref()
                        .and_then(|s| s.operator.artifact.as_ref());
                    waiting_for(&for_pretrain.state(), &pt, artifact, |ft| {
                        ft.spec.base_model.pretrain_job_ref.as_ref()
                    })
                },
            )
            .watches(
                scoped_api::<FineTune>(client, ns),
                watcher::Config::default(),
                move |base| {
                    let artifact = base
                        .status
                        .as_ref()
                        .and_then(|s| s.operator.artifact.as_ref());
                    waiting_for(&for_finetune.state(), &base, artifact, |ft| {
                        ft.spec.base_model.fine_tune_ref.as_ref()
                    })
                },
            );
        start(
            KIND,
            controller,
            ctx.clone(),
            stop.clone(),
            reconcile::<FineTune>,
        )
    })
}

/// The FineTunes referencing `producer` (through `reference`) that have not
/// recorded their lineage yet, when the producer has an artifact: only then can
/// its change end their wait, so a producer's progress updates while it runs
/// trigger nothing.
fn waiting_for<P: ResourceExt>(
    fine_tunes: &[Arc<FineTune>],
    producer: &P,
    artifact: Option<&Artifact>,
    reference: impl Fn(&FineTune) -> Option<&LocalObjectRef>,
) -> Vec<ObjectRef<FineTune>> {
    if artifact.is_none() {
        return Vec::new();
    }
    referrers(fine_tunes, producer, reference, |ft| {
        ft.status
            .as_ref()
            .is_none_or(|s| s.operator.lineage.is_none())
    })
}

impl OwnsArtifact for FineTune {
    fn deletes_artifact(&self) -> bool {
        self.spec.output.location.deletion_policy == DeletionPolicy::Delete
    }
}

impl TrainingKind for FineTune {
    type Resolved = Resolved;
    type Observed = Observed;
    type Error = Error;

    fn artifact_location(&self, config: &OperatorConfig) -> (String, Option<String>) {
        let mut output = self.spec.output.location.clone();
        let namespace = self.namespace().unwrap_or_default();
        let uri = default_output(
            &mut output,
            "finetunes",
            &namespace,
            &self.name_any(),
            config,
        );
        (uri, output.credentials_secret_ref.map(|s| s.name))
    }

    async fn resolve(&self, ctx: &Context) -> Result<Resolution, Error> {
        resolve::resolve(self, ctx).await
    }

    fn validate(resolved: &Resolved) -> Result<Valid<'_, FineTune>, Invalid> {
        validate::validate(resolved)
    }

    fn without_job(
        outcome: Outcome,
        phase: JobPhase,
        current: Option<&FineTuneStatus>,
    ) -> Observed {
        Observed::without_job(outcome, phase, current)
    }

    fn observe(&self, state: &JobState, job: &Job, resolved: &Resolved) -> Observed {
        let mut observed = status::observe(state, job, self, &resolved.output_uri);
        observed.lineage = resolved
            .fine_tune
            .status
            .as_ref()
            .and_then(|s| s.operator.lineage.clone());
        observed
    }

    fn desired_status(&self, observed: Observed, now: &Time) -> OperatorStatus {
        status::desired_status(self, observed, now)
    }
}
