//! Errors of `kiln worker`.

use crate::digest::DigestError;

/// What can go wrong in the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The server could not be reached.
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    /// A gRPC call failed.
    #[error("{call}: {status}")]
    Rpc {
        call: &'static str,
        status: tonic::Status,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// An input blob is not in the CAS (reported as FAILED_PRECONDITION with the digest).
    #[error("input blob {0} is missing from the CAS")]
    MissingInput(crate::digest::Digest),
    /// Data from the server that does not make sense (bad digest, undecodable message).
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// The action sandbox could not be set up (see `sandbox.rs`).
    #[error("action sandbox: {0}")]
    Sandbox(String),
    /// An output path or symlink that would leave the action directory.
    #[error("output {path:?} escapes the action directory: {reason}")]
    Escape { path: String, reason: String },
}

impl From<DigestError> for WorkerError {
    fn from(e: DigestError) -> Self {
        WorkerError::Invalid {
            what: "digest",
            reason: e.to_string(),
        }
    }
}

/// Wraps an io error with a description.
pub(crate) fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> WorkerError {
    let what = what.to_string();
    move |source| WorkerError::Io { what, source }
}

/// Wraps a gRPC status with the call's name.
pub(crate) fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> WorkerError {
    move |status| WorkerError::Rpc { call, status }
}
