//! `/v1/completions` and `/v1/chat/completions`: tokenize, check the context
//! window, hand each prompt to the engine, and answer with one JSON body or a
//! stream of server-sent events in OpenAI's chunk format.
//!
//! A request's prompts enter the engine's bounded queue together or not at all
//! (429 when it is full). A request has until `--request-timeout` after it
//! arrived: then a whole answer is a 504 and a stream ends with an error event,
//! and dropping the request's receivers stops its generation.

use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant as Deadline, timeout_at};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::AppState;
use super::error::ApiError;
use super::request::{ChatRequest, CompletionRequest, Plan, Prompt, parse};
use crate::engine::{Event, Finish, Request, SubmitError};
use crate::load::Served;
use crate::metrics::{Metrics, RouteLabels};

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// Which endpoint is answering: they differ only in shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    fn route(self) -> &'static str {
        match self {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat_completions",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        }
    }

    fn prompt_param(self) -> &'static str {
        match self {
            Endpoint::Completions => "prompt",
            Endpoint::Chat => "messages",
        }
    }
}

fn random_u64() -> u64 {
    // A fresh RandomState is seeded from the OS; hashing the time mixes further.
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check_model(served: &Served, model: &str) -> Result<(), ApiError> {
    if model != served.name {
        return Err(ApiError::model_not_found(model));
    }
    Ok(())
}

pub async fn completions(state: &AppState, body: &[u8]) -> Result<Response, ApiError> {
    let started = Instant::now();
    let served = state.served()?;
    let request: CompletionRequest = parse(body)?;
    check_model(&served, &request.common.model)?;
    let plan = request.plan()?;
    // More prompts than the queue holds could never be taken: the queue bounds them too.
    let max_prompts = state.limits.max_prompts.min(served.engine.max_queue());
    let count = match &request.prompt {
        Prompt::Text(_) | Prompt::Tokens(_) => 1,
        Prompt::Texts(ts) => ts.len(),
        Prompt::TokenLists(lists) => lists.len(),
    };
    if count > max_prompts {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "prompt: this server takes at most {max_prompts} prompts per request, got {count}"
            ),
        ));
    }
    let encode = |text: &str| -> Result<Vec<i64>, ApiError> {
        let encoding = served
            .tokenizer
            .encode(text, true)
            .map_err(|e| ApiError::invalid("prompt", format!("cannot tokenize the prompt: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
    };
    let prompts: Vec<Vec<i64>> = match &request.prompt {
        Prompt::Text(t) => vec![encode(t)?],
        Prompt::Texts(ts) => ts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenLists(lists) => lists.clone(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    let vocab = served.tokenizer.get_vocab_size(true) as i64;
    if let Some(bad) = prompts.iter().flatten().find(|&&id| id < 0 || id >= vocab) {
        return Err(ApiError::invalid(
            "prompt",
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        ));
    }
    run(state, served, Endpoint::Completions, prompts, plan, started).await
}

pub async fn chat_completions(state: &AppState, body: &[u8]) -> Result<Response, ApiError> {
    let started = Instant::now();
    let served = state.served()?;
    let request: ChatRequest = parse(body)?;
    check_model(&served, &request.common.model)?;
    let plan = request.plan()?;
    let messages = request.messages()?;
    let text = served
        .chat
        .render(&messages)
        .map_err(|e| ApiError::invalid("messages", e))?;
    // A model's own template writes its special tokens itself, as with
    // `apply_chat_template`; the fallback transcript gets the tokenizer's.
    let encoding = served
        .tokenizer
        .encode(text, !served.chat.from_model)
        .map_err(|e| ApiError::invalid("messages", format!("cannot tokenize the messages: {e}")))?;
    let prompt = encoding.get_ids().iter().map(|&id| id as i64).collect();
    run(state, served, Endpoint::Chat, vec![prompt], plan, started).await
}

/// Completion tokens for a prompt of `prompt_len`: as asked, or the default,
/// within the context window.
fn completion_budget(
    served: &Served,
    endpoint: Endpoint,
    plan: &Plan,
    prompt_len: usize,
) -> Result<usize, ApiError> {
    let context = served.context_length;
    if prompt_len == 0 {
        return Err(ApiError::invalid(
            endpoint.prompt_param(),
            "the prompt has no tokens; the model needs at least one",
        ));
    }
    let room = context.saturating_sub(prompt_len);
    let cap = served.max_new_tokens;
    let asked = match (plan.max_tokens, endpoint) {
        (Some(m), _) if m > cap => {
            let param = match endpoint {
                Endpoint::Chat => "max_completion_tokens",
                Endpoint::Completions => "max_tokens",
            };
            return Err(ApiError::invalid(
                param,
                format!(
                    "{param}: this server generates at most {cap} tokens per request, {m} were asked for"
                ),
            ));
        }
        (Some(m), _) => m,
        (None, Endpoint::Completions) => DEFAULT_COMPLETION_TOKENS.min(room).min(cap),
        (None, Endpoint::Chat) => room.min(cap),
    };
    if room == 0 || asked > room {
        return Err(ApiError::invalid(
            endpoint.prompt_param(),
            format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt_len} in the prompt, {asked} for the completion). Please reduce the prompt or the completion length.",
                prompt_len + asked
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(asked)
}

/// Counts a generation request in flight and its duration, until dropped.
struct InFlight {
    metrics: Arc<Metrics>,
    route: &'static str,
    started: Instant,
}

impl InFlight {
    fn new(metrics: Arc<Metrics>, route: &'static str, started: Instant) -> Self {
        metrics.in_flight_requests.inc();
        InFlight {
            metrics,
            route,
            started,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.in_flight_requests.dec();
        self.metrics
            .request_seconds
            .get_or_create(&RouteLabels { route: self.route })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// What the answer carries beside the text.
struct Answer {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
}

impl Answer {
    fn object(&self, stream: bool) -> &'static str {
        match (self.endpoint, stream) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, stream: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(stream),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// A whole choice (non-streaming).
    fn choice(&self, index: usize, text: String, finish: &Finish) -> Value {
        match self.endpoint {
            Endpoint::Completions => json!({
                "index": index, "text": text, "logprobs": null,
                "finish_reason": finish.reason.as_str(),
            }),
            Endpoint::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish.reason.as_str(),
            }),
        }
    }

    /// A streamed piece of a choice: text, or the end with its reason.
    fn chunk(&self, index: usize, text: Option<&str>, finish: Option<&Finish>) -> Value {
        let reason = finish.map(|f| f.reason.as_str());
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": index, "text": text.unwrap_or(""), "logprobs": null,
                "finish_reason": reason,
            }),
            Endpoint::Chat => {
                let delta = text.map_or_else(|| json!({}), |t| json!({"content": t}));
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": reason})
            }
        };
        self.envelope(true, json!([choice]))
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

async fn run(
    state: &AppState,
    served: Arc<Served>,
    endpoint: Endpoint,
    prompts: Vec<Vec<i64>>,
    plan: Plan,
    started: Instant,
) -> Result<Response, ApiError> {
    let budgets = prompts
        .iter()
        .map(|p| completion_budget(&served, endpoint, &plan, p.len()))
        .collect::<Result<Vec<_>, _>>()?;
    let guard = InFlight::new(state.metrics.clone(), endpoint.route(), started);
    let mut receivers = Vec::with_capacity(prompts.len());
    let mut requests = Vec::with_capacity(prompts.len());
    for (i, (prompt, budget)) in prompts.into_iter().zip(budgets).enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        requests.push(Request {
            prompt,
            max_new_tokens: budget,
            sampling: plan.sampling,
            // Each prompt of a seeded request gets its own reproducible stream.
            seed: plan
                .seed
                .map_or_else(random_u64, |s| s.wrapping_add(i as u64)),
            stop: plan.stop_sequences(),
            events: tx,
        });
        receivers.push(rx);
    }
    served.engine.submit_all(requests).map_err(|e| match e {
        SubmitError::Overloaded { max_queue } => ApiError::overloaded(max_queue),
        SubmitError::Stopped => ApiError::internal(e.to_string()),
    })?;
    let timeout = state.limits.request_timeout;
    let deadline = Deadline::from_std(started) + timeout;
    let answer = Answer {
        endpoint,
        id: format!("{}-{:016x}", endpoint.id_prefix(), random_u64()),
        created: unix_now(),
        model: served.name.clone(),
    };
    if plan.stream {
        Ok(stream_answer(
            state.metrics.clone(),
            answer,
            receivers,
            plan.include_usage,
            guard,
            (deadline, timeout),
        ))
    } else {
        // Past the deadline the future, and with it the receivers, is dropped:
        // the engine stops generating for them.
        timeout_at(
            deadline,
            whole_answer(&state.metrics, answer, receivers, started),
        )
        .await
        .unwrap_or_else(|_| Err(ApiError::timeout(timeout)))
    }
}

/// Waits for every choice and answers with one body.
async fn whole_answer(
    metrics: &Metrics,
    answer: Answer,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    started: Instant,
) -> Result<Response, ApiError> {
    let mut choices = Vec::with_capacity(receivers.len());
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let mut first = true;
    for (index, mut rx) in receivers.into_iter().enumerate() {
        let mut text = String::new();
        let finish = loop {
            match rx.recv().await {
                Some(Event::Text(t)) => {
                    if std::mem::take(&mut first) {
                        metrics
                            .time_to_first_token_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                    text.push_str(&t);
                }
                Some(Event::Done(finish)) => break finish,
                Some(Event::Failed(message)) => return Err(ApiError::internal(message)),
                None => return Err(ApiError::internal("the generation engine stopped")),
            }
        };
        prompt_tokens += finish.prompt_tokens;
        completion_tokens += finish.completion_tokens;
        choices.push(answer.choice(index, text, &finish));
    }
    let mut body = answer.envelope(false, Value::Array(choices));
    body["usage"] = usage(prompt_tokens, completion_tokens);
    Ok(Json(body).into_response())
}

/// Streams chunks as the engine produces text, then `[DONE]`.
fn stream_answer(
    metrics: Arc<Metrics>,
    answer: Answer,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    include_usage: bool,
    guard: InFlight,
    (deadline, timeout): (Deadline, std::time::Duration),
) -> Response {
    let (frames, frames_rx) = mpsc::unbounded_channel::<String>();
    let choices = receivers.len();
    tokio::spawn(async move {
        // `guard` moves into this task: the request counts as in flight until
        // the stream ends or the client leaves. Bound whole here: a block that
        // only read `guard.started` would capture just that field, and the
        // guard would drop as soon as the response is returned.
        let in_flight = guard;
        let send = |value: Value| frames.send(value.to_string()).is_ok();
        if answer.endpoint == Endpoint::Chat {
            for index in 0..choices {
                let role = json!([{"index": index, "delta": {"role": "assistant", "content": ""},
                                   "logprobs": null, "finish_reason": null}]);
                if !send(answer.envelope(true, role)) {
                    return;
                }
            }
        }
        let mut merged = stream::select_all(
            receivers
                .into_iter()
                .enumerate()
                .map(|(i, rx)| UnboundedReceiverStream::new(rx).map(move |e| (i, e))),
        );
        let (mut prompt_tokens, mut completion_tokens, mut first) = (0, 0, true);
        loop {
            let Ok(next) = timeout_at(deadline, merged.next()).await else {
                // Out of time: an error event ends the stream, and dropping
                // the receivers (on return) stops the generation.
                let _ = send(ApiError::timeout(timeout).body());
                return;
            };
            let Some((index, event)) = next else {
                break;
            };
            let ok = match event {
                Event::Text(text) => {
                    if std::mem::take(&mut first) {
                        metrics
                            .time_to_first_token_seconds
                            .observe(in_flight.started.elapsed().as_secs_f64());
                    }
                    send(answer.chunk(index, Some(&text), None))
                }
                Event::Done(finish) => {
                    prompt_tokens += finish.prompt_tokens;
                    completion_tokens += finish.completion_tokens;
                    send(answer.chunk(index, None, Some(&finish)))
                }
                Event::Failed(message) => {
                    let _ = send(ApiError::internal(message).body());
                    return;
                }
            };
            if !ok {
                // The client left: dropping the receivers stops generation.
                return;
            }
        }
        if include_usage {
            let mut last = answer.envelope(true, json!([]));
            last["usage"] = usage(prompt_tokens, completion_tokens);
            send(last);
        }
        let _ = frames.send("[DONE]".into());
    });
    let events = UnboundedReceiverStream::new(frames_rx)
        .map(|data| Ok::<_, Infallible>(SseEvent::default().data(data)));
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
