//! The credentials contract between the operator and the pods it starts.
//!
//! For a referenced Secret named `N`, the operator exposes each known key `K` of it
//! as the environment variable `LLMOPS_CRED_<N'>_<K>` (via an optional
//! `secretKeyRef`), where `N'` is `N` upper-cased with every non-alphanumeric
//! character replaced by `_`. Secret values never travel through the CR, a
//! ConfigMap or the command line. Without a Secret, the plain variables (`K`) or
//! the ambient identity of the pod (IAM role, workload identity) are used.
//!
//! This module depends on nothing but `std` so the operator can use it freely.

/// The Secret keys the operator maps into the environment.
pub const CREDENTIAL_KEYS: [&str; 9] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT",
    "AWS_ALLOW_HTTP",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
];

/// The environment-variable prefix for the keys of the Secret `secret_name`,
/// including the trailing `_`: `s3-creds` → `LLMOPS_CRED_S3_CREDS_`.
pub fn credential_env_prefix(secret_name: &str) -> String {
    let mut prefix = String::with_capacity(secret_name.len() + 13);
    prefix.push_str("LLMOPS_CRED_");
    prefix.extend(secret_name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    prefix.push('_');
    prefix
}

/// The environment variable carrying `key` of the Secret `secret_name`.
pub fn credential_env_var(secret_name: &str, key: &str) -> String {
    credential_env_prefix(secret_name) + key
}

/// Where the credentials of one store access come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Plain `AWS_*` / `GOOGLE_*` / `AZURE_*` variables or the pod's identity.
    #[default]
    Ambient,
    /// The `LLMOPS_CRED_<secret>_*` variables of a referenced Secret.
    Secret(String),
}

impl Credentials {
    /// From an optional Secret name, as found in a CR.
    pub fn from_secret(name: Option<&str>) -> Self {
        name.map_or(Self::Ambient, |n| Self::Secret(n.to_string()))
    }

    /// The value of one credential key, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        let var = match self {
            Self::Ambient => key.to_string(),
            Self::Secret(name) => credential_env_var(name, key),
        };
        std::env::var(var).ok().filter(|v| !v.is_empty())
    }

    /// Every credential key that is set, lower-cased as object-store builders expect.
    pub fn options(&self) -> Vec<(String, String)> {
        CREDENTIAL_KEYS
            .iter()
            .filter_map(|k| self.get(k).map(|v| (k.to_ascii_lowercase(), v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_upper_cases_and_replaces_non_alphanumerics() {
        assert_eq!(credential_env_prefix("s3-creds"), "LLMOPS_CRED_S3_CREDS_");
        assert_eq!(credential_env_prefix("a.b_c9"), "LLMOPS_CRED_A_B_C9_");
        assert_eq!(
            credential_env_var("gcs", "GOOGLE_SERVICE_ACCOUNT_KEY"),
            "LLMOPS_CRED_GCS_GOOGLE_SERVICE_ACCOUNT_KEY"
        );
    }
}
