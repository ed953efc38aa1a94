//! The llmops operator: one runtime (leader election, metrics, health, conditions,
//! server-side apply, events) shared by one controller per kind.
//!
//! Every reconcile is a pipeline — resolve → validate → build → apply → status — where
//! only resolve, apply and status talk to the API and `build` is a pure function.

pub mod config;
pub mod controller;
pub mod runtime;
pub mod telemetry;
pub mod workload;

#[cfg(test)]
mod test_support;
