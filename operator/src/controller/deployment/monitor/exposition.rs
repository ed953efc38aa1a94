//! The Prometheus/OpenMetrics text a serving pod answers at `/metrics`, read
//! into the figures the monitor keeps ([`Reading`]): the built-in server's, or
//! vLLM's, told apart by their gauges and mapped in [`super::vllm`].

use std::collections::BTreeMap;

/// The series the server exports (see `server-image/src/metrics.rs`).
pub mod series {
    pub const REQUESTS: &str = "llmops_server_requests_total";
    pub const REQUEST_DURATION: &str = "llmops_server_request_duration_seconds_bucket";
    pub const TIME_TO_FIRST_TOKEN: &str = "llmops_server_time_to_first_token_seconds_bucket";
    pub const TIME_PER_OUTPUT_TOKEN: &str = "llmops_server_time_per_output_token_seconds_bucket";
    pub const GENERATED_TOKENS: &str = "llmops_server_generated_tokens_total";
    pub const IN_FLIGHT: &str = "llmops_server_in_flight_requests";
    pub const QUEUE_DEPTH: &str = "llmops_server_queue_depth";
    pub const ADAPTER_LOADED: &str = "llmops_server_adapter_loaded";
}

/// The routes whose requests count as traffic (`/v1/models` does not).
const GENERATION_ROUTES: [&str; 2] = ["completions", "chat_completions"];

/// One sample line: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Why a metrics text could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("no {0} sample")]
    Missing(&'static str),
}

/// Every sample of a text exposition (comments and blank lines skipped).
pub fn samples(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |problem: &str| ParseError::Line {
            line: index + 1,
            problem: problem.to_string(),
        };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| bad("a sample without a value"))?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            (labels, rest) = label_set(inner).map_err(bad)?;
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| bad("a sample without a value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|_| bad(&format!("{v:?} is not a number")))?,
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// The labels of a set whose `{` is just before `text`, and the text after its
/// `}`. Values are quoted and may hold `,`, `}`, `\\`, `\"` and `\n`.
fn label_set(text: &str) -> Result<(BTreeMap<String, String>, &str), &'static str> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        if rest.is_empty() {
            return Err("unclosed label set");
        }
        let (key, after) = rest.split_once('=').ok_or("a label without =")?;
        let key = key.trim();
        if key.is_empty() || key.contains([',', '}', '"']) {
            return Err("a label without a name");
        }
        let quoted = after
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value not in quotes")?;
        let (value, after) = quoted_value(quoted).ok_or("unclosed label value")?;
        labels.insert(key.to_string(), value);
        rest = after.trim_start();
        match rest.strip_prefix(',') {
            Some(after) => rest = after,
            None if rest.starts_with('}') => {}
            None => return Err("labels not separated by ','"),
        }
    }
}

/// An escaped label value up to its closing quote, and the text after that quote.
fn quoted_value(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                escaped => value.push(escaped),
            },
            c => value.push(c),
        }
    }
    None
}

/// Cumulative histogram buckets: upper bound → observations at or below it,
/// `+Inf` last.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// Observations in all.
    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }
}

/// What the monitor keeps of one scrape of one pod. Counters are cumulative since
/// the server started; gauges are as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub ok: f64,
    pub client_errors: f64,
    pub server_errors: f64,
    pub duration: Buckets,
    pub time_to_first_token: Buckets,
    pub time_per_output_token: Buckets,
    pub generated_tokens: f64,
    pub in_flight: f64,
    pub queue_depth: f64,
    /// The LoRA adapters serving, as (name, digest).
    pub adapters_loaded: Vec<(String, String)>,
}

/// Sums the buckets of `name` over the generation routes (or over all series of
/// a histogram without a route label), by upper bound.
pub(super) fn buckets(samples: &[Sample], name: &str) -> Buckets {
    let mut by_bound: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        if s.labels
            .get("route")
            .is_some_and(|r| !GENERATION_ROUTES.contains(&r.as_str()))
        {
            continue;
        }
        let Some(le) = s.labels.get("le").and_then(|le| match le.as_str() {
            "+Inf" => Some(f64::INFINITY),
            v => v.parse::<f64>().ok(),
        }) else {
            continue;
        };
        // Order by the bound's bits: non-negative floats sort like their bits.
        let entry = by_bound.entry(le.to_bits()).or_insert((le, 0.0));
        entry.1 += s.value;
    }
    Buckets(by_bound.into_values().collect())
}

/// Reads a server's metrics text. The in-flight gauge must be there (it is what
/// tells a server's text from anything else), or vLLM's running-requests gauge;
/// the rest may be missing (an older server) and reads as zero.
pub fn read(text: &str) -> Result<Reading, ParseError> {
    let samples = samples(text)?;
    if !samples.iter().any(|s| s.name == series::IN_FLIGHT) && super::vllm::is_vllm(&samples) {
        return Ok(super::vllm::read(&samples));
    }
    let sum = |name: &str, status: Option<&str>| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                s.labels
                    .get("route")
                    .is_none_or(|r| GENERATION_ROUTES.contains(&r.as_str()))
            })
            .filter(|s| {
                status.is_none_or(|st| s.labels.get("status").map(String::as_str) == Some(st))
            })
            .map(|s| s.value)
            .sum()
    };
    let gauge = |name: &'static str| -> Option<f64> {
        samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .reduce(|a, b| a + b)
    };
    let in_flight = gauge(series::IN_FLIGHT).ok_or(ParseError::Missing(series::IN_FLIGHT))?;
    Ok(Reading {
        ok: sum(series::REQUESTS, Some("2xx")),
        client_errors: sum(series::REQUESTS, Some("4xx")),
        server_errors: sum(series::REQUESTS, Some("5xx")),
        duration: buckets(&samples, series::REQUEST_DURATION),
        time_to_first_token: buckets(&samples, series::TIME_TO_FIRST_TOKEN),
        time_per_output_token: buckets(&samples, series::TIME_PER_OUTPUT_TOKEN),
        generated_tokens: sum(series::GENERATED_TOKENS, None),
        in_flight,
        queue_depth: gauge(series::QUEUE_DEPTH).unwrap_or(0.0),
        adapters_loaded: samples
            .iter()
            .filter(|s| s.name == series::ADAPTER_LOADED && s.value >= 1.0)
            .filter_map(|s| {
                let label = |key: &str| s.labels.get(key).cloned();
                Some((label("adapter")?, label("digest").unwrap_or_default()))
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real rendering of the server's metrics: 3 in flight, 2 answered, 1 failed.
    const RENDERED: &str = include_str!("../testdata/server-metrics.txt");

    #[test]
    fn the_servers_text_reads_into_a_reading() {
        let r = read(RENDERED).unwrap();
        assert_eq!((r.ok, r.client_errors, r.server_errors), (2.0, 0.0, 1.0));
        assert_eq!(r.in_flight, 3.0);
        assert_eq!(r.duration.count(), 2.0);
        assert_eq!(r.duration.0.first(), Some(&(0.005, 0.0)));
        assert_eq!(r.duration.0.last(), Some(&(f64::INFINITY, 2.0)));
        assert_eq!(r.time_to_first_token.count(), 1.0);
        // Only the adapter that serves (1), not the one loading or failed (0).
        assert_eq!(
            r.adapters_loaded,
            vec![("support".to_string(), "sha256:5e".to_string())]
        );
    }

    #[test]
    fn histograms_add_up_over_generation_routes_only() {
        let text = "\
x_bucket{route=\"completions\",le=\"0.1\"} 1
x_bucket{route=\"completions\",le=\"+Inf\"} 2
x_bucket{le=\"0.1\",route=\"chat_completions\"} 3
x_bucket{le=\"+Inf\",route=\"chat_completions\"} 3
x_bucket{le=\"0.1\",route=\"models\"} 50
x_bucket{le=\"+Inf\",route=\"models\"} 50
";
        assert_eq!(
            buckets(&samples(text).unwrap(), "x_bucket"),
            Buckets(vec![(0.1, 4.0), (f64::INFINITY, 5.0)])
        );
    }

    #[test]
    fn a_text_without_the_in_flight_gauge_or_with_garbage_is_an_error() {
        assert_eq!(
            read("other_metric 1\n"),
            Err(ParseError::Missing(series::IN_FLIGHT))
        );
        assert!(matches!(
            read("llmops_server_in_flight_requests three\n"),
            Err(ParseError::Line { line: 1, .. })
        ));
        assert!(matches!(
            read("llmops_server_in_flight_requests{a=\"b\" 1\n"),
            Err(ParseError::Line { .. })
        ));
    }

    #[test]
    fn quoted_label_values_may_hold_separators_and_escapes() {
        let text = r#"x{path="a,b}",quote="say \"hi\"",nl="1\n2",slash="c:\\"} 7 1700000000"#;
        let [sample] = samples(text).unwrap().try_into().unwrap();
        assert_eq!(sample.labels["path"], "a,b}");
        assert_eq!(sample.labels["quote"], r#"say "hi""#);
        assert_eq!(sample.labels["nl"], "1\n2");
        assert_eq!(sample.labels["slash"], "c:\\");
        assert_eq!(sample.value, 7.0);
        assert!(matches!(
            samples(r#"x{a=b} 1"#),
            Err(ParseError::Line { problem, .. }) if problem.contains("quotes")
        ));
        assert!(matches!(
            samples(r#"x{a="b"c="d"} 1"#),
            Err(ParseError::Line { problem, .. }) if problem.contains("separated")
        ));
    }

    /// The exposition format's rendering of a sample.
    fn render(sample: &Sample) -> String {
        let labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| {
                let escaped = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                format!("{k}=\"{escaped}\"")
            })
            .collect();
        let value = match sample.value {
            f64::INFINITY => "+Inf".to_string(),
            f64::NEG_INFINITY => "-Inf".to_string(),
            v => v.to_string(),
        };
        if labels.is_empty() {
            format!("{} {value}", sample.name)
        } else {
            format!("{}{{{}}} {value}", sample.name, labels.join(","))
        }
    }

    fn sample() -> impl Strategy<Value = Sample> {
        let value = prop_oneof![
            any::<f64>().prop_filter("NaN is not equal to itself", |v| !v.is_nan()),
            Just(f64::INFINITY),
        ];
        (
            "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", any::<String>(), 0..4),
            value,
        )
            .prop_map(|(name, labels, value)| Sample {
                name,
                labels,
                value,
            })
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever a pod answers, reading it returns (a reading or an error).
        #[test]
        fn any_text_reads_without_panicking(text in any::<String>()) {
            let _ = read(&text);
        }

        #[test]
        fn rendered_samples_read_back_as_they_were(
            written in proptest::collection::vec(sample(), 0..8)
        ) {
            let text: String = written.iter().map(|s| render(s) + "\n").collect();
            prop_assert_eq!(samples(&text).unwrap(), written);
        }
    }
}
