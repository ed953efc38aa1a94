//! Errors in OpenAI's shape, so clients raise their usual exceptions
//! (`BadRequestError`, `AuthenticationError`, `NotFoundError`,
//! `RateLimitError`, ...): `{"error": {"message", "type", "param", "code"}}`.

use std::time::Duration;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

/// Seconds an overloaded server asks clients to wait before retrying.
pub const OVERLOADED_RETRY_AFTER_SECONDS: u64 = 1;

impl ApiError {
    /// 400 about one request parameter.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
            retry_after: None,
        }
    }

    /// 400 about the request as a whole (e.g. a body that is not JSON).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }

    /// 503 while the model loads; clients retry these.
    pub fn loading() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the model is still loading; retry shortly".into(),
            kind: "server_error",
            param: None,
            code: Some("model_loading"),
            retry_after: None,
        }
    }

    /// 429 when the waiting queue is full; clients retry after `Retry-After`.
    pub fn overloaded(max_queue: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "the server is overloaded: its queue of {max_queue} waiting prompts has no room for this request; retry after {OVERLOADED_RETRY_AFTER_SECONDS} s"
            ),
            kind: "server_error",
            param: None,
            code: Some("server_overloaded"),
            retry_after: Some(OVERLOADED_RETRY_AFTER_SECONDS),
        }
    }

    /// 413 for a body above `--max-body-bytes`.
    pub fn payload_too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is larger than this server accepts ({limit} bytes)"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
            retry_after: None,
        }
    }

    /// 504 for a request still unanswered after `--request-timeout`; its
    /// generation has been stopped.
    pub fn timeout(limit: Duration) -> Self {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!(
                "the request did not finish within the server's limit of {} s; its generation was stopped",
                limit.as_secs_f64()
            ),
            kind: "server_error",
            param: None,
            code: Some("timeout"),
            retry_after: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body.
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
