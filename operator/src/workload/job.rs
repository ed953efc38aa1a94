//! Jobs running the `trainer` binary: one container, restricted security, scratch
//! space on size-limited emptyDirs, the resource file from a ConfigMap, a deadline,
//! and retries that skip disruptions and stop at errors no retry can fix.

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, KeyToPath, PodSpec,
    PodTemplateSpec, ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use llmops_contract::path::{RESOURCE_KEY, RESOURCE_PATH};

use super::image::ImagePull;
use super::security::{container_security_context, pod_security_context};
use super::telemetry::PodTelemetry;

/// Name of the trainer container; the operator reads its termination message.
pub const TRAINER_CONTAINER: &str = "trainer";
/// Size limit of `/work` (`HOME`): the trainer keeps its data in `TMPDIR`, so
/// `HOME` holds only what libraries cache there (CUDA kernels, configuration).
pub const HOME_SIZE_LIMIT: &str = "2Gi";
/// Size limit of `/tmp` when the resource sets no ephemeral storage: room for a
/// dataset or model staged on its way to or from an object store.
pub const DEFAULT_SCRATCH_SIZE: &str = "100Gi";

/// A Job running `trainer <args>`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerJob {
    /// Name, namespace, labels (copied onto the pod) and owner references.
    pub meta: ObjectMeta,
    pub image: String,
    /// Pull policy and pull Secrets of the pod (`OperatorConfig::trainer_image_pull`).
    pub image_pull: ImagePull,
    /// Arguments after `trainer`, e.g. `prepare --resource /etc/llmops/resource.yaml`.
    pub args: Vec<String>,
    /// ServiceAccount whose token the pod gets; `None` mounts no token at all.
    pub service_account: Option<String>,
    pub env: Vec<EnvVar>,
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    pub resources: ResourceRequirements,
    /// Seconds after finishing before the Job is deleted; `None` keeps it.
    pub ttl_seconds_after_finished: Option<i32>,
    /// Size limit of `/tmp`, the trainer's scratch space.
    pub scratch_size: Quantity,
    /// Failed pods the Job replaces before it fails (disruptions and what
    /// `pod_failure_policy` ignores do not count).
    pub backoff_limit: i32,
    pub pod_failure_policy: PodFailurePolicy,
    /// Seconds the Job may be active, retries included, before its pods are
    /// stopped and it fails with `DeadlineExceeded`: a pod that hangs (a stuck
    /// download, a rendezvous that never completes) cannot hold its nodes forever.
    pub active_deadline_seconds: i64,
    /// The owner, trace and OTLP settings of the pod ([`PodTelemetry::of`]).
    pub telemetry: PodTelemetry,
}

/// `podFailurePolicy` of a trainer Job, evaluated in order:
/// - a pod stopped by a disruption (preemption, eviction, node drain) is retried
///   without counting against `backoffLimit`: nothing was wrong with the work;
/// - so is an exit in `ignore_exit_codes`;
/// - an exit in `fatal_exit_codes` fails the Job at once: retrying cannot help.
///
/// Any other failure counts against `backoffLimit`. An empty list adds no rule
/// (the API rejects an empty `values`).
pub fn pod_failure_policy(ignore_exit_codes: &[i32], fatal_exit_codes: &[i32]) -> PodFailurePolicy {
    let on_exit = |action: &str, codes: &[i32]| PodFailurePolicyRule {
        action: action.into(),
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: Some(TRAINER_CONTAINER.into()),
            operator: "In".into(),
            values: codes.to_vec(),
        }),
        ..PodFailurePolicyRule::default()
    };
    let mut rules = vec![PodFailurePolicyRule {
        action: "Ignore".into(),
        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
        }]),
        ..PodFailurePolicyRule::default()
    }];
    if !ignore_exit_codes.is_empty() {
        rules.push(on_exit("Ignore", ignore_exit_codes));
    }
    if !fatal_exit_codes.is_empty() {
        rules.push(on_exit("FailJob", fatal_exit_codes));
    }
    PodFailurePolicy { rules }
}

/// The volume and mount of `<config_map>`'s `resource.yaml` at [`RESOURCE_PATH`].
/// A single-file subPath mount leaves the rest of `/etc/llmops` free for other mounts.
pub fn resource_file(config_map: &str) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: "resource".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            items: Some(vec![KeyToPath {
                key: RESOURCE_KEY.into(),
                path: RESOURCE_KEY.into(),
                ..KeyToPath::default()
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "resource".into(),
        mount_path: RESOURCE_PATH.into(),
        sub_path: Some(RESOURCE_KEY.into()),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// A plain environment variable.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Writable scratch directories: the root filesystem is read-only. Each has a
/// size limit, so a runaway writer is evicted instead of filling the node's disk.
fn scratch(tmp_size: Quantity) -> (Vec<Volume>, Vec<VolumeMount>) {
    [
        ("tmp", tmp_size),
        ("work", Quantity(HOME_SIZE_LIMIT.into())),
    ]
    .into_iter()
    .map(|(name, size)| {
        (
            Volume {
                name: name.into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(size),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            },
            VolumeMount {
                name: name.into(),
                mount_path: format!("/{name}"),
                ..VolumeMount::default()
            },
        )
    })
    .unzip()
}

impl TrainerJob {
    pub fn into_job(self) -> Job {
        let (mut volumes, mut mounts) = scratch(self.scratch_size);
        volumes.extend(self.volumes);
        mounts.extend(self.mounts);
        let mut env = vec![env("HOME", "/work"), env("TMPDIR", "/tmp")];
        env.extend(self.env);
        let container = Container {
            name: TRAINER_CONTAINER.into(),
            image: Some(self.image),
            command: Some(vec!["trainer".into()]),
            args: Some(self.args),
            env: Some(env),
            volume_mounts: Some(mounts),
            resources: Some(self.resources),
            security_context: Some(container_security_context()),
            // The trainer writes its result (or its one-line error) to
            // /dev/termination-log; if it dies before that, the log tail stands in.
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            working_dir: Some("/work".into()),
            ..Container::default()
        };
        let mut pod = PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(self.service_account.is_some()),
            service_account_name: self.service_account,
            security_context: Some(pod_security_context()),
            volumes: Some(volumes),
            ..PodSpec::default()
        };
        self.image_pull.apply(&mut pod);
        let pod_meta = ObjectMeta {
            labels: self.meta.labels.clone(),
            ..ObjectMeta::default()
        };
        let mut template = PodTemplateSpec {
            metadata: Some(pod_meta),
            spec: Some(pod),
        };
        // The Job is created once and its template is immutable: its pods keep
        // the trace of the generation that started the run.
        self.telemetry.apply(&mut template);
        let mut metadata = self.meta;
        if let Some(traceparent) = &self.telemetry.traceparent {
            metadata.annotations.get_or_insert_default().insert(
                llmops_contract::TRACEPARENT_ANNOTATION.into(),
                traceparent.clone(),
            );
        }
        Job {
            metadata,
            spec: Some(JobSpec {
                backoff_limit: Some(self.backoff_limit),
                pod_failure_policy: Some(self.pod_failure_policy),
                active_deadline_seconds: Some(self.active_deadline_seconds),
                completions: Some(1),
                parallelism: Some(1),
                ttl_seconds_after_finished: self.ttl_seconds_after_finished,
                template,
                ..JobSpec::default()
            }),
            status: None,
        }
    }
}
