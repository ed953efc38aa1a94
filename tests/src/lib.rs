//! Support for tests that run against a real Kubernetes control plane.
//!
//! [`Cluster::get`] finds the control plane: the one `$KUBECONFIG` points at when
//! that answers, else the loopback cluster of `tests/cluster`, started once per test
//! process with `tests/cluster/up` (a file lock lets parallel test binaries share
//! it; it is left running, and the next `up` reuses it). Each test works in its own
//! [`TestNamespace`], deleted when the test ends; deleting it first checks that
//! every Pod, Service and EndpointSlice in it holds only loopback addresses
//! ([`loopback`]): test traffic never leaves this machine.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use llmops_tests::{Cluster, TestNamespace};
//! let Some(cluster) = Cluster::get()? else { return Ok(()) }; // skipped on request
//! let client = cluster.client().await?;
//! let ns = TestNamespace::create(cluster, "example").await?;
//! llmops_tests::apply_crds(&client).await?;
//! cluster.kubectl(&["get", "datasets", "-n", ns.name()]).await?.check()?;
//! # Ok(()) }
//! ```
//!
//! The tests skip, passing, only when `LLMOPS_SKIP_CLUSTER_TESTS=1` is set; without
//! it a control plane that cannot be reached or started fails them.
//!
//! | environment | effect |
//! | --- | --- |
//! | `KUBECONFIG` (one file) | use that cluster when `/readyz` answers; the tests create and delete namespaces, CRDs and ClusterRoles there |
//! | `LLMOPS_SKIP_CLUSTER_TESTS=1` | skip every test that needs a control plane |
//! | `LLMOPS_KEEP_NAMESPACES=1` | keep test namespaces for inspection |
//! | `LLMOPS_CLUSTER_DIR`, `LLMOPS_*_PORT` | passed on to `tests/cluster/up` (a second cluster beside the default one) |

mod cluster;
pub mod faults;
pub mod local;
pub mod loopback;
mod namespace;
pub mod node;
pub mod operator;
pub mod otlp;
pub mod traffic;

pub use cluster::{Cluster, Outcome, SKIP_ENV};
/// The pod runner of the local node: tests run the operator's pods with the
/// same code as `local-node` does.
pub use llmops_local_node::{probe, replay, runner};
pub use namespace::TestNamespace;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::Value;

/// The field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "llmops-tests";

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Apply every CRD of `llmops_crds::all_crds()` by server-side apply and wait until
/// each is Established. Idempotent; concurrent callers are fine.
pub async fn apply_crds(client: &Client) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = Vec::new();
    for crd in llmops_crds::all_crds() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        applied.push(name);
    }
    let mut established = Vec::new();
    for name in applied {
        let crd = tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not Established after 60 s"))??
        .with_context(|| format!("CRD {name} disappeared"))?;
        established.push(crd);
    }
    Ok(established)
}

/// An [`Api`] for a manifest of any kind (resolved through discovery), and the
/// manifest as a [`DynamicObject`] placed in `namespace` when the kind is namespaced.
pub async fn dynamic_api(
    client: &Client,
    namespace: &str,
    manifest: &Value,
) -> anyhow::Result<(Api<DynamicObject>, DynamicObject)> {
    let mut object: DynamicObject =
        serde_json::from_value(manifest.clone()).context("manifest is not a Kubernetes object")?;
    let types = object
        .types
        .clone()
        .context("manifest has no apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(&types)?;
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| {
            format!(
                "the apiserver does not serve {}/{}",
                types.api_version, types.kind
            )
        })?;
    let api = if caps.scope == kube::discovery::Scope::Namespaced {
        object.metadata.namespace = Some(namespace.to_string());
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    Ok((api, object))
}

/// Poll `check` every 250 ms until it returns `Ok`, for at most `timeout`; the error
/// names `what` and carries the last error `check` gave.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => {
                bail!("timed out after {timeout:?} waiting for {what}: {err:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
