//! Training machinery shared by pretraining and fine-tuning: the data loader
//! ([`data`]), the masked next-token loss ([`loss`]), AdamW ([`optimizer`]), the
//! learning-rate schedule ([`schedule`]), checkpoints ([`checkpoint`], mirrored to
//! object stores by [`mirror`]), data
//! parallelism ([`distributed`] over TCP or [`nccl`], [`launch`] for several
//! processes per pod) and the
//! SIGTERM/SIGINT flag ([`interrupt`]), and host allocator settings
//! ([`memory`]).

pub mod checkpoint;
pub mod data;
pub mod distributed;
pub mod interrupt;
pub mod launch;
pub mod loss;
pub mod memory;
pub mod mirror;
pub mod nccl;
pub mod optimizer;
pub mod schedule;
