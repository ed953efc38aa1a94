//! The chart's switches, each rendered with `helm template`: CRDs as templates
//! (`crds.install`, `crds.keep`), image pull settings reaching the operator's flags,
//! the monitoring toggles, the Grafana dashboard and the `helm test` hook. The test
//! pod is admitted by a server-side dry run in a namespace enforcing Pod Security
//! `restricted`, and the CRDs are upgraded, owned and kept by a real release.

use std::collections::BTreeSet;

use anyhow::{Context, bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::{CustomResourceExt, ResourceExt};
use llmops_tests::{Cluster, TestNamespace, apply_crds, workspace_root};
use serde_json::Value;

fn chart_dir() -> String {
    workspace_root().join("charts/llmops").display().to_string()
}

/// `helm template` with `extra` arguments, as one JSON value per document.
async fn render(cluster: &Cluster, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let chart = chart_dir();
    let mut args = vec!["template", "rel", chart.as_str(), "-n", "llmops-system"];
    args.extend_from_slice(extra);
    let out = cluster.helm(&args).await?.check()?;
    let mut docs = Vec::new();
    for doc in format!("\n{out}").split("\n---") {
        let value: Value = serde_yaml_ng::from_str(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn operator_args(docs: &[Value]) -> anyhow::Result<Vec<String>> {
    let [deployment] = of_kind(docs, "Deployment")[..] else {
        bail!("expected one Deployment");
    };
    let args = deployment
        .pointer("/spec/template/spec/containers/0/args")
        .and_then(Value::as_array)
        .context("no operator args")?;
    Ok(args
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect())
}

fn app_version() -> anyhow::Result<String> {
    let chart: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        workspace_root().join("charts/llmops/Chart.yaml"),
    )?)?;
    chart["appVersion"]
        .as_str()
        .map(String::from)
        .context("Chart.yaml has no appVersion")
}

#[tokio::test]
async fn chart_crds_follow_install_and_keep() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let docs = render(cluster, &[]).await?;
    let crds = of_kind(&docs, "CustomResourceDefinition");
    let generated = llmops_crds::all_crds();
    ensure!(
        crds.len() == generated.len(),
        "expected {} CRDs by default, rendered {}",
        generated.len(),
        crds.len()
    );
    for crd in &generated {
        let name = crd.name_any();
        let rendered = crds
            .iter()
            .find(|c| c["metadata"]["name"] == name.as_str())
            .with_context(|| format!("{name} not rendered"))?;
        ensure!(
            rendered["spec"] == serde_json::to_value(&crd.spec)?,
            "the rendered {name} differs from the types; run crdgen"
        );
        ensure!(
            rendered["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep",
            "{name} is not kept by default"
        );
        ensure!(rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm");
    }

    let unkept = render(cluster, &["--set", "crds.keep=false"]).await?;
    for crd in of_kind(&unkept, "CustomResourceDefinition") {
        ensure!(
            crd["metadata"]["annotations"].is_null(),
            "crds.keep=false still annotates: {}",
            crd["metadata"]
        );
    }
    let none = render(cluster, &["--set", "crds.install=false"]).await?;
    ensure!(
        of_kind(&none, "CustomResourceDefinition").is_empty(),
        "crds.install=false still renders CRDs"
    );
    // The CRDs travel with the templates only: a crds/ directory would be
    // installed beside them and conflict with them on the first install.
    ensure!(
        !workspace_root().join("charts/llmops/crds").exists(),
        "charts/llmops/crds/ exists; the chart's CRDs live in files/crds/"
    );
    Ok(())
}

#[tokio::test]
async fn chart_image_settings_reach_the_operator_flags() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let version = app_version()?;
    let args = operator_args(&render(cluster, &[]).await?)?;
    for want in [
        format!("--trainer-image=ghcr.io/llmops-dev/trainer:{version}"),
        format!("--server-image=ghcr.io/llmops-dev/server:{version}"),
        "--trainer-image-pull-policy=IfNotPresent".into(),
        "--server-image-pull-policy=IfNotPresent".into(),
    ] {
        ensure!(args.contains(&want), "{want} not in {args:?}");
    }
    ensure!(
        !args.iter().any(|a| a.starts_with("--image-pull-secrets")),
        "pull secrets without imagePullSecrets: {args:?}"
    );

    let docs = render(
        cluster,
        &[
            "--set",
            "imagePullSecrets[0].name=regcred,imagePullSecrets[1].name=mirror",
            "--set",
            "trainerImage.repository=registry.example/t,trainerImage.tag=1.2.3-cuda,trainerImage.pullPolicy=Always",
            "--set",
            "serverImage.tag=9.9.9,serverImage.pullPolicy=Never",
        ],
    )
    .await?;
    let args = operator_args(&docs)?;
    for want in [
        "--trainer-image=registry.example/t:1.2.3-cuda",
        "--server-image=ghcr.io/llmops-dev/server:9.9.9",
        "--trainer-image-pull-policy=Always",
        "--server-image-pull-policy=Never",
        "--image-pull-secrets=regcred,mirror",
    ] {
        ensure!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    let deployment = of_kind(&docs, "Deployment")[0];
    ensure!(
        deployment["spec"]["template"]["spec"]["imagePullSecrets"][1]["name"] == "mirror",
        "the operator pod does not pull with the Secrets"
    );
    Ok(())
}

#[tokio::test]
async fn chart_reconcile_concurrency_reaches_the_operator_flag() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let flag = |args: &[String]| {
        args.iter()
            .find(|a| a.starts_with("--max-concurrent-reconciles="))
            .cloned()
    };
    let args = operator_args(&render(cluster, &[]).await?)?;
    ensure!(
        flag(&args).as_deref() == Some("--max-concurrent-reconciles=16"),
        "default concurrency: {args:?}"
    );
    let args = operator_args(&render(cluster, &["--set", "maxConcurrentReconciles=4"]).await?)?;
    ensure!(
        flag(&args).as_deref() == Some("--max-concurrent-reconciles=4"),
        "set concurrency: {args:?}"
    );
    // The schema refuses 0, which would leave the flag's parser to fail at start.
    let chart = chart_dir();
    let out = cluster
        .helm(&[
            "template",
            "rel",
            chart.as_str(),
            "--set",
            "maxConcurrentReconciles=0",
        ])
        .await?;
    ensure!(
        !out.success && out.stderr.contains("maxConcurrentReconciles"),
        "maxConcurrentReconciles=0 was not refused naming the value: {}",
        out.stderr
    );
    Ok(())
}

#[tokio::test]
async fn chart_hub_endpoint_reaches_the_operator_flag() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let args = operator_args(&render(cluster, &[]).await?)?;
    ensure!(
        !args.iter().any(|a| a.starts_with("--hf-endpoint")),
        "a Hub endpoint without huggingface.endpoint: {args:?}"
    );
    let args = operator_args(
        &render(
            cluster,
            &["--set", "huggingface.endpoint=https://hub.internal"],
        )
        .await?,
    )?;
    ensure!(
        args.iter()
            .any(|a| a == "--hf-endpoint=https://hub.internal"),
        "huggingface.endpoint did not reach the flag: {args:?}"
    );
    let chart = chart_dir();
    let out = cluster
        .helm(&[
            "template",
            "rel",
            chart.as_str(),
            "--set",
            "huggingface.endpoint=hub.internal",
        ])
        .await?;
    ensure!(
        !out.success && out.stderr.contains("endpoint"),
        "a Hub endpoint without a scheme was not refused: {}",
        out.stderr
    );
    Ok(())
}

/// Metric names the operator and the server register (`registry.register("x", ..)`
/// under their prefixes), with the suffixes Prometheus exposes.
fn exported_metrics() -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for (file, prefix) in [
        ("operator/src/runtime/metrics.rs", "llmops_operator"),
        ("server-image/src/metrics.rs", "llmops_server"),
    ] {
        let text = std::fs::read_to_string(workspace_root().join(file))?;
        ensure!(text.contains(&format!("with_prefix(\"{prefix}\")")));
        let mut rest = text.as_str();
        while let Some(at) = rest.find("register(") {
            rest = &rest[at + "register(".len()..];
            let name = rest.trim_start().trim_start_matches('"');
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
                    names.insert(format!("{prefix}_{name}{suffix}"));
                }
            }
        }
    }
    Ok(names)
}

#[tokio::test]
async fn chart_monitoring_switches_are_off_by_default_and_render_when_on() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let docs = render(cluster, &[]).await?;
    for kind in ["ServiceMonitor", "PodMonitor", "ConfigMap"] {
        ensure!(
            of_kind(&docs, kind).is_empty(),
            "{kind} rendered by default"
        );
    }

    let docs = render(
        cluster,
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom",
        ],
    )
    .await?;
    let [monitor] = of_kind(&docs, "ServiceMonitor")[..] else {
        bail!("no ServiceMonitor");
    };
    ensure!(monitor["spec"]["endpoints"][0]["port"] == "metrics");
    ensure!(monitor["metadata"]["labels"]["release"] == "prom");
    let [service] = of_kind(&docs, "Service")[..] else {
        bail!("no metrics Service");
    };
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("no selector")?
    {
        ensure!(
            &service["metadata"]["labels"][key] == value,
            "the ServiceMonitor's {key} does not select the metrics Service"
        );
    }
    let without_service = cluster
        .helm([
            "template",
            "rel",
            &chart_dir(),
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.service.enabled=false",
        ])
        .await?;
    ensure!(
        !without_service.success && without_service.stderr.contains("metrics.service.enabled"),
        "a ServiceMonitor without the Service it scrapes: {}",
        without_service.stderr
    );

    let docs = render(
        cluster,
        &["--set", "metrics.servingPodMonitor.enabled=true"],
    )
    .await?;
    let [pods] = of_kind(&docs, "PodMonitor")[..] else {
        bail!("no PodMonitor");
    };
    ensure!(pods["spec"]["podMetricsEndpoints"][0]["port"] == "http");
    ensure!(pods["spec"]["namespaceSelector"]["any"] == true);
    ensure!(pods["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "server");
    let scoped = render(
        cluster,
        &[
            "--set",
            "metrics.servingPodMonitor.enabled=true,watchNamespaces={a,b}",
        ],
    )
    .await?;
    ensure!(
        of_kind(&scoped, "PodMonitor")[0]["spec"]["namespaceSelector"]["matchNames"]
            == serde_json::json!(["a", "b"])
    );

    let docs = render(cluster, &["--set", "metrics.grafanaDashboard.enabled=true"]).await?;
    let [config_map] = of_kind(&docs, "ConfigMap")[..] else {
        bail!("no dashboard ConfigMap");
    };
    ensure!(config_map["metadata"]["labels"]["grafana_dashboard"] == "1");
    let dashboard: Value = serde_json::from_str(
        config_map["data"]["llmops.json"]
            .as_str()
            .context("no llmops.json")?,
    )
    .context("the dashboard is not JSON")?;
    let known = exported_metrics()?;
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().context("no expr")?.to_string());
        }
    }
    ensure!(exprs.len() >= 10, "only {} queries", exprs.len());
    let mut seen = BTreeSet::new();
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("llmops_") {
                ensure!(
                    known.contains(word),
                    "the dashboard queries {word}, which nothing exports"
                );
                seen.insert(word.to_string());
            }
        }
    }
    for must in [
        "llmops_server_requests_total",
        "llmops_server_request_duration_seconds_bucket",
        "llmops_server_time_to_first_token_seconds_bucket",
        "llmops_server_generated_tokens_total",
        "llmops_server_ready",
        "llmops_operator_reconciles_total",
    ] {
        ensure!(seen.contains(must), "no panel shows {must}");
    }
    Ok(())
}

#[tokio::test]
async fn chart_test_hook_checks_readyz_and_is_admitted_as_restricted() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let docs = render(cluster, &[]).await?;
    let [pod] = of_kind(&docs, "Pod")[..] else {
        bail!("no helm test Pod by default");
    };
    ensure!(pod["metadata"]["annotations"]["helm.sh/hook"] == "test");
    let args = &pod["spec"]["containers"][0]["args"];
    ensure!(args[0] == "probe", "{args}");
    ensure!(
        args[1] == "http://rel-llmops-metrics.llmops-system.svc:8080/readyz",
        "{args}"
    );
    for off in [
        "replicaCount=0",
        "tests.enabled=false",
        "metrics.service.enabled=false",
    ] {
        ensure!(
            of_kind(&render(cluster, &["--set", off]).await?, "Pod").is_empty(),
            "a test Pod with {off}"
        );
    }

    // Admitted where Pod Security `restricted` is enforced.
    let ns = TestNamespace::create(cluster, "helm-test-pod").await?;
    let out = cluster
        .helm([
            "template",
            "rel",
            &chart_dir(),
            "-n",
            ns.name(),
            "--show-only",
            "templates/tests/readyz.yaml",
        ])
        .await?
        .check()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pod.yaml");
    std::fs::write(&path, &out)?;
    let path = path.display().to_string();
    let applied = cluster
        .kubectl(["apply", "--dry-run=server", "-n", ns.name(), "-f", &path])
        .await?;
    ensure!(
        applied.success && !applied.stderr.contains("violate"),
        "the test Pod is not admitted: {}",
        applied.stderr
    );
    ns.delete(cluster).await
}

#[tokio::test]
async fn chart_notes_name_commands_that_work() -> anyhow::Result<()> {
    let notes =
        std::fs::read_to_string(workspace_root().join("charts/llmops/templates/NOTES.txt"))?;
    ensure!(
        !notes.contains("raw.githubusercontent.com"),
        "kubectl apply -f cannot read a directory by URL"
    );
    ensure!(notes.contains("kubectl get llmops -A -w"));
    for crd in llmops_crds::all_crds() {
        ensure!(
            crd.spec
                .names
                .categories
                .iter()
                .flatten()
                .any(|c| c == "llmops"),
            "{} is not in the llmops category that NOTES.txt lists",
            crd.name_any()
        );
    }
    let quickstart = workspace_root().join("examples/quickstart");
    ensure!(
        notes.contains("examples/quickstart/") && quickstart.is_dir(),
        "NOTES.txt and examples/quickstart/ disagree"
    );
    Ok(())
}

/// A release that installs the CRDs takes them over (they exist already, applied by
/// other tests), labels them as its own, and leaves them behind when uninstalled.
#[tokio::test]
async fn chart_crds_are_upgraded_with_the_release_and_kept() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let client = cluster.client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::create(cluster, "helm-crds").await?;
    let name = ns.name().to_string();
    let chart = chart_dir();
    let install = |command: &'static str| {
        let (name, chart) = (name.clone(), chart.clone());
        async move {
            cluster
                .helm([
                    command,
                    &name,
                    &chart,
                    "-n",
                    &name,
                    "--set",
                    "crds.install=true,replicaCount=0,leaderElection.enabled=false",
                    "--set",
                    &format!("watchNamespaces={{{name}}}"),
                    "--take-ownership",
                    "--timeout=120s",
                ])
                .await?
                .check()
        }
    };
    install("install").await?;
    install("upgrade").await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dataset = crds.get(llmops_crds::Dataset::crd_name()).await?;
    ensure!(
        dataset.annotations().get("meta.helm.sh/release-name") == Some(&name),
        "the release does not own the CRD: {:?}",
        dataset.annotations()
    );
    ensure!(
        dataset
            .annotations()
            .get("helm.sh/resource-policy")
            .map(String::as_str)
            == Some("keep")
    );
    cluster
        .helm(["uninstall", &name, "-n", &name, "--wait", "--timeout=120s"])
        .await?
        .check()?;
    for crd in llmops_crds::all_crds() {
        crds.get(&crd.name_any())
            .await
            .with_context(|| format!("{} deleted by helm uninstall", crd.name_any()))?;
    }
    // Leave them as the other tests expect them.
    apply_crds(&client).await?;
    ns.delete(cluster).await
}

/// The rows of the chart README's values table: one per leaf of `values.yaml`, its
/// default as JSON, and the comment above it.
fn values_table() -> anyhow::Result<String> {
    let text = std::fs::read_to_string(workspace_root().join("charts/llmops/values.yaml"))?;
    let values: Value = serde_yaml_ng::from_str(&text)?;
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut comment: Vec<String> = Vec::new();
    let mut rows = vec![
        "| key | default | description |".to_string(),
        "|---|---|---|".to_string(),
    ];
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            comment.clear();
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            comment.push(text.trim().to_string());
            continue;
        }
        let Some((key, rest)) = trimmed.split_once(':') else {
            bail!("values.yaml line {}: not `key: value`", index + 1);
        };
        let depth = indent(line);
        while stack.last().is_some_and(|(d, _)| *d >= depth) {
            stack.pop();
        }
        let next_deeper = lines[index + 1..]
            .iter()
            .find(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
            .is_some_and(|l| indent(l) > depth);
        if rest.trim().is_empty() && next_deeper {
            stack.push((depth, key.to_string()));
            comment.clear();
            continue;
        }
        let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).chain([key]).collect();
        let mut default = &values;
        for part in &path {
            default = &default[*part];
        }
        let description = if comment.is_empty() {
            "".to_string()
        } else {
            comment.join(" ").replace('|', "\\|")
        };
        rows.push(format!(
            "| `{}` | `{}` | {} |",
            path.join("."),
            serde_json::to_string(default)?,
            description
        ));
        comment.clear();
    }
    Ok(rows.join("\n"))
}

const TABLE_START: &str =
    "<!-- values table: generated from values.yaml by tests/integration/chart_templates.rs -->";
const TABLE_END: &str = "<!-- end of values table -->";

/// `charts/llmops/README.md` lists every value with its default and comment, as
/// `values.yaml` has them. `LLMOPS_UPDATE_CHART_README=1` rewrites the table.
#[test]
fn chart_readme_values_table_matches_values_yaml() -> anyhow::Result<()> {
    let path = workspace_root().join("charts/llmops/README.md");
    let readme = std::fs::read_to_string(&path)?;
    let (Some(start), Some(end)) = (readme.find(TABLE_START), readme.find(TABLE_END)) else {
        bail!("{} has no values table markers", path.display());
    };
    let table = values_table()?;
    let current = readme[start + TABLE_START.len()..end].trim();
    if current == table {
        return Ok(());
    }
    if std::env::var_os("LLMOPS_UPDATE_CHART_README").is_some() {
        let updated = format!(
            "{}{TABLE_START}\n{table}\n{}",
            &readme[..start],
            &readme[end..]
        );
        std::fs::write(&path, updated)?;
        return Ok(());
    }
    bail!(
        "the values table of {} is stale; run LLMOPS_UPDATE_CHART_README=1 cargo test -p llmops-tests --test integration chart_readme",
        path.display()
    )
}

#[tokio::test]
async fn chart_tracing_settings_reach_the_operator_as_otel_variables() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let otel_env = |docs: &[Value]| -> anyhow::Result<Vec<(String, String)>> {
        let [deployment] = of_kind(docs, "Deployment")[..] else {
            bail!("expected one Deployment");
        };
        let env = deployment
            .pointer("/spec/template/spec/containers/0/env")
            .and_then(Value::as_array)
            .context("no operator env")?;
        Ok(env
            .iter()
            .filter_map(|e| {
                let name = e["name"].as_str()?;
                name.starts_with("OTEL_").then(|| {
                    (
                        name.to_string(),
                        e["value"].as_str().unwrap_or("").to_string(),
                    )
                })
            })
            .collect())
    };
    let docs = render(cluster, &[]).await?;
    ensure!(
        otel_env(&docs)?.is_empty(),
        "OTEL_* by default: {:?}",
        otel_env(&docs)?
    );
    let args = operator_args(&docs)?;
    ensure!(
        !args.iter().any(|a| a.starts_with("--otlp-endpoint")),
        "{args:?}"
    );

    let docs = render(
        cluster,
        &[
            "--set",
            "tracing.otlpEndpoint=http://collector.monitoring:4318",
            "--set",
            "tracing.protocol=http/protobuf",
            "--set",
            "tracing.resourceAttributes.deployment\\.environment=prod",
            "--set",
            "tracing.resourceAttributes.team=ml",
        ],
    )
    .await?;
    let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
    ensure!(
        otel_env(&docs)?
            == [
                pair(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "http://collector.monitoring:4318"
                ),
                pair("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                pair(
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=prod,team=ml"
                ),
            ],
        "{:?}",
        otel_env(&docs)?
    );

    let chart = chart_dir();
    for (set, named) in [
        ("tracing.protocol=http/json", "/tracing/protocol"),
        (
            "tracing.otlpEndpoint=collector:4317",
            "/tracing/otlpEndpoint",
        ),
        (
            "tracing.resourceAttributes.team=a\\,b",
            "/tracing/resourceAttributes",
        ),
    ] {
        let out = cluster
            .helm(&["template", "rel", chart.as_str(), "--set", set])
            .await?;
        ensure!(
            !out.success && out.stderr.contains(named),
            "{set} was not refused naming {named}: {}",
            out.stderr
        );
    }
    Ok(())
}

/// The gateway: nothing by default; when enabled, a Deployment of the server
/// image's `gateway` (two replicas, a PodDisruptionBudget, admitted under Pod
/// Security `restricted`), a Service, and RBAC that lists and watches
/// ModelDeployments and endpoints only where the operator works and reads only
/// the named key Secrets.
#[tokio::test]
async fn chart_gateway_is_opt_in_restricted_and_least_privileged() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let is_gateway = |d: &&Value| {
        d.pointer("/metadata/labels/app.kubernetes.io~1component") == Some(&Value::from("gateway"))
    };
    let docs = render(cluster, &[]).await?;
    ensure!(
        !docs.iter().any(|d| is_gateway(&d)),
        "gateway objects by default"
    );

    let on = [
        "--set",
        "gateway.enabled=true",
        "--set",
        "gateway.keySecrets={keys-a,keys-b}",
    ];
    let docs = render(cluster, &on).await?;
    let gateway: Vec<&Value> = docs.iter().filter(is_gateway).collect();
    let kinds: BTreeSet<&str> = gateway.iter().filter_map(|d| d["kind"].as_str()).collect();
    ensure!(
        kinds
            == BTreeSet::from([
                "ClusterRole",
                "ClusterRoleBinding",
                "Deployment",
                "PodDisruptionBudget",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
            ]),
        "{kinds:?}"
    );
    let find = |kind: &str| {
        gateway
            .iter()
            .find(|d| d["kind"] == kind)
            .copied()
            .with_context(|| format!("no gateway {kind}"))
    };
    let deployment = find("Deployment")?;
    ensure!(deployment["spec"]["replicas"] == 2);
    let pod = &deployment["spec"]["template"]["spec"];
    ensure!(pod["serviceAccountName"] == "rel-llmops-gateway");
    let container = &pod["containers"][0];
    ensure!(container["command"] == serde_json::json!(["gateway"]));
    let image = format!("ghcr.io/llmops-dev/server:{}", app_version()?);
    ensure!(
        container["image"] == image.as_str(),
        "{}",
        container["image"]
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .context("no args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arg in [
        "--key-secrets=keys-a,keys-b",
        "--endpoints=endpointslices",
        "--listen=0.0.0.0:8080",
        "--max-queued=100",
    ] {
        ensure!(args.contains(&arg), "{arg} not in {args:?}");
    }
    ensure!(
        !args.iter().any(|a| a.starts_with("--namespaces")),
        "{args:?}"
    );
    let pdb = find("PodDisruptionBudget")?;
    ensure!(pdb["spec"]["maxUnavailable"] == 1);
    let service = find("Service")?;
    ensure!(service["spec"]["ports"][0]["port"] == 80);
    ensure!(service["spec"]["ports"][0]["targetPort"] == "http");
    // The operator reads each gateway pod's demand (scale to zero) through a
    // headless Service that resolves to every ready one.
    let pods = gateway
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "rel-llmops-gateway-pods")
        .context("no headless Service of the gateway pods")?;
    ensure!(pods["spec"]["clusterIP"] == "None", "{pods}");
    ensure!(pods["spec"]["ports"][0]["port"] == 8080, "{pods}");
    let operator_args = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .filter(|d| d["kind"] == "Deployment" && !is_gateway(d))
            .flat_map(|d| {
                d.pointer("/spec/template/spec/containers/0/args")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|a| a.as_str().map(String::from))
            .collect()
    };
    let flag =
        "--gateway-metrics-url=http://rel-llmops-gateway-pods.llmops-system.svc:8080/metrics";
    ensure!(
        operator_args(&docs).iter().any(|a| a == flag),
        "{flag} not in {:?}",
        operator_args(&docs)
    );
    let off = render(cluster, &[]).await?;
    ensure!(
        !operator_args(&off)
            .iter()
            .any(|a| a.starts_with("--gateway-metrics-url")),
        "the operator reads a gateway that is not deployed"
    );

    // What the gateway may do: read, never write; Secrets only by name.
    let rules = |doc: &Value| -> Vec<(String, String, Vec<String>, Value)> {
        doc["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rule| {
                let verbs: Vec<String> = rule["verbs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                let groups = rule["apiGroups"].as_array().cloned().unwrap_or_default();
                let resources = rule["resources"].as_array().cloned().unwrap_or_default();
                let names = rule["resourceNames"].clone();
                groups
                    .into_iter()
                    .flat_map(move |g| {
                        let verbs = verbs.clone();
                        let names = names.clone();
                        resources.clone().into_iter().map(move |r| {
                            (
                                g.as_str().unwrap_or("?").to_string(),
                                r.as_str().unwrap_or("?").to_string(),
                                verbs.clone(),
                                names.clone(),
                            )
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let list_watch = vec!["list".to_string(), "watch".to_string()];
    ensure!(
        rules(find("ClusterRole")?)
            == vec![
                (
                    "llmops.dev".into(),
                    "modeldeployments".into(),
                    list_watch.clone(),
                    Value::Null
                ),
                (
                    "discovery.k8s.io".into(),
                    "endpointslices".into(),
                    list_watch.clone(),
                    Value::Null
                ),
            ],
        "{:?}",
        rules(find("ClusterRole")?)
    );
    let role = find("Role")?;
    ensure!(role["metadata"]["namespace"] == "llmops-system");
    ensure!(
        rules(role)
            == vec![(
                "".into(),
                "secrets".into(),
                vec!["get".into(), "list".into(), "watch".into()],
                serde_json::json!(["keys-a", "keys-b"])
            )],
        "{:?}",
        rules(role)
    );

    // watchNamespaces: bound there only, and passed on; pods instead of
    // EndpointSlices when asked; one replica, no PDB.
    let mut scoped = on.to_vec();
    scoped.extend([
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "gateway.endpoints=pods",
        "--set",
        "gateway.replicas=1",
    ]);
    let docs = render(cluster, &scoped).await?;
    let gateway: Vec<&Value> = docs.iter().filter(is_gateway).collect();
    ensure!(!gateway.iter().any(|d| d["kind"] == "ClusterRoleBinding"));
    ensure!(!gateway.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    let bound: BTreeSet<&str> = gateway
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" && d["roleRef"]["kind"] == "ClusterRole")
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    ensure!(bound == BTreeSet::from(["team-a", "team-b"]), "{bound:?}");
    let cluster_role = gateway
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .context("no ClusterRole")?;
    ensure!(
        rules(cluster_role)[1].1 == "pods",
        "{:?}",
        rules(cluster_role)
    );
    let deployment = gateway
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("no Deployment")?;
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    ensure!(
        args.as_array()
            .is_some_and(|a| a.contains(&Value::from("--namespaces=team-a,team-b"))
                && a.contains(&Value::from("--endpoints=pods"))),
        "{args}"
    );

    // The schema refuses what the gateway could not use.
    let chart = chart_dir();
    for bad in [
        "gateway.endpoints=endpoints",
        "gateway.keySecrets=null",
        "gateway.keySecrets={}",
        "gateway.service.port=0",
        "gateway.unknown=1",
    ] {
        let out = cluster
            .helm([
                "template",
                "rel",
                &chart,
                "--set",
                "gateway.enabled=true",
                "--set",
                bad,
            ])
            .await?;
        ensure!(!out.success, "{bad} was accepted");
    }

    // Admitted where Pod Security `restricted` is enforced.
    let ns = TestNamespace::create(cluster, "helm-gateway").await?;
    let out = cluster
        .helm([
            "template",
            "rel",
            &chart_dir(),
            "-n",
            ns.name(),
            "--set",
            "gateway.enabled=true",
            "--show-only",
            "templates/gateway.yaml",
        ])
        .await?
        .check()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, &out)?;
    let path = path.display().to_string();
    let applied = cluster
        .kubectl(["apply", "--dry-run=server", "-n", ns.name(), "-f", &path])
        .await?;
    ensure!(
        applied.success && !applied.stderr.contains("violate"),
        "the gateway is not admitted as restricted: {}",
        applied.stderr
    );
    ns.delete(cluster).await
}

#[tokio::test]
async fn chart_vllm_image_reaches_the_operator_flag() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let values: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        workspace_root().join("charts/llmops/values.yaml"),
    )?)?;
    let pinned = format!(
        "--vllm-image={}:{}",
        values["vllmImage"]["repository"]
            .as_str()
            .context("repository")?,
        values["vllmImage"]["tag"].as_str().context("tag")?
    );
    ensure!(
        pinned == "--vllm-image=vllm/vllm-openai:v0.10.0",
        "the default vLLM image changed to {pinned}: check its metric names (operator monitor::vllm) first"
    );
    let args = operator_args(&render(cluster, &[]).await?)?;
    ensure!(args.contains(&pinned), "{pinned} not in {args:?}");

    let args = operator_args(
        &render(
            cluster,
            &[
                "--set",
                "vllmImage.repository=registry.example/vllm,vllmImage.tag=v0.10.0-mirror",
            ],
        )
        .await?,
    )?;
    let want = "--vllm-image=registry.example/vllm:v0.10.0-mirror";
    ensure!(args.iter().any(|a| a == want), "{want} not in {args:?}");

    // An empty tag would pull `latest`, whose metric names may differ.
    let refused = cluster
        .helm(&["template", "rel", &chart_dir(), "--set", "vllmImage.tag="])
        .await?;
    ensure!(
        refused.check().is_err(),
        "an empty vllmImage.tag was rendered"
    );
    Ok(())
}
