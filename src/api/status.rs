//! The one place where errors of every layer become gRPC statuses.
//!
//! Codes follow the REAPI spec: malformed requests and digest mismatches are INVALID_ARGUMENT,
//! misses NOT_FOUND, a full store RESOURCE_EXHAUSTED, offsets past the end OUT_OF_RANGE.

use super::resource_name::ResourceNameError;
use crate::cas::CasError;
use crate::digest::DigestError;
use crate::proto::google::rpc;
use crate::storage::StorageError;
use tonic::{Code, Status};

/// The gRPC code for a CAS/AC error.
pub fn cas_code(err: &CasError) -> Code {
    match err {
        CasError::Digest(_)
        | CasError::DigestMismatch { .. }
        | CasError::TooMuchData { .. }
        | CasError::BadMessage { .. }
        | CasError::BadCompression { .. }
        | CasError::InvalidArgument(_) => Code::InvalidArgument,
        CasError::BlobNotFound(_) | CasError::ActionNotFound(_) => Code::NotFound,
        CasError::Storage(e) => storage_code(e),
    }
}

/// The gRPC code for a storage error.
pub fn storage_code(err: &StorageError) -> Code {
    match err {
        StorageError::Full(_) => Code::ResourceExhausted,
        StorageError::TooLarge { .. } | StorageError::LengthMismatch { .. } => {
            Code::InvalidArgument
        }
        StorageError::Corrupt { .. } => Code::DataLoss,
        StorageError::Poisoned(_) | StorageError::Closed => Code::Unavailable,
        StorageError::Config(_) => Code::FailedPrecondition,
        StorageError::Io(_) => Code::Internal,
    }
}

/// A per-item status (`google.rpc.Status`) for batch responses.
pub fn rpc_status(err: &CasError) -> rpc::Status {
    rpc::Status {
        code: cas_code(err) as i32,
        message: err.to_string(),
        details: vec![],
    }
}

/// The OK per-item status.
pub fn rpc_ok() -> rpc::Status {
    rpc::Status {
        code: Code::Ok as i32,
        message: String::new(),
        details: vec![],
    }
}

impl From<CasError> for Status {
    fn from(err: CasError) -> Self {
        if let CasError::Storage(
            StorageError::Io(_) | StorageError::Poisoned(_) | StorageError::Corrupt { .. },
        ) = &err
        {
            tracing::error!(error = %err, "storage failure");
        }
        Status::new(cas_code(&err), err.to_string())
    }
}

impl From<StorageError> for Status {
    fn from(err: StorageError) -> Self {
        CasError::Storage(err).into()
    }
}

impl From<DigestError> for Status {
    fn from(err: DigestError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

impl From<ResourceNameError> for Status {
    fn from(err: ResourceNameError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}
