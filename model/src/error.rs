//! One error type for the crate. Every variant says what is wrong in terms the
//! user can act on (which file, which tensor, which setting), because these
//! messages end up verbatim in a resource's `Stalled` condition.

use std::path::PathBuf;

/// Errors from building, loading, saving or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The config is internally inconsistent (e.g. hidden size not divisible by heads).
    #[error("invalid model config: {0}")]
    InvalidConfig(String),

    /// The config asks for something this crate does not implement; running it anyway
    /// would silently compute a different function than the checkpoint was trained for.
    #[error("unsupported model config: {0}")]
    UnsupportedConfig(String),

    #[error("tensor `{name}` (expected shape {expected:?}) is missing from {path}")]
    MissingTensor {
        name: String,
        expected: Vec<i64>,
        path: PathBuf,
    },

    #[error("tensor `{name}` in {path} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
        path: PathBuf,
    },

    #[error(
        "tensor `{name}` in {path} has dtype {dtype}, expected a floating-point type (F32, F16, BF16)"
    )]
    UnsupportedDtype {
        name: String,
        dtype: String,
        path: PathBuf,
    },

    #[error(
        "tensor `{name}` in {path} is not part of this model; the weights do not match config.json"
    )]
    UnexpectedTensor { name: String, path: PathBuf },

    #[error("{path} is not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    /// Bad arguments to forward/generate (wrong rank, token ids out of range, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("sequence needs {needed} positions but the model's context length is {max}")]
    ContextOverflow { needed: i64, max: i64 },

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
