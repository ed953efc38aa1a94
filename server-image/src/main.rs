//! `server --model URI [--port] [--api-key-file]`: the OpenAI-compatible inference
//! server (DESIGN §3). This version does not serve yet; ModelDeployments are marked
//! Stalled by the operator, and the command says so instead of pretending to run.

use std::process::ExitCode;

use clap::Parser;

/// Serve a model over an OpenAI-compatible HTTP API.
#[derive(Parser, Debug)]
#[command(name = "server", version)]
struct Cli {
    /// Model directory URI (Hugging Face layout).
    #[arg(long)]
    model: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// File with accepted API keys, one per line.
    #[arg(long)]
    api_key_file: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "error: serving {} is not available in this llmops version; the inference server is not built yet",
        cli.model
    );
    ExitCode::from(2)
}
