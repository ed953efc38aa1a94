//! Artifact and source access shared by the trainer and the server.
//!
//! Every artifact is a plain directory at a URI (`s3://`, `gs://`, `az://`,
//! `file://`, `pvc://<claim>/<path>`); sources and models may also be read-only
//! `http(s)://` URLs and Hugging Face Hub repositories (`hf://`, [`hub`]). This crate parses those URIs, resolves credentials from the environment
//! the operator sets up, streams bytes in and out, publishes directories so that a
//! half-written artifact is never visible, and computes artifact digests.

pub mod cache;
pub mod credentials;
pub mod digest;
mod error;
pub mod hub;
pub mod model;
mod owner;
mod store;
#[cfg(any(test, feature = "test-hub"))]
pub mod test_hub;
pub mod uri;

pub use cache::{Cached, fetch_model_cached};
pub use credentials::{CREDENTIAL_KEYS, Credentials, credential_env_prefix, credential_env_var};
pub use digest::{FileDigest, artifact_digest, digest_dir, sha256_file};
pub use error::StoreError;
pub use model::{MODEL_DIR_PREFIX, ModelManifest, fetch_model};
pub use owner::{OWNER_FILE, Owner};
pub use store::{ByteStream, ObjectEntry, Store, verify_sha256};
pub use uri::ArtifactUri;

/// The file that marks an artifact as complete; it is always written last.
pub const MANIFEST_FILE: &str = "manifest.json";
