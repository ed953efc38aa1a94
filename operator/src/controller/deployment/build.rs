//! Build: the children of a ModelDeployment, as a pure function of the object,
//! the resolved model and the operator's settings.
//!
//! For ModelDeployment `<name>`:
//! - Deployment `<name>-server`: `server --model <uri> ...` pods (vLLM's with
//!   `spec.server.runtime: vllm`, [`super::vllm`]), rolled with
//!   `maxUnavailable: 0, maxSurge: 1`, so a new model whose pods never become
//!   ready leaves every old pod serving;
//! - Service `<name>` (`spec.service.type`), port `spec.service.port` → `http`;
//! - with `rollout.canary.trafficRouting`, Services `<name>-stable` and
//!   `<name>-canary` like it, each selecting one revision's pods (the backends
//!   an HTTPRoute weights, [`super::route`]);
//! - PodDisruptionBudget `<name>-server` (`maxUnavailable: 1`) with more than
//!   one replica, so a node drain never takes every server at once;
//! - NetworkPolicy `<name>-server`, the serving port open to the expected
//!   traffic only ([`super::isolation`]).
//!
//! The serving pods mount ConfigMap `<name>-adapters` and read the LoRA
//! adapters to serve from it (`--adapters-file`, [`super::adapters`]); the
//! template is the same whatever adapters there are, so changing them restarts
//! no pod.
//!
//! The pod template carries the model's URI and digest as annotations: a new
//! artifact at the same URI (a re-trained PretrainJob) rolls the pods too, and the
//! status reads which model a Deployment revision serves from them.
//!
//! A serving pod loads its model before `/readyz` answers, which a startup probe
//! waits for ([`startup_probe_failures`]) before liveness is checked. When
//! it is stopped, `preStop` sleeps [`PRE_STOP_SLEEP_SECONDS`] so the endpoints
//! drop it before SIGTERM; the server then finishes its requests in flight
//! within `--shutdown-grace` [`SHUTDOWN_GRACE_SECONDS`], all inside
//! [`TERMINATION_GRACE_PERIOD_SECONDS`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle,
    LifecycleHandler, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretKeySelector, Service, ServicePort, ServiceSpec, SleepAction,
    Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use llmops_crds::ModelDeployment;
use llmops_crds::deployment::{ServeDtype, ServerRuntime, ServiceType};

use super::isolation::build_network_policy;
use super::resolve::Model;
use super::route;
use crate::config::OperatorConfig;
use crate::runtime::apply::{COMPONENT_LABEL, child_labels, child_meta, parent_label_key};
use crate::workload::credentials::credential_env;
use crate::workload::image::ImagePull;
use crate::workload::job::{DEFAULT_SCRATCH_SIZE, HOME_SIZE_LIMIT, env};
use crate::workload::security::{container_security_context, pod_security_context};
use crate::workload::storage::{PvcMounts, pvc_claim};

/// `app.kubernetes.io/component` of every child.
pub const SERVER_COMPONENT: &str = "server";
/// Name of the server container.
pub const SERVER_CONTAINER: &str = "server";
/// The port the server listens on, named [`PORT_NAME`].
pub const SERVER_PORT: i32 = llmops_contract::SERVER_PORT as i32;
pub const PORT_NAME: &str = "http";
/// Pod template annotations naming the served model.
pub const MODEL_URI_ANNOTATION: &str = "llmops.dev/model-uri";
pub const MODEL_DIGEST_ANNOTATION: &str = "llmops.dev/model-digest";
/// The variable holding the accepted API keys, one per line.
pub const API_KEYS_ENV: &str = llmops_contract::env::API_KEYS;
/// The variable naming the Secret whose `LLMOPS_CRED_<SECRET>_*` keys read the model.
pub const CREDENTIALS_SECRET_ENV: &str = llmops_contract::env::MODEL_CREDENTIALS_SECRET;
/// The startup probe's period and least failures: `/readyz` may take this long
/// (10 minutes, or `rollout.progressDeadlineSeconds` when longer) to answer
/// while the model loads, and liveness is not checked before it does.
pub const STARTUP_PROBE_PERIOD_SECONDS: i32 = 5;
pub const STARTUP_PROBE_FAILURES: i32 = 120;

/// The startup probe's failure threshold: ten minutes of loading, and at least
/// the rollout's progress deadline, so a pod still loading within it is not
/// restarted.
pub fn startup_probe_failures(md: &ModelDeployment) -> i32 {
    let deadline = u32::try_from(md.spec.rollout.progress_deadline_seconds).unwrap_or(0);
    let period = STARTUP_PROBE_PERIOD_SECONDS.unsigned_abs();
    let covering = i32::try_from(deadline.div_ceil(period)).unwrap_or(i32::MAX);
    STARTUP_PROBE_FAILURES.max(covering)
}
/// `preStop` sleep: time for the endpoints to drop a stopping pod before the
/// server hears SIGTERM (the server image has no shell, hence `sleep`).
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// `--shutdown-grace`: after SIGTERM the server finishes its requests in flight
/// within this many seconds.
pub const SHUTDOWN_GRACE_SECONDS: i64 = 25;
/// The pod's `terminationGracePeriodSeconds`: the preStop sleep, the server's
/// grace and a margin, so the kubelet never kills a draining server.
pub const TERMINATION_GRACE_PERIOD_SECONDS: i64 =
    PRE_STOP_SLEEP_SECONDS + SHUTDOWN_GRACE_SECONDS + 10;

pub fn deployment_name(name: &str) -> String {
    format!("{name}-server")
}

/// The Deployment of a canary's pods.
pub fn canary_deployment_name(name: &str) -> String {
    format!("{name}-canary")
}

/// Which of a ModelDeployment's Deployments a pod belongs to: the stable one,
/// or a canary's (label [`REVISION_LABEL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revision {
    Stable,
    Canary,
}

impl Revision {
    /// The value of [`REVISION_LABEL`] on this revision's pods.
    pub const fn label(self) -> &'static str {
        match self {
            Revision::Stable => "stable",
            Revision::Canary => "canary",
        }
    }
}

/// The label telling a serving pod's revision.
pub const REVISION_LABEL: &str = "llmops.dev/revision";

pub fn service_name(name: &str) -> String {
    name.to_string()
}

pub fn pdb_name(name: &str) -> String {
    format!("{name}-server")
}

/// The in-cluster base URL of the OpenAI-compatible API.
pub fn endpoint(md: &ModelDeployment) -> String {
    format!(
        "http://{}.{}.svc:{}/v1",
        service_name(&md.name_any()),
        md.namespace().unwrap_or_default(),
        md.spec.service.port
    )
}

/// Serving pods without autoscaling: `replicas.min`, and at least one (scale to
/// zero is not in this version).
pub fn replicas(md: &ModelDeployment) -> i32 {
    md.spec.replicas.min.max(1)
}

/// Everything one pass produces for a ModelDeployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub deployment: Deployment,
    /// A canary's Deployment, while one runs.
    pub canary: Option<Deployment>,
    pub service: Service,
    /// With `canary.trafficRouting`: `<name>-stable` and `<name>-canary`, one
    /// revision's pods each, the backends of the HTTPRoute.
    pub route_services: Vec<Service>,
    /// Only with more than one replica.
    pub pdb: Option<PodDisruptionBudget>,
    /// Unless the operator runs with `--network-policies=false`.
    pub network_policy: Option<NetworkPolicy>,
}

/// The children with [`replicas`] serving pods.
#[cfg(test)]
pub fn build(md: &ModelDeployment, model: &Model, config: &OperatorConfig) -> Children {
    build_with_replicas(md, model, config, replicas(md))
}

/// The children with `replicas` serving pods (as the autoscaler decided).
pub fn build_with_replicas(
    md: &ModelDeployment,
    model: &Model,
    config: &OperatorConfig,
    replicas: i32,
) -> Children {
    Children {
        deployment: build_deployment(md, model, config, replicas, Revision::Stable),
        canary: None,
        service: build_service(md, service_name(&md.name_any()), pod_selector(md)),
        route_services: build_route_services(md),
        pdb: (replicas > 1).then(|| build_pdb(md)),
        network_policy: config
            .network_policies
            .then(|| build_network_policy(md, config.operator_namespace.as_deref())),
    }
}

/// The labels selecting the serving pods; immutable in a Deployment, so never
/// anything that changes.
pub fn pod_selector(md: &ModelDeployment) -> BTreeMap<String, String> {
    BTreeMap::from([
        (parent_label_key::<ModelDeployment>(), md.name_any()),
        (COMPONENT_LABEL.to_string(), SERVER_COMPONENT.to_string()),
    ])
}

/// The `--dtype` value for `spec.server.dtype`.
pub fn dtype_arg(dtype: ServeDtype) -> &'static str {
    match dtype {
        ServeDtype::Fp32 => "float32",
        ServeDtype::Bf16 => "bfloat16",
        ServeDtype::Fp16 => "float16",
    }
}

/// `server` arguments; `--threads` only when set (0 lets the server use the
/// pod's CPU limit).
pub fn server_args(md: &ModelDeployment, model: &Model) -> Vec<String> {
    let server = &md.spec.server;
    let mut args: Vec<String> = vec![
        "--model".into(),
        model.artifact.uri.clone(),
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        SERVER_PORT.to_string(),
        "--served-model-name".into(),
        md.name_any(),
        "--dtype".into(),
        dtype_arg(server.dtype).into(),
        "--max-batch-size".into(),
        server.max_batch.to_string(),
        "--max-context".into(),
        server.max_context.to_string(),
        "--max-new-tokens".into(),
        server.max_new_tokens.to_string(),
        "--max-queue".into(),
        server.max_queue.to_string(),
        "--shutdown-grace".into(),
        SHUTDOWN_GRACE_SECONDS.to_string(),
        "--adapters-file".into(),
        super::adapters::adapters_file(),
    ];
    if server.threads > 0 {
        args.extend(["--threads".into(), server.threads.to_string()]);
    }
    // A produced model's digest is known: the server loads that model or none.
    if !model.artifact.digest.is_empty() {
        args.extend(["--model-digest".into(), model.artifact.digest.clone()]);
    }
    args
}

/// CPU and memory requested and limited alike, and the GPUs as an extended
/// resource; nothing for what the spec leaves unset.
pub fn resource_requirements(
    md: &ModelDeployment,
    config: &OperatorConfig,
) -> ResourceRequirements {
    let resources = &md.spec.resources;
    let mut requests = BTreeMap::new();
    for (key, value) in [("cpu", &resources.cpu), ("memory", &resources.memory)] {
        if let Some(quantity) = value {
            requests.insert(key.to_string(), quantity.clone());
        }
    }
    if resources.gpus > 0 {
        let gpu = resources
            .gpu_resource_name
            .clone()
            .unwrap_or_else(|| config.gpu_resource_name.clone());
        requests.insert(gpu, Quantity(resources.gpus.to_string()));
    }
    let limits = requests.clone();
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }
}

/// The server's environment: scratch directories, the model's store
/// credentials (as the trainer gets them) and the API keys, both only through
/// `secretKeyRef`.
fn server_env(md: &ModelDeployment, model: &Model) -> Vec<EnvVar> {
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
    if let Some(auth) = &md.spec.auth {
        let key = &auth.api_key_secret_ref;
        vars.push(EnvVar {
            name: API_KEYS_ENV.into(),
            value_from: Some(EnvVarSource {
                // Required: a server without its keys would be open to everyone.
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

pub(super) fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// A canary's Deployment: `replicas` pods of the new `model`, beside the stable
/// ones behind the same Service.
pub fn build_canary(
    md: &ModelDeployment,
    model: &Model,
    config: &OperatorConfig,
    replicas: i32,
) -> Deployment {
    build_deployment(md, model, config, replicas, Revision::Canary)
}

/// The model a live Deployment's pods serve: the annotations of its template and
/// the credentials Secret its server is given.
pub fn served_model(deployment: &Deployment) -> Option<Model> {
    let template = &deployment.spec.as_ref()?.template;
    let annotations = template.metadata.as_ref()?.annotations.as_ref()?;
    // The server has the credentials, or vLLM's init container that fetches
    // the model for it.
    let credentials_secret = template.spec.as_ref().and_then(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .filter_map(|c| c.env.as_ref())
            .flatten()
            .find(|e| e.name == CREDENTIALS_SECRET_ENV)
            .and_then(|e| e.value.clone())
    });
    Some(Model {
        artifact: llmops_crds::Artifact {
            uri: annotations.get(MODEL_URI_ANNOTATION)?.clone(),
            digest: annotations
                .get(MODEL_DIGEST_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
        },
        credentials_secret,
    })
}

/// The labels selecting one revision's pods (the Service selects both).
pub fn revision_selector(md: &ModelDeployment, revision: Revision) -> BTreeMap<String, String> {
    let mut labels = pod_selector(md);
    labels.insert(REVISION_LABEL.into(), revision.label().into());
    labels
}

fn build_deployment(
    md: &ModelDeployment,
    model: &Model,
    config: &OperatorConfig,
    replicas: i32,
    revision: Revision,
) -> Deployment {
    let name = md.name_any();
    let pod_meta = ObjectMeta {
        labels: Some({
            let mut labels = child_labels(md, SERVER_COMPONENT);
            labels.insert(REVISION_LABEL.into(), revision.label().into());
            labels
        }),
        annotations: Some(BTreeMap::from([
            (MODEL_URI_ANNOTATION.into(), model.artifact.uri.clone()),
            (
                MODEL_DIGEST_ANNOTATION.into(),
                model.artifact.digest.clone(),
            ),
        ])),
        ..ObjectMeta::default()
    };
    Deployment {
        metadata: child_meta(
            md,
            match revision {
                Revision::Stable => deployment_name(&name),
                Revision::Canary => canary_deployment_name(&name),
            },
            SERVER_COMPONENT,
        ),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(revision_selector(md, revision)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            progress_deadline_seconds: Some(md.spec.rollout.progress_deadline_seconds),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(pod_meta),
                spec: Some(pod_spec(md, model, config)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The serving pod of `spec.server.runtime`: the built-in server, or vLLM
/// ([`super::vllm`]).
fn pod_spec(md: &ModelDeployment, model: &Model, config: &OperatorConfig) -> PodSpec {
    if md.spec.server.runtime == ServerRuntime::Vllm {
        return super::vllm::pod(md, model, config);
    }
    let (mut volumes, mut mounts) = server_volumes(md, model);
    let (adapters, adapters_mount) = super::adapters::volume(md);
    volumes.push(adapters);
    mounts.push(adapters_mount);
    let container = server_container(md, model, config, mounts);
    server_pod(md, container, volumes, &config.server_image_pull)
}

/// Scratch space (`/tmp`, `/work`: the root filesystem is read-only), each with
/// a size limit so a runaway download cannot fill the node's disk — `/tmp`
/// holds a model downloaded from an object store — and, for a model on a PVC,
/// its claim read-only; and the claim of the shared model cache, if any,
/// read-write.
fn server_volumes(md: &ModelDeployment, model: &Model) -> (Vec<Volume>, Vec<VolumeMount>) {
    let scratch = [("tmp", DEFAULT_SCRATCH_SIZE), ("work", HOME_SIZE_LIMIT)];
    let (mut volumes, mut mounts): (Vec<Volume>, Vec<VolumeMount>) = scratch
        .into_iter()
        .map(|(dir, limit)| {
            (
                Volume {
                    name: dir.into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity(limit.into())),
                        ..EmptyDirVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                VolumeMount {
                    name: dir.into(),
                    mount_path: format!("/{dir}"),
                    ..VolumeMount::default()
                },
            )
        })
        .unzip();
    if let Some(claim) = pvc_claim(&model.artifact.uri) {
        let mut claims = PvcMounts::default();
        claims.read(claim);
        let (pvc_volumes, pvc_mounts) = claims.volumes_and_mounts();
        volumes.extend(pvc_volumes);
        mounts.extend(pvc_mounts);
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
        mounts.push(VolumeMount {
            name: MODEL_CACHE_VOLUME.into(),
            mount_path: llmops_contract::path::MODEL_CACHE.into(),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// The volume of `spec.server.modelCache`.
const MODEL_CACHE_VOLUME: &str = "model-cache";

/// The `server` container: its arguments, probes and stop.
fn server_container(
    md: &ModelDeployment,
    model: &Model,
    config: &OperatorConfig,
    mounts: Vec<VolumeMount>,
) -> Container {
    serving_container(
        md,
        config,
        ServingProcess {
            image: config.server_image.clone(),
            command: vec!["server".into()],
            args: server_args(md, model),
            env: server_env(md, model),
            // Started and ready once the model is loaded; alive as long as HTTP
            // answers.
            ready_path: "/readyz",
            live_path: "/healthz",
        },
        mounts,
    )
}

/// What the serving container of one runtime runs and where it is probed.
pub(super) struct ServingProcess {
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    /// The startup and readiness probes' path.
    pub ready_path: &'static str,
    /// The liveness probe's path.
    pub live_path: &'static str,
}

/// The serving container whatever the runtime: one named port, the probes'
/// periods and the startup budget, the preStop sleep that lets endpoints drop
/// the pod before it stops, the spec's resources, restricted security.
pub(super) fn serving_container(
    md: &ModelDeployment,
    config: &OperatorConfig,
    process: ServingProcess,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: SERVER_CONTAINER.into(),
        image: Some(process.image),
        command: Some(process.command),
        args: Some(process.args),
        env: Some(process.env),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: SERVER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        startup_probe: Some(http_probe(
            process.ready_path,
            STARTUP_PROBE_PERIOD_SECONDS,
            startup_probe_failures(md),
        )),
        readiness_probe: Some(http_probe(process.ready_path, 5, 3)),
        liveness_probe: Some(http_probe(process.live_path, 10, 6)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(resource_requirements(md, config)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        working_dir: Some("/work".into()),
        ..Container::default()
    }
}

/// The serving pod: restricted, no API token, scheduled as the spec says, and
/// given the time to drain.
pub(super) fn server_pod(
    md: &ModelDeployment,
    container: Container,
    volumes: Vec<Volume>,
    pull: &ImagePull,
) -> PodSpec {
    let scheduling = &md.spec.scheduling;
    let mut pod = PodSpec {
        containers: vec![container],
        // The server never talks to the API.
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_PERIOD_SECONDS),
        security_context: Some(pod_security_context()),
        volumes: Some(volumes),
        node_selector: (!scheduling.node_selector.is_empty())
            .then(|| scheduling.node_selector.clone()),
        tolerations: (!scheduling.tolerations.is_empty()).then(|| scheduling.tolerations.clone()),
        affinity: scheduling.affinity.clone(),
        priority_class_name: scheduling.priority_class_name.clone(),
        ..PodSpec::default()
    };
    pull.apply(&mut pod);
    pod
}

/// The Services an HTTPRoute weights a canary between (none without
/// `canary.trafficRouting`); the same type and port as the main one.
fn build_route_services(md: &ModelDeployment) -> Vec<Service> {
    if route::route_name(md).is_none() {
        return Vec::new();
    }
    revision_services(md)
}

/// A Service per revision, `<name>-stable` and `<name>-canary`, each selecting
/// that revision's pods: what an HTTPRoute weights, and where the gateway
/// finds a canary's pods to give them exactly their step's share.
pub fn revision_services(md: &ModelDeployment) -> Vec<Service> {
    let name = md.name_any();
    [
        (route::stable_service_name(&name), Revision::Stable),
        (route::canary_service_name(&name), Revision::Canary),
    ]
    .into_iter()
    .map(|(service, revision)| build_service(md, service, revision_selector(md, revision)))
    .collect()
}

fn build_service(
    md: &ModelDeployment,
    name: String,
    selector: BTreeMap<String, String>,
) -> Service {
    let kind = match md.spec.service.kind {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata: child_meta(md, name, SERVER_COMPONENT),
        spec: Some(ServiceSpec {
            type_: Some(kind.into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: md.spec.service.port,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn build_pdb(md: &ModelDeployment) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(md, pdb_name(&md.name_any()), SERVER_COMPONENT),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(pod_selector(md)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}
