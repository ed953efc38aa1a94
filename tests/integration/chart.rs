//! Installing the chart `charts/llmops` for a test.

use std::process::Stdio;

use anyhow::Context;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use llmops_tests::{Cluster, TestNamespace, apply_crds, workspace_root};

/// A release of the chart; uninstalled by [`Release::uninstall`] or when dropped,
/// so its cluster-scoped ClusterRole and bindings do not outlive the test.
pub struct Release {
    cluster: &'static Cluster,
    pub name: String,
    pub namespace: String,
    uninstalled: bool,
}

/// `helm install` the chart into `namespace` (release named after it) and wait
/// until its resources are ready.
pub async fn install(
    cluster: &'static Cluster,
    namespace: &TestNamespace,
    extra: &[&str],
) -> anyhow::Result<Release> {
    // Our CRDs first, applied apart: the release leaves them alone (crds.install
    // off), so that releases of tests running side by side do not fight over them.
    apply_crds(&cluster.client().await?).await?;
    let chart = workspace_root().join("charts/llmops").display().to_string();
    let name = namespace.name().to_string();
    let mut args = vec![
        "install",
        &name,
        &chart,
        "-n",
        namespace.name(),
        "--wait=watcher",
        "--timeout=120s",
        "--set",
        "crds.install=false",
    ];
    args.extend_from_slice(extra);
    cluster.helm(&args).await?.check()?;
    Ok(Release {
        cluster,
        name,
        namespace: namespace.name().to_string(),
        uninstalled: false,
    })
}

impl Release {
    /// The name of the ServiceAccount the release created.
    pub async fn service_account(&self, client: &Client) -> anyhow::Result<String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &self.namespace);
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let list = accounts
            .list(&ListParams::default().labels(&selector))
            .await?;
        let [account] = list.items.as_slice() else {
            anyhow::bail!(
                "expected one ServiceAccount labelled {selector}, found {}",
                list.items.len()
            )
        };
        Ok(account.name_any())
    }

    /// `helm uninstall --wait`.
    pub async fn uninstall(mut self) -> anyhow::Result<()> {
        self.uninstalled = true;
        self.cluster
            .helm([
                "uninstall",
                &self.name,
                "-n",
                &self.namespace,
                "--wait",
                "--timeout=120s",
            ])
            .await?
            .check()
            .context("helm uninstall")?;
        Ok(())
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled {
            let _ = self
                .cluster
                .helm_command(["uninstall", &self.name, "-n", &self.namespace])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
