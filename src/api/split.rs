//! SplitBlob and SpliceBlob: request validation and answers; the work is `cas::split`.

use super::{CacheServices, validate_instance};
use crate::cas::chunking;
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi::{
    CacheCapabilities, FastCdc2020Params, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest,
    SplitBlobResponse, chunking_function,
};
use tonic::Status;

/// What Capabilities says about splitting: both RPCs, with FastCDC 2020 and its parameters.
pub(super) fn advertise(cache: &mut CacheCapabilities) {
    cache.split_blob_support = true;
    cache.splice_blob_support = true;
    cache.fast_cdc_2020_params = Some(FastCdc2020Params {
        avg_chunk_size_bytes: chunking::AVG_CHUNK_BYTES,
        seed: chunking::SEED,
    });
}

/// Checks a request's `chunking_function`: any known value is accepted (the spec lets the
/// server choose for a split and only verify the concatenation of a splice), unknown numbers
/// are not.
fn check_chunking(value: i32) -> Result<(), Status> {
    chunking_function::Value::try_from(value)
        .map(|_| ())
        .map_err(|_| Status::invalid_argument(format!("unknown chunking_function {value}")))
}

pub(super) async fn split_blob(
    state: &CacheServices,
    req: SplitBlobRequest,
) -> Result<SplitBlobResponse, Status> {
    validate_instance(&req.instance_name)?;
    let function = DigestFunction::from_proto(req.digest_function)?;
    check_chunking(req.chunking_function)?;
    let blob = Digest::from_field(function, req.blob_digest.as_ref(), "blob_digest")?;
    let list = state.cas.split(&blob).await?;
    Ok(SplitBlobResponse {
        chunk_digests: list.chunks.iter().map(Digest::to_proto).collect(),
        chunking_function: chunking_function::Value::FastCdc2020 as i32,
    })
}

pub(super) async fn splice_blob(
    state: &CacheServices,
    req: SpliceBlobRequest,
) -> Result<SpliceBlobResponse, Status> {
    validate_instance(&req.instance_name)?;
    let function = DigestFunction::from_proto(req.digest_function)?;
    check_chunking(req.chunking_function)?;
    let blob = Digest::from_field(function, req.blob_digest.as_ref(), "blob_digest")?;
    let chunks = req
        .chunk_digests
        .iter()
        .map(|d| Digest::from_proto(function, d))
        .collect::<Result<Vec<_>, _>>()?;
    state.cas.splice(blob, &chunks).await?;
    Ok(SpliceBlobResponse {
        blob_digest: Some(blob.to_proto()),
    })
}
