//! Per-object exponential backoff for reconciles that fail with a transient error:
//! 5s, 10s, 20s, ... capped at 5 minutes, reset by the next success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(5);
const MAX: Duration = Duration::from_secs(300);

/// The delay before retry number `attempt` (0-based).
pub fn delay(attempt: u32) -> Duration {
    FIRST
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX)
}

/// Consecutive failures per object key.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Record a failure of `key` and return how long to wait before retrying.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock poisoned");
        let attempt = failures.entry(key.to_string()).or_default();
        let wait = delay(*attempt);
        *attempt = attempt.saturating_add(1);
        wait
    }

    /// Forget the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .expect("backoff lock poisoned")
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        assert_eq!(delay(0), Duration::from_secs(5));
        assert_eq!(delay(1), Duration::from_secs(10));
        assert_eq!(delay(3), Duration::from_secs(40));
        assert_eq!(delay(10), MAX);
        assert_eq!(delay(u32::MAX), MAX);
    }

    #[test]
    fn success_resets_the_count() {
        let backoff = Backoff::default();
        assert_eq!(backoff.failed("ml/a"), Duration::from_secs(5));
        assert_eq!(backoff.failed("ml/a"), Duration::from_secs(10));
        assert_eq!(backoff.failed("ml/b"), Duration::from_secs(5));
        backoff.succeeded("ml/a");
        assert_eq!(backoff.failed("ml/a"), Duration::from_secs(5));
    }
}
