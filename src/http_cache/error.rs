//! Errors of the HTTP cache API. HTTP statuses are chosen in `status.rs` only.

use super::path::PathError;
use crate::cas::CasError;
use std::time::Duration;

/// What can go wrong serving one HTTP cache request.
#[derive(Debug, thiserror::Error)]
pub enum HttpCacheError {
    /// The path names no cache entry.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A method other than GET, HEAD and PUT.
    #[error("method {0} is not allowed: use GET, HEAD or PUT")]
    Method(String),
    /// Nothing stored under the path (or an action result whose outputs are gone).
    #[error("{0} not found")]
    NotFound(String),
    /// No credentials (or unknown ones) where the request needs a right.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller lacking the right.
    #[error("{principal} lacks the `{right}` right needed for {what}")]
    Forbidden {
        principal: String,
        right: &'static str,
        what: &'static str,
    },
    /// A body (declared or read so far) over a limit.
    #[error("request body of {size} bytes exceeds {limit} bytes ({what})")]
    TooLarge {
        size: u64,
        limit: u64,
        what: &'static str,
    },
    /// A body that is not what the path needs.
    #[error("{0}")]
    BadBody(String),
    /// A `/cas/` body whose SHA-256 differs from the path's.
    #[error(
        "body does not match the path: its SHA-256 is {actual} ({size} bytes), the path names {expected}"
    )]
    DigestMismatch {
        expected: String,
        actual: String,
        size: u64,
    },
    /// A `Content-Encoding` other than identity and zstd.
    #[error("unsupported content-encoding {0:?}: send identity or zstd")]
    Encoding(String),
    /// The client stopped sending its body.
    #[error("request body stalled for more than {0:?}")]
    Timeout(Duration),
    /// The connection failed while the body was read.
    #[error("reading the request body failed: {0}")]
    Body(String),
    /// The upload memory budget (`http_cache.max_buffer_bytes`) is spent.
    #[error("too many uploads in progress (http_cache.max_buffer_bytes); retry later")]
    Busy,
    /// A CAS or action-cache error.
    #[error(transparent)]
    Cas(#[from] CasError),
}
