//! Errors of the execution scheduler. gRPC codes are chosen in `api/status.rs`, not here.

use crate::cas::CasError;
use crate::digest::Digest;

/// What can go wrong while scheduling or running an action.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The Action, Command or input blobs named here are not in the CAS. Reported as
    /// FAILED_PRECONDITION with one `PreconditionFailure` violation per blob.
    #[error("{} blob(s) missing from the CAS, first {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
    MissingBlobs(Vec<Digest>),
    /// A request that can never succeed as sent (bad timeout, bad output path, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// No such operation (never existed, deleted, or expired after completion).
    #[error("operation {0:?} not found")]
    OperationNotFound(String),
    /// No such bot session (expired or never created); the bot should create a new one.
    #[error("bot session {0:?} not found")]
    BotSessionNotFound(String),
    /// No connected bot can satisfy the action's platform (the message names the property).
    #[error("{0}")]
    NoMatchingBot(String),
    /// The bot running the action stopped calling, too many times.
    #[error("action was lost with its bot {attempts} time(s) (last bot {bot}); giving up")]
    BotLost { bot: String, attempts: u32 },
    /// A client cancelled the operation.
    #[error("operation cancelled")]
    Cancelled,
    /// The bot reported a failure status (code and message as the bot sent them).
    #[error("{message}")]
    Bot {
        code: i32,
        message: String,
        details: Vec<prost_types::Any>,
    },
    /// A CAS/AC failure.
    #[error(transparent)]
    Cas(#[from] CasError),
}
