//! `trainer bench pretrain --zero-ranks N`: the same training step with
//! `training.zero` stage 0, 1 and 2 over N ranks on loopback TCP, and stages 0
//! and 1 again with `training.activationCheckpointing`, in one run: tokens/s,
//! and per rank the optimizer state held and the peak resident memory. Each rank is a process of its own (this binary again, with the
//! hidden `--zero-child`), so its peak memory is its own. A benchmark, not a
//! test.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tch::{Device, Kind, Tensor, nn};

use super::bench::{Options, architecture};
use super::plan::model_config;
use crate::train::distributed::{Collective, TcpCollective};
use crate::train::loss::summed_loss;
use crate::train::memory;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::zero::ZeroAdamW;

const WARMUP: usize = 2;

const ADAMW: AdamWConfig = AdamWConfig {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};

/// What one rank measured.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RankReport {
    rank: usize,
    ms_per_step: f64,
    state_bytes: usize,
    peak_rss_bytes: u64,
}

/// Runs stages 0, 1 and 2 over `ranks` processes each and prints the table.
pub fn compare(o: &Options, ranks: usize) -> anyhow::Result<()> {
    if ranks < 2 || o.batch % ranks as i64 != 0 {
        bail!(
            "--zero-ranks {ranks} needs at least 2 ranks that split --batch {}",
            o.batch
        );
    }
    let exe = std::env::current_exe()?;
    let tokens = (o.batch * o.sequence_length) as f64;
    println!(
        "{} {}L h{} heads{} vocab{} batch {}×{} over {ranks} ranks on loopback TCP, threads per rank {}",
        o.family,
        o.layers,
        o.hidden,
        o.heads,
        o.vocab,
        o.batch,
        o.sequence_length,
        o.threads.map_or("default".into(), |t| t.to_string())
    );
    // Stage 2 does not take activation checkpointing (see the plan).
    let runs = [(0u8, false), (1, false), (2, false), (0, true), (1, true)];
    for (stage, checkpointing) in runs {
        let name = format!(
            "ZeRO-{stage}{}",
            if checkpointing {
                " + checkpointing"
            } else {
                ""
            }
        );
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let children: Vec<_> = (0..ranks)
            .map(|rank| {
                let mut cmd = Command::new(&exe);
                cmd.args(["bench", "pretrain"])
                    .args(["--family", &o.family])
                    .args(["--layers", &o.layers.to_string()])
                    .args(["--hidden", &o.hidden.to_string()])
                    .args(["--heads", &o.heads.to_string()])
                    .args(["--vocab", &o.vocab.to_string()])
                    .args(["--sequence-length", &o.sequence_length.to_string()])
                    .args(["--batch", &o.batch.to_string()])
                    .args(["--steps", &o.steps.to_string()])
                    .args([
                        "--zero-child",
                        &format!(
                            "{stage},{rank},{ranks},127.0.0.1:{port},{}",
                            u8::from(checkpointing)
                        ),
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                if let Some(t) = o.threads {
                    cmd.args(["--threads", &t.to_string()]);
                }
                cmd.spawn()
            })
            .collect::<Result<_, _>>()?;
        let mut reports = Vec::with_capacity(ranks);
        for child in children {
            let out: std::process::Output = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "a {name} rank failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let line = String::from_utf8_lossy(&out.stdout);
            let report: RankReport = serde_json::from_str(line.trim())
                .with_context(|| format!("a {name} rank printed {line:?}"))?;
            reports.push(report);
        }
        reports.sort_by_key(|r| r.rank);
        let slowest = reports.iter().map(|r| r.ms_per_step).fold(0.0, f64::max);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let per_rank: Vec<String> = reports
            .iter()
            .map(|r| {
                format!(
                    "rank {}: optimizer state {:.2} MiB, peak RSS {:.1} MiB",
                    r.rank,
                    mib(r.state_bytes as u64),
                    mib(r.peak_rss_bytes)
                )
            })
            .collect();
        println!(
            "{name:<24} {slowest:7.1} ms/step {:9.0} tokens/s | {}",
            tokens * 1000.0 / slowest,
            per_rank.join(" | ")
        );
    }
    Ok(())
}

/// The optimizer of one benchmark rank.
enum Opt {
    Full(AdamW),
    Zero(ZeroAdamW),
}

/// One rank of [`compare`]: `spec` is `stage,rank,world,addr,checkpointing`
/// (checkpointing 0 or 1). Prints its [`RankReport`] as one JSON line.
pub fn child(o: &Options, spec: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = spec.split(',').collect();
    let [stage, rank, world, addr, checkpointing] = parts.as_slice() else {
        bail!("--zero-child {spec:?} is not stage,rank,world,addr,checkpointing");
    };
    let (stage, rank, world): (u8, usize, usize) = (stage.parse()?, rank.parse()?, world.parse()?);
    let checkpointing = *checkpointing == "1";
    if let Some(t) = o.threads {
        tch::set_num_threads(t);
    }
    memory::keep_freed_memory();
    let mut c = TcpCollective::connect(rank, world, addr, Duration::from_secs(120))?;
    let config = model_config(&architecture(o)?, o.vocab, 0, 0);
    // The same initial model on every rank; each its own rows.
    tch::manual_seed(0);
    let device = Device::Cpu;
    let vs = nn::VarStore::new(device);
    let model = llmops_model::Model::new(&vs.root(), &config)?;
    let mut opt = match stage {
        0 => Opt::Full(AdamW::new(&vs, ADAMW)?),
        s => Opt::Zero(ZeroAdamW::new(&vs, ADAMW, s, rank, world)?),
    };
    // In the optimizer's order (by name), the same on every rank.
    let params: Vec<Tensor> = match &opt {
        Opt::Full(opt) => opt.parameters().map(Tensor::shallow_clone).collect(),
        Opt::Zero(opt) => opt.parameters().map(Tensor::shallow_clone).collect(),
    };
    tch::manual_seed(1 + rank as i64);
    let rows = o.batch / world as i64;
    let tokens = Tensor::randint(
        o.vocab as i64,
        [rows, o.sequence_length + 1],
        (Kind::Int64, device),
    );
    let inputs = tokens.narrow(1, 0, o.sequence_length);
    let targets = tokens.narrow(1, 1, o.sequence_length);
    let count = (rows * o.sequence_length) as f64;
    let mut elapsed = 0.0;
    for i in 0..WARMUP + o.steps {
        let started = Instant::now();
        match &mut opt {
            Opt::Full(opt) => opt.zero_grad(),
            Opt::Zero(opt) => opt.zero_grad(),
        }
        // Forward and backward; the checkpointed step leaves its gradients in
        // `.grad` as a stage 0 or 1 backward does.
        let loss = |logits: &Tensor| -> llmops_model::Result<Tensor> {
            Ok(summed_loss(logits, &targets)?.f_div_scalar(count)?)
        };
        let pending = if checkpointing {
            let _ = model.checkpointed_backward(&inputs, i as i64, loss)?;
            None
        } else {
            Some(loss(&model.forward_t(&inputs, true)?)?)
        };
        match &mut opt {
            Opt::Full(opt) => {
                if let Some(loss) = &pending {
                    loss.f_backward()?;
                }
                let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
                c.all_reduce_mean(&grads)?;
                opt.clip_grad_norm(1.0)?;
                opt.update(3e-4)?;
            }
            Opt::Zero(opt) => {
                if let Some(loss) = &pending {
                    opt.backward(loss)?;
                }
                let mut grad = opt.reduce_gradients(&mut c)?;
                let sq = Tensor::f_from_slice(&[ZeroAdamW::norm_sq(&grad)? as f32])?;
                c.all_reduce_mean(&[sq.shallow_clone()])?;
                let norm = (world as f64 * sq.f_double_value(&[0])?).sqrt();
                ZeroAdamW::clip(&mut grad, norm, 1.0)?;
                opt.update(&grad, 3e-4, &mut c)?;
            }
        }
        if i >= WARMUP {
            elapsed += started.elapsed().as_secs_f64();
        }
    }
    c.barrier()?;
    let report = RankReport {
        rank,
        ms_per_step: 1000.0 * elapsed / o.steps as f64,
        state_bytes: match &opt {
            Opt::Full(opt) => opt.state_bytes(),
            Opt::Zero(opt) => opt.state_bytes(),
        },
        peak_rss_bytes: peak_rss()?,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// This process's peak resident memory (`VmHWM`).
fn peak_rss() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kib * 1024)
}
