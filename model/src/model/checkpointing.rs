//! Activation checkpointing: a training step that keeps only each block's
//! input from the forward pass and runs the block again, with autograd, when
//! the backward pass reaches it.
//!
//! Without it autograd keeps every intermediate of every block (attention
//! scores and probabilities, the MLP's wide activations) from the forward pass
//! to the backward pass. With it the forward pass runs without autograd, keeping
//! one `[batch, seq, hidden]` tensor per block; the backward pass goes segment
//! by segment from the top: the final norm, head and loss; then each block, run
//! again from its kept input and differentiated with the gradient of its output;
//! then the embeddings. Only one block's intermediates are alive at a time, for
//! about one more forward pass of compute.
//!
//! Dropout draws its masks after `tch::manual_seed(segment_seed(seed, i))` for
//! segment `i` (0 the embeddings, `1 + b` block `b`), in the forward pass and
//! again in the recomputation, so both see the same masks.

use tch::{Kind, Tensor};

use super::{Model, dropout};
use crate::error::{Error, Result};

/// The dropout seed of segment `segment` of a step seeded with `seed`.
pub fn segment_seed(seed: i64, segment: usize) -> i64 {
    seed.wrapping_mul(0x9E37_79B9).wrapping_add(segment as i64)
}

impl Model {
    /// A training step's forward and backward with activation checkpointing.
    /// `loss` turns the logits `[batch, seq, vocab]` into the scalar to
    /// differentiate; its gradients accumulate into the parameters' `.grad`
    /// exactly as `loss(forward_t(ids, true)).backward()` would leave them, up
    /// to float rounding. Returns that scalar, detached.
    pub fn checkpointed_backward(
        &self,
        ids: &Tensor,
        seed: i64,
        loss: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let step = self.plan(ids, None, None)?;
        let embed = || -> Result<Tensor> {
            tch::manual_seed(segment_seed(seed, 0));
            let xs = self.embed(&step.ids, &step.positions)?;
            dropout(&xs, self.embd_dropout, true)
        };
        let rope = match &self.rope {
            Some(rope) => Some(rope.tables(&step.positions, self.embed_tokens.kind())?),
            None => None,
        };
        let run_block = |b: usize, xs: &Tensor| -> Result<Tensor> {
            tch::manual_seed(segment_seed(seed, 1 + b));
            self.blocks[b].forward(xs, rope.as_ref(), &step.mask, None, true, None)
        };

        // Forward without autograd, keeping each block's input.
        let mut inputs = Vec::with_capacity(self.blocks.len());
        let mut xs = tch::no_grad(embed)?;
        for b in 0..self.blocks.len() {
            let next = tch::no_grad(|| run_block(b, &xs))?;
            inputs.push(xs);
            xs = next;
        }

        // The top segment: final norm, head and loss.
        let top = xs.detach().set_requires_grad(true);
        let value = loss(&self.lm_head.forward(&self.final_norm.forward(&top)?)?)?;
        if value.numel() != 1 {
            return Err(Error::InvalidInput(format!(
                "the loss to differentiate must be a scalar, got shape {:?}",
                value.size()
            )));
        }
        value.f_backward()?;
        let mut grad = top.grad();
        drop(top);

        // Each block from the top, run again from its input.
        for b in (0..self.blocks.len()).rev() {
            let input = inputs
                .pop()
                .ok_or_else(|| Error::InvalidInput("a block without its input".into()))?
                .set_requires_grad(true);
            let out = run_block(b, &input)?;
            backward_with(&out, &grad)?;
            grad = input.grad();
        }

        // The embeddings, when they are trained.
        let xs = embed()?;
        if xs.requires_grad() {
            backward_with(&xs, &grad)?;
        }
        Ok(value.detach())
    }
}

/// Backpropagates `grad`, the gradient of the loss with respect to `out`,
/// through the graph that made `out`.
fn backward_with(out: &Tensor, grad: &Tensor) -> Result<()> {
    if !out.requires_grad() {
        // Nothing below it is trained (a frozen block under LoRA still passes
        // the gradient on through its input, which requires grad).
        return Ok(());
    }
    out.f_mul(&grad.f_to_kind(out.kind())?)?
        .f_sum(Kind::Float)?
        .f_backward()?;
    Ok(())
}
