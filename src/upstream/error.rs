//! Errors of the upstream tier. Every failure of the upstream itself names it, so an operator
//! reading a client's error knows which service to look at; `api/status.rs` maps them all to
//! UNAVAILABLE (a retryable condition), local failures keep their own codes.

use crate::cas::CasError;
use crate::digest::Digest;

/// What can go wrong when reading through or forwarding to the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream could not be reached, timed out, or failed the call.
    #[error("upstream {endpoint} unavailable: {reason}")]
    Unavailable { endpoint: String, reason: String },
    /// The circuit breaker is open: recent calls failed, so this one was not tried.
    #[error(
        "upstream {endpoint} unavailable: circuit breaker open after repeated failures (next \
         probe in {retry_in_ms} ms)"
    )]
    BreakerOpen { endpoint: String, retry_in_ms: u64 },
    /// The upstream answered with bytes that do not match the digest asked for; nothing was
    /// stored or served as complete.
    #[error("upstream {endpoint} sent bad data for {digest}: {reason}")]
    BadData {
        endpoint: String,
        digest: Digest,
        reason: String,
    },
    /// Too many upstream fetches in progress (the single-flight table is full).
    #[error("upstream {endpoint} unavailable: {limit} fetches already in progress")]
    Busy { endpoint: String, limit: usize },
    /// The upstream answered a forwarded call with an error about the request itself
    /// (FAILED_PRECONDITION for missing inputs, INVALID_ARGUMENT..): relayed with its code and
    /// details, so the client sees what the upstream said.
    #[error("upstream {endpoint}: {message}")]
    Refused {
        endpoint: String,
        code: i32,
        message: String,
        details: bytes::Bytes,
    },
    /// A failure of the local tier while storing or reading what the upstream sent.
    #[error(transparent)]
    Local(#[from] CasError),
}

impl UpstreamError {
    /// Whether this failure says the upstream is unhealthy (counted by the breaker), as
    /// opposed to a local problem or a refusal of one request.
    pub fn is_upstream_fault(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::BadData { .. })
    }
}

impl UpstreamError {
    /// The same failure again, for each of several requests one upstream call served.
    #[must_use]
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Unavailable { endpoint, reason } => Self::Unavailable {
                endpoint: endpoint.clone(),
                reason: reason.clone(),
            },
            Self::BreakerOpen {
                endpoint,
                retry_in_ms,
            } => Self::BreakerOpen {
                endpoint: endpoint.clone(),
                retry_in_ms: *retry_in_ms,
            },
            Self::BadData {
                endpoint,
                digest,
                reason,
            } => Self::BadData {
                endpoint: endpoint.clone(),
                digest: *digest,
                reason: reason.clone(),
            },
            Self::Busy { endpoint, limit } => Self::Busy {
                endpoint: endpoint.clone(),
                limit: *limit,
            },
            Self::Refused {
                endpoint,
                code,
                message,
                details,
            } => Self::Refused {
                endpoint: endpoint.clone(),
                code: *code,
                message: message.clone(),
                details: details.clone(),
            },
            Self::Local(e) => Self::Local(crate::cas::CasError::InvalidArgument(e.to_string())),
        }
    }
}
