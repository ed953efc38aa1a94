//! Pieces of the pods the operator runs for every kind: Pod Security `restricted`
//! settings, credentials from Secrets, image pull settings, volumes for URIs on PVCs, trainer Jobs
//! the NetworkPolicy that isolates trainer pods, and the owner, trace and OTLP
//! settings every pod gets.

pub mod cleanup;
pub mod credentials;
pub mod image;
pub mod isolation;
pub mod job;
pub mod lineage;
pub mod observe;
pub mod rbac;
pub mod record;
pub mod security;
pub mod storage;
pub mod telemetry;
