//! From a PretrainJob and its dataset to the numbers the training loop runs with.

use llmops_crds::common::{LrSchedule, Precision};
use llmops_crds::pretrain::{ModelArchitecture, ModelFamily};
use llmops_crds::{PretrainJob, TrainingSpec};
use llmops_model::{Config, Family};

use super::PretrainError;
use crate::artifact::Manifest;
use crate::train::optimizer::AdamWConfig;
use crate::train::schedule::Schedule;

/// What one run does, resolved and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub model: Config,
    /// Tokens per training row (the model sees `sequence_length - 1` inputs).
    pub sequence_length: usize,
    /// Global batch in rows.
    pub batch: usize,
    /// Rows per forward/backward pass.
    pub micro_batch: usize,
    /// Micro-steps per optimizer step on each rank.
    pub accumulation: usize,
    pub total_steps: i64,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    pub grad_clip: f64,
    pub seed: u64,
    pub eval_every: i64,
    pub checkpoint_every: i64,
    pub checkpoints_kept: usize,
    pub precision: Precision,
}

impl Plan {
    /// Tokens one optimizer step consumes (all ranks).
    pub fn tokens_per_step(&self) -> i64 {
        (self.batch * self.sequence_length) as i64
    }
}

/// The model configuration of a spec for a vocabulary of `vocab` with `eos`.
pub fn model_config(arch: &ModelArchitecture, vocab: u32, eos: u32, pad: u32) -> Config {
    let family = match arch.family {
        ModelFamily::Gpt2 => Family::Gpt2,
        ModelFamily::Llama => Family::Llama,
    };
    let mut c = Config::default_for(family);
    let hidden = arch.hidden as i64;
    c.vocab_size = vocab as i64;
    c.hidden_size = hidden;
    c.num_layers = arch.layers as i64;
    c.num_heads = arch.heads as i64;
    c.max_position_embeddings = arch.context_length as i64;
    c.tie_word_embeddings = arch.tied_embeddings;
    c.bos_token_id = None;
    c.eos_token_id = vec![eos as i64];
    c.pad_token_id = Some(pad as i64);
    match family {
        Family::Gpt2 => {
            c.intermediate_size = arch.intermediate.map(i64::from);
            c.num_kv_heads = None;
            c.embd_dropout = arch.dropout;
            c.attn_dropout = arch.dropout;
            c.resid_dropout = arch.dropout;
        }
        Family::Llama => {
            // ⌈8/3 × hidden⌉ rounded up to a multiple of 64: SwiGLU's three
            // matrices then cost about what GPT-2's two 4× matrices do.
            let default = ((8 * hidden + 2) / 3 + 63) / 64 * 64;
            c.intermediate_size = Some(arch.intermediate.map_or(default, i64::from));
            c.num_kv_heads = arch.kv_heads.map(i64::from);
            c.rope_theta = arch.rope_theta.unwrap_or(10000.0);
            c.attn_dropout = arch.dropout;
        }
    }
    c
}

/// Resolves `job` against the dataset `manifest` for `world` ranks.
pub fn plan(job: &PretrainJob, manifest: &Manifest, world: usize) -> Result<Plan, PretrainError> {
    let spec = &job.spec;
    let t: &TrainingSpec = &spec.training;
    let invalid = |m: String| Err(PretrainError::InvalidSpec(m));
    let model = model_config(
        &spec.model,
        manifest.vocab_size,
        manifest.eos_id,
        manifest.pad_id,
    );
    model
        .validate()
        .map_err(|e| PretrainError::InvalidSpec(format!("model: {e}")))?;
    let dataset_len = manifest.sequence_length as usize;
    let sequence_length = match spec.sequence_length {
        Some(n) if n as usize > dataset_len => {
            return Err(PretrainError::Incompatible(format!(
                "sequenceLength {n} is longer than the dataset's rows ({dataset_len} tokens)"
            )));
        }
        Some(n) => n as usize,
        None => dataset_len,
    };
    if sequence_length < 2 {
        return invalid(format!(
            "sequence length {sequence_length} leaves no next token to predict"
        ));
    }
    if sequence_length as i64 > model.max_position_embeddings {
        return Err(PretrainError::Incompatible(format!(
            "sequence length {sequence_length} exceeds model.contextLength {}; set sequenceLength or raise contextLength",
            model.max_position_embeddings
        )));
    }
    if manifest.eos_id >= manifest.vocab_size || manifest.pad_id >= manifest.vocab_size {
        return Err(PretrainError::Incompatible(format!(
            "special token ids (eos {}, pad {}) are outside the vocabulary of {}",
            manifest.eos_id, manifest.pad_id, manifest.vocab_size
        )));
    }
    let (batch, micro) = (t.batch_size as usize, t.micro_batch_size as usize);
    if batch == 0 || micro == 0 || batch % (micro * world) != 0 {
        return invalid(format!(
            "training.batchSize {batch} must be a multiple of microBatchSize {micro} × {world} rank(s)"
        ));
    }
    let tokens_per_step = (batch * sequence_length) as i64;
    let total_steps = match (t.max_steps, t.max_tokens, t.epochs) {
        (_, _, Some(_)) => {
            return invalid("pretraining runs for maxSteps or maxTokens, not epochs".into());
        }
        (Some(steps), None, None) if steps > 0 => steps,
        (None, Some(tokens), None) if tokens > 0 => {
            (tokens + tokens_per_step - 1) / tokens_per_step
        }
        _ => {
            return invalid(
                "set exactly one of training.maxSteps or training.maxTokens, positive".into(),
            );
        }
    };
    let min_lr = t.min_learning_rate.unwrap_or(t.learning_rate / 10.0);
    if min_lr > t.learning_rate {
        return invalid("training.minLearningRate exceeds learningRate".into());
    }
    Ok(Plan {
        model,
        sequence_length,
        batch,
        micro_batch: micro,
        accumulation: batch / (micro * world),
        total_steps,
        schedule: Schedule {
            kind: t.schedule,
            peak: t.learning_rate,
            min: if t.schedule == LrSchedule::Constant {
                t.learning_rate
            } else {
                min_lr
            },
            warmup: t.warmup_steps,
            total: total_steps,
        },
        adamw: AdamWConfig {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: 1e-8,
            weight_decay: t.weight_decay,
        },
        grad_clip: t.grad_clip,
        seed: t.seed as u64,
        eval_every: t.eval_every.max(1),
        checkpoint_every: t.checkpoint_every.max(1),
        checkpoints_kept: t.checkpoints_kept.max(1) as usize,
        precision: t.precision,
    })
}
