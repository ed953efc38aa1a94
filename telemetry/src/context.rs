//! W3C trace context (`traceparent`) across process boundaries: the operator
//! derives one per object generation, writes it on the pods it creates, and the
//! trainer and server make their first span a child of it.

use std::fmt;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use sha2::{Digest as _, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A parsed `traceparent` header value: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// The trace of one generation of one object: the same on every reconcile,
    /// after an operator restart and on another replica, so all the operator's
    /// passes over that generation and the pods they start join one trace
    /// without the operator writing anything to the object. The span id is the
    /// generation's root, which every reconcile span and pod hangs under.
    pub fn derived(uid: &str, generation: i64) -> Self {
        let digest = Sha256::new()
            .chain_update(b"llmops.dev/trace/v1\n")
            .chain_update(uid.as_bytes())
            .chain_update(b"\n")
            .chain_update(generation.to_string().as_bytes())
            .finalize();
        let mut trace = [0u8; 16];
        let mut span = [0u8; 8];
        trace.copy_from_slice(&digest[..16]);
        span.copy_from_slice(&digest[16..24]);
        // All-zero ids are invalid; a digest that yields one is replaced by a
        // fixed valid id rather than producing a context nobody accepts.
        if trace == [0; 16] {
            trace[15] = 1;
        }
        if span == [0; 8] {
            span[7] = 1;
        }
        Self {
            trace_id: TraceId::from_bytes(trace),
            span_id: SpanId::from_bytes(span),
            sampled: true,
        }
    }

    /// Parse a `traceparent` value. Versions other than `00` are read by their
    /// first four fields, as the W3C specification asks of parsers.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let fields: Vec<&str> = text.split('-').collect();
        let bad = |why: &str| format!("invalid traceparent {text:?}: {why}");
        if fields.len() < 4 {
            return Err(bad("expected 00-<32 hex>-<16 hex>-<2 hex>"));
        }
        let hex = |field: &str, len: usize| {
            field.len() == len
                && field
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let (version, trace, span, flags) = (fields[0], fields[1], fields[2], fields[3]);
        if !hex(version, 2) || version == "ff" {
            return Err(bad(
                "the version is not two lower-case hex digits other than ff",
            ));
        }
        if version == "00" && fields.len() != 4 {
            return Err(bad("version 00 has exactly four fields"));
        }
        if !hex(trace, 32) {
            return Err(bad("the trace id is not 32 lower-case hex digits"));
        }
        if !hex(span, 16) {
            return Err(bad("the parent id is not 16 lower-case hex digits"));
        }
        if !hex(flags, 2) {
            return Err(bad("the flags are not two lower-case hex digits"));
        }
        let trace_id = TraceId::from_hex(trace).map_err(|_| bad("bad trace id"))?;
        let span_id = SpanId::from_hex(span).map_err(|_| bad("bad parent id"))?;
        if trace_id == TraceId::INVALID {
            return Err(bad("the trace id is all zeros"));
        }
        if span_id == SpanId::INVALID {
            return Err(bad("the parent id is all zeros"));
        }
        let flags = u8::from_str_radix(flags, 16).map_err(|_| bad("bad flags"))?;
        Ok(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The context whose remote parent this is, for
    /// [`tracing_opentelemetry::OpenTelemetrySpanExt::set_parent`].
    pub fn context(&self) -> opentelemetry::Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let span = SpanContext::new(
            self.trace_id,
            self.span_id,
            flags,
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(span)
    }

    /// The trace context of `span`, when trace export gave it one.
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        let cx = span.context();
        let span_context = cx.span().span_context().clone();
        span_context.is_valid().then(|| Self {
            trace_id: span_context.trace_id(),
            span_id: span_context.span_id(),
            sampled: span_context.is_sampled(),
        })
    }

    /// Make `span` (not yet entered) a child of this context. Without trace
    /// export there is nothing to attach to, which is not an error.
    pub fn adopt(&self, span: &tracing::Span) {
        let _ = span.set_parent(self.context());
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// The `TRACEPARENT` of this process's environment. An invalid value is
/// logged and ignored: a broken trace must not stop a run.
pub fn from_env() -> Option<TraceParent> {
    let text = std::env::var(llmops_contract::env::TRACEPARENT).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    match TraceParent::parse(&text) {
        Ok(parent) => Some(parent),
        Err(err) => {
            tracing::warn!(variable = llmops_contract::env::TRACEPARENT, "{err}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(text).unwrap();
        assert!(parent.sampled);
        assert_eq!(parent.to_string(), text);
        let unsampled = TraceParent::parse(&text.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn invalid_traceparents_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "expected"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "expected",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "trace id",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902-01",
                "parent id",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                "four",
            ),
        ] {
            let err = TraceParent::parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_ok()
        );
    }

    #[test]
    fn the_derived_trace_is_stable_per_generation() {
        let a = TraceParent::derived("6f1c-uid", 3);
        assert_eq!(a, TraceParent::derived("6f1c-uid", 3));
        assert_ne!(a.trace_id, TraceParent::derived("6f1c-uid", 4).trace_id);
        assert_ne!(a.trace_id, TraceParent::derived("other-uid", 3).trace_id);
        assert!(a.sampled);
        assert_eq!(TraceParent::parse(&a.to_string()).unwrap(), a);
    }
}
