//! The README's main command, as a user runs it: `scripts/quickstart` starts a
//! local cluster of its own (`scripts/local-cluster`: a second control plane on
//! ports and address ranges of its own, the chart, the operator, `local-node`),
//! applies `examples/quickstart/`, waits until every resource is Ready and asks the
//! served model a question; `scripts/local-cluster down` removes it all.
//!
//! A test binary of its own, so that cargo runs it after the integration tests
//! rather than beside them: a second control plane on two cores would slow
//! those down.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};
use llmops_tests::{Cluster, workspace_root};

/// Run `script args` in the workspace with the local cluster kept in `dir`;
/// returns its output (stdout and stderr).
fn run(script: &str, args: &[&str], dir: &Path) -> anyhow::Result<(bool, String)> {
    let output = Command::new(workspace_root().join(script))
        .args(args)
        .current_dir(workspace_root())
        .env("LLMOPS_LOCAL_CLUSTER_DIR", dir)
        // Ports and address ranges of their own, beside a developer's local
        // cluster (instance 0) and the test cluster.
        .env("LLMOPS_LOCAL_INSTANCE", "1")
        // scripts/test built every binary already.
        .env("LLMOPS_LOCAL_CLUSTER_SKIP_BUILD", "1")
        .env_remove("KUBECONFIG")
        .output()
        .with_context(|| format!("running {script}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

#[test]
fn the_quickstart_runs_through_the_operator_on_a_local_cluster() -> anyhow::Result<()> {
    // Skipped with the other control-plane tests (LLMOPS_SKIP_CLUSTER_TESTS=1).
    if Cluster::get()?.is_none() {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("llmops-quickstart-")
        .tempdir()?;
    let state = dir.path().join("local-cluster");
    let (ok, output) = run("scripts/quickstart", &[], &state)?;
    let (down_ok, down) = run("scripts/local-cluster", &["down"], &state)?;
    ensure!(ok, "scripts/quickstart failed:\n{output}");
    ensure!(down_ok, "scripts/local-cluster down failed:\n{down}");
    ensure!(!state.exists(), "down left {}", state.display());
    // Every resource became Ready through the operator, and the model answered.
    for resource in [
        "dataset/quickstart-stories",
        "dataset/quickstart-qa",
        "pretrainjob/quickstart-base",
        "finetune/quickstart-qa",
        "modeldeployment/quickstart",
    ] {
        ensure!(
            output
                .lines()
                .any(|l| l.contains(resource) && l.contains(" Ready ")),
            "{resource} never shown Ready:\n{output}"
        );
    }
    let answer = output
        .lines()
        .find(|l| l.trim_start().starts_with("answer: "))
        .with_context(|| format!("no answer printed:\n{output}"))?;
    ensure!(answer.contains("tokens, "), "{answer}");
    ensure!(
        output.contains("the base model before fine-tuning"),
        "the perplexities are not printed:\n{output}"
    );
    Ok(())
}
