//! Jobs running the `trainer` binary: one container, restricted security, scratch
//! space on emptyDirs, the resource file from a ConfigMap, and no retries of its own
//! (`backoffLimit: 0`): the operator decides what a failure means.

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, KeyToPath, PodSpec,
    PodTemplateSpec, ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use llmops_contract::path::{RESOURCE_KEY, RESOURCE_PATH};

use super::security::{container_security_context, pod_security_context};

/// Name of the trainer container; the operator reads its termination message.
pub const TRAINER_CONTAINER: &str = "trainer";

/// A Job running `trainer <args>`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerJob {
    /// Name, namespace, labels (copied onto the pod) and owner references.
    pub meta: ObjectMeta,
    pub image: String,
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

/// Writable scratch directories: the root filesystem is read-only.
fn scratch() -> (Vec<Volume>, Vec<VolumeMount>) {
    ["tmp", "work"]
        .into_iter()
        .map(|name| {
            (
                Volume {
                    name: name.into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
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
        let (mut volumes, mut mounts) = scratch();
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
        let pod = PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(self.service_account.is_some()),
            service_account_name: self.service_account,
            security_context: Some(pod_security_context()),
            volumes: Some(volumes),
            ..PodSpec::default()
        };
        let pod_meta = ObjectMeta {
            labels: self.meta.labels.clone(),
            ..ObjectMeta::default()
        };
        Job {
            metadata: self.meta,
            spec: Some(JobSpec {
                backoff_limit: Some(0),
                completions: Some(1),
                parallelism: Some(1),
                ttl_seconds_after_finished: self.ttl_seconds_after_finished,
                template: PodTemplateSpec {
                    metadata: Some(pod_meta),
                    spec: Some(pod),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }
}
