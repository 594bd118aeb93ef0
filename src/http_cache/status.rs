//! The one place where HTTP cache errors become HTTP statuses, and error responses are built.
//!
//! Bazel's and ccache's HTTP clients read the status only (404 is a miss, any other failure an
//! error); the plain-text body is for people and logs.

use super::error::HttpCacheError;
use super::path::PathError;
use crate::cas::CasError;
use crate::storage::StorageError;
use hyper::StatusCode;

/// The HTTP status for an error.
pub fn status(err: &HttpCacheError) -> StatusCode {
    match err {
        HttpCacheError::Path(PathError::NotCache) | HttpCacheError::NotFound(_) => {
            StatusCode::NOT_FOUND
        }
        HttpCacheError::Path(PathError::TooLong(_)) => StatusCode::URI_TOO_LONG,
        HttpCacheError::Path(_)
        | HttpCacheError::BadBody(_)
        | HttpCacheError::DigestMismatch { .. }
        | HttpCacheError::Body(_) => StatusCode::BAD_REQUEST,
        HttpCacheError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
        HttpCacheError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        HttpCacheError::Forbidden { .. } => StatusCode::FORBIDDEN,
        HttpCacheError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        HttpCacheError::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        HttpCacheError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        HttpCacheError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        HttpCacheError::Cas(e) => cas_status(e),
    }
}

fn cas_status(err: &CasError) -> StatusCode {
    match err {
        CasError::Digest(_)
        | CasError::DigestMismatch { .. }
        | CasError::TooMuchData { .. }
        | CasError::BadMessage { .. }
        | CasError::BadCompression { .. }
        | CasError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        CasError::BlobNotFound(_)
        | CasError::ActionNotFound(_)
        | CasError::ChunksMissing { .. } => StatusCode::NOT_FOUND,
        CasError::Forward(_) => StatusCode::BAD_GATEWAY,
        CasError::Exhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
        CasError::Storage(e) => match e {
            StorageError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            StorageError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StorageError::LengthMismatch { .. } => StatusCode::BAD_REQUEST,
            StorageError::Poisoned(_) | StorageError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            StorageError::Corrupt { .. } | StorageError::Config(_) | StorageError::Io(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        },
    }
}

/// Whether an error is the server's fault (logged at warn) rather than the client's.
pub fn is_server_error(err: &HttpCacheError) -> bool {
    status(err).is_server_error()
}
