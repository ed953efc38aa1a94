//! The shapes of log-probabilities, `echo`, `n` and their refusals through the
//! router, on the engine's tiny model (words `w0`..`w63`).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, Limits, router};
use crate::chat::ChatTemplate;
use crate::engine::Engine;
use crate::engine::tests::{tiny_model, tokenizer};
use crate::load::Served;
use crate::metrics::Metrics;

fn app() -> Router {
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::start(
        tiny_model(),
        tokenizer(),
        Vec::new(),
        8,
        64,
        metrics.clone(),
    );
    let state = Arc::new(AppState::new(Vec::new(), metrics, Limits::default()));
    let served = Served {
        name: "tiny".into(),
        tokenizer: tokenizer(),
        chat: ChatTemplate::new(None, String::new(), String::new()).unwrap(),
        context_length: 128,
        max_new_tokens: usize::MAX,
        generation: Default::default(),
        created: 0,
        engine,
    };
    state.served.set(Arc::new(served)).unwrap();
    router(state)
}

async fn post(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let request = HttpRequest::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn echo_with_logprobs_scores_the_prompt_then_the_completion() {
    let app = app();
    let (status, body) = post(
        &app,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "w1 w2 w3", "max_tokens": 2, "temperature": 0,
               "logprobs": 2, "echo": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let choice = &body["choices"][0];
    let text = choice["text"].as_str().unwrap();
    assert!(text.starts_with("w1 w2 w3"), "{text}");
    let lp = &choice["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 5);
    assert_eq!(&tokens[..3], ["w1", "w2", "w3"]);
    assert_eq!(lp["token_logprobs"][0], Value::Null);
    assert_eq!(lp["top_logprobs"][0], Value::Null);
    for i in 1..5 {
        let logprob = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(logprob <= 0.0, "{lp}");
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(top.len(), 2, "{lp}");
        assert!(top.values().all(|v| v.as_f64().unwrap() <= 0.0), "{lp}");
    }
    // Greedy: each generated token is the most likely one.
    for i in 3..5 {
        let best = lp["top_logprobs"][i]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(lp["token_logprobs"][i].as_f64().unwrap(), best);
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(&offsets[..3], [0, 2, 4]);
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["completion_tokens"], 2);

    // max_tokens 0: the prompt's log-likelihood only, the same numbers.
    let (status, zero) = post(
        &app,
        "/v1/completions",
        json!({"model": "tiny", "prompt": [[1, 2, 3]], "max_tokens": 0, "logprobs": 0,
               "echo": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{zero}");
    let choice = &zero["choices"][0];
    assert_eq!(choice["text"], "w1 w2 w3");
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(
        choice["logprobs"]["token_logprobs"],
        json!([null, lp["token_logprobs"][1], lp["token_logprobs"][2]])
    );
    assert_eq!(choice["logprobs"]["top_logprobs"][1], json!({}));
    assert_eq!(zero["usage"]["completion_tokens"], 0);
}

#[tokio::test]
async fn logprobs_without_echo_start_after_the_prompt() {
    let (status, body) = post(
        &app(),
        "/v1/completions",
        json!({"model": "tiny", "prompt": "w1 w2", "max_tokens": 3, "temperature": 0,
               "logprobs": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lp = &body["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
    assert!(lp["token_logprobs"][0].is_f64(), "{lp}");
    // Offsets into the prompt followed by the completion.
    assert_eq!(lp["text_offset"][0], 5);
}

#[tokio::test]
async fn chat_logprobs_list_each_token_with_its_alternatives() {
    let (status, body) = post(
        &app(),
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": [{"role": "user", "content": "w5 w6"}],
               "max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 4}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(content.len(), 3);
    for entry in content {
        let token = entry["token"].as_str().unwrap();
        assert_eq!(entry["bytes"], json!(token.as_bytes()));
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 4);
        assert_eq!(top[0]["logprob"], entry["logprob"], "greedy: {entry}");
        assert!(top[0]["bytes"].is_array());
    }
}

#[tokio::test]
async fn n_answers_each_prompt_several_times() {
    let app = app();
    let (status, body) = post(
        &app,
        "/v1/completions",
        json!({"model": "tiny", "prompt": ["w1 w2", "w3"], "max_tokens": 4, "n": 3,
               "seed": 5, "temperature": 1.5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 6);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    // Each choice its own sample: at this temperature they differ.
    let texts: std::collections::HashSet<&str> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert!(texts.len() > 1, "{body}");
    // The prompt tokens count once per prompt.
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["completion_tokens"], 24);
    // Too many choices for the request's bound.
    let (status, body) = post(
        &app,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": [{"role": "user", "content": "w1"}], "n": 17}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "n");
}

#[tokio::test]
async fn refusals_name_the_parameter() {
    let app = app();
    let cases = [
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "w1", "logprobs": 1, "stream": true}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "w1", "logit_bias": {"64": 1}}),
            "logit_bias",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "w1", "n": 9, "max_tokens": 1,
                   "prompt": ["w1", "w2"]}),
            "n",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"role": "user", "content": "w1"}],
                   "logprobs": true, "stream": true}),
            "logprobs",
        ),
    ];
    for (path, request, param) in cases {
        let (status, body) = post(&app, path, request.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        assert_eq!(body["error"]["param"], param, "{request}: {body}");
    }
}
