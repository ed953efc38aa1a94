//! Chat messages to a prompt, with the model's own chat template.
//!
//! Hugging Face models ship a Jinja template in `tokenizer_config.json`
//! (`chat_template`), written for Python's Jinja: it is rendered with minijinja
//! and its Python-compatibility methods (`.strip()`, `.startswith()`, ...), with
//! the variables `transformers` passes (`messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, `raise_exception`). A model without one gets a plain
//! `role: content` transcript.

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::Serialize;
use serde_json::Value;

/// The file that carries the template and the special token strings.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Used when the model has no template of its own.
const FALLBACK_TEMPLATE: &str = "{% for message in messages %}{{ message.role }}: {{ message.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

/// One chat message with its content flattened to text.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A compiled chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Whether the template came with the model.
    pub from_model: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("from_model", &self.from_model)
            .finish_non_exhaustive()
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The template text: a string, or the entry named `default` of a list.
fn template_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Array(entries) => entries
            .iter()
            .find(|e| e["name"] == "default")
            .and_then(|e| e["template"].as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl ChatTemplate {
    /// Reads the template from a model directory's `tokenizer_config.json`, if any.
    pub fn from_model_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(TOKENIZER_CONFIG_FILE);
        let config: Value = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        let template = template_text(config.get("chat_template"));
        Self::new(
            template.as_deref(),
            token_string(config.get("bos_token")).unwrap_or_default(),
            token_string(config.get("eos_token")).unwrap_or_default(),
        )
        .map_err(|e| anyhow::anyhow!("the chat template in {}: {e}", path.display()))
    }

    /// Compiles `template` (or the fallback when `None`).
    pub fn new(
        template: Option<&str>,
        bos_token: String,
        eos_token: String,
    ) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", template.unwrap_or(FALLBACK_TEMPLATE).to_string())?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
            from_model: template.is_some(),
        })
    }

    /// The prompt for `messages`, ending where the assistant's answer begins.
    /// Errors (including the template's own `raise_exception`) describe what
    /// the messages lack, for a 400 answer.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid messages").to_string(),
                _ => format!("the model's chat template failed: {e}"),
            })
    }

    /// The end-of-sequence token string, if the tokenizer config names one.
    pub fn eos_token(&self) -> Option<&str> {
        (!self.eos_token.is_empty()).then_some(self.eos_token.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages() -> Vec<Message> {
        vec![
            Message {
                role: "system".into(),
                content: "be brief".into(),
            },
            Message {
                role: "user".into(),
                content: "hi".into(),
            },
        ]
    }

    #[test]
    fn a_model_template_renders_like_jinja() {
        let t = ChatTemplate::new(
            Some("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content.strip() }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"),
            "<s>".into(),
            "</s>".into(),
        )
        .unwrap();
        assert_eq!(
            t.render(&messages()).unwrap(),
            "<s><|system|>be brief</s><|user|>hi</s><|assistant|>"
        );
    }

    #[test]
    fn without_a_template_a_plain_transcript() {
        let t = ChatTemplate::new(None, String::new(), String::new()).unwrap();
        assert_eq!(
            t.render(&messages()).unwrap(),
            "system: be brief\nuser: hi\nassistant:"
        );
    }

    #[test]
    fn raise_exception_becomes_the_error_message() {
        let t = ChatTemplate::new(
            Some("{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}"),
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(
            t.render(&messages()).unwrap_err(),
            "Conversations must start with a user message"
        );
    }

    #[test]
    fn list_templates_use_the_default_entry() {
        let v = serde_json::json!([{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}]);
        assert_eq!(template_text(Some(&v)).as_deref(), Some("y"));
        let v = serde_json::json!({"content": "<eos>", "lstrip": false});
        assert_eq!(token_string(Some(&v)).as_deref(), Some("<eos>"));
    }
}
