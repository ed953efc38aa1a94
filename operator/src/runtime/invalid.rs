//! A spec the operator cannot act on, and the field to change: what every
//! kind's `validate` refuses with, and what its status shows as Stalled
//! (reason `InvalidSpec`), instead of a pod that starts, fails and retries with
//! the same error.

/// Longest DNS label: a Service name, a pod's hostname, a label value.
pub const MAX_DNS_LABEL: usize = 63;

/// A spec the operator cannot act on, and the field to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

/// Refuse a spec because of `field`.
pub fn invalid<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid {
        field: field.into(),
        message: message.into(),
    })
}
