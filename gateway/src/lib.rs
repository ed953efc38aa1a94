//! The llmops gateway: one OpenAI-compatible base URL for every
//! ModelDeployment. Requests are authenticated with keys from Secrets, limited
//! per key, and routed by `model` to a ready serving pod; see `docs/gateway.md`.

pub mod discovery;
pub mod error;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod route;
