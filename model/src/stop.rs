//! Stop sequences over generated text (OpenAI's `stop` parameter).
//!
//! Stop strings are matched on decoded text, not on tokens, because one string can be
//! produced by many different token splits. While streaming, text that might be the
//! beginning of a stop string must be held back until the next token decides it.

/// What the generated text means for a set of stop strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMatch {
    /// A stop string starts at this byte offset: the output is `text[..at]`.
    Stopped { at: usize },
    /// No stop string yet; `text[..safe]` can be sent, the rest may still turn into one.
    Continue { safe: usize },
}

/// A set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopSequences {
    stops: Vec<String>,
}

impl StopSequences {
    /// Empty strings are dropped (they would match everywhere).
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StopSequences {
            stops: stops
                .into_iter()
                .map(Into::into)
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Checks the full generated text so far.
    pub fn check(&self, text: &str) -> StopMatch {
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            return StopMatch::Stopped { at };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let held = self
            .stops
            .iter()
            .filter_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n))
                    .find(|&n| text.ends_with(&stop[..n]))
            })
            .max()
            .unwrap_or(0);
        StopMatch::Continue {
            safe: text.len() - held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_earliest_stop() {
        let stops = StopSequences::new(["\n\n", "###", ""]);
        assert_eq!(stops.check("abc###def\n\n"), StopMatch::Stopped { at: 3 });
        assert_eq!(stops.check("a\n\nb###"), StopMatch::Stopped { at: 1 });
    }

    #[test]
    fn holds_back_partial_matches() {
        let stops = StopSequences::new(["###", "END"]);
        assert_eq!(stops.check("hello #"), StopMatch::Continue { safe: 6 });
        assert_eq!(stops.check("hello ##"), StopMatch::Continue { safe: 6 });
        assert_eq!(stops.check("hello EN"), StopMatch::Continue { safe: 6 });
        assert_eq!(stops.check("hello"), StopMatch::Continue { safe: 5 });
        assert_eq!(stops.check("#x"), StopMatch::Continue { safe: 2 });
    }

    #[test]
    fn respects_utf8_boundaries() {
        let stops = StopSequences::new(["é!"]);
        assert_eq!(stops.check("café"), StopMatch::Continue { safe: 3 });
        assert_eq!(stops.check("café!"), StopMatch::Stopped { at: 3 });
        assert!(StopSequences::new(Vec::<String>::new()).is_empty());
        assert_eq!(
            StopSequences::default().check("x"),
            StopMatch::Continue { safe: 1 }
        );
    }
}
