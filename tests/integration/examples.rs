//! Every example manifest is accepted by the apiserver (server-side dry run).

use anyhow::{Context, ensure};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use llmops_crds::manifest::read_documents;
use llmops_tests::{
    Cluster, FIELD_MANAGER, TestNamespace, apply_crds, dynamic_api, workspace_root,
};

const DIRS: [&str; 3] = [
    "examples/quickstart",
    "examples/reference",
    "examples/gateway",
];

#[tokio::test]
async fn examples_pass_a_server_side_dry_run() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let client = cluster.client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::create(cluster, "examples").await?;
    let root = workspace_root();
    let params = PatchParams::apply(FIELD_MANAGER).dry_run();
    let mut checked = 0;
    let mut failures = Vec::new();
    for dir in DIRS {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .with_context(|| format!("reading {dir}"))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
        files.sort();
        ensure!(!files.is_empty(), "no manifests in {dir}");
        for file in files {
            let shown = file
                .strip_prefix(&root)
                .unwrap_or(&file)
                .display()
                .to_string();
            for (index, document) in read_documents(&file)?.iter().enumerate() {
                let (api, object) = dynamic_api(&client, ns.name(), document).await?;
                checked += 1;
                if let Err(err) = api
                    .patch(&object.name_any(), &params, &Patch::Apply(&object))
                    .await
                {
                    failures.push(format!("{shown}#{index}: {err}"));
                }
            }
        }
        // And what a user runs.
        let path = root.join(dir).display().to_string();
        let out = cluster
            .kubectl(["apply", "--dry-run=server", "-n", ns.name(), "-f", &path])
            .await?;
        if !out.success {
            failures.push(format!(
                "kubectl apply --dry-run=server -f {dir}: {}",
                out.stderr.trim()
            ));
        }
    }
    for failure in &failures {
        eprintln!("rejected: {failure}");
    }
    ensure!(
        failures.is_empty(),
        "{} of {checked} example manifests rejected",
        failures.len()
    );
    ns.delete(cluster).await
}
