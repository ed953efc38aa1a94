//! `server-bench`: decoding throughput of the server's continuously batching
//! engine next to Hugging Face `generate` on the same random Llama model,
//! prompts shape and CPU threads (`tests/python/serve_bench.py`), measured in
//! the same run. A benchmark, not a test.
//!
//! Every request asks for exactly `--new-tokens` greedy tokens (no end of
//! sequence), all arriving at once. The reference runs them one at a time and as
//! one static batch (equal prompt lengths, so its best case: no padding, no
//! arrivals mid-batch).
//!
//! With `--adapters N` the engine also runs with N random LoRA adapters
//! attached, every request for one of them (round robin, so each step decodes
//! N adapter groups together), next to the same engine serving the base alone.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use llmops_model::{Dtype, LoraSettings, PeftAdapter, Sampling, StopSequences, io, peft};
use llmops_server::engine::{Engine, Event, Request};
use llmops_server::metrics::Metrics;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(name = "server-bench")]
struct Options {
    /// Concurrent requests.
    #[arg(long, default_value_t = 16)]
    requests: usize,
    /// Prompt tokens per request.
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Generated tokens per request.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// LoRA adapters to serve beside the base in a run of their own (0: none).
    #[arg(long, default_value_t = 0)]
    adapters: usize,
    /// Their rank (on q_proj, k_proj, v_proj and o_proj).
    #[arg(long, default_value_t = 16)]
    adapter_rank: i64,
    /// CPU threads for both sides.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Rounds of (ours, reference), alternated so that both see the same
    /// machine load; the best round of each side counts.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Python with torch and transformers.
    #[arg(long, env = "LLMOPS_PYTHON", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"))]
    python: PathBuf,
    /// The reference script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/serve_bench.py"))]
    script: PathBuf,
}

fn python(o: &Options, args: &[String]) -> anyhow::Result<String> {
    let out = Command::new(&o.python)
        .arg(&o.script)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", o.python.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            o.script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `n` random adapters on the model in `dir` (B away from zero, as trained).
fn random_adapters(dir: &std::path::Path, n: usize, rank: i64) -> anyhow::Result<Vec<PeftAdapter>> {
    let settings = LoraSettings {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        targets: ["q_proj", "k_proj", "v_proj", "o_proj"]
            .map(String::from)
            .to_vec(),
    };
    (0..n)
        .map(|i| {
            let mut loaded = io::load(dir, tch::Device::Cpu, Dtype::F32)?;
            loaded.model.add_lora(&loaded.vs, &settings)?;
            tch::manual_seed(i as i64 + 1);
            tch::no_grad(|| {
                for (name, var) in loaded.vs.variables() {
                    if name.ends_with("lora_B.weight") {
                        let noise =
                            tch::Tensor::randn(var.size(), (tch::Kind::Float, tch::Device::Cpu));
                        var.shallow_clone().copy_(&(noise * 0.02));
                    }
                }
            });
            let out = tempfile::tempdir()?;
            peft::save_adapter(out.path(), &loaded.vs, &loaded.model, &settings, "bench")?;
            Ok(PeftAdapter::read(out.path())?)
        })
        .collect()
}

/// Generated tokens per second of `engine` over `prompts`, all submitted at
/// once, prompt `i` for adapter `route(i)`.
fn engine_throughput(
    engine: &Engine,
    prompts: &[Vec<i64>],
    new_tokens: usize,
) -> anyhow::Result<f64> {
    engine_throughput_routed(engine, prompts, new_tokens, |_| None)
}

fn engine_throughput_routed(
    engine: &Engine,
    prompts: &[Vec<i64>],
    new_tokens: usize,
    route: impl Fn(usize) -> Option<u32>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut receivers = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        engine.submit(Request {
            prompt: prompt.clone(),
            max_new_tokens: new_tokens,
            sampling: Sampling::Greedy,
            seed: 0,
            stop: StopSequences::default(),
            logprobs: Default::default(),
            penalties: Default::default(),
            adapter: route(i),
            events: tx,
        })?;
        receivers.push(rx);
    }
    let mut generated = 0;
    for mut rx in receivers {
        loop {
            match rx.blocking_recv() {
                Some(Event::Text(_) | Event::Prompt(_) | Event::Token(_)) => {}
                Some(Event::Done(finish)) => {
                    generated += finish.completion_tokens;
                    break;
                }
                Some(Event::Failed(e)) => bail!("generation failed: {e}"),
                None => bail!("the engine stopped"),
            }
        }
    }
    if generated != prompts.len() * new_tokens {
        bail!(
            "generated {generated} tokens, expected {}",
            prompts.len() * new_tokens
        );
    }
    Ok(generated as f64 / started.elapsed().as_secs_f64())
}

fn run(o: &Options) -> anyhow::Result<()> {
    tch::set_num_threads(o.threads);
    let dir = tempfile::tempdir()?;
    let model_dir = dir.path().display().to_string();
    let context = (o.prompt_len + o.new_tokens).next_power_of_two();
    python(
        o,
        &[
            "make".into(),
            model_dir.clone(),
            format!("--layers={}", o.layers),
            format!("--hidden={}", o.hidden),
            format!("--heads={}", o.heads),
            format!("--context={context}"),
        ],
    )?;
    let tokenizer = Arc::new(
        tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let vocab = tokenizer.get_vocab_size(true) as i64;
    tch::manual_seed(0);
    let prompts: Vec<Vec<i64>> = (0..o.requests)
        .map(|_| {
            Vec::<i64>::try_from(tch::Tensor::randint_low(
                4,
                vocab,
                [o.prompt_len as i64],
                (tch::Kind::Int64, tch::Device::Cpu),
            ))
        })
        .collect::<Result<_, _>>()?;

    let mut ours = [0.0f64; 2];
    let (mut hf_sequential, mut hf_batched) = (0.0f64, 0.0f64);
    for round in 1..=o.rounds.max(1) {
        for (slot, max_batch) in [o.requests, 1].into_iter().enumerate() {
            let loaded = io::load(dir.path(), tch::Device::Cpu, Dtype::F32)?;
            // No end-of-sequence tokens: every request generates exactly new_tokens.
            let engine = Engine::start(
                loaded.model,
                tokenizer.clone(),
                Vec::new(),
                max_batch,
                // Every request is submitted at once: the queue takes them all.
                o.requests.max(1),
                Arc::new(Metrics::new()),
            );
            engine_throughput(&engine, &prompts[..1], 4)?; // warm-up
            ours[slot] = ours[slot].max(engine_throughput(&engine, &prompts, o.new_tokens)?);
        }
        let reference: serde_json::Value = serde_json::from_str(&python(
            o,
            &[
                "run".into(),
                model_dir.clone(),
                format!("--requests={}", o.requests),
                format!("--prompt-len={}", o.prompt_len),
                format!("--new-tokens={}", o.new_tokens),
                format!("--threads={}", o.threads),
            ],
        )?)
        .context("the reference printed no JSON")?;
        let number = |key: &str| reference[key].as_f64().with_context(|| format!("no {key}"));
        hf_sequential = hf_sequential.max(number("sequential_tokens_per_s")?);
        hf_batched = hf_batched.max(number("batched_tokens_per_s")?);
        println!(
            "round {round}: engine {:.1} tokens/s, transformers static batch {:.1} tokens/s",
            ours[0], hf_batched
        );
    }
    let mut with_adapters = None;
    if o.adapters > 0 {
        let adapters = random_adapters(dir.path(), o.adapters, o.adapter_rank)?;
        let loaded = io::load(dir.path(), tch::Device::Cpu, Dtype::F32)?;
        let engine = Engine::start(
            loaded.model,
            tokenizer.clone(),
            Vec::new(),
            o.requests,
            o.requests.max(1),
            Arc::new(Metrics::new()),
        );
        for (id, adapter) in adapters.into_iter().enumerate() {
            futures::executor::block_on(engine.attach_adapter(id as u32 + 1, adapter))
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        let n = o.adapters;
        let route = |i: usize| Some((i % n) as u32 + 1);
        engine_throughput_routed(&engine, &prompts[..1], 4, route)?; // warm-up
        let mut best = 0.0f64;
        for _ in 0..o.rounds.max(1) {
            best = best.max(engine_throughput_routed(
                &engine,
                &prompts,
                o.new_tokens,
                route,
            )?);
        }
        with_adapters = Some(best);
    }
    println!(
        "llama {}L h{} heads{}: {} requests × ({} prompt + {} new tokens), threads {}",
        o.layers, o.hidden, o.heads, o.requests, o.prompt_len, o.new_tokens, o.threads
    );
    println!(
        "engine, continuous batching:            {:8.1} tokens/s",
        ours[0]
    );
    println!(
        "engine, one request at a time:          {:8.1} tokens/s",
        ours[1]
    );
    if let Some(mixed) = with_adapters {
        println!(
            "engine, {} rank-{} adapters mixed:       {mixed:8.1} tokens/s ({:.2}x the base alone)",
            o.adapters,
            o.adapter_rank,
            mixed / ours[0]
        );
    }
    println!("transformers generate, one at a time:   {hf_sequential:8.1} tokens/s");
    println!("transformers generate, static batch:    {hf_batched:8.1} tokens/s");
    println!(
        "ratios: continuous batching / transformers one at a time {:.2}x, / transformers static batch {:.2}x; one at a time vs one at a time {:.2}x",
        ours[0] / hf_sequential,
        ours[0] / hf_batched,
        ours[1] / hf_sequential
    );
    Ok(())
}

fn main() -> ExitCode {
    let options = Options::parse();
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
