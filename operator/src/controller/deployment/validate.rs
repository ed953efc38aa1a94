//! Validate: what the API accepts but this version cannot carry out. Each problem
//! names the field to change and becomes a Stalled condition (reason
//! `InvalidSpec`); the Deployment of the last valid spec, if any, is left serving.
//!
//! Decided per field:
//! - `autoscaling.scaleToZeroAfter` does not stall without the gateway: the
//!   floor stays one replica and the Ready message says why (`super::zero`).
//! - `rollout.analysis` and `rollout.autoRollback` belong to Canary and are not
//!   used by RollingUpdate; a new model that never becomes ready leaves the old
//!   pods serving anyway (`maxUnavailable: 0`).
//! - Without `spec.auth` the API takes requests without a key, so the model is
//!   served only behind a ClusterIP Service (inside the cluster); a NodePort or
//!   LoadBalancer Service stalls naming `spec.auth`. An operator run with
//!   `--require-auth` (chart value `requireAuth`) stalls every ModelDeployment
//!   without it.
//! - `spec.resources.gpus` above 1 with the built-in server stalls: it runs one
//!   engine on one device and would leave the other GPUs idle; tensor
//!   parallelism is `spec.server.runtime: vllm`, more throughput on one GPU
//!   each is more replicas.
//! - `spec.server.runtime: vllm` stalls without a GPU (the vLLM image is a CUDA
//!   build) and with `spec.adapters` (served by the built-in server only).

use kube::ResourceExt;
use llmops_crds::ModelDeployment;
use llmops_crds::deployment::{ServerRuntime, ServiceType};

use super::resolve::Model;
pub use crate::runtime::invalid::Invalid;
use crate::runtime::invalid::{MAX_DNS_LABEL, invalid};
use crate::workload::storage::pvc_claim;

/// The spec alone, before the model is resolved. `require_auth`: the operator
/// was told to serve nothing without an API key.
pub fn validate(md: &ModelDeployment, require_auth: bool) -> Result<(), Invalid> {
    let name = md.name_any();
    let dns_label = name.len() <= MAX_DNS_LABEL
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !dns_label {
        return invalid(
            "metadata.name",
            format!(
                "the name is also the name of its Service, which must be a DNS label: at most {MAX_DNS_LABEL} lower-case letters, digits and '-', starting with a letter"
            ),
        );
    }
    runtime(md)?;
    access(md, require_auth)
}

/// What the chosen inference server can run: no idle GPUs, no adapters vLLM is
/// not given.
fn runtime(md: &ModelDeployment) -> Result<(), Invalid> {
    let gpus = md.spec.resources.gpus;
    match md.spec.server.runtime {
        ServerRuntime::Builtin if gpus > 1 => invalid(
            "spec.resources.gpus",
            format!(
                "the built-in server runs one engine on one GPU and would leave {} of the {gpus} GPUs idle: set spec.server.runtime: vllm for tensor parallelism over them, or spec.resources.gpus: 1 with more replicas",
                gpus - 1
            ),
        ),
        ServerRuntime::Vllm if gpus < 1 => invalid(
            "spec.resources.gpus",
            "spec.server.runtime: vllm runs on GPUs (the vLLM image is a CUDA build): set spec.resources.gpus to 1 or more, or use the built-in runtime on CPU",
        ),
        ServerRuntime::Vllm if !md.spec.adapters.is_empty() => invalid(
            "spec.adapters",
            "LoRA adapters are served by the built-in server only: remove spec.adapters, serve a merged model, or use spec.server.runtime: builtin",
        ),
        ServerRuntime::Vllm if md.spec.server.threads > 0 => invalid(
            "spec.server.threads",
            "spec.server.threads sets the built-in server's CPU threads; vLLM runs on the GPUs: remove it",
        ),
        _ => Ok(()),
    }
}

/// Who may call a model without an API key: nobody outside the cluster.
fn access(md: &ModelDeployment, require_auth: bool) -> Result<(), Invalid> {
    if md.spec.auth.is_some() {
        return Ok(());
    }
    if require_auth {
        return invalid(
            "spec.auth",
            "this cluster serves models only with an API key: set spec.auth.apiKeySecretRef",
        );
    }
    let exposed = match md.spec.service.kind {
        ServiceType::ClusterIP => return Ok(()),
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    invalid(
        "spec.auth",
        format!(
            "a {exposed} Service takes requests from outside the cluster, which a model without an API key must not: set spec.auth.apiKeySecretRef, or spec.service.type: ClusterIP"
        ),
    )
}

/// The resolved model.
pub fn validate_model(model: &Model) -> Result<(), Invalid> {
    let uri = &model.artifact.uri;
    if uri.starts_with("pvc://") && pvc_claim(uri).is_none() {
        return invalid(
            "spec.model",
            format!("{uri}: a pvc:// URI needs a claim name: pvc://<claim>/<path>"),
        );
    }
    Ok(())
}
