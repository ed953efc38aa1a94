//! Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
//! as the server answers them, so a client cannot tell the gateway's refusals
//! from a pod's.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn bad_request(param: &'static str, message: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        error.param = Some(param);
        error
    }

    pub fn invalid_key() -> Self {
        let mut error = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Incorrect API key provided.",
        );
        error.code = Some("invalid_api_key");
        error
    }

    pub fn missing_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "You didn't provide an API key: send `Authorization: Bearer <key>`.",
        )
    }

    /// The same answer for a model that does not exist and for one the key may
    /// not use, so that a key learns nothing of the models it cannot use.
    pub fn model_not_found(model: &str) -> Self {
        let mut error = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        );
        error.param = Some("model");
        error.code = Some("model_not_found");
        error
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown request URL: {path}."),
        )
    }

    pub fn rate_limited(what: &str, retry_after: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("Rate limit reached for {what}; retry after {retry_after} s."),
        );
        error.code = Some("rate_limit_exceeded");
        error.retry_after = Some(retry_after);
        error
    }

    /// No ready pod of the model within the queue timeout.
    pub fn unavailable(model: &str, retry_after: u64) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("The model `{model}` has no ready replica; retry later."),
        );
        error.code = Some("model_unavailable");
        error.retry_after = Some(retry_after);
        error
    }

    /// The model's queue of requests waiting for a ready pod is full.
    pub fn queue_full(model: &str, max: i64, retry_after: u64) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!(
                "The model `{model}` has no ready replica and {max} requests already wait for \
                 one; retry later."
            ),
        );
        error.code = Some("model_unavailable");
        error.retry_after = Some(retry_after);
        error
    }

    /// The upstream pod failed before answering, twice.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "server_error", message)
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
