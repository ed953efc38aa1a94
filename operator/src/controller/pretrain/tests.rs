//! Fixtures, and tests of the PretrainJob pipeline: resolve and validate
//! decisions, the children it builds, and the status read from the Job.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use llmops_contract::env;
use llmops_crds::{Dataset, PretrainJob};

use super::resolve::{Resolution, Resolved, resolve_with};
use super::validate::{Invalid, validate};
use crate::config::OperatorConfig;
use crate::controller::training::build::{Children, build};
use crate::test_support::{env_value, env_var, pod_spec, trainer, volume, with_overlay};

const BASE: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: PretrainJob
metadata: {name: base, namespace: ml, uid: 7f3a-uid, generation: 1}
spec:
  datasetRef: {name: web}
  model: {family: llama, layers: 2, heads: 4, hidden: 64, contextLength: 256}
  training: {maxSteps: 200, batchSize: 32, microBatchSize: 8}
"#;

const DATASET: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: Dataset
metadata: {name: web, namespace: ml, generation: 2}
spec:
  sources: [{inline: {content: "hello"}}]
  tokenizer: {train: {vocabSize: 512}}
  segmentation: {sequenceLength: 256}
status:
  observedGeneration: 2
  conditions:
    - {type: Ready, status: "True", reason: Prepared, message: ok, observedGeneration: 2, lastTransitionTime: "2026-01-01T00:00:00Z"}
  artifact: {uri: "s3://llmops-artifacts/datasets/ml/web", digest: "sha256:d1"}
"#;

pub fn fixture(overlay: &str) -> PretrainJob {
    with_overlay(BASE, overlay)
}

fn dataset(overlay: &str) -> Dataset {
    with_overlay(DATASET, overlay)
}

fn resolution(job: &str, ds: Option<&str>) -> Resolution {
    let ds = ds.map(dataset);
    resolve_with(&fixture(job), ds.as_ref(), &OperatorConfig::example())
}

fn resolved(job: &str) -> Resolved {
    match resolution(job, Some("{}")) {
        Resolution::Resolved(resolved) => *resolved,
        other => panic!("not resolved: {other:?}"),
    }
}

fn children(job: &str) -> Children {
    children_with(job, &OperatorConfig::example())
}

fn children_with(job: &str, config: &OperatorConfig) -> Children {
    build(&validate(&resolved(job)).unwrap(), config).unwrap()
}

mod resolve_tests {
    use super::*;
    use crate::runtime::conditions::Outcome;

    fn message(outcome: &Outcome) -> (&str, &str) {
        match outcome {
            Outcome::Progressing { reason, message } | Outcome::Stalled { reason, message } => {
                (reason, message)
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    #[test]
    fn a_missing_dataset_is_waited_for_and_named() {
        let Resolution::Waiting(outcome) = resolution("{}", None) else {
            panic!("not waiting");
        };
        let (reason, text) = message(&outcome);
        assert_eq!(reason, "WaitingForDataset");
        assert!(text.contains("web") && text.contains("not found"), "{text}");
    }

    #[test]
    fn a_dataset_not_ready_for_its_generation_is_waited_for() {
        let Resolution::Waiting(outcome) = resolution("{}", Some("metadata: {generation: 3}"))
        else {
            panic!("not waiting");
        };
        let (reason, text) = message(&outcome);
        assert_eq!(reason, "WaitingForDataset");
        assert_eq!(
            text,
            "waiting for Dataset web (spec.datasetRef) to be Ready"
        );
    }

    #[test]
    fn an_instruction_dataset_stalls_naming_the_reference() {
        let Resolution::Stalled(outcome) = resolution(
            "{}",
            Some("spec: {type: instruction, labeling: {template: \"{prompt}\"}}"),
        ) else {
            panic!("not stalled");
        };
        let (reason, text) = message(&outcome);
        assert_eq!(reason, "InvalidSpec");
        assert!(text.starts_with("spec.datasetRef:"), "{text}");
    }

    #[test]
    fn the_ready_artifact_becomes_the_lineage_and_the_output_defaults_to_the_store() {
        let r = resolved("{}");
        assert_eq!(r.dataset.uri, "s3://llmops-artifacts/datasets/ml/web");
        assert_eq!(r.dataset.digest, "sha256:d1");
        assert_eq!(
            r.job.status.as_ref().unwrap().operator.dataset.as_ref(),
            Some(&r.dataset)
        );
        assert_eq!(r.output_uri, "s3://llmops-artifacts/pretrainjobs/ml/base");
        assert_eq!(
            r.job
                .spec
                .output
                .credentials_secret_ref
                .as_ref()
                .unwrap()
                .name,
            "store-creds"
        );
        // The dataset in the default store is read with the store's Secret.
        assert_eq!(r.dataset_secret.as_deref(), Some("store-creds"));
        assert_eq!(r.dataset_sequence_length, Some(256));
        assert_eq!(r.job.metadata.uid.as_deref(), Some("7f3a-uid"));
    }

    #[test]
    fn recorded_lineage_is_kept_even_when_the_dataset_is_re_prepared_or_gone() {
        let job = r#"status: {dataset: {uri: "s3://llmops-artifacts/datasets/ml/web", digest: "sha256:old"}}"#;
        // Re-preparing (not Ready for its new generation) does not block the run.
        let changed = "spec: {type: instruction, labeling: {template: \"{prompt}\"}}";
        for ds in [Some("metadata: {generation: 3}"), Some(changed), None] {
            let Resolution::Resolved(r) = resolution(job, ds) else {
                panic!("not resolved with {ds:?}");
            };
            assert_eq!(r.dataset.digest, "sha256:old");
            assert_eq!(r.dataset_sequence_length, None);
            assert_eq!(r.dataset_secret.as_deref(), Some("store-creds"));
        }
    }
}

mod validate_tests {
    use super::*;

    fn check(job: &str, ds: &str) -> Result<(), Invalid> {
        match resolution(job, Some(ds)) {
            Resolution::Resolved(r) => validate(&r).map(|_| ()),
            other => panic!("not resolved: {other:?}"),
        }
    }

    #[test]
    fn the_fixture_is_valid() {
        assert_eq!(check("{}", "{}"), Ok(()));
    }

    #[test]
    fn dataset_sequences_longer_than_the_context_need_a_sequence_length() {
        let long = "spec: {segmentation: {sequenceLength: 512}}";
        let err = check("{}", long).unwrap_err();
        assert_eq!(err.field, "spec.sequenceLength");
        assert!(err.message.contains("512") && err.message.contains("256"));
        assert_eq!(check("spec: {sequenceLength: 256}", long), Ok(()));
    }

    #[test]
    fn a_sequence_length_beyond_the_dataset_is_rejected() {
        let err = check(
            "spec: {sequenceLength: 128}",
            "spec: {segmentation: {sequenceLength: 64}}",
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.sequenceLength");
    }

    #[test]
    fn the_batch_must_split_evenly_over_replicas() {
        let err = check("spec: {resources: {replicas: 3}}", "{}").unwrap_err();
        assert_eq!(err.field, "spec.training.batchSize");
        assert_eq!(check("spec: {resources: {replicas: 4}}", "{}"), Ok(()));
    }

    #[test]
    fn zero_over_several_pods_needs_a_shared_checkpoint_directory() {
        let job = |replicas: i32, uri: &str| {
            format!(
                "spec: {{resources: {{replicas: {replicas}}}, training: {{maxSteps: 200, batchSize: 32, microBatchSize: 8, zero: {{stage: 2}}}}, output: {{uri: \"{uri}\"}}}}"
            )
        };
        let err = check(&job(2, "s3://models/run"), "{}").unwrap_err();
        assert_eq!(err.field, "spec.training.zero.stage");
        assert!(err.message.contains("s3://models/run"), "{}", err.message);
        assert_eq!(check(&job(2, "pvc://shared/run"), "{}"), Ok(()));
        assert_eq!(check(&job(1, "s3://models/run"), "{}"), Ok(()));
    }

    #[test]
    fn the_batch_must_split_evenly_over_every_gpu() {
        // 32 rows in micro-batches of 8 (the fixture): 2 pods × 2 GPUs split
        // evenly, one pod with 3 GPUs does not.
        let ok = "spec: {resources: {replicas: 2, gpusPerReplica: 2}}";
        assert_eq!(check(ok, "{}"), Ok(()));
        let err = check("spec: {resources: {gpusPerReplica: 3}}", "{}").unwrap_err();
        assert_eq!(err.field, "spec.training.batchSize");
        assert!(
            err.message.contains("1 replica(s) × 3 GPUs = 24"),
            "{}",
            err.message
        );
    }

    #[test]
    fn names_must_fit_pod_hostnames_and_services() {
        let name = |n: usize, replicas: i32| {
            format!(
                "metadata: {{name: {}}}\nspec: {{resources: {{replicas: {replicas}}}}}",
                "a".repeat(n)
            )
        };
        // `<name>-pretrain`, and `<name>-pretrain-<rank>` for Indexed pods.
        assert_eq!(check(&name(54, 1), "{}"), Ok(()));
        assert_eq!(
            check(&name(55, 1), "{}").unwrap_err().field,
            "metadata.name"
        );
        assert_eq!(check(&name(52, 2), "{}"), Ok(()));
        assert_eq!(
            check(&name(53, 2), "{}").unwrap_err().field,
            "metadata.name"
        );
        let err = check(
            "metadata: {name: 7b}\nspec: {resources: {replicas: 2}}",
            "{}",
        )
        .unwrap_err();
        assert_eq!(err.field, "metadata.name");
        assert_eq!(check("metadata: {name: 7b}", "{}"), Ok(()));
    }

    #[test]
    fn pvc_output_without_claim_is_rejected() {
        let err = check("spec: {output: {uri: \"pvc:///x\"}}", "{}").unwrap_err();
        assert_eq!(err.field, "spec.output.uri");
    }
}

mod build_tests {
    use super::*;
    use llmops_contract::path::RESOURCE_KEY;

    #[test]
    fn names_and_labels() {
        let c = children("{}");
        assert_eq!(c.job.name_any(), "base-pretrain");
        assert_eq!(c.config_map.name_any(), "base-pretrain");
        assert_eq!(c.rbac.service_account.name_any(), "base-trainer");
        assert!(c.service.is_none());
        for meta in [
            &c.job.metadata,
            &c.config_map.metadata,
            &c.rbac.role.metadata,
        ] {
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["llmops.dev/pretrainjob"], "base");
            assert_eq!(labels["app.kubernetes.io/component"], "pretrain");
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("PretrainJob", "7f3a-uid")
            );
        }
        let template = c
            .job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        assert_eq!(
            template.labels.as_ref().unwrap()["llmops.dev/pretrainjob"],
            "base"
        );
    }

    #[test]
    fn the_config_map_holds_the_resolved_resource_with_its_lineage() {
        let c = children("{}");
        let yaml = &c.config_map.data.as_ref().unwrap()[RESOURCE_KEY];
        let resource: PretrainJob = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(
            resource.spec.output.uri.as_deref(),
            Some("s3://llmops-artifacts/pretrainjobs/ml/base")
        );
        let dataset = resource.status.unwrap().operator.dataset.unwrap();
        assert_eq!(dataset.digest, "sha256:d1");
        assert!(!yaml.contains("progress"));
        assert!(!yaml.contains("conditions"));
    }

    #[test]
    fn the_trainer_role_covers_only_this_pretrain_job() {
        let role = children("{}").rbac.role;
        for rule in role.rules.unwrap() {
            assert_eq!(rule.api_groups.unwrap(), ["llmops.dev"]);
            assert_eq!(rule.resource_names.unwrap(), ["base"]);
            assert!(rule.verbs.iter().all(|v| v == "get" || v == "patch"));
            let resource = &rule.resources.unwrap()[0];
            assert!(resource == "pretrainjobs" || resource == "pretrainjobs/status");
        }
    }

    #[test]
    fn a_single_replica_runs_one_pod_with_the_failure_policy() {
        let job = children("spec: {failurePolicy: {maxRestarts: 5}}").job;
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.completions, Some(1));
        assert_eq!(spec.parallelism, Some(1));
        assert_eq!(spec.completion_mode, None);
        assert_eq!(spec.backoff_limit, Some(5));
        assert_eq!(spec.suspend, Some(false));
        let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
        assert_eq!(rules[0].action, "Ignore");
        let condition = &rules[0].on_pod_conditions.as_ref().unwrap()[0];
        assert_eq!(
            (condition.type_.as_str(), condition.status.as_str()),
            ("DisruptionTarget", "True")
        );
        let sigterm = rules[1].on_exit_codes.as_ref().unwrap();
        assert_eq!(
            (rules[1].action.as_str(), sigterm.values.as_slice()),
            ("Ignore", &[143][..])
        );
        let fatal = rules[2].on_exit_codes.as_ref().unwrap();
        assert_eq!(
            (rules[2].action.as_str(), fatal.operator.as_str()),
            ("FailJob", "In")
        );
        assert_eq!(fatal.values, [2]);
        assert_eq!(fatal.container_name.as_deref(), Some("trainer"));

        let pod = pod_spec(&job);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.subdomain, None);
        assert_eq!(pod.service_account_name.as_deref(), Some("base-trainer"));
        assert_eq!(
            trainer(&job).args.as_ref().unwrap(),
            &["pretrain", "--resource", "/etc/llmops/resource.yaml"]
        );
        assert!(env_var(&job, env::RANK).is_none() && env_var(&job, env::WORLD_SIZE).is_none());
        assert_eq!(
            env_value(&job, env::OUTPUT_URI),
            Some("s3://llmops-artifacts/pretrainjobs/ml/base")
        );
    }

    #[test]
    fn the_job_stops_after_a_week_unless_the_spec_says_otherwise() {
        let job = children("{}").job;
        assert_eq!(
            job.spec.as_ref().unwrap().active_deadline_seconds,
            Some(7 * 24 * 3600)
        );
        let job = children("spec: {failurePolicy: {activeDeadlineSeconds: 7200}}").job;
        assert_eq!(
            job.spec.as_ref().unwrap().active_deadline_seconds,
            Some(7200)
        );
    }

    #[test]
    fn every_scratch_volume_has_a_size_limit() {
        let size = |job: &Job, path: &str| {
            let mount = trainer(job)
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.mount_path == path)
                .unwrap();
            let dir = volume(job, &mount.name).empty_dir.clone().unwrap();
            dir.size_limit.map(|q| q.0)
        };
        let job = children("{}").job;
        assert_eq!(size(&job, "/tmp").as_deref(), Some("100Gi"));
        assert_eq!(size(&job, "/work").as_deref(), Some("2Gi"));
        // /dev/shm is memory: its limit is the pod's memory limit.
        assert_eq!(size(&job, "/dev/shm").as_deref(), Some("2Gi"));

        let job = children("spec: {resources: {memory: 64Gi, ephemeralStorage: 500Gi}}").job;
        assert_eq!(size(&job, "/tmp").as_deref(), Some("500Gi"));
        assert_eq!(size(&job, "/work").as_deref(), Some("2Gi"));
        assert_eq!(size(&job, "/dev/shm").as_deref(), Some("64Gi"));
    }

    #[test]
    fn several_replicas_are_an_indexed_job_behind_a_headless_service() {
        let c = children("spec: {resources: {replicas: 4}, failurePolicy: {maxRestarts: 2}}");
        let spec = c.job.spec.as_ref().unwrap();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!((spec.completions, spec.parallelism), (Some(4), Some(4)));
        // One failing rank takes the other three down: a group restart costs four.
        assert_eq!(spec.backoff_limit, Some(8));

        let service = c.service.as_ref().unwrap();
        assert_eq!(service.name_any(), "base-workers");
        let svc = service.spec.as_ref().unwrap();
        assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
        assert_eq!(svc.publish_not_ready_addresses, Some(true));
        assert_eq!(svc.ports.as_ref().unwrap()[0].port, 29500);
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        for (key, value) in svc.selector.as_ref().unwrap() {
            assert_eq!(&template_labels[key], value, "selector {key}");
        }

        let job = &c.job;
        assert_eq!(pod_spec(job).subdomain.as_deref(), Some("base-workers"));
        assert_eq!(env_value(job, env::WORLD_SIZE), Some("4"));
        // One GPU per pod: the pod's process is the rank; no launcher.
        assert_eq!(env_value(job, env::LOCAL_RANK), None);
        assert_eq!(env_value(job, env::PROCS_PER_POD), None);
        assert_eq!(
            env_value(job, env::MASTER_ADDR),
            Some("base-pretrain-0.base-workers")
        );
        assert_eq!(env_value(job, env::MASTER_PORT), Some("29500"));
        let rank = env_var(job, env::RANK)
            .unwrap()
            .value_from
            .as_ref()
            .unwrap();
        assert_eq!(
            rank.field_ref.as_ref().unwrap().field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
        assert_eq!(
            trainer(job).ports.as_ref().unwrap()[0].container_port,
            29500
        );
    }

    #[test]
    fn several_gpus_per_pod_run_one_trainer_process_per_gpu() {
        let c = children("spec: {resources: {replicas: 2, gpusPerReplica: 2}}");
        let job = &c.job;
        assert_eq!(env_value(job, env::PROCS_PER_POD), Some("2"));
        // The pod-level values; the trainer derives each process's rank from them.
        assert_eq!(env_value(job, env::WORLD_SIZE), Some("2"));
        assert_eq!(env_value(job, env::LOCAL_RANK), None);
        let limits = trainer(job)
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap();
        assert_eq!(limits["nvidia.com/gpu"].0, "2");
    }

    #[test]
    fn gpus_cpu_and_memory_are_requested_and_limited_alike() {
        let job = children("spec: {resources: {gpusPerReplica: 1, cpu: \"8\", memory: 64Gi}}").job;
        let resources = trainer(&job).resources.as_ref().unwrap();
        let (requests, limits) = (
            resources.requests.as_ref().unwrap(),
            resources.limits.as_ref().unwrap(),
        );
        for key in ["nvidia.com/gpu", "cpu", "memory"] {
            assert_eq!(requests[key], limits[key], "{key}");
        }
        assert_eq!(limits["nvidia.com/gpu"].0, "1");
        assert_eq!(limits["cpu"].0, "8");
        assert_eq!(limits["memory"].0, "64Gi");

        let named =
            children("spec: {resources: {gpusPerReplica: 1, gpuResourceName: amd.com/gpu}}").job;
        let limits = trainer(&named)
            .resources
            .as_ref()
            .unwrap()
            .limits
            .clone()
            .unwrap();
        assert_eq!(limits["amd.com/gpu"].0, "1");
        assert!(!limits.contains_key("nvidia.com/gpu"));

        let cpu_only = children("{}").job;
        let limits = trainer(&cpu_only)
            .resources
            .as_ref()
            .unwrap()
            .limits
            .clone()
            .unwrap();
        assert!(!limits.keys().any(|k| k.contains("gpu")));
    }

    #[test]
    fn scheduling_reaches_the_pod() {
        let job = children(
            r#"
spec:
  scheduling:
    nodeSelector: {pool: a100}
    tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
    priorityClassName: training
    affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]}}}
"#,
        )
        .job;
        let pod = pod_spec(&job);
        assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "a100");
        assert_eq!(
            pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("nvidia.com/gpu")
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("training"));
        assert!(pod.affinity.as_ref().unwrap().node_affinity.is_some());
        assert_eq!(pod.termination_grace_period_seconds, Some(120));
    }

    #[test]
    fn shm_is_memory_and_the_pod_meets_pod_security_restricted() {
        let job = children("{}").job;
        let pod = pod_spec(&job);
        let mount = trainer(&job)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == "/dev/shm")
            .unwrap();
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(
            volume.empty_dir.as_ref().unwrap().medium.as_deref(),
            Some("Memory")
        );

        let pod_sc = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let sc = trainer(&job).security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
    }

    #[test]
    fn credentials_come_only_from_optional_secret_key_refs() {
        let job = children("spec: {output: {uri: \"s3://models/base\", credentialsSecretRef: {name: model-creds}}}").job;
        let env = trainer(&job).env.as_ref().unwrap();
        for var in env
            .iter()
            .filter(|e| e.name.contains("AWS_") || e.name.contains("AZURE_"))
        {
            assert!(var.value.is_none(), "{} has a literal value", var.name);
            let selector = var
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            assert_eq!(selector.optional, Some(true));
        }
        // Output with its own Secret's prefixed variables; the dataset (in the
        // default store) with the store Secret as ambient credentials.
        let output = env_var(&job, "LLMOPS_CRED_MODEL_CREDS_AWS_ACCESS_KEY_ID").unwrap();
        assert_eq!(
            output
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "model-creds"
        );
        let ambient = env_var(&job, "AWS_ACCESS_KEY_ID").unwrap();
        assert_eq!(
            ambient
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "store-creds"
        );
    }

    #[test]
    fn the_operator_pull_settings_reach_the_trainer_pod() {
        let default = children("{}").job;
        let pod = default
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(pod.image_pull_secrets, None);
        assert_eq!(trainer(&default).image_pull_policy, None);

        let mut config = OperatorConfig::example();
        config.trainer_image_pull = crate::workload::image::ImagePull {
            policy: Some("Always".into()),
            secrets: vec!["regcred".into()],
        };
        let job = children_with("{}", &config).job;
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let secrets: Vec<_> = pod
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(secrets, ["regcred"]);
        assert_eq!(trainer(&job).image_pull_policy.as_deref(), Some("Always"));
        // The server's settings are not the trainer's.
        let mut config = OperatorConfig::example();
        config.server_image_pull.policy = Some("Never".into());
        assert_eq!(
            trainer(&children_with("{}", &config).job).image_pull_policy,
            None
        );
    }

    #[test]
    fn pvc_output_is_mounted_writable() {
        let job = children("spec: {output: {uri: \"pvc://models/base\"}}").job;
        let mount = trainer(&job)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == "/mnt/pvc/models")
            .unwrap();
        assert_eq!(mount.read_only, Some(false));
        assert_eq!(env_value(&job, env::PVC_ROOT), Some("/mnt/pvc"));
    }

    #[test]
    fn suspend_is_on_the_job_but_not_in_its_run_hash() {
        let hash =
            |job: &Job| job.annotations()[crate::controller::training::RUN_HASH_ANNOTATION].clone();
        let running = children("{}").job;
        let suspended = children("spec: {suspend: true}").job;
        assert_eq!(suspended.spec.as_ref().unwrap().suspend, Some(true));
        assert_eq!(hash(&running), hash(&suspended));
        // Same input, same hash; a changed run, another one.
        assert_eq!(hash(&running), hash(&children("{}").job));
        let longer = children("spec: {training: {maxSteps: 400}}").job;
        assert_ne!(hash(&running), hash(&longer));
        let wider = children("spec: {resources: {replicas: 2}}").job;
        assert_ne!(hash(&running), hash(&wider));
        // A new trainer image (an operator upgrade) does not interrupt a run.
        let mut config = OperatorConfig::example();
        config.trainer_image = "ghcr.io/llmops-dev/trainer:next".into();
        let upgraded = children_with("{}", &config).job;
        assert_eq!(hash(&running), hash(&upgraded));
    }
}

mod status_tests {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use llmops_crds::JobPhase;

    use super::*;
    use crate::controller::pretrain::status::{Observed, desired_status, observe};
    use crate::controller::training::status::{restarts, telling_pods};
    use crate::runtime::conditions::Outcome;
    use crate::runtime::status::ReportsStatus;
    use crate::test_support::{self, now, text};
    use crate::workload::observe::{JobState, job_state};
    use crate::workload::record::finished_for_generation;

    fn job(status: &str) -> Job {
        test_support::job("{name: base-pretrain, namespace: ml}", status)
    }

    fn pod(name: &str, index: &str, created: &str, state: &str) -> Pod {
        test_support::trainer_pod(
            &format!(
                r#"{{name: {name}, creationTimestamp: "{created}", annotations: {{batch.kubernetes.io/job-completion-index: "{index}"}}}}"#
            ),
            state,
        )
    }

    fn observed(job_status: &str, pods: Vec<Pod>, pt: &PretrainJob) -> Observed {
        let job = job(job_status);
        let state = job_state(&job, &telling_pods(&job, pods));
        observe(
            &state,
            &job,
            pt.spec.suspend,
            pt.spec.resources.replicas,
            pt.status.as_ref(),
        )
    }

    const COMPLETE: &str = r#"{startTime: "2026-01-01T00:00:00Z", completionTime: "2026-01-01T02:00:00Z", succeeded: 1, conditions: [{type: Complete, status: "True"}]}"#;
    const FAILED: &str = r#"{startTime: "2026-01-01T00:00:00Z", failed: 4, conditions: [{type: Failed, status: "True", reason: BackoffLimitExceeded, message: "Job has reached the specified backoff limit", lastTransitionTime: "2026-01-01T03:00:00Z"}]}"#;

    #[test]
    fn a_running_job_is_training() {
        let pt = fixture(
            "status: {startTime: \"2025-12-31T00:00:00Z\", progress: {step: 120, totalSteps: 200, trainLoss: 2.314}}",
        );
        let o = observed(
            "{active: 1, startTime: \"2026-01-01T00:00:00Z\"}",
            vec![],
            &pt,
        );
        assert_eq!(o.phase, JobPhase::Running);
        assert_eq!(
            text(&o.outcome),
            ("Training", "training (Job base-pretrain)")
        );
        assert!(matches!(o.outcome, Outcome::Progressing { .. }));
        // The first start is kept across suspensions and replacements.
        assert_eq!(
            o.start_time,
            Some(Time("2025-12-31T00:00:00Z".parse().unwrap()))
        );
        assert_eq!(o.completion_time, None);
    }

    #[test]
    fn restarts_count_failed_pods_per_replica_group() {
        let o = observed("{active: 1, failed: 1}", vec![], &fixture("{}"));
        assert_eq!(o.restarts, 1);
        assert!(
            text(&o.outcome).1.ends_with("(1 restart)"),
            "{:?}",
            o.outcome
        );
        let group = fixture("spec: {resources: {replicas: 4}}");
        assert_eq!(restarts(&job("{failed: 4}"), 4), 1);
        assert_eq!(restarts(&job("{failed: 5}"), 4), 2);
        assert_eq!(
            observed("{active: 4, failed: 3}", vec![], &group).restarts,
            1
        );
    }

    #[test]
    fn success_reads_rank_zeros_result() {
        let result = r#"{"artifact":{"uri":"s3://m/base","digest":"sha256:m1"},"progress":{"step":200,"totalSteps":200,"trainLoss":1.234}}"#;
        let rank0 = pod(
            "base-pretrain-0-x",
            "0",
            "2026-01-01T00:00:00Z",
            &format!("{{terminated: {{exitCode: 0, message: '{result}'}}}}"),
        );
        // Rank 1 finished later and wrote nothing: it must not hide rank 0's result.
        let rank1 = pod(
            "base-pretrain-1-y",
            "1",
            "2026-01-01T00:05:00Z",
            "{terminated: {exitCode: 0}}",
        );
        let o = observed(
            COMPLETE,
            vec![rank1, rank0],
            &fixture("spec: {resources: {replicas: 2}}"),
        );
        assert_eq!(o.phase, JobPhase::Succeeded);
        assert_eq!(text(&o.outcome), ("Trained", "step 200/200, loss 1.23"));
        assert!(matches!(o.outcome, Outcome::Ready { .. }));
        assert_eq!(o.artifact.unwrap().digest, "sha256:m1");
        assert_eq!(
            o.completion_time,
            Some(Time("2026-01-01T02:00:00Z".parse().unwrap()))
        );
    }

    #[test]
    fn success_without_a_result_is_stalled() {
        let o = observed(COMPLETE, vec![], &fixture("{}"));
        assert_eq!(o.phase, JobPhase::Failed);
        assert_eq!(text(&o.outcome).0, "InvalidTrainerResult");
    }

    #[test]
    fn failure_stalls_with_the_failing_ranks_error_not_a_stopped_one() {
        let failing = pod(
            "base-pretrain-1-a",
            "1",
            "2026-01-01T00:00:00Z",
            "{terminated: {exitCode: 1, message: 'error: training diverged at step 80: the loss is NaN; lower learningRate or raise warmupSteps'}}",
        );
        // Stopped by the Job after the failure, newer, with its interruption note.
        let stopped = pod(
            "base-pretrain-0-b",
            "0",
            "2026-01-01T00:10:00Z",
            r#"{terminated: {exitCode: 143, message: '{"interrupted":{"step":80},"message":"interrupted at step 80"}'}}"#,
        );
        let o = observed(
            FAILED,
            vec![failing, stopped],
            &fixture("spec: {resources: {replicas: 2}}"),
        );
        assert_eq!(o.phase, JobPhase::Failed);
        assert!(matches!(o.outcome, Outcome::Stalled { .. }));
        assert_eq!(
            text(&o.outcome),
            (
                "TrainingFailed",
                "training diverged at step 80: the loss is NaN; lower learningRate or raise warmupSteps"
            )
        );
        assert_eq!(o.restarts, 2);
        assert_eq!(
            o.completion_time,
            Some(Time("2026-01-01T03:00:00Z".parse().unwrap()))
        );
    }

    #[test]
    fn suspend_reports_suspending_then_suspended() {
        let pt = fixture("spec: {suspend: true}\nstatus: {progress: {step: 40, totalSteps: 200}}");
        let stopping = observed("{active: 1}", vec![], &pt);
        assert_eq!(stopping.phase, JobPhase::Suspended);
        assert_eq!(text(&stopping.outcome).0, "Suspended");
        assert!(
            text(&stopping.outcome)
                .1
                .starts_with("suspending at step 40")
        );
        let stopped = observed(
            r#"{active: 0, conditions: [{type: Suspended, status: "True"}]}"#,
            vec![],
            &pt,
        );
        assert_eq!(stopped.phase, JobPhase::Suspended);
        assert!(
            matches!(&stopping.outcome, Outcome::Progressing { reason, .. } if reason == "Suspended")
        );
        // No pod left: held, with no condition, so kstatus sees it settled.
        assert_eq!(stopped.outcome, Outcome::Held);
        // Resumed: the same Job runs again.
        let resumed = observed("{active: 1}", vec![], &fixture("{}"));
        assert_eq!(resumed.phase, JobPhase::Running);
    }

    #[test]
    fn a_held_run_is_not_seen_for_the_first_time_again() {
        use crate::runtime::status::first_sight;
        let held = fixture("status: {observedGeneration: 1, conditions: []}");
        assert!(!first_sight(&held));
        assert!(first_sight(&fixture("status: null")));
    }

    #[test]
    fn a_blocked_pod_stalls_and_a_pending_one_is_starting() {
        let blocked = pod(
            "p",
            "0",
            "2026-01-01T00:00:00Z",
            "{waiting: {reason: CreateContainerConfigError, message: 'secret \"model-creds\" not found'}}",
        );
        let o = observed("{active: 1}", vec![blocked], &fixture("{}"));
        assert!(matches!(o.outcome, Outcome::Stalled { .. }));
        assert_eq!(text(&o.outcome).0, "PodBlocked");
        let pulling = pod(
            "p",
            "0",
            "2026-01-01T00:00:00Z",
            "{waiting: {reason: ContainerCreating}}",
        );
        let o = observed("{active: 1}", vec![pulling], &fixture("{}"));
        assert_eq!(
            (o.phase, text(&o.outcome).0),
            (JobPhase::Pending, "Starting")
        );
    }

    #[test]
    fn lineage_is_recorded_and_a_second_pass_writes_nothing() {
        let mut pt = fixture("{}");
        let mut o = observed("{active: 1}", vec![], &pt);
        o.dataset = Some(llmops_crds::Artifact {
            uri: "s3://d".into(),
            digest: "sha256:d1".into(),
        });
        let first = desired_status(&pt, o.clone(), &now());
        assert_eq!(first.fields.dataset.as_ref().unwrap().digest, "sha256:d1");
        assert!(PretrainJob::needs_write(pt.status.as_ref(), &first));
        PretrainJob::record(pt.status.get_or_insert_default(), first);

        let later = Time("2026-02-01T01:00:00Z".parse().unwrap());
        let second = desired_status(&pt, o, &later);
        assert!(!PretrainJob::needs_write(pt.status.as_ref(), &second));
        // A pass that does not reach the Job keeps the recorded lineage.
        let waiting = Observed::without_job(
            Outcome::progressing("Replacing", "x"),
            JobPhase::Pending,
            pt.status.as_ref(),
        );
        assert_eq!(
            desired_status(&pt, waiting, &later)
                .fields
                .dataset
                .unwrap()
                .digest,
            "sha256:d1"
        );
    }

    #[test]
    fn the_apply_body_never_touches_trainer_progress() {
        let pt = fixture("status: {progress: {step: 3, totalSteps: 10}}");
        let o = observed("{active: 1}", vec![], &pt);
        let body =
            crate::runtime::apply::status_body::<PretrainJob>(&desired_status(&pt, o, &now()));
        assert!(body["status"].get("progress").is_none());
        assert_eq!(body["status"]["phase"], "Running");
        assert_eq!(body["status"]["conditions"][0]["observedGeneration"], 1);
    }

    #[test]
    fn orphans_are_looked_for_until_a_pass_recorded_the_job() {
        use crate::workload::record::cleaned_up_for;
        assert!(!cleaned_up_for(&fixture("{}"), "base-pretrain"));
        let recorded = "status: {observedGeneration: 1, job: {name: base-pretrain}}";
        assert!(cleaned_up_for(&fixture(recorded), "base-pretrain"));
        let changed = format!("metadata: {{generation: 2}}\n{recorded}");
        assert!(!cleaned_up_for(&fixture(&changed), "base-pretrain"));
    }

    #[test]
    fn finished_generations_are_final() {
        let done =
            fixture("status: {observedGeneration: 1, completionTime: \"2026-01-01T02:00:00Z\"}");
        assert!(finished_for_generation(&done));
        let changed = fixture(
            "metadata: {generation: 2}\nstatus: {observedGeneration: 1, completionTime: \"2026-01-01T02:00:00Z\"}",
        );
        assert!(!finished_for_generation(&changed));
        assert!(!finished_for_generation(&fixture("{}")));
    }

    #[test]
    fn telling_pods_are_everyone_while_running() {
        let pods = vec![
            pod("a", "0", "2026-01-01T00:00:00Z", "{running: {}}"),
            pod("b", "1", "2026-01-01T00:00:00Z", "{running: {}}"),
        ];
        assert_eq!(telling_pods(&job("{active: 2}"), pods).len(), 2);
        let _ = JobState::Running { waiting: None };
    }
}

mod watch_tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::reflector::ObjectRef;

    use super::*;
    use crate::controller::pretrain::waiting_on;
    use crate::runtime::controller::parent_of;

    #[test]
    fn a_dataset_change_wakes_only_the_jobs_still_waiting_for_it() {
        let jobs: Vec<Arc<PretrainJob>> = [
            "{}",
            "metadata: {name: other-ns, namespace: team}",
            "metadata: {name: other-ds}\nspec: {datasetRef: {name: books}}",
            "metadata: {name: started}\nstatus: {dataset: {uri: \"s3://d\", digest: \"sha256:1\"}}",
        ]
        .into_iter()
        .map(|overlay| Arc::new(fixture(overlay)))
        .collect();
        assert_eq!(
            waiting_on(&jobs, &dataset("{}")),
            vec![ObjectRef::<PretrainJob>::new("base").within("ml")]
        );
    }

    #[test]
    fn labelled_pods_map_back_to_their_pretrain_job() {
        let pod: Pod = serde_yaml_ng::from_str(
            "metadata: {name: base-pretrain-0-abc, namespace: ml, labels: {llmops.dev/pretrainjob: base}}",
        )
        .unwrap();
        assert_eq!(
            parent_of(pod),
            Some(ObjectRef::<PretrainJob>::new("base").within("ml"))
        );
    }
}

mod job_action_tests {
    use super::*;
    use crate::controller::training::run::{JobAction, job_action};

    fn live(desired: &Job, status: &str) -> Job {
        let mut job = desired.clone();
        job.status = Some(serde_yaml_ng::from_str(status).unwrap());
        job
    }

    #[test]
    fn a_missing_job_is_created() {
        assert_eq!(job_action(None, &children("{}").job), JobAction::Create);
    }

    #[test]
    fn suspend_and_resume_patch_the_live_job() {
        let running = children("{}").job;
        let suspended = children("spec: {suspend: true}").job;
        assert_eq!(
            job_action(Some(&live(&running, "{active: 1}")), &suspended),
            JobAction::SetSuspend(true)
        );
        assert_eq!(
            job_action(Some(&live(&suspended, "{}")), &running),
            JobAction::SetSuspend(false)
        );
        assert_eq!(
            job_action(Some(&live(&running, "{active: 1}")), &running),
            JobAction::Keep
        );
    }

    #[test]
    fn a_finished_job_is_not_suspended() {
        let running = children("{}").job;
        let suspended = children("spec: {suspend: true}").job;
        let complete = live(
            &running,
            "{conditions: [{type: Complete, status: \"True\"}]}",
        );
        assert_eq!(job_action(Some(&complete), &suspended), JobAction::Keep);
    }

    #[test]
    fn a_changed_spec_replaces_the_job_once() {
        let old = children("{}").job;
        let new = children("spec: {training: {maxSteps: 400}}").job;
        assert_eq!(
            job_action(Some(&live(&old, "{active: 1}")), &new),
            JobAction::Replace
        );
        let mut deleting = live(&old, "{active: 1}");
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        assert_eq!(
            job_action(Some(&deleting), &new),
            JobAction::WaitForDeletion
        );
    }
}
