//! The llmops inference server: an OpenAI-compatible HTTP API ([`api`]) over a
//! continuously batching generation engine ([`engine`]) for a model loaded from
//! an artifact URI ([`load`]), with LoRA adapters served beside it
//! ([`adapters`]), its chat template ([`chat`]) and Prometheus metrics
//! ([`metrics`]).

pub mod adapters;
pub mod api;
pub mod chat;
pub mod engine;
pub mod load;
pub mod metrics;
