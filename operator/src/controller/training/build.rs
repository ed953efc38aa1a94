//! The children of a training run, as a pure function of the validated run
//! ([`Valid`]: the resolved resource and what shapes its pods) and the
//! operator's settings.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, PodFailurePolicy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector,
    PodSpec, ResourceRequirements, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use llmops_contract::{env as var, exit, path};
use llmops_crds::{ComputeResources, FailurePolicy, Scheduling};
use serde::Serialize;

use super::validate::Valid;
use super::{
    COMPLETION_INDEX_ANNOTATION, FATAL_EXIT_CODES, RUN_HASH_ANNOTATION, job_name, service_name,
    trainer_name,
};
use crate::config::OperatorConfig;
use crate::runtime::apply::{COMPONENT_LABEL, child_meta, parent_label_key};
use crate::workload::credentials::{CREDENTIAL_KEYS, credential_env, optional_secret_env};
use crate::workload::isolation::trainer_network_policy;
use crate::workload::job::{DEFAULT_SCRATCH_SIZE, TrainerJob, env, resource_file};
use crate::workload::rbac::{TrainerRbac, trainer_rbac};
use crate::workload::storage::{PvcMounts, pvc_claim};
use crate::workload::telemetry::PodTelemetry;

/// Port rank 0 listens on for the other ranks ([`llmops_contract::MASTER_PORT`]).
pub const MASTER_PORT: i32 = llmops_contract::MASTER_PORT as i32;
/// Time a stopping pod gets to save its checkpoint before it is killed; the
/// default 30 s is short for writing a large model and its optimizer state.
pub const TERMINATION_GRACE_SECONDS: i64 = 120;
/// How long a run may be active when `failurePolicy.activeDeadlineSeconds` is
/// unset: 7 days. Long enough for real pretraining runs, short enough that a run
/// hung on a collective that never completes gives its GPUs back.
pub const DEFAULT_ACTIVE_DEADLINE_SECONDS: i64 = 7 * 24 * 3600;

/// What shapes the pods of a run, taken from a PretrainJob's or FineTune's spec.
#[derive(Clone, Debug)]
pub struct Run<'a> {
    /// `trainer <command> --resource ...`; also the children's component label and
    /// the suffix of the Job's and ConfigMap's names.
    pub command: &'static str,
    pub resources: &'a ComputeResources,
    pub scheduling: &'a Scheduling,
    pub failure_policy: &'a FailurePolicy,
    pub suspend: bool,
    /// Where the trainer writes the model and (for file:// and pvc://) checkpoints.
    pub output_uri: &'a str,
    /// Secrets whose keys reach the trainer as `LLMOPS_CRED_<SECRET>_<KEY>`: the
    /// output's, and those of inputs the resource names a Secret for.
    pub secrets: Vec<&'a str>,
    /// URIs the trainer reads; their PVC claims are mounted read-only.
    pub inputs: Vec<&'a str>,
    /// The Secret of the dataset's store, given under the plain key names
    /// (`AWS_ACCESS_KEY_ID`, ...): the trainer reads the dataset with ambient
    /// credentials.
    pub ambient_secret: Option<&'a str>,
    /// [`run_hash`] of the resolved spec without `suspend`.
    pub run_hash: String,
}

/// Everything one pass produces for a training run.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub rbac: TrainerRbac,
    /// The headless Service of the workers; only with more than one replica.
    pub service: Option<Service>,
    pub job: Job,
    /// With `--network-policies`: what the trainer pods may reach.
    pub network_policy: Option<NetworkPolicy>,
}

/// The children of `valid.resource` (the resolved object, with the identity of
/// the parent: name, namespace, uid), which the ConfigMap holds for the trainer.
pub fn build<K>(
    valid: &Valid<'_, K>,
    config: &OperatorConfig,
) -> Result<Children, serde_yaml_ng::Error>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let Valid { resource, run } = valid;
    let name = resource.name_any();
    let multi = run.resources.replicas > 1;
    Ok(Children {
        config_map: build_config_map(*resource, run.command)?,
        rbac: trainer_rbac(*resource, &trainer_name(&name), run.command),
        service: multi.then(|| build_service(*resource, run.command)),
        job: build_job(*resource, run, config),
        network_policy: config
            .network_policies
            .then(|| trainer_network_policy(*resource, &config.trainer_egress)),
    })
}

fn build_config_map<K>(resource: &K, command: &str) -> Result<ConfigMap, serde_yaml_ng::Error>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let text = serde_yaml_ng::to_string(resource)?;
    Ok(ConfigMap {
        metadata: child_meta(resource, job_name(&resource.name_any(), command), command),
        data: Some(BTreeMap::from([(path::RESOURCE_KEY.to_string(), text)])),
        ..ConfigMap::default()
    })
}

/// The labels selecting the trainer pods of `parent`.
fn pod_selector<K: Resource<DynamicType = ()>>(
    parent: &K,
    command: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (parent_label_key::<K>(), parent.name_any()),
        (COMPONENT_LABEL.to_string(), command.to_string()),
    ])
}

/// Headless, and publishing pods before they are ready: ranks connect to rank 0
/// while it starts, so its DNS name must resolve as soon as it has an IP.
fn build_service<K: Resource<DynamicType = ()>>(parent: &K, command: &str) -> Service {
    Service {
        metadata: child_meta(parent, service_name(&parent.name_any()), command),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(pod_selector(parent, command)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: MASTER_PORT,
                target_port: Some(IntOrString::Int(MASTER_PORT)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// CPU and memory requested and limited alike (spec, else the operator's
/// defaults), and the GPUs as an extended resource.
pub fn resource_requirements(
    resources: &ComputeResources,
    config: &OperatorConfig,
) -> ResourceRequirements {
    let mut requirements = config.trainer_resources.requirements();
    let requests = requirements.requests.get_or_insert_default();
    let limits = requirements.limits.get_or_insert_default();
    for (key, value) in [("cpu", &resources.cpu), ("memory", &resources.memory)] {
        if let Some(quantity) = value {
            requests.insert(key.into(), quantity.clone());
            limits.insert(key.into(), quantity.clone());
        }
    }
    if resources.gpus_per_replica > 0 {
        let gpu = resources
            .gpu_resource_name
            .clone()
            .unwrap_or_else(|| config.gpu_resource_name.clone());
        let count = Quantity(resources.gpus_per_replica.to_string());
        requests.insert(gpu.clone(), count.clone());
        limits.insert(gpu, count);
    }
    requirements
}

/// `podFailurePolicy` ([`crate::workload::job::pod_failure_policy`]): besides
/// disruptions, exit 143, the trainer's exit after SIGTERM and a saved checkpoint
/// (a deleted pod, or a disruption the kubelet did not mark), is retried without
/// counting; a fatal exit code fails the Job at once.
pub fn pod_failure_policy() -> PodFailurePolicy {
    crate::workload::job::pod_failure_policy(&[i32::from(exit::INTERRUPTED)], &FATAL_EXIT_CODES)
}

/// `activeDeadlineSeconds` of the run's Job: the spec's, else
/// [`DEFAULT_ACTIVE_DEADLINE_SECONDS`].
pub fn active_deadline_seconds(failure_policy: &FailurePolicy) -> i64 {
    failure_policy
        .active_deadline_seconds
        .unwrap_or(DEFAULT_ACTIVE_DEADLINE_SECONDS)
}

/// Size limit of the pods' `/tmp`: `resources.ephemeralStorage`, else
/// [`DEFAULT_SCRATCH_SIZE`].
pub fn scratch_size(resources: &ComputeResources) -> Quantity {
    Quantity(
        resources
            .ephemeral_storage
            .clone()
            .unwrap_or_else(|| DEFAULT_SCRATCH_SIZE.into()),
    )
}

/// Failed pods the Job may replace. A failing rank takes the others down with it
/// (they lose the collective), so one restart of the group costs up to one failed
/// pod per replica.
pub fn backoff_limit(failure_policy: &FailurePolicy, resources: &ComputeResources) -> i32 {
    failure_policy.max_restarts * resources.replicas.max(1)
}

/// The store credentials of `secret` under the plain variable names.
fn ambient_credential_env(secret: &str) -> Vec<EnvVar> {
    CREDENTIAL_KEYS
        .iter()
        .map(|key| optional_secret_env((*key).to_string(), secret, key))
        .collect()
}

/// `torchrun`-style data-parallel variables of the pods: `RANK` is the pod's
/// completion index and `WORLD_SIZE` the number of pods (the trainer turns them
/// into per-GPU ranks), and rank 0 is `<job>-0.<service>` (the Indexed Job's
/// stable hostname).
fn data_parallel_env(name: &str, command: &str, replicas: i32) -> Vec<EnvVar> {
    vec![
        EnvVar {
            name: var::RANK.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env(var::WORLD_SIZE, replicas.to_string()),
        env(
            var::MASTER_ADDR,
            format!("{}-0.{}", job_name(name, command), service_name(name)),
        ),
        env(var::MASTER_PORT, MASTER_PORT.to_string()),
    ]
}

fn build_job<K: Resource<DynamicType = ()>>(
    parent: &K,
    run: &Run<'_>,
    config: &OperatorConfig,
) -> Job {
    let name = parent.name_any();
    let command = run.command;
    let replicas = run.resources.replicas.max(1);
    let resources = resource_requirements(run.resources, config);
    let (volumes, mounts) = volumes_and_mounts(&name, run, &resources);

    let mut job = TrainerJob {
        meta: child_meta(parent, job_name(&name, command), command),
        image: config.trainer_image.clone(),
        image_pull: config.trainer_image_pull.clone(),
        args: vec![
            command.into(),
            "--resource".into(),
            path::RESOURCE_PATH.into(),
        ],
        service_account: Some(trainer_name(&name)),
        env: trainer_env(&name, run),
        volumes,
        mounts,
        resources,
        ttl_seconds_after_finished: None,
        scratch_size: scratch_size(run.resources),
        backoff_limit: backoff_limit(run.failure_policy, run.resources),
        pod_failure_policy: pod_failure_policy(),
        active_deadline_seconds: active_deadline_seconds(run.failure_policy),
        telemetry: PodTelemetry::of(parent, &config.pod_export_env),
    }
    .into_job();

    let job_spec = job.spec.get_or_insert_default();
    job_spec.completions = Some(replicas);
    job_spec.parallelism = Some(replicas);
    if replicas > 1 {
        job_spec.completion_mode = Some("Indexed".into());
    }
    let pod = job_spec.template.spec.get_or_insert_default();
    schedule(pod, run.scheduling);
    pod.termination_grace_period_seconds = Some(TERMINATION_GRACE_SECONDS);
    if replicas > 1 {
        rendezvous(pod, &name);
    }

    job_spec.suspend = Some(run.suspend);
    job.metadata
        .annotations
        .get_or_insert_default()
        .insert(RUN_HASH_ANNOTATION.into(), run.run_hash.clone());
    job
}

/// The resource file, a memory-backed `/dev/shm`, and the PVCs of the inputs
/// (read-only) and the output.
fn volumes_and_mounts(
    name: &str,
    run: &Run<'_>,
    resources: &ResourceRequirements,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let (resource_volume, resource_mount) = resource_file(&job_name(name, run.command));
    let shm = Volume {
        name: "dshm".into(),
        // Memory-backed: what it holds counts against the pod's memory limit, so
        // that limit is its size limit too; saying so keeps tmpfs from being sized
        // after the node's memory.
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: resources
                .limits
                .as_ref()
                .and_then(|limits| limits.get("memory"))
                .cloned(),
        }),
        ..Volume::default()
    };
    let shm_mount = VolumeMount {
        name: "dshm".into(),
        mount_path: "/dev/shm".into(),
        ..VolumeMount::default()
    };
    let mut volumes = vec![resource_volume, shm];
    let mut mounts = vec![resource_mount, shm_mount];
    let mut claims = PvcMounts::default();
    for input in &run.inputs {
        if let Some(claim) = pvc_claim(input) {
            claims.read(claim);
        }
    }
    if let Some(claim) = pvc_claim(run.output_uri) {
        claims.write(claim);
    }
    let (pvc_volumes, pvc_mounts) = claims.volumes_and_mounts();
    volumes.extend(pvc_volumes);
    mounts.extend(pvc_mounts);
    (volumes, mounts)
}

/// The trainer's environment: the output, credentials, and with several ranks
/// where they find each other.
fn trainer_env(name: &str, run: &Run<'_>) -> Vec<EnvVar> {
    let replicas = run.resources.replicas.max(1);
    let mut job_env = vec![
        env(var::OUTPUT_URI, run.output_uri),
        env(var::PVC_ROOT, path::PVC_ROOT),
    ];
    let mut secrets: Vec<&str> = Vec::new();
    for secret in &run.secrets {
        if !secrets.contains(secret) {
            secrets.push(secret);
        }
    }
    job_env.extend(credential_env(secrets));
    if let Some(secret) = run.ambient_secret {
        job_env.extend(ambient_credential_env(secret));
    }
    if replicas > 1 {
        job_env.extend(data_parallel_env(name, run.command, replicas));
    }
    let gpus = run.resources.gpus_per_replica;
    if gpus > 1 {
        // The trainer starts one process per GPU and gives each its LOCAL_RANK,
        // global RANK (pod × gpus + local) and WORLD_SIZE (pods × gpus).
        job_env.push(env(var::PROCS_PER_POD, gpus.to_string()));
    }
    job_env
}

/// Where the spec's scheduling puts the pod.
fn schedule(pod: &mut PodSpec, scheduling: &Scheduling) {
    pod.node_selector =
        (!scheduling.node_selector.is_empty()).then(|| scheduling.node_selector.clone());
    pod.tolerations = (!scheduling.tolerations.is_empty()).then(|| scheduling.tolerations.clone());
    pod.affinity = scheduling.affinity.clone();
    pod.priority_class_name = scheduling.priority_class_name.clone();
}

/// An Indexed Job's pod reachable as `<pod>.<service>`, listening for the other
/// ranks.
fn rendezvous(pod: &mut PodSpec, name: &str) {
    pod.subdomain = Some(service_name(name));
    if let Some(container) = pod.containers.first_mut() {
        container.ports = Some(vec![ContainerPort {
            name: Some("rendezvous".into()),
            container_port: MASTER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]);
    }
}

/// A stable hash (FNV-1a, the same across operator builds) of a resolved spec,
/// which the caller passes without `suspend`: the user's intent for the run. Only
/// a change to it replaces a running Job; an operator upgrade or a change to an
/// input does not interrupt a run (the lineage is fixed at start anyway).
pub fn run_hash(spec: &impl Serialize) -> String {
    let input = serde_json::to_string(spec).unwrap_or_default();
    let hash = input.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}
