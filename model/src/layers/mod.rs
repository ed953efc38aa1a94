//! Building blocks shared by both families. Each layer holds plain tensors that live
//! in the model's `VarStore`, so the same weights are visible to an optimiser, to
//! save/load, and to adapters wrapped around them later.

mod attention;
mod linear;
mod mlp;
mod norm;
mod rope;

pub use attention::{Attention, AttentionMask, QkvProjection};
pub use linear::{Linear, LoraAdapter, ServedAdapter, WeightLayout};
pub use mlp::Mlp;
pub use norm::Norm;
pub use rope::{Rope, RotaryTables};
