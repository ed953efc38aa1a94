//! From a FineTune, its base model and its dataset to the numbers the training
//! loop runs with (the shared loop, started from the base model).

use llmops_crds::FineTune;
use llmops_crds::finetune::{LoraTarget, MethodType};
use llmops_model::{Config, LoraSettings};

use super::FineTuneError;
use crate::artifact::Manifest;
use crate::train::plan::{EarlyStop, Plan, assemble};

/// The PEFT module name of a CRD target.
pub fn target_name(target: LoraTarget) -> &'static str {
    match target {
        LoraTarget::QProj => "q_proj",
        LoraTarget::KProj => "k_proj",
        LoraTarget::VProj => "v_proj",
        LoraTarget::OProj => "o_proj",
        LoraTarget::GateProj => "gate_proj",
        LoraTarget::UpProj => "up_proj",
        LoraTarget::DownProj => "down_proj",
        LoraTarget::CAttn => "c_attn",
        LoraTarget::CProj => "c_proj",
        LoraTarget::CFc => "c_fc",
    }
}

/// The adapters to train (lora and qlora), or `None` for full fine-tuning.
pub fn lora(ft: &FineTune) -> Option<LoraSettings> {
    let method = &ft.spec.method;
    if !method.kind.has_adapters() {
        return None;
    }
    let lora = method.lora.clone().unwrap_or_default();
    Some(LoraSettings {
        rank: lora.rank as i64,
        alpha: lora.alpha,
        dropout: lora.dropout,
        targets: lora
            .target_modules
            .iter()
            .map(|t| target_name(*t).to_string())
            .collect(),
    })
}

/// Whether the frozen base is held in NF4 under the adapters (qlora).
pub fn quantize_base(ft: &FineTune) -> bool {
    ft.spec.method.kind == MethodType::Qlora
}

/// Resolves `ft` for a base model of `base` config, a dataset described by
/// `manifest` with `train_rows` training rows, and `world` ranks.
pub fn plan(
    ft: &FineTune,
    base: &Config,
    manifest: &Manifest,
    train_rows: u64,
    world: usize,
) -> Result<Plan, FineTuneError> {
    let spec = &ft.spec;
    let t = &spec.training;
    let invalid = |m: String| Err(FineTuneError::InvalidSpec(m));
    if !spec.method.kind.has_adapters() && !spec.output.merge_adapter {
        return invalid(
            "spec.output.mergeAdapter: false needs method.type lora or qlora (a full fine-tune has no adapter to keep apart)".into(),
        );
    }
    if manifest.vocab_size as i64 > base.vocab_size {
        return Err(FineTuneError::Incompatible(format!(
            "the dataset's vocabulary ({}) is larger than the base model's ({})",
            manifest.vocab_size, base.vocab_size
        )));
    }
    let sequence_length = manifest.sequence_length as usize;
    if sequence_length as i64 > base.max_position_embeddings {
        return Err(FineTuneError::Incompatible(format!(
            "the dataset's rows ({sequence_length} tokens) are longer than the base model's context ({})",
            base.max_position_embeddings
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
        (Some(steps), None, None) if steps > 0 => steps,
        (None, Some(tokens), None) if tokens > 0 => {
            (tokens + tokens_per_step - 1) / tokens_per_step
        }
        (None, None, epochs) if epochs.is_none_or(|e| e > 0) => {
            // One epoch unless asked; a partial last batch still takes a step.
            let rows = epochs.unwrap_or(1) as u64 * train_rows;
            (rows.div_ceil(batch as u64)).max(1) as i64
        }
        _ => {
            return invalid(
                "set at most one of training.maxSteps, training.maxTokens or training.epochs, positive".into(),
            );
        }
    };
    // Fine-tuning keeps the base model's architecture (and its dropout).
    let mut plan = assemble(t, base.clone(), sequence_length, world, total_steps)?;
    plan.early_stopping = spec.early_stopping.as_ref().map(|e| EarlyStop {
        patience: e.patience.max(1) as u32,
        min_delta: e.min_delta,
    });
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finetune(method: serde_json::Value) -> FineTune {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "llmops.dev/v1alpha1",
            "kind": "FineTune",
            "metadata": {"name": "ft"},
            "spec": {"baseModel": {"uri": "file:///base"}, "datasetRef": {"name": "qa"},
                     "method": method},
        }))
        .unwrap()
    }

    #[test]
    fn qlora_trains_the_lora_settings_on_a_quantized_base() {
        let ft = finetune(serde_json::json!({"type": "qlora", "lora": {"rank": 16}}));
        let settings = lora(&ft).expect("qlora trains adapters");
        assert_eq!(settings.rank, 16);
        assert!(quantize_base(&ft));
        let ft = finetune(serde_json::json!({"type": "lora"}));
        assert!(lora(&ft).is_some());
        assert!(!quantize_base(&ft));
        let ft = finetune(serde_json::json!({"type": "full"}));
        assert!(lora(&ft).is_none());
        assert!(!quantize_base(&ft));
    }
}
