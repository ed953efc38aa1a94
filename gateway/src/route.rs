//! Routing decisions, all in one place: which ready pod of a model takes a
//! request.
//!
//! Least in flight, with prefix affinity: a request whose prompt (or first
//! messages) begins like another's prefers the same pod — the pod whose
//! rendezvous score for the prefix's hash is highest, so the preference moves
//! only for the prefixes of a pod that comes or goes — as long as that pod has
//! at most `bound` requests in flight more than the least busy one; a pod that
//! has already seen a prefix can reuse its work, but not at any queue length.
//! Requests without a prompt go to the least busy pod, ties broken by a score
//! of their own, so that a sequence of requests spreads.
//!
//! Per-request weights (a canary's exact share) belong here too: a weighted
//! choice of the revision first, then this choice among its pods.

use std::net::SocketAddr;

use serde_json::Value;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A ready pod and its requests in flight through this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub in_flight: usize,
}

/// What a request brings to the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The hash of the prompt's prefix.
    Affinity(u64),
    /// No prompt to follow: a value of the request's own (a counter), only to
    /// break ties.
    Spread(u64),
}

fn score(addr: &SocketAddr, seed: u64) -> u64 {
    xxh3_64_with_seed(addr.to_string().as_bytes(), seed)
}

/// Whether request `n` (counted from 0) of a model goes to its canary at
/// `weight` percent: exactly `weight` of every 100 consecutive requests do,
/// spread evenly (request `n` goes when it moves `n * weight / 100` to the
/// next whole number).
pub fn to_canary(n: u64, weight: u32) -> bool {
    let w = u64::from(weight.min(100));
    (n + 1) * w / 100 > n * w / 100
}

/// The pod for a request, or `None` without candidates.
pub fn pick(candidates: &[Candidate], key: Key, bound: usize) -> Option<SocketAddr> {
    let least = candidates.iter().map(|c| c.in_flight).min()?;
    let seed = match key {
        Key::Affinity(hash) | Key::Spread(hash) => hash,
    };
    if let Key::Affinity(_) = key {
        let preferred = candidates
            .iter()
            .max_by_key(|c| (score(&c.addr, seed), c.addr))?;
        if preferred.in_flight <= least + bound {
            return Some(preferred.addr);
        }
    }
    candidates
        .iter()
        .filter(|c| c.in_flight == least)
        .max_by_key(|c| (score(&c.addr, seed), c.addr))
        .map(|c| c.addr)
}

/// The affinity key of a request body: the hash of the first `chars`
/// characters of its prompt (completions) or of its messages' contents in order
/// (chat); `None` when there is no text to follow or `chars` is 0.
pub fn affinity(body: &Value, chars: usize) -> Option<u64> {
    if chars == 0 {
        return None;
    }
    let mut prefix = String::new();
    let mut push = |text: &str| {
        let room = chars.saturating_sub(prefix.chars().count());
        prefix.extend(text.chars().take(room));
    };
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for message in messages {
            let role = message.get("role").and_then(Value::as_str).unwrap_or("");
            push(role);
            push("\u{1f}");
            match message.get("content") {
                Some(Value::String(text)) => push(text),
                Some(Value::Array(parts)) => {
                    for part in parts {
                        if let Some(text) = part.get("text").and_then(Value::as_str) {
                            push(text);
                        }
                    }
                }
                _ => {}
            }
            push("\u{1e}");
        }
    } else {
        match body.get("prompt") {
            Some(Value::String(text)) => push(text),
            // A batch of prompts, or token ids: the first prompt's.
            Some(Value::Array(items)) => match items.first() {
                Some(Value::String(text)) => push(text),
                Some(Value::Number(_)) => push(&token_text(items)),
                Some(Value::Array(ids)) => push(&token_text(ids)),
                _ => {}
            },
            _ => {}
        }
    }
    (!prefix.is_empty()).then(|| xxh3_64(prefix.as_bytes()))
}

/// Token ids as text, one character-like unit per id, so that `chars` counts
/// ids.
fn token_text(ids: &[Value]) -> String {
    ids.iter()
        .filter_map(Value::as_u64)
        .map(|id| char::from_u32((id as u32 % 0x10_0000) + 0x1_0000).unwrap_or('?'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_gets_exactly_its_weight_of_every_hundred_requests_spread_evenly() {
        for weight in [1u32, 10, 25, 33, 50, 75, 100] {
            let sent: Vec<bool> = (0..200).map(|n| to_canary(n, weight)).collect();
            for hundred in sent.chunks(100) {
                let got = hundred.iter().filter(|c| **c).count();
                assert_eq!(got, weight as usize, "weight {weight}");
            }
        }
        // 25%: every fourth request, not the first 25 of each hundred.
        let quarter: Vec<u64> = (0..12).filter(|n| to_canary(*n, 25)).collect();
        assert_eq!(quarter, [3, 7, 11]);
        assert!(!(0..100).any(|n| to_canary(n, 0)));
    }

    use serde_json::json;

    fn pods(in_flight: &[usize]) -> Vec<Candidate> {
        in_flight
            .iter()
            .enumerate()
            .map(|(i, &n)| Candidate {
                addr: format!("127.0.0.{}:8000", i + 1).parse().unwrap(),
                in_flight: n,
            })
            .collect()
    }

    #[test]
    fn no_candidates_no_pod() {
        assert_eq!(pick(&[], Key::Spread(1), 4), None);
    }

    #[test]
    fn without_affinity_the_least_busy_pod_is_chosen() {
        let candidates = pods(&[3, 1, 2]);
        for seed in 0..50 {
            assert_eq!(
                pick(&candidates, Key::Spread(seed), 4),
                Some(candidates[1].addr)
            );
        }
    }

    #[test]
    fn ties_spread_over_the_idle_pods() {
        let candidates = pods(&[0, 0, 0, 0]);
        let mut counts = std::collections::HashMap::new();
        for seed in 0..400 {
            *counts
                .entry(pick(&candidates, Key::Spread(seed), 4).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert!(counts.values().all(|&n| n > 50), "{counts:?}");
    }

    #[test]
    fn a_prefix_sticks_to_its_pod_until_it_is_overloaded() {
        let idle = pods(&[0, 0, 0]);
        let key = Key::Affinity(affinity(&json!({"prompt": "You are a helpful"}), 64).unwrap());
        let home = pick(&idle, key, 2).unwrap();
        let at = idle.iter().position(|c| c.addr == home).unwrap();
        // Within the bound the prefix stays.
        let mut busy = idle.clone();
        busy[at].in_flight = 2;
        assert_eq!(pick(&busy, key, 2), Some(home));
        // Beyond it the least busy pod takes the request.
        busy[at].in_flight = 3;
        let elsewhere = pick(&busy, key, 2).unwrap();
        assert_ne!(elsewhere, home);
        // Back within the bound, back home.
        busy[at].in_flight = 1;
        assert_eq!(pick(&busy, key, 2), Some(home));
    }

    #[test]
    fn prefixes_spread_and_a_pod_leaving_moves_only_its_own() {
        let three = pods(&[0, 0, 0]);
        let keys: Vec<Key> = (0..300)
            .map(|i| {
                Key::Affinity(affinity(&json!({"prompt": format!("prefix {i}")}), 64).unwrap())
            })
            .collect();
        let before: Vec<SocketAddr> = keys.iter().map(|&k| pick(&three, k, 4).unwrap()).collect();
        let mut per_pod = std::collections::HashMap::new();
        for addr in &before {
            *per_pod.entry(*addr).or_insert(0) += 1;
        }
        assert!(per_pod.values().all(|&n| n > 60), "{per_pod:?}");
        let gone = three[2].addr;
        let two = &three[..2];
        for (key, was) in keys.iter().zip(&before) {
            let now = pick(two, *key, 4).unwrap();
            if *was != gone {
                assert_eq!(now, *was, "a prefix moved though its pod stayed");
            }
        }
    }

    #[test]
    fn the_prefix_is_the_first_characters_of_the_prompt_or_messages() {
        let a = affinity(&json!({"prompt": "abcdefgh-one"}), 8);
        assert_eq!(a, affinity(&json!({"prompt": "abcdefgh-two"}), 8));
        assert_ne!(a, affinity(&json!({"prompt": "abcdefgX-one"}), 8));
        assert_eq!(
            a,
            affinity(&json!({"prompt": ["abcdefgh-three", "zzz"]}), 8)
        );
        let system = json!({"role": "system", "content": "You answer in French."});
        let chat = |q: &str| json!({"messages": [system.clone(), {"role": "user", "content": q}]});
        assert_eq!(
            affinity(&chat("first question"), 30),
            affinity(&chat("second question"), 30)
        );
        assert_ne!(
            affinity(&chat("first question"), 200),
            affinity(&chat("second question"), 200)
        );
        let tokens = |ids: Vec<u64>| json!({"prompt": ids});
        assert_eq!(
            affinity(&tokens(vec![1, 2, 3, 4]), 3),
            affinity(&tokens(vec![1, 2, 3, 9]), 3)
        );
        assert_eq!(affinity(&json!({"prompt": ""}), 8), None);
        assert_eq!(affinity(&json!({"prompt": "x"}), 0), None);
        assert_eq!(affinity(&json!({}), 8), None);
    }
}
