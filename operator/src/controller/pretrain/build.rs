//! Build: the children of a PretrainJob, as a pure function of the resolved
//! PretrainJob and the operator's settings.
//!
//! For PretrainJob `<name>`:
//! - ConfigMap `<name>-pretrain`, key `resource.yaml`: the resolved PretrainJob with
//!   `status.dataset` (the lineage the trainer reads its data from);
//! - ServiceAccount, Role and RoleBinding `<name>-trainer`: get the PretrainJob, get
//!   and patch its status, by resourceName;
//! - Job `<name>-pretrain`: `trainer pretrain --resource /etc/llmops/resource.yaml`,
//!   one pod per replica; with more than one replica an Indexed Job whose pods find
//!   rank 0 through the headless Service `<name>-workers`.
//!
//! The Job carries a hash of the spec except `suspend` ([`RUN_HASH_ANNOTATION`]);
//! a spec change replaces the Job, and the new pods resume from the newest
//! checkpoint. `suspend` is set on the live Job.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector,
    ResourceRequirements, SecretKeySelector, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use llmops_crds::PretrainJob;

use super::resolve::Resolved;
use crate::config::OperatorConfig;
use crate::runtime::apply::{COMPONENT_LABEL, child_meta, parent_label_key};
use crate::workload::credentials::{CREDENTIAL_KEYS, credential_env};
use crate::workload::job::{
    RESOURCE_KEY, RESOURCE_PATH, TRAINER_CONTAINER, TrainerJob, env, resource_file,
};
use crate::workload::rbac::{TrainerRbac, trainer_rbac};
use crate::workload::storage::{PVC_ROOT, PvcMounts, pvc_claim};

/// `app.kubernetes.io/component` of every child.
pub const PRETRAIN_COMPONENT: &str = "pretrain";
/// Annotation on the Job: hash of the spec it runs, `suspend` aside.
pub const RUN_HASH_ANNOTATION: &str = "llmops.dev/run-hash";
/// Port rank 0 listens on for the other ranks.
pub const MASTER_PORT: i32 = 29500;
/// The pod annotation holding an Indexed Job pod's index (the rank).
pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// Exit status of the trainer after SIGTERM, once its checkpoint is saved.
pub const EXIT_INTERRUPTED: i32 = 143;
/// Exit statuses that no retry can fix: 2 is an error only a spec, data or output
/// change can fix (invalid spec, dataset digest mismatch, a foreign checkpoint,
/// divergence) or a command line the trainer rejects.
pub const FATAL_EXIT_CODES: [i32; 1] = [2];
/// Time a stopping pod gets to save its checkpoint before it is killed; the
/// default 30 s is short for writing a large model and its optimizer state.
pub const TERMINATION_GRACE_SECONDS: i64 = 120;

pub fn job_name(name: &str) -> String {
    format!("{name}-pretrain")
}

pub fn config_map_name(name: &str) -> String {
    format!("{name}-pretrain")
}

pub fn trainer_name(name: &str) -> String {
    format!("{name}-trainer")
}

pub fn service_name(name: &str) -> String {
    format!("{name}-workers")
}

/// Everything one pass produces for a PretrainJob.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub rbac: TrainerRbac,
    /// The headless Service of the workers; only with more than one replica.
    pub service: Option<Service>,
    pub job: Job,
}

pub fn build(
    resolved: &Resolved,
    config: &OperatorConfig,
) -> Result<Children, serde_yaml_ng::Error> {
    let job = &resolved.job;
    let name = job.name_any();
    let multi = job.spec.resources.replicas > 1;
    Ok(Children {
        config_map: build_config_map(job)?,
        rbac: trainer_rbac(job, &trainer_name(&name), PRETRAIN_COMPONENT),
        service: multi.then(|| build_service(job)),
        job: build_job(resolved, config),
    })
}

fn build_config_map(job: &PretrainJob) -> Result<ConfigMap, serde_yaml_ng::Error> {
    let resource = serde_yaml_ng::to_string(job)?;
    Ok(ConfigMap {
        metadata: child_meta(job, config_map_name(&job.name_any()), PRETRAIN_COMPONENT),
        data: Some(BTreeMap::from([(RESOURCE_KEY.to_string(), resource)])),
        ..ConfigMap::default()
    })
}

/// The labels selecting this PretrainJob's trainer pods.
fn pod_selector(job: &PretrainJob) -> BTreeMap<String, String> {
    BTreeMap::from([
        (parent_label_key::<PretrainJob>(), job.name_any()),
        (COMPONENT_LABEL.to_string(), PRETRAIN_COMPONENT.to_string()),
    ])
}

/// Headless, and publishing pods before they are ready: ranks connect to rank 0
/// while it starts, so its DNS name must resolve as soon as it has an IP.
fn build_service(job: &PretrainJob) -> Service {
    Service {
        metadata: child_meta(job, service_name(&job.name_any()), PRETRAIN_COMPONENT),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(pod_selector(job)),
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
pub fn resource_requirements(job: &PretrainJob, config: &OperatorConfig) -> ResourceRequirements {
    let resources = &job.spec.resources;
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

/// `podFailurePolicy`, evaluated in order:
/// - a pod stopped by a disruption (preemption, eviction, node drain) is retried
///   without counting against `backoffLimit`;
/// - so is exit 143, the trainer's exit after SIGTERM and a saved checkpoint
///   (a deleted pod, or a disruption the kubelet did not mark);
/// - a fatal exit code fails the Job at once: retrying cannot help.
pub fn pod_failure_policy() -> PodFailurePolicy {
    let on_exit = |action: &str, codes: Vec<i32>| PodFailurePolicyRule {
        action: action.into(),
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: Some(TRAINER_CONTAINER.into()),
            operator: "In".into(),
            values: codes,
        }),
        ..PodFailurePolicyRule::default()
    };
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
                ..PodFailurePolicyRule::default()
            },
            on_exit("Ignore", vec![EXIT_INTERRUPTED]),
            on_exit("FailJob", FATAL_EXIT_CODES.to_vec()),
        ],
    }
}

/// Failed pods the Job may replace. A failing rank takes the others down with it
/// (they lose the collective), so one restart of the group costs up to one failed
/// pod per replica.
pub fn backoff_limit(job: &PretrainJob) -> i32 {
    job.spec.failure_policy.max_restarts * job.spec.resources.replicas.max(1)
}

/// The dataset's store credentials as the plain variable names (`AWS_ACCESS_KEY_ID`,
/// ...): the trainer reads the dataset with ambient credentials, and the output
/// with the `LLMOPS_CRED_<SECRET>_*` ones of `spec.output.credentialsSecretRef`.
fn ambient_credential_env(secret: &str) -> Vec<EnvVar> {
    CREDENTIAL_KEYS
        .iter()
        .map(|key| EnvVar {
            name: (*key).to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.to_string(),
                    key: (*key).to_string(),
                    optional: Some(true),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        })
        .collect()
}

/// Processes the trainer starts in each pod, one per GPU.
const PROCS_PER_POD_ENV: &str = "LLMOPS_PROCS_PER_POD";

/// `torchrun`-style data-parallel variables of the pods: `RANK` is the pod's
/// completion index and `WORLD_SIZE` the number of pods (the trainer turns them
/// into per-GPU ranks), and rank 0 is `<job>-0.<service>` (the Indexed Job's
/// stable hostname).
fn data_parallel_env(name: &str, replicas: i32) -> Vec<EnvVar> {
    vec![
        EnvVar {
            name: "RANK".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env("WORLD_SIZE", replicas.to_string()),
        env(
            "MASTER_ADDR",
            format!("{}-0.{}", job_name(name), service_name(name)),
        ),
        env("MASTER_PORT", MASTER_PORT.to_string()),
    ]
}

fn build_job(resolved: &Resolved, config: &OperatorConfig) -> Job {
    let pt = &resolved.job;
    let spec = &pt.spec;
    let name = pt.name_any();
    let replicas = spec.resources.replicas.max(1);

    let (resource_volume, resource_mount) = resource_file(&config_map_name(&name));
    let shm = Volume {
        name: "dshm".into(),
        // Memory-backed: counts against the pod's memory limit.
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            ..EmptyDirVolumeSource::default()
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
    if let Some(claim) = pvc_claim(&resolved.dataset.uri) {
        claims.read(claim);
    }
    if let Some(claim) = pvc_claim(&resolved.output_uri) {
        claims.write(claim);
    }
    let (pvc_volumes, pvc_mounts) = claims.volumes_and_mounts();
    volumes.extend(pvc_volumes);
    mounts.extend(pvc_mounts);

    let mut job_env = vec![
        env("LLMOPS_OUTPUT_URI", resolved.output_uri.clone()),
        env("LLMOPS_PVC_ROOT", PVC_ROOT),
    ];
    let output_secret = spec.output.credentials_secret_ref.as_ref();
    job_env.extend(credential_env(output_secret.map(|s| s.name.as_str())));
    if let Some(secret) = &resolved.dataset_secret {
        job_env.extend(ambient_credential_env(secret));
    }
    if replicas > 1 {
        job_env.extend(data_parallel_env(&name, replicas));
    }
    let gpus = spec.resources.gpus_per_replica;
    if gpus > 1 {
        // The trainer starts one process per GPU and gives each its LOCAL_RANK,
        // global RANK (pod × gpus + local) and WORLD_SIZE (pods × gpus).
        job_env.push(env(PROCS_PER_POD_ENV, gpus.to_string()));
    }

    let mut job = TrainerJob {
        meta: child_meta(pt, job_name(&name), PRETRAIN_COMPONENT),
        image: config.trainer_image.clone(),
        args: vec!["pretrain".into(), "--resource".into(), RESOURCE_PATH.into()],
        service_account: Some(trainer_name(&name)),
        env: job_env,
        volumes,
        mounts,
        resources: resource_requirements(pt, config),
        ttl_seconds_after_finished: None,
    }
    .into_job();

    let job_spec = job.spec.get_or_insert_default();
    job_spec.backoff_limit = Some(backoff_limit(pt));
    job_spec.completions = Some(replicas);
    job_spec.parallelism = Some(replicas);
    job_spec.pod_failure_policy = Some(pod_failure_policy());
    if replicas > 1 {
        job_spec.completion_mode = Some("Indexed".into());
    }
    let pod = job_spec.template.spec.get_or_insert_default();
    let scheduling = &spec.scheduling;
    pod.node_selector =
        (!scheduling.node_selector.is_empty()).then(|| scheduling.node_selector.clone());
    pod.tolerations = (!scheduling.tolerations.is_empty()).then(|| scheduling.tolerations.clone());
    pod.affinity = scheduling.affinity.clone();
    pod.priority_class_name = scheduling.priority_class_name.clone();
    pod.termination_grace_period_seconds = Some(TERMINATION_GRACE_SECONDS);
    if replicas > 1 {
        pod.subdomain = Some(service_name(&name));
        if let Some(container) = pod.containers.first_mut() {
            container.ports = Some(vec![ContainerPort {
                name: Some("rendezvous".into()),
                container_port: MASTER_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]);
        }
    }

    job_spec.suspend = Some(spec.suspend);
    job.metadata
        .annotations
        .get_or_insert_default()
        .insert(RUN_HASH_ANNOTATION.into(), run_hash(pt));
    job
}

/// A stable hash (FNV-1a, the same across operator builds) of the resolved spec
/// without `suspend`: the user's intent for the run. Only a change to it replaces a
/// running Job; an operator upgrade or a change to the Dataset does not interrupt
/// a run (the lineage is fixed at start anyway).
fn run_hash(pt: &PretrainJob) -> String {
    let mut spec = pt.spec.clone();
    spec.suspend = false;
    let input = serde_json::to_string(&spec).unwrap_or_default();
    let hash = input.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}
