//! The errors with which a worker can fail to start.

use rota_shared::ErrorCode;
use thiserror::Error;

/// Why [`crate::Worker::start`] failed. Once started, a worker does not fail: it logs, retries
/// and re-acquires.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// A configuration value is not usable.
    #[error("invalid worker configuration: {0}")]
    InvalidConfig(String),
    /// NATS could not be reached, or a subscription could not be made.
    #[error("NATS: {0}")]
    Connect(String),
    /// No server accepted the worker: wrong secret (`UNAUTHORIZED`), unknown app
    /// (`NOT_FOUND`), or no server answering (`UNAVAILABLE`).
    #[error("cannot acquire a server: {code}: {message}")]
    Acquire { code: ErrorCode, message: String },
}

impl WorkerError {
    /// The error's stable code, in the protocol's vocabulary.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidConfig(_) => ErrorCode::InvalidArgument,
            Self::Connect(_) => ErrorCode::Unavailable,
            Self::Acquire { code, .. } => *code,
        }
    }
}
