//! The operator's HTTP endpoints: `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::metrics::Metrics;
use super::stop::Stop;

/// Readiness: true once the controllers' caches have synced, or while standing by
/// as a non-leader (a standby is healthy and ready to take over).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// The router, separate from serving so it can be exercised without a socket.
fn router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AppState { metrics, readiness })
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches syncing")
    }
}

/// Listen on `0.0.0.0:port`; separate from serving so a taken port fails at start.
pub async fn bind(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("failed to listen on port {port} for /metrics"))
}

/// Serve on `listener` until `stop` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    stop: Stop,
) -> anyhow::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(async move { stop.wait().await })
        .await
        .context("the metrics server failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    async fn get_status(app: Router, path: &str) -> StatusCode {
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn readyz_follows_readiness_and_healthz_is_always_ok() {
        let readiness = Readiness::default();
        let app = router(Arc::new(Metrics::new()), readiness.clone());
        assert_eq!(get_status(app.clone(), "/healthz").await, StatusCode::OK);
        assert_eq!(
            get_status(app.clone(), "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set(true);
        assert_eq!(get_status(app.clone(), "/readyz").await, StatusCode::OK);
        assert_eq!(get_status(app, "/metrics").await, StatusCode::OK);
    }
}
