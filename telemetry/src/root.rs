//! The root span of an object generation's trace ([`TraceParent::derived`]):
//! every reconcile and pod of the generation is a child of it, but it has no
//! process of its own, so the operator records it after the fact, once the
//! generation has an outcome, with the ids the children already point at.
//!
//! The SDK takes every span's ids from the provider's id generator, so the
//! generator here hands out the derived ids when [`record`] asks for them (on
//! the same thread, for the one span it builds) and random ones otherwise.

use std::cell::Cell;
use std::time::SystemTime;

pub use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanId, Status, TraceId, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};

use crate::context::TraceParent;

thread_local! {
    /// The ids the next span built on this thread takes.
    static NEXT: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for the span [`record`] builds.
#[derive(Debug, Default)]
pub(crate) struct DerivedIds {
    random: RandomIdGenerator,
}

impl IdGenerator for DerivedIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT.with(|next| next.get())
            .map_or_else(|| self.random.new_trace_id(), |(trace, _)| trace)
    }

    fn new_span_id(&self) -> SpanId {
        NEXT.with(|next| next.get())
            .map_or_else(|| self.random.new_span_id(), |(_, span)| span)
    }
}

/// A finished span to record as the root of `trace`.
#[derive(Clone, Debug)]
pub struct Root {
    pub trace: TraceParent,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// The outcome, when it is a failure: the span's error description.
    pub error: Option<String>,
}

/// Record `root` with the installed exporter; nothing without one.
pub fn record(root: Root) {
    let provider = crate::PROVIDER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(provider) = provider {
        record_with(&provider, root);
    }
}

pub(crate) fn record_with(provider: &SdkTracerProvider, root: Root) {
    let tracer = provider.tracer("llmops-generation");
    let builder = tracer
        .span_builder(root.name)
        .with_start_time(root.start)
        .with_attributes(root.attributes);
    NEXT.with(|next| next.set(Some((root.trace.trace_id, root.trace.span_id))));
    let mut span = tracer.build_with_context(builder, &opentelemetry::Context::new());
    NEXT.with(|next| next.set(None));
    if let Some(error) = root.error {
        opentelemetry::trace::Span::set_status(&mut span, Status::error(error));
    }
    opentelemetry::trace::Span::end_with_timestamp(&mut span, root.end);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use super::*;

    #[test]
    fn the_root_takes_the_derived_ids_and_only_it() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_id_generator(DerivedIds::default())
            .with_simple_exporter(exporter.clone())
            .build();
        let trace = TraceParent::derived("uid-1", 2);
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        record_with(
            &provider,
            Root {
                trace,
                name: "FineTune ml/qa".into(),
                start,
                end: start + Duration::from_secs(60),
                attributes: vec![KeyValue::new("llmops.generation", 2)],
                error: Some("GateFailed".into()),
            },
        );
        let other = provider.tracer("t").start("other");
        drop(other);
        let spans = exporter.get_finished_spans().unwrap();
        let root = spans.iter().find(|s| s.name == "FineTune ml/qa").unwrap();
        assert_eq!(root.span_context.trace_id(), trace.trace_id);
        assert_eq!(root.span_context.span_id(), trace.span_id);
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(root.start_time, start);
        assert_eq!(root.end_time, start + Duration::from_secs(60));
        assert_eq!(root.status, Status::error("GateFailed"));
        let other = spans.iter().find(|s| s.name == "other").unwrap();
        assert_ne!(other.span_context.trace_id(), trace.trace_id);
        assert_ne!(other.span_context.span_id(), trace.span_id);
    }
}
