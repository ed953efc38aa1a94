//! The request bodies of `/v1/completions` and `/v1/chat/completions`, and
//! their validation into what the engine needs. Every rejection names the
//! parameter; parameters that would change the answer but are not supported
//! are rejected rather than ignored.

use llmops_model::{Sampling, StopSequences};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;
use crate::chat::Message;
use crate::engine::Penalties;

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A completions prompt: text, texts, token ids or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling and length parameters both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonParams {
    pub model: String,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Not in OpenAI's API; accepted as other open servers do.
    pub top_k: Option<i64>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Read from the same object by [`parse`] (not `flatten`: through it, an
    /// error loses the name of the field).
    #[serde(skip)]
    pub common: CommonParams,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
}

/// Message content: text, or a list of parts of which only text is supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Read from the same object by [`parse`].
    #[serde(skip)]
    pub common: CommonParams,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
}

/// The body of one endpoint: its own fields, and the shared ones.
pub trait RequestBody: DeserializeOwned {
    fn set_common(&mut self, common: CommonParams);
}

impl RequestBody for CompletionRequest {
    fn set_common(&mut self, common: CommonParams) {
        self.common = common;
    }
}

impl RequestBody for ChatRequest {
    fn set_common(&mut self, common: CommonParams) {
        self.common = common;
    }
}

/// Parses a JSON body. Bytes that are not JSON (invalid UTF-8 included) are a
/// 400 saying so; a field that is missing or of the wrong type is a 400 naming
/// it in `param` (`temperature`, `messages[0].content`).
pub fn parse<T: RequestBody>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let common = typed(&value)?;
    let mut request: T = typed(&value)?;
    request.set_common(common);
    Ok(request)
}

fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let problem = e.into_inner().to_string();
        // A missing field is reported at its parent.
        let missing = problem
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| match path.as_str() {
                "." => field.to_string(),
                parent => format!("{parent}.{field}"),
            });
        match missing {
            Some(param) => ApiError::invalid(&param, format!("{param} is required")),
            None if path == "." => ApiError::bad_request(format!(
                "the request body is not a valid request: {problem}"
            )),
            None => ApiError::invalid(&path, format!("{path}: {problem}")),
        }
    })
}

/// Most choices per prompt (`n`).
pub const MAX_N: i64 = 16;
/// Most alternatives per token: completions' `logprobs` and chat's `top_logprobs`.
pub const MAX_COMPLETION_LOGPROBS: i64 = 5;
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// What the engine needs for each prompt of one request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `Some(0)` only for completions with `echo` (the prompt scored, nothing generated).
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices per prompt.
    pub n: usize,
    pub penalties: Penalties,
    /// The number of alternatives listed per token, when log-probabilities are asked for.
    pub logprobs: Option<usize>,
    /// Completions: the prompt comes back before the completion (with its
    /// log-probabilities when `logprobs` is set).
    pub echo: bool,
}

impl Plan {
    pub fn stop_sequences(&self) -> StopSequences {
        StopSequences::new(self.stop.iter().cloned())
    }
}

fn unsupported(param: &str, what: &str) -> ApiError {
    ApiError::invalid(
        param,
        format!("{param}: {what} is not supported by this server"),
    )
}

/// Validates the shared parameters. `max_tokens` may come from another field
/// (`max_completion_tokens`), named by `max_param`.
pub fn plan(
    common: &CommonParams,
    max_tokens: Option<i64>,
    max_param: &str,
) -> Result<Plan, ApiError> {
    plan_with(common, max_tokens, max_param, false)
}

/// [`plan`], where `allow_zero` admits `max_tokens: 0`.
fn plan_with(
    common: &CommonParams,
    max_tokens: Option<i64>,
    max_param: &str,
    allow_zero: bool,
) -> Result<Plan, ApiError> {
    let n = match common.n {
        None => 1,
        Some(n) if (1..=MAX_N).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("n must be between 1 and {MAX_N}, got {n}"),
            ));
        }
    };
    let penalty = |param: &str, value: Option<f64>| match value {
        Some(v) if !(-2.0..=2.0).contains(&v) => Err(ApiError::invalid(
            param,
            format!("{param} must be between -2 and 2, got {v}"),
        )),
        v => Ok(v.unwrap_or(0.0) as f32),
    };
    let presence = penalty("presence_penalty", common.presence_penalty)?;
    let frequency = penalty("frequency_penalty", common.frequency_penalty)?;
    let penalties = Penalties {
        presence,
        frequency,
        logit_bias: logit_bias(common.logit_bias.as_ref())?,
    };
    let max_tokens = match max_tokens {
        Some(0) if allow_zero => Some(0),
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                max_param,
                format!("{max_param} must be at least 1, got {m}"),
            ));
        }
        Some(m) => Some(m as usize),
        None => None,
    };
    let temperature = common.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_k = match common.top_k {
        Some(k) if k < 1 => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be at least 1, got {k}"),
            ));
        }
        k => k.map(|k| k as usize),
    };
    let sampling = Sampling::from_params(temperature, top_k, common.top_p).map_err(|e| {
        let param = if common.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            "top_p"
        } else {
            "temperature"
        };
        ApiError::invalid(param, e.to_string())
    })?;
    let stop = match &common.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s.clone()],
        Some(OneOrMany::Many(v)) if v.len() > 4 => {
            return Err(ApiError::invalid(
                "stop",
                format!("stop takes up to 4 sequences, got {}", v.len()),
            ));
        }
        Some(OneOrMany::Many(v)) => v.clone(),
    };
    Ok(Plan {
        max_tokens,
        sampling,
        seed: common.seed.map(|s| s as u64),
        stop,
        stream: common.stream,
        include_usage: common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
        n,
        penalties,
        logprobs: None,
        echo: false,
    })
}

/// `logit_bias`: an object of token ids (as strings) to biases in -100..=100.
/// Whether each id is in the vocabulary is checked once the tokenizer is known.
fn logit_bias(value: Option<&Value>) -> Result<Vec<(usize, f32)>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(map) = value.as_object() else {
        return Err(ApiError::invalid(
            "logit_bias",
            "logit_bias must be an object of token ids to biases",
        ));
    };
    let mut biases = Vec::with_capacity(map.len());
    for (key, bias) in map {
        let token: usize = key.parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("logit_bias: {key:?} is not a token id"),
            )
        })?;
        let bias = bias
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                ApiError::invalid(
                    "logit_bias",
                    format!("logit_bias[{key}] must be a number between -100 and 100, got {bias}"),
                )
            })?;
        biases.push((token, bias as f32));
    }
    Ok(biases)
}

/// Refuses log-probabilities in a stream: its chunks follow the text, which
/// stop strings hold back, not the tokens.
fn no_stream_logprobs(common: &CommonParams) -> Result<(), ApiError> {
    if common.stream {
        return Err(unsupported("logprobs", "logprobs together with stream"));
    }
    Ok(())
}

impl CompletionRequest {
    pub fn plan(&self) -> Result<Plan, ApiError> {
        let logprobs = match self.logprobs {
            None => None,
            Some(k) if (0..=MAX_COMPLETION_LOGPROBS).contains(&k) => {
                no_stream_logprobs(&self.common)?;
                Some(k as usize)
            }
            Some(k) => {
                return Err(ApiError::invalid(
                    "logprobs",
                    format!("logprobs must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {k}"),
                ));
            }
        };
        let echo = self.echo == Some(true);
        let n = self.common.n.unwrap_or(1);
        if self.best_of.is_some_and(|b| b != 1 && b != n) {
            return Err(unsupported("best_of", "best_of other than 1 or n"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported("suffix", "suffix"));
        }
        // With echo, `max_tokens: 0` asks for the prompt only (its log-likelihood).
        let mut plan = plan_with(&self.common, self.common.max_tokens, "max_tokens", echo)?;
        plan.logprobs = logprobs;
        plan.echo = echo;
        Ok(plan)
    }
}

impl ChatRequest {
    pub fn plan(&self) -> Result<Plan, ApiError> {
        let logprobs = self.logprobs == Some(true);
        let top = match self.top_logprobs {
            Some(_) if !logprobs => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs requires logprobs to be true",
                ));
            }
            Some(k) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                ));
            }
            k => k.unwrap_or(0) as usize,
        };
        if logprobs {
            no_stream_logprobs(&self.common)?;
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(unsupported("tools", "tool calling"));
        }
        if self.response_format.as_ref().is_some_and(|f| {
            f.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "text")
        }) {
            return Err(unsupported(
                "response_format",
                "a structured response_format",
            ));
        }
        let (max, param) = match self.max_completion_tokens {
            Some(m) => (Some(m), "max_completion_tokens"),
            None => (self.common.max_tokens, "max_tokens"),
        };
        let mut plan = plan(&self.common, max, param)?;
        plan.logprobs = logprobs.then_some(top);
        Ok(plan)
    }

    /// The messages with their content as plain text.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => parts
                        .iter()
                        .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                            (Some("text"), Some(text)) => Ok(text),
                            _ => Err(ApiError::invalid(
                                &format!("messages[{i}].content"),
                                "only text content parts are supported",
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .concat(),
                };
                Ok(Message {
                    role: m.role.clone(),
                    content,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(json: &str) -> CommonParams {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rejections_name_the_parameter() {
        let cases = [
            (r#"{"model":"m","temperature":-1}"#, "temperature"),
            (r#"{"model":"m","temperature":3}"#, "temperature"),
            (r#"{"model":"m","top_p":0}"#, "top_p"),
            (r#"{"model":"m","top_k":0}"#, "top_k"),
            (r#"{"model":"m","n":0}"#, "n"),
            (r#"{"model":"m","n":17}"#, "n"),
            (
                r#"{"model":"m","presence_penalty":2.5}"#,
                "presence_penalty",
            ),
            (
                r#"{"model":"m","frequency_penalty":-3}"#,
                "frequency_penalty",
            ),
            (r#"{"model":"m","logit_bias":{"x":1}}"#, "logit_bias"),
            (r#"{"model":"m","logit_bias":{"5":101}}"#, "logit_bias"),
            (r#"{"model":"m","logit_bias":{"5":"a"}}"#, "logit_bias"),
            (r#"{"model":"m","logit_bias":[1]}"#, "logit_bias"),
            (r#"{"model":"m","stop":["a","b","c","d","e"]}"#, "stop"),
        ];
        for (json, param) in cases {
            let c = common(json);
            let err = plan(&c, c.max_tokens, "max_tokens").unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{json}");
            assert!(err.message.contains(param), "{json}: {}", err.message);
        }
        let c = common(r#"{"model":"m"}"#);
        let err = plan(&c, Some(0), "max_completion_tokens").unwrap_err();
        assert_eq!(err.param.as_deref(), Some("max_completion_tokens"));
    }

    fn completion(json: &str) -> Result<Plan, ApiError> {
        parse::<CompletionRequest>(json.as_bytes())?.plan()
    }

    fn chat(json: &str) -> Result<Plan, ApiError> {
        parse::<ChatRequest>(json.as_bytes())?.plan()
    }

    #[test]
    fn logprobs_echo_and_their_limits() {
        let p = completion(r#"{"model":"m","prompt":"a","logprobs":5,"echo":true,"max_tokens":0}"#)
            .unwrap();
        assert_eq!((p.logprobs, p.echo, p.max_tokens), (Some(5), true, Some(0)));
        let p = completion(r#"{"model":"m","prompt":"a","logprobs":0}"#).unwrap();
        assert_eq!((p.logprobs, p.echo), (Some(0), false));
        let p = completion(r#"{"model":"m","prompt":"a","logprobs":null,"echo":false}"#).unwrap();
        assert_eq!((p.logprobs, p.echo), (None, false));
        let p = chat(r#"{"model":"m","messages":[],"logprobs":true,"top_logprobs":20}"#).unwrap();
        assert_eq!(p.logprobs, Some(20));
        let p = chat(r#"{"model":"m","messages":[],"logprobs":true}"#).unwrap();
        assert_eq!(p.logprobs, Some(0));
        let p = chat(r#"{"model":"m","messages":[],"logprobs":false}"#).unwrap();
        assert_eq!(p.logprobs, None);
        let refused = [
            (
                completion(r#"{"model":"m","prompt":"a","logprobs":6}"#),
                "logprobs",
            ),
            (
                completion(r#"{"model":"m","prompt":"a","logprobs":-1}"#),
                "logprobs",
            ),
            (
                completion(r#"{"model":"m","prompt":"a","logprobs":true}"#),
                "logprobs",
            ),
            (
                completion(r#"{"model":"m","prompt":"a","logprobs":1,"stream":true}"#),
                "logprobs",
            ),
            // Without echo there is nothing to answer with no tokens.
            (
                completion(r#"{"model":"m","prompt":"a","max_tokens":0}"#),
                "max_tokens",
            ),
            (
                completion(r#"{"model":"m","prompt":"a","best_of":3}"#),
                "best_of",
            ),
            (
                chat(r#"{"model":"m","messages":[],"top_logprobs":2}"#),
                "top_logprobs",
            ),
            (
                chat(r#"{"model":"m","messages":[],"logprobs":true,"top_logprobs":21}"#),
                "top_logprobs",
            ),
            (
                chat(r#"{"model":"m","messages":[],"logprobs":true,"stream":true}"#),
                "logprobs",
            ),
            (
                chat(r#"{"model":"m","messages":[],"max_completion_tokens":0}"#),
                "max_completion_tokens",
            ),
        ];
        for (i, (result, param)) in refused.into_iter().enumerate() {
            let err = result.expect_err(param);
            assert_eq!(
                err.param.as_deref(),
                Some(param),
                "case {i}: {}",
                err.message
            );
            assert!(err.message.contains(param), "case {i}: {}", err.message);
        }
    }

    #[test]
    fn n_penalties_and_logit_bias_reach_the_plan() {
        let p = completion(
            r#"{"model":"m","prompt":"a","n":3,"best_of":3,"presence_penalty":0.5,
                "frequency_penalty":-1,"logit_bias":{"7":-100,"12":2.5}}"#,
        )
        .unwrap();
        assert_eq!(p.n, 3);
        assert_eq!(p.penalties.presence, 0.5);
        assert_eq!(p.penalties.frequency, -1.0);
        let mut bias = p.penalties.logit_bias.clone();
        bias.sort_by_key(|b| b.0);
        assert_eq!(bias, [(7, -100.0), (12, 2.5)]);
        let p = chat(r#"{"model":"m","messages":[],"logit_bias":{},"n":16}"#).unwrap();
        assert_eq!((p.n, p.penalties), (16, Penalties::default()));
    }

    #[test]
    fn temperature_zero_is_greedy_and_defaults_sample() {
        let c = common(r#"{"model":"m","temperature":0,"stop":"\n"}"#);
        let p = plan(&c, None, "max_tokens").unwrap();
        assert_eq!(p.sampling, Sampling::Greedy);
        assert_eq!(p.stop, vec!["\n".to_string()]);
        let c = common(r#"{"model":"m"}"#);
        assert!(matches!(
            plan(&c, None, "max_tokens").unwrap().sampling,
            Sampling::Sample { .. }
        ));
    }

    #[test]
    fn chat_content_parts_are_joined_text() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.messages().unwrap()[0].content, "ab");
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.messages().unwrap_err().param.as_deref(),
            Some("messages[0].content")
        );
    }

    #[test]
    fn malformed_bodies_are_400s_that_say_what_is_wrong() {
        let err = parse::<ChatRequest>(b"{\"model\": ").unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        let err = parse::<ChatRequest>(b"{\"model\":\"m\",\"messages\":[],\"user\":\"\xff\"}")
            .unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        let err = parse::<ChatRequest>(b"[1]").unwrap_err();
        assert!(err.message.contains("JSON object"), "{}", err.message);
        let err = parse::<ChatRequest>(br#"{"messages":[]}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("model"));
        let err =
            parse::<ChatRequest>(br#"{"model":"m","messages":[{"content":"hi"}]}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
        let err = parse::<CompletionRequest>(br#"{"model":"m","prompt":"hi","temperature":"hot"}"#)
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("temperature"));
        assert!(err.message.starts_with("temperature: "), "{}", err.message);
        let ok: ChatRequest =
            parse(br#"{"model":"m","messages":[],"temperature":0.5,"extra":1}"#).unwrap();
        assert_eq!(ok.common.model, "m");
        assert_eq!(ok.common.temperature, Some(0.5));
    }

    use proptest::prelude::*;

    /// A JSON value that is not a number.
    fn not_a_number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
            Just(serde_json::json!([1, 2])),
            Just(serde_json::json!({"a": 1})),
        ]
    }

    /// A JSON value that is not a string or a list of strings.
    fn not_text() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            Just(serde_json::json!([1])),
            Just(serde_json::json!({"a": "b"})),
        ]
    }

    /// A JSON value that is not a boolean.
    fn not_a_flag() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i32>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
            Just(serde_json::json!([true])),
        ]
    }

    fn wrongly_typed_field() -> impl Strategy<Value = (&'static str, Value)> {
        prop_oneof![
            (
                prop::sample::select(vec![
                    "temperature",
                    "top_p",
                    "presence_penalty",
                    "max_tokens",
                    "top_k",
                    "n",
                    "seed"
                ]),
                not_a_number()
            ),
            (
                prop::sample::select(vec!["model", "stop", "messages"]),
                not_text()
            ),
            (Just("stream"), not_a_flag()),
        ]
    }

    proptest! {
        /// Whatever bytes arrive, the answer is a request or a 400.
        #[test]
        fn any_body_parses_or_is_a_400(body in any::<Vec<u8>>()) {
            if let Err(err) = parse::<ChatRequest>(&body) {
                prop_assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
            }
            if let Err(err) = parse::<CompletionRequest>(&body) {
                prop_assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
            }
        }

        /// A field of the wrong type is named, whichever it is.
        #[test]
        fn a_wrongly_typed_field_is_named((field, value) in wrongly_typed_field()) {
            let mut body = serde_json::json!({"model": "m", "messages": []});
            body[field] = value.clone();
            let err = parse::<ChatRequest>(body.to_string().as_bytes()).unwrap_err();
            let param = err.param.clone().unwrap_or_default();
            prop_assert!(param.starts_with(field), "{} = {}: param {:?}, {}", field, value, param, err.message);
        }
    }
}
