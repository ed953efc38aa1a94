//! Per-pod scrape histories and what they say over a window: counter increases
//! (surviving restarts), rates, error shares, latency quantiles, and the latest
//! gauges.
//!
//! Counters are cumulative since a server started. Over a window each pod
//! contributes the sum of its increases between successive samples, where a
//! value lower than the one before means the server restarted and counted again
//! from zero (the increase is then the new value, as Prometheus's `increase`
//! takes it). The newest sample at or before the window's start is the baseline of the first one
//! inside it. A pod needs two samples to contribute: one that appeared with a
//! single scrape adds nothing yet, and one that vanished still contributes what
//! it served until its last scrape, until that scrape leaves the window.

use std::collections::{BTreeMap, VecDeque};

use super::exposition::{Buckets, Reading};
use super::quantile::quantile;

/// One pod's samples, oldest first, with the revision (stable or canary) it serves.
#[derive(Clone, Debug, Default)]
pub struct PodHistory {
    pub revision: String,
    pub samples: VecDeque<(f64, Reading)>,
}

/// The scrape histories of one ModelDeployment's pods, by pod name. Times are
/// seconds on a monotonic clock.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub pods: BTreeMap<String, PodHistory>,
    /// When the last scrape was made, and which pods answered it.
    pub last_scrape: Option<f64>,
    pub answered: Vec<String>,
    /// Ready pods at the last scrape.
    pub ready: usize,
}

/// What the window says about one revision's pods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Seconds the samples cover (0: fewer than two scrapes of any pod).
    pub seconds: f64,
    pub requests: f64,
    pub server_errors: f64,
    pub client_errors: f64,
    pub requests_per_second: Option<f64>,
    /// Share of requests answered 5xx (4xx are the client's and counted apart).
    pub error_rate: Option<f64>,
    pub client_error_rate: Option<f64>,
    pub p50_latency: Option<f64>,
    pub p95_latency: Option<f64>,
    pub p95_time_to_first_token: Option<f64>,
    pub p50_time_per_output_token: Option<f64>,
    pub tokens_per_second: Option<f64>,
    /// Sums of the gauges of the pods that answered the last scrape.
    pub in_flight: f64,
    pub queue_depth: f64,
    /// Pods that answered the last scrape.
    pub pods: usize,
    /// How many of those serve each LoRA adapter version (name, digest).
    pub adapters_loaded: BTreeMap<(String, String), usize>,
}

impl History {
    /// Adds one scrape made at `now`: each answering pod's reading (with its
    /// revision), and forgets samples older than `keep` seconds except the
    /// newest of them (the next window's baseline), and pods with none left.
    pub fn record(&mut self, now: f64, readings: Vec<(String, String, Reading)>, keep: f64) {
        self.answered = readings.iter().map(|(pod, _, _)| pod.clone()).collect();
        for (pod, revision, reading) in readings {
            let history = self.pods.entry(pod).or_default();
            history.revision = revision;
            history.samples.push_back((now, reading));
        }
        self.last_scrape = Some(now);
        let horizon = now - keep;
        for history in self.pods.values_mut() {
            while history.samples.len() > 1 && history.samples[1].0 <= horizon {
                history.samples.pop_front();
            }
        }
        self.pods
            .retain(|_, h| h.samples.back().is_some_and(|(t, _)| *t > horizon));
    }

    /// The window of `seconds` ending at `now`, for the pods serving `revision`.
    pub fn summary(&self, revision: &str, now: f64, seconds: f64) -> Summary {
        let start = now - seconds;
        let mut total = Totals::default();
        let (mut first, mut last) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut summary = Summary::default();
        for (name, pod) in self.pods.iter().filter(|(_, p)| p.revision == revision) {
            let used: Vec<&(f64, Reading)> =
                match pod.samples.iter().rposition(|(t, _)| *t <= start) {
                    // The newest sample before the window is the baseline.
                    Some(base) => pod.samples.iter().skip(base).collect(),
                    None => pod.samples.iter().collect(),
                };
            if used.len() >= 2 {
                first = first.min(used[0].0);
                last = last.max(used[used.len() - 1].0);
                for pair in used.windows(2) {
                    total.add(&pair[0].1, &pair[1].1);
                }
            }
            if self.answered.contains(name)
                && let Some((_, latest)) = pod.samples.back()
            {
                summary.in_flight += latest.in_flight;
                summary.queue_depth += latest.queue_depth;
                summary.pods += 1;
                for adapter in &latest.adapters_loaded {
                    *summary.adapters_loaded.entry(adapter.clone()).or_default() += 1;
                }
            }
        }
        summary.seconds = (last - first).max(0.0);
        summary.requests = total.ok + total.client_errors + total.server_errors;
        summary.server_errors = total.server_errors;
        summary.client_errors = total.client_errors;
        if summary.seconds > 0.0 {
            summary.requests_per_second = Some(summary.requests / summary.seconds);
            summary.tokens_per_second = Some(total.generated_tokens / summary.seconds);
        }
        if summary.requests > 0.0 {
            summary.error_rate = Some(total.server_errors / summary.requests);
            summary.client_error_rate = Some(total.client_errors / summary.requests);
        }
        summary.p50_latency = quantile(0.5, &total.duration);
        summary.p95_latency = quantile(0.95, &total.duration);
        summary.p95_time_to_first_token = quantile(0.95, &total.time_to_first_token);
        summary.p50_time_per_output_token = quantile(0.5, &total.time_per_output_token);
        summary
    }
}

/// Counter increases summed over pods.
#[derive(Default)]
struct Totals {
    ok: f64,
    client_errors: f64,
    server_errors: f64,
    generated_tokens: f64,
    duration: Buckets,
    time_to_first_token: Buckets,
    time_per_output_token: Buckets,
}

impl Totals {
    /// Adds the increases from `before` to `after`. A request count that went
    /// down means the server restarted: everything is counted from zero then.
    fn add(&mut self, before: &Reading, after: &Reading) {
        let restarted = after.ok + after.client_errors + after.server_errors
            < before.ok + before.client_errors + before.server_errors
            || after.generated_tokens < before.generated_tokens
            || after.duration.count() < before.duration.count();
        let zero = Reading::default();
        let before = if restarted { &zero } else { before };
        let inc = |a: f64, b: f64| (a - b).max(0.0);
        self.ok += inc(after.ok, before.ok);
        self.client_errors += inc(after.client_errors, before.client_errors);
        self.server_errors += inc(after.server_errors, before.server_errors);
        self.generated_tokens += inc(after.generated_tokens, before.generated_tokens);
        add_buckets(&mut self.duration, &before.duration, &after.duration);
        add_buckets(
            &mut self.time_to_first_token,
            &before.time_to_first_token,
            &after.time_to_first_token,
        );
        add_buckets(
            &mut self.time_per_output_token,
            &before.time_per_output_token,
            &after.time_per_output_token,
        );
    }
}

/// Adds the per-bucket increase from `before` to `after` into `into` (by bound).
fn add_buckets(into: &mut Buckets, before: &Buckets, after: &Buckets) {
    for &(le, count) in &after.0 {
        let was = before
            .0
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0.0, |(_, c)| *c);
        let increase = (count - was).max(0.0);
        match into.0.iter_mut().find(|(b, _)| *b == le) {
            Some(slot) => slot.1 += increase,
            None => {
                into.0.push((le, increase));
                into.0.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STABLE: &str = "stable";

    /// A reading after `ok` answered and `errors` failed requests, every one in
    /// the (0.1, 0.2] s latency bucket, with `tokens` generated.
    fn reading(ok: f64, errors: f64, tokens: f64, in_flight: f64) -> Reading {
        let n = ok + errors;
        Reading {
            ok,
            server_errors: errors,
            duration: Buckets(vec![(0.1, 0.0), (0.2, n), (f64::INFINITY, n)]),
            generated_tokens: tokens,
            in_flight,
            ..Reading::default()
        }
    }

    fn scrape(h: &mut History, now: f64, pods: &[(&str, Reading)]) {
        let readings = pods
            .iter()
            .map(|(p, r)| (p.to_string(), STABLE.to_string(), r.clone()))
            .collect();
        h.record(now, readings, 120.0);
    }

    #[test]
    fn rates_come_from_increases_over_the_covered_time() {
        let mut h = History::default();
        scrape(&mut h, 0.0, &[("a", reading(100.0, 0.0, 1000.0, 0.0))]);
        scrape(&mut h, 15.0, &[("a", reading(130.0, 0.0, 1300.0, 2.0))]);
        scrape(&mut h, 30.0, &[("a", reading(160.0, 0.0, 1600.0, 3.0))]);
        let s = h.summary(STABLE, 30.0, 60.0);
        assert_eq!(s.seconds, 30.0);
        assert_eq!(s.requests, 60.0);
        assert_eq!(s.requests_per_second, Some(2.0));
        assert_eq!(s.tokens_per_second, Some(20.0));
        assert_eq!(s.error_rate, Some(0.0));
        assert_eq!((s.in_flight, s.pods), (3.0, 1));
        let p95 = s.p95_latency.unwrap();
        assert!((0.1..=0.2).contains(&p95));
    }

    #[test]
    fn adapters_count_the_pods_of_the_last_scrape_that_serve_them() {
        let mut h = History::default();
        let with = |adapters: &[(&str, &str)]| Reading {
            adapters_loaded: adapters
                .iter()
                .map(|(n, d)| (n.to_string(), d.to_string()))
                .collect(),
            ..reading(0.0, 0.0, 0.0, 0.0)
        };
        scrape(
            &mut h,
            0.0,
            &[("a", with(&[("x", "d0")])), ("b", with(&[]))],
        );
        // Pod b loaded it meanwhile, pod a moved to a new version.
        scrape(
            &mut h,
            15.0,
            &[("a", with(&[("x", "d1")])), ("b", with(&[("x", "d0")]))],
        );
        let s = h.summary(STABLE, 15.0, 60.0);
        let count = |d: &str| s.adapters_loaded.get(&("x".into(), d.into())).copied();
        assert_eq!((count("d0"), count("d1"), s.pods), (Some(1), Some(1), 2));
    }

    #[test]
    fn a_restarted_server_counts_again_from_zero() {
        let mut h = History::default();
        scrape(&mut h, 0.0, &[("a", reading(100.0, 0.0, 0.0, 0.0))]);
        scrape(&mut h, 15.0, &[("a", reading(110.0, 0.0, 0.0, 0.0))]);
        // The pod restarted: 7 requests since.
        scrape(&mut h, 30.0, &[("a", reading(7.0, 0.0, 0.0, 0.0))]);
        let s = h.summary(STABLE, 30.0, 60.0);
        assert_eq!(s.requests, 17.0);
        assert_eq!(s.duration_count_for_test(&h), 17.0);
    }

    #[test]
    fn pods_that_appear_or_vanish_mid_window_count_what_they_served() {
        let mut h = History::default();
        scrape(&mut h, 0.0, &[("a", reading(0.0, 0.0, 0.0, 0.0))]);
        scrape(
            &mut h,
            15.0,
            &[
                ("a", reading(10.0, 0.0, 0.0, 0.0)),
                ("b", reading(50.0, 0.0, 0.0, 0.0)),
            ],
        );
        // a vanished; b served 20 more.
        scrape(&mut h, 30.0, &[("b", reading(70.0, 0.0, 0.0, 1.0))]);
        let s = h.summary(STABLE, 30.0, 60.0);
        // a's 10 and b's 20 (b's first scrape is only its baseline).
        assert_eq!(s.requests, 30.0);
        assert_eq!((s.pods, s.in_flight), (1, 1.0));
    }

    #[test]
    fn errors_are_5xx_and_4xx_is_counted_apart() {
        let mut h = History::default();
        let mut before = reading(0.0, 0.0, 0.0, 0.0);
        before.client_errors = 0.0;
        let mut after = reading(90.0, 5.0, 0.0, 0.0);
        after.client_errors = 5.0;
        scrape(&mut h, 0.0, &[("a", before)]);
        scrape(&mut h, 10.0, &[("a", after)]);
        let s = h.summary(STABLE, 10.0, 60.0);
        assert_eq!(s.requests, 100.0);
        assert_eq!(s.error_rate, Some(0.05));
        assert_eq!(s.client_error_rate, Some(0.05));
    }

    #[test]
    fn only_the_window_counts_with_the_sample_before_it_as_baseline() {
        let mut h = History::default();
        for (t, n) in [(0.0, 0.0), (60.0, 600.0), (120.0, 660.0), (180.0, 720.0)] {
            scrape(&mut h, t, &[("a", reading(n, 0.0, 0.0, 0.0))]);
        }
        // The last 60 s: from the sample at 120 to the one at 180.
        let s = h.summary(STABLE, 180.0, 60.0);
        assert_eq!(s.requests, 60.0);
        assert_eq!(s.requests_per_second, Some(1.0));
        // Old samples are forgotten, the baseline kept.
        assert!(h.pods["a"].samples.len() <= 3);
    }

    #[test]
    fn revisions_are_summarised_apart_and_one_scrape_says_no_rate() {
        let mut h = History::default();
        h.record(
            0.0,
            vec![
                ("a".into(), STABLE.into(), reading(0.0, 0.0, 0.0, 0.0)),
                ("c".into(), "canary".into(), reading(0.0, 0.0, 0.0, 0.0)),
            ],
            120.0,
        );
        assert_eq!(h.summary("canary", 0.0, 60.0).requests_per_second, None);
        h.record(
            10.0,
            vec![
                ("a".into(), STABLE.into(), reading(10.0, 0.0, 0.0, 0.0)),
                ("c".into(), "canary".into(), reading(2.0, 2.0, 0.0, 0.0)),
            ],
            120.0,
        );
        assert_eq!(h.summary(STABLE, 10.0, 60.0).requests, 10.0);
        let canary = h.summary("canary", 10.0, 60.0);
        assert_eq!((canary.requests, canary.error_rate), (4.0, Some(0.5)));
    }

    impl Summary {
        /// Latency observations behind the quantiles (tests only).
        fn duration_count_for_test(&self, h: &History) -> f64 {
            let mut total = Totals::default();
            for pod in h.pods.values() {
                let v: Vec<_> = pod.samples.iter().collect();
                for pair in v.windows(2) {
                    total.add(&pair[0].1, &pair[1].1);
                }
            }
            total.duration.count()
        }
    }
}
