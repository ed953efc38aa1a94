//! `local-node`: runs the pods of a local cluster's nodes as local processes, as
//! the kubelet would run their containers, and makes Services' ClusterIPs
//! answer, as kube-proxy would (see the library's documentation).
//! `scripts/local-cluster up` starts it beside the control plane and the
//! operator; it runs until SIGINT or SIGTERM, then kills its processes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use llmops_local_node::replay::Replayer;
use llmops_local_node::runner::{Options, PodRunner};
use llmops_local_node::services::ServiceProxy;
use llmops_local_node::{Node, Programs};

/// Run the containers of a local cluster's pods as local processes.
#[derive(Parser, Debug)]
#[command(name = "local-node", version)]
struct Args {
    /// Admin kubeconfig of the cluster.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Directory with the `trainer` and `server` binaries the pods' commands name.
    #[arg(long)]
    bin_dir: PathBuf,
    /// Where each pod's filesystem, log and termination message are kept
    /// (`<dir>/<namespace>/<pod>/`).
    #[arg(long)]
    pods_dir: PathBuf,
    /// Only this namespace's pods (default: every namespace).
    #[arg(long)]
    namespace: Option<String>,
    /// Only pods this label selector matches (default: every pod).
    #[arg(long, default_value = "")]
    selector: String,
    /// Hours one process may run before it is killed.
    #[arg(long, default_value_t = 24 * 7)]
    process_limit_hours: u64,
    /// `NAME=VALUE` set in every pod's process over the pod's own value (may
    /// repeat): what a cluster's nodes give every pod, such as `HF_ENDPOINT`
    /// for the route to a Hub mirror.
    #[arg(long = "env", value_parser = name_value)]
    env: Vec<(String, String)>,
}

fn name_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("--env {text:?} is not NAME=VALUE")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let node = Node::connect(&args.kubeconfig).await?;
    std::fs::create_dir_all(&args.pods_dir)
        .with_context(|| format!("creating {}", args.pods_dir.display()))?;
    let programs = Programs::in_dir(&args.bin_dir);
    let _services = ServiceProxy::start(node.client().clone(), args.namespace.as_deref(), true);
    let mut replayer = Replayer::in_dir(node, programs, &args.pods_dir);
    for (name, value) in &args.env {
        replayer = replayer.with_env(name, value);
    }
    let options = Options {
        process_limit: Duration::from_secs(args.process_limit_hours * 3600),
        report: true,
    };
    let runner = PodRunner::start_with(
        Arc::new(replayer),
        args.namespace.as_deref(),
        &args.selector,
        options,
    );
    eprintln!(
        "local-node: running the pods of {} (pod filesystems and logs in {})",
        args.namespace.as_deref().unwrap_or("every namespace"),
        args.pods_dir.display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("local-node: stopping every pod's process");
    runner.stop().await;
    Ok(())
}
