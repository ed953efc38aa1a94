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
use crate::engine::{Event, Finish, Logprobs, Request, SubmitError, TokenLogprob};
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

/// The model a request names: the base (no adapter) or a serving adapter.
struct Target {
    name: String,
    adapter: Option<u32>,
}

fn check_model(state: &AppState, served: &Served, model: &str) -> Result<Target, ApiError> {
    let adapter = if model == served.name {
        None
    } else {
        Some(
            state
                .adapters
                .route(model)
                .ok_or_else(|| ApiError::model_not_found(model))?,
        )
    };
    Ok(Target {
        name: model.to_string(),
        adapter,
    })
}

pub async fn completions(state: &AppState, body: &[u8]) -> Result<Response, ApiError> {
    let started = Instant::now();
    let served = state.served()?;
    let request: CompletionRequest = parse(body)?;
    let target = check_model(state, &served, &request.common.model)?;
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
    // The prompts as text, for `echo` and the offsets of log-probabilities.
    let texts: Vec<String> = if plan.echo || plan.logprobs.is_some() {
        match &request.prompt {
            Prompt::Text(t) => vec![t.clone()],
            Prompt::Texts(ts) => ts.clone(),
            Prompt::Tokens(_) | Prompt::TokenLists(_) => {
                prompts.iter().map(|ids| decode_all(&served, ids)).collect()
            }
        }
    } else {
        vec![String::new(); prompts.len()]
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
    let prompts = prompts.into_iter().zip(texts).collect();
    run(
        state,
        served,
        target,
        Endpoint::Completions,
        prompts,
        plan,
        started,
    )
    .await
}

/// The text of `ids`, special tokens included.
fn decode_all(served: &Served, ids: &[i64]) -> String {
    let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
    served.tokenizer.decode(&ids, false).unwrap_or_default()
}

pub async fn chat_completions(state: &AppState, body: &[u8]) -> Result<Response, ApiError> {
    let started = Instant::now();
    let served = state.served()?;
    let request: ChatRequest = parse(body)?;
    let target = check_model(state, &served, &request.common.model)?;
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
    run(
        state,
        served,
        target,
        Endpoint::Chat,
        vec![(prompt, String::new())],
        plan,
        started,
    )
    .await
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
    // Nothing to generate is an error unless it was asked for (`echo` scoring).
    if asked > room || (asked == 0 && plan.max_tokens != Some(0)) {
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
    fn choice(&self, index: usize, text: String, finish: &Finish, logprobs: Value) -> Value {
        match self.endpoint {
            Endpoint::Completions => json!({
                "index": index, "text": text, "logprobs": logprobs,
                "finish_reason": finish.reason.as_str(),
            }),
            Endpoint::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
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

/// The log-probabilities of one choice in the shape of its endpoint.
struct Scored<'a> {
    served: &'a Served,
    /// Alternatives listed per token.
    top: usize,
}

impl Scored<'_> {
    fn text(&self, token: i64) -> String {
        decode_all(self.served, &[token])
    }

    /// Completions: `tokens`, `token_logprobs`, `top_logprobs` and
    /// `text_offset` (character offsets into the prompt followed by the
    /// completion), the echoed prompt's first (its first token has no
    /// log-probability, so null).
    fn completion(
        &self,
        prompt: &[i64],
        prompt_text: &str,
        echo: Option<&[TokenLogprob]>,
        generated: &[TokenLogprob],
    ) -> Value {
        let mut tokens = Vec::new();
        let mut logprobs = Vec::new();
        let mut tops = Vec::new();
        let mut offsets = Vec::new();
        let mut offset = match echo {
            Some(_) => 0,
            None => prompt_text.chars().count(),
        };
        let mut push = |text: String, logprob: Value, top: Value| {
            offsets.push(offset);
            offset += text.chars().count();
            tokens.push(text);
            logprobs.push(logprob);
            tops.push(top);
        };
        let top = |scored: &TokenLogprob| {
            let map: serde_json::Map<String, Value> = scored
                .top
                .iter()
                .take(self.top)
                .map(|&(id, lp)| (self.text(id), json!(lp)))
                .collect();
            Value::Object(map)
        };
        if let Some(scores) = echo {
            for (i, &id) in prompt.iter().enumerate() {
                match i.checked_sub(1).and_then(|j| scores.get(j)) {
                    Some(s) => push(self.text(id), json!(s.logprob), top(s)),
                    None => push(self.text(id), Value::Null, Value::Null),
                }
            }
        }
        for s in generated {
            push(self.text(s.token), json!(s.logprob), top(s));
        }
        json!({
            "tokens": tokens,
            "token_logprobs": logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        })
    }

    /// Chat: `content`, one entry per generated token.
    fn chat(&self, generated: &[TokenLogprob]) -> Value {
        let entry = |id: i64, logprob: f32| {
            let token = self.text(id);
            let bytes = token.as_bytes().to_vec();
            json!({"token": token, "logprob": logprob, "bytes": bytes})
        };
        let content: Vec<Value> = generated
            .iter()
            .map(|s| {
                let mut e = entry(s.token, s.logprob);
                e["top_logprobs"] = s
                    .top
                    .iter()
                    .take(self.top)
                    .map(|&(id, lp)| entry(id, lp))
                    .collect();
                e
            })
            .collect();
        json!({"content": content})
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    state: &AppState,
    served: Arc<Served>,
    target: Target,
    endpoint: Endpoint,
    prompts: Vec<(Vec<i64>, String)>,
    plan: Plan,
    started: Instant,
) -> Result<Response, ApiError> {
    let vocab = served.tokenizer.get_vocab_size(true);
    if let Some(&(bad, _)) = plan
        .penalties
        .logit_bias
        .iter()
        .find(|(id, _)| *id >= vocab)
    {
        return Err(ApiError::invalid(
            "logit_bias",
            format!("logit_bias: token id {bad} is outside the vocabulary (size {vocab})"),
        ));
    }
    let max_prompts = state.limits.max_prompts.min(served.engine.max_queue());
    let choices = prompts.len() * plan.n;
    if plan.n > 1 && choices > max_prompts {
        return Err(ApiError::invalid(
            "n",
            format!(
                "n: this server answers at most {max_prompts} choices per request, {choices} were asked for"
            ),
        ));
    }
    let budgets = prompts
        .iter()
        .map(|(p, _)| completion_budget(&served, endpoint, &plan, p.len()))
        .collect::<Result<Vec<_>, _>>()?;
    let guard = InFlight::new(state.metrics.clone(), endpoint.route(), started);
    let mut receivers = Vec::with_capacity(choices);
    let mut requests = Vec::with_capacity(choices);
    let echo = plan.echo && endpoint == Endpoint::Completions;
    for (p, ((prompt, _), budget)) in prompts.iter().zip(budgets).enumerate() {
        for j in 0..plan.n {
            let index = p * plan.n + j;
            let (tx, rx) = mpsc::unbounded_channel();
            requests.push(Request {
                prompt: prompt.clone(),
                max_new_tokens: budget,
                sampling: plan.sampling,
                // Each choice of a seeded request gets its own reproducible stream.
                seed: plan
                    .seed
                    .map_or_else(random_u64, |s| s.wrapping_add(index as u64)),
                stop: plan.stop_sequences(),
                logprobs: Logprobs {
                    generated: plan.logprobs,
                    prompt: plan.logprobs.filter(|_| echo),
                },
                penalties: plan.penalties.clone(),
                adapter: target.adapter,
                events: tx,
            });
            receivers.push(rx);
        }
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
        model: target.name,
    };
    let shape = Shape {
        n: plan.n,
        echo,
        logprobs: plan.logprobs,
        prompts,
    };
    if plan.stream {
        Ok(stream_answer(
            state.metrics.clone(),
            answer,
            shape,
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
            whole_answer(&state.metrics, &served, answer, shape, receivers, started),
        )
        .await
        .unwrap_or_else(|_| Err(ApiError::timeout(timeout)))
    }
}

/// How the choices of a request map to its prompts, and what they carry.
struct Shape {
    /// Choices per prompt: choice `i` answers prompt `i / n`.
    n: usize,
    echo: bool,
    logprobs: Option<usize>,
    /// Each prompt's tokens and text.
    prompts: Vec<(Vec<i64>, String)>,
}

/// Waits for every choice and answers with one body.
async fn whole_answer(
    metrics: &Metrics,
    served: &Served,
    answer: Answer,
    shape: Shape,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    started: Instant,
) -> Result<Response, ApiError> {
    let mut choices = Vec::with_capacity(receivers.len());
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let mut first = true;
    for (index, mut rx) in receivers.into_iter().enumerate() {
        let (prompt, prompt_text) = &shape.prompts[index / shape.n];
        let mut text = if shape.echo {
            prompt_text.clone()
        } else {
            String::new()
        };
        let mut scores = Vec::new();
        let mut generated = Vec::new();
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
                Some(Event::Prompt(s)) => scores = s,
                Some(Event::Token(t)) => generated.push(t),
                Some(Event::Done(finish)) => break finish,
                Some(Event::Failed(message)) => return Err(ApiError::internal(message)),
                None => return Err(ApiError::internal("the generation engine stopped")),
            }
        };
        // The prompt counts once, however many choices answer it.
        if index % shape.n == 0 {
            prompt_tokens += finish.prompt_tokens;
        }
        completion_tokens += finish.completion_tokens;
        let logprobs = match shape.logprobs {
            None => Value::Null,
            Some(top) => {
                let scored = Scored { served, top };
                match answer.endpoint {
                    Endpoint::Completions => scored.completion(
                        prompt,
                        prompt_text,
                        shape.echo.then_some(&scores[..]),
                        &generated,
                    ),
                    Endpoint::Chat => scored.chat(&generated),
                }
            }
        };
        choices.push(answer.choice(index, text, &finish, logprobs));
    }
    let mut body = answer.envelope(false, Value::Array(choices));
    body["usage"] = usage(prompt_tokens, completion_tokens);
    Ok(Json(body).into_response())
}

/// Streams chunks as the engine produces text, then `[DONE]`.
fn stream_answer(
    metrics: Arc<Metrics>,
    answer: Answer,
    shape: Shape,
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
        if shape.echo {
            for index in 0..choices {
                let (_, prompt_text) = &shape.prompts[index / shape.n];
                if !prompt_text.is_empty() && !send(answer.chunk(index, Some(prompt_text), None)) {
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
                // Log-probabilities are refused with `stream`.
                Event::Prompt(_) | Event::Token(_) => true,
                Event::Done(finish) => {
                    if index % shape.n == 0 {
                        prompt_tokens += finish.prompt_tokens;
                    }
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
