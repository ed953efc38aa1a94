//! The HTTP side: OpenAI routes, each request authenticated, limited, routed
//! to a ready pod of its model and relayed.
//!
//! The request body is read whole (it names the model, and a key's token limit
//! needs its `max_tokens`); the response is relayed chunk by chunk as the pod
//! writes it, so server-sent events reach the client as they are produced.
//! A client that goes away drops the relay, and with it the connection to the
//! pod, which stops generating for it. A pod that fails before answering (its
//! connection refused or reset, or a 503 while it loads or drains) is replaced
//! once by another ready pod; one that fails mid-response ends the response: a
//! stream with an `error` event in OpenAI's shape, any other body cut short.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::keys::Grant;
use crate::limits::{Admission, Limiter};
use crate::metrics::{DeploymentLabels, KeyModel, KeyModelCode, Metrics, ModelCode};
use crate::registry::{Backend, InFlight, Registry};
use crate::route::{self, Key};
use prometheus_client::metrics::gauge::Gauge;

/// How requests are handled.
#[derive(Debug, Clone)]
pub struct Options {
    /// Characters of the prompt that make its affinity key (0: no affinity).
    pub affinity_chars: usize,
    /// Requests in flight a pod may have beyond the least busy one and still
    /// take the prefixes it is preferred for.
    pub affinity_bound: usize,
    /// How long a request waits for its model to have a ready pod.
    pub queue_timeout: Duration,
    /// Requests one model may have waiting for a ready pod; more are refused
    /// at once (503 with `Retry-After`) rather than held.
    pub max_queued: i64,
    /// `max_tokens` counted against a token limit when a request sets none.
    pub default_max_tokens: u32,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Time to connect to a pod.
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            affinity_chars: 256,
            affinity_bound: 4,
            queue_timeout: Duration::from_secs(10),
            max_queued: 100,
            default_max_tokens: 256,
            max_body: 16 << 20,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

pub struct Gateway {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub limiter: Limiter,
    pub options: Options,
    client: reqwest::Client,
    spread: std::sync::atomic::AtomicU64,
}

impl Gateway {
    pub fn new(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        options: Options,
    ) -> anyhow::Result<Gateway> {
        let client = reqwest::Client::builder()
            // Pods are reached directly, never through a proxy the
            // environment names.
            .no_proxy()
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .build()?;
        Ok(Gateway {
            registry,
            metrics,
            limiter: Limiter::default(),
            options,
            client,
            spread: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    let max_body = gateway.options.max_body;
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route(
            "/v1/completions",
            post(|s, h, b| generate(s, "/v1/completions", h, b)),
        )
        .route(
            "/v1/chat/completions",
            post(|s, h, b| generate(s, "/v1/chat/completions", h, b)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|uri: axum::http::Uri| async move { ApiError::not_found(uri.path()) })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(gateway)
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.registry.synced() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "discovery not synced").into_response()
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.encode(),
    )
        .into_response()
}

/// The grant of the request's `Authorization: Bearer` key.
fn authenticate(gw: &Gateway, headers: &HeaderMap) -> Result<Arc<Grant>, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(ApiError::missing_key)?;
    // The scheme is case-insensitive (RFC 9110).
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .ok_or_else(ApiError::invalid_key)?;
    gw.registry
        .keys()
        .authenticate(key)
        .ok_or_else(ApiError::invalid_key)
}

fn model_entry(backend: &Backend) -> Value {
    let mut entry = json!({"id": backend.id, "object": "model", "created": backend.created, "owned_by": "llmops"});
    if let Some(parent) = &backend.parent {
        entry["parent"] = json!(parent);
    }
    entry
}

/// The models the key may use, and no other.
async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let grant = match authenticate(&gw, &headers) {
        Ok(grant) => grant,
        Err(e) => return e.into_response(),
    };
    let data: Vec<Value> = gw
        .registry
        .table()
        .backends
        .values()
        .filter(|b| grant.allows(&b.id))
        .map(|b| model_entry(b))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn model(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let grant = match authenticate(&gw, &headers) {
        Ok(grant) => grant,
        Err(e) => return e.into_response(),
    };
    match gw.registry.table().backends.get(&id) {
        Some(backend) if grant.allows(&id) => Json(model_entry(backend)).into_response(),
        _ => ApiError::model_not_found(&id).into_response(),
    }
}

/// Counts a refusal for the key (the model label only for a model the key may
/// use: a requested name is the client's to choose, and unbounded).
fn refuse(gw: &Gateway, key: &str, model: &str, error: ApiError) -> Response {
    count(gw, key, model, &error.status.as_u16().to_string());
    error.into_response()
}

/// Counts one answered request by model and by key name.
fn count(gw: &Gateway, key: &str, model: &str, code: &str) {
    gw.metrics
        .requests
        .get_or_create(&ModelCode {
            model: model.to_string(),
            code: code.to_string(),
        })
        .inc();
    gw.metrics
        .key_requests
        .get_or_create(&KeyModelCode {
            key: key.to_string(),
            model: model.to_string(),
            code: code.to_string(),
        })
        .inc();
}

async fn generate(
    State(gw): State<Arc<Gateway>>,
    upstream_path: &'static str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let grant = match authenticate(&gw, &headers) {
        Ok(grant) => grant,
        Err(e) => return e.into_response(),
    };
    let mut request: Value = match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            return ApiError::bad_request("body", "The request body must be a JSON object.")
                .into_response();
        }
    };
    let Some(model) = request
        .get("model")
        .and_then(Value::as_str)
        .map(String::from)
    else {
        return ApiError::bad_request("model", "`model` is required and must be a string.")
            .into_response();
    };
    let table = gw.registry.table();
    let backend = match table.backends.get(&model) {
        Some(backend) if grant.allows(&model) => backend.clone(),
        _ => return refuse(&gw, &grant.name, "", ApiError::model_not_found(&model)),
    };
    let max_tokens = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|f| request.get(*f).and_then(Value::as_u64))
        .map_or(gw.options.default_max_tokens, |n| {
            u32::try_from(n).unwrap_or(u32::MAX)
        });
    let admission = match gw.limiter.admit(&grant, max_tokens, Instant::now()) {
        Ok(admission) => admission,
        Err(refused) => {
            let error = ApiError::rate_limited(refused.limit, refused.retry_after);
            return refuse(&gw, &grant.name, &model, error);
        }
    };
    let affinity = route::affinity(&request, gw.options.affinity_chars);
    let body = if backend.served_name == model {
        body
    } else {
        request["model"] = Value::String(backend.served_name.clone());
        Bytes::from(serde_json::to_vec(&request).unwrap_or_default())
    };
    let key = affinity.map_or_else(
        || Key::Spread(gw.spread.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        Key::Affinity,
    );
    let accept = headers.get(header::ACCEPT).cloned();
    let deployment = Metrics::deployment(&backend);
    gw.metrics
        .deployment_requests
        .get_or_create(&deployment)
        .inc();
    let in_flight = ModelInFlight::new(&gw, &model, &deployment);
    let call = Call {
        gw: gw.clone(),
        model,
        deployment,
        key_name: grant.name.clone(),
        admission,
        started,
    };
    // A client gone before the pod answers drops this future at the await;
    // the guard still counts the request.
    let waiting = Waiting {
        call: &call,
        armed: true,
    };
    let forwarded = forward(&call, upstream_path, body, key, accept).await;
    waiting.disarm();
    match forwarded {
        Ok((response, guard)) => relay(call, response, guard, in_flight),
        Err(error) => {
            gw.limiter.settle(&call.admission, Some(0), Instant::now());
            let model = call.model.clone();
            refuse(&gw, &call.key_name, &model, error)
        }
    }
}

/// A request of the model in flight (queued, waiting for a pod's answer or
/// relaying it), counted by model and by ModelDeployment until dropped.
struct ModelInFlight {
    gauges: [Gauge; 2],
}

impl ModelInFlight {
    fn new(gw: &Gateway, model: &str, deployment: &DeploymentLabels) -> ModelInFlight {
        let gauges = [
            gw.metrics
                .in_flight
                .get_or_create(&Metrics::model(model))
                .clone(),
            gw.metrics
                .deployment_in_flight
                .get_or_create(deployment)
                .clone(),
        ];
        for gauge in &gauges {
            gauge.inc();
        }
        ModelInFlight { gauges }
    }
}

impl Drop for ModelInFlight {
    fn drop(&mut self) {
        for gauge in &self.gauges {
            gauge.dec();
        }
    }
}

/// Counts a request whose client went away before its pod answered.
struct Waiting<'a> {
    call: &'a Call,
    armed: bool,
}

impl Waiting<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed {
            count(
                &self.call.gw,
                &self.call.key_name,
                &self.call.model,
                "client_closed",
            );
        }
    }
}

/// One admitted request.
struct Call {
    gw: Arc<Gateway>,
    model: String,
    /// The ModelDeployment that serves `model`.
    deployment: DeploymentLabels,
    key_name: String,
    admission: Admission,
    started: Instant,
}

/// Waits (up to the queue timeout) until the model has a ready pod. A
/// deployment scaled to zero has none: the wait is counted in its queue, which
/// the operator reads to scale it up.
async fn ready_backend(
    gw: &Gateway,
    model: &str,
    deployment: &DeploymentLabels,
) -> Result<Arc<Backend>, ApiError> {
    let mut changes = gw.registry.subscribe();
    let deadline = tokio::time::Instant::now() + gw.options.queue_timeout;
    let mut queued: Option<Queued> = None;
    loop {
        match gw.registry.table().backends.get(model) {
            None => return Err(ApiError::model_not_found(model)),
            Some(backend) if !backend.endpoints.is_empty() => {
                if let Some(queued) = &queued {
                    gw.metrics
                        .queue_wait
                        .get_or_create(&Metrics::model(model))
                        .observe(queued.since.elapsed().as_secs_f64());
                }
                return Ok(backend.clone());
            }
            Some(_) => {}
        }
        if queued.is_none() {
            let gauge = gw
                .metrics
                .queued
                .get_or_create(&Metrics::model(model))
                .clone();
            let of_deployment = gw
                .metrics
                .deployment_queued
                .get_or_create(deployment)
                .clone();
            let retry = gw.options.queue_timeout.as_secs().max(1);
            queued = Some(
                Queued::join(gauge, of_deployment, gw.options.max_queued)
                    .ok_or_else(|| ApiError::queue_full(model, gw.options.max_queued, retry))?,
            );
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                let retry = gw.options.queue_timeout.as_secs().max(1);
                return Err(ApiError::unavailable(model, retry));
            }
        }
    }
}

/// A request counted in the model's queue (and its ModelDeployment's) while
/// it waits.
struct Queued {
    gauge: Gauge,
    of_deployment: Gauge,
    since: Instant,
}

impl Queued {
    /// A place in the queue `gauge` counts, unless `max` already wait. The
    /// increment comes first so that concurrent requests cannot all pass a
    /// check made before any of them counted.
    fn join(gauge: Gauge, of_deployment: Gauge, max: i64) -> Option<Queued> {
        if gauge.inc() >= max {
            gauge.dec();
            return None;
        }
        of_deployment.inc();
        Some(Queued {
            gauge,
            of_deployment,
            since: Instant::now(),
        })
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.gauge.dec();
        self.of_deployment.dec();
    }
}

/// Sends the request to a ready pod, and once more to another when the first
/// fails before answering.
async fn forward(
    call: &Call,
    path: &str,
    body: Bytes,
    key: Key,
    accept: Option<HeaderValue>,
) -> Result<(reqwest::Response, InFlight), ApiError> {
    let gw = &call.gw;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_error = String::new();
    for attempt in 0..2 {
        let backend = ready_backend(gw, &call.model, &call.deployment).await?;
        // A canary's share is decided per request, before the pod: the other
        // revision's pods are left out of the first try (not of a retry).
        let mut excluded = tried.clone();
        if attempt == 0 {
            excluded.extend(other_revision(gw, &backend));
        }
        let candidates = gw.registry.candidates(&backend, &excluded);
        let Some(addr) = route::pick(&candidates, key, gw.options.affinity_bound) else {
            break;
        };
        tried.push(addr);
        let guard = gw.registry.start(addr);
        let mut request = gw
            .client
            .post(format!("http://{addr}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(accept) = &accept {
            request = request.header(header::ACCEPT, accept.clone());
        }
        match request.send().await {
            Ok(response)
                if response.status() != StatusCode::SERVICE_UNAVAILABLE || attempt == 1 =>
            {
                return Ok((response, guard));
            }
            Ok(response) => last_error = format!("pod {addr} answered {}", response.status()),
            Err(e) => last_error = format!("pod {addr}: {e}"),
        }
        tracing::warn!(model = %call.model, "{last_error}; trying another pod");
        gw.metrics
            .retries
            .get_or_create(&Metrics::model(&call.model))
            .inc();
    }
    Err(ApiError::bad_gateway(format!(
        "No serving pod of `{}` answered ({last_error}).",
        call.model
    )))
}

/// The pods this request does not go to on its first try: under a canary,
/// those of the revision the split did not pick (none when that would leave
/// no pod).
fn other_revision(gw: &Gateway, backend: &Backend) -> Vec<SocketAddr> {
    let Some(split) = &backend.canary else {
        return Vec::new();
    };
    let to_canary = route::to_canary(gw.registry.next_split(&backend.id), split.weight);
    let (picked, other): (Vec<SocketAddr>, Vec<SocketAddr>) = backend
        .endpoints
        .iter()
        .partition(|addr| split.endpoints.contains(addr) == to_canary);
    if picked.is_empty() { Vec::new() } else { other }
}

/// How a relayed response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Complete,
    Broken,
    ClientClosed,
}

/// What is recorded when a relayed response ends, however it ends.
struct Ending {
    call: Call,
    status: StatusCode,
    _guard: InFlight,
    _in_flight: ModelInFlight,
}

impl Ending {
    fn finish(self, outcome: Outcome, used: Option<u64>) {
        let Ending { call, status, .. } = &self;
        let gw = &call.gw;
        let code = match outcome {
            Outcome::Complete => status.as_u16().to_string(),
            Outcome::Broken => "upstream_broken".to_string(),
            Outcome::ClientClosed => "client_closed".to_string(),
        };
        // A refused or failed request generated nothing; a complete one says
        // what it used when it has `usage`; otherwise the reservation stands.
        let settled = if !status.is_success() {
            Some(0)
        } else if outcome == Outcome::Complete {
            used
        } else {
            None
        };
        gw.limiter.settle(&call.admission, settled, Instant::now());
        if let (Some(tokens), true) = (used, status.is_success()) {
            gw.metrics
                .key_tokens
                .get_or_create(&KeyModel {
                    key: call.key_name.clone(),
                    model: call.model.clone(),
                })
                .inc_by(tokens);
        }
        let labels = Metrics::model(&call.model);
        if outcome == Outcome::Broken {
            gw.metrics.upstream_broken.get_or_create(&labels).inc();
        }
        gw.metrics
            .latency
            .get_or_create(&labels)
            .observe(call.started.elapsed().as_secs_f64());
        count(gw, &call.key_name, &call.model, &code);
    }
}

/// The response being relayed; dropped early when the client goes away.
struct Relay {
    upstream: BoxStream<'static, reqwest::Result<Bytes>>,
    sse: bool,
    usage: UsageScan,
    /// Whether the bytes relayed so far end between two events.
    at_boundary: bool,
    ending: Option<Ending>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(ending) = self.ending.take() {
            ending.finish(Outcome::ClientClosed, None);
        }
    }
}

fn relay(
    call: Call,
    response: reqwest::Response,
    guard: InFlight,
    in_flight: ModelInFlight,
) -> Response {
    let status = response.status();
    let mut headers = HeaderMap::new();
    for name in [
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        header::RETRY_AFTER,
    ] {
        if let Some(value) = response.headers().get(&name) {
            headers.insert(name, value.clone());
        }
    }
    let sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse {
        // Proxies in front of the gateway must not buffer the events either.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    let state = Relay {
        upstream: response.bytes_stream().boxed(),
        sse,
        usage: UsageScan::default(),
        at_boundary: true,
        ending: Some(Ending {
            call,
            status,
            _guard: guard,
            _in_flight: in_flight,
        }),
    };
    let stream = futures::stream::unfold(state, |mut relay| async move {
        relay.ending.as_ref()?;
        match relay.upstream.next().await {
            Some(Ok(bytes)) => {
                relay.usage.feed(&bytes);
                relay.at_boundary = bytes.ends_with(b"\n\n");
                Some((Ok(bytes), relay))
            }
            Some(Err(e)) => {
                let ending = relay.ending.take()?;
                tracing::warn!(model = %ending.call.model, "the pod failed mid-response: {e}");
                ending.finish(Outcome::Broken, None);
                if relay.sse {
                    let event = broken_event(relay.at_boundary);
                    Some((Ok(event), relay))
                } else {
                    Some((Err(std::io::Error::other(e)), relay))
                }
            }
            None => {
                let used = relay.usage.total_tokens();
                if let Some(ending) = relay.ending.take() {
                    ending.finish(Outcome::Complete, used);
                }
                None
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The event that ends a stream whose pod failed: OpenAI's error shape, after
/// a blank line when the pod stopped inside an event.
fn broken_event(at_boundary: bool) -> Bytes {
    let error = ApiError::bad_gateway("The serving pod failed during the response.");
    let mut body = error.body();
    body["error"]["code"] = json!("upstream_failed");
    let lead = if at_boundary { "" } else { "\n\n" };
    Bytes::from(format!("{lead}data: {body}\n\n"))
}

/// Finds `usage.total_tokens` in a response as it passes, keeping only its
/// last few kilobytes: `usage` comes last, in a JSON body and in a stream's
/// final chunk alike.
#[derive(Debug, Default)]
pub struct UsageScan {
    tail: Vec<u8>,
}

const USAGE_TAIL: usize = 8 << 10;

impl UsageScan {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > USAGE_TAIL {
            let cut = self.tail.len() - USAGE_TAIL;
            self.tail.drain(..cut);
        }
    }

    pub fn total_tokens(&self) -> Option<u64> {
        let text = String::from_utf8_lossy(&self.tail);
        let at = text.rfind("\"usage\"")?;
        let rest = &text[at..];
        let field = rest.find("\"total_tokens\"")?;
        let value = rest[field + "\"total_tokens\"".len()..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_and_a_place_is_freed_when_its_request_leaves() {
        let gauge = Gauge::<i64>::default();
        let deployment = Gauge::<i64>::default();
        let join = || Queued::join(gauge.clone(), deployment.clone(), 2);
        let first = join().expect("room for the first");
        let second = join().expect("room for the second");
        assert!(join().is_none(), "a third past the bound");
        assert_eq!(gauge.get(), 2, "a refused request is not counted");
        assert_eq!(deployment.get(), 2, "nor in its deployment's queue");
        drop(first);
        assert_eq!((gauge.get(), deployment.get()), (1, 1));
        let third = join().expect("the freed place");
        drop((second, third));
        assert_eq!((gauge.get(), deployment.get()), (0, 0));
    }

    #[test]
    fn a_full_queue_answers_503_with_retry_after_naming_the_model() {
        let error = ApiError::queue_full("chat", 100, 10);
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.retry_after, Some(10));
        assert!(error.message.contains("`chat`") && error.message.contains("100"));
    }

    #[test]
    fn usage_is_read_from_bodies_and_streams() {
        let mut scan = UsageScan::default();
        scan.feed(br#"{"id":"c","choices":[{"text":"hi"}],"usage":{"prompt_tokens":5,"#);
        scan.feed(br#""completion_tokens":7,"total_tokens": 12}}"#);
        assert_eq!(scan.total_tokens(), Some(12));
        let mut stream = UsageScan::default();
        for _ in 0..2000 {
            stream.feed(b"data: {\"choices\":[{\"text\":\"x\"}],\"usage\":null}\n\n");
        }
        assert_eq!(stream.total_tokens(), None);
        stream.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n");
        assert_eq!(stream.total_tokens(), Some(7));
    }

    #[test]
    fn a_broken_stream_ends_with_an_error_event() {
        let event = broken_event(false);
        let text = std::str::from_utf8(&event).unwrap();
        let data = text.trim().strip_prefix("data: ").unwrap();
        let value: Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["error"]["code"], "upstream_failed");
        assert_eq!(value["error"]["type"], "server_error");
        assert!(text.starts_with("\n\n") && text.ends_with("\n\n"));
        assert!(broken_event(true).starts_with(b"data: "));
    }
}
