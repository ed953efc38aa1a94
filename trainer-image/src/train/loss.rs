//! The causal language-modelling loss: cross-entropy of each next token, summed
//! over the targets the mask keeps.

use llmops_model::Model;
use tch::{Kind, Reduction, Tensor};

use super::data::{IGNORE, MicroBatch};

/// Sum (not mean) of the next-token cross-entropy over the unmasked targets, in
/// fp32; callers divide by the number of targets of the whole global batch.
pub fn summed_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor, tch::TchError> {
    let vocab = logits.size()[logits.dim() - 1];
    logits
        .f_to_kind(Kind::Float)?
        .f_reshape([-1, vocab])?
        .f_cross_entropy_loss::<Tensor>(
            &targets.f_reshape([-1])?,
            None,
            Reduction::Sum,
            IGNORE,
            0.0,
        )
}

/// Mean next-token loss over `batches` without gradients or dropout.
pub fn evaluate(model: &Model, batches: &[MicroBatch]) -> llmops_model::Result<Option<f64>> {
    tch::no_grad(|| {
        let (mut sum, mut count) = (0.0, 0i64);
        for batch in batches {
            let logits = model.forward_t(&batch.inputs, false)?;
            sum += summed_loss(&logits, &batch.targets)?.f_double_value(&[])?;
            count += batch
                .targets
                .f_ne(IGNORE)?
                .f_sum(Kind::Int64)?
                .f_int64_value(&[])?;
        }
        Ok((count > 0).then(|| sum / count as f64))
    })
}
