//! QLoRA: the frozen base's block projections (attention and MLP, every one of
//! them, as the paper quantizes every linear layer of the base) held in NF4
//! with double quantization ([`crate::nf4`]), LoRA adapters ([`crate::lora`])
//! trained on top in the compute dtype. Embeddings, norms, biases and `lm_head`
//! stay as they are.
//!
//! A quantized projection's weight leaves the `VarStore` (so that its
//! full-precision tensor is freed, and checkpoints, which write the store, hold
//! only what is not quantized: the base is quantized again from its model
//! directory on resume); [`crate::layers::Linear::forward`] dequantizes it per
//! call. [`Model::dequantize_base`] puts dequantized weights back into the store
//! for export, after which [`Model::merge_lora`] and [`crate::io::save`] work
//! as for LoRA.

use tch::{Kind, Tensor, nn};

use crate::error::Result;
use crate::model::Model;
use crate::nf4::Nf4Tensor;

/// What [`Model::quantize_base`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedBase {
    /// Projections quantized.
    pub layers: usize,
    /// Their weights' values.
    pub parameters: i64,
    /// Those weights' bytes before, in fp32.
    pub fp32_bytes: i64,
    /// And in NF4 with double-quantized constants.
    pub nf4_bytes: i64,
}

impl QuantizedBase {
    /// Bytes a parameter in NF4 (≈ 0.516 with double quantization).
    pub fn bytes_per_parameter(&self) -> f64 {
        self.nf4_bytes as f64 / self.parameters as f64
    }
}

impl Model {
    /// Quantizes the weight of every block projection to NF4 and removes it
    /// from `vs` (where [`crate::io::load`] put it). The weights must be frozen
    /// (LoRA added first, or none): a trainable weight is refused.
    pub fn quantize_base(&mut self, vs: &nn::VarStore) -> Result<QuantizedBase> {
        let mut report = QuantizedBase {
            layers: 0,
            parameters: 0,
            fp32_bytes: 0,
            nf4_bytes: 0,
        };
        let mut variables = vs.variables_.lock().unwrap_or_else(|e| e.into_inner());
        for (name, linear) in self.linears_mut() {
            if linear.quantized.is_some() {
                continue;
            }
            if linear.weight.requires_grad() {
                return Err(crate::Error::InvalidInput(format!(
                    "{name}.weight is trainable; QLoRA quantizes only a frozen base"
                )));
            }
            let q = Nf4Tensor::quantize(&linear.weight)?;
            report.layers += 1;
            report.parameters += q.numel();
            report.fp32_bytes += 4 * q.numel();
            report.nf4_bytes += q.bytes();
            let key = format!("{name}.weight");
            variables.named_variables.remove(&key);
            let ptr = linear.weight.data_ptr();
            variables
                .trainable_variables
                .retain(|v| v.tensor.data_ptr() != ptr);
            linear.weight = Tensor::f_empty([0], (linear.weight.kind(), linear.weight.device()))?;
            linear.quantized = Some(Box::new(q));
        }
        Ok(report)
    }

    /// Puts every quantized projection's weight back, dequantized to the
    /// embeddings' dtype (the model's compute dtype), into the model and `vs`
    /// under its own name; frozen. A model without NF4 weights is unchanged.
    pub fn dequantize_base(&mut self, vs: &nn::VarStore) -> Result<()> {
        let kind: Kind = self.embed_tokens.kind();
        let mut variables = vs.variables_.lock().unwrap_or_else(|e| e.into_inner());
        for (name, linear) in self.linears_mut() {
            let Some(q) = linear.quantized.take() else {
                continue;
            };
            let weight = q.dequantize(kind)?.f_set_requires_grad(false)?;
            variables
                .named_variables
                .insert(format!("{name}.weight"), weight.shallow_clone());
            linear.weight = weight;
        }
        Ok(())
    }
}
