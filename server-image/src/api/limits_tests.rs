//! The overload answers through the router: a full queue (429 with
//! `Retry-After`), a body above the limit (413), too many prompts (400), a
//! request past its time (504, or a stream's error event, its generation
//! dropped), a diverged model (500, or a stream's error event), and draining.
//! Each is an OpenAI error body.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request as HttpRequest, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::{AppState, Limits, router};
use crate::chat::ChatTemplate;
use crate::engine::tests::{nan_model, tokenizer};
use crate::engine::{Engine, Event, Finish, FinishReason, Request};
use crate::load::Served;
use crate::metrics::Metrics;

fn served(engine: Engine) -> Served {
    Served {
        name: "tiny".into(),
        tokenizer: tokenizer(),
        chat: ChatTemplate::new(None, String::new(), String::new()).unwrap(),
        context_length: 128,
        max_new_tokens: usize::MAX,
        generation: Default::default(),
        created: 0,
        engine,
    }
}

fn app(limits: Limits, engine: Engine, metrics: Arc<Metrics>) -> (Router, Arc<AppState>) {
    let state = Arc::new(AppState::new(Vec::new(), metrics, limits));
    state.served.set(Arc::new(served(engine))).unwrap();
    (router(state.clone()), state)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(app: &Router, request: HttpRequest<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn post(app: &Router, path: &str, body: impl Into<Body>) -> Answer {
    let request = HttpRequest::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap();
    send(app, request).await
}

fn completion(prompt: Value, stream: bool) -> String {
    json!({"model": "tiny", "prompt": prompt, "max_tokens": 3, "stream": stream}).to_string()
}

/// The `error` object of an OpenAI error body, checked for its four fields.
fn error(answer: &Answer) -> serde_json::Map<String, Value> {
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/json",
        "{}",
        answer.body
    );
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    let error = body["error"].as_object().unwrap().clone();
    for key in ["message", "type", "param", "code"] {
        assert!(error.contains_key(key), "error.{key}: {body}");
    }
    error
}

/// The `error` object of a stream's error event; the stream has no `[DONE]`.
fn stream_error(answer: &Answer) -> serde_json::Map<String, Value> {
    assert_eq!(answer.status, StatusCode::OK);
    assert!(!answer.body.contains("[DONE]"), "{}", answer.body);
    let last = answer
        .body
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let event: Value = serde_json::from_str(last).unwrap();
    event["error"].as_object().unwrap().clone()
}

/// Answers a request as the engine would: one piece of text, then done.
fn answer(request: Request) {
    let _ = request.events.send(Event::Text("w1 w2".into()));
    let _ = request.events.send(Event::Done(Finish {
        reason: FinishReason::Length,
        prompt_tokens: request.prompt.len(),
        completion_tokens: 2,
    }));
}

fn limits() -> Limits {
    Limits::default()
}

#[tokio::test]
async fn a_full_queue_answers_429_at_once_with_retry_after() {
    let metrics = Arc::new(Metrics::new());
    let (engine, mut submitted) = Engine::manual(2, metrics.clone());
    let (app, _) = app(limits(), engine, metrics.clone());
    // Two prompts fill the queue; nothing takes them yet.
    let first = tokio::spawn({
        let app = app.clone();
        async move {
            post(
                &app,
                "/v1/completions",
                completion(json!([[1, 2], [3]]), false),
            )
            .await
        }
    });
    let held = [
        submitted.recv().await.unwrap(),
        submitted.recv().await.unwrap(),
    ];
    assert_eq!(metrics.queue_depth.get(), 2);

    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "w1"}]});
    let refused = post(&app, "/v1/chat/completions", chat.to_string()).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers[header::RETRY_AFTER], "1");
    let e = error(&refused);
    assert_eq!(e["type"], "server_error");
    assert_eq!(e["code"], "server_overloaded");
    assert_eq!(e["param"], Value::Null);
    assert!(
        e["message"].as_str().unwrap().contains("overloaded"),
        "{e:?}"
    );
    // Nothing of the refused request was queued.
    assert!(submitted.try_recv().is_err());
    assert_eq!(metrics.queue_depth.get(), 2);

    held.into_iter().for_each(answer);
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let body: Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    let rendered = metrics.render();
    for line in [
        "llmops_server_requests_total{route=\"chat_completions\",status=\"4xx\"} 1",
        "llmops_server_requests_total{route=\"completions\",status=\"2xx\"} 1",
    ] {
        assert!(rendered.contains(line), "{line}\n{rendered}");
    }
}

#[tokio::test]
async fn a_body_above_the_limit_is_413_in_openai_shape() {
    let metrics = Arc::new(Metrics::new());
    let (engine, _submitted) = Engine::manual(4, metrics.clone());
    let limits = Limits {
        max_body_bytes: 256,
        ..limits()
    };
    let (app, _) = app(limits, engine, metrics.clone());
    let big = completion(json!("w1 ".repeat(200)), false);
    assert!(big.len() > 256);
    // With a Content-Length, and streamed without one.
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(100)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    for body in [
        Body::from(big.clone()),
        Body::from_stream(futures::stream::iter(chunks)),
    ] {
        let refused = post(&app, "/v1/completions", body).await;
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = error(&refused);
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["code"], "request_too_large");
        assert!(
            e["message"].as_str().unwrap().contains("256 bytes"),
            "{e:?}"
        );
    }
    // A body within the limit is read as usual (here: not a valid request).
    let small = post(&app, "/v1/completions", "{}").await;
    assert_eq!(small.status, StatusCode::BAD_REQUEST);
    assert!(
        metrics
            .render()
            .contains("llmops_server_requests_total{route=\"completions\",status=\"4xx\"} 3")
    );
}

#[tokio::test]
async fn more_prompts_than_allowed_is_400_naming_prompt() {
    let metrics = Arc::new(Metrics::new());
    let (engine, mut submitted) = Engine::manual(64, metrics.clone());
    let limits = Limits {
        max_prompts: 4,
        ..limits()
    };
    let (app, _) = app(limits, engine, metrics.clone());
    for prompt in [
        json!(["w1", "w2", "w3", "w4", "w5"]),
        json!([[1], [2], [3], [4], [5]]),
    ] {
        let refused = post(&app, "/v1/completions", completion(prompt, false)).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        let e = error(&refused);
        assert_eq!(e["param"], "prompt");
        assert_eq!(e["type"], "invalid_request_error");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains("at most 4 prompts"), "{message}");
        assert!(message.contains("got 5"), "{message}");
    }
    assert!(submitted.try_recv().is_err());

    // The queue bounds the prompts of one request too.
    let (engine, _submitted) = Engine::manual(2, metrics.clone());
    let (app, _) = self::app(Limits::default(), engine, metrics);
    let refused = post(
        &app,
        "/v1/completions",
        completion(json!([[1], [2], [3]]), false),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        error(&refused)["message"]
            .as_str()
            .unwrap()
            .contains("at most 2 prompts")
    );
}

/// Waits for the request the handler submitted and checks that it was
/// abandoned: its receiver is gone, so the engine drops it.
async fn abandoned(submitted: &mut mpsc::UnboundedReceiver<Request>) -> Request {
    let request = submitted.recv().await.unwrap();
    for _ in 0..100 {
        if request.events.is_closed() {
            return request;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the timed-out request's generation was not abandoned");
}

#[tokio::test]
async fn a_request_past_its_timeout_is_504_and_its_generation_is_dropped() {
    let metrics = Arc::new(Metrics::new());
    let (engine, mut submitted) = Engine::manual(4, metrics.clone());
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..limits()
    };
    let (app, _) = app(limits, engine, metrics.clone());
    let started = std::time::Instant::now();
    let late = post(&app, "/v1/completions", completion(json!("w1"), false)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT);
    let e = error(&late);
    assert_eq!(e["type"], "server_error");
    assert_eq!(e["code"], "timeout");
    assert!(e["message"].as_str().unwrap().contains("0.3 s"), "{e:?}");
    abandoned(&mut submitted).await;
    assert!(
        metrics
            .render()
            .contains("llmops_server_requests_total{route=\"completions\",status=\"5xx\"} 1")
    );
    assert_eq!(metrics.in_flight_requests.get(), 0);

    // A stream gets what was generated, then an error event, and ends.
    let stream = tokio::spawn({
        let app = app.clone();
        async move { post(&app, "/v1/completions", completion(json!("w1"), true)).await }
    });
    let held = submitted.recv().await.unwrap();
    held.events.send(Event::Text("w7".into())).unwrap();
    let stream = stream.await.unwrap();
    assert!(stream.body.contains("w7"), "{}", stream.body);
    let e = stream_error(&stream);
    assert_eq!(e["code"], "timeout");
    for _ in 0..100 {
        if held.events.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        held.events.is_closed(),
        "the stream's generation was not dropped"
    );
}

#[tokio::test]
async fn a_diverged_model_fails_with_500_naming_non_finite_logits() {
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::start(nan_model(), tokenizer(), Vec::new(), 4, 8, metrics.clone());
    let (app, _) = app(limits(), engine, metrics.clone());
    let failed = post(&app, "/v1/completions", completion(json!("w1 w2"), false)).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    let e = error(&failed);
    assert_eq!(e["type"], "server_error");
    assert!(
        e["message"].as_str().unwrap().contains("non-finite logits"),
        "{e:?}"
    );
    let chat =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "w1"}], "stream": true});
    let stream = post(&app, "/v1/chat/completions", chat.to_string()).await;
    let e = stream_error(&stream);
    assert!(
        e["message"].as_str().unwrap().contains("non-finite logits"),
        "{e:?}"
    );
    // No text came before the error: only the role chunk.
    assert!(!stream.body.contains("\"content\":\"w"), "{}", stream.body);
    assert_eq!(metrics.generated_tokens.get(), 0);
}

#[tokio::test]
async fn a_draining_server_is_not_ready_but_still_answers() {
    let metrics = Arc::new(Metrics::new());
    let (engine, mut submitted) = Engine::manual(4, metrics.clone());
    let (app, state) = app(limits(), engine, metrics);
    let readyz = || HttpRequest::get("/readyz").body(Body::empty()).unwrap();
    assert_eq!(send(&app, readyz()).await.status, StatusCode::OK);
    state.start_draining();
    let not_ready = send(&app, readyz()).await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.body, "shutting down");
    let answered = tokio::spawn({
        let app = app.clone();
        async move { post(&app, "/v1/completions", completion(json!("w1"), false)).await }
    });
    answer(submitted.recv().await.unwrap());
    assert_eq!(answered.await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn a_stream_counts_as_in_flight_until_it_ends() {
    let metrics = Arc::new(Metrics::new());
    let (engine, mut submitted) = Engine::manual(4, metrics.clone());
    let (app, _) = app(limits(), engine, metrics.clone());
    let request = HttpRequest::post("/v1/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(completion(json!("w1"), true)))
        .unwrap();
    // The response (its headers) comes at once; the body follows the engine.
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let held = submitted.recv().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(metrics.in_flight_requests.get(), 1);
    answer(held);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
    assert_eq!(metrics.in_flight_requests.get(), 0);
    assert!(
        metrics
            .render()
            .contains("llmops_server_request_duration_seconds_count{route=\"completions\"} 1")
    );
}
