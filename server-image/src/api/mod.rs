//! The HTTP API: OpenAI's `/v1/models`, `/v1/completions` and
//! `/v1/chat/completions`, plus `/healthz`, `/readyz` and `/metrics`.

mod error;
mod generate;
mod request;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use error::ApiError;

use crate::load::Served;
use crate::metrics::Metrics;

/// Shared by every handler.
pub struct AppState {
    /// Set once the model is loaded; until then `/v1` answers 503.
    pub served: OnceLock<Arc<Served>>,
    /// Accepted bearer tokens; empty means no authentication.
    pub api_keys: Vec<String>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    fn served(&self) -> Result<Arc<Served>, ApiError> {
        self.served.get().cloned().ok_or_else(ApiError::loading)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/models", get(models))
        .route("/completions", post(completions))
        .route("/chat/completions", post(chat_completions))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.served.get().is_some() {
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
        Ok(served) => axum::Json(json!({
            "object": "list",
            "data": [{
                "id": served.name,
                "object": "model",
                "created": served.created,
                "owned_by": "llmops",
            }],
        }))
        .into_response(),
        Err(e) => e.into_response(),
    };
    state.metrics.answered("models", response.status().as_u16());
    response
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let response = generate::completions(&state, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    state
        .metrics
        .answered("completions", response.status().as_u16());
    response
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let response = generate::chat_completions(&state, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    state
        .metrics
        .answered("chat_completions", response.status().as_u16());
    response
}

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
