//! Build: the children of a Dataset, as a pure function of the validated Dataset
//! and the operator's settings.
//!
//! For generation G of Dataset `<name>`:
//! - ConfigMap `<name>-prepare`, key `resource.yaml`: the resolved Dataset;
//! - ServiceAccount, Role and RoleBinding `<name>-trainer`: get the Dataset, get and
//!   patch its status, by resourceName;
//! - Job `<name>-prepare-g<G>`: `trainer prepare --resource /etc/llmops/resource.yaml`.
//!
//! On deletion with `output.deletionPolicy: Delete`, Job `<name>-clean` runs
//! `trainer clean` (`crate::workload::cleanup`).
//!
//! The prepare Job retries a failed pod up to [`BACKOFF_LIMIT`] times, a pod stopped by a
//! node drain or preemption without counting it, and fail at once on the
//! trainer's exit for an error no retry fixes.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::batch::v1::PodFailurePolicy;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, KeyToPath, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use llmops_contract::{env as var, exit, path};
use llmops_crds::Dataset;
use llmops_crds::dataset::ConfigMapSource;

use super::validate::Valid;
use crate::config::OperatorConfig;
use crate::runtime::apply::child_meta;
use crate::workload::credentials::credential_env;
use crate::workload::isolation::trainer_network_policy;
use crate::workload::job::{
    DEFAULT_SCRATCH_SIZE, TrainerJob, env, pod_failure_policy, resource_file,
};
use crate::workload::rbac::{TrainerRbac, trainer_rbac};
use crate::workload::storage::{PvcMounts, pvc_claim};
use crate::workload::telemetry::PodTelemetry;

/// `app.kubernetes.io/component` of the preparation children.
pub const PREPARE_COMPONENT: &str = "prepare";
/// Failed pods the prepare Job replaces before it fails: a transient
/// store or network error deserves another try, a persistent one should not keep
/// a node busy for long. Disruptions do not count.
pub const BACKOFF_LIMIT: i32 = 3;
/// How long preparation may be active when `spec.activeDeadlineSeconds` is unset.
pub const DEFAULT_PREPARE_DEADLINE_SECONDS: i64 = 24 * 3600;

pub fn job_name(name: &str, generation: i64) -> String {
    format!("{name}-prepare-g{generation}")
}

pub fn config_map_name(name: &str) -> String {
    format!("{name}-prepare")
}

pub fn trainer_name(name: &str) -> String {
    format!("{name}-trainer")
}

/// Everything one pass produces for a Dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub rbac: TrainerRbac,
    pub job: Job,
    /// With `--network-policies`: what the trainer pods may reach.
    pub network_policy: Option<NetworkPolicy>,
}

pub fn build(valid: &Valid<'_>, config: &OperatorConfig) -> Result<Children, serde_yaml_ng::Error> {
    let ds = valid.dataset;
    Ok(Children {
        config_map: build_config_map(ds)?,
        rbac: trainer_rbac(ds, &trainer_name(&ds.name_any()), PREPARE_COMPONENT),
        job: build_prepare_job(valid, config),
        network_policy: config
            .network_policies
            .then(|| trainer_network_policy(ds, &config.trainer_egress)),
    })
}

fn build_config_map(ds: &Dataset) -> Result<ConfigMap, serde_yaml_ng::Error> {
    let resource = serde_yaml_ng::to_string(ds)?;
    Ok(ConfigMap {
        metadata: child_meta(ds, config_map_name(&ds.name_any()), PREPARE_COMPONENT),
        data: Some(BTreeMap::from([(path::RESOURCE_KEY.to_string(), resource)])),
        ..ConfigMap::default()
    })
}

/// The distinct credential Secrets the trainer needs, sources first, then output.
pub fn credential_secrets(ds: &Dataset) -> Vec<String> {
    let sources = ds
        .spec
        .sources
        .iter()
        .filter_map(|s| s.object_store.as_ref()?.credentials_secret_ref.as_ref());
    let mut secrets: Vec<String> = Vec::new();
    for secret in sources.chain(ds.spec.output.credentials_secret_ref.as_ref()) {
        if !secrets.contains(&secret.name) {
            secrets.push(secret.name.clone());
        }
    }
    secrets
}

fn build_prepare_job(valid: &Valid<'_>, config: &OperatorConfig) -> Job {
    let ds = valid.dataset;
    let name = ds.name_any();
    let (volumes, mounts) = volumes_and_mounts(valid);
    let mut job_env = vec![
        env(var::OUTPUT_URI, valid.output_uri),
        env(var::PVC_ROOT, path::PVC_ROOT),
        env(var::SOURCES_DIR, path::SOURCES_DIR),
    ];
    job_env.extend(credential_env(valid.secrets.iter().map(String::as_str)));
    if config.allow_link_local_sources {
        job_env.push(env(var::ALLOW_LINK_LOCAL_SOURCES, "true"));
    }

    TrainerJob {
        meta: child_meta(ds, valid.job_name.clone(), PREPARE_COMPONENT),
        image: config.trainer_image.clone(),
        image_pull: config.trainer_image_pull.clone(),
        args: vec![
            "prepare".into(),
            "--resource".into(),
            path::RESOURCE_PATH.into(),
        ],
        service_account: Some(trainer_name(&name)),
        env: job_env,
        volumes,
        mounts,
        resources: config.trainer_resources.requirements(),
        ttl_seconds_after_finished: None,
        scratch_size: Quantity(
            ds.spec
                .ephemeral_storage
                .clone()
                .unwrap_or_else(|| DEFAULT_SCRATCH_SIZE.into()),
        ),
        backoff_limit: BACKOFF_LIMIT,
        pod_failure_policy: failure_policy(),
        active_deadline_seconds: ds
            .spec
            .active_deadline_seconds
            .unwrap_or(DEFAULT_PREPARE_DEADLINE_SECONDS),
        telemetry: PodTelemetry::of(ds, &config.pod_export_env),
    }
    .into_job()
}

/// Disruptions are retried without counting; the trainer's exit for an invalid
/// spec or input fails the Job at once. Unlike a training run, a prepare pod has
/// no checkpoint to resume from, so its SIGTERM exit is an ordinary
/// failure.
fn failure_policy() -> PodFailurePolicy {
    pod_failure_policy(&[], &[i32::from(exit::INVALID)])
}

/// The resource file, the configMap sources under `SOURCES_DIR/<index>`, and the
/// PVCs of the pvc sources and tokenizer (read-only) and of the output.
fn volumes_and_mounts(valid: &Valid<'_>) -> (Vec<Volume>, Vec<VolumeMount>) {
    let ds = valid.dataset;
    let (resource_volume, resource_mount) = resource_file(&config_map_name(&ds.name_any()));
    let mut volumes = vec![resource_volume];
    let mut mounts = vec![resource_mount];
    for (index, source) in ds.spec.sources.iter().enumerate() {
        if let Some(cm) = &source.config_map {
            let (volume, mount) = config_map_source(index, cm);
            volumes.push(volume);
            mounts.push(mount);
        }
    }

    let mut claims = PvcMounts::default();
    for source in &ds.spec.sources {
        if let Some(pvc) = &source.pvc {
            claims.read(&pvc.claim_name);
        }
    }
    if let Some(claim) = ds.spec.tokenizer.uri.as_deref().and_then(pvc_claim) {
        claims.read(claim);
    }
    if let Some(claim) = pvc_claim(valid.output_uri) {
        claims.write(claim);
    }
    let (pvc_volumes, pvc_mounts) = claims.volumes_and_mounts();
    volumes.extend(pvc_volumes);
    mounts.extend(pvc_mounts);
    (volumes, mounts)
}

/// The key of configMap source `index`, mounted read-only at `SOURCES_DIR/<index>`.
fn config_map_source(index: usize, cm: &ConfigMapSource) -> (Volume, VolumeMount) {
    let volume = format!("source-{index}");
    (
        Volume {
            name: volume.clone(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.name.clone(),
                items: Some(vec![KeyToPath {
                    key: cm.key.clone(),
                    path: cm.key.clone(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: volume,
            mount_path: format!("{}/{index}", path::SOURCES_DIR),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}
