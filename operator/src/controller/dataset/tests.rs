//! Shared fixtures, and tests of the Dataset pipeline as a whole (build, status).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use llmops_contract::env;
use llmops_crds::Dataset;

use super::build::{self, Children};
use super::resolve::resolve_with;
use super::status;
use super::validate::validate;
use crate::config::OperatorConfig;
use crate::runtime::conditions::Outcome;
use crate::test_support::{self, volume, with_overlay};
use crate::workload::observe::{JobState, job_state, trainer_error};

const BASE: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: Dataset
metadata: {name: chats, namespace: ml, uid: 0c7e-uid, generation: 1}
spec:
  sources: [{inline: {content: "hello world"}}]
  tokenizer: {train: {vocabSize: 512}}
"#;

/// The base Dataset with `overlay` merged in (objects merge, `null` removes a field).
pub fn fixture(overlay: &str) -> Dataset {
    with_overlay(BASE, overlay)
}

fn children(overlay: &str) -> Children {
    let resolved = resolve_with(&fixture(overlay), &OperatorConfig::example(), None);
    build::build(&validate(&resolved).unwrap(), &OperatorConfig::example()).unwrap()
}

mod build_tests {
    use super::*;

    #[test]
    fn names_follow_the_generation() {
        let children = children("metadata: {generation: 7}");
        assert_eq!(children.job.name_any(), "chats-prepare-g7");
        assert_eq!(children.config_map.name_any(), "chats-prepare");
        assert_eq!(children.rbac.service_account.name_any(), "chats-trainer");
        assert_eq!(children.rbac.role.name_any(), "chats-trainer");
        assert_eq!(children.rbac.role_binding.name_any(), "chats-trainer");
    }

    #[test]
    fn every_child_is_labelled_and_owned() {
        let c = children("{}");
        let metas = [
            &c.job.metadata,
            &c.config_map.metadata,
            &c.rbac.service_account.metadata,
            &c.rbac.role.metadata,
            &c.rbac.role_binding.metadata,
        ];
        for meta in metas {
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/name"], "llmops");
            assert_eq!(labels["app.kubernetes.io/instance"], "chats");
            assert_eq!(labels["app.kubernetes.io/component"], "prepare");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "llmops-operator");
            assert_eq!(labels["app.kubernetes.io/part-of"], "llmops");
            assert_eq!(labels["llmops.dev/dataset"], "chats");
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("Dataset", "0c7e-uid")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("ml"));
        }
        // Pods carry the labels too, so pod events map back to the Dataset.
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
            template.labels.as_ref().unwrap()["llmops.dev/dataset"],
            "chats"
        );
    }

    #[test]
    fn the_config_map_holds_the_resolved_resource() {
        let c = children("metadata: {generation: 2}");
        let yaml = &c.config_map.data.as_ref().unwrap()["resource.yaml"];
        let resource: Dataset = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(resource.name_any(), "chats");
        assert_eq!(resource.metadata.generation, Some(2));
        assert_eq!(
            resource.spec.output.uri.as_deref(),
            Some("s3://llmops-artifacts/datasets/ml/chats")
        );
        assert_eq!(
            resource.spec.output.credentials_secret_ref.unwrap().name,
            "store-creds"
        );
        assert!(!yaml.contains("status"), "{yaml}");
        assert!(!yaml.contains("managedFields"));
    }

    #[test]
    fn link_local_sources_are_allowed_only_when_the_operator_says_so() {
        let allowed = |config: &OperatorConfig| {
            let resolved = resolve_with(&fixture("{}"), config, None);
            let c = build::build(&validate(&resolved).unwrap(), config).unwrap();
            crate::test_support::env_value(&c.job, llmops_contract::env::ALLOW_LINK_LOCAL_SOURCES)
                .map(str::to_string)
        };
        assert_eq!(allowed(&OperatorConfig::example()), None);
        let opted_in = OperatorConfig {
            allow_link_local_sources: true,
            ..OperatorConfig::example()
        };
        assert_eq!(allowed(&opted_in).as_deref(), Some("true"));
    }

    #[test]
    fn the_job_runs_trainer_prepare_once_with_the_trainer_identity() {
        let job = children("{}").job;
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.ttl_seconds_after_finished, None);
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name.as_deref(), Some("chats-trainer"));
        assert_eq!(pod.automount_service_account_token, Some(true));
        let container = &pod.containers[0];
        assert_eq!(container.name, "trainer");
        assert_eq!(
            container.image.as_deref(),
            Some("ghcr.io/llmops-dev/trainer:test")
        );
        assert_eq!(
            container.command.as_deref(),
            Some(&["trainer".to_string()][..])
        );
        assert_eq!(
            container.args.as_ref().unwrap(),
            &["prepare", "--resource", "/etc/llmops/resource.yaml"]
        );
        assert_eq!(
            container.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let resources = container.resources.as_ref().unwrap();
        assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "1");
        assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "2Gi");
    }

    /// The `podFailurePolicy` of prepare and clean Jobs, as (action, what it
    /// matches) pairs.
    fn policy(job: &Job) -> Vec<(String, String)> {
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(
            spec.template
                .spec
                .as_ref()
                .unwrap()
                .restart_policy
                .as_deref(),
            Some("Never")
        );
        let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
        rules
            .iter()
            .map(|r| {
                let matches = match (&r.on_pod_conditions, &r.on_exit_codes) {
                    (Some(conditions), None) => {
                        format!("{}={}", conditions[0].type_, conditions[0].status)
                    }
                    (None, Some(codes)) => format!(
                        "{} exit {} {:?}",
                        codes.container_name.as_deref().unwrap_or_default(),
                        codes.operator,
                        codes.values
                    ),
                    other => panic!("unexpected rule {other:?}"),
                };
                (r.action.clone(), matches)
            })
            .collect()
    }

    fn empty_dir_size(job: &Job, path: &str) -> Option<String> {
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap();
        let dir = volume(job, &mount.name).empty_dir.clone().unwrap();
        dir.size_limit.map(|q| q.0)
    }

    #[test]
    fn a_drained_node_does_not_fail_preparation_and_an_invalid_spec_fails_it_at_once() {
        let job = children("{}").job;
        assert_eq!(
            policy(&job),
            [
                ("Ignore".to_string(), "DisruptionTarget=True".to_string()),
                ("FailJob".to_string(), "trainer exit In [2]".to_string()),
            ]
        );
        // Other failures (a store that did not answer) get a few more tries.
        assert_eq!(job.spec.as_ref().unwrap().backoff_limit, Some(3));
    }

    #[test]
    fn preparation_stops_after_a_day_unless_the_spec_says_otherwise() {
        let job = children("{}").job;
        assert_eq!(
            job.spec.as_ref().unwrap().active_deadline_seconds,
            Some(24 * 3600)
        );
        let job = children("spec: {activeDeadlineSeconds: 900}").job;
        assert_eq!(
            job.spec.as_ref().unwrap().active_deadline_seconds,
            Some(900)
        );
    }

    #[test]
    fn scratch_space_is_bounded_by_the_spec_or_a_default() {
        let job = children("{}").job;
        assert_eq!(empty_dir_size(&job, "/tmp").as_deref(), Some("100Gi"));
        assert_eq!(empty_dir_size(&job, "/work").as_deref(), Some("2Gi"));
        let job = children("spec: {ephemeralStorage: 750Gi}").job;
        assert_eq!(empty_dir_size(&job, "/tmp").as_deref(), Some("750Gi"));
        assert_eq!(empty_dir_size(&job, "/work").as_deref(), Some("2Gi"));
    }

    #[test]
    fn the_pod_meets_pod_security_restricted() {
        let job = children("{}").job;
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let pod_sc = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(pod_sc.run_as_user, Some(65532));
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        for dir in ["/tmp", "/work"] {
            let mount = mounts.iter().find(|m| m.mount_path == dir).unwrap();
            assert!(volume(&job, &mount.name).empty_dir.is_some());
        }
        let resource = mounts
            .iter()
            .find(|m| m.mount_path == "/etc/llmops/resource.yaml")
            .unwrap();
        assert_eq!(resource.sub_path.as_deref(), Some("resource.yaml"));
        assert_eq!(
            volume(&job, &resource.name)
                .config_map
                .as_ref()
                .unwrap()
                .name,
            "chats-prepare"
        );
    }

    #[test]
    fn credentials_come_only_from_optional_secret_key_refs() {
        let job = children(
            r#"
spec:
  sources:
    - objectStore: {uri: "s3://corp/a/", credentialsSecretRef: {name: s3-creds}}
    - objectStore: {uri: "s3://corp/b/", credentialsSecretRef: {name: s3-creds}}
    - objectStore: {uri: "gs://other/c", credentialsSecretRef: {name: gcs.key}}
"#,
        )
        .job;
        let env = job.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        let value = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            value(env::OUTPUT_URI).as_deref(),
            Some("s3://llmops-artifacts/datasets/ml/chats")
        );
        assert_eq!(value(env::PVC_ROOT).as_deref(), Some("/mnt/pvc"));
        assert_eq!(
            value(env::SOURCES_DIR).as_deref(),
            Some("/etc/llmops/sources")
        );
        let credentials: Vec<_> = env
            .iter()
            .filter(|e| e.name.starts_with("LLMOPS_CRED_"))
            .collect();
        // Three distinct Secrets (s3-creds once), every credential key of each.
        assert_eq!(
            credentials.len(),
            3 * llmops_contract::credentials::CREDENTIAL_KEYS.len()
        );
        for var in &credentials {
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
        let names: Vec<&str> = credentials.iter().map(|e| e.name.as_str()).collect();
        assert!(names.contains(&"LLMOPS_CRED_S3_CREDS_AWS_SECRET_ACCESS_KEY"));
        assert!(names.contains(&"LLMOPS_CRED_GCS_KEY_GOOGLE_SERVICE_ACCOUNT_KEY"));
        assert!(names.contains(&"LLMOPS_CRED_STORE_CREDS_AWS_ENDPOINT"));
    }

    #[test]
    fn config_map_and_pvc_sources_are_mounted() {
        let job = children(
            r#"
spec:
  sources:
    - inline: {content: x}
    - configMap: {name: corpus, key: docs.txt}
    - pvc: {claimName: raw, path: /2026}
  output: {uri: "pvc://results/datasets/chats"}
"#,
        )
        .job;
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        let source = mounts
            .iter()
            .find(|m| m.mount_path == "/etc/llmops/sources/1")
            .unwrap();
        assert_eq!(source.read_only, Some(true));
        let cm = volume(&job, &source.name).config_map.as_ref().unwrap();
        assert_eq!(cm.name, "corpus");
        assert_eq!(cm.items.as_ref().unwrap()[0].path, "docs.txt");
        let raw = mounts
            .iter()
            .find(|m| m.mount_path == "/mnt/pvc/raw")
            .unwrap();
        assert_eq!(raw.read_only, Some(true));
        let results = mounts
            .iter()
            .find(|m| m.mount_path == "/mnt/pvc/results")
            .unwrap();
        assert_eq!(results.read_only, Some(false));
        let claim = volume(&job, &results.name)
            .persistent_volume_claim
            .as_ref()
            .unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("results", Some(false))
        );
    }

    #[test]
    fn the_trainer_role_covers_only_this_dataset() {
        let rbac = children("{}").rbac;
        let rules = rbac.role.rules.unwrap();
        let status = rules
            .iter()
            .find(|r| r.resources.as_deref() == Some(&["datasets/status".to_string()][..]))
            .unwrap();
        assert_eq!(status.verbs, ["get", "patch"]);
        assert_eq!(
            status.resource_names.as_deref(),
            Some(&["chats".to_string()][..])
        );
        assert_eq!(
            status.api_groups.as_deref(),
            Some(&["llmops.dev".to_string()][..])
        );
        let object = rules
            .iter()
            .find(|r| r.resources.as_deref() == Some(&["datasets".to_string()][..]))
            .unwrap();
        assert_eq!(object.verbs, ["get"]);
        assert_eq!(
            object.resource_names.as_deref(),
            Some(&["chats".to_string()][..])
        );
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rbac.service_account.automount_service_account_token,
            Some(true)
        );
        let subject = &rbac.role_binding.subjects.unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("ServiceAccount", "chats-trainer")
        );
        assert_eq!(subject.namespace.as_deref(), Some("ml"));
        assert_eq!(rbac.role_binding.role_ref.name, "chats-trainer");
    }

    #[test]
    fn the_clean_job_outlives_the_dataset_and_has_no_token() {
        let ds = fixture(
            "spec:\n  output: {uri: \"s3://b/x\", credentialsSecretRef: {name: out}, deletionPolicy: Delete}",
        );
        let resolved = resolve_with(&ds, &OperatorConfig::example(), None);
        let job = crate::workload::cleanup::build_clean_job(
            &ds,
            &resolved.output_uri,
            Some("out"),
            &OperatorConfig::example(),
        );
        assert_eq!(job.name_any(), "chats-clean");
        assert!(job.metadata.owner_references.is_none());
        assert_eq!(job.labels()["app.kubernetes.io/component"], "clean");
        let spec = job.spec.as_ref().unwrap();
        assert!(spec.ttl_seconds_after_finished.is_some());
        // Retried like preparation, and bounded: nothing owns it to stop it.
        assert_eq!(spec.backoff_limit, Some(3));
        assert_eq!(spec.active_deadline_seconds, Some(3600));
        assert_eq!(policy(&job), policy(&children("{}").job));
        assert_eq!(empty_dir_size(&job, "/tmp").as_deref(), Some("1Gi"));
        assert_eq!(empty_dir_size(&job, "/work").as_deref(), Some("2Gi"));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert!(pod.service_account_name.is_none());
        let container = &pod.containers[0];
        assert_eq!(
            container.args.as_ref().unwrap(),
            &[
                "clean",
                "--uri",
                "s3://b/x",
                "--owner",
                "Dataset/ml/chats",
                "--uid",
                "0c7e-uid",
                "--credentials-secret",
                "out"
            ]
        );
        assert_eq!(
            container
                .security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        let env = container.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "LLMOPS_CRED_OUT_AWS_ACCESS_KEY_ID")
        );
    }
}

mod status_tests {
    use super::*;
    use crate::runtime::status::ReportsStatus;
    use crate::test_support::{condition, now};
    use crate::workload::record::{cleaned_up_for, finished_for_generation};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use llmops_crds::condition::{READY, RECONCILING, STALLED};

    fn job(status: &str) -> Job {
        test_support::job(
            r#"{name: chats-prepare-g1, namespace: ml, creationTimestamp: "2026-01-01T00:00:00Z"}"#,
            status,
        )
    }

    fn pod(container_state: &str) -> Pod {
        test_support::trainer_pod(
            r#"{name: chats-prepare-g1-x, namespace: ml, creationTimestamp: "2026-01-01T00:00:01Z"}"#,
            container_state,
        )
    }

    const RUNNING: &str = r#"{startTime: "2026-01-01T00:00:02Z", active: 1}"#;
    const SUCCEEDED: &str = r#"{startTime: "2026-01-01T00:00:02Z", completionTime: "2026-01-01T00:10:00Z", conditions: [{type: Complete, status: "True"}]}"#;
    const FAILED: &str = r#"{startTime: "2026-01-01T00:00:02Z", conditions: [{type: Failed, status: "True", reason: BackoffLimitExceeded, message: "Job has reached the specified backoff limit", lastTransitionTime: "2026-01-01T00:05:00Z"}]}"#;
    const RESULT: &str = r#"{"artifact":{"uri":"s3://llmops-artifacts/datasets/ml/chats","digest":"sha256:abc"},"stats":{"documentsIn":42538,"documentsOut":41220,"exactDuplicates":1000,"nearDuplicates":318,"trainTokens":11800000,"validationTokens":600000}}"#;

    #[test]
    fn a_running_job_is_preparing_and_reconciling() {
        let job = job(RUNNING);
        let state = job_state(&job, &[pod("{running: {}}")]);
        assert_eq!(state, JobState::Running { waiting: None });
        let (outcome, fields) = status::observe(&state, &job, None);
        let desired = status::desired_status(&fixture("{}"), &outcome, fields, &now());
        assert_eq!(
            condition(&desired.conditions, READY).unwrap().status,
            "False"
        );
        assert_eq!(
            condition(&desired.conditions, READY).unwrap().reason,
            "Preparing"
        );
        assert_eq!(
            condition(&desired.conditions, RECONCILING).unwrap().status,
            "True"
        );
        assert_eq!(
            desired.fields.job.as_ref().unwrap().name,
            "chats-prepare-g1"
        );
        assert_eq!(
            desired.fields.start_time.as_ref().unwrap().0.to_string(),
            "2026-01-01T00:00:02Z"
        );
        assert!(desired.fields.completion_time.is_none());
        assert_eq!(desired.observed_generation, Some(1));
    }

    #[test]
    fn success_reads_the_artifact_and_summarises_the_stats() {
        let job = job(SUCCEEDED);
        let state = job_state(
            &job,
            &[pod(&format!(
                "{{terminated: {{exitCode: 0, message: '{RESULT}'}}}}"
            ))],
        );
        let (outcome, fields) = status::observe(&state, &job, None);
        assert_eq!(
            outcome,
            Outcome::ready("Prepared", "41,220 docs (3.1% dup), 12.4M tok")
        );
        let desired = status::desired_status(&fixture("{}"), &outcome, fields, &now());
        assert_eq!(
            desired.fields.artifact.as_ref().unwrap().digest,
            "sha256:abc"
        );
        assert_eq!(finished_at(&desired), "2026-01-01T00:10:00Z");
        assert!(condition(&desired.conditions, RECONCILING).is_none());
        assert!(condition(&desired.conditions, STALLED).is_none());
    }

    /// The completion time `desired` records.
    fn finished_at(desired: &status::OperatorStatus) -> String {
        let time = desired.fields.completion_time.as_ref();
        time.expect("a completion time").0.to_string()
    }

    #[test]
    fn failure_stalls_with_the_trainers_one_line_error() {
        let job = job(FAILED);
        let message = "error: source 0 (https://x/y.jsonl): line 3: expected value";
        let state = job_state(
            &job,
            &[pod(&format!(
                "{{terminated: {{exitCode: 1, message: \"{message}\"}}}}"
            ))],
        );
        let (outcome, fields) = status::observe(&state, &job, None);
        assert_eq!(
            outcome,
            Outcome::stalled(
                "PrepareFailed",
                "source 0 (https://x/y.jsonl): line 3: expected value"
            )
        );
        let desired = status::desired_status(&fixture("{}"), &outcome, fields, &now());
        assert_eq!(
            condition(&desired.conditions, STALLED).unwrap().status,
            "True"
        );
        assert_eq!(
            condition(&desired.conditions, READY).unwrap().status,
            "False"
        );
        assert_eq!(finished_at(&desired), "2026-01-01T00:05:00Z");
    }

    #[test]
    fn failure_without_a_pod_uses_the_job_condition() {
        let state = job_state(&job(FAILED), &[]);
        assert_eq!(
            state,
            JobState::Failed {
                error: "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            }
        );
    }

    #[test]
    fn a_missing_secret_blocks_the_pod_and_stalls() {
        let job = job(RUNNING);
        let state = job_state(
            &job,
            &[pod(
                r#"{waiting: {reason: CreateContainerConfigError, message: "secret \"x\" not found"}}"#,
            )],
        );
        let (outcome, _) = status::observe(&state, &job, None);
        assert_eq!(
            outcome,
            Outcome::stalled(
                "PodBlocked",
                "CreateContainerConfigError: secret \"x\" not found"
            )
        );
        // Pulling an image is just slow, not stuck.
        let state = job_state(&job, &[pod(r#"{waiting: {reason: ContainerCreating}}"#)]);
        let (outcome, _) = status::observe(&state, &job, None);
        assert!(matches!(outcome, Outcome::Progressing { .. }));
    }

    #[test]
    fn an_unschedulable_pod_says_why() {
        let job = job(RUNNING);
        let pending: Pod = serde_yaml_ng::from_str(
            r#"
metadata: {name: p, creationTimestamp: "2026-01-01T00:00:01Z"}
status:
  phase: Pending
  conditions: [{type: PodScheduled, status: "False", reason: Unschedulable, message: "persistentvolumeclaim \"raw\" not found"}]
"#,
        )
        .unwrap();
        let (outcome, _) = status::observe(&job_state(&job, &[pending]), &job, None);
        assert_eq!(
            outcome,
            Outcome::progressing(
                "Preparing",
                "pod waiting: Unschedulable: persistentvolumeclaim \"raw\" not found"
            )
        );
    }

    #[test]
    fn success_without_a_result_is_stalled_not_ready() {
        let job = job(SUCCEEDED);
        let state = job_state(&job, &[pod("{terminated: {exitCode: 0}}")]);
        let (outcome, fields) = status::observe(&state, &job, None);
        assert!(
            matches!(outcome, Outcome::Stalled { ref reason, .. } if reason == "InvalidTrainerResult")
        );
        assert!(fields.artifact.is_none());
    }

    #[test]
    fn trainer_errors_are_one_line() {
        assert_eq!(trainer_error("error: boom\n"), "boom");
        assert_eq!(
            trainer_error("log line\npanicked at x\n\n"),
            "panicked at x"
        );
        assert_eq!(
            trainer_error(r#"{"level":"ERROR","error":"disk full"}"#),
            "disk full"
        );
    }

    #[test]
    fn a_second_pass_with_nothing_changed_writes_nothing() {
        let job = job(SUCCEEDED);
        let state = job_state(
            &job,
            &[pod(&format!(
                "{{terminated: {{exitCode: 0, message: '{RESULT}'}}}}"
            ))],
        );
        let mut ds = fixture("{}");
        let (outcome, fields) = status::observe(&state, &job, None);
        let first = status::desired_status(&ds, &outcome, fields, &now());
        assert!(Dataset::needs_write(ds.status.as_ref(), &first));

        // What the API server holds after the write, plus the trainer's stats.
        let mut written: llmops_crds::DatasetStatus = serde_json::from_value(
            crate::runtime::apply::status_body::<Dataset>(&first)["status"].clone(),
        )
        .unwrap();
        written.stats = Some(Default::default());
        ds.status = Some(written);

        let later = Time(Timestamp::from_second(1_800_000_600).unwrap());
        let (outcome, fields) = status::observe(&state, &job, None);
        let second = status::desired_status(&ds, &outcome, fields, &later);
        assert_eq!(first, second);
        assert!(!Dataset::needs_write(ds.status.as_ref(), &second));

        // A new generation must be written.
        ds.metadata.generation = Some(2);
        let (outcome, fields) = status::observe(&state, &job, None);
        let third = status::desired_status(&ds, &outcome, fields, &later);
        assert!(Dataset::needs_write(ds.status.as_ref(), &third));
    }

    #[test]
    fn the_apply_body_never_touches_trainer_fields() {
        let desired = status::desired_status(
            &fixture("{}"),
            &Outcome::FirstSight,
            Default::default(),
            &now(),
        );
        let body = crate::runtime::apply::status_body::<Dataset>(&desired);
        assert_eq!(body["apiVersion"], "llmops.dev/v1alpha1");
        assert_eq!(body["kind"], "Dataset");
        let status = body["status"].as_object().unwrap();
        assert!(!status.contains_key("stats"));
        assert!(!status.contains_key("progress"));
        assert!(status.contains_key("conditions"));
        assert_eq!(status["observedGeneration"], 1);
    }

    #[test]
    fn summaries_are_short_and_human() {
        let stats = llmops_crds::dataset::DatasetStats {
            documents_in: 1000,
            documents_out: 990,
            exact_duplicates: 10,
            train_tokens: 999,
            ..Default::default()
        };
        assert_eq!(status::summary(&stats), "990 docs (1.0% dup), 999 tok");
    }

    #[test]
    fn cleanup_runs_until_a_pass_recorded_the_current_job() {
        let mut ds = fixture("metadata: {generation: 2}");
        assert!(!cleaned_up_for(&ds, "chats-prepare-g2"));
        ds.status = Some(
            serde_yaml_ng::from_str("observedGeneration: 1\njob: {name: chats-prepare-g1}")
                .unwrap(),
        );
        assert!(!cleaned_up_for(&ds, "chats-prepare-g2"));
        ds.status = Some(
            serde_yaml_ng::from_str("observedGeneration: 2\njob: {name: chats-prepare-g2}")
                .unwrap(),
        );
        assert!(cleaned_up_for(&ds, "chats-prepare-g2"));
    }

    #[test]
    fn finished_generations_are_not_rerun() {
        let mut ds = fixture("metadata: {generation: 3}");
        assert!(!finished_for_generation(&ds));
        ds.status = Some(
            serde_yaml_ng::from_str(
                "observedGeneration: 3\ncompletionTime: \"2026-01-01T00:00:00Z\"",
            )
            .unwrap(),
        );
        assert!(finished_for_generation(&ds));
        ds.metadata.generation = Some(4);
        assert!(!finished_for_generation(&ds));
    }
}

mod watch_tests {
    use super::*;
    use crate::runtime::controller::parent_of;
    use kube::runtime::reflector::ObjectRef;

    #[test]
    fn labelled_children_map_back_to_their_dataset() {
        let pod: Pod = serde_yaml_ng::from_str(
            "metadata: {name: chats-prepare-g1-x, namespace: ml, labels: {llmops.dev/dataset: chats}}",
        )
        .unwrap();
        assert_eq!(
            parent_of(pod),
            Some(ObjectRef::<Dataset>::new("chats").within("ml"))
        );
        let unrelated: Pod = serde_yaml_ng::from_str("metadata: {name: x, namespace: ml}").unwrap();
        assert_eq!(parent_of::<Dataset, _>(unrelated), None);
    }

    #[test]
    fn a_dataset_change_wakes_the_datasets_reusing_its_tokenizer() {
        let web = fixture("metadata: {name: web}");
        let users = [
            fixture("metadata: {name: chats}\nspec:\n  tokenizer: {train: null, datasetRef: {name: web}}"),
            fixture("metadata: {name: other}\nspec:\n  tokenizer: {train: null, datasetRef: {name: news}}"),
            fixture("metadata: {name: elsewhere, namespace: prod}\nspec:\n  tokenizer: {train: null, datasetRef: {name: web}}"),
        ]
        .map(std::sync::Arc::new);
        assert_eq!(
            super::super::tokenizer_users(&users, &web),
            vec![ObjectRef::new("chats").within("ml")]
        );
    }
}
