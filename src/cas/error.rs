//! Errors of the CAS/AC layer. gRPC codes are chosen in `api/status.rs`, not here.

use crate::digest::{Digest, DigestError};
use crate::storage::StorageError;

/// What can go wrong in CAS and action-cache operations.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// A malformed digest in a request.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// Uploaded bytes whose hash or size differ from the digest they were sent under.
    #[error("uploaded data does not match digest {expected}: got {actual_hash}/{actual_size}")]
    DigestMismatch {
        expected: Digest,
        actual_hash: String,
        actual_size: u64,
    },
    /// The client sent more bytes than the digest's size.
    #[error("upload for {expected} exceeds its declared size")]
    TooMuchData { expected: Digest },
    /// A blob that is not (or no longer) stored.
    #[error("blob {0} not found")]
    BlobNotFound(Digest),
    /// A splice naming chunks the CAS does not hold.
    #[error("cannot splice {blob}: {count} of its chunks are not in the CAS (first: {first})")]
    ChunksMissing {
        blob: Digest,
        count: usize,
        first: Digest,
    },
    /// An action-cache miss (also: a hit whose outputs are no longer all present).
    #[error("no action result for {0}")]
    ActionNotFound(Digest),
    /// Bytes that do not decode as the message they must be.
    #[error("invalid {what}: {reason}")]
    BadMessage { what: &'static str, reason: String },
    /// Compressed data that does not decompress to the declared size.
    #[error("invalid compressed data for {digest}: {reason}")]
    BadCompression { digest: Digest, reason: String },
    /// Any other request problem, with its explanation.
    #[error("{0}")]
    InvalidArgument(String),
    /// The server is at a bound it shares between requests (the directories all GetTree
    /// walks hold): another time may succeed.
    #[error("{0}")]
    Exhausted(String),
    /// Stored locally, but an [`super::UpdateHook`] (the upstream tier) could not pass it on.
    #[error("{0}")]
    Forward(String),
    /// A failure of the storage engine.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
