//! Duplicate removal: exact (hash of the normalised text) and near-duplicate
//! (MinHash signatures with locality-sensitive hashing). Both keep only fixed-size
//! fingerprints of the documents seen so far, never the documents themselves.

pub mod exact;
pub mod minhash;

pub use exact::ExactDedup;
pub use minhash::{Fingerprint, LSH_WEIGHTS, LshIndex, MinHasher, lsh_params};
