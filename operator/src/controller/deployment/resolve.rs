//! Resolve: `spec.model` → the artifact to serve and the Secret to read it with.
//!
//! - `uri`: served as given; its digest is unknown to the operator (it never reads
//!   the store), so the artifact's digest is empty.
//! - `pretrainJobRef`: the PretrainJob must be Ready for its current generation;
//!   its `status.artifact` {uri, digest} is served.
//! - `fineTuneRef`: likewise; a FineTune whose model failed its quality gates has
//!   no `status.artifact` and is never Ready, so the deployment keeps waiting (and
//!   says so) and never serves the rejected model.
//!
//! The Secret: `spec.model.credentialsSecretRef` when set; else the producer's
//! `spec.output.credentialsSecretRef`; else the operator's store Secret when the
//! artifact lives in the default store.

use kube::{Api, ResourceExt};
use llmops_crds::{Artifact, FineTune, ModelDeployment, PretrainJob, SecretRef};

use super::Error;
use super::reason;
use crate::config::OperatorConfig;
use crate::runtime::Context;
use crate::runtime::conditions::Outcome;
use crate::workload::lineage::{ready_for_generation, store_secret};

/// The model to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub artifact: Artifact,
    /// Secret whose keys reach the server as `LLMOPS_CRED_<SECRET>_<KEY>`.
    pub credentials_secret: Option<String>,
}

/// Serving a model, or waiting for one (Ready=False, `WaitingForModel`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Resolved(Model),
    Waiting(Outcome),
}

/// The producer a model reference names, as read from the API.
#[derive(Clone, Copy, Debug)]
pub enum Producer<'a> {
    PretrainJob(Option<&'a PretrainJob>),
    FineTune(Option<&'a FineTune>),
}

/// Read the producer `spec.model` names (if any) and resolve.
pub async fn resolve(md: &ModelDeployment, ctx: &Context) -> Result<Resolution, Error> {
    let namespace = md.namespace().unwrap_or_default();
    let model = &md.spec.model;
    let read = |kind: &'static str, name: &str| {
        let name = name.to_string();
        move |source| Error::ReadModel { kind, name, source }
    };
    if let Some(reference) = &model.pretrain_job_ref {
        let api: Api<PretrainJob> = Api::namespaced(ctx.client.clone(), &namespace);
        let job = api
            .get_opt(&reference.name)
            .await
            .map_err(read("PretrainJob", &reference.name))?;
        let producer = Producer::PretrainJob(job.as_ref());
        return Ok(resolve_with(md, Some(producer), &ctx.config));
    }
    if let Some(reference) = &model.fine_tune_ref {
        let api: Api<FineTune> = Api::namespaced(ctx.client.clone(), &namespace);
        let ft = api
            .get_opt(&reference.name)
            .await
            .map_err(read("FineTune", &reference.name))?;
        let producer = Producer::FineTune(ft.as_ref());
        return Ok(resolve_with(md, Some(producer), &ctx.config));
    }
    Ok(resolve_with(md, None, &ctx.config))
}

/// The pure part of resolving, given the producer `spec.model` names.
pub fn resolve_with(
    md: &ModelDeployment,
    producer: Option<Producer<'_>>,
    config: &OperatorConfig,
) -> Resolution {
    let model = &md.spec.model;
    let explicit = model
        .credentials_secret_ref
        .as_ref()
        .map(|s| s.name.clone());
    if let Some(uri) = &model.uri {
        let artifact = Artifact {
            uri: uri.clone(),
            digest: String::new(),
        };
        let credentials_secret = explicit.or_else(|| store_secret(&artifact, config));
        return Resolution::Resolved(Model {
            artifact,
            credentials_secret,
        });
    }
    let Some(producer) = producer else {
        return Resolution::Waiting(Outcome::progressing(
            reason::WAITING_FOR_MODEL,
            "spec.model names no model",
        ));
    };
    let (field, kind, name) = producer.reference(md);
    let found = producer.produced();
    let waiting = |why: String| {
        Resolution::Waiting(Outcome::progressing(
            reason::WAITING_FOR_MODEL,
            format!("waiting for {kind} {name} ({field}): {why}"),
        ))
    };
    match found {
        None => waiting("not found".into()),
        Some(Produced {
            ready: true,
            artifact: Some(artifact),
            output_secret,
            ..
        }) => {
            let credentials_secret = explicit
                .or(output_secret.map(|s| s.name))
                .or_else(|| store_secret(&artifact, config));
            Resolution::Resolved(Model {
                artifact,
                credentials_secret,
            })
        }
        Some(Produced {
            failed_gate: Some(gate),
            ..
        }) => waiting(format!(
            "its model failed the quality gates ({gate}) and is not served"
        )),
        Some(_) => waiting("it is not Ready with a model artifact yet".into()),
    }
}

/// What a producer offers to serve.
struct Produced {
    /// Ready for its current generation.
    ready: bool,
    artifact: Option<Artifact>,
    /// The Secret its output was written with (and is read with).
    output_secret: Option<SecretRef>,
    /// Why its model may not be served: the quality gates it failed.
    failed_gate: Option<String>,
}

impl Producer<'_> {
    /// The field, kind and name by which the spec names the producer.
    fn reference<'a>(&self, md: &'a ModelDeployment) -> (&'static str, &'static str, &'a str) {
        let model = &md.spec.model;
        let (field, kind, reference) = match self {
            Producer::PretrainJob(_) => (
                "spec.model.pretrainJobRef",
                "PretrainJob",
                model.pretrain_job_ref.as_ref(),
            ),
            Producer::FineTune(_) => (
                "spec.model.fineTuneRef",
                "FineTune",
                model.fine_tune_ref.as_ref(),
            ),
        };
        (field, kind, reference.map_or("", |r| r.name.as_str()))
    }

    /// What the producer offers; none when it does not exist.
    fn produced(&self) -> Option<Produced> {
        match self {
            Producer::PretrainJob(job) => job.map(|job| {
                let status = job.status.as_ref();
                Produced {
                    ready: ready_for_generation(
                        status.map(|s| s.conditions.as_slice()).unwrap_or_default(),
                        job.metadata.generation,
                    ),
                    artifact: status.and_then(|s| s.operator.artifact.clone()),
                    output_secret: job.spec.output.credentials_secret_ref.clone(),
                    failed_gate: None,
                }
            }),
            Producer::FineTune(ft) => ft.map(|ft| {
                let status = ft.status.as_ref();
                Produced {
                    ready: ready_for_generation(
                        status.map(|s| s.conditions.as_slice()).unwrap_or_default(),
                        ft.metadata.generation,
                    ),
                    artifact: status.and_then(|s| s.operator.artifact.clone()),
                    output_secret: ft.spec.output.location.credentials_secret_ref.clone(),
                    failed_gate: status
                        .and_then(|s| s.operator.gate.as_ref())
                        .filter(|gate| !gate.passed)
                        .map(|gate| gate.message.clone()),
                }
            }),
        }
    }
}
