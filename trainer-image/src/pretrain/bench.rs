//! `trainer bench pretrain`: milliseconds per training step and tokens/s of our
//! loop (forward, masked loss, backward, clipping, AdamW) next to PyTorch eager
//! running the same model shape, batch and thread count in Python
//! (`tests/python/pretrain_bench.py`, a nanoGPT-style loop over a `transformers`
//! model), measured in the same run. A benchmark, not a test. With
//! `--zero-ranks N` it compares `training.zero` stages instead
//! ([`super::zero_bench`]).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use llmops_crds::pretrain::{ModelArchitecture, ModelFamily};
use tch::{Device, Kind, Tensor, nn};

use super::plan::model_config;
use crate::train::loss::summed_loss;
use crate::train::memory;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::session;

/// Options of `trainer bench pretrain`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Model family: llama or gpt2.
    #[arg(long, default_value = "llama")]
    pub family: String,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub layers: i32,
    /// Hidden size.
    #[arg(long, default_value_t = 256)]
    pub hidden: i32,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: i32,
    /// Vocabulary size.
    #[arg(long, default_value_t = 4096)]
    pub vocab: u32,
    /// Tokens per row.
    #[arg(long, default_value_t = 256)]
    pub sequence_length: i64,
    /// Rows per step.
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    /// Timed steps (after two warm-up steps).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Rounds of (ours, reference), alternated so that both see the same
    /// machine load; the best round of each side counts.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Threads for both sides (default: libtorch's default).
    #[arg(long)]
    pub threads: Option<i32>,
    /// On a GPU, train in bf16 as `trainer pretrain` does (fp32 AdamW masters);
    /// the reference then uses bf16 autocast.
    #[arg(long)]
    pub bf16: bool,
    /// The device's peak dense TFLOP/s at the benchmark's precision, to report
    /// model FLOPs utilisation (MFU).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Python with torch and transformers.
    #[arg(long, env = "LLMOPS_PYTHON", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"))]
    pub python: PathBuf,
    /// The reference script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/pretrain_bench.py"))]
    pub script: PathBuf,
    /// Instead of the PyTorch comparison: the step with `training.zero` stage
    /// 0, 1 and 2 over this many ranks (processes on loopback TCP, CPU), with
    /// tokens/s, optimizer state and peak memory per rank
    /// (see `zero_bench.rs`).
    #[arg(long)]
    pub zero_ranks: Option<usize>,
    /// One rank of `--zero-ranks` (internal): `stage,rank,world,addr`.
    #[arg(long, hide = true)]
    pub zero_child: Option<String>,
}

const WARMUP: usize = 2;

pub(super) fn architecture(o: &Options) -> anyhow::Result<ModelArchitecture> {
    let family = match o.family.as_str() {
        "llama" => ModelFamily::Llama,
        "gpt2" => ModelFamily::Gpt2,
        other => bail!("unknown family {other:?} (llama or gpt2)"),
    };
    Ok(ModelArchitecture {
        family,
        layers: o.layers,
        heads: o.heads,
        kv_heads: None,
        hidden: o.hidden,
        intermediate: None,
        context_length: o.sequence_length as i32,
        dropout: 0.0,
        rope_theta: None,
        tied_embeddings: true,
    })
}

/// Milliseconds per step, in total and by phase.
#[derive(Clone, Copy, Debug, Default)]
struct Timing {
    step: f64,
    forward: f64,
    backward: f64,
    optimizer: f64,
}

impl Timing {
    fn best(self, other: Timing) -> Timing {
        if other.step < self.step { other } else { self }
    }
}

/// Timing of our training step.
fn ours(o: &Options) -> anyhow::Result<Timing> {
    let config = model_config(&architecture(o)?, o.vocab, 0, 0);
    // As `trainer pretrain` does; the reference runs in its own process with
    // PyTorch's defaults.
    memory::keep_freed_memory();
    tch::manual_seed(0);
    let device = session::device();
    // Phase times need the GPU's queue drained at each boundary.
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut vs = nn::VarStore::new(device);
    let model = llmops_model::Model::new(&vs.root(), &config)?;
    if o.bf16 && device.is_cuda() {
        vs.bfloat16();
    }
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        },
    )?;
    let tokens = Tensor::randint(
        o.vocab as i64,
        [o.batch, o.sequence_length + 1],
        (Kind::Int64, device),
    );
    let inputs = tokens.narrow(1, 0, o.sequence_length);
    let targets = tokens.narrow(1, 1, o.sequence_length);
    let count = (o.batch * o.sequence_length) as f64;
    let mut t = Timing::default();
    for i in 0..WARMUP + o.steps {
        let started = Instant::now();
        opt.zero_grad();
        let logits = model.forward_t(&inputs, true)?;
        let loss = summed_loss(&logits, &targets)?.f_div_scalar(count)?;
        sync();
        let forward = started.elapsed();
        loss.backward();
        sync();
        let backward = started.elapsed();
        opt.clip_grad_norm(1.0)?;
        opt.update(3e-4)?;
        loss.f_double_value(&[])?;
        let end = started.elapsed();
        if i >= WARMUP {
            t.forward += forward.as_secs_f64();
            t.backward += (backward - forward).as_secs_f64();
            t.optimizer += (end - backward).as_secs_f64();
            t.step += end.as_secs_f64();
        }
    }
    let per_step = 1000.0 / o.steps as f64;
    Ok(Timing {
        step: t.step * per_step,
        forward: t.forward * per_step,
        backward: t.backward * per_step,
        optimizer: t.optimizer * per_step,
    })
}

/// Timing of the PyTorch reference.
fn reference(o: &Options, threads: i32) -> anyhow::Result<Timing> {
    let out = Command::new(&o.python)
        .arg(&o.script)
        .args(["--family", &o.family])
        .args(["--layers", &o.layers.to_string()])
        .args(["--hidden", &o.hidden.to_string()])
        .args(["--heads", &o.heads.to_string()])
        .args(["--vocab", &o.vocab.to_string()])
        .args(["--sequence-length", &o.sequence_length.to_string()])
        .args(["--batch", &o.batch.to_string()])
        .args(["--steps", &o.steps.to_string()])
        .args(["--warmup", &WARMUP.to_string()])
        .args(["--threads", &threads.to_string()])
        .args([
            "--device",
            if session::device().is_cuda() {
                "cuda"
            } else {
                "cpu"
            },
        ])
        .args(if o.bf16 { &["--bf16"][..] } else { &[] })
        .output()
        .with_context(|| format!("cannot run {}", o.python.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            o.script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} printed no JSON", o.script.display()))?;
    let ms = |key: &str| {
        v[key]
            .as_f64()
            .with_context(|| format!("the reference printed no {key}"))
    };
    Ok(Timing {
        step: ms("ms_per_step")?,
        forward: ms("forward_ms")?,
        backward: ms("backward_ms")?,
        optimizer: ms("optimizer_ms")?,
    })
}

/// Training FLOPs per token: 6 per weight of every matrix multiply (forward
/// and backward) plus attention's scores and weighted sums, 12 × layers ×
/// hidden × sequence length (the PaLM accounting; causal masking not
/// subtracted). Lookup tables (position embeddings, an untied input embedding)
/// do no multiplies.
fn flops_per_token(o: &Options) -> anyhow::Result<f64> {
    let config = model_config(&architecture(o)?, o.vocab, 0, 0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = llmops_model::Model::new(&vs.root(), &config)?;
    let mut weights: i64 = vs
        .trainable_variables()
        .iter()
        .map(Tensor::numel)
        .sum::<usize>() as i64;
    if let Some(wpe) = &model.embed_positions {
        weights -= wpe.numel() as i64;
    }
    if !config.tie_word_embeddings {
        weights -= model.embed_tokens.numel() as i64;
    }
    let attention = 12 * config.num_layers * config.hidden_size * o.sequence_length;
    Ok((6 * weights + attention) as f64)
}

/// Runs both sides and prints the comparison (or the ZeRO comparison).
pub fn run(o: &Options) -> anyhow::Result<()> {
    if let Some(spec) = &o.zero_child {
        return super::zero_bench::child(o, spec);
    }
    if let Some(ranks) = o.zero_ranks {
        return super::zero_bench::compare(o, ranks);
    }
    if let Some(t) = o.threads {
        tch::set_num_threads(t);
    }
    let threads = tch::get_num_threads();
    let tokens = (o.batch * o.sequence_length) as f64;
    let device = session::device();
    println!(
        "device: {device:?}{}",
        if o.bf16 && device.is_cuda() {
            ", bf16"
        } else {
            ""
        }
    );
    let flops_per_token = flops_per_token(o)?;
    let worst = Timing {
        step: f64::INFINITY,
        ..Timing::default()
    };
    let (mut ours_t, mut theirs_t) = (worst, worst);
    for round in 1..=o.rounds.max(1) {
        let a = ours(o)?;
        let b = reference(o, threads)?;
        println!(
            "round {round}: trainer {:.1} ms/step, pytorch {:.1} ms/step",
            a.step, b.step
        );
        ours_t = ours_t.best(a);
        theirs_t = theirs_t.best(b);
    }
    println!(
        "{} {}L h{} heads{} vocab{} batch {}×{} threads {threads}",
        o.family, o.layers, o.hidden, o.heads, o.vocab, o.batch, o.sequence_length
    );
    for (who, t) in [("trainer (tch):", ours_t), ("pytorch eager:", theirs_t)] {
        let tokens_per_s = tokens * 1000.0 / t.step;
        let tflops = tokens_per_s * flops_per_token / 1e12;
        let mfu = o.peak_tflops.map_or_else(String::new, |peak| {
            format!(", MFU {:.1}%", 100.0 * tflops / peak)
        });
        println!(
            "{who:16} {:8.1} ms/step {tokens_per_s:10.0} tokens/s {tflops:8.3} TFLOP/s{mfu}  (forward {:.1}, backward {:.1}, optimizer {:.1} ms)",
            t.step, t.forward, t.backward, t.optimizer
        );
    }
    println!(
        "speed ratio (pytorch ms / ours ms): {:.2}x",
        theirs_t.step / ours_t.step
    );
    Ok(())
}
