//! The serving pod of `spec.server.runtime: vllm`: vLLM's OpenAI server on the
//! same model, tensor parallel over the pod's GPUs.
//!
//! - Init container `fetch-model` (the trainer image): `trainer fetch-model`
//!   puts the model at [`MODEL_DIR`], as the built-in server would load it —
//!   downloaded and checked against its manifest and the pinned digest, or, with
//!   `spec.server.modelCache` or a `pvc://` model, a link to where it lies,
//!   mounted at the same path in both containers. It has the model's store
//!   credentials; vLLM has none and never reaches a store or the Hub
//!   (`HF_HUB_OFFLINE`).
//! - Container `server` (the operator's `--vllm-image`): `--served-model-name`
//!   is the deployment's name, as with the built-in server, on the same port
//!   (named `http`, which the Service, the NetworkPolicy and the monitor use);
//!   `--tensor-parallel-size` is `spec.resources.gpus`; the API key comes from
//!   the same Secret key through `VLLM_API_KEY`, which vLLM compares whole with
//!   each request's bearer token on `/v1` (so the key holds one key, where the
//!   built-in server accepts one per line); `/health` and `/metrics` take none.
//!   Probes on `/health`, which answers once the engine is up.
//!
//! Security: the pod keeps the `restricted` profile of the built-in server's
//! (non-root, no capabilities, read-only root filesystem). What vLLM needs
//! writable is given as volumes: `HOME` (`/work`: its compile and kernel
//! caches), `/tmp`, and `/dev/shm` as a memory-backed emptyDir for the shared
//! memory its tensor-parallel workers (NCCL) exchange through.

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, PersistentVolumeClaimVolumeSource,
    PodSpec, ResourceRequirements, SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use llmops_crds::ModelDeployment;

use super::build::{
    CREDENTIALS_SECRET_ENV, SERVER_PORT, ServingProcess, dtype_arg, resource_requirements,
    serving_container,
};
use super::resolve::Model;
use crate::config::OperatorConfig;
use crate::workload::credentials::credential_env;
use crate::workload::job::{DEFAULT_SCRATCH_SIZE, HOME_SIZE_LIMIT, env};
use crate::workload::security::container_security_context;
use crate::workload::storage::{PvcMounts, pvc_claim};

/// The vLLM image when the operator is given none: the release whose metric
/// names and flags this module and `monitor::exposition` follow.
pub const DEFAULT_IMAGE: &str = "vllm/vllm-openai:v0.10.0";
/// The init container that puts the model in place.
pub const FETCH_CONTAINER: &str = "fetch-model";
/// Where vLLM reads the model: a directory, or a link to one.
pub const MODEL_DIR: &str = "/models/model";
/// The variable vLLM reads its API key from (`--api-key` would show the key in
/// the process list).
pub const API_KEY_ENV: &str = "VLLM_API_KEY";
/// `/dev/shm`'s size: NCCL's buffers between the tensor-parallel workers, and
/// counted against the pod's memory.
pub const SHM_SIZE: &str = "2Gi";

const MODELS_VOLUME: &str = "models";
const SHM_VOLUME: &str = "shm";
const MODEL_CACHE_VOLUME: &str = "model-cache";

/// vLLM's arguments: the model fetched, the name clients send, tensor
/// parallelism over every GPU, and the server settings vLLM has a flag for.
/// `maxNewTokens` is the default `max_tokens` (vLLM has no upper bound of its
/// own); `maxQueue` has no counterpart.
pub fn args(md: &ModelDeployment) -> Vec<String> {
    let server = &md.spec.server;
    vec![
        "--model".into(),
        MODEL_DIR.into(),
        "--served-model-name".into(),
        md.name_any(),
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        SERVER_PORT.to_string(),
        "--tensor-parallel-size".into(),
        md.spec.resources.gpus.max(1).to_string(),
        "--dtype".into(),
        dtype_arg(server.dtype).into(),
        "--max-model-len".into(),
        server.max_context.to_string(),
        "--max-num-seqs".into(),
        server.max_batch.to_string(),
        "--override-generation-config".into(),
        format!("{{\"max_new_tokens\": {}}}", server.max_new_tokens),
    ]
}

/// `trainer fetch-model`'s arguments for `model`.
pub fn fetch_args(model: &Model) -> Vec<String> {
    let mut args = vec![
        "fetch-model".into(),
        "--uri".into(),
        model.artifact.uri.clone(),
        "--dest".into(),
        MODEL_DIR.into(),
    ];
    if !model.artifact.digest.is_empty() {
        args.extend(["--digest".into(), model.artifact.digest.clone()]);
    }
    args
}

/// The serving pod: the fetch, then vLLM, restricted like the built-in
/// server's pod.
pub fn pod(md: &ModelDeployment, model: &Model, config: &OperatorConfig) -> PodSpec {
    let volumes = volumes(md, model);
    let shared = shared_mounts(md, model);
    let fetch = fetch_container(md, model, config, shared.clone());
    let mut mounts = shared;
    mounts.push(VolumeMount {
        name: SHM_VOLUME.into(),
        mount_path: "/dev/shm".into(),
        ..VolumeMount::default()
    });
    for mount in &mut mounts {
        // vLLM writes only to its scratch; the model is read-only to it.
        if mount.name == MODELS_VOLUME || mount.name == MODEL_CACHE_VOLUME {
            mount.read_only = Some(true);
        }
    }
    let server = server_container(md, config, mounts);
    let mut pod = super::build::server_pod(md, server, volumes, &config.server_image_pull);
    let mut fetch = fetch;
    fetch.image_pull_policy = config.trainer_image_pull.policy.clone();
    pod.init_containers = Some(vec![fetch]);
    pod
}

fn server_container(
    md: &ModelDeployment,
    config: &OperatorConfig,
    mounts: Vec<VolumeMount>,
) -> Container {
    serving_container(
        md,
        config,
        ServingProcess {
            image: config.vllm_image.clone(),
            // The module, not the image's entrypoint, which differs between releases.
            command: vec![
                "python3".into(),
                "-m".into(),
                "vllm.entrypoints.openai.api_server".into(),
            ],
            args: args(md),
            env: server_env(md),
            ready_path: "/health",
            live_path: "/health",
        },
        mounts,
    )
}

/// vLLM's environment: writable home and scratch, no Hub and no usage reports
/// (the model is local; a serving pod phones nowhere), and the API key from
/// the Secret.
fn server_env(md: &ModelDeployment) -> Vec<EnvVar> {
    let mut vars = vec![
        env("HOME", "/work"),
        env("TMPDIR", "/tmp"),
        env("HF_HUB_OFFLINE", "1"),
        env("VLLM_NO_USAGE_STATS", "1"),
        env("DO_NOT_TRACK", "1"),
    ];
    if let Some(auth) = &md.spec.auth {
        let key = &auth.api_key_secret_ref;
        vars.push(EnvVar {
            name: API_KEY_ENV.into(),
            value_from: Some(EnvVarSource {
                // Required: without it vLLM would take requests from anyone.
                secret_key_ref: Some(SecretKeySelector {
                    name: key.name.clone(),
                    key: key.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    vars
}

/// `trainer fetch-model`: the model's credentials (as the built-in server gets
/// them), the cache when there is one, and the pod's CPU and memory but no GPU.
fn fetch_container(
    md: &ModelDeployment,
    model: &Model,
    config: &OperatorConfig,
    mounts: Vec<VolumeMount>,
) -> Container {
    let mut vars = vec![
        env("HOME", "/work"),
        env("TMPDIR", "/tmp"),
        env(
            llmops_contract::env::PVC_ROOT,
            llmops_contract::path::PVC_ROOT,
        ),
    ];
    if md.spec.server.model_cache.is_some() {
        vars.push(env(
            llmops_contract::env::MODEL_CACHE_DIR,
            llmops_contract::path::MODEL_CACHE,
        ));
    }
    if let Some(secret) = &model.credentials_secret {
        vars.push(env(CREDENTIALS_SECRET_ENV, secret.clone()));
        vars.extend(credential_env([secret.as_str()]));
    }
    // The Hub mirror (`HF_ENDPOINT`) and span export the other pods get: the
    // telemetry stamp covers a template's containers, not its init containers.
    vars.extend(config.pod_export_env.iter().map(|(k, v)| env(k, v.clone())));
    let mut resources = resource_requirements(md, config);
    for list in [&mut resources.requests, &mut resources.limits]
        .into_iter()
        .flatten()
    {
        list.retain(|name, _| name == "cpu" || name == "memory");
    }
    Container {
        name: FETCH_CONTAINER.into(),
        image: Some(config.trainer_image.clone()),
        command: Some(vec!["trainer".into()]),
        args: Some(fetch_args(model)),
        env: Some(vars),
        resources: Some(ResourceRequirements {
            requests: resources.requests.filter(|r| !r.is_empty()),
            limits: resources.limits.filter(|l| !l.is_empty()),
            ..ResourceRequirements::default()
        }),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        working_dir: Some("/work".into()),
        ..Container::default()
    }
}

/// The pod's volumes: the model's directory, scratch (sized like the built-in
/// server's), `/dev/shm` in memory, a `pvc://` model's claim and the model
/// cache.
fn volumes(md: &ModelDeployment, model: &Model) -> Vec<Volume> {
    let empty = |name: &str, medium: Option<&str>, limit: Option<&str>| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(Into::into),
            size_limit: limit.map(|l| Quantity(l.into())),
        }),
        ..Volume::default()
    };
    let mut volumes = vec![
        // No size limit: it holds the model, whatever its size (the fetch
        // writes only the files its manifest lists).
        empty(MODELS_VOLUME, None, None),
        empty("tmp", None, Some(DEFAULT_SCRATCH_SIZE)),
        empty("work", None, Some(HOME_SIZE_LIMIT)),
        empty(SHM_VOLUME, Some("Memory"), Some(SHM_SIZE)),
    ];
    if let Some(claim) = pvc_claim(&model.artifact.uri) {
        let mut claims = PvcMounts::default();
        claims.read(claim);
        volumes.extend(claims.volumes_and_mounts().0);
    }
    if let Some(cache) = &md.spec.server.model_cache {
        volumes.push(Volume {
            name: MODEL_CACHE_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: cache.claim_name.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        });
    }
    volumes
}

/// The mounts both containers have, at the same paths, so that a link the
/// fetch leaves into the cache or a claim resolves in vLLM's container too.
fn shared_mounts(md: &ModelDeployment, model: &Model) -> Vec<VolumeMount> {
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    };
    let mut mounts = vec![
        mount(MODELS_VOLUME, "/models"),
        mount("tmp", "/tmp"),
        mount("work", "/work"),
    ];
    if let Some(claim) = pvc_claim(&model.artifact.uri) {
        let mut claims = PvcMounts::default();
        claims.read(claim);
        mounts.extend(claims.volumes_and_mounts().1);
    }
    if md.spec.server.model_cache.is_some() {
        mounts.push(mount(
            MODEL_CACHE_VOLUME,
            llmops_contract::path::MODEL_CACHE,
        ));
    }
    mounts
}

#[cfg(test)]
mod tests;
