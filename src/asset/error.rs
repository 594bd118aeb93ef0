//! Errors of the Remote Asset layer. gRPC codes are chosen in `api/status.rs`, not here.
//!
//! Two kinds, as the spec separates them: [`AssetError`] is a request the server refuses
//! (returned as the RPC's status), [`FetchError`] a failure outside the server's control
//! (the origin's), returned inline in the response's `status` with the URI it came from.

use crate::cas::CasError;
use crate::digest::Digest;
use std::fmt::Write;

/// A refused Fetch or Push request.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// A malformed request: no URI, duplicate qualifiers, a bad checksum or timestamp.
    #[error("{0}")]
    InvalidArgument(String),
    /// Qualifiers kiln cannot honour on a download (listed by name, the first
    /// [`NAMES_IN_MESSAGE`] in the message).
    #[error("unsupported qualifiers for a download: {}", name_list(.0))]
    UnsupportedQualifiers(Vec<String>),
    /// A push naming content the CAS does not hold (clients must upload it first).
    #[error("cannot push {0}: it is not in the CAS; upload it first")]
    NotInCas(Digest),
    /// A failure of the CAS below.
    #[error(transparent)]
    Cas(#[from] CasError),
}

/// Unsupported qualifier names a message lists at most (a status travels in HTTP/2 trailers,
/// which clients cap at 8-16 KiB).
pub const NAMES_IN_MESSAGE: usize = 8;

/// The first [`NAMES_IN_MESSAGE`] of `names`, and how many more there are.
fn name_list(names: &[String]) -> String {
    let shown = &names[..names.len().min(NAMES_IN_MESSAGE)];
    let mut s = shown.join(", ");
    if names.len() > shown.len() {
        let _ = write!(s, " and {} more", names.len() - shown.len());
    }
    s
}

/// Why a download from origin failed (or was not attempted).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The origin answered 404/410, or no pushed asset matched and kiln does not download it.
    #[error("{0}")]
    NotFound(String),
    /// A scheme or host kiln may not download from, or the origin refused (401/403).
    #[error("{0}")]
    Denied(String),
    /// The download took longer than allowed.
    #[error("{0}")]
    Timeout(String),
    /// The body is larger than `remote_asset.max_download_bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// The downloaded bytes do not match a `checksum.sri` qualifier: nothing was stored.
    #[error("{0}")]
    ChecksumMismatch(String),
    /// The origin could not be reached, or answered with an error.
    #[error("{0}")]
    Unavailable(String),
    /// Storing the downloaded bytes failed.
    #[error(transparent)]
    Cas(#[from] CasError),
}
