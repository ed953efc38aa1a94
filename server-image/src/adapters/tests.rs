//! Adapters beside the base model: requests for the base and two adapters
//! decoded in one batch get what each adapter merged into the base gives;
//! `/v1/models` lists them under the base; the watched file adds, replaces and
//! removes them live; a wrong digest or base is refused and reported.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode, header};
use llmops_model::{
    Config, Dtype, Family, GenerationConfig, LoraSettings, Model, Sampling, StopSequences, io, peft,
};
use llmops_store::{Credentials, MANIFEST_FILE, ModelManifest, digest_dir};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor, nn};
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::*;
use crate::api::{AppState, Limits, router};
use crate::chat::ChatTemplate;
use crate::engine::tests::tokenizer;
use crate::engine::{Engine, Event, Logprobs, Penalties, Request, TokenLogprob};
use crate::load::Served;

/// Within fp32 rounding of the same function computed two ways.
const TOL: f32 = 1e-4;

fn config() -> Config {
    let mut config = Config::default_for(Family::Llama);
    config.vocab_size = 64;
    config.hidden_size = 32;
    config.num_layers = 2;
    config.num_heads = 4;
    config.num_kv_heads = Some(2);
    config.intermediate_size = Some(64);
    config.max_position_embeddings = 128;
    config
}

/// Writes `manifest.json` over the files in `dir`; returns the digest.
fn publish(dir: &Path) -> String {
    let manifest = ModelManifest::new(&digest_dir(dir).unwrap());
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    manifest.digest
}

/// A base model and adapters on it, on disk.
struct Fixture {
    base: tempfile::TempDir,
    base_digest: String,
}

impl Fixture {
    fn new() -> Self {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), &config()).unwrap();
        let base = tempfile::tempdir().unwrap();
        io::save(
            base.path(),
            &vs,
            &model,
            &GenerationConfig::from_model_config(model.config()),
        )
        .unwrap();
        let base_digest = publish(base.path());
        Fixture { base, base_digest }
    }

    /// An adapter of `rank` on `targets`, its lineage naming `base_digest`,
    /// published with a manifest; returns its directory and digest.
    fn adapter(
        &self,
        rank: i64,
        targets: &[&str],
        seed: i64,
        base_digest: &str,
    ) -> (tempfile::TempDir, String) {
        let mut loaded = io::load(self.base.path(), Device::Cpu, Dtype::F32).unwrap();
        let settings = LoraSettings {
            rank,
            alpha: 16.0,
            dropout: 0.0,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        };
        loaded.model.add_lora(&loaded.vs, &settings).unwrap();
        tch::manual_seed(seed);
        tch::no_grad(|| {
            for (name, var) in loaded.vs.variables() {
                if name.ends_with("lora_B.weight") {
                    var.shallow_clone()
                        .copy_(&(Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * 0.5));
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        peft::save_adapter(dir.path(), &loaded.vs, &loaded.model, &settings, "base").unwrap();
        let lineage = json!({"kind": "FineTune", "lineage": {"baseModel": {
            "uri": format!("file://{}", self.base.path().display()), "digest": base_digest}}});
        std::fs::write(dir.path().join("llmops.json"), lineage.to_string()).unwrap();
        let digest = publish(dir.path());
        (dir, digest)
    }

    /// The base with `adapter` merged in (none: the base alone).
    fn merged(&self, adapter: Option<&Path>) -> Model {
        let mut loaded = io::load(self.base.path(), Device::Cpu, Dtype::F32).unwrap();
        if let Some(dir) = adapter {
            peft::load_adapter(dir, &mut loaded.model, &loaded.vs).unwrap();
            loaded.model.merge_lora().unwrap();
        }
        loaded.model
    }
}

fn request(prompt: &[i64], adapter: Option<u32>) -> (Request, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let request = Request {
        prompt: prompt.to_vec(),
        max_new_tokens: 8,
        sampling: Sampling::Greedy,
        seed: 0,
        stop: StopSequences::new(Vec::<String>::new()),
        logprobs: Logprobs {
            generated: Some(3),
            prompt: None,
        },
        penalties: Penalties::default(),
        adapter,
        events: tx,
    };
    (request, rx)
}

/// Every generated token's log-probability, in order.
async fn tokens(mut rx: mpsc::UnboundedReceiver<Event>) -> Vec<TokenLogprob> {
    let mut out = Vec::new();
    loop {
        match rx.recv().await.expect("the engine dropped the request") {
            Event::Token(t) => out.push(t),
            Event::Done(_) => return out,
            Event::Failed(e) => panic!("generation failed: {e}"),
            Event::Text(_) | Event::Prompt(_) => {}
        }
    }
}

fn engine(model: Model) -> Engine {
    Engine::start(
        model,
        tokenizer(),
        Vec::new(),
        8,
        64,
        Arc::new(Metrics::new()),
    )
}

fn assert_same(ours: &[TokenLogprob], merged: &[TokenLogprob], what: &str) {
    assert_eq!(ours.len(), merged.len(), "{what}: lengths differ");
    for (step, (a, b)) in ours.iter().zip(merged).enumerate() {
        assert_eq!(a.token, b.token, "{what}: token {step} differs");
        assert!(
            (a.logprob - b.logprob).abs() < TOL,
            "{what}: step {step} logprob {} vs merged {}",
            a.logprob,
            b.logprob
        );
        for ((ta, la), (tb, lb)) in a.top.iter().zip(&b.top) {
            assert_eq!(ta, tb, "{what}: step {step} top tokens differ");
            assert!((la - lb).abs() < TOL, "{what}: step {step} top logprobs");
        }
    }
}

#[tokio::test]
async fn base_and_two_adapters_decoded_in_one_batch_equal_each_adapter_merged() {
    let fixture = Fixture::new();
    let (a1, _) = fixture.adapter(4, &["q_proj", "v_proj"], 1, &fixture.base_digest);
    let (a2, _) = fixture.adapter(2, &["o_proj", "down_proj"], 2, &fixture.base_digest);
    let served = engine(fixture.merged(None));
    served
        .attach_adapter(1, PeftAdapter::read(a1.path()).unwrap())
        .await
        .unwrap();
    served
        .attach_adapter(2, PeftAdapter::read(a2.path()).unwrap())
        .await
        .unwrap();

    // Submitted together, so they are prefilled as one batch and decoded in
    // the same steps: base, adapter 1, adapter 2, adapter 1 again.
    let prompt = [3, 14, 15, 9, 26];
    let routes = [None, Some(1), Some(2), Some(1)];
    let prompts = [&prompt[..], &prompt[..], &prompt[..], &[5, 3, 5][..]];
    let (requests, receivers): (Vec<_>, Vec<_>) = prompts
        .iter()
        .zip(routes)
        .map(|(p, r)| request(p, r))
        .unzip();
    served.submit_all(requests).unwrap();
    let mut together = Vec::new();
    for rx in receivers {
        together.push(tokens(rx).await);
    }

    let references = [
        fixture.merged(None),
        fixture.merged(Some(a1.path())),
        fixture.merged(Some(a2.path())),
    ];
    let mut alone = Vec::new();
    for model in references {
        let engine = engine(model);
        let mut answers = Vec::new();
        for p in [&prompt[..], &[5, 3, 5][..]] {
            let (r, rx) = request(p, None);
            engine.submit(r).unwrap();
            answers.push(tokens(rx).await);
        }
        alone.push(answers);
    }
    assert_same(&together[0], &alone[0][0], "base");
    assert_same(&together[1], &alone[1][0], "adapter 1");
    assert_same(&together[2], &alone[2][0], "adapter 2");
    assert_same(&together[3], &alone[1][1], "adapter 1, second prompt");
    // The adapters do change the answers, so the comparison means something.
    for adapter in [1, 2] {
        let differs = together[adapter]
            .iter()
            .zip(&together[0])
            .any(|(a, b)| a.token != b.token || (a.logprob - b.logprob).abs() > 1e-2);
        assert!(differs, "adapter {adapter} answers as the base does");
    }
}

/// The API and the loader of a server of the fixture's base, named `tiny`.
fn server(fixture: &Fixture, metrics: Arc<Metrics>) -> (Router, Loader) {
    let state = Arc::new(AppState::new(
        Vec::new(),
        metrics.clone(),
        Limits::default(),
    ));
    let served = Arc::new(Served {
        name: "tiny".into(),
        tokenizer: tokenizer(),
        chat: ChatTemplate::new(None, String::new(), String::new()).unwrap(),
        context_length: 128,
        max_new_tokens: usize::MAX,
        generation: Default::default(),
        created: 0,
        engine: engine(fixture.merged(None)),
    });
    state.served.set(served.clone()).unwrap();
    let loader = Loader {
        adapters: state.adapters.clone(),
        served,
        credentials: Credentials::from_secret(None),
        base_digest: Some(fixture.base_digest.clone()),
        metrics,
    };
    (router(state), loader)
}

async fn call(app: &Router, request: HttpRequest<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn models(app: &Router) -> Vec<(String, Value)> {
    let (status, body) = call(
        app,
        HttpRequest::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().to_string(), m["parent"].clone()))
        .collect()
}

/// A greedy completion for `model`: (status, body).
async fn complete(app: &Router, model: &str) -> (StatusCode, Value) {
    let body = json!({"model": model, "prompt": "w3 w14 w15", "max_tokens": 6,
        "temperature": 0, "logprobs": 1});
    let request = HttpRequest::post("/v1/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, text) = call(app, request).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn metrics_text(app: &Router) -> String {
    call(
        app,
        HttpRequest::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await
    .1
}

/// Waits until `/v1/models` lists exactly `want` (base first).
async fn until_listed(app: &Router, want: &[&str]) {
    for _ in 0..200 {
        let ids: Vec<String> = models(app).await.into_iter().map(|(id, _)| id).collect();
        if ids == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/v1/models never listed {want:?}: {:?}", models(app).await);
}

fn spec(name: &str, dir: &Path, digest: &str) -> Value {
    json!({"name": name, "uri": format!("file://{}", dir.display()), "digest": digest})
}

#[tokio::test]
async fn the_watched_file_adds_and_removes_adapters_while_serving() {
    let fixture = Fixture::new();
    let (a1, d1) = fixture.adapter(4, &["q_proj", "v_proj"], 1, &fixture.base_digest);
    let (a2, d2) = fixture.adapter(2, &["gate_proj", "up_proj"], 2, &fixture.base_digest);
    let metrics = Arc::new(Metrics::new());
    let (app, loader) = server(&fixture, metrics);
    let file_dir = tempfile::tempdir().unwrap();
    let file = file_dir.path().join("adapters.json");
    tokio::spawn(watch(file.clone(), Duration::from_millis(50), loader));

    // No file yet: the base alone, with no parent.
    until_listed(&app, &["tiny"]).await;
    assert_eq!(models(&app).await[0].1, Value::Null);
    let (status, base) = complete(&app, "tiny").await;
    assert_eq!(status, StatusCode::OK, "{base}");
    let (status, body) = complete(&app, "support").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`support`")
    );

    std::fs::write(
        &file,
        json!({"adapters": [spec("support", a1.path(), &d1)]}).to_string(),
    )
    .unwrap();
    until_listed(&app, &["tiny", "support"]).await;
    assert_eq!(models(&app).await[1].1, json!("tiny"));
    let (status, support) = complete(&app, "support").await;
    assert_eq!(status, StatusCode::OK, "{support}");
    assert_eq!(support["model"], "support");
    assert_ne!(
        support["choices"][0]["logprobs"], base["choices"][0]["logprobs"],
        "the adapter answers as the base does"
    );
    let text = metrics_text(&app).await;
    assert!(
        text.contains(&format!(
            "llmops_server_adapter_loaded{{adapter=\"support\",digest=\"{d1}\"}} 1"
        )),
        "{text}"
    );

    // A second adapter joins; the first keeps serving the same answers.
    std::fs::write(
        &file,
        json!({"adapters": [spec("support", a1.path(), &d1), spec("legal", a2.path(), &d2)]})
            .to_string(),
    )
    .unwrap();
    until_listed(&app, &["tiny", "legal", "support"]).await;
    let (_, again) = complete(&app, "support").await;
    assert_eq!(again["choices"], support["choices"]);
    let (status, legal) = complete(&app, "legal").await;
    assert_eq!(status, StatusCode::OK, "{legal}");

    // The first goes: 404 for it, the second unchanged.
    std::fs::write(
        &file,
        json!({"adapters": [spec("legal", a2.path(), &d2)]}).to_string(),
    )
    .unwrap();
    until_listed(&app, &["tiny", "legal"]).await;
    assert_eq!(complete(&app, "support").await.0, StatusCode::NOT_FOUND);
    assert_eq!(complete(&app, "legal").await.1["choices"], legal["choices"]);
    assert!(!metrics_text(&app).await.contains("adapter=\"support\""));
}

#[tokio::test]
async fn an_adapter_with_a_wrong_digest_or_base_is_refused_and_reported() {
    let fixture = Fixture::new();
    let (good, digest) = fixture.adapter(4, &["q_proj"], 1, &fixture.base_digest);
    let (other_base, other_digest) = fixture.adapter(4, &["q_proj"], 1, "sha256:0123");
    let (app, loader) = server(&fixture, Arc::new(Metrics::new()));
    let wrong = "sha256:".to_string() + &"0".repeat(64);
    let file = AdaptersFile::parse(
        &json!({"adapters": [
            spec("pinned-wrong", good.path(), &wrong),
            spec("other-base", other_base.path(), &other_digest),
            spec("ok", good.path(), &digest),
        ]})
        .to_string(),
        "tiny",
    )
    .unwrap();
    loader.apply(&file).await;
    let states = loader.adapters.states();
    assert_eq!(states["ok"], State::Loaded);
    let State::Failed(why) = &states["pinned-wrong"] else {
        panic!("{states:?}")
    };
    assert!(why.contains(&wrong), "{why}");
    let State::Failed(why) = &states["other-base"] else {
        panic!("{states:?}")
    };
    assert!(
        why.contains("sha256:0123") && why.contains(&fixture.base_digest),
        "{why}"
    );
    until_listed(&app, &["tiny", "ok"]).await;
    let text = metrics_text(&app).await;
    assert!(
        text.contains(&format!(
            "llmops_server_adapter_loaded{{adapter=\"pinned-wrong\",digest=\"{wrong}\"}} 0"
        )),
        "{text}"
    );
    // Still serving what loaded, while the others wait for a retry.
    assert_eq!(complete(&app, "ok").await.0, StatusCode::OK);
}

#[test]
fn the_adapters_file_is_checked_naming_the_entry() {
    let parse = |v: Value| AdaptersFile::parse(&v.to_string(), "tiny");
    let uri = "file:///a";
    assert_eq!(parse(json!({})).unwrap().adapters, vec![]);
    assert_eq!(
        AdaptersFile::parse("  ", "tiny").unwrap(),
        AdaptersFile::default()
    );
    let err = parse(json!({"adapters": [{"name": "a b", "uri": uri}]})).unwrap_err();
    assert!(err.contains("adapters[0].name"), "{err}");
    let err = parse(json!({"adapters": [{"name": "tiny", "uri": uri}]})).unwrap_err();
    assert!(err.contains("base model"), "{err}");
    let err = parse(json!({"adapters": [{"name": "a", "uri": uri}, {"name": "a", "uri": uri}]}))
        .unwrap_err();
    assert!(
        err.contains("adapters[1].name") && err.contains("twice"),
        "{err}"
    );
    let err = parse(json!({"adapters": [{"name": "a"}]})).unwrap_err();
    assert!(err.contains("uri"), "{err}");
}

#[tokio::test]
async fn a_request_for_an_adapter_detached_meanwhile_fails_instead_of_getting_the_base() {
    let fixture = Fixture::new();
    let (dir, _) = fixture.adapter(4, &["q_proj"], 1, &fixture.base_digest);
    let served = engine(fixture.merged(None));
    served
        .attach_adapter(1, PeftAdapter::read(dir.path()).unwrap())
        .await
        .unwrap();
    let (r, rx) = request(&[3, 4], Some(1));
    served.submit(r).unwrap();
    assert_eq!(tokens(rx).await.len(), 8);

    served.detach_adapter(1);
    // One pass of the engine's loop later the adapter is gone (nothing uses it).
    let (r, rx) = request(&[3, 4], None);
    served.submit(r).unwrap();
    tokens(rx).await;
    for id in [1, 7] {
        let (r, mut rx) = request(&[3, 4], Some(id));
        served.submit(r).unwrap();
        match rx.recv().await {
            Some(Event::Failed(message)) => {
                assert_eq!(message, crate::engine::ADAPTER_UNLOADED)
            }
            other => panic!("adapter {id}: {other:?}"),
        }
    }
}
