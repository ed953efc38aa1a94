//! The llmops trainer: the work behind `trainer <command> --resource FILE`.
//!
//! `prepare` turns a Dataset into token shards ([`prepare`]); the format of those
//! shards and their reader live in [`artifact`]; [`progress`] reports live
//! progress into the resource's status; [`resource`] and [`termination`] are the
//! contract with the operator (the CR file in, one line or a JSON result out).

pub mod artifact;
pub mod bench;
pub mod prepare;
pub mod progress;
pub mod resource;
pub mod termination;
