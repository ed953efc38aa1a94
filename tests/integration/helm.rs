//! The chart lints, installs, uninstalls, and rejects values outside its schema.

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{Api, ListParams};
use llmops_tests::{Cluster, TestNamespace, workspace_root};

use crate::chart;

fn chart_dir() -> String {
    workspace_root().join("charts/llmops").display().to_string()
}

#[tokio::test]
async fn helm_lint_passes() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    cluster
        .helm(["lint", "--strict", &chart_dir()])
        .await?
        .check()?;
    cluster
        .helm([
            "lint",
            "--strict",
            &chart_dir(),
            "--set",
            "watchNamespaces={a,b}",
        ])
        .await?
        .check()?;
    // Every switch on, and the CRDs off.
    cluster
        .helm([
            "lint",
            "--strict",
            &chart_dir(),
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.servingPodMonitor.enabled=true",
            "--set",
            "metrics.grafanaDashboard.enabled=true,crds.install=false,crds.keep=false",
            "--set",
            "imagePullSecrets[0].name=regcred,trainerImage.pullPolicy=Always",
        ])
        .await?
        .check()?;
    Ok(())
}

#[tokio::test]
async fn helm_install_and_uninstall() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let client = cluster.client().await?;
    let ns = TestNamespace::create(cluster, "helm-install").await?;
    let release = chart::install(cluster, &ns, &[]).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    let list = deployments
        .list(&ListParams::default().labels(&selector))
        .await?;
    ensure!(
        list.items.len() == 1,
        "expected the operator Deployment, found {}",
        list.items.len()
    );
    let ready = list.items[0]
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    ensure!(ready >= 1, "the operator Deployment has no ready replica");
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    ensure!(
        !bindings
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .is_empty(),
        "no ClusterRoleBinding without watchNamespaces"
    );

    release.uninstall().await?;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    ensure!(
        roles
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .is_empty(),
        "the ClusterRole outlived helm uninstall"
    );
    ns.delete(cluster).await
}

#[tokio::test]
async fn helm_install_with_watch_namespaces() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let client = cluster.client().await?;
    let ns = TestNamespace::create(cluster, "helm-watch").await?;
    let a = TestNamespace::create(cluster, "helm-watch-a").await?;
    let b = TestNamespace::create(cluster, "helm-watch-b").await?;
    let set = format!("watchNamespaces={{{},{}}}", a.name(), b.name());
    let release = chart::install(cluster, &ns, &["--set", &set]).await?;

    let selector = format!("app.kubernetes.io/instance={}", release.name);
    for watched in [&a, &b] {
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), watched.name());
        let found = bindings
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        ensure!(
            found.len() == 1,
            "expected one RoleBinding in {}, found {}",
            watched.name(),
            found.len()
        );
    }
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    ensure!(
        cluster_bindings
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .is_empty(),
        "a ClusterRoleBinding although watchNamespaces is set"
    );

    release.uninstall().await?;
    for namespace in [a, b, ns] {
        namespace.delete(cluster).await?;
    }
    Ok(())
}

#[tokio::test]
async fn values_outside_the_schema_are_rejected() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let cases = [
        ("replicaCount: -1\n", "replicaCount"),
        ("logging:\n  level: verbose\n", "level"),
        ("watchNamespaces: [Not_A_Namespace]\n", "watchNamespaces"),
        ("artifactStore:\n  uri: ftp://host/x\n", "uri"),
        ("metrics:\n  port: 80\n", "port"),
        ("unknownSetting: true\n", "unknownSetting"),
        ("crds:\n  install: \"yes\"\n", "install"),
        ("crds:\n  upgrade: true\n", "upgrade"),
        ("imagePullSecrets: [regcred]\n", "imagePullSecrets"),
        ("trainerImage:\n  pullPolicy: Sometimes\n", "pullPolicy"),
        (
            "metrics:\n  serviceMonitor:\n    enabled: true\n    port: 1\n",
            "port",
        ),
        (
            "metrics:\n  servingPodMonitor:\n    interval: soon\n",
            "interval",
        ),
        (
            "metrics:\n  grafanaDashboard:\n    labels:\n      grafana_dashboard: 1\n",
            "grafana_dashboard",
        ),
        ("tests:\n  enabled: 1\n", "enabled"),
        ("resources:\n  request:\n    cpu: 1\n", "request"),
    ];
    let dir = tempfile::tempdir()?;
    let mut wrong = Vec::new();
    for (index, (values, field)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("values-{index}.yaml"));
        std::fs::write(&path, values)?;
        let path = path.display().to_string();
        let out = cluster
            .helm(["template", "bad", &chart_dir(), "-f", &path])
            .await?;
        if out.success || !out.stderr.contains(field) {
            wrong.push(format!(
                "{values:?}: success={}, stderr: {}",
                out.success,
                out.stderr.trim()
            ));
        }
    }
    for line in &wrong {
        eprintln!("not rejected as expected: {line}");
    }
    ensure!(
        wrong.is_empty(),
        "{} invalid values files not rejected",
        wrong.len()
    );

    // And a real install fails before creating anything.
    let ns = TestNamespace::create(cluster, "helm-bad-values").await?;
    let path = dir.path().join("values-0.yaml").display().to_string();
    let out = cluster
        .helm([
            "install",
            ns.name(),
            &chart_dir(),
            "-n",
            ns.name(),
            "-f",
            &path,
        ])
        .await
        .context("helm install")?;
    ensure!(!out.success, "helm install accepted replicaCount: -1");
    ensure!(
        out.stderr
            .contains("values don't meet the specifications of the schema")
            || out.stderr.contains("replicaCount"),
        "unexpected helm error: {}",
        out.stderr
    );
    let status = cluster.helm(["status", ns.name(), "-n", ns.name()]).await?;
    ensure!(
        !status.success,
        "a release exists after the rejected install"
    );
    ns.delete(cluster).await
}
