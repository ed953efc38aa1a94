//! Prometheus metrics of the reconcile loops, served at `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    reason: String,
}

type DurationFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

/// The operator's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: DurationFamily,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn duration_histogram() -> Histogram {
    // 10ms .. ~40s: a reconcile is a handful of API calls.
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("llmops_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations: DurationFamily = Family::new_with_constructor(duration_histogram);
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile took, by kind",
            durations.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            durations,
            leader,
        }
    }

    /// Count a finished reconcile of `kind` and record how long it took.
    pub fn reconciled(&self, kind: &str, took: Duration) {
        let labels = KindLabels { kind: kind.into() };
        self.reconciles.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Count a failed reconcile of `kind` by the error's reason.
    pub fn failed(&self, kind: &str, reason: &str) {
        let labels = ErrorLabels {
            kind: kind.into(),
            reason: reason.into(),
        };
        self.errors.get_or_create(&labels).inc();
    }

    /// Record whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_reconciles_errors_and_durations_by_kind() {
        let metrics = Metrics::new();
        metrics.reconciled("Dataset", Duration::from_millis(30));
        metrics.reconciled("Dataset", Duration::from_millis(50));
        metrics.failed("Dataset", "ApplyChild");
        metrics.set_leader(true);
        let text = metrics.render();
        assert!(
            text.contains(r#"llmops_operator_reconciles_total{kind="Dataset"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"llmops_operator_reconcile_errors_total{kind="Dataset",reason="ApplyChild"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"llmops_operator_reconcile_duration_seconds_count{kind="Dataset"} 2"#)
        );
        assert!(text.contains("llmops_operator_leader 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
