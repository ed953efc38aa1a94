//! Per-key request and token rates: a token bucket each, holding a minute's
//! worth and refilled continuously.
//!
//! A request takes one request token, and reserves its `max_tokens` (capped at
//! the bucket's size, so a large request can pass at all) from the token
//! bucket; once its response ends, the reservation is settled against the
//! response's `usage.total_tokens` (prompt and completion), which may leave the
//! bucket in debt until it refills. A response without `usage` (a stream
//! without `stream_options.include_usage`) keeps its reservation; a refused or
//! failed one gives it back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::keys::Grant;

#[derive(Debug, Clone)]
pub struct Bucket {
    per_minute: u32,
    level: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(per_minute: u32, now: Instant) -> Bucket {
        Bucket {
            per_minute,
            level: f64::from(per_minute),
            last: now,
        }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.per_minute)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + elapsed * self.capacity() / 60.0).min(self.capacity());
        self.last = now;
    }

    /// Takes `amount` (at most the capacity), or says how long until it could.
    pub fn take(&mut self, amount: f64, now: Instant) -> Result<f64, Duration> {
        self.refill(now);
        let amount = amount.min(self.capacity());
        if self.level >= amount {
            self.level -= amount;
            Ok(amount)
        } else {
            let missing = amount - self.level;
            Err(Duration::from_secs_f64(missing * 60.0 / self.capacity()))
        }
    }

    /// Gives back `amount` (negative: takes more, into debt).
    pub fn give(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + amount).min(self.capacity());
    }
}

#[derive(Debug)]
struct KeyBuckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// Which limit refused a request, and when to retry (whole seconds, at least 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub limit: &'static str,
    pub retry_after: u64,
}

/// What an admitted request reserved, to settle when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    pub key: String,
    pub reserved_tokens: f64,
}

/// The buckets of every key, by key name; kept across key reloads, and made
/// new for a key whose limits changed.
#[derive(Debug, Default)]
pub struct Limiter {
    keys: Mutex<HashMap<String, KeyBuckets>>,
}

fn retry_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl Limiter {
    /// Admits a request of `grant` that may generate `max_tokens`, or refuses it.
    pub fn admit(
        &self,
        grant: &Grant,
        max_tokens: u32,
        now: Instant,
    ) -> Result<Admission, Refused> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = keys
            .entry(grant.name.clone())
            .or_insert_with(|| KeyBuckets {
                requests: None,
                tokens: None,
            });
        sync(&mut buckets.requests, grant.requests_per_minute, now);
        sync(&mut buckets.tokens, grant.tokens_per_minute, now);
        if let Some(requests) = &mut buckets.requests {
            requests.take(1.0, now).map_err(|wait| Refused {
                limit: "requests per minute",
                retry_after: retry_seconds(wait),
            })?;
        }
        let mut reserved_tokens = 0.0;
        if let Some(tokens) = &mut buckets.tokens {
            match tokens.take(f64::from(max_tokens), now) {
                Ok(taken) => reserved_tokens = taken,
                Err(wait) => {
                    if let Some(requests) = &mut buckets.requests {
                        requests.give(1.0, now);
                    }
                    return Err(Refused {
                        limit: "tokens per minute",
                        retry_after: retry_seconds(wait),
                    });
                }
            }
        }
        Ok(Admission {
            key: grant.name.clone(),
            reserved_tokens,
        })
    }

    /// Settles an admission: `used` tokens when the response said, `None` to
    /// keep the reservation, `Some(0)` for a request that generated nothing.
    pub fn settle(&self, admission: &Admission, used: Option<u64>, now: Instant) {
        let Some(used) = used else { return };
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tokens) = keys.get_mut(&admission.key).and_then(|b| b.tokens.as_mut()) {
            tokens.give(admission.reserved_tokens - used as f64, now);
        }
    }
}

fn sync(bucket: &mut Option<Bucket>, per_minute: Option<u32>, now: Instant) {
    match (bucket.as_ref().map(|b| b.per_minute), per_minute) {
        (Some(have), Some(want)) if have == want => {}
        (_, Some(want)) => *bucket = Some(Bucket::new(want, now)),
        (_, None) => *bucket = None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(rpm: Option<u32>, tpm: Option<u32>) -> Grant {
        Grant {
            name: "k".into(),
            models: vec!["*".into()],
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        }
    }

    #[test]
    fn requests_per_minute_refuse_the_next_and_refill() {
        let limiter = Limiter::default();
        let g = grant(Some(3), None);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.admit(&g, 10, t0).unwrap();
        }
        let refused = limiter.admit(&g, 10, t0).unwrap_err();
        assert_eq!(refused.limit, "requests per minute");
        // One request comes back every 20 s.
        assert_eq!(refused.retry_after, 20);
        assert!(limiter.admit(&g, 10, t0 + Duration::from_secs(19)).is_err());
        assert!(limiter.admit(&g, 10, t0 + Duration::from_secs(21)).is_ok());
    }

    #[test]
    fn tokens_are_reserved_then_settled_on_usage() {
        let limiter = Limiter::default();
        let g = grant(None, Some(100));
        let t0 = Instant::now();
        let a = limiter.admit(&g, 60, t0).unwrap();
        assert_eq!(a.reserved_tokens, 60.0);
        // 40 left: a second 60 waits for 20 tokens, 12 s at 100/min.
        let refused = limiter.admit(&g, 60, t0).unwrap_err();
        assert_eq!(
            (refused.limit, refused.retry_after),
            ("tokens per minute", 12)
        );
        // The first used 10 only: 90 left.
        limiter.settle(&a, Some(10), t0);
        let b = limiter.admit(&g, 90, t0).unwrap();
        // It used 150 (a long prompt): in debt by 60, 36 s to get back to zero.
        limiter.settle(&b, Some(150), t0);
        let refused = limiter.admit(&g, 1, t0).unwrap_err();
        assert_eq!(refused.retry_after, 37);
        // No usage (a stream without include_usage) keeps the reservation.
        let t1 = t0 + Duration::from_secs(120);
        let c = limiter.admit(&g, 100, t1).unwrap();
        limiter.settle(&c, None, t1);
        assert!(limiter.admit(&g, 1, t1).is_err());
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_when_it_is_full() {
        let limiter = Limiter::default();
        let a = limiter
            .admit(&grant(None, Some(50)), 1000, Instant::now())
            .unwrap();
        assert_eq!(a.reserved_tokens, 50.0);
    }

    #[test]
    fn a_token_refusal_gives_the_request_back() {
        let limiter = Limiter::default();
        let g = grant(Some(2), Some(10));
        let t0 = Instant::now();
        let first = limiter.admit(&g, 10, t0).unwrap();
        assert_eq!(
            limiter.admit(&g, 10, t0).unwrap_err().limit,
            "tokens per minute"
        );
        limiter.settle(&first, Some(0), t0);
        // The refused request did not use up the second request token.
        limiter.admit(&g, 10, t0).unwrap();
        assert_eq!(
            limiter.admit(&g, 0, t0).unwrap_err().limit,
            "requests per minute"
        );
    }

    #[test]
    fn no_limits_admit_everything() {
        let limiter = Limiter::default();
        let g = grant(None, None);
        for _ in 0..1000 {
            limiter.admit(&g, 100_000, Instant::now()).unwrap();
        }
    }
}
