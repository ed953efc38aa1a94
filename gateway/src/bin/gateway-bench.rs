//! `gateway-bench`: what the gateway adds, measured in one run. The same
//! completion is sent straight to a serving pod and through the gateway,
//! in alternating rounds (so that drift of the machine hits both alike), one
//! request at a time for latency and `--concurrency` at once for throughput.
//! Prints the figures and their ratios; asserts nothing.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use futures::StreamExt;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "gateway-bench")]
struct Cli {
    /// Base URL of one serving pod (`http://10.0.0.5:8000`).
    #[arg(long)]
    direct: String,
    /// Base URL of the gateway.
    #[arg(long)]
    gateway: String,
    /// The model id at the gateway.
    #[arg(long)]
    model: String,
    /// The model name the pod serves (default: --model).
    #[arg(long)]
    served_model: Option<String>,
    /// API key for the gateway.
    #[arg(long, env = "LLMOPS_GATEWAY_KEY", hide_env_values = true)]
    key: String,
    /// Requests per round and path.
    #[arg(long, default_value_t = 50)]
    requests: usize,
    /// Rounds (each: direct, then gateway).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Clients at once in the throughput part.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// `max_tokens` of each completion.
    #[arg(long, default_value_t = 1)]
    max_tokens: u32,
    /// Stop starting rounds after this many seconds.
    #[arg(long, default_value_t = 120)]
    time_limit: u64,
}

struct Target {
    url: String,
    model: String,
    key: Option<String>,
}

async fn one(
    client: &reqwest::Client,
    target: &Target,
    max_tokens: u32,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut request = client.post(format!("{}/v1/completions", target.url)).json(
        &json!({"model": target.model, "prompt": "the old man sees a red house",
                      "max_tokens": max_tokens, "temperature": 0}),
    );
    if let Some(key) = &target.key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    ensure!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(started.elapsed())
}

/// Latencies of `n` sequential requests.
async fn sequential(
    client: &reqwest::Client,
    target: &Target,
    n: usize,
    max_tokens: u32,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(one(client, target, max_tokens).await?);
    }
    Ok(out)
}

/// Seconds for `n` requests from `concurrency` clients.
async fn concurrent(
    client: &reqwest::Client,
    target: &Target,
    n: usize,
    concurrency: usize,
    max_tokens: u32,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..n)
        .map(|_| one(client, target, max_tokens))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(started.elapsed())
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let direct = Target {
        url: cli.direct.trim_end_matches('/').to_string(),
        model: cli
            .served_model
            .clone()
            .unwrap_or_else(|| cli.model.clone()),
        key: None,
    };
    let gateway = Target {
        url: cli.gateway.trim_end_matches('/').to_string(),
        model: cli.model.clone(),
        key: Some(cli.key.clone()),
    };
    // Warm both paths (connections, the model's first batch).
    sequential(&client, &direct, 3, cli.max_tokens)
        .await
        .context("warming the pod")?;
    sequential(&client, &gateway, 3, cli.max_tokens)
        .await
        .context("warming the gateway")?;
    let deadline = Instant::now() + Duration::from_secs(cli.time_limit);
    let (mut lat_direct, mut lat_gateway) = (Vec::new(), Vec::new());
    let (mut time_direct, mut time_gateway) = (Duration::ZERO, Duration::ZERO);
    let mut rounds = 0;
    while rounds < cli.rounds && Instant::now() < deadline {
        lat_direct.extend(sequential(&client, &direct, cli.requests, cli.max_tokens).await?);
        lat_gateway.extend(sequential(&client, &gateway, cli.requests, cli.max_tokens).await?);
        time_direct += concurrent(
            &client,
            &direct,
            cli.requests,
            cli.concurrency,
            cli.max_tokens,
        )
        .await?;
        time_gateway += concurrent(
            &client,
            &gateway,
            cli.requests,
            cli.concurrency,
            cli.max_tokens,
        )
        .await?;
        rounds += 1;
    }
    lat_direct.sort();
    lat_gateway.sort();
    let n = (rounds * cli.requests) as f64;
    let (rps_direct, rps_gateway) = (
        n / time_direct.as_secs_f64(),
        n / time_gateway.as_secs_f64(),
    );
    let (p50d, p50g) = (quantile(&lat_direct, 0.5), quantile(&lat_gateway, 0.5));
    let (p95d, p95g) = (quantile(&lat_direct, 0.95), quantile(&lat_gateway, 0.95));
    println!(
        "rounds: {rounds}, {} requests per path and part, max_tokens {}",
        rounds * cli.requests,
        cli.max_tokens
    );
    println!(
        "latency p50: direct {:.2} ms, gateway {:.2} ms, added {:.2} ms, ratio {:.3}",
        ms(p50d),
        ms(p50g),
        ms(p50g) - ms(p50d),
        ms(p50g) / ms(p50d)
    );
    println!(
        "latency p95: direct {:.2} ms, gateway {:.2} ms, added {:.2} ms, ratio {:.3}",
        ms(p95d),
        ms(p95g),
        ms(p95g) - ms(p95d),
        ms(p95g) / ms(p95d)
    );
    println!(
        "throughput at {} clients: direct {:.1} req/s, gateway {:.1} req/s, ratio {:.3}",
        cli.concurrency,
        rps_direct,
        rps_gateway,
        rps_gateway / rps_direct
    );
    Ok(())
}
