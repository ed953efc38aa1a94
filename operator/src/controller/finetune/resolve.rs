//! Resolve: turn a FineTune into the resource the trainer runs — output URI and
//! its credentials defaulted from the operator's store, and `status.lineage` set
//! to the base model and dataset artifacts.
//!
//! - `baseModel.uri`: used as given; the operator never reads the store, so its
//!   digest is empty (the trainer records the one it computes in `llmops.json`).
//! - `baseModel.pretrainJobRef` / `fineTuneRef`: the producer must be Ready for
//!   its current generation; its `status.artifact` is the base model. A FineTune
//!   whose model failed its quality gates has no artifact and is never Ready.
//! - `datasetRef`: the Dataset must be Ready for its current generation.
//!
//! The lineage is taken once, when the Job is made, and kept from then on: a
//! producer that re-runs mid-training must not change what a restarted pod
//! trains on (its checkpoints are tied to those inputs).
//!
//! The base model's Secret (the given `credentialsSecretRef`, else the producer's
//! output Secret, else the store Secret for a model in the default store) is
//! written into the resource's `spec.baseModel.credentialsSecretRef`, and reaches
//! the trainer as `LLMOPS_CRED_<SECRET>_<KEY>`.

use kube::{Api, ResourceExt};
use llmops_crds::dataset::DatasetType;
use llmops_crds::finetune::{Lineage, Metric};
use llmops_crds::{
    Artifact, Dataset, FineTune, FineTuneOperatorStatus, FineTuneStatus, LocalObjectRef,
    PretrainJob, SecretRef,
};

use super::Error;
use super::status::reason;
use crate::config::OperatorConfig;
use crate::runtime::Context;
use crate::runtime::conditions::Outcome;
use crate::workload::lineage::{
    dataset_secret, default_output, ready_artifact, ready_for_generation, store_secret,
};

/// A FineTune ready to be validated and built.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The FineTune as the trainer sees it: identity metadata, the resolved spec
    /// and `status.lineage`.
    pub fine_tune: FineTune,
    /// Where the model and (for file:// and pvc://) its checkpoints are written.
    pub output_uri: String,
    /// The base model and dataset the run trains on.
    pub base_model: Artifact,
    pub dataset: Artifact,
    /// Secret with the credentials of the base model's store.
    pub base_model_secret: Option<String>,
    /// Secret with the credentials of the dataset's store.
    pub dataset_secret: Option<String>,
}

/// The result of resolving: ready to go, waiting for an input, or impossible.
pub type Resolution = crate::controller::training::reconcile::Resolution<Resolved>;

/// The producer `spec.baseModel` names, as read from the API.
#[derive(Clone, Copy, Debug)]
pub enum BaseModel<'a> {
    /// `spec.baseModel.uri`: nothing to read.
    Uri,
    PretrainJob(Option<&'a PretrainJob>),
    FineTune(Option<&'a FineTune>),
}

/// Read the base model's producer and the Dataset (unless the lineage is already
/// recorded), and resolve.
pub async fn resolve(ft: &FineTune, ctx: &Context) -> Result<Resolution, Error> {
    let namespace = ft.namespace().unwrap_or_default();
    let source = &ft.spec.base_model;
    let read = |kind: &'static str, name: &str| {
        let name = name.to_string();
        move |source| Error::ReadInput { kind, name, source }
    };
    let pretrain = match &source.pretrain_job_ref {
        Some(r) => Api::<PretrainJob>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&r.name)
            .await
            .map_err(read("PretrainJob", &r.name))?,
        None => None,
    };
    let base_ft = match &source.fine_tune_ref {
        Some(r) => Api::<FineTune>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&r.name)
            .await
            .map_err(read("FineTune", &r.name))?,
        None => None,
    };
    let base = if source.pretrain_job_ref.is_some() {
        BaseModel::PretrainJob(pretrain.as_ref())
    } else if source.fine_tune_ref.is_some() {
        BaseModel::FineTune(base_ft.as_ref())
    } else {
        BaseModel::Uri
    };
    let reference = &ft.spec.dataset_ref.name;
    let dataset = Api::<Dataset>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(reference)
        .await
        .map_err(read("Dataset", reference))?;
    Ok(resolve_with(ft, base, dataset.as_ref(), &ctx.config))
}

/// A reason to wait, for the message.
struct Wait {
    reason: &'static str,
    text: String,
}

/// The pure part of resolving, given the producer `spec.baseModel` names and the
/// Dataset, if they exist.
pub fn resolve_with(
    ft: &FineTune,
    base: BaseModel<'_>,
    dataset: Option<&Dataset>,
    config: &OperatorConfig,
) -> Resolution {
    let name = ft.name_any();
    if ft
        .spec
        .base_model
        .fine_tune_ref
        .as_ref()
        .is_some_and(|r| r.name == name)
    {
        return Resolution::Stalled(Outcome::stalled(
            reason::INVALID_SPEC,
            "spec.baseModel.fineTuneRef: a FineTune cannot start from its own model; name another FineTune, a PretrainJob or a uri",
        ));
    }

    let recorded = ft.status.as_ref().and_then(|s| s.operator.lineage.as_ref());
    let (base_model, dataset_artifact) = match recorded {
        // Lineage is fixed at start; the inputs are not checked again (they may
        // be re-running, changed or gone while the run goes on).
        Some(Lineage {
            base_model: Some(base_model),
            dataset: Some(dataset),
        }) => (base_model.clone(), dataset.clone()),
        _ => {
            let base_model = base_model_artifact(ft, base);
            let dataset_artifact = dataset_artifact(ft, dataset);
            match (base_model, dataset_artifact) {
                (Ok(base_model), Ok(dataset_artifact)) => (base_model, dataset_artifact),
                (Err(Err(stalled)), _) | (_, Err(Err(stalled))) => {
                    return Resolution::Stalled(stalled);
                }
                (base_model, dataset_artifact) => {
                    let waits: Vec<Wait> = [base_model.err(), dataset_artifact.err()]
                        .into_iter()
                        .flatten()
                        .filter_map(Result::ok)
                        .collect();
                    let text = waits
                        .iter()
                        .map(|w| w.text.as_str())
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Resolution::Waiting(Outcome::progressing(waits[0].reason, text));
                }
            }
        }
    };

    let base_model_secret = base_model_secret(ft, base, &base_model, config);
    let dataset_secret = dataset_secret(dataset, &dataset_artifact, config);
    Resolution::Resolved(Box::new(resolved(
        ft,
        base_model,
        dataset_artifact,
        base_model_secret,
        dataset_secret,
        config,
    )))
}

/// The base model's artifact; `Err(Ok(_))` to wait, `Err(Err(_))` to stall.
fn base_model_artifact(
    ft: &FineTune,
    base: BaseModel<'_>,
) -> Result<Artifact, Result<Wait, Outcome>> {
    let source = &ft.spec.base_model;
    let waiting = |kind: &str, field: &str, reference: Option<&LocalObjectRef>, why: String| {
        let name = reference.map(|r| r.name.as_str()).unwrap_or_default();
        Err(Ok(Wait {
            reason: reason::WAITING_FOR_BASE_MODEL,
            text: format!("waiting for {kind} {name} ({field}) {why}"),
        }))
    };
    match base {
        BaseModel::Uri => match &source.uri {
            Some(uri) => Ok(Artifact {
                uri: uri.clone(),
                digest: String::new(),
            }),
            None => Err(Err(Outcome::stalled(
                reason::INVALID_SPEC,
                "spec.baseModel: set one of pretrainJobRef, fineTuneRef or uri",
            ))),
        },
        BaseModel::PretrainJob(job) => {
            let (kind, field, reference) = (
                "PretrainJob",
                "spec.baseModel.pretrainJobRef",
                source.pretrain_job_ref.as_ref(),
            );
            let Some(job) = job else {
                return waiting(kind, field, reference, "to exist: not found".into());
            };
            let status = job.status.as_ref();
            let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
            match status.and_then(|s| s.operator.artifact.clone()) {
                Some(artifact) if ready_for_generation(conditions, job.metadata.generation) => {
                    Ok(artifact)
                }
                _ => waiting(kind, field, reference, "to be Ready with a model".into()),
            }
        }
        BaseModel::FineTune(base_ft) => {
            let (kind, field, reference) = (
                "FineTune",
                "spec.baseModel.fineTuneRef",
                source.fine_tune_ref.as_ref(),
            );
            let Some(base_ft) = base_ft else {
                return waiting(kind, field, reference, "to exist: not found".into());
            };
            let status = base_ft.status.as_ref();
            let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
            match status.and_then(|s| s.operator.artifact.clone()) {
                Some(artifact) if ready_for_generation(conditions, base_ft.metadata.generation) => {
                    Ok(artifact)
                }
                _ => match status
                    .and_then(|s| s.operator.gate.as_ref())
                    .filter(|g| !g.passed)
                {
                    Some(gate) => waiting(
                        kind,
                        field,
                        reference,
                        format!(
                            "to be Ready with a model: its model failed the quality gates ({})",
                            gate.message
                        ),
                    ),
                    None => waiting(kind, field, reference, "to be Ready with a model".into()),
                },
            }
        }
    }
}

/// The Dataset's artifact; `Err(Ok(_))` to wait, `Err(Err(_))` to stall.
fn dataset_artifact(
    ft: &FineTune,
    dataset: Option<&Dataset>,
) -> Result<Artifact, Result<Wait, Outcome>> {
    let reference = &ft.spec.dataset_ref.name;
    let waiting = |why: &str| {
        Err(Ok(Wait {
            reason: reason::WAITING_FOR_DATASET,
            text: format!("waiting for Dataset {reference} (spec.datasetRef) {why}"),
        }))
    };
    let Some(ds) = dataset else {
        return waiting("to exist: not found");
    };
    // Scores that compare generated answers with references need the answers.
    let generated = ft
        .spec
        .evaluation
        .metrics
        .iter()
        .find(|m| **m != Metric::Perplexity);
    if let (DatasetType::Pretraining, Some(metric)) = (ds.spec.kind, generated) {
        let metric = serde_json::to_value(metric)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        return Err(Err(Outcome::stalled(
            reason::INVALID_SPEC,
            format!(
                "spec.evaluation.metrics: {metric} compares generated answers with reference answers, which Dataset {reference} (type pretraining) does not have; use a Dataset of type instruction or evaluate perplexity only"
            ),
        )));
    }
    match ready_artifact(ds) {
        Some(artifact) => Ok(artifact),
        None => waiting("to be Ready"),
    }
}

/// The Secret for reading the base model: the given one, else the producer's
/// output Secret, else the store Secret for a model in the default store.
fn base_model_secret(
    ft: &FineTune,
    base: BaseModel<'_>,
    artifact: &Artifact,
    config: &OperatorConfig,
) -> Option<String> {
    let source = &ft.spec.base_model;
    let producer = match base {
        BaseModel::Uri => None,
        BaseModel::PretrainJob(job) => {
            job.and_then(|j| j.spec.output.credentials_secret_ref.clone())
        }
        BaseModel::FineTune(base_ft) => {
            base_ft.and_then(|f| f.spec.output.location.credentials_secret_ref.clone())
        }
    };
    source
        .credentials_secret_ref
        .clone()
        .or(producer)
        .map(|s| s.name)
        .or_else(|| store_secret(artifact, config))
}

fn resolved(
    ft: &FineTune,
    base_model: Artifact,
    dataset: Artifact,
    base_model_secret: Option<String>,
    dataset_secret: Option<String>,
    config: &OperatorConfig,
) -> Resolved {
    let name = ft.name_any();
    let namespace = ft.namespace().unwrap_or_default();
    let mut spec = ft.spec.clone();
    let output_uri = default_output(
        &mut spec.output.location,
        "finetunes",
        &namespace,
        &name,
        config,
    );
    spec.base_model.credentials_secret_ref =
        base_model_secret.clone().map(|name| SecretRef { name });

    let mut resource = FineTune::new(&name, spec);
    resource.metadata.namespace = Some(namespace);
    resource.metadata.uid = ft.metadata.uid.clone();
    resource.metadata.generation = ft.metadata.generation;
    resource.status = Some(FineTuneStatus {
        operator: FineTuneOperatorStatus {
            lineage: Some(Lineage {
                base_model: Some(base_model.clone()),
                dataset: Some(dataset.clone()),
            }),
            ..FineTuneOperatorStatus::default()
        },
        ..FineTuneStatus::default()
    });
    Resolved {
        fine_tune: resource,
        output_uri,
        base_model,
        dataset,
        base_model_secret,
        dataset_secret,
    }
}
