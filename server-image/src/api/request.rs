//! The request bodies of `/v1/completions` and `/v1/chat/completions`, and
//! their validation into what the engine needs. Every rejection names the
//! parameter; parameters that would change the answer but are not supported
//! are rejected rather than ignored.

use llmops_model::{Sampling, StopSequences};
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use crate::chat::Message;

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
    #[serde(flatten)]
    pub common: CommonParams,
    pub logprobs: Option<Value>,
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
    #[serde(flatten)]
    pub common: CommonParams,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
}

/// Parses a JSON body; a syntax or type error is a 400 that quotes serde.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not a valid request: {e}")))
}

/// What the engine needs for each prompt of one request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
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
    if let Some(n) = common.n
        && n != 1
    {
        return Err(unsupported(
            "n",
            &format!("n={n} (only one choice per prompt)"),
        ));
    }
    for (param, value) in [
        ("presence_penalty", common.presence_penalty),
        ("frequency_penalty", common.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(unsupported(param, "a non-zero penalty"));
        }
    }
    if common
        .logit_bias
        .as_ref()
        .is_some_and(|b| b.as_object().is_none_or(|o| !o.is_empty()))
    {
        return Err(unsupported("logit_bias", "logit_bias"));
    }
    let max_tokens = match max_tokens {
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
    })
}

impl CompletionRequest {
    pub fn plan(&self) -> Result<Plan, ApiError> {
        if self.logprobs.as_ref().is_some_and(|l| !l.is_null()) {
            return Err(unsupported("logprobs", "logprobs"));
        }
        if self.echo == Some(true) {
            return Err(unsupported("echo", "echo"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(unsupported("best_of", "best_of other than 1"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported("suffix", "suffix"));
        }
        plan(&self.common, self.common.max_tokens, "max_tokens")
    }
}

impl ChatRequest {
    pub fn plan(&self) -> Result<Plan, ApiError> {
        if self.logprobs == Some(true) {
            return Err(unsupported("logprobs", "logprobs"));
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
        plan(&self.common, max, param)
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
            (r#"{"model":"m","n":2}"#, "n"),
            (
                r#"{"model":"m","presence_penalty":0.5}"#,
                "presence_penalty",
            ),
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
}
