//! The HTTP API: OpenAI's `/v1/models`, `/v1/completions` and
//! `/v1/chat/completions`, plus `/healthz`, `/readyz` and `/metrics`.
//!
//! A request's `model` names the base model or one of the LoRA adapters
//! serving beside it ([`crate::adapters`]); `/v1/models` lists the base and
//! each adapter with `parent` naming the base, as vLLM does.
//!
//! Overload answers are OpenAI error bodies too: a full waiting queue is a 429
//! with `Retry-After`, a body above the limit a 413, a request past its time a
//! 504 (its generation stopped).

mod error;
mod generate;
mod request;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use error::{ApiError, OVERLOADED_RETRY_AFTER_SECONDS};

use crate::adapters::Adapters;
use crate::load::Served;
use crate::metrics::Metrics;

/// What one request may ask of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most prompts in one completions request (400 naming `prompt` above).
    pub max_prompts: usize,
    /// Longest time a request may take, queueing included (504 after it).
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_prompts: 16,
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    /// Set once the model is loaded; until then `/v1` answers 503.
    pub served: OnceLock<Arc<Served>>,
    /// The adapters serving beside the base model.
    pub adapters: Arc<Adapters>,
    /// Accepted bearer tokens; empty means no authentication.
    pub api_keys: Vec<String>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Set when the server is shutting down: `/readyz` answers 503 so no new
    /// traffic is routed here, while requests (also new ones) are still served.
    pub draining: AtomicBool,
}

impl AppState {
    pub fn new(api_keys: Vec<String>, metrics: Arc<Metrics>, limits: Limits) -> Self {
        AppState {
            served: OnceLock::new(),
            adapters: Arc::new(Adapters::default()),
            api_keys,
            metrics,
            limits,
            draining: AtomicBool::new(false),
        }
    }

    fn served(&self) -> Result<Arc<Served>, ApiError> {
        self.served.get().cloned().ok_or_else(ApiError::loading)
    }

    /// Turns `/readyz` to 503 for good.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/models", get(models))
        .route("/completions", post(completions))
        .route("/chat/completions", post(chat_completions))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if state.served.get().is_some() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the model is loading").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Equal-length comparison that does not stop at the first differing byte, so
/// response times do not reveal how much of a key was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Requires `Authorization: Bearer <key>` with a configured key.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.api_keys.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::unauthorized("missing API key: send it as `Authorization: Bearer <key>`")
            .into_response();
    };
    // Check every key, so the time taken does not depend on which one matched.
    let valid = state.api_keys.iter().fold(false, |ok, key| {
        ok | same_secret(key.as_bytes(), presented.as_bytes())
    });
    if !valid {
        return ApiError::unauthorized("incorrect API key provided").into_response();
    }
    next.run(request).await
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let response = match state.served() {
        Ok(served) => {
            let base = json!({
                "id": served.name,
                "object": "model",
                "created": served.created,
                "owned_by": "llmops",
                "root": served.name,
                "parent": null,
            });
            let adapters = state.adapters.listed().into_iter().map(|a| {
                json!({
                    "id": a.name,
                    "object": "model",
                    "created": a.created,
                    "owned_by": "llmops",
                    "root": a.uri,
                    "parent": served.name,
                })
            });
            let data: Vec<_> = std::iter::once(base).chain(adapters).collect();
            axum::Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => e.into_response(),
    };
    state.metrics.answered("models", response.status().as_u16());
    response
}

/// The body, or the OpenAI error for one that is too large or unreadable.
fn body_or_error(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(state.limits.max_body_bytes)
        } else {
            ApiError::bad_request(format!("cannot read the request body: {rejection}"))
        }
    })
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let response = match body_or_error(&state, body) {
        Ok(body) => generate::completions(&state, &body).await,
        Err(e) => Err(e),
    }
    .unwrap_or_else(IntoResponse::into_response);
    state
        .metrics
        .answered("completions", response.status().as_u16());
    response
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let response = match body_or_error(&state, body) {
        Ok(body) => generate::chat_completions(&state, &body).await,
        Err(e) => Err(e),
    }
    .unwrap_or_else(IntoResponse::into_response);
    state
        .metrics
        .answered("chat_completions", response.status().as_u16());
    response
}

#[cfg(test)]
mod limits_tests;
#[cfg(test)]
mod logprobs_tests;

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"sk-abc", b"sk-abc"));
        assert!(!same_secret(b"sk-abc", b"sk-abd"));
        assert!(!same_secret(b"sk-abc", b"sk-ab"));
        assert!(!same_secret(b"", b"x"));
    }
}
