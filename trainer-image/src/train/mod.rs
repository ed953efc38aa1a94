//! The training session shared by pretraining and fine-tuning.
//!
//! The session: its steps from dataset to exported model ([`session`]), the
//! numbers a run trains with ([`plan`]), the loop with resume and progress
//! ([`run`]), the Hugging Face export with lineage ([`export`]), and its errors
//! ([`error`]).
//!
//! Its machinery: the data loader ([`data`]), the masked next-token loss
//! ([`loss`]), AdamW ([`optimizer`]) and its ZeRO-sharded form ([`zero`]), the
//! learning-rate schedule ([`schedule`]),
//! checkpoints ([`checkpoint`], mirrored to object stores by [`mirror`]), data
//! parallelism ([`distributed`] over TCP or [`nccl`], [`launch`] for several
//! processes per pod), the SIGTERM/SIGINT flag ([`interrupt`]), and host
//! allocator settings ([`memory`]).

pub mod checkpoint;
pub mod data;
pub mod distributed;
pub mod error;
pub mod export;
pub mod interrupt;
pub mod launch;
pub mod loss;
pub mod memory;
pub mod mirror;
pub mod nccl;
pub mod optimizer;
pub mod plan;
pub mod run;
pub mod schedule;
pub mod session;
pub mod zero;

pub use error::{Permanence, TrainError};
pub use plan::Plan;
pub use session::Outcome;
