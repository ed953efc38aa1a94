//! From a PretrainJob and its dataset to the numbers the training loop runs with.

use llmops_crds::PretrainJob;
use llmops_crds::TrainingSpec;
use llmops_crds::pretrain::{ModelArchitecture, ModelFamily};
use llmops_model::{Config, Family};

use super::PretrainError;
use crate::artifact::Manifest;
use crate::train::plan::{Plan, assemble};

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
        Family::Llama | Family::Qwen2 | Family::Mistral => {
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
    Ok(assemble(t, model, sequence_length, world, total_steps)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(spec: serde_json::Value) -> PretrainJob {
        let mut base = json!({
            "datasetRef": {"name": "d"},
            "model": {"layers": 2, "heads": 4, "hidden": 96, "contextLength": 64},
            "training": {"maxSteps": 10},
        });
        for (k, v) in spec.as_object().unwrap() {
            base[k] = v.clone();
        }
        let mut job = PretrainJob::new("j", serde_json::from_value(base).unwrap());
        job.metadata.namespace = Some("ml".into());
        job
    }

    fn manifest(sequence_length: u32) -> Manifest {
        serde_json::from_value(json!({
            "formatVersion": 1,
            "dataset": {"name": "d"},
            "type": "pretraining",
            "sequenceLength": sequence_length,
            "vocabSize": 300, "eosId": 0, "padId": 1,
            "tokenEncoding": "u32le", "masks": false, "tokenizer": "tokenizer.json",
            "splits": {}, "stats": {}, "redactions": {"email": 0, "phone": 0, "ipv4": 0, "card": 0},
            "digest": "sha256:0",
        }))
        .unwrap()
    }

    #[test]
    fn resolves_defaults_from_the_spec_and_the_dataset() {
        let p = plan(&job(json!({})), &manifest(32), 1).unwrap();
        assert_eq!(p.model.vocab_size, 300);
        assert_eq!(p.model.eos_token_id, vec![0]);
        // ⌈8/3 × 96⌉ = 256, already a multiple of 64.
        assert_eq!(p.model.intermediate_size(), 256);
        assert_eq!(p.sequence_length, 32);
        assert_eq!((p.batch, p.micro_batch, p.accumulation), (32, 8, 4));
        assert!(
            (p.schedule.min - 3e-5).abs() < 1e-12,
            "min lr defaults to lr/10"
        );
        let gpt2 = job(json!({"model": {"family": "gpt2", "layers": 2, "heads": 4, "hidden": 96}}));
        assert_eq!(
            plan(&gpt2, &manifest(32), 1)
                .unwrap()
                .model
                .intermediate_size(),
            384
        );
    }

    #[test]
    fn max_tokens_becomes_steps_and_world_size_splits_accumulation() {
        let j = job(
            json!({"sequenceLength": 16, "training": {"maxTokens": 5000, "batchSize": 16, "microBatchSize": 4}}),
        );
        let p = plan(&j, &manifest(32), 2).unwrap();
        assert_eq!(p.sequence_length, 16);
        assert_eq!(p.total_steps, 20, "⌈5000 / (16 × 16)⌉");
        assert_eq!(p.accumulation, 2);
        let err = plan(&j, &manifest(32), 3).unwrap_err().to_string();
        assert!(
            err.contains("multiple of microBatchSize 4 × 3 rank(s)"),
            "{err}"
        );
    }

    #[test]
    fn rejects_what_cannot_train() {
        let long = plan(&job(json!({})), &manifest(128), 1)
            .unwrap_err()
            .to_string();
        assert!(
            long.contains("sequence length 128 exceeds model.contextLength 64"),
            "{long}"
        );
        let crop = plan(&job(json!({"sequenceLength": 48})), &manifest(32), 1).unwrap_err();
        assert!(
            crop.to_string().contains("longer than the dataset's rows"),
            "{crop}"
        );
        let epochs = job(json!({"training": {"epochs": 1}}));
        assert!(plan(&epochs, &manifest(32), 1).is_err());
    }

    #[test]
    fn zero_stages_resolve_and_one_rank_trains_as_stage_0() {
        let zero = |stage: i32| {
            let mut j = job(json!({}));
            j.spec.training.zero.stage = stage;
            j
        };
        assert_eq!(plan(&zero(2), &manifest(32), 2).unwrap().zero_stage, 2);
        assert_eq!(plan(&zero(1), &manifest(32), 2).unwrap().zero_stage, 1);
        assert_eq!(plan(&zero(2), &manifest(32), 1).unwrap().zero_stage, 0);
        let err = plan(&zero(3), &manifest(32), 2).unwrap_err().to_string();
        assert!(err.contains("training.zero.stage is 3"), "{err}");
    }
}
