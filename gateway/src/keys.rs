//! API keys: entries of the key Secrets, each allowed a set of models and
//! optional request and token rates.
//!
//! Every data entry of a key Secret is one key, named by the entry (the name
//! metrics and logs use; the key itself is never logged):
//!
//! ```yaml
//! stringData:
//!   team-a: |
//!     key: sk-team-a-0123456789abcdef
//!     models: [chat, "team-a/*"]
//!     requestsPerMinute: 60
//!     tokensPerMinute: 20000
//! ```
//!
//! `models` are model ids as `/v1/models` lists them, where `*` matches any run
//! of characters. Only the SHA-256 digests of the keys are kept, and a
//! presented key is compared with every one in constant time.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Shortest key accepted: a short key is guessable.
pub const MIN_KEY_LENGTH: usize = 16;

/// One entry of a key Secret, as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeySpec {
    key: String,
    models: Vec<String>,
    #[serde(default)]
    requests_per_minute: Option<u32>,
    #[serde(default)]
    tokens_per_minute: Option<u32>,
}

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The entry's name: what metrics and logs show.
    pub name: String,
    pub models: Vec<String>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

impl Grant {
    /// Whether this key may use `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|pattern| glob_match(pattern, model))
    }
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    grant: Arc<Grant>,
}

/// The keys of every key Secret.
#[derive(Debug, Default)]
pub struct KeySet {
    entries: Vec<Entry>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeySet {
    /// The keys of `secrets`; an entry that cannot be read is left out, and
    /// why (naming the Secret, the entry and the field) is among the errors.
    /// A name used twice keeps neither entry, as which one is meant is unclear.
    pub fn from_secrets<'a>(
        secrets: impl IntoIterator<Item = &'a Secret>,
    ) -> (KeySet, Vec<String>) {
        let mut errors = Vec::new();
        let mut by_name: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for secret in secrets {
            let secret_name = format!(
                "{}/{}",
                secret.namespace().unwrap_or_default(),
                secret.name_any()
            );
            let mut data: BTreeMap<String, Vec<u8>> = secret
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            // stringData is write-only in the API, but a Secret built in a test
            // or read from a file may carry it.
            for (k, v) in secret.string_data.iter().flatten() {
                data.insert(k.clone(), v.clone().into_bytes());
            }
            for (name, value) in data {
                match parse_entry(&name, &value) {
                    Ok(entry) => by_name.entry(name).or_default().push(entry),
                    Err(e) => errors.push(format!("Secret {secret_name}, key {name:?}: {e}")),
                }
            }
        }
        let mut entries = Vec::new();
        for (name, mut found) in by_name {
            if found.len() > 1 {
                errors.push(format!(
                    "key name {name:?} is in more than one key Secret; neither is used"
                ));
                continue;
            }
            entries.extend(found.pop());
        }
        (KeySet { entries }, errors)
    }

    /// The grant of `presented`, if it is a key. Every entry is compared, in
    /// constant time, whichever matches.
    pub fn authenticate(&self, presented: &str) -> Option<Arc<Grant>> {
        let presented = digest(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            let same = entry.digest.ct_eq(&presented);
            index.conditional_assign(&(i as u64), same);
            found |= same;
        }
        bool::from(found).then(|| {
            let i = usize::try_from(index).unwrap_or(usize::MAX);
            self.entries[i].grant.clone()
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_entry(name: &str, value: &[u8]) -> Result<Entry, String> {
    let text = std::str::from_utf8(value).map_err(|_| "not UTF-8".to_string())?;
    // The key is checked apart first: a parse error quotes the value it
    // refused, and that must never be the key.
    let document: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|_| "not a YAML or JSON mapping".to_string())?;
    match document.get("key") {
        Some(serde_yaml_ng::Value::String(_)) => {}
        Some(_) => return Err("field `key` must be a string".into()),
        None => return Err("missing field `key`".into()),
    }
    let spec: KeySpec = serde_yaml_ng::from_value(document).map_err(|e| e.to_string())?;
    let key = spec.key.trim();
    if key.chars().count() < MIN_KEY_LENGTH {
        return Err(format!(
            "field `key` must be at least {MIN_KEY_LENGTH} characters"
        ));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("field `key` must not contain spaces or control characters".into());
    }
    if spec.models.is_empty() {
        return Err("field `models` lists no model (use [\"*\"] for all)".into());
    }
    for (field, value) in [
        ("requestsPerMinute", spec.requests_per_minute),
        ("tokensPerMinute", spec.tokens_per_minute),
    ] {
        if value == Some(0) {
            return Err(format!(
                "field `{field}` must be at least 1 (omit it for no limit)"
            ));
        }
    }
    Ok(Entry {
        digest: digest(key),
        grant: Arc::new(Grant {
            name: name.to_string(),
            models: spec.models,
            requests_per_minute: spec.requests_per_minute,
            tokens_per_minute: spec.tokens_per_minute,
        }),
    })
}

/// `*` matches any run of characters (also `/`); everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    if parts.len() == 1 {
        return pattern == text;
    }
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    fn secret(name: &str, entries: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("llmops".into()),
                ..ObjectMeta::default()
            },
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("chat", "chat"));
        assert!(!glob_match("chat", "chat2"));
        assert!(glob_match("*", "anything/at-all"));
        assert!(glob_match("team-a/*", "team-a/chat"));
        assert!(!glob_match("team-a/*", "team-b/chat"));
        assert!(glob_match("*-v2", "chat-v2"));
        assert!(!glob_match("*-v2", "chat-v3"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c"));
        // The tail may not reuse what the head matched.
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn keys_are_found_by_value_and_grant_their_models() {
        let (keys, errors) = KeySet::from_secrets([&secret(
            "keys",
            &[
                (
                    "team-a",
                    "key: sk-team-a-0123456789\nmodels: [chat]\nrequestsPerMinute: 5\n",
                ),
                ("ops", r#"{"key": "sk-ops-0123456789abc", "models": ["*"]}"#),
            ],
        )]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(keys.len(), 2);
        let a = keys.authenticate("sk-team-a-0123456789").unwrap();
        assert_eq!(a.name, "team-a");
        assert_eq!(a.requests_per_minute, Some(5));
        assert!(a.allows("chat") && !a.allows("code"));
        let ops = keys.authenticate("sk-ops-0123456789abc").unwrap();
        assert_eq!(ops.name, "ops");
        assert!(ops.allows("code"));
        assert!(keys.authenticate("sk-team-a-012345678").is_none());
        assert!(keys.authenticate("").is_none());
    }

    #[test]
    fn bad_entries_are_left_out_naming_the_field() {
        let (keys, errors) = KeySet::from_secrets([&secret(
            "keys",
            &[
                ("short", "key: abc\nmodels: [chat]"),
                ("nomodels", "key: sk-0123456789abcdef\nmodels: []"),
                (
                    "zero",
                    "key: sk-0123456789abcdef\nmodels: [a]\ntokensPerMinute: 0",
                ),
                ("typo", "key: sk-0123456789abcdef\nmodel: [a]"),
                ("numeric", "key: 12345678901234567890\nmodels: [a]"),
                ("good", "key: sk-good-0123456789ab\nmodels: [a]"),
            ],
        )]);
        assert_eq!(keys.len(), 1);
        let text = errors.join("\n");
        for needle in [
            "\"short\": field `key`",
            "\"nomodels\": field `models`",
            "\"zero\": field `tokensPerMinute`",
            "\"typo\": unknown field `model`",
            "\"numeric\": field `key` must be a string",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
        assert!(
            !text.contains("sk-0123456789abcdef") && !text.contains("1234567890"),
            "a key was shown: {text}"
        );
    }

    #[test]
    fn a_name_in_two_secrets_keeps_neither() {
        let one = secret("one", &[("dup", "key: sk-one-0123456789ab\nmodels: [a]")]);
        let two = secret("two", &[("dup", "key: sk-two-0123456789ab\nmodels: [a]")]);
        let (keys, errors) = KeySet::from_secrets([&one, &two]);
        assert!(keys.is_empty());
        assert_eq!(errors.len(), 1);
    }
}
