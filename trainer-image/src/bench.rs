//! `trainer bench prepare`: throughput of tokenization and near-duplicate
//! detection next to the Python references (HF `tokenizers` `encode_batch`,
//! `datasketch` MinHash + MinHashLSH), measured in the same run on the same
//! generated text, printed as ratios. A benchmark, not a test: nothing fails on
//! a slow machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use llmops_crds::dataset::{TokenizerTraining, TokenizerType};

use crate::prepare::dedup::{LSH_WEIGHTS, LshIndex, MinHasher};
use crate::prepare::tokenizer;

/// Options of `trainer bench prepare`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Documents in the generated corpus.
    #[arg(long, default_value_t = 20_000)]
    pub docs: usize,
    /// Threads for tokenization, ours and Python's (dedup compares one thread,
    /// as datasketch has no parallelism).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Python with `tokenizers` and `datasketch` installed.
    #[arg(long, env = "LLMOPS_PYTHON", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"))]
    pub python: PathBuf,
    /// The reference script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/prepare_reference.py"))]
    pub script: PathBuf,
}

/// A small deterministic generator for the benchmark corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Word-like text with a skewed vocabulary, some punctuation and digits, and
/// one near-duplicate (a few words changed) for every ten documents.
pub fn corpus(docs: usize, seed: u64) -> Vec<String> {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "ri", "ne", "ta", "mo", "su", "vi", "de", "an", "or", "el", "ist", "ung",
        "pre", "con", "ma", "tion", "er", "in", "re", "st", "ou", "th",
    ];
    let mut rng = Rng(seed);
    let vocab: Vec<String> = (0..5000)
        .map(|_| {
            (0..1 + rng.below(3))
                .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
                .collect()
        })
        .collect();
    let mut out: Vec<String> = Vec::with_capacity(docs);
    while out.len() < docs {
        if out.len() % 10 == 9 {
            let source = out[rng.below(out.len())].clone();
            let mut words: Vec<&str> = source.split(' ').collect();
            for _ in 0..2 {
                let i = rng.below(words.len());
                words[i] = &vocab[rng.below(vocab.len())];
            }
            out.push(words.join(" "));
            continue;
        }
        let len = 80 + rng.below(200);
        let words: Vec<String> = (0..len)
            .map(|i| {
                // Squaring a uniform index skews frequencies like natural text.
                let r = rng.below(vocab.len());
                let mut w = vocab[r * r / vocab.len()].clone();
                if i % 13 == 12 {
                    w.push_str(if rng.below(2) == 0 { "," } else { "." });
                }
                if rng.below(40) == 0 {
                    w = format!("{}", rng.below(10_000));
                }
                w
            })
            .collect();
        out.push(words.join(" "));
    }
    out
}

fn python(options: &Options, args: &[&str], threads: usize) -> anyhow::Result<serde_json::Value> {
    let output = Command::new(&options.python)
        .arg(&options.script)
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("RAYON_RS_NUM_CPUS", threads.to_string())
        .env("TOKENIZERS_PARALLELISM", "true")
        .output()
        .with_context(|| format!("run {}", options.python.display()))?;
    if !output.status.success() {
        bail!(
            "{} {args:?} failed: {}",
            options.script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?)
}

/// Our near-duplicate pass over `docs`: signatures in parallel on the current
/// pool, LSH decisions in order, as in `trainer prepare`. Returns duplicates found.
pub fn near_duplicates(
    docs: &[String],
    permutations: usize,
    threshold: f64,
    shingle: usize,
) -> usize {
    use rayon::prelude::*;
    let hasher = MinHasher::new(permutations, shingle);
    let mut index = LshIndex::new(threshold, permutations);
    let mut duplicates = 0;
    for chunk in docs.chunks(2048) {
        let fingerprints: Vec<_> = chunk
            .par_iter()
            .map(|d| {
                hasher
                    .signature(d)
                    .map(|s| index.fingerprint(&s))
                    .unwrap_or_default()
            })
            .collect();
        duplicates += fingerprints
            .iter()
            .filter(|fp| index.is_duplicate(fp))
            .count();
    }
    duplicates
}

fn best_of<T>(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(f64, T)> {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..repeats {
        let start = Instant::now();
        let value = f()?;
        best = best.min(start.elapsed().as_secs_f64());
        last = Some(value);
    }
    Ok((best, last.context("no repetitions")?))
}

fn write_lines(path: &Path, docs: &[String]) -> anyhow::Result<()> {
    std::fs::write(path, docs.join("\n") + "\n")
        .with_context(|| format!("write {}", path.display()))
}

/// Runs both benchmarks and prints one line each.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let dir = tempfile::tempdir()?;
    let docs = corpus(options.docs, 42);
    let text = dir.path().join("corpus.txt");
    write_lines(&text, &docs)?;
    let mb = docs.iter().map(|d| d.len() + 1).sum::<usize>() as f64 / 1e6;

    let spec = TokenizerTraining {
        kind: TokenizerType::Bpe,
        vocab_size: 8192,
        min_frequency: 2,
        special_tokens: vec!["<|endoftext|>".into(), "<|pad|>".into()],
    };
    let tk = tokenizer::train(docs.iter().cloned(), &spec)?;
    let tk_path = dir.path().join("tokenizer.json");
    std::fs::write(
        &tk_path,
        tk.to_string(false).map_err(|e| anyhow::anyhow!("{e}"))?,
    )?;
    let (ours, tokens) = pool(threads)?.install(|| {
        best_of(3, || {
            Ok(tokenizer::encode_batch(&tk, docs.clone())?
                .iter()
                .map(Vec::len)
                .sum::<usize>())
        })
    })?;
    let py = python(
        options,
        &[
            "bench-tokenize",
            &tk_path.to_string_lossy(),
            &text.to_string_lossy(),
        ],
        threads,
    )?;
    let py_seconds = py["seconds"].as_f64().context("python seconds")?;
    let py_tokens = py["tokens"].as_u64().unwrap_or(0) as usize;
    println!(
        "tokenize  {mb:.1} MB, {threads} threads: ours {:.1} MB/s ({tokens} tokens), python tokenizers {:.1} MB/s ({py_tokens} tokens): {:.2}x",
        mb / ours,
        mb / py_seconds,
        py_seconds / ours
    );

    let (perms, threshold, shingle) = (128, 0.8, 5);
    let (ours1, dups) = pool(1)?
        .install(|| best_of(3, || Ok(near_duplicates(&docs, perms, threshold, shingle))))?;
    let (ours_n, _) = pool(threads)?
        .install(|| best_of(3, || Ok(near_duplicates(&docs, perms, threshold, shingle))))?;
    let py = python(
        options,
        &[
            "bench-minhash",
            &text.to_string_lossy(),
            &perms.to_string(),
            &threshold.to_string(),
            &shingle.to_string(),
            &LSH_WEIGHTS.0.to_string(),
            &LSH_WEIGHTS.1.to_string(),
        ],
        1,
    )?;
    let py_seconds = py["seconds"].as_f64().context("python seconds")?;
    let py_dups = py["duplicates"].as_u64().unwrap_or(0);
    let n = docs.len() as f64;
    println!(
        "dedup     {} docs, {perms} perms, threshold {threshold}: ours {:.0} docs/s on 1 thread ({:.0} on {threads}), {dups} near-dups; datasketch {:.0} docs/s, {py_dups} near-dups: {:.1}x",
        docs.len(),
        n / ours1,
        n / ours_n,
        n / py_seconds,
        py_seconds / ours1
    );
    Ok(())
}
