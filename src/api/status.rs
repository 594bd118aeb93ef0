//! The one place where errors of every layer become gRPC statuses.
//!
//! Codes follow the REAPI spec: malformed requests and digest mismatches are INVALID_ARGUMENT,
//! misses NOT_FOUND, a full store RESOURCE_EXHAUSTED, offsets past the end OUT_OF_RANGE.

use super::auth::AuthError;
use super::resource_name::ResourceNameError;
use crate::asset::{AssetError, FetchError};
use crate::cas::CasError;
use crate::digest::DigestError;
use crate::exec::ExecError;
use crate::proto::google::rpc;
use crate::storage::StorageError;
use crate::upstream::UpstreamError;
use prost::Message;
use std::fmt::Write;
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
        CasError::BlobNotFound(_)
        | CasError::ActionNotFound(_)
        | CasError::ChunksMissing { .. } => Code::NotFound,
        CasError::Forward(_) => Code::Unavailable,
        CasError::Exhausted(_) => Code::ResourceExhausted,
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

/// The gRPC code for an upstream-tier error: every failure of the upstream is UNAVAILABLE
/// (retryable, and not the local tier's fault); local failures keep their codes.
pub fn upstream_code(err: &UpstreamError) -> Code {
    match err {
        UpstreamError::Unavailable { .. }
        | UpstreamError::BreakerOpen { .. }
        | UpstreamError::BadData { .. }
        | UpstreamError::Busy { .. } => Code::Unavailable,
        UpstreamError::Refused { code, .. } => Code::from_i32(*code),
        UpstreamError::Local(e) => cas_code(e),
    }
}

/// A per-item status for an upstream-tier error in a batch response.
pub fn upstream_rpc_status(err: &UpstreamError) -> rpc::Status {
    rpc::Status {
        code: upstream_code(err) as i32,
        message: err.to_string(),
        details: vec![],
    }
}

impl From<UpstreamError> for Status {
    fn from(err: UpstreamError) -> Self {
        match err {
            UpstreamError::Local(e) => e.into(),
            UpstreamError::Refused {
                code,
                ref message,
                ref details,
                ..
            } if !details.is_empty() => {
                Status::with_details(Code::from_i32(code), message.clone(), details.clone())
            }
            e => Status::new(upstream_code(&e), e.to_string()),
        }
    }
}

/// The gRPC code for an execution error.
pub fn exec_code(err: &ExecError) -> Code {
    match err {
        ExecError::MissingBlobs(_) | ExecError::NoMatchingBot(_) => Code::FailedPrecondition,
        ExecError::InvalidArgument(_) => Code::InvalidArgument,
        ExecError::OperationNotFound(_) | ExecError::BotSessionNotFound(_) => Code::NotFound,
        ExecError::BotLost { .. } => Code::Unavailable,
        ExecError::Cancelled => Code::Cancelled,
        ExecError::Bot { code, .. } => Code::from_i32(*code),
        ExecError::Cas(e) => cas_code(e),
    }
}

/// Bytes of `PreconditionFailure` detail sent at most. The detail travels base64-encoded in the
/// `grpc-status-details-bin` trailer, and gRPC clients refuse trailers past 8 KiB (grpc-java's
/// default, Bazel's) or 16 KiB; 4 KiB of detail stays under both with the message. Clients
/// re-check all their inputs on FAILED_PRECONDITION, so a partial list costs nothing.
const MAX_VIOLATION_BYTES: usize = 4096;

/// The `google.rpc.Status` for an execution error, with REAPI details: one
/// `PreconditionFailure` violation (type MISSING, subject `blobs/{hash}/{size}`) per missing
/// blob, largest first, as many as fit [`MAX_VIOLATION_BYTES`]; the message says how many
/// were left out.
pub fn exec_rpc_status(err: &ExecError) -> rpc::Status {
    let mut message = err.to_string();
    let details = match err {
        ExecError::MissingBlobs(blobs) => {
            let mut sorted: Vec<_> = blobs.iter().collect();
            sorted.sort_by(|a, b| b.size.cmp(&a.size).then(a.hash.cmp(&b.hash)));
            let mut failure = rpc::PreconditionFailure::default();
            let mut bytes = 0;
            for d in &sorted {
                let v = rpc::precondition_failure::Violation {
                    r#type: "MISSING".into(),
                    subject: format!("blobs/{}", d.resource_path()),
                    description: String::new(),
                };
                bytes += v.encoded_len() + 3;
                if bytes > MAX_VIOLATION_BYTES {
                    break;
                }
                failure.violations.push(v);
            }
            let left = sorted.len() - failure.violations.len();
            if left > 0 {
                let listed = failure.violations.len();
                let _ = write!(
                    message,
                    "; {listed} listed as violations (largest first), {left} more not listed"
                );
            }
            vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.PreconditionFailure".into(),
                value: failure.encode_to_vec(),
            }]
        }
        ExecError::Bot { details, .. } => details.clone(),
        _ => vec![],
    };
    rpc::Status {
        code: exec_code(err) as i32,
        message,
        details,
    }
}

impl From<ExecError> for Status {
    fn from(err: ExecError) -> Self {
        let status = exec_rpc_status(&err);
        if status.details.is_empty() {
            return Status::new(exec_code(&err), status.message);
        }
        Status::with_details(
            exec_code(&err),
            status.message.clone(),
            status.encode_to_vec().into(),
        )
    }
}

/// The status of a refused request: UNAUTHENTICATED without a known token, PERMISSION_DENIED
/// (naming the missing right) for a known caller lacking it.
pub fn auth_status(err: &AuthError) -> Status {
    match err {
        AuthError::NoToken { .. } | AuthError::UnknownToken => {
            Status::unauthenticated(err.to_string())
        }
        AuthError::Denied { .. } | AuthError::UnknownMethod { .. } => {
            Status::permission_denied(err.to_string())
        }
    }
}

/// The inline status of a fetch that failed outside kiln's control, with the spec's codes:
/// NOT_FOUND at origin, PERMISSION_DENIED for a refused origin, DEADLINE_EXCEEDED, ABORTED for
/// a failed checksum, RESOURCE_EXHAUSTED for a body over the size limit, UNAVAILABLE for an
/// origin that cannot be reached or answers with an error.
pub fn fetch_rpc_status(err: &FetchError) -> rpc::Status {
    let code = match err {
        FetchError::NotFound(_) => Code::NotFound,
        FetchError::Denied(_) => Code::PermissionDenied,
        FetchError::Timeout(_) => Code::DeadlineExceeded,
        FetchError::TooLarge(_) => Code::ResourceExhausted,
        FetchError::ChecksumMismatch(_) => Code::Aborted,
        FetchError::Unavailable(_) => Code::Unavailable,
        FetchError::Cas(e) => cas_code(e),
    };
    rpc::Status {
        code: code as i32,
        message: err.to_string(),
        details: vec![],
    }
}

impl From<AssetError> for Status {
    fn from(err: AssetError) -> Self {
        match err {
            AssetError::Cas(e) => e.into(),
            AssetError::UnsupportedQualifiers(ref names) => {
                // The spec asks for a BadRequest detail naming each unsupported qualifier: as
                // many as fit half the trailer budget (the message, up to 8 names of at most
                // 64 bytes each, travels twice: in `grpc-message` and inside the details).
                let mut detail = rpc::BadRequest::default();
                let mut bytes = 0;
                for n in names {
                    let v = rpc::bad_request::FieldViolation {
                        field: "qualifiers.name".into(),
                        description: format!("{n:?} not supported"),
                        ..Default::default()
                    };
                    bytes += v.encoded_len() + 3;
                    if bytes > MAX_VIOLATION_BYTES / 2 {
                        break;
                    }
                    detail.field_violations.push(v);
                }
                let status = rpc::Status {
                    code: Code::InvalidArgument as i32,
                    message: err.to_string(),
                    details: vec![prost_types::Any {
                        type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
                        value: detail.encode_to_vec(),
                    }],
                };
                Status::with_details(
                    Code::InvalidArgument,
                    err.to_string(),
                    status.encode_to_vec().into(),
                )
            }
            AssetError::InvalidArgument(_) | AssetError::NotInCas(_) => {
                Status::invalid_argument(err.to_string())
            }
        }
    }
}
