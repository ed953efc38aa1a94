//! `monitor-bench`: what monitoring costs the operator. Starts `--pods` HTTP
//! servers on loopback (127.0.0.1, one port each) answering `/metrics` with a
//! server's real metrics text whose counters grow between scrapes, then runs
//! the operator's own scrape → record → summarise for `--rounds` intervals, and
//! prints the CPU time and memory it took: per interval, as a share of one core
//! over the 15 s a real interval lasts, and against a reference measured in the
//! same run — fetching the same bodies from the same servers with a plain HTTP
//! client and doing nothing with them — so the ratio is what parsing, keeping
//! and summarising add to the unavoidable transfer.
//!
//! ```sh
//! cargo run --release -p llmops-operator --bin monitor-bench -- --pods 100 --rounds 20
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clap::Parser;
use llmops_operator::controller::deployment::monitor::{self, Target, window::History};

#[derive(Parser)]
#[command(about = "Measure the operator's cost to monitor serving pods")]
struct Args {
    /// Serving pods to scrape each interval.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Intervals to measure.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// The interval the share of a core is judged against, in seconds.
    #[arg(long, default_value_t = 15.0)]
    interval: f64,
}

/// A real rendering of the server's metrics.
const TEXT: &str = include_str!("../controller/deployment/testdata/server-metrics.txt");

/// The text with every sample value scaled by the number of scrapes so far, so
/// counters grow as on a busy server.
fn render(scrapes: u64) -> String {
    let factor = (scrapes + 1) as f64;
    TEXT.lines()
        .map(|line| {
            if line.starts_with('#') {
                return line.to_string();
            }
            match line.rsplit_once(' ') {
                Some((series, value)) => match value.parse::<f64>() {
                    Ok(v) => format!("{series} {}", v * factor),
                    Err(_) => line.to_string(),
                },
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn serve_pod() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let scrapes = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(n): State<Arc<AtomicU64>>| async move {
                render(n.fetch_add(1, Ordering::Relaxed))
            }),
        )
        .with_state(scrapes);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// CPU seconds (user + system) this process has used, and its peak RSS in MiB.
fn usage() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Clock ticks are 100 per second on Linux.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0);
    (cpu, peak)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut targets: Vec<Target> = Vec::new();
    for i in 0..args.pods {
        let address = serve_pod().await?;
        targets.push((
            format!("pod-{i}"),
            monitor::STABLE.to_string(),
            format!("http://{address}/metrics"),
        ));
    }
    let settings = monitor::Monitoring::default();
    let mut history = History::default();
    // One warm-up round: connections and the HTTP client.
    let _ = monitor::scrape_all(&targets, settings.scrape_timeout).await;
    let (cpu_before, _) = usage();
    let started = Instant::now();
    let mut answered = 0;
    for round in 0..args.rounds {
        let now = round as f64 * args.interval;
        let readings = monitor::scrape_all(&targets, settings.scrape_timeout).await;
        answered = readings.len();
        history.record(now, readings, 120.0);
        let summary = history.summary(monitor::STABLE, now, 60.0);
        std::hint::black_box(monitor::serving_metrics(&summary, Duration::from_secs(60)));
    }
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, peak_mib) = usage();

    // The reference: the same bodies fetched and dropped.
    let client = reqwest::Client::builder()
        .timeout(settings.scrape_timeout)
        .build()?;
    let _ = fetch_all(&client, &targets).await;
    let (fetch_before, _) = usage();
    let mut fetched = 0;
    for _ in 0..args.rounds {
        fetched = fetch_all(&client, &targets).await;
    }
    let (fetch_after, _) = usage();
    let fetch_per_round = (fetch_after - fetch_before) / args.rounds as f64;
    // The servers run in this process too: their share is included, so the
    // figure is an upper bound for the operator's part.
    let cpu_per_round = (cpu_after - cpu_before) / args.rounds as f64;
    println!(
        "monitor-bench: {} pods ({answered} answered), {} rounds: {:.1} ms CPU and {:.1} ms wall per interval (servers included); peak RSS {peak_mib:.1} MiB",
        args.pods,
        args.rounds,
        cpu_per_round * 1000.0,
        wall / args.rounds as f64 * 1000.0
    );
    println!(
        "reference: fetching the same {fetched} bodies and dropping them: {:.1} ms CPU per interval",
        fetch_per_round * 1000.0
    );
    println!(
        "ratio: {:.2}x the reference's CPU; {:.5} of one core at one interval per {}s",
        cpu_per_round / fetch_per_round.max(1e-9),
        cpu_per_round / args.interval,
        args.interval
    );
    Ok(())
}

/// GET every target's `/metrics`, all at once, and drop the bodies; how many
/// answered.
async fn fetch_all(client: &reqwest::Client, targets: &[Target]) -> usize {
    let fetches = targets.iter().map(|(_, _, url)| async move {
        let answer = client.get(url.as_str()).send().await.ok()?;
        answer.bytes().await.ok()
    });
    futures::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .count()
}
