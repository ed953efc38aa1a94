//! A ServiceAccount's identity for a local process: a kubeconfig holding a token
//! from the TokenRequest API, as the kubelet mounts one into a pod.

use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo, NamedContext};

use crate::Node;

/// Seconds the tokens handed to local processes stay valid: the kubelet's
/// default for projected tokens is an hour too.
pub const TOKEN_SECONDS: i64 = 3600;

/// A token of ServiceAccount `namespace/name` from the TokenRequest API, valid
/// for `seconds`, for the apiserver's own audience.
pub async fn request_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    seconds: i64,
) -> anyhow::Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(seconds),
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{name}"))?
        .status
        .context("TokenRequest without status")?
        .token)
}

/// Write to `path` a kubeconfig for the node's cluster, authenticated as
/// ServiceAccount `namespace/name` with a token from the TokenRequest API; returns
/// the token.
pub async fn write_token_kubeconfig(
    node: &Node,
    namespace: &str,
    name: &str,
    path: &Path,
) -> anyhow::Result<String> {
    let token = request_token(node.client(), namespace, name, TOKEN_SECONDS).await?;
    let mut config = Kubeconfig::read_from(node.kubeconfig())?;
    let context = config
        .contexts
        .iter()
        .find(|c| Some(&c.name) == config.current_context.as_ref())
        .or(config.contexts.first())
        .and_then(|c| c.context.clone())
        .context("the admin kubeconfig has no context")?;
    let user = format!("system:serviceaccount:{namespace}:{name}");
    config.auth_infos = vec![NamedAuthInfo {
        name: user.clone(),
        auth_info: Some(AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        }),
        other: Default::default(),
    }];
    config.contexts = vec![NamedContext {
        name: user.clone(),
        context: Some(kube::config::Context {
            user: Some(user.clone()),
            namespace: Some(namespace.to_string()),
            ..context
        }),
        other: Default::default(),
    }];
    config.current_context = Some(user);
    let yaml = serde_yaml_ng::to_string(&config)?;
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}
