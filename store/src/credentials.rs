//! Where a store access finds its credentials.
//!
//! For a referenced Secret, the operator exposes each known key of it as an
//! environment variable named by [`llmops_contract::credentials`]
//! (`LLMOPS_CRED_<SECRET>_<KEY>`, through an optional `secretKeyRef`): Secret
//! values never travel through the CR, a ConfigMap or the command line. Without a
//! Secret, the plain variables (`<KEY>`) or the ambient identity of the pod (IAM
//! role, workload identity) are used.

pub use llmops_contract::credentials::{
    CREDENTIAL_KEYS, credential_env_prefix, credential_env_var,
};

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
