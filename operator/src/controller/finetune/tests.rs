//! Fixtures, and tests of the FineTune pipeline: resolve and validate decisions,
//! the children it builds, and the status read from the Job.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use llmops_contract::env;
use llmops_crds::{Dataset, FineTune, PretrainJob};

use super::resolve::{BaseModel, Resolution, Resolved, resolve_with};
use super::validate::{Invalid, validate};
use crate::config::OperatorConfig;
use crate::controller::training::build::{Children, build};
use crate::runtime::conditions::Outcome;
use crate::test_support::{env_var, pod_spec, text, trainer, with_overlay};

const BASE: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: FineTune
metadata: {name: qa, namespace: ml, uid: 9c1d-uid, generation: 1}
spec:
  baseModel: {pretrainJobRef: {name: base}}
  datasetRef: {name: chats}
  method: {type: lora, lora: {rank: 4}}
  training: {epochs: 2, batchSize: 16, microBatchSize: 4}
  evaluation: {metrics: [perplexity, rougeL], samples: 20, gates: {minRougeL: 0.3}}
"#;

const DATASET: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: Dataset
metadata: {name: chats, namespace: ml, generation: 2}
spec:
  type: instruction
  sources: [{inline: {content: "hello"}}]
  tokenizer: {uri: "s3://m/base/tokenizer.json"}
status:
  observedGeneration: 2
  conditions:
    - {type: Ready, status: "True", reason: Prepared, message: ok, observedGeneration: 2, lastTransitionTime: "2026-01-01T00:00:00Z"}
  artifact: {uri: "s3://llmops-artifacts/datasets/ml/chats", digest: "sha256:d1"}
"#;

const PRETRAIN: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: PretrainJob
metadata: {name: base, namespace: ml, generation: 3}
spec:
  datasetRef: {name: web}
  model: {layers: 2, heads: 4, hidden: 64}
  output: {uri: "s3://corp/models/base", credentialsSecretRef: {name: corp-s3}}
status:
  observedGeneration: 3
  conditions:
    - {type: Ready, status: "True", reason: Trained, message: ok, observedGeneration: 3, lastTransitionTime: "2026-01-01T00:00:00Z"}
  artifact: {uri: "s3://corp/models/base", digest: "sha256:m1"}
"#;

fn fixture(overlay: &str) -> FineTune {
    with_overlay(BASE, overlay)
}

fn dataset(overlay: &str) -> Dataset {
    with_overlay(DATASET, overlay)
}

fn pretrain(overlay: &str) -> PretrainJob {
    with_overlay(PRETRAIN, overlay)
}

/// Resolve `ft` with the PretrainJob `base` (when `pt` is given) and the Dataset.
fn resolution(ft: &str, pt: Option<&str>, ds: Option<&str>) -> Resolution {
    let ft = fixture(ft);
    let pt = pt.map(pretrain);
    let ds = ds.map(dataset);
    let base = if ft.spec.base_model.uri.is_some() {
        BaseModel::Uri
    } else {
        BaseModel::PretrainJob(pt.as_ref())
    };
    resolve_with(&ft, base, ds.as_ref(), &OperatorConfig::example())
}

fn resolved(ft: &str) -> Resolved {
    match resolution(ft, Some("{}"), Some("{}")) {
        Resolution::Resolved(resolved) => *resolved,
        other => panic!("not resolved: {other:?}"),
    }
}

fn children(ft: &str) -> Children {
    children_with(ft, &OperatorConfig::example())
}

fn children_with(ft: &str, config: &OperatorConfig) -> Children {
    build(&validate(&resolved(ft)).unwrap(), config).unwrap()
}

mod resolve_tests {
    use super::*;

    fn waiting(resolution: Resolution) -> (String, String) {
        let Resolution::Waiting(outcome) = resolution else {
            panic!("not waiting: {resolution:?}");
        };
        assert!(
            matches!(outcome, Outcome::Progressing { .. }),
            "{outcome:?}"
        );
        let (reason, message) = text(&outcome);
        (reason.to_string(), message.to_string())
    }

    fn stalled(resolution: Resolution) -> String {
        let Resolution::Stalled(outcome) = resolution else {
            panic!("not stalled: {resolution:?}");
        };
        text(&outcome).1.to_string()
    }

    #[test]
    fn a_missing_dataset_is_waited_for_and_named() {
        let uri = "spec: {baseModel: {pretrainJobRef: null, uri: 'file:///models/tiny'}}";
        let (reason, message) = waiting(resolution(uri, None, None));
        assert_eq!(reason, "WaitingForDataset");
        assert_eq!(
            message,
            "waiting for Dataset chats (spec.datasetRef) to exist: not found"
        );
        let (reason, message) = waiting(resolution(uri, None, Some("metadata: {generation: 3}")));
        assert_eq!(reason, "WaitingForDataset");
        assert!(message.ends_with("to be Ready"), "{message}");
    }

    #[test]
    fn a_base_model_not_ready_is_waited_for_and_named_beside_the_dataset() {
        let (reason, message) = waiting(resolution("{}", None, None));
        assert_eq!(reason, "WaitingForBaseModel");
        assert_eq!(
            message,
            "waiting for PretrainJob base (spec.baseModel.pretrainJobRef) to exist: not found; waiting for Dataset chats (spec.datasetRef) to exist: not found"
        );
        let training = "status: {conditions: [{type: Ready, status: 'False', reason: Training, message: t, observedGeneration: 3, lastTransitionTime: '2026-01-01T00:00:00Z'}], artifact: null}";
        let (reason, message) = waiting(resolution("{}", Some(training), Some("{}")));
        assert_eq!(reason, "WaitingForBaseModel");
        assert_eq!(
            message,
            "waiting for PretrainJob base (spec.baseModel.pretrainJobRef) to be Ready with a model"
        );
        // Ready for an older generation is not ready.
        let (reason, _) = waiting(resolution(
            "{}",
            Some("metadata: {generation: 4}"),
            Some("{}"),
        ));
        assert_eq!(reason, "WaitingForBaseModel");
    }

    #[test]
    fn a_base_fine_tune_rejected_by_its_gates_is_waited_for_saying_so() {
        let ft = fixture("spec: {baseModel: {pretrainJobRef: null, fineTuneRef: {name: v6}}}");
        let base: FineTune = with_overlay(
            BASE,
            "metadata: {name: v6}\nstatus:\n  observedGeneration: 1\n  conditions: [{type: Ready, status: 'False', reason: GateFailed, message: no, observedGeneration: 1, lastTransitionTime: '2026-01-01T00:00:00Z'}]\n  gate: {passed: false, message: 'rougeL 0.12 < 0.30'}\n",
        );
        let ds = dataset("{}");
        let resolution = resolve_with(
            &ft,
            BaseModel::FineTune(Some(&base)),
            Some(&ds),
            &OperatorConfig::example(),
        );
        let (reason, message) = waiting(resolution);
        assert_eq!(reason, "WaitingForBaseModel");
        assert!(
            message.contains("FineTune v6 (spec.baseModel.fineTuneRef)")
                && message.contains("failed the quality gates (rougeL 0.12 < 0.30)"),
            "{message}"
        );
    }

    #[test]
    fn a_fine_tune_cannot_start_from_itself() {
        let ft = fixture("spec: {baseModel: {pretrainJobRef: null, fineTuneRef: {name: qa}}}");
        let resolution = resolve_with(
            &ft,
            BaseModel::FineTune(Some(&ft)),
            None,
            &OperatorConfig::example(),
        );
        assert!(stalled(resolution).starts_with("spec.baseModel.fineTuneRef"));
    }

    #[test]
    fn generated_metrics_need_an_instruction_dataset() {
        let message = stalled(resolution(
            "{}",
            Some("{}"),
            Some("spec: {type: pretraining}"),
        ));
        assert!(
            message.starts_with("spec.evaluation.metrics: rougeL") && message.contains("chats"),
            "{message}"
        );
        let perplexity_only =
            "spec: {evaluation: {metrics: [perplexity], gates: {minRougeL: null}}}";
        assert!(matches!(
            resolution(
                perplexity_only,
                Some("{}"),
                Some("spec: {type: pretraining}")
            ),
            Resolution::Resolved(_)
        ));
    }

    #[test]
    fn ready_artifacts_become_the_lineage_and_the_output_defaults_to_the_store() {
        let r = resolved("{}");
        let lineage = r
            .fine_tune
            .status
            .as_ref()
            .unwrap()
            .operator
            .lineage
            .clone()
            .unwrap();
        assert_eq!(lineage.base_model.unwrap().digest, "sha256:m1");
        assert_eq!(lineage.dataset.unwrap().digest, "sha256:d1");
        assert_eq!(r.output_uri, "s3://llmops-artifacts/finetunes/ml/qa");
        let spec = &r.fine_tune.spec;
        assert_eq!(
            spec.output.location.uri.as_deref(),
            Some(r.output_uri.as_str())
        );
        // The base model is read with its producer's output Secret, which the
        // resource names for the trainer.
        assert_eq!(r.base_model_secret.as_deref(), Some("corp-s3"));
        assert_eq!(
            spec.base_model
                .credentials_secret_ref
                .as_ref()
                .map(|s| s.name.as_str()),
            Some("corp-s3")
        );
        assert_eq!(r.fine_tune.metadata.uid.as_deref(), Some("9c1d-uid"));
    }

    #[test]
    fn a_uri_base_model_is_used_as_given_with_no_digest() {
        let r = match resolution(
            "spec: {baseModel: {pretrainJobRef: null, uri: 'file:///models/tiny'}}",
            None,
            Some("{}"),
        ) {
            Resolution::Resolved(r) => r,
            other => panic!("not resolved: {other:?}"),
        };
        assert_eq!(r.base_model.uri, "file:///models/tiny");
        assert_eq!(r.base_model.digest, "");
        assert_eq!(r.base_model_secret, None);
    }

    #[test]
    fn recorded_lineage_is_kept_even_when_the_inputs_re_run_or_are_gone() {
        let recorded = "status: {lineage: {baseModel: {uri: 's3://corp/models/base', digest: 'sha256:m0'}, dataset: {uri: 's3://llmops-artifacts/datasets/ml/chats', digest: 'sha256:d0'}}}";
        let Resolution::Resolved(r) = resolution(recorded, None, None) else {
            panic!("not resolved");
        };
        assert_eq!(r.base_model.digest, "sha256:m0");
        assert_eq!(r.dataset.digest, "sha256:d0");
        let Resolution::Resolved(r) = resolution(recorded, Some("{}"), Some("{}")) else {
            panic!("not resolved");
        };
        assert_eq!(r.dataset.digest, "sha256:d0");
    }
}

mod validate_tests {
    use super::*;

    fn check(ft: &str) -> Result<(), Invalid> {
        validate(&resolved(ft)).map(|_| ())
    }

    #[test]
    fn the_fixture_is_valid() {
        assert_eq!(check("{}"), Ok(()));
    }

    #[test]
    fn the_batch_must_split_evenly_over_every_rank() {
        let err = check("spec: {resources: {replicas: 3}}").unwrap_err();
        assert_eq!(err.field, "spec.training.batchSize");
        let err = check("spec: {resources: {replicas: 2, gpusPerReplica: 4}}").unwrap_err();
        assert!(err.message.contains("2 replica(s) × 4 GPUs = 32"), "{err}");
        assert_eq!(
            check("spec: {resources: {replicas: 2, gpusPerReplica: 2}}"),
            Ok(())
        );
    }

    #[test]
    fn names_must_fit_pod_hostnames_and_services() {
        let long = "a".repeat(55);
        let err = check(&format!("metadata: {{name: {long}}}")).unwrap_err();
        assert_eq!(err.field, "metadata.name");
        let err = check("metadata: {name: 7qa}\nspec: {resources: {replicas: 2}}").unwrap_err();
        assert!(err.message.contains("7qa-workers"), "{err}");
    }

    #[test]
    fn pvc_uris_need_a_claim() {
        let err = check("spec: {output: {uri: 'pvc://'}}").unwrap_err();
        assert_eq!(err.field, "spec.output.uri");
    }

    #[test]
    fn secrets_whose_variables_collide_are_rejected() {
        let err = check("spec: {output: {credentialsSecretRef: {name: corp.s3}}}").unwrap_err();
        assert_eq!(err.field, "spec.baseModel.credentialsSecretRef");
    }
}

mod build_tests {
    use super::*;
    use crate::controller::training::RUN_HASH_ANNOTATION;
    use llmops_contract::path::RESOURCE_KEY;

    #[test]
    fn names_labels_and_command() {
        let c = children("{}");
        assert_eq!(c.job.name_any(), "qa-finetune");
        assert_eq!(c.config_map.name_any(), "qa-finetune");
        assert_eq!(c.rbac.role.name_any(), "qa-trainer");
        assert!(c.service.is_none());
        assert_eq!(
            c.job
                .labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str),
            Some("finetune")
        );
        assert_eq!(c.job.labels()["llmops.dev/finetune"], "qa");
        assert_eq!(
            trainer(&c.job).args.as_deref().unwrap(),
            ["finetune", "--resource", "/etc/llmops/resource.yaml"]
        );
        let owner = &c.job.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("FineTune", "9c1d-uid")
        );
    }

    #[test]
    fn the_config_map_holds_the_resolved_resource_with_its_lineage() {
        let c = children("{}");
        let text = &c.config_map.data.as_ref().unwrap()[RESOURCE_KEY];
        let resource: FineTune = serde_yaml_ng::from_str(text).unwrap();
        let lineage = resource.status.unwrap().operator.lineage.unwrap();
        assert_eq!(lineage.base_model.unwrap().uri, "s3://corp/models/base");
        assert_eq!(lineage.dataset.unwrap().digest, "sha256:d1");
        assert_eq!(
            resource.spec.output.location.uri.as_deref(),
            Some("s3://llmops-artifacts/finetunes/ml/qa")
        );
    }

    #[test]
    fn the_trainer_role_covers_only_this_fine_tune() {
        let rules = children("{}").rbac.role.rules.unwrap();
        assert!(
            rules
                .iter()
                .all(|r| r.resource_names.as_deref() == Some(&["qa".to_string()][..]))
        );
        assert!(
            rules
                .iter()
                .any(|r| r.resources.as_deref() == Some(&["finetunes/status".to_string()][..]))
        );
    }

    #[test]
    fn the_job_is_a_restricted_training_job() {
        let c = children("{}");
        let spec = c.job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(3));
        assert_eq!(spec.active_deadline_seconds, Some(7 * 24 * 3600));
        let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
        assert!(
            rules.iter().any(|r| r.action == "FailJob"
                && r.on_exit_codes.as_ref().is_some_and(|e| e.values == [2]))
        );
        assert!(
            rules.iter().any(|r| r.action == "Ignore"
                && r.on_exit_codes.as_ref().is_some_and(|e| e.values == [143]))
        );
        let pod = pod_spec(&c.job);
        assert_eq!(pod.service_account_name.as_deref(), Some("qa-trainer"));
        let security = trainer(&c.job).security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert!(
            pod.volumes
                .as_ref()
                .unwrap()
                .iter()
                .any(|v| v.name == "dshm")
        );
        // Every emptyDir is bounded, so no trainer pod can fill its node's disk
        // or memory.
        for volume in pod.volumes.as_ref().unwrap() {
            if let Some(dir) = &volume.empty_dir {
                assert!(dir.size_limit.is_some(), "{} has no sizeLimit", volume.name);
            }
        }
        assert_eq!(
            env_var(&c.job, env::OUTPUT_URI).and_then(|e| e.value.as_deref()),
            Some("s3://llmops-artifacts/finetunes/ml/qa")
        );
    }

    #[test]
    fn the_deadline_and_scratch_space_come_from_the_spec() {
        let c = children(
            "spec: {failurePolicy: {activeDeadlineSeconds: 3600}, resources: {ephemeralStorage: 300Gi}}",
        );
        let spec = c.job.spec.as_ref().unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(3600));
        let tmp = pod_spec(&c.job)
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "tmp")
            .unwrap();
        assert_eq!(
            tmp.empty_dir.as_ref().unwrap().size_limit,
            Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "300Gi".into()
            ))
        );
    }

    #[test]
    fn the_base_model_secret_reaches_the_trainer_by_reference() {
        let c = children("{}");
        let var = env_var(&c.job, "LLMOPS_CRED_CORP_S3_AWS_ACCESS_KEY_ID").expect("the variable");
        assert!(var.value.is_none());
        let selector = var
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.optional),
            ("corp-s3", Some(true))
        );
    }

    #[test]
    fn several_replicas_and_gpus_run_one_rank_per_gpu_behind_a_headless_service() {
        let c = children("spec: {resources: {replicas: 2, gpusPerReplica: 2}}");
        let spec = c.job.spec.as_ref().unwrap();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.completions, Some(2));
        assert_eq!(spec.backoff_limit, Some(6));
        assert_eq!(c.service.unwrap().name_any(), "qa-workers");
        assert_eq!(
            env_var(&c.job, env::MASTER_ADDR).and_then(|e| e.value.as_deref()),
            Some("qa-finetune-0.qa-workers")
        );
        assert_eq!(
            env_var(&c.job, env::PROCS_PER_POD).and_then(|e| e.value.as_deref()),
            Some("2")
        );
        let limits = trainer(&c.job)
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap();
        assert_eq!(limits["nvidia.com/gpu"].0, "2");
    }

    #[test]
    fn suspend_is_on_the_job_but_not_in_its_run_hash() {
        let running = children("{}").job;
        let suspended = children("spec: {suspend: true}").job;
        assert_eq!(suspended.spec.as_ref().unwrap().suspend, Some(true));
        let hash = |job: &Job| job.annotations()[RUN_HASH_ANNOTATION].clone();
        assert_eq!(hash(&running), hash(&suspended));
        assert_ne!(
            hash(&running),
            hash(&children("spec: {training: {epochs: 3}}").job)
        );
    }
}

mod status_tests {
    use k8s_openapi::api::core::v1::Pod;
    use llmops_crds::JobPhase;

    use super::*;
    use crate::controller::finetune::status::{Observed, desired_status, observe};
    use crate::controller::training::status::telling_pods;
    use crate::runtime::status::ReportsStatus;
    use crate::test_support::{self, now};
    use crate::workload::observe::job_state;
    use crate::workload::record::finished_for_generation;

    const OUTPUT: &str = "s3://llmops-artifacts/finetunes/ml/qa";
    const COMPLETE: &str = r#"{startTime: "2026-01-01T00:00:00Z", completionTime: "2026-01-01T01:00:00Z", succeeded: 1, conditions: [{type: Complete, status: "True"}]}"#;

    fn job(status: &str) -> Job {
        test_support::job("{name: qa-finetune, namespace: ml}", status)
    }

    fn finished_pod(message: &str) -> Pod {
        let mut pod = test_support::trainer_pod(
            r#"{name: qa-finetune-x, creationTimestamp: "2026-01-01T00:00:00Z"}"#,
            "{terminated: {exitCode: 0}}",
        );
        let statuses = pod
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap();
        let terminated = statuses[0]
            .state
            .as_mut()
            .unwrap()
            .terminated
            .as_mut()
            .unwrap();
        terminated.message = Some(message.to_string());
        pod
    }

    fn observed(job_status: &str, pods: Vec<Pod>, ft: &FineTune) -> Observed {
        let job = job(job_status);
        let state = job_state(&job, &telling_pods(&job, pods));
        observe(&state, &job, ft, OUTPUT)
    }

    fn succeeded(result: &str, ft: &FineTune) -> Observed {
        observed(COMPLETE, vec![finished_pod(result)], ft)
    }

    const PASSED: &str = r#"{"artifact":{"uri":"s3://llmops-artifacts/finetunes/ml/qa","digest":"sha256:f1"},"progress":{"step":40,"totalSteps":40},"evaluation":{"perplexity":6.2041,"rougeL":0.4123,"samples":20},"gate":{"passed":true,"message":"rougeL 0.41 >= 0.30"}}"#;
    const FAILED: &str = r#"{"artifact":{"uri":"s3://llmops-artifacts/finetunes/ml/qa","digest":"sha256:f2"},"evaluation":{"perplexity":30.5,"rougeL":0.12,"samples":20},"gate":{"passed":false,"message":"rougeL 0.12 < 0.30"}}"#;

    #[test]
    fn a_passed_gate_publishes_the_model_with_its_scores() {
        let o = succeeded(PASSED, &fixture("{}"));
        assert_eq!(o.phase, JobPhase::Succeeded);
        assert!(
            matches!(o.outcome, Outcome::Ready { .. }),
            "{:?}",
            o.outcome
        );
        assert_eq!(
            text(&o.outcome),
            (
                "Trained",
                "perplexity 6.20, rougeL 0.412 (20 samples); gates passed: rougeL 0.41 >= 0.30"
            )
        );
        assert_eq!(o.artifact.as_ref().unwrap().digest, "sha256:f1");
        assert_eq!(o.evaluation.as_ref().unwrap().rouge_l, Some(0.4123));
        assert!(o.gate.as_ref().unwrap().passed);
        assert!(o.completion_time.is_some());
    }

    #[test]
    fn the_base_models_perplexity_is_told_beside_the_fine_tunes() {
        let with_base = PASSED.replace(
            r#""perplexity":6.2041,"#,
            r#""perplexity":6.2041,"basePerplexity":31.077,"#,
        );
        let o = succeeded(&with_base, &fixture("{}"));
        assert_eq!(o.evaluation.as_ref().unwrap().base_perplexity, Some(31.077));
        assert!(
            text(&o.outcome)
                .1
                .starts_with("perplexity 6.20 (base 31.08), rougeL 0.412 (20 samples)"),
            "{:?}",
            o.outcome
        );
    }

    #[test]
    fn a_failed_gate_publishes_nothing_and_stalls_saying_where_the_model_is() {
        let o = succeeded(FAILED, &fixture("{}"));
        assert_eq!(o.artifact, None);
        assert_eq!(o.phase, JobPhase::Failed);
        assert!(
            matches!(o.outcome, Outcome::Stalled { .. }),
            "{:?}",
            o.outcome
        );
        let (reason, message) = text(&o.outcome);
        assert_eq!(reason, "GateFailed");
        assert!(
            message.contains("rougeL 0.12 < 0.30") && message.contains(OUTPUT),
            "{message}"
        );
        // The scores and the gate are still reported.
        assert_eq!(o.evaluation.as_ref().unwrap().perplexity, Some(30.5));
        assert!(!o.gate.as_ref().unwrap().passed);
        // And the status written says Ready=False, Stalled=True, without an artifact.
        let status = desired_status(&fixture("{}"), o, &now());
        assert_eq!(status.fields.artifact, None);
        let condition = |t: &str| status.conditions.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(condition("Ready").status, "False");
        assert_eq!(condition("Stalled").status, "True");
        assert_eq!(condition("Ready").reason, "GateFailed");
    }

    #[test]
    fn a_fine_tune_without_gates_passes() {
        let ungated =
            fixture("spec: {evaluation: {metrics: [perplexity], gates: {minRougeL: null}}}");
        let result = r#"{"artifact":{"uri":"s3://x/qa","digest":"sha256:f3"},"evaluation":{"perplexity":5.0,"samples":20}}"#;
        let o = succeeded(result, &ungated);
        assert_eq!(o.artifact.as_ref().unwrap().digest, "sha256:f3");
        assert_eq!(
            text(&o.outcome),
            ("Trained", "perplexity 5.00 (20 samples)")
        );
        // With gates set, a result that does not say how they went is not trusted.
        let o = succeeded(result, &fixture("{}"));
        assert_eq!(o.artifact, None);
        assert_eq!(text(&o.outcome).0, "InvalidTrainerResult");
    }

    #[test]
    fn an_unreadable_result_stalls() {
        let o = succeeded("not json", &fixture("{}"));
        let (reason, message) = text(&o.outcome);
        assert_eq!(reason, "InvalidTrainerResult");
        assert!(message.starts_with("trainer finetune succeeded but its result is not valid JSON"));
    }

    #[test]
    fn a_running_job_is_training_and_a_failed_one_stalls() {
        let o = observed("{active: 1}", vec![], &fixture("{}"));
        assert_eq!(o.phase, JobPhase::Running);
        assert_eq!(text(&o.outcome), ("Training", "training (Job qa-finetune)"));
        let failed = r#"{failed: 1, conditions: [{type: Failed, status: "True", reason: PodFailurePolicy, message: m, lastTransitionTime: "2026-01-01T03:00:00Z"}]}"#;
        let o = observed(failed, vec![], &fixture("{}"));
        assert_eq!(o.phase, JobPhase::Failed);
        assert_eq!(text(&o.outcome).0, "TrainingFailed");
        let o = observed("{}", vec![], &fixture("spec: {suspend: true}"));
        assert_eq!(o.phase, JobPhase::Suspended);
    }

    #[test]
    fn waiting_says_why_without_stalling() {
        let ft = fixture("{}");
        let outcome = Outcome::progressing("WaitingForDataset", "waiting for Dataset chats");
        let status = desired_status(
            &ft,
            Observed::without_job(outcome, JobPhase::Waiting, None),
            &now(),
        );
        assert_eq!(status.fields.phase, Some(JobPhase::Waiting));
        assert!(status.conditions.iter().all(|c| c.type_ != "Stalled"));
    }

    #[test]
    fn a_changed_spec_after_a_finished_run_is_not_taken_for_finished() {
        use crate::runtime::status::ReportsStatus as _;
        use crate::workload::record::finished_for_generation;
        // A run of generation 1 finished.
        let mut ft = fixture("{metadata: {generation: 1}}");
        let done = observed(
            r#"{succeeded: 1, completionTime: "2026-01-01T03:00:00Z", conditions: [{type: Complete, status: "True"}]}"#,
            vec![],
            &ft,
        );
        assert!(done.completion_time.is_some());
        let first = desired_status(&ft, done, &now());
        FineTune::record(ft.status.get_or_insert_default(), first);
        assert!(finished_for_generation(&ft));
        // The spec changes; the pass that replaces the Job records generation 2
        // without a Job, and the next pass must still go on to run it.
        ft.metadata.generation = Some(2);
        assert!(!finished_for_generation(&ft));
        let replacing = Observed::without_job(
            Outcome::progressing("Replacing", "replacing Job"),
            JobPhase::Pending,
            ft.status.as_ref(),
        );
        let second = desired_status(&ft, replacing, &now());
        FineTune::record(ft.status.get_or_insert_default(), second);
        assert_eq!(ft.status.as_ref().unwrap().observed_generation, Some(2));
        assert!(!finished_for_generation(&ft));
    }

    #[test]
    fn lineage_is_recorded_and_a_second_pass_writes_nothing() {
        let mut ft = fixture("{}");
        let lineage = resolved("{}").fine_tune.status.unwrap().operator.lineage;
        let mut o = observed("{active: 1}", vec![], &ft);
        o.lineage = lineage.clone();
        let first = desired_status(&ft, o, &now());
        assert_eq!(first.fields.lineage, lineage);
        FineTune::record(ft.status.get_or_insert_default(), first);
        // The next pass does not repeat the lineage; it is kept.
        let again = desired_status(&ft, observed("{active: 1}", vec![], &ft), &now());
        assert_eq!(again.fields.lineage, lineage);
        assert!(!FineTune::needs_write(ft.status.as_ref(), &again));
    }

    #[test]
    fn the_apply_body_never_touches_trainer_progress() {
        let ft = fixture("status: {progress: {step: 3, totalSteps: 40}}");
        let status = desired_status(&ft, succeeded(PASSED, &ft), &now());
        let body = serde_json::to_value(&status).unwrap();
        assert!(body.get("progress").is_none());
        assert!(body.get("evaluation").is_some() && body.get("gate").is_some());
    }

    #[test]
    fn finished_generations_are_final() {
        let mut ft = fixture("{}");
        let status = desired_status(&ft, succeeded(FAILED, &ft), &now());
        FineTune::record(ft.status.get_or_insert_default(), status);
        assert!(finished_for_generation(&ft));
        ft.metadata.generation = Some(2);
        assert!(!finished_for_generation(&ft));
    }
}

mod watch_tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::reflector::ObjectRef;
    use llmops_crds::Artifact;

    use super::*;
    use crate::controller::finetune::waiting_for;
    use crate::runtime::controller::parent_of;

    #[test]
    fn a_new_artifact_wakes_only_the_fine_tunes_still_waiting_for_it() {
        let waiting = Arc::new(fixture("{}"));
        let started = Arc::new(fixture(
            "metadata: {name: started}\nstatus: {lineage: {dataset: {uri: u, digest: d}}}",
        ));
        let other = Arc::new(fixture(
            "metadata: {name: other}\nspec: {datasetRef: {name: web}}",
        ));
        let all = [waiting, started, other];
        let ds = dataset("{}");
        let artifact = Artifact {
            uri: "u".into(),
            digest: "d".into(),
        };
        let woken = waiting_for(&all, &ds, Some(&artifact), |ft| Some(&ft.spec.dataset_ref));
        assert_eq!(woken, vec![ObjectRef::<FineTune>::new("qa").within("ml")]);
        // A producer without an artifact (still running) wakes nobody.
        assert!(waiting_for(&all, &ds, None, |ft| Some(&ft.spec.dataset_ref)).is_empty());
        let pt = pretrain("{}");
        let woken = waiting_for(&all, &pt, Some(&artifact), |ft| {
            ft.spec.base_model.pretrain_job_ref.as_ref()
        });
        assert_eq!(woken.len(), 2);
    }

    #[test]
    fn labelled_pods_map_back_to_their_fine_tune() {
        let pod: Pod = serde_yaml_ng::from_str(
            "metadata: {name: p, namespace: ml, labels: {llmops.dev/finetune: qa}}",
        )
        .unwrap();
        assert_eq!(
            parent_of(pod),
            Some(ObjectRef::<FineTune>::new("qa").within("ml"))
        );
    }
}

mod telemetry_tests {
    use super::*;
    use llmops_contract::TRACEPARENT_ANNOTATION;
    use llmops_telemetry::TraceParent;

    #[test]
    fn the_trainer_job_continues_the_generation_s_trace() {
        let c = children("metadata: {generation: 5}");
        let trace = TraceParent::derived("9c1d-uid", 5).to_string();
        let template = &c.job.spec.as_ref().unwrap().template;
        let annotations = template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(annotations.get(TRACEPARENT_ANNOTATION), Some(&trace));
        let traceparent = env_var(&c.job, env::TRACEPARENT).unwrap();
        assert_eq!(
            traceparent
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            format!("metadata.annotations['{TRACEPARENT_ANNOTATION}']")
        );
        assert_eq!(
            env_var(&c.job, env::OWNER).unwrap().value.as_deref(),
            Some("FineTune/ml/qa")
        );
    }
}
