//! Evaluation of the fine-tuned model on the held-out split, and its gates.
//!
//! Perplexity is `exp` of the mean cross-entropy over the response tokens (the
//! targets the dataset's loss masks keep) of the test split, or of the
//! validation split when the test split is empty. ROUGE-L, BLEU and exact match
//! compare generated answers with the references on the first `samples` rows:
//! each row's prompt is its tokens before the first target, the reference is the
//! target tokens, and the answer is decoded as the server would produce it.

use std::ops::ControlFlow;

use llmops_crds::finetune::{Evaluation, EvaluationScores, GateResult, Metric};
use llmops_model::{LogitsProcessor, Model, Sampling, generate};
use tch::Device;
use tokenizers::Tokenizer;

use super::FineTuneError;
use crate::artifact::{DatasetArtifact, SplitReader};
use crate::text_overlap;
use crate::train::data;
use crate::train::loss;

/// Rows scored for perplexity at most.
const MAX_PERPLEXITY_ROWS: u64 = 1024;

/// The split evaluation uses: test, else validation.
fn held_out(dataset: &DatasetArtifact) -> Result<(String, SplitReader), FineTuneError> {
    let uri = dataset.dir().display().to_string();
    for name in ["test", "validation"] {
        let split = dataset.split(name).map_err(FineTuneError::dataset(&uri))?;
        if !split.is_empty() {
            return Ok((name.to_string(), split));
        }
    }
    Err(FineTuneError::Incompatible(
        "the dataset has no test or validation rows to evaluate on".into(),
    ))
}

/// One evaluation record: the prompt and the reference answer.
struct Record {
    prompt: Vec<i64>,
    reference: Vec<u32>,
}

/// The prompt/answer split of a row by its loss mask; `None` without a mask
/// or without both parts.
fn record(tokens: &[u32], mask: Option<&[u8]>) -> Option<Record> {
    let mask = mask?;
    let start = mask.iter().position(|&m| m != 0)?;
    let end = mask[start..]
        .iter()
        .position(|&m| m == 0)
        .map_or(mask.len(), |n| start + n);
    (start > 0).then(|| Record {
        prompt: tokens[..start].iter().map(|&t| t as i64).collect(),
        reference: tokens[start..end].to_vec(),
    })
}

/// Scores `model` on `dataset` as `spec` asks.
pub fn evaluate(
    model: &Model,
    dataset: &DatasetArtifact,
    tokenizer: &Tokenizer,
    spec: &Evaluation,
    sequence_length: usize,
    device: Device,
) -> Result<EvaluationScores, FineTuneError> {
    let (split_name, split) = held_out(dataset)?;
    let mut scores = EvaluationScores::default();
    if spec.metrics.contains(&Metric::Perplexity) {
        scores.perplexity = Some(perplexity(
            model,
            dataset,
            (&split_name, &split),
            sequence_length,
            device,
        )?);
    }
    let generated = [Metric::RougeL, Metric::Bleu, Metric::ExactMatch];
    if !spec.metrics.iter().any(|m| generated.contains(m)) {
        scores.samples = split.len().min(MAX_PERPLEXITY_ROWS) as i64;
        return Ok(scores);
    }
    let (candidates, references) = answers(model, dataset, &split, tokenizer, spec)?;
    if candidates.is_empty() {
        return Err(FineTuneError::Incompatible(format!(
            "rougeL, bleu and exactMatch need prompt/answer records (instruction data with loss masks); the {split_name} split has none"
        )));
    }
    for metric in &spec.metrics {
        match metric {
            Metric::RougeL => {
                scores.rouge_l = Some(text_overlap::mean_rouge_l(&candidates, &references))
            }
            Metric::Bleu => scores.bleu = Some(text_overlap::corpus_bleu(&candidates, &references)),
            Metric::ExactMatch => {
                scores.exact_match = Some(text_overlap::exact_match(&candidates, &references))
            }
            Metric::Perplexity => {}
        }
    }
    scores.samples = candidates.len() as i64;
    Ok(scores)
}

/// The perplexity of the model in `base_dir` on the held-out split, when `spec`
/// asks for perplexity: the score the fine-tune is compared with. The model is
/// loaded for this alone and dropped before training starts.
pub fn base_perplexity(
    base_dir: &std::path::Path,
    dataset: &DatasetArtifact,
    spec: &Evaluation,
    sequence_length: usize,
    device: Device,
) -> Result<Option<f64>, FineTuneError> {
    if !spec.metrics.contains(&Metric::Perplexity) {
        return Ok(None);
    }
    let (split_name, split) = held_out(dataset)?;
    let base = llmops_model::io::load(base_dir, device, llmops_model::Dtype::F32)
        .map_err(crate::train::TrainError::from)?;
    perplexity(
        &base.model,
        dataset,
        (&split_name, &split),
        sequence_length,
        device,
    )
    .map(Some)
}

/// `exp` of the mean loss over the response tokens of the held-out `split`
/// (its name and reader).
fn perplexity(
    model: &Model,
    dataset: &DatasetArtifact,
    (split_name, split): (&str, &SplitReader),
    sequence_length: usize,
    device: Device,
) -> Result<f64, FineTuneError> {
    let uri = dataset.dir().display().to_string();
    let batches = data::eval_batches(split, sequence_length, 8, MAX_PERPLEXITY_ROWS, device)
        .map_err(FineTuneError::dataset(&uri))?;
    let mean = loss::evaluate(model, &batches)?.ok_or_else(|| {
        FineTuneError::Incompatible(format!(
            "the {split_name} split has no response tokens to compute perplexity on"
        ))
    })?;
    Ok(mean.exp())
}

/// The model's answers to the first `spec.samples` prompt/answer records of
/// `split`, decoded, and the reference answers beside them.
fn answers(
    model: &Model,
    dataset: &DatasetArtifact,
    split: &SplitReader,
    tokenizer: &Tokenizer,
    spec: &Evaluation,
) -> Result<(Vec<String>, Vec<String>), FineTuneError> {
    let uri = dataset.dir().display().to_string();
    let g = &spec.generation;
    let sampling = Sampling::from_params(
        g.temperature,
        (g.top_k > 0).then_some(g.top_k as usize),
        Some(g.top_p),
    )
    .map_err(|e| FineTuneError::InvalidSpec(format!("evaluation.generation: {e}")))?;
    let eos: Vec<i64> = vec![dataset.manifest.eos_id as i64];
    let decode = |ids: &[u32]| {
        tokenizer
            .decode(ids, true)
            .map_err(|e| FineTuneError::Incompatible(format!("cannot decode tokens: {e}")))
    };
    let (mut candidates, mut references) = (Vec::new(), Vec::new());
    let wanted = spec.samples.max(1) as usize;
    for row in split.iter() {
        if candidates.len() >= wanted {
            break;
        }
        let row = row.map_err(FineTuneError::dataset(&uri))?;
        let Some(rec) = record(&row.tokens, row.mask.as_deref()) else {
            continue;
        };
        let room = model.config().max_position_embeddings as usize - rec.prompt.len();
        let max_new = (g.max_new_tokens.max(1) as usize).min(room);
        let mut sampler = LogitsProcessor::new(g.seed as u64 + candidates.len() as u64, sampling);
        let answer = generate(model, &rec.prompt, max_new, &eos, &mut sampler, |_| {
            ControlFlow::Continue(())
        })?;
        let ids: Vec<u32> = answer.tokens.iter().map(|&t| t as u32).collect();
        candidates.push(decode(&ids)?);
        references.push(decode(&rec.reference)?);
    }
    Ok((candidates, references))
}

/// Checks `scores` against the gates; every gate is named with its score.
pub fn gate(spec: &Evaluation, scores: &EvaluationScores) -> GateResult {
    let g = &spec.gates;
    let checks = [
        ("rougeL", scores.rouge_l, g.min_rouge_l, true),
        ("bleu", scores.bleu, g.min_bleu, true),
        ("exactMatch", scores.exact_match, g.min_exact_match, true),
        ("perplexity", scores.perplexity, g.max_perplexity, false),
    ];
    let mut passed = true;
    let mut parts = Vec::new();
    for (name, score, bound, at_least) in checks {
        let Some(bound) = bound else { continue };
        let Some(score) = score else {
            passed = false;
            parts.push(format!("{name} was not computed (gate {bound})"));
            continue;
        };
        let ok = if at_least {
            score >= bound
        } else {
            score <= bound
        };
        passed &= ok;
        let op = match (at_least, ok) {
            (true, true) => ">=",
            (true, false) => "<",
            (false, true) => "<=",
            (false, false) => ">",
        };
        parts.push(format!("{name} {score:.4} {op} {bound}"));
    }
    let message = if parts.is_empty() {
        "no gates".to_string()
    } else {
        parts.join(", ")
    };
    GateResult { passed, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmops_crds::finetune::Gates;

    #[test]
    fn records_split_at_the_first_target() {
        let r = record(&[1, 2, 3, 4, 5, 0, 0], Some(&[0, 0, 1, 1, 1, 0, 0])).unwrap();
        assert_eq!(r.prompt, vec![1, 2]);
        assert_eq!(r.reference, vec![3, 4, 5]);
        assert!(record(&[1, 2], None).is_none());
        assert!(record(&[1, 2], Some(&[1, 1])).is_none(), "no prompt");
        assert!(record(&[1, 2], Some(&[0, 0])).is_none(), "no answer");
    }

    #[test]
    fn gates_name_each_score() {
        let spec = Evaluation {
            gates: Gates {
                min_rouge_l: Some(0.3),
                max_perplexity: Some(10.0),
                ..Gates::default()
            },
            ..Evaluation::default()
        };
        let scores = EvaluationScores {
            rouge_l: Some(0.41),
            perplexity: Some(12.5),
            ..EvaluationScores::default()
        };
        let g = gate(&spec, &scores);
        assert!(!g.passed);
        assert_eq!(g.message, "rougeL 0.4100 >= 0.3, perplexity 12.5000 > 10");
        let g = gate(&Evaluation::default(), &scores);
        assert!(g.passed);
        assert_eq!(g.message, "no gates");
    }
}
