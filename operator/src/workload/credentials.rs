//! Object-store credentials reach pods only as `secretKeyRef` environment variables;
//! the operator never reads a Secret (the chart grants it no access to them).
//!
//! The variables are named by [`llmops_contract::credentials`]
//! (`LLMOPS_CRED_<SECRET>_<KEY>`). Every reference is optional: a missing key is
//! simply absent, and the program says which credential it lacked.

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};
pub use llmops_contract::credentials::CREDENTIAL_KEYS;
use llmops_contract::credentials::credential_env_prefix;

/// Optional `secretKeyRef` variables for every credential key of each Secret, in
/// the order given (callers pass distinct names).
pub fn credential_env<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Vec<EnvVar> {
    secrets
        .into_iter()
        .flat_map(|secret| {
            let prefix = credential_env_prefix(secret);
            CREDENTIAL_KEYS
                .iter()
                .map(move |key| optional_secret_env(format!("{prefix}{key}"), secret, key))
        })
        .collect()
}

/// Variable `name` from `key` of `secret`, absent when the key is.
pub fn optional_secret_env(name: String, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Two distinct Secrets whose variables would collide (`a-b` and `a.b`), if any.
pub fn colliding_secrets<'a>(secrets: &[&'a str]) -> Option<(&'a str, &'a str)> {
    secrets.iter().enumerate().find_map(|(i, a)| {
        secrets[i + 1..]
            .iter()
            .find(|b| a != *b && credential_env_prefix(a) == credential_env_prefix(b))
            .map(|b| (*a, *b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_an_optional_secret_key_ref() {
        let env = credential_env(["s3-creds"]);
        assert_eq!(env.len(), CREDENTIAL_KEYS.len());
        let first = &env[0];
        assert_eq!(first.name, "LLMOPS_CRED_S3_CREDS_AWS_ACCESS_KEY_ID");
        assert!(first.value.is_none());
        let selector = first
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(selector.name, "s3-creds");
        assert_eq!(selector.key, "AWS_ACCESS_KEY_ID");
        assert_eq!(selector.optional, Some(true));
        assert!(
            env.iter()
                .any(|e| e.name == "LLMOPS_CRED_S3_CREDS_AZURE_STORAGE_ACCOUNT_KEY")
        );
    }

    #[test]
    fn detects_names_that_normalise_alike() {
        assert_eq!(
            colliding_secrets(&["a-b", "c", "a.b"]),
            Some(("a-b", "a.b"))
        );
        assert_eq!(colliding_secrets(&["a-b", "c"]), None);
    }
}
