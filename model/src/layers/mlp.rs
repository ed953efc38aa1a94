//! Position-wise feed-forward blocks.

use tch::Tensor;

use super::Linear;
use crate::config::Activation;
use crate::error::Result;
use crate::multi_lora::AdapterRoutes;

/// The MLP of a transformer block.
#[derive(Debug)]
pub enum Mlp {
    /// GPT-2: `c_proj(act(c_fc(x)))`.
    Plain {
        c_fc: Linear,
        c_proj: Linear,
        activation: Activation,
    },
    /// Llama (SwiGLU when the activation is SiLU): `down(act(gate(x)) * up(x))`.
    Gated {
        gate_proj: Linear,
        up_proj: Linear,
        down_proj: Linear,
        activation: Activation,
    },
}

impl Mlp {
    /// `routes` sends rows of the batch through served adapters.
    pub fn forward(&self, xs: &Tensor, routes: Option<&AdapterRoutes>) -> Result<Tensor> {
        match self {
            Mlp::Plain {
                c_fc,
                c_proj,
                activation,
            } => c_proj.forward_routed(
                &activate(&c_fc.forward_routed(xs, routes)?, *activation)?,
                routes,
            ),
            Mlp::Gated {
                gate_proj,
                up_proj,
                down_proj,
                activation,
            } => {
                let gate = activate(&gate_proj.forward_routed(xs, routes)?, *activation)?;
                down_proj.forward_routed(&gate.f_mul(&up_proj.forward_routed(xs, routes)?)?, routes)
            }
        }
    }

    /// The projections of this MLP with their Hugging Face names.
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        match self {
            Mlp::Plain { c_fc, c_proj, .. } => vec![("c_fc", c_fc), ("c_proj", c_proj)],
            Mlp::Gated {
                gate_proj,
                up_proj,
                down_proj,
                ..
            } => vec![
                ("gate_proj", gate_proj),
                ("up_proj", up_proj),
                ("down_proj", down_proj),
            ],
        }
    }
}

fn activate(xs: &Tensor, activation: Activation) -> Result<Tensor> {
    Ok(match activation {
        Activation::GeluNew => xs.f_gelu("tanh")?,
        Activation::Gelu => xs.f_gelu("none")?,
        Activation::Silu => xs.f_silu()?,
        Activation::Relu => xs.f_relu()?,
    })
}
