//! The synchronous passes of `trainer prepare`, run on a blocking thread:
//!
//! 1. collect — read every source once; normalise, redact, filter and dedup each
//!    document (in parallel batches, decisions in input order) into a spill file;
//! 2. train the tokenizer on the spilled documents (unless one was given);
//! 3. tokenize, label, split, segment and write shards;
//! 4. write `tokenizer.json` and `manifest.json` (with the digest) to staging.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use llmops_crds::dataset::{Compression, DatasetSpec, DatasetStats, DatasetType};
use rayon::prelude::*;
use tokenizers::Tokenizer;
use tokio::runtime::Handle;

use super::dedup::{self, ExactDedup, Fingerprint, LshIndex, MinHasher};
use super::formats::{self, Record};
use super::pii::{self, Redactions};
use super::segment::Segmenter;
use super::shards::{SHARD_BYTES, ShardWriter};
use super::spill::{SpillReader, SpillWriter};
use super::split::{SPLITS, assign};
use super::{PrepareError, clean, label, sources, tokenizer};
use crate::artifact::{
    DatasetRef, FORMAT_VERSION, Manifest, RedactionCounts, SplitEntry, TOKEN_ENCODING,
};
use crate::progress::Reporter;

/// Documents processed together in parallel.
const BATCH: usize = 2048;

/// Everything the passes need, owned so it can move to a blocking thread.
pub struct Job {
    pub spec: DatasetSpec,
    pub dataset: DatasetRef,
    /// A reused tokenizer, already loaded; `None` trains one.
    pub tokenizer: Option<Tokenizer>,
    pub staging: PathBuf,
    pub spill: File,
    pub reporter: Reporter,
    pub rt: Handle,
}

/// A cleaned document and what the sequential dedup step needs to judge it.
struct Cleaned {
    record: Record,
    chars: usize,
    fingerprint: u128,
    near: Option<Fingerprint>,
    redactions: Redactions,
}

/// The text used for fingerprints, near-dup shingles and the split hash.
fn dedup_text(record: &Record) -> std::borrow::Cow<'_, str> {
    match record {
        Record::Text(t) => t.into(),
        Record::Pair { prompt, response } => format!("{prompt}\n{response}").into(),
    }
}

struct Collector<'a> {
    job: &'a Job,
    stats: DatasetStats,
    redactions: Redactions,
    bytes_in: Arc<AtomicU64>,
    exact: Option<ExactDedup>,
    near: Option<(MinHasher, LshIndex)>,
}

impl Collector<'_> {
    fn clean(&self, record: Record) -> Cleaned {
        let pre = &self.job.spec.preprocessing;
        let mut redactions = Redactions::default();
        let mut tidy = |s: &str| {
            let s = clean::normalize(s, &pre.normalization);
            if pre.pii.redact.is_empty() {
                s
            } else {
                pii::redact(&s, &pre.pii.redact, &mut redactions)
            }
        };
        let record = match record {
            Record::Text(t) => Record::Text(tidy(&t)),
            Record::Pair { prompt, response } => Record::Pair {
                prompt: tidy(&prompt),
                response: tidy(&response),
            },
        };
        let text = dedup_text(&record);
        let chars = text.chars().count();
        let fingerprint = dedup::exact::fingerprint(text.as_bytes());
        let near = self.near.as_ref().map(|(hasher, index)| {
            hasher
                .signature(&text)
                .map(|s| index.fingerprint(&s))
                .unwrap_or_default()
        });
        Cleaned {
            record,
            chars,
            fingerprint,
            near,
            redactions,
        }
    }

    fn batch(&mut self, batch: Vec<Record>, spill: &mut SpillWriter) -> Result<(), PrepareError> {
        let filters = &self.job.spec.preprocessing.filters;
        let min = usize::try_from(filters.min_chars).unwrap_or(0);
        let max = filters
            .max_chars
            .and_then(|m| usize::try_from(m).ok())
            .unwrap_or(usize::MAX);
        let cleaned: Vec<Cleaned> = batch.into_par_iter().map(|r| self.clean(r)).collect();
        for doc in cleaned {
            self.stats.documents_in += 1;
            self.redactions.add(&doc.redactions);
            if doc.chars < min || doc.chars > max {
                self.stats.filtered += 1;
                continue;
            }
            if self
                .exact
                .as_mut()
                .is_some_and(|e| e.is_duplicate(doc.fingerprint))
            {
                self.stats.exact_duplicates += 1;
                continue;
            }
            if let (Some((_, index)), Some(fp)) = (self.near.as_mut(), doc.near.as_ref())
                && index.is_duplicate(fp)
            {
                self.stats.near_duplicates += 1;
                continue;
            }
            spill
                .write(&doc.record)
                .map_err(PrepareError::io("write spill file"))?;
            self.stats.documents_out += 1;
        }
        self.stats.redactions = self.redactions.total() as i64;
        self.stats.bytes_in = self.bytes_in.load(Ordering::Relaxed) as i64;
        let s = &self.stats;
        let summary = format!(
            "reading: {} docs in, {} kept, {} dup, {} near-dup, {} filtered, {} MB",
            s.documents_in,
            s.documents_out,
            s.exact_duplicates,
            s.near_duplicates,
            s.filtered,
            s.bytes_in >> 20
        );
        self.job.reporter.report(stats_json(s), &summary);
        Ok(())
    }

    fn run(&mut self, spill: &mut SpillWriter) -> Result<(), PrepareError> {
        let job = self.job;
        for (index, source) in job.spec.sources.iter().enumerate() {
            for input in sources::inputs(index, source, &job.rt)? {
                let raw = input.open(&job.rt, self.bytes_in.clone())?;
                let mut records = match &source.format.parquet {
                    // Parquet compresses inside the file and is read from its footer.
                    Some(fields) => {
                        if source.compression == Compression::Gzip {
                            return Err(PrepareError::InvalidSpec(format!(
                                "sources[{index}].compression: gzip does not apply to format.parquet (Parquet compresses its own pages); leave it at auto"
                            )));
                        }
                        formats::parquet_file::records(raw, fields, job.spec.kind, &input.name)?
                    }
                    None => {
                        let buffered = formats::decompress(raw, source.compression)
                            .map_err(|e| PrepareError::from_read(&input.name, e))?;
                        formats::records(buffered, &source.format, job.spec.kind, &input.name)?
                    }
                };
                loop {
                    let batch = records
                        .by_ref()
                        .take(BATCH)
                        .collect::<Result<Vec<_>, _>>()?;
                    if batch.is_empty() {
                        break;
                    }
                    self.batch(batch, spill)?;
                }
            }
        }
        Ok(())
    }
}

pub fn stats_json(stats: &DatasetStats) -> serde_json::Value {
    serde_json::to_value(stats).unwrap_or_default()
}

/// Runs all passes; on success the staging directory holds the complete artifact.
pub fn run(job: Job) -> Result<Manifest, PrepareError> {
    let spec = &job.spec;
    let (spill, mut stats, redactions) = collect(&job)?;
    let tokenizer = match &job.tokenizer {
        Some(t) => t.clone(),
        None => train_tokenizer(&job, &spill, &stats)?,
    };
    let (eos, pad) = tokenizer::special_ids(&tokenizer, spec.tokenizer.train.as_ref())?;
    stats.vocab_size = tokenizer.get_vocab_size(true) as i64;

    let splits = tokenize(&job, &tokenizer, &spill, eos, pad, &mut stats)?;
    if splits["train"].sequences == 0 {
        return Err(PrepareError::EmptyTrainSplit);
    }
    write_artifact(&job, &tokenizer, splits, stats, redactions, eos, pad)
}

/// Pass 1: every kept document into the spill file; returns it with the
/// statistics and redaction counts so far.
fn collect(job: &Job) -> Result<(File, DatasetStats, Redactions), PrepareError> {
    let dedup_spec = &job.spec.preprocessing.dedup;
    let near = dedup_spec.near_duplicate.as_ref().map(|nd| {
        let permutations = usize::try_from(nd.permutations).unwrap_or(128).max(1);
        let shingle = usize::try_from(nd.shingle_size).unwrap_or(5);
        (
            MinHasher::new(permutations, shingle),
            LshIndex::new(nd.threshold, permutations),
        )
    });
    let mut collector = Collector {
        job,
        stats: DatasetStats::default(),
        redactions: Redactions::default(),
        bytes_in: Arc::new(AtomicU64::new(0)),
        exact: dedup_spec.exact.then(ExactDedup::default),
        near,
    };
    let mut spill = SpillWriter::new(
        job.spill
            .try_clone()
            .map_err(PrepareError::io("open spill file"))?,
    );
    collector.run(&mut spill)?;
    let spill = spill
        .finish()
        .map_err(PrepareError::io("write spill file"))?;
    // Dropping the collector frees the dedup tables before tokenization.
    let Collector {
        stats, redactions, ..
    } = collector;
    if stats.documents_out == 0 {
        return Err(PrepareError::NothingLeft {
            documents_in: stats.documents_in,
            filtered: stats.filtered,
            duplicates: stats.exact_duplicates + stats.near_duplicates,
        });
    }
    Ok((spill, stats, redactions))
}

/// Pass 2: a tokenizer trained on the first documents of the spill file, as
/// the model will see them (instruction pairs through the labeling template).
fn train_tokenizer(
    job: &Job,
    spill: &File,
    stats: &DatasetStats,
) -> Result<Tokenizer, PrepareError> {
    let spec = &job.spec;
    let template = spec
        .labeling
        .as_ref()
        .map(|l| l.template.clone())
        .unwrap_or_default();
    let training = spec
        .tokenizer
        .train
        .as_ref()
        .ok_or_else(|| PrepareError::InvalidSpec("tokenizer: set train or uri".into()))?;
    job.reporter.report(stats_json(stats), "training tokenizer");
    let mut budget = tokenizer::TRAINING_SAMPLE_BYTES;
    let texts = SpillReader::new(spill)
        .map_err(PrepareError::io("read spill file"))?
        .map_while(Result::ok)
        .map(|r| match r {
            Record::Text(t) => t,
            Record::Pair { prompt, response } => {
                label::render_prompt(&template, &prompt) + &response
            }
        })
        .take_while(move |t| {
            let more = budget > 0;
            budget = budget.saturating_sub(t.len() as u64);
            more
        });
    tokenizer::train(texts, training)
}

/// A document's tokens and their loss mask.
type Labeled = (Vec<u32>, Vec<u8>);

/// How pass 3 turns documents into rows, from the spec.
struct Tokenizing {
    seq_len: usize,
    stride: usize,
    instruction: bool,
    /// Rows carry loss masks (instruction data, or unpacked rows with padding).
    masked: bool,
    add_eos: Option<u32>,
    template: String,
    mask_prompt: bool,
}

impl Tokenizing {
    fn new(spec: &DatasetSpec, eos: u32) -> Self {
        let seg = &spec.segmentation;
        let seq_len = usize::try_from(seg.sequence_length).unwrap_or(1024).max(1);
        let stride = seg
            .stride
            .and_then(|s| usize::try_from(s).ok())
            .unwrap_or(seq_len);
        let instruction = spec.kind == DatasetType::Instruction;
        let (template, mask_prompt) = spec.labeling.as_ref().map_or((String::new(), true), |l| {
            (l.template.clone(), l.mask_prompt)
        });
        Self {
            seq_len,
            stride,
            instruction,
            masked: instruction || !seg.pack,
            add_eos: seg.add_eos.then_some(eos),
            template,
            mask_prompt,
        }
    }

    /// The tokens and loss mask of each record of `batch`, in order.
    fn encode(
        &self,
        tokenizer: &Tokenizer,
        batch: Vec<Record>,
    ) -> Result<Vec<Labeled>, PrepareError> {
        if self.instruction {
            let (prompts, responses): (Vec<String>, Vec<String>) = batch
                .into_iter()
                .map(|r| match r {
                    Record::Pair { prompt, response } => {
                        (label::render_prompt(&self.template, &prompt), response)
                    }
                    Record::Text(t) => (label::render_prompt(&self.template, &t), String::new()),
                })
                .unzip();
            let prompts = tokenizer::encode_batch(tokenizer, prompts)?;
            let responses = tokenizer::encode_batch(tokenizer, responses)?;
            Ok(prompts
                .iter()
                .zip(&responses)
                .map(|(p, r)| label::label(p, r, self.add_eos, self.mask_prompt))
                .collect())
        } else {
            let texts: Vec<String> = batch
                .into_iter()
                .map(|r| match r {
                    Record::Text(t) => t,
                    Record::Pair { prompt, response } => format!("{prompt}\n{response}"),
                })
                .collect();
            Ok(tokenizer::encode_batch(tokenizer, texts)?
                .into_iter()
                .map(|mut ids| {
                    ids.extend(self.add_eos);
                    let mask = vec![1u8; ids.len()];
                    (ids, mask)
                })
                .collect())
        }
    }
}

/// Pass 3: tokenizes, labels, splits and segments the spilled documents into
/// shards; returns each split's entry of the manifest.
fn tokenize(
    job: &Job,
    tokenizer: &Tokenizer,
    spill: &File,
    eos: u32,
    pad: u32,
    stats: &mut DatasetStats,
) -> Result<BTreeMap<String, SplitEntry>, PrepareError> {
    let spec = &job.spec;
    let t = Tokenizing::new(spec, eos);
    let mut segmenters: Vec<Segmenter> = SPLITS
        .iter()
        .map(|_| Segmenter::new(t.seq_len, t.stride, spec.segmentation.pack, pad, t.masked))
        .collect();
    let mut writers: Vec<ShardWriter> = SPLITS
        .iter()
        .map(|s| ShardWriter::new(&job.staging, s, t.seq_len, t.masked, SHARD_BYTES))
        .collect();

    let mut records = SpillReader::new(spill).map_err(PrepareError::io("read spill file"))?;
    let mut done = 0i64;
    loop {
        let batch = records
            .by_ref()
            .take(BATCH)
            .collect::<Result<Vec<_>, _>>()
            .map_err(PrepareError::io("read spill file"))?;
        if batch.is_empty() {
            break;
        }
        let split_of: Vec<usize> = batch
            .iter()
            .map(|r| assign(dedup_text(r).as_bytes(), &spec.split))
            .collect();
        let labeled = t.encode(tokenizer, batch)?;
        for ((tokens, mask), split) in labeled.iter().zip(split_of) {
            segmenters[split]
                .push(tokens, mask, &mut writers[split])
                .map_err(PrepareError::io("write shard"))?;
        }
        done += labeled.len() as i64;
        record_split_stats(stats, &segmenters);
        job.reporter.report(
            stats_json(stats),
            &format!(
                "tokenizing: {done}/{} docs, {} sequences",
                stats.documents_out, stats.sequences
            ),
        );
    }
    finish_splits(segmenters, writers, stats)
}

/// Flushes every split's last rows and shards; returns the manifest's split
/// entries and records their totals in `stats`.
fn finish_splits(
    segmenters: Vec<Segmenter>,
    writers: Vec<ShardWriter>,
    stats: &mut DatasetStats,
) -> Result<BTreeMap<String, SplitEntry>, PrepareError> {
    let mut splits = BTreeMap::new();
    for ((name, mut segmenter), mut writer) in SPLITS.iter().zip(segmenters).zip(writers) {
        segmenter
            .finish(&mut writer)
            .map_err(PrepareError::io("write shard"))?;
        let shards = writer.finish().map_err(PrepareError::io("write shard"))?;
        splits.insert(
            name.to_string(),
            SplitEntry {
                sequences: segmenter.rows,
                tokens: segmenter.tokens_in,
                shards,
            },
        );
    }
    stats.train_tokens = splits["train"].tokens as i64;
    stats.validation_tokens = splits["validation"].tokens as i64;
    stats.test_tokens = splits["test"].tokens as i64;
    stats.sequences = splits.values().map(|s| s.sequences as i64).sum();
    stats.shards = splits.values().map(|s| s.shards.len() as i64).sum();
    Ok(splits)
}

fn record_split_stats(stats: &mut DatasetStats, segmenters: &[Segmenter]) {
    stats.train_tokens = segmenters[0].tokens_in as i64;
    stats.validation_tokens = segmenters[1].tokens_in as i64;
    stats.test_tokens = segmenters[2].tokens_in as i64;
    stats.sequences = segmenters.iter().map(|s| s.rows as i64).sum();
}

fn write_artifact(
    job: &Job,
    tokenizer: &Tokenizer,
    splits: BTreeMap<String, SplitEntry>,
    stats: DatasetStats,
    redactions: Redactions,
    eos: u32,
    pad: u32,
) -> Result<Manifest, PrepareError> {
    let json = tokenizer
        .to_string(true)
        .map_err(|e| PrepareError::Tokenizer(e.to_string()))?;
    std::fs::write(job.staging.join("tokenizer.json"), json)
        .map_err(PrepareError::io("write tokenizer.json"))?;
    let files = llmops_store::digest_dir(&job.staging)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        dataset: job.dataset.clone(),
        kind: job.spec.kind,
        sequence_length: job.spec.segmentation.sequence_length as u32,
        vocab_size: stats.vocab_size as u32,
        eos_id: eos,
        pad_id: pad,
        token_encoding: TOKEN_ENCODING.into(),
        masks: job.spec.kind == DatasetType::Instruction || !job.spec.segmentation.pack,
        tokenizer: "tokenizer.json".into(),
        splits,
        stats,
        redactions: RedactionCounts {
            email: redactions.email,
            phone: redactions.phone,
            ipv4: redactions.ipv4,
            card: redactions.card,
        },
        digest: llmops_store::artifact_digest(&files),
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| PrepareError::Io {
        op: "serialise manifest".into(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(job.staging.join(llmops_store::MANIFEST_FILE), body)
        .map_err(PrepareError::io("write manifest.json"))?;
    Ok(manifest)
}
