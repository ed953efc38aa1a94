//! The pods built for `spec.server.runtime: vllm`, and the specs refused.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use llmops_crds::{Artifact, ModelDeployment};

use super::super::build::{self, MODEL_DIGEST_ANNOTATION, SERVER_PORT};
use super::super::resolve::Model;
use super::super::validate::validate;
use super::*;
use crate::config::OperatorConfig;
use crate::test_support::with_overlay;

const VLLM: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: ModelDeployment
metadata: {name: big, namespace: ml, uid: 7b-uid, generation: 1}
spec:
  model: {uri: "s3://models/big"}
  server: {runtime: vllm, dtype: bf16, maxBatch: 64, maxContext: 8192, maxNewTokens: 512}
  resources: {gpus: 4, cpu: "8", memory: 64Gi}
  auth: {apiKeySecretRef: {name: keys, key: api-key}}
"#;

fn fixture(overlay: &str) -> ModelDeployment {
    with_overlay(VLLM, overlay)
}

fn model() -> Model {
    Model {
        artifact: Artifact {
            uri: "s3://models/big".into(),
            digest: "sha256:b16".into(),
        },
        credentials_secret: Some("model-store".into()),
    }
}

fn pod_of(md: &ModelDeployment, model: &Model) -> PodSpec {
    let children = build::build(md, model, &OperatorConfig::example());
    children.deployment.spec.unwrap().template.spec.unwrap()
}

fn containers(pod: &PodSpec) -> (&Container, &Container) {
    let [server] = pod.containers.as_slice() else {
        panic!("one container: {:?}", pod.containers)
    };
    let [fetch] = pod.init_containers.as_deref().unwrap() else {
        panic!("one init container: {:?}", pod.init_containers)
    };
    (server, fetch)
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).map(String::as_str)
}

fn mount_path<'a>(c: &'a Container, volume: &str) -> Option<&'a str> {
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume)
        .map(|m| m.mount_path.as_str())
}

#[test]
fn vllm_serves_the_fetched_model_tensor_parallel_over_every_gpu() {
    let md = fixture("{}");
    let pod = pod_of(&md, &model());
    let (server, _) = containers(&pod);
    assert_eq!(server.image.as_deref(), Some("vllm/vllm-openai:test"));
    assert_eq!(
        server.command.as_deref().unwrap(),
        ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    );
    let args = server.args.as_deref().unwrap();
    for (name, value) in [
        ("--model", MODEL_DIR),
        ("--served-model-name", "big"),
        ("--port", &SERVER_PORT.to_string()),
        ("--tensor-parallel-size", "4"),
        ("--dtype", "bfloat16"),
        ("--max-model-len", "8192"),
        ("--max-num-seqs", "64"),
        ("--override-generation-config", "{\"max_new_tokens\": 512}"),
    ] {
        assert_eq!(flag(args, name), Some(value), "{name} in {args:?}");
    }
    // The GPUs are vLLM's; all four of them.
    let limits = server.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["nvidia.com/gpu"].0, "4");
    assert_eq!(limits["memory"].0, "64Gi");
}

#[test]
fn the_api_key_reaches_vllm_only_from_the_secret() {
    let pod = pod_of(&fixture("{}"), &model());
    let (server, fetch) = containers(&pod);
    let key = server
        .env
        .iter()
        .flatten()
        .find(|e| e.name == API_KEY_ENV)
        .expect("VLLM_API_KEY");
    assert_eq!(key.value, None);
    let selector = key
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (
            selector.name.as_str(),
            selector.key.as_str(),
            selector.optional
        ),
        ("keys", "api-key", Some(false))
    );
    // Never on the command line, never in the fetch.
    assert!(!server.args.iter().flatten().any(|a| a.contains("api-key")));
    assert!(!fetch.env.iter().flatten().any(|e| e.name == API_KEY_ENV));
    // Without spec.auth there is no key at all.
    let open = pod_of(&fixture("{spec: {auth: null}}"), &model());
    assert!(
        !containers(&open)
            .0
            .env
            .iter()
            .flatten()
            .any(|e| e.name == API_KEY_ENV)
    );
}

#[test]
fn the_trainer_fetches_the_pinned_model_with_the_store_credentials_and_no_gpu() {
    let pod = pod_of(&fixture("{}"), &model());
    let (server, fetch) = containers(&pod);
    assert_eq!(fetch.name, FETCH_CONTAINER);
    assert_eq!(
        fetch.image.as_deref(),
        Some("ghcr.io/llmops-dev/trainer:test")
    );
    assert_eq!(fetch.command.as_deref().unwrap(), ["trainer"]);
    assert_eq!(
        fetch.args.as_deref().unwrap(),
        [
            "fetch-model",
            "--uri",
            "s3://models/big",
            "--dest",
            MODEL_DIR,
            "--digest",
            "sha256:b16"
        ]
    );
    let env: Vec<&str> = fetch
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert!(env.contains(&build::CREDENTIALS_SECRET_ENV), "{env:?}");
    assert!(env.iter().any(|e| e.starts_with("LLMOPS_CRED_")), "{env:?}");
    // vLLM gets none of the store's credentials.
    assert!(
        !server
            .env
            .iter()
            .flatten()
            .any(|e| e.name.starts_with("LLMOPS_CRED_") || e.name == build::CREDENTIALS_SECRET_ENV)
    );
    let requests = fetch.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(
        requests.keys().collect::<Vec<_>>(),
        ["cpu", "memory"],
        "the fetch holds no GPU"
    );
    // Both see the model at the same place; vLLM cannot change it.
    assert_eq!(mount_path(fetch, "models"), Some("/models"));
    assert_eq!(mount_path(server, "models"), Some("/models"));
    let server_models = server
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "models")
        .unwrap();
    assert_eq!(server_models.read_only, Some(true));
}

#[test]
fn a_model_without_digest_is_fetched_unpinned_and_the_status_reads_its_credentials() {
    let named = Model {
        artifact: Artifact {
            uri: "hf://org/big@main".into(),
            digest: String::new(),
        },
        credentials_secret: Some("hub".into()),
    };
    let md = fixture("{}");
    let deployment = build::build(&md, &named, &OperatorConfig::example()).deployment;
    let pod = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    assert!(
        !containers(&pod)
            .1
            .args
            .iter()
            .flatten()
            .any(|a| a == "--digest")
    );
    // What the Deployment serves is read back from it as for the built-in server.
    assert_eq!(build::served_model(&deployment), Some(named));
    let annotations = deployment
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(annotations[MODEL_DIGEST_ANNOTATION], "");
}

#[test]
fn probes_are_on_vllms_health_at_the_named_port() {
    let md = fixture("{spec: {rollout: {progressDeadlineSeconds: 1800}}}");
    let pod = pod_of(&md, &model());
    let (server, _) = containers(&pod);
    for probe in [
        &server.startup_probe,
        &server.readiness_probe,
        &server.liveness_probe,
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/health"));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into())
        );
    }
    // Loading a big model may take the whole progress deadline.
    assert_eq!(
        server.startup_probe.as_ref().unwrap().failure_threshold,
        Some(1800 / 5)
    );
    let port = &server.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("http"), SERVER_PORT)
    );
    assert!(server.lifecycle.as_ref().unwrap().pre_stop.is_some());
}

#[test]
fn the_pod_is_restricted_with_writable_home_tmp_and_shared_memory() {
    let pod = pod_of(&fixture("{}"), &model());
    let (server, fetch) = containers(&pod);
    let pod_security = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false));
    for c in [server, fetch] {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(mount_path(c, "work"), Some("/work"));
        assert_eq!(mount_path(c, "tmp"), Some("/tmp"));
    }
    assert!(
        server
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "HOME" && e.value.as_deref() == Some("/work"))
    );
    assert_eq!(mount_path(server, "shm"), Some("/dev/shm"));
    assert_eq!(mount_path(fetch, "shm"), None);
    let shm = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "shm")
        .and_then(|v| v.empty_dir.as_ref())
        .unwrap();
    assert_eq!(shm.medium.as_deref(), Some("Memory"));
    assert_eq!(shm.size_limit.as_ref().unwrap().0, SHM_SIZE);
    // The built-in server's adapters ConfigMap is not vLLM's.
    assert!(mount_path(server, "adapters").is_none());
}

#[test]
fn the_model_cache_and_a_pvc_model_are_mounted_alike_in_both_containers() {
    let md = fixture("{spec: {server: {modelCache: {claimName: shared-models}}}}");
    let on_claim = Model {
        artifact: Artifact {
            uri: "pvc://weights/big".into(),
            digest: "sha256:b16".into(),
        },
        credentials_secret: None,
    };
    let pod = pod_of(&md, &on_claim);
    let (server, fetch) = containers(&pod);
    assert!(fetch.env.iter().flatten().any(|e| {
        e.name == llmops_contract::env::MODEL_CACHE_DIR
            && e.value.as_deref() == Some(llmops_contract::path::MODEL_CACHE)
    }));
    for volume in ["model-cache", "pvc-0"] {
        let (a, b) = (mount_path(server, volume), mount_path(fetch, volume));
        assert!(a.is_some() && a == b, "{volume}: {a:?} vs {b:?}");
    }
    let cache = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "model-cache")
            .unwrap()
            .read_only
    };
    assert_eq!(cache(fetch), None, "the fetch adds to the cache");
    assert_eq!(cache(server), Some(true));
    let claims: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
        .collect();
    assert_eq!(claims, ["weights", "shared-models"]);
}

#[test]
fn the_builtin_server_refuses_idle_gpus_naming_the_field() {
    let md: ModelDeployment = with_overlay(
        VLLM,
        "{spec: {server: {runtime: builtin}, resources: {gpus: 2}}}",
    );
    let refused = validate(&md, false).unwrap_err();
    assert_eq!(refused.field, "spec.resources.gpus");
    assert!(refused.message.contains("spec.server.runtime: vllm"));
    assert!(refused.message.contains("1 of the 2 GPUs idle"));
    // One GPU, or none, is the built-in server's.
    for gpus in [0, 1] {
        let md: ModelDeployment = with_overlay(
            VLLM,
            &format!("{{spec: {{server: {{runtime: builtin}}, resources: {{gpus: {gpus}}}}}}}"),
        );
        assert_eq!(validate(&md, false), Ok(()));
    }
    assert_eq!(validate(&fixture("{}"), false), Ok(()));
}

#[test]
fn vllm_without_a_gpu_with_adapters_or_threads_is_refused_naming_the_field() {
    for (overlay, field) in [
        ("{spec: {resources: {gpus: 0}}}", "spec.resources.gpus"),
        (
            "{spec: {adapters: [{name: support, uri: \"s3://a/support\"}]}}",
            "spec.adapters",
        ),
        ("{spec: {server: {threads: 4}}}", "spec.server.threads"),
    ] {
        let refused = validate(&fixture(overlay), false).unwrap_err();
        assert_eq!(refused.field, field, "{overlay}");
    }
}

#[test]
fn the_builtin_runtime_is_the_default_and_unchanged() {
    let md: ModelDeployment = with_overlay(
        VLLM,
        "{spec: {server: {runtime: null}, resources: {gpus: 1}}}",
    );
    assert_eq!(
        md.spec.server.runtime,
        llmops_crds::deployment::ServerRuntime::Builtin
    );
    let pod = pod_of(&md, &model());
    assert!(pod.init_containers.is_none());
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("ghcr.io/llmops-dev/server:test")
    );
}

#[test]
fn a_new_model_rolls_vllm_pods_and_a_canary_runs_vllm_too() {
    let md = fixture("{}");
    let config = OperatorConfig::example();
    let next = Model {
        artifact: Artifact {
            uri: "s3://models/big-v2".into(),
            digest: "sha256:b17".into(),
        },
        credentials_secret: Some("model-store".into()),
    };
    let old = build::build(&md, &model(), &config).deployment;
    let new = build::build(&md, &next, &config).deployment;
    let template = |d: &k8s_openapi::api::apps::v1::Deployment| d.spec.clone().unwrap().template;
    // Another template: the Deployment rolls its pods (maxUnavailable 0).
    assert_ne!(template(&old), template(&new));
    let pod = template(&new).spec.unwrap();
    assert_eq!(
        flag(containers(&pod).1.args.as_deref().unwrap(), "--uri"),
        Some("s3://models/big-v2")
    );
    let canary = build::build_canary(&md, &next, &config, 1);
    let pod = template(&canary).spec.unwrap();
    let (server, fetch) = containers(&pod);
    assert_eq!(server.image.as_deref(), Some("vllm/vllm-openai:test"));
    assert_eq!(
        flag(fetch.args.as_deref().unwrap(), "--digest"),
        Some("sha256:b17")
    );
    assert_eq!(build::served_model(&canary), Some(next));
}

#[test]
fn the_fetch_gets_the_hub_mirror_and_span_export_the_operator_passes_on() {
    let config = OperatorConfig {
        pod_export_env: vec![
            ("HF_ENDPOINT".into(), "https://hub.internal".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                "http://collector:4317".into(),
            ),
        ],
        ..OperatorConfig::example()
    };
    let children = build::build(&fixture("{}"), &model(), &config);
    let pod = children.deployment.spec.unwrap().template.spec.unwrap();
    let (_, fetch) = containers(&pod);
    let value = |name: &str| {
        fetch
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        value("HF_ENDPOINT").as_deref(),
        Some("https://hub.internal")
    );
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://collector:4317")
    );
}
