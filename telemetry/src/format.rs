//! Log lines: JSON for log pipelines, text for people, and the object a pod
//! works for on every line.

use std::fmt;
use std::str::FromStr;

use llmops_contract::env;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("{other:?} is not a log format: json or text")),
        }
    }
}

impl LogFormat {
    /// `explicit` (a command-line flag) when given, else `$LLMOPS_LOG_FORMAT`,
    /// else text on a terminal and JSON otherwise (a pod's log, a pipe).
    pub fn resolve(explicit: Option<Self>, terminal: bool) -> anyhow::Result<Self> {
        if let Some(format) = explicit {
            return Ok(format);
        }
        match std::env::var(env::LOG_FORMAT) {
            Ok(text) if !text.trim().is_empty() => text
                .parse()
                .map_err(|err| anyhow::anyhow!("invalid {}: {err}", env::LOG_FORMAT)),
            _ => Ok(if terminal { Self::Text } else { Self::Json }),
        }
    }
}

/// The object a pod works for: `KIND/NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl FromStr for Owner {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [kind, namespace, name] if parts.iter().all(|p| !p.is_empty()) => Ok(Self {
                kind: (*kind).into(),
                namespace: (*namespace).into(),
                name: (*name).into(),
            }),
            _ => Err(format!(
                "{text:?} is not KIND/NAMESPACE/NAME (e.g. FineTune/ml/support-bot)"
            )),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

impl Owner {
    /// `$LLMOPS_OWNER`, which the operator sets on its pods.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var(env::OWNER) {
            Ok(text) if !text.trim().is_empty() => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|err| anyhow::anyhow!("invalid {}: {err}", env::OWNER)),
            _ => Ok(None),
        }
    }

    /// `"resource":{"kind":..,"namespace":..,"name":..}`, escaped once.
    fn json_member(&self) -> String {
        let value = serde_json::json!({
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
        });
        format!("\"resource\":{value}")
    }
}

/// Wraps a line formatter so that every line names the owner: JSON lines get a
/// leading `"resource"` member, text lines a `Kind namespace/name` prefix.
/// Spans cannot do this: lines of spawned tasks and threads have no span.
pub(crate) struct WithOwner<F> {
    pub inner: F,
    /// `None`: lines as `inner` writes them.
    pub owner: Option<Owner>,
    pub json: bool,
    /// The owner as a JSON member, computed once.
    member: String,
}

impl<F> WithOwner<F> {
    pub fn new(inner: F, owner: Option<Owner>, json: bool) -> Self {
        let member = owner.as_ref().map(Owner::json_member).unwrap_or_default();
        Self {
            inner,
            owner,
            json,
            member,
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithOwner<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(owner) = &self.owner else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(
                writer,
                "{} {}/{} | ",
                owner.kind, owner.namespace, owner.name
            )?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON formatter writes one object per line; splice the owner in as
        // its first member, keeping the formatter's order of the rest.
        match line.strip_prefix('{') {
            Some(rest) if !rest.starts_with('}') => {
                writer.write_char('{')?;
                writer.write_str(&self.member)?;
                writer.write_char(',')?;
                writer.write_str(rest)
            }
            _ => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_parse_from_kind_namespace_name() {
        let owner: Owner = "FineTune/ml/support-bot".parse().unwrap();
        assert_eq!(owner.kind, "FineTune");
        assert_eq!(owner.namespace, "ml");
        assert_eq!(owner.name, "support-bot");
        assert_eq!(owner.to_string(), "FineTune/ml/support-bot");
        for bad in ["", "FineTune/ml", "FineTune//x", "a/b/c/d"] {
            let err = bad.parse::<Owner>().unwrap_err();
            assert!(err.contains("KIND/NAMESPACE/NAME"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn log_formats_parse_and_name_the_choices() {
        assert_eq!("JSON".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert!(
            "yaml"
                .parse::<LogFormat>()
                .unwrap_err()
                .contains("json or text")
        );
        assert_eq!(
            LogFormat::resolve(Some(LogFormat::Text), false).unwrap(),
            LogFormat::Text
        );
    }

    #[test]
    fn the_owner_member_is_escaped_json() {
        let owner = Owner {
            kind: "FineTune".into(),
            namespace: "ml".into(),
            name: "a\"b".into(),
        };
        let object: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", owner.json_member())).unwrap();
        assert_eq!(object["resource"]["name"], "a\"b");
    }
}
