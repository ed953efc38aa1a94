//! Fixtures, and tests of the ModelDeployment pipeline: resolving the model,
//! validation, the children it builds, and the status read from the Deployment.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use kube::ResourceExt;
use llmops_crds::{Artifact, FineTune, ModelDeployment, PretrainJob};

use super::build::{self, Children};
use super::resolve::{Model, Producer, Resolution, resolve_with};
use super::status::{self, reason};
use super::validate::{validate, validate_model};
use crate::config::OperatorConfig;
use crate::runtime::conditions::{Aside, Outcome, now};
use crate::test_support::with_overlay;

const BASE: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: ModelDeployment
metadata: {name: chat, namespace: ml, uid: 9c1d-uid, generation: 1}
spec:
  model: {uri: "s3://models/chat-v1"}
"#;

const PRETRAIN: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: PretrainJob
metadata: {name: base, namespace: ml, generation: 2}
spec:
  datasetRef: {name: web}
  model: {family: llama, layers: 2, heads: 4, hidden: 64, contextLength: 256}
  training: {maxSteps: 200, batchSize: 32, microBatchSize: 8}
status:
  conditions:
    - {type: Ready, status: "True", reason: Trained, message: ok, observedGeneration: 2, lastTransitionTime: "2026-01-01T00:00:00Z"}
  artifact: {uri: "s3://llmops-artifacts/pretrainjobs/ml/base", digest: "sha256:m1"}
"#;

fn fixture(overlay: &str) -> ModelDeployment {
    with_overlay(BASE, overlay)
}

fn model(uri: &str, digest: &str) -> Model {
    Model {
        artifact: Artifact {
            uri: uri.into(),
            digest: digest.into(),
        },
        credentials_secret: None,
    }
}

fn resolved(md: &ModelDeployment) -> Model {
    match resolve_with(md, None, &OperatorConfig::example()) {
        Resolution::Resolved(model) => model,
        other => panic!("not resolved: {other:?}"),
    }
}

fn children(overlay: &str) -> Children {
    let md = fixture(overlay);
    build::build(&md, &resolved(&md), &OperatorConfig::example())
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

fn server(deployment: &Deployment) -> &Container {
    &pod_spec(deployment).containers[0]
}

fn env_var<'a>(deployment: &'a Deployment, name: &str) -> Option<&'a EnvVar> {
    server(deployment)
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
}

fn message(outcome: &Outcome) -> (&str, &str) {
    match outcome {
        Outcome::Progressing { reason, message }
        | Outcome::Ready { reason, message }
        | Outcome::Stalled { reason, message } => (reason, message),
        other => panic!("unexpected outcome {other:?}"),
    }
}

mod resolve_tests {
    use super::*;

    fn with_pretrain(overlay: &str) -> Resolution {
        let md = fixture("spec: {model: {uri: null, pretrainJobRef: {name: base}}}");
        let job: PretrainJob = with_overlay(PRETRAIN, overlay);
        resolve_with(
            &md,
            Some(Producer::PretrainJob(Some(&job))),
            &OperatorConfig::example(),
        )
    }

    #[test]
    fn a_uri_is_served_as_given_with_its_own_secret() {
        let md = fixture("spec: {model: {credentialsSecretRef: {name: model-creds}}}");
        let model = resolved(&md);
        assert_eq!(model.artifact.uri, "s3://models/chat-v1");
        assert_eq!(model.artifact.digest, "");
        assert_eq!(model.credentials_secret.as_deref(), Some("model-creds"));
        // Outside the default store and without a Secret: none.
        assert_eq!(resolved(&fixture("{}")).credentials_secret, None);
    }

    #[test]
    fn a_ready_pretrain_job_gives_its_artifact_and_the_store_secret() {
        let Resolution::Resolved(model) = with_pretrain("{}") else {
            panic!("not resolved");
        };
        assert_eq!(model.artifact.digest, "sha256:m1");
        assert_eq!(model.credentials_secret.as_deref(), Some("store-creds"));
    }

    #[test]
    fn a_pretrain_job_not_ready_for_its_generation_is_waited_for_and_named() {
        let Resolution::Waiting(outcome) = with_pretrain("metadata: {generation: 3}") else {
            panic!("not waiting");
        };
        let (why, text) = message(&outcome);
        assert_eq!(why, reason::WAITING_FOR_MODEL);
        assert!(
            text.contains("PretrainJob base") && text.contains("spec.model.pretrainJobRef"),
            "{text}"
        );
        assert!(matches!(outcome, Outcome::Progressing { .. }));
    }

    #[test]
    fn a_missing_pretrain_job_is_waited_for() {
        let md = fixture("spec: {model: {uri: null, pretrainJobRef: {name: base}}}");
        let Resolution::Waiting(outcome) = resolve_with(
            &md,
            Some(Producer::PretrainJob(None)),
            &OperatorConfig::example(),
        ) else {
            panic!("not waiting");
        };
        assert!(message(&outcome).1.ends_with("not found"));
    }

    fn fine_tune_resolution(status: &str) -> Resolution {
        let md = fixture("spec: {model: {uri: null, fineTuneRef: {name: ft}}}");
        let ft: FineTune = serde_yaml_ng::from_str(&format!(
            "apiVersion: llmops.dev/v1alpha1\nkind: FineTune\nmetadata: {{name: ft, namespace: ml, generation: 1}}\nspec:\n  baseModel: {{uri: 's3://m/base'}}\n  datasetRef: {{name: d}}\n{status}"
        ))
        .unwrap();
        resolve_with(
            &md,
            Some(Producer::FineTune(Some(&ft))),
            &OperatorConfig::example(),
        )
    }

    #[test]
    fn a_fine_tune_still_training_is_waited_for_saying_so() {
        let Resolution::Waiting(outcome) = fine_tune_resolution(
            "status: {conditions: [{type: Ready, status: 'False', reason: Training, message: training, observedGeneration: 1, lastTransitionTime: '2026-01-01T00:00:00Z'}]}",
        ) else {
            panic!("not waiting");
        };
        let (why, text) = message(&outcome);
        assert_eq!(why, reason::WAITING_FOR_MODEL);
        assert!(
            text.contains("FineTune ft") && text.contains("not Ready with a model artifact"),
            "{text}"
        );
    }

    #[test]
    fn a_fine_tune_whose_gates_failed_is_never_served() {
        let Resolution::Waiting(outcome) = fine_tune_resolution(
            "status:\n  conditions: [{type: Ready, status: 'False', reason: GateFailed, message: rejected, observedGeneration: 1, lastTransitionTime: '2026-01-01T00:00:00Z'}]\n  gate: {passed: false, message: 'rougeL 0.12 < 0.35'}\n",
        ) else {
            panic!("not waiting");
        };
        let text = message(&outcome).1;
        assert!(
            text.contains("failed the quality gates (rougeL 0.12 < 0.35)"),
            "{text}"
        );
    }

    #[test]
    fn a_ready_fine_tune_is_served() {
        let resolution = fine_tune_resolution(
            "status:\n  conditions: [{type: Ready, status: 'True', reason: Trained, message: ok, observedGeneration: 1, lastTransitionTime: '2026-01-01T00:00:00Z'}]\n  gate: {passed: true, message: ''}\n  artifact: {uri: 's3://llmops-artifacts/finetunes/ml/ft', digest: 'sha256:f1'}\n",
        );
        let Resolution::Resolved(model) = resolution else {
            panic!("not resolved: {resolution:?}");
        };
        assert_eq!(model.artifact.digest, "sha256:f1");
    }
}

mod validate_tests {
    use super::*;

    #[test]
    fn canary_is_run_not_stalled() {
        let md = fixture("spec: {rollout: {strategy: Canary, canary: {steps: [{weight: 10}]}}}");
        assert_eq!(validate(&md, false), Ok(()));
    }

    #[test]
    fn autoscaling_does_not_stall() {
        let md = fixture(
            "spec: {replicas: {min: 2, max: 8}, autoscaling: {metric: queueDepth, target: 4}}",
        );
        assert_eq!(validate(&md, false), Ok(()));
    }

    #[test]
    fn a_model_without_an_api_key_is_served_inside_the_cluster_only() {
        let auth = "{apiKeySecretRef: {name: keys, key: api-key}}";
        for kind in ["NodePort", "LoadBalancer"] {
            let open = fixture(&format!("spec: {{service: {{type: {kind}}}}}"));
            let err = validate(&open, false).unwrap_err();
            assert_eq!(err.field, "spec.auth");
            assert!(err.to_string().contains(kind), "{err}");
            let keyed = fixture(&format!(
                "spec: {{service: {{type: {kind}}}, auth: {auth}}}"
            ));
            assert_eq!(validate(&keyed, false), Ok(()));
        }
        // An operator that requires keys refuses even a ClusterIP Service without.
        let internal = fixture("{}");
        assert_eq!(validate(&internal, false), Ok(()));
        assert_eq!(validate(&internal, true).unwrap_err().field, "spec.auth");
        let keyed = fixture(&format!("spec: {{auth: {auth}}}"));
        assert_eq!(validate(&keyed, true), Ok(()));
    }

    #[test]
    fn a_name_that_cannot_name_a_service_stalls() {
        assert_eq!(
            validate(&fixture("metadata: {name: chat.v2}"), false)
                .unwrap_err()
                .field,
            "metadata.name"
        );
        assert_eq!(
            validate(&fixture("metadata: {name: 7chat}"), false)
                .unwrap_err()
                .field,
            "metadata.name"
        );
    }

    #[test]
    fn a_pvc_uri_without_a_claim_stalls() {
        assert!(validate_model(&model("pvc:///models/x", "")).is_err());
        assert!(validate_model(&model("pvc://models/x", "")).is_ok());
    }
}

mod build_tests {
    use super::*;
    use crate::runtime::apply::{COMPONENT_LABEL, INSTANCE_LABEL, NAME_LABEL};

    #[test]
    fn the_deployment_is_named_labelled_owned_and_rolls_without_losing_pods() {
        let c = children("{}");
        let d = &c.deployment;
        assert_eq!(d.name_any(), "chat-server");
        assert_eq!(d.namespace().as_deref(), Some("ml"));
        assert_eq!(d.labels()[NAME_LABEL], "llmops");
        assert_eq!(d.labels()[INSTANCE_LABEL], "chat");
        assert_eq!(d.labels()[COMPONENT_LABEL], "server");
        let owner = &d.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ModelDeployment", "9c1d-uid")
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        let rolling = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        let int = |v: &Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>| {
            serde_json::to_value(v).unwrap()
        };
        assert_eq!(int(&rolling.max_unavailable), 0);
        assert_eq!(int(&rolling.max_surge), 1);
        assert!(spec.progress_deadline_seconds.is_some());
        let selector = spec.selector.match_labels.as_ref().unwrap();
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    }

    #[test]
    fn the_pod_is_restricted_without_an_api_token() {
        let c = children("{}");
        let pod = pod_spec(&c.deployment);
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        let sc = server(&c.deployment).security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        let mounts: Vec<&str> = server(&c.deployment)
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/tmp", "/work", "/etc/llmops/adapters"]);
    }

    #[test]
    fn the_server_args_follow_the_spec() {
        let c = children(
            "spec: {server: {dtype: bf16, maxBatch: 4, maxContext: 512, maxNewTokens: 64}}",
        );
        let container = server(&c.deployment);
        assert_eq!(
            container.image.as_deref(),
            Some("ghcr.io/llmops-dev/server:test")
        );
        assert_eq!(container.command, Some(vec!["server".to_string()]));
        assert_eq!(
            container.args.as_ref().unwrap().join(" "),
            "--model s3://models/chat-v1 --host 0.0.0.0 --port 8000 --served-model-name chat \
             --dtype bfloat16 --max-batch-size 4 --max-context 512 --max-new-tokens 64 \
             --max-queue 64 --shutdown-grace 25 \
             --adapters-file /etc/llmops/adapters/adapters.json"
        );
        let with_threads = children("spec: {server: {threads: 6}}");
        let args = server(&with_threads.deployment).args.clone().unwrap();
        assert_eq!(args[args.len() - 2..], ["--threads", "6"]);
        assert_eq!(args[9], "float32");
    }

    #[test]
    fn a_produced_models_digest_is_pinned_on_the_server() {
        let md = fixture("{}");
        let produced = model("s3://out/pt/model-0123456789abcdef", "sha256:0123");
        let args = build::server_args(&md, &produced);
        assert_eq!(args[args.len() - 2..], ["--model-digest", "sha256:0123"]);
        // A model named by URI alone has no digest to pin.
        let named = model("s3://models/chat-v1", "");
        assert!(!build::server_args(&md, &named).contains(&"--model-digest".to_string()));
    }

    #[test]
    fn probes_use_the_named_http_port() {
        let c = children("{}");
        let container = server(&c.deployment);
        let port = &container.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 8000)
        );
        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
            (
                get.path.clone().unwrap(),
                serde_json::to_value(&get.port).unwrap(),
            )
        };
        assert_eq!(
            path(&container.readiness_probe),
            ("/readyz".into(), "http".into())
        );
        assert_eq!(
            path(&container.liveness_probe),
            ("/healthz".into(), "http".into())
        );
        assert_eq!(
            path(&container.startup_probe),
            ("/readyz".into(), "http".into())
        );
    }

    fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).map(String::as_str)
    }

    #[test]
    fn the_queue_bound_follows_the_spec_and_defaults_to_64() {
        let c = children("spec: {server: {maxQueue: 8}}");
        let args = server(&c.deployment).args.clone().unwrap();
        assert_eq!(arg_after(&args, "--max-queue"), Some("8"));
        let c = children("{}");
        let args = server(&c.deployment).args.clone().unwrap();
        assert_eq!(arg_after(&args, "--max-queue"), Some("64"));
    }

    #[test]
    fn a_loading_model_gets_a_startup_probe_before_liveness_counts() {
        let c = children("{}");
        let startup = server(&c.deployment).startup_probe.clone().unwrap();
        let (period, failures) = (
            startup.period_seconds.unwrap(),
            startup.failure_threshold.unwrap(),
        );
        assert_eq!((period, failures), (5, 120));
        // As long as a rollout may take to progress by default: ten minutes of loading.
        assert_eq!(
            period * failures,
            llmops_crds::deployment::Rollout::default().progress_deadline_seconds
        );
        let liveness = server(&c.deployment).liveness_probe.clone().unwrap();
        assert!(
            period * failures
                > liveness.period_seconds.unwrap() * liveness.failure_threshold.unwrap()
        );
        // A longer progress deadline gets as long to load; a shorter one keeps
        // the ten minutes.
        let failures = |overlay: &str| {
            let c = children(overlay);
            let probe = server(&c.deployment).startup_probe.clone().unwrap();
            probe.period_seconds.unwrap() * probe.failure_threshold.unwrap()
        };
        assert_eq!(
            failures("spec: {rollout: {progressDeadlineSeconds: 1801}}"),
            1805
        );
        assert_eq!(
            failures("spec: {rollout: {progressDeadlineSeconds: 60}}"),
            600
        );
    }

    #[test]
    fn a_stopping_pod_leaves_the_endpoints_then_drains_within_its_grace_period() {
        let c = children("{}");
        let container = server(&c.deployment);
        let pre_stop = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .unwrap();
        // The image has no shell: a sleep action, not `exec sleep`.
        assert_eq!(pre_stop.exec, None);
        let sleep = pre_stop.sleep.as_ref().unwrap().seconds;
        assert_eq!(sleep, 5);
        let args = container.args.clone().unwrap();
        let grace: i64 = arg_after(&args, "--shutdown-grace")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(grace, 25);
        let period = pod_spec(&c.deployment)
            .termination_grace_period_seconds
            .unwrap();
        assert!(
            period > sleep + grace,
            "terminationGracePeriodSeconds {period} must exceed preStop {sleep} s + --shutdown-grace {grace} s"
        );
        let yaml = serde_json::to_value(container).unwrap();
        assert_eq!(yaml["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    }

    #[test]
    fn the_operator_pull_settings_reach_the_serving_pod() {
        let md = fixture("{}");
        let plain = build::build(&md, &resolved(&md), &OperatorConfig::example());
        assert_eq!(pod_spec(&plain.deployment).image_pull_secrets, None);
        assert_eq!(
            pod_spec(&plain.deployment).containers[0].image_pull_policy,
            None
        );

        let mut config = OperatorConfig::example();
        config.server_image_pull = crate::workload::image::ImagePull {
            policy: Some("IfNotPresent".into()),
            secrets: vec!["regcred".into(), "mirror".into()],
        };
        let c = build::build(&md, &resolved(&md), &config);
        let pod = pod_spec(&c.deployment);
        let secrets: Vec<_> = pod
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(secrets, ["regcred", "mirror"]);
        assert!(
            pod.containers
                .iter()
                .all(|c| c.image_pull_policy.as_deref() == Some("IfNotPresent"))
        );
    }

    #[test]
    fn the_api_key_and_credentials_come_only_from_secret_key_refs() {
        let md = fixture(
            "spec: {auth: {apiKeySecretRef: {name: chat-keys, key: keys}}, model: {credentialsSecretRef: {name: s3-creds}}}",
        );
        let c = build::build(&md, &resolved(&md), &OperatorConfig::example());
        let keys = env_var(&c.deployment, "LLMOPS_API_KEYS").unwrap();
        assert!(keys.value.is_none());
        let selector = keys
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str()),
            ("chat-keys", "keys")
        );
        assert_eq!(selector.optional, Some(false));
        assert_eq!(
            env_var(&c.deployment, "LLMOPS_MODEL_CREDENTIALS_SECRET")
                .and_then(|e| e.value.as_deref()),
            Some("s3-creds")
        );
        let cred = env_var(&c.deployment, "LLMOPS_CRED_S3_CREDS_AWS_ACCESS_KEY_ID").unwrap();
        assert!(cred.value.is_none());
        assert_eq!(
            cred.value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "s3-creds"
        );
        // Without auth there is no key variable at all.
        assert!(env_var(&children("{}").deployment, "LLMOPS_API_KEYS").is_none());
    }

    #[test]
    fn the_model_is_annotated_on_the_pod_template_so_a_new_one_rolls() {
        let md = fixture("{}");
        let one = build::build(
            &md,
            &model("s3://m/a", "sha256:1"),
            &OperatorConfig::example(),
        );
        let two = build::build(
            &md,
            &model("s3://m/a", "sha256:2"),
            &OperatorConfig::example(),
        );
        assert_ne!(
            one.deployment.spec.as_ref().unwrap().template,
            two.deployment.spec.as_ref().unwrap().template
        );
        assert_eq!(
            status::template_model(&one.deployment),
            Some(model("s3://m/a", "sha256:1").artifact)
        );
    }

    #[test]
    fn resources_and_scheduling_follow_the_spec() {
        let c = children(
            r#"
spec:
  resources: {gpus: 2, cpu: "4", memory: 16Gi}
  scheduling:
    nodeSelector: {llmops.dev/gpu: "true"}
    tolerations: [{key: gpu, operator: Exists, effect: NoSchedule}]
    priorityClassName: serving
"#,
        );
        let resources = server(&c.deployment).resources.clone().unwrap();
        let (requests, limits) = (resources.requests.unwrap(), resources.limits.unwrap());
        assert_eq!(requests, limits);
        assert_eq!(requests["nvidia.com/gpu"].0, "2");
        assert_eq!(requests["cpu"].0, "4");
        assert_eq!(requests["memory"].0, "16Gi");
        let pod = pod_spec(&c.deployment);
        assert_eq!(
            pod.node_selector.as_ref().unwrap()["llmops.dev/gpu"],
            "true"
        );
        assert_eq!(pod.tolerations.as_ref().unwrap().len(), 1);
        assert_eq!(pod.priority_class_name.as_deref(), Some("serving"));
        let custom = children("spec: {resources: {gpus: 1, gpuResourceName: amd.com/gpu}}");
        let requests = server(&custom.deployment)
            .resources
            .clone()
            .unwrap()
            .requests
            .unwrap();
        assert_eq!(requests["amd.com/gpu"].0, "1");
    }

    #[test]
    fn replicas_are_min_and_at_least_one_with_a_budget_above_one() {
        let c = children("spec: {replicas: {min: 3, max: 8}}");
        assert_eq!(c.deployment.spec.as_ref().unwrap().replicas, Some(3));
        let pdb = c.pdb.expect("a budget");
        assert_eq!(pdb.name_any(), "chat-server");
        assert_eq!(
            serde_json::to_value(&pdb.spec.unwrap().max_unavailable).unwrap(),
            1
        );
        assert!(children("{}").pdb.is_none());
        let zero =
            children("spec: {replicas: {min: 0, max: 2}, autoscaling: {scaleToZeroAfter: 10m}}");
        assert_eq!(zero.deployment.spec.as_ref().unwrap().replicas, Some(1));
    }

    #[test]
    fn the_service_targets_the_named_port() {
        let c = children("spec: {service: {type: NodePort, port: 8080}}");
        assert_eq!(c.service.name_any(), "chat");
        let spec = c.service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.port, 8080);
        assert_eq!(serde_json::to_value(&port.target_port).unwrap(), "http");
        assert_eq!(
            build::endpoint(&fixture("spec: {service: {port: 8080}}")),
            "http://chat.ml.svc:8080/v1"
        );
    }

    #[test]
    fn a_model_cache_claim_is_mounted_read_write_and_named_to_the_server() {
        let c = children("spec: {server: {modelCache: {claimName: models-rwx}}}");
        let volume = pod_spec(&c.deployment)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "model-cache")
            .expect("a model-cache volume");
        let claim = volume.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("models-rwx", Some(false))
        );
        let mount = server(&c.deployment)
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "model-cache")
            .expect("a model-cache mount");
        assert_eq!(mount.mount_path, llmops_contract::path::MODEL_CACHE);
        assert_ne!(mount.read_only, Some(true));
        assert_eq!(
            env_var(&c.deployment, llmops_contract::env::MODEL_CACHE_DIR)
                .and_then(|e| e.value.as_deref()),
            Some(llmops_contract::path::MODEL_CACHE)
        );
        // Without one, each pod downloads into its own scratch space.
        let plain = children("{}");
        assert!(env_var(&plain.deployment, llmops_contract::env::MODEL_CACHE_DIR).is_none());
        assert!(
            !pod_spec(&plain.deployment)
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == "model-cache")
        );
    }

    #[test]
    fn scratch_space_is_bounded() {
        let c = children("{}");
        let limits: Vec<(String, Option<String>)> = pod_spec(&c.deployment)
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                let dir = v.empty_dir.as_ref()?;
                Some((v.name.clone(), dir.size_limit.as_ref().map(|q| q.0.clone())))
            })
            .collect();
        assert_eq!(
            limits,
            [
                ("tmp".to_string(), Some("100Gi".to_string())),
                ("work".to_string(), Some("2Gi".to_string()))
            ]
        );
    }

    #[test]
    fn an_httproute_gets_one_service_per_revision() {
        let c = children(
            "spec: {rollout: {strategy: Canary, canary: {steps: [{weight: 10}], trafficRouting: {httpRoute: {name: chat}}}}}",
        );
        let services: Vec<(String, String)> = c
            .route_services
            .iter()
            .map(|s| {
                let selector = s.spec.as_ref().unwrap().selector.as_ref().unwrap();
                (s.name_any(), selector[build::REVISION_LABEL].clone())
            })
            .collect();
        assert_eq!(
            services,
            [
                ("chat-stable".to_string(), "stable".to_string()),
                ("chat-canary".to_string(), "canary".to_string())
            ]
        );
        assert!(children("{}").route_services.is_empty());
    }
}

mod status_tests {
    use super::*;
    use crate::runtime::status::ReportsStatus;

    /// The Deployment built for `uri`, with status `deployment_status` (YAML).
    fn live(uri: &str, deployment_status: &str) -> Deployment {
        let md = fixture("{}");
        let mut d =
            build::build(&md, &model(uri, "sha256:x"), &OperatorConfig::example()).deployment;
        d.metadata.generation = Some(2);
        d.status = Some(serde_yaml_ng::from_str(deployment_status).unwrap());
        d
    }

    fn serving(uri: &str) -> String {
        format!(
            "status: {{model: {{current: {{uri: {uri}, digest: 'sha256:x'}}}}, conditions: [{{type: Ready, status: 'True', reason: Serving, message: m, lastTransitionTime: '2026-01-01T00:00:00Z'}}]}}"
        )
    }

    const ROLLED_OUT: &str = "{observedGeneration: 2, replicas: 1, updatedReplicas: 1, readyReplicas: 1, availableReplicas: 1}";
    const ROLLING: &str = "{observedGeneration: 2, replicas: 2, updatedReplicas: 1, readyReplicas: 1, availableReplicas: 1}";
    const DEADLINE: &str = "{observedGeneration: 2, replicas: 2, updatedReplicas: 1, readyReplicas: 1, availableReplicas: 1, conditions: [{type: Progressing, status: 'False', reason: ProgressDeadlineExceeded}]}";

    fn aside(outcome: &Outcome) -> (&str, &str) {
        match outcome {
            Outcome::ReadyWhile {
                aside: Aside::Reconciling { reason, message } | Aside::Stalled { reason, message },
                ..
            } => (reason, message),
            other => panic!("not ready-while: {other:?}"),
        }
    }

    #[test]
    fn a_first_rollout_is_starting_then_ready_with_endpoint_and_replicas() {
        let md = fixture("{}");
        let starting = live(
            "s3://m/a",
            "{observedGeneration: 2, replicas: 1, updatedReplicas: 1}",
        );
        let o = status::observe(&md, &starting, "http://chat.ml.svc:80/v1".into());
        assert_eq!(message(&o.outcome).0, reason::STARTING);
        assert!(o.model.is_none());

        let o = status::observe(&md, &live("s3://m/a", ROLLED_OUT), "e".into());
        let (why, text) = message(&o.outcome);
        assert_eq!(why, reason::SERVING);
        assert_eq!(
            text,
            "serving s3://m/a (sha256:x) with 1 replica(s); no API key (spec.auth unset): reachable inside the cluster only"
        );
        let keyed = fixture("spec: {auth: {apiKeySecretRef: {name: keys, key: api-key}}}");
        let o = status::observe(&keyed, &live("s3://m/a", ROLLED_OUT), "e".into());
        assert_eq!(
            message(&o.outcome).1,
            "serving s3://m/a (sha256:x) with 1 replica(s)"
        );
        assert_eq!(
            o.replicas.as_ref().map(|r| (r.desired, r.ready)),
            Some((1, 1))
        );
        let served = o.model.unwrap();
        assert_eq!(served.current.unwrap().uri, "s3://m/a");
        assert!(served.previous.is_none());
        assert_eq!(o.endpoint.as_deref(), Some("e"));
    }

    #[test]
    fn a_range_of_replicas_says_what_the_autoscaler_did() {
        let md = fixture("spec: {replicas: {min: 1, max: 4}}");
        let note = "autoscaling on inFlightRequests (target 8 per replica, 1-4 replicas)";
        let o = status::observe_with(&md, &live("s3://m/a", ROLLED_OUT), "e".into(), Some(note));
        assert!(message(&o.outcome).1.contains(&format!("; {note}")));
        let fixed = status::observe(&fixture("{}"), &live("s3://m/a", ROLLED_OUT), "e".into());
        assert!(!message(&fixed.outcome).1.contains("autoscaling"));
    }

    #[test]
    fn a_pass_that_could_not_autoscale_says_when_it_resumes() {
        let md = fixture("spec: {replicas: {min: 2, max: 4}, autoscaling: {metric: queueDepth}}");
        let o = status::observe(&md, &live("s3://m/a", ROLLED_OUT), "e".into());
        let text = message(&o.outcome).1;
        assert!(
            text.contains("autoscaling on queueDepth resumes once the spec can be applied"),
            "{text}"
        );
    }

    #[test]
    fn while_a_new_model_rolls_out_the_old_one_keeps_ready() {
        let md = fixture(&serving("s3://m/old"));
        let o = status::observe(&md, &live("s3://m/new", ROLLING), "e".into());
        let (why, text) = aside(&o.outcome);
        assert_eq!(why, reason::ROLLING_OUT);
        assert!(text.starts_with("rolling out s3://m/new"), "{text}");
        assert!(matches!(
            o.outcome,
            Outcome::ReadyWhile {
                aside: Aside::Reconciling { .. },
                ..
            }
        ));
        assert_eq!(o.model.unwrap().current.unwrap().uri, "s3://m/old");
    }

    #[test]
    fn a_finished_rollout_moves_the_old_model_to_previous() {
        let md = fixture(&serving("s3://m/old"));
        let o = status::observe(&md, &live("s3://m/new", ROLLED_OUT), "e".into());
        assert!(matches!(o.outcome, Outcome::Ready { .. }));
        let served = o.model.unwrap();
        assert_eq!(served.current.unwrap().uri, "s3://m/new");
        assert_eq!(served.previous.unwrap().uri, "s3://m/old");
    }

    #[test]
    fn a_rollout_past_its_deadline_stalls_while_the_old_model_serves() {
        let md = fixture(&serving("s3://m/old"));
        let o = status::observe(&md, &live("s3://m/new", DEADLINE), "e".into());
        assert!(matches!(
            o.outcome,
            Outcome::ReadyWhile {
                aside: Aside::Stalled { .. },
                ..
            }
        ));
        let (why, text) = aside(&o.outcome);
        assert_eq!(why, reason::ROLLOUT_FAILED);
        assert!(
            text.contains("s3://m/new") && text.contains("s3://m/old (sha256:x) keeps serving"),
            "{text}"
        );
        assert_eq!(o.model.unwrap().current.unwrap().uri, "s3://m/old");
        assert_eq!(
            o.rollout.unwrap().phase,
            llmops_crds::deployment::RolloutPhase::Failed
        );
    }

    #[test]
    fn a_first_rollout_past_its_deadline_is_stalled() {
        let o = status::observe(&fixture("{}"), &live("s3://m/a", DEADLINE), "e".into());
        assert_eq!(message(&o.outcome).0, reason::ROLLOUT_FAILED);
        assert!(matches!(o.outcome, Outcome::Stalled { .. }));
    }

    #[test]
    fn waiting_for_a_new_model_keeps_the_old_one_ready() {
        let md = fixture(&serving("s3://m/old"));
        let waiting = Outcome::progressing(reason::WAITING_FOR_MODEL, "waiting for PretrainJob b");
        let o = status::without_apply(&md, waiting.clone(), Some(&live("s3://m/old", ROLLED_OUT)));
        assert_eq!(aside(&o.outcome).0, reason::WAITING_FOR_MODEL);
        // Nothing deployed: plain Ready=False.
        let o = status::without_apply(&fixture("{}"), waiting.clone(), None);
        assert_eq!(o.outcome, waiting);
    }

    #[test]
    fn the_same_pass_twice_writes_nothing() {
        let md = fixture("{}");
        let o = status::observe(&md, &live("s3://m/a", ROLLED_OUT), "e".into());
        let first = status::desired_status(&md, o.clone(), &now());
        let mut written = md.clone();
        ModelDeployment::record(written.status.get_or_insert_default(), first);
        let again = status::observe(&written, &live("s3://m/a", ROLLED_OUT), "e".into());
        let second = status::desired_status(&written, again, &now());
        assert!(!ModelDeployment::needs_write(
            written.status.as_ref(),
            &second
        ));
    }

    #[test]
    fn a_scale_is_recorded_and_kept_by_later_passes() {
        let md = fixture("spec: {replicas: {min: 1, max: 4}}");
        let mut o = status::observe(&md, &live("s3://m/a", ROLLED_OUT), "e".into());
        o.last_scale = Some((now(), "2 → 3".into()));
        let first = status::desired_status(&md, o, &now());
        assert_eq!(first.fields.last_scale_reason.as_deref(), Some("2 → 3"));
        let mut written = md.clone();
        ModelDeployment::record(written.status.get_or_insert_default(), first.clone());
        let again = status::observe(&written, &live("s3://m/a", ROLLED_OUT), "e".into());
        let second = status::desired_status(&written, again, &now());
        assert_eq!(second.fields.last_scale_time, first.fields.last_scale_time);
        assert_eq!(
            second.fields.last_scale_reason,
            first.fields.last_scale_reason
        );
        assert!(!ModelDeployment::needs_write(
            written.status.as_ref(),
            &second
        ));
    }
}

mod telemetry_tests {
    use super::*;
    use crate::workload::telemetry::stamp_deployment;
    use llmops_contract::TRACEPARENT_ANNOTATION;
    use llmops_telemetry::TraceParent;

    /// The stable Deployment of a pass: built, then stamped against the live one.
    fn pass(overlay: &str, live: Option<&Deployment>) -> Deployment {
        let md = fixture(overlay);
        let mut c = build::build(&md, &resolved(&md), &OperatorConfig::example());
        stamp_deployment(&md, &mut c.deployment, live, &[]);
        c.deployment
    }

    fn traceparent(d: &Deployment) -> Option<&str> {
        d.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(TRACEPARENT_ANNOTATION)
            .map(String::as_str)
    }

    #[test]
    fn a_new_generation_that_only_scales_leaves_the_template_as_it_runs() {
        let first = pass("{}", None);
        let trace = TraceParent::derived("9c1d-uid", 1).to_string();
        assert_eq!(traceparent(&first), Some(trace.as_str()));
        for overlay in [
            "metadata: {generation: 2}\nspec: {replicas: {min: 3, max: 3}}",
            "metadata: {generation: 3}\nspec: {replicas: {min: 1, max: 4}}",
        ] {
            let later = pass(overlay, Some(&first));
            assert_eq!(
                later.spec.as_ref().unwrap().template,
                first.spec.as_ref().unwrap().template,
                "{overlay}"
            );
        }
        let new_model = pass(
            "metadata: {generation: 4}\nspec: {model: {uri: \"s3://models/chat-v2\"}}",
            Some(&first),
        );
        let trace = TraceParent::derived("9c1d-uid", 4).to_string();
        assert_eq!(traceparent(&new_model), Some(trace.as_str()));
    }
}
