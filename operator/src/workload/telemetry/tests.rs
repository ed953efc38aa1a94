use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use llmops_crds::{FineTune, ModelDeployment};

use super::*;
use crate::config::OperatorConfig;
use crate::test_support::with_overlay;
use crate::workload::cleanup::build_clean_job;

const MD: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: ModelDeployment
metadata: {name: chat, namespace: ml, uid: 9c1d-uid, generation: 1}
spec:
  model: {uri: "s3://models/chat-v1"}
"#;

const FT: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: FineTune
metadata: {name: qa, namespace: ml, uid: 77aa-uid, generation: 4}
spec:
  baseModel: {pretrainJobRef: {name: base}}
  datasetRef: {name: chats}
  training: {epochs: 1, batchSize: 4, microBatchSize: 4}
"#;

fn md(generation: i64) -> ModelDeployment {
    with_overlay(MD, &format!("metadata: {{generation: {generation}}}"))
}

/// A serving Deployment as the builder makes one: `image` on one container.
fn deployment(image: &str, replicas: i32) -> Deployment {
    Deployment {
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "server".into(),
                        image: Some(image.into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn template(deployment: &Deployment) -> &PodTemplateSpec {
    &deployment.spec.as_ref().unwrap().template
}

fn annotation<'a>(deployment: &'a Deployment, key: &str) -> Option<&'a str> {
    template(deployment)
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn env_of<'a>(template: &'a PodTemplateSpec, name: &str) -> Option<&'a EnvVar> {
    template.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
}

#[test]
fn the_trace_is_the_generation_s_and_needs_a_uid() {
    let trace = trace_of(&md(1)).unwrap();
    assert_eq!(trace, TraceParent::derived("9c1d-uid", 1));
    assert_eq!(trace_of(&md(1)), Some(trace));
    assert_ne!(trace_of(&md(2)).unwrap().trace_id, trace.trace_id);
    let stored_nowhere: ModelDeployment = with_overlay(MD, "metadata: {uid: null}");
    assert_eq!(trace_of(&stored_nowhere), None);
    assert_eq!(owner(&md(1)), "ModelDeployment/ml/chat");
}

#[test]
fn serving_pods_get_the_owner_the_trace_and_the_export_settings() {
    let export = vec![(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
        "http://collector:4318".to_string(),
    )];
    let mut desired = deployment("server:1", 1);
    stamp_deployment(&md(1), &mut desired, None, &export);
    let trace = TraceParent::derived("9c1d-uid", 1).to_string();
    assert_eq!(
        annotation(&desired, TRACEPARENT_ANNOTATION),
        Some(trace.as_str())
    );
    let template = template(&desired);
    assert_eq!(
        env_of(template, var::OWNER).unwrap().value.as_deref(),
        Some("ModelDeployment/ml/chat")
    );
    let from = env_of(template, var::TRACEPARENT)
        .unwrap()
        .value_from
        .as_ref()
        .unwrap();
    assert_eq!(
        from.field_ref.as_ref().unwrap().field_path,
        "metadata.annotations['llmops.dev/traceparent']"
    );
    assert_eq!(
        env_of(template, "OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap()
            .value
            .as_deref(),
        Some("http://collector:4318")
    );
}

#[test]
fn a_new_generation_alone_never_changes_the_serving_template() {
    let mut first = deployment("server:1", 1);
    stamp_deployment(&md(1), &mut first, None, &[]);
    // Generation 2 only scales: same template, so the live trace stays and the
    // applied template is byte for byte the live one (no rollout).
    let mut scaled = deployment("server:1", 3);
    stamp_deployment(&md(2), &mut scaled, Some(&first), &[]);
    assert_eq!(template(&scaled), template(&first));
    // And again on a later pass, or after an operator restart.
    let mut again = deployment("server:1", 3);
    stamp_deployment(&md(2), &mut again, Some(&scaled), &[]);
    assert_eq!(template(&again), template(&first));
    // Generation 3 changes the pods: they roll anyway, under its trace.
    let mut upgraded = deployment("server:2", 3);
    stamp_deployment(&md(3), &mut upgraded, Some(&again), &[]);
    let trace = TraceParent::derived("9c1d-uid", 3).to_string();
    assert_eq!(
        annotation(&upgraded, TRACEPARENT_ANNOTATION),
        Some(trace.as_str())
    );
    assert_ne!(
        annotation(&upgraded, TEMPLATE_HASH_ANNOTATION),
        annotation(&first, TEMPLATE_HASH_ANNOTATION)
    );
}

#[test]
fn a_changed_export_setting_is_a_template_change() {
    let mut first = deployment("server:1", 1);
    stamp_deployment(&md(1), &mut first, None, &[]);
    let export = vec![("OTEL_SDK_DISABLED".to_string(), "true".to_string())];
    let mut changed = deployment("server:1", 1);
    stamp_deployment(&md(2), &mut changed, Some(&first), &export);
    assert_ne!(
        annotation(&changed, TEMPLATE_HASH_ANNOTATION),
        annotation(&first, TEMPLATE_HASH_ANNOTATION)
    );
    let trace = TraceParent::derived("9c1d-uid", 2).to_string();
    assert_eq!(
        annotation(&changed, TRACEPARENT_ANNOTATION),
        Some(trace.as_str())
    );
}

#[test]
fn trainer_jobs_carry_the_trace_on_the_job_and_its_pods() {
    let ft: FineTune = with_overlay(FT, "{}");
    let mut config = OperatorConfig::example();
    config.pod_export_env = vec![(
        "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
        "grpc".to_string(),
    )];
    let job = build_clean_job(&ft, "s3://bucket/x", None, &config);
    let trace = TraceParent::derived("77aa-uid", 4).to_string();
    let on_job = job.metadata.annotations.as_ref().unwrap();
    assert_eq!(on_job.get(TRACEPARENT_ANNOTATION), Some(&trace));
    let template = &job.spec.as_ref().unwrap().template;
    let on_pod = template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(on_pod.get(TRACEPARENT_ANNOTATION), Some(&trace));
    assert_eq!(
        env_of(template, var::OWNER).unwrap().value.as_deref(),
        Some("FineTune/ml/qa")
    );
    assert!(
        env_of(template, var::TRACEPARENT)
            .unwrap()
            .value_from
            .is_some()
    );
    assert_eq!(
        env_of(template, "OTEL_EXPORTER_OTLP_PROTOCOL")
            .unwrap()
            .value
            .as_deref(),
        Some("grpc")
    );
}

mod outcome_tests {
    use std::time::{Duration, SystemTime};

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::runtime::conditions::Transition;

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap())
    }

    fn since_epoch(second: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(second)
    }

    fn condition(type_: &str, status: &str, second: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: "m".into(),
            last_transition_time: at(second),
            observed_generation: None,
        }
    }

    fn flip(type_: &str, status: &str, reason: &str) -> Transition {
        Transition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: "why".into(),
            is_problem: false,
        }
    }

    fn ft(generation: i64) -> FineTune {
        with_overlay(
            FT,
            &format!(
                "metadata: {{generation: {generation}, creationTimestamp: \"1970-01-01T00:16:40Z\"}}"
            ),
        )
    }

    const NOW: u64 = 5_000;

    #[test]
    fn the_first_generation_s_root_spans_from_creation_to_ready() {
        let before = [
            condition("Ready", "False", 1_010),
            condition("Reconciling", "True", 1_010),
        ];
        let root = outcome_root(
            &ft(1),
            &before,
            &[flip("Ready", "True", "Trained")],
            Some(1),
            since_epoch(NOW),
        )
        .unwrap();
        assert_eq!(root.trace, TraceParent::derived("77aa-uid", 1));
        assert_eq!(root.name, "FineTune ml/qa");
        assert_eq!(root.start, since_epoch(1_000));
        assert_eq!(root.end, since_epoch(NOW));
        assert_eq!(root.error, None);
    }

    #[test]
    fn a_later_generation_starts_at_the_last_change_and_a_stall_is_an_error() {
        let before = [
            condition("Ready", "False", 1_010),
            condition("Reconciling", "True", 3_000),
        ];
        let root = outcome_root(
            &ft(2),
            &before,
            &[flip("Stalled", "True", "GateFailed")],
            Some(2),
            since_epoch(NOW),
        )
        .unwrap();
        assert_eq!(root.trace, TraceParent::derived("77aa-uid", 2));
        assert_eq!(root.start, since_epoch(3_000));
        assert_eq!(root.error.as_deref(), Some("GateFailed: why"));
    }

    #[test]
    fn only_an_outcome_of_the_current_generation_records_a_root() {
        let now = since_epoch(NOW);
        let ready = [flip("Ready", "True", "Trained")];
        // Written for an older generation, or with no outcome.
        assert!(outcome_root(&ft(2), &[], &ready, Some(1), now).is_none());
        assert!(outcome_root(&ft(2), &[], &ready, None, now).is_none());
        assert!(
            outcome_root(
                &ft(2),
                &[],
                &[flip("Ready", "False", "Training")],
                Some(2),
                now
            )
            .is_none()
        );
        assert!(
            outcome_root(
                &ft(2),
                &[],
                &[flip("Reconciling", "True", "Training")],
                Some(2),
                now
            )
            .is_none()
        );
        assert!(outcome_root(&ft(2), &[], &[], Some(2), now).is_none());
    }
}
