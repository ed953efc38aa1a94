//! `trainer`: runs one step of a model's life for the resource in `--resource`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llmops_crds::Dataset;
use llmops_trainer::{bench, prepare, progress::Reporter, resource, termination};

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "llmops trainer: data preparation and training"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare a Dataset: collect, clean, dedup, tokenize, segment and shard.
    Prepare {
        /// The Dataset resource (YAML or JSON).
        #[arg(long, env = "LLMOPS_RESOURCE")]
        resource: PathBuf,
        /// Output URI when the resource has no spec.output.uri
        /// (default file://./out/<name>).
        #[arg(long)]
        output: Option<String>,
    },
    /// Benchmarks against the Python reference implementations.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Tokenization MB/s and dedup docs/s, next to Python tokenizers and datasketch.
    Prepare(bench::Options),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match cli.command {
        Command::Prepare { resource, output } => runtime.block_on(run_prepare(resource, output)),
        Command::Bench {
            what: BenchCommand::Prepare(options),
        } => match bench::run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}")),
        },
    }
}

async fn run_prepare(resource: PathBuf, output: Option<String>) -> ExitCode {
    let dataset: Dataset = match resource::load(&resource, "Dataset") {
        Ok(d) => d,
        Err(e) => return fail(&e.to_string()),
    };
    let name = dataset.metadata.name.clone().unwrap_or_default();
    let reporter =
        Reporter::start::<Dataset>(dataset.metadata.namespace.as_deref(), &name, "stats").await;
    let result = match prepare::output_uri(&dataset, output.as_deref()) {
        Ok(uri) => prepare::prepare(&dataset, &uri, &reporter).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(prepared) => {
            let line = serde_json::to_string(&prepared).unwrap_or_default();
            termination::write(&line);
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            reporter.abandon();
            fail(&e.to_string())
        }
    }
}

/// Prints the one error line and leaves it as the termination message.
fn fail(message: &str) -> ExitCode {
    let line = format!("error: {}", message.replace('\n', " "));
    eprintln!("{line}");
    termination::write(&line);
    ExitCode::FAILURE
}
