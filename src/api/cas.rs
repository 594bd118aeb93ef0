//! ContentAddressableStorage: FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs, GetTree
//! (SplitBlob and SpliceBlob are in `split.rs`).

use super::status::{rpc_ok, rpc_status, upstream_rpc_status};
use super::{CacheServices, validate_instance};
use crate::cas::{Blob, CasError, StreamedWalk, compression};
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorage;
use crate::proto::reapi::{
    BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, FindMissingBlobsRequest, FindMissingBlobsResponse, GetTreeRequest,
    GetTreeResponse, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse,
    batch_read_blobs_response, batch_update_blobs_response, compressor,
};
use bytes::Bytes;
use futures::Stream;
use std::pin::Pin;
use tonic::{Request, Response, Status};

/// Directories per GetTree page when the client does not choose.
const DEFAULT_TREE_PAGE: usize = 1000;

pub(super) struct CasService {
    state: CacheServices,
}

impl CasService {
    pub(super) fn new(state: CacheServices) -> Self {
        Self { state }
    }

    fn check_batch_total(&self, total: u64, what: &str) -> Result<(), Status> {
        let max = self.state.limits.max_batch_total_size_bytes;
        if total > max {
            return Err(Status::invalid_argument(format!(
                "{what} totals {total} bytes, over the advertised max_batch_total_size_bytes of {max}; \
                 use ByteStream for large blobs"
            )));
        }
        Ok(())
    }

    /// Checks one batch item and decompresses it if needed. The declared size is checked
    /// against the largest blob the store takes before any decompression starts.
    fn decode_one(
        function: DigestFunction,
        max_blob: u64,
        req: crate::proto::reapi::batch_update_blobs_request::Request,
    ) -> Result<(Digest, Bytes), CasError> {
        let digest = Digest::from_field(function, req.digest.as_ref(), "requests.digest")?;
        if digest.size > max_blob {
            return Err(CasError::InvalidArgument(format!(
                "blob {digest} is larger than the max blob size ({max_blob} bytes)"
            )));
        }
        let data = match compressor::Value::try_from(req.compressor) {
            Ok(compressor::Value::Identity) => req.data,
            Ok(compressor::Value::Zstd) => compression::decompress_exact(&req.data, &digest)?,
            _ => {
                return Err(CasError::InvalidArgument(format!(
                    "unsupported compressor {} for {digest}; supported: IDENTITY, ZSTD",
                    req.compressor
                )));
            }
        };
        Ok((digest, data))
    }

    /// Bounds the memory a batch may expand to: compressed items count at their declared
    /// (uncompressed) size, which together may not pass the largest message accepted.
    fn check_declared_total(
        &self,
        requests: &[crate::proto::reapi::batch_update_blobs_request::Request],
    ) -> Result<(), Status> {
        let declared: u64 = requests
            .iter()
            .filter(|r| r.compressor != compressor::Value::Identity as i32)
            .map(|r| r.digest.as_ref().map_or(0, |d| d.size_bytes.max(0) as u64))
            .fold(0u64, u64::saturating_add);
        let max = self.state.limits.max_message_bytes as u64;
        if declared > max {
            return Err(Status::invalid_argument(format!(
                "BatchUpdateBlobs compressed items declare {declared} uncompressed bytes, over \
                 the {max} bytes one request may expand to (cache.max_message_bytes); use \
                 ByteStream for large blobs"
            )));
        }
        Ok(())
    }
}

type TreeStream = Pin<Box<dyn Stream<Item = Result<GetTreeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let req = request.into_inner();
        validate_instance(&req.instance_name)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digests = req
            .blob_digests
            .iter()
            .map(|d| Digest::from_proto(function, d))
            .collect::<Result<Vec<_>, _>>()?;
        let mut missing = self.state.cas.find_missing(&digests)?;
        if let Some(up) = &self.state.upstream
            && !missing.is_empty()
        {
            missing = up.find_missing(&req.instance_name, missing).await;
        }
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(Digest::to_proto).collect(),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let req = request.into_inner();
        validate_instance(&req.instance_name)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let total: u64 = req.requests.iter().map(|r| r.data.len() as u64).sum();
        self.check_batch_total(total, "BatchUpdateBlobs request data")?;
        self.check_declared_total(&req.requests)?;
        let max_blob = self.state.cas.max_blob_size();
        // Valid blobs are stored with one put_many, so the engine commits them in one sync
        // round instead of one per blob.
        let mut responses = Vec::with_capacity(req.requests.len());
        let mut items = Vec::new();
        let mut positions = Vec::new();
        for r in req.requests {
            let digest = r.digest.clone();
            match Self::decode_one(function, max_blob, r) {
                Ok(item) => {
                    positions.push(responses.len());
                    items.push(item);
                    responses.push(batch_update_blobs_response::Response {
                        digest,
                        status: None,
                    });
                }
                Err(e) => responses.push(batch_update_blobs_response::Response {
                    digest,
                    status: Some(rpc_status(&e)),
                }),
            }
        }
        let stored_digests: Vec<Digest> = items.iter().map(|(d, _)| *d).collect();
        let results = self.state.cas.put_many(items).await;
        let mut forward = Vec::new();
        for ((pos, result), d) in positions.into_iter().zip(results).zip(stored_digests) {
            responses[pos].status = Some(match result {
                Ok(()) => {
                    forward.push((pos, d));
                    rpc_ok()
                }
                Err(e) => rpc_status(&e),
            });
        }
        if let Some(up) = &self.state.upstream {
            let digests: Vec<Digest> = forward.iter().map(|(_, d)| *d).collect();
            // `sync`: not acknowledged until the upstream has them too.
            if let Err(e) = up.wrote_blobs(&req.instance_name, &digests).await {
                for (pos, d) in forward {
                    if !d.is_empty_blob() {
                        responses[pos].status = Some(upstream_rpc_status(&e));
                    }
                }
            }
        }
        Ok(Response::new(BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let req = request.into_inner();
        validate_instance(&req.instance_name)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digests = req
            .digests
            .iter()
            .map(|d| Digest::from_proto(function, d))
            .collect::<Result<Vec<_>, _>>()?;
        self.check_batch_total(
            digests.iter().map(|d| d.size).fold(0, u64::saturating_add),
            "BatchReadBlobs requested sizes",
        )?;
        let zstd_ok = req
            .acceptable_compressors
            .contains(&(compressor::Value::Zstd as i32));
        // Local reads first, exactly as without an upstream; only the misses are then fetched
        // from it (one batched call) and read again. What it cannot provide keeps its status.
        let cas = &self.state.cas;
        let get = async |d: &Digest| cas.read(d).await?.ok_or(CasError::BlobNotFound(*d));
        // Cold blobs are read from disk together, not one after another, and off the async
        // runtime. Should the store fail as a whole, each digest is read alone and gets its
        // own status.
        let mut read: Vec<Result<Blob, CasError>> = if let Ok(found) = cas.read_many(&digests).await
        {
            digests
                .iter()
                .zip(found)
                .map(|(d, b)| b.ok_or(CasError::BlobNotFound(*d)))
                .collect()
        } else {
            let mut each = Vec::with_capacity(digests.len());
            for d in &digests {
                each.push(get(d).await);
            }
            each
        };
        let mut fetched = std::collections::HashMap::new();
        if let Some(up) = &self.state.upstream {
            let missing: Vec<Digest> = digests
                .iter()
                .zip(&read)
                .filter(|(_, r)| matches!(r, Err(CasError::BlobNotFound(_))))
                .map(|(d, _)| *d)
                .collect();
            if !missing.is_empty() {
                fetched = up.ensure(&req.instance_name, &missing).await;
                for (d, r) in digests.iter().zip(read.iter_mut()) {
                    if matches!(fetched.get(d), Some(Ok(true))) {
                        *r = get(d).await;
                    }
                }
            }
        }
        let mut responses = Vec::with_capacity(digests.len());
        for (d, r) in digests.into_iter().zip(read) {
            if let Some(Err(e)) = fetched.get(&d) {
                responses.push(batch_read_blobs_response::Response {
                    digest: Some(d.to_proto()),
                    data: Bytes::new(),
                    compressor: compressor::Value::Identity as i32,
                    status: Some(upstream_rpc_status(e)),
                });
                continue;
            }
            // A blob stored compressed is sent as its stored frames, not compressed again.
            let (data, comp) = match r {
                Ok(blob) if zstd_ok && blob.len() > 512 => (
                    compression::compress_blob(&blob).map_err(CasError::from),
                    compressor::Value::Zstd,
                ),
                Ok(blob) => (
                    blob.to_bytes().map_err(CasError::from),
                    compressor::Value::Identity,
                ),
                Err(e) => (Err(e), compressor::Value::Identity),
            };
            let (data, comp, status) = match data {
                Ok(data) => (data, comp, rpc_ok()),
                Err(e) => (Bytes::new(), compressor::Value::Identity, rpc_status(&e)),
            };
            responses.push(batch_read_blobs_response::Response {
                digest: Some(d.to_proto()),
                data,
                compressor: comp as i32,
                status: Some(status),
            });
        }
        Ok(Response::new(BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let req = request.into_inner();
        validate_instance(&req.instance_name)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let root = Digest::from_field(function, req.root_digest.as_ref(), "root_digest")?;
        if req.page_size < 0 {
            return Err(Status::invalid_argument(format!(
                "negative page_size {}",
                req.page_size
            )));
        }
        let page_size = if req.page_size == 0 {
            DEFAULT_TREE_PAGE
        } else {
            req.page_size as usize
        };
        if let Some(up) = &self.state.upstream {
            up.ensure_tree(&req.instance_name, &root).await?;
        }
        // The first page is computed here so that a bad root or token fails the call itself.
        // The walk is kept, so each later page continues where the last stopped; a stream
        // that ends before the walk does parks it for a call resuming with its token.
        let cas = self.state.cas.clone();
        let (walk, first) = StreamedWalk::start(
            &cas,
            self.state.trees.clone(),
            req.instance_name,
            root,
            req.page_token,
            page_size,
            crate::cas::STALLED_WALK,
        )
        .await?;
        let stream = async_stream::try_stream! {
            let mut page = first;
            loop {
                let token = page.next_page_token.clone();
                yield GetTreeResponse { directories: page.directories, next_page_token: token.clone() };
                if token.is_empty() {
                    break;
                }
                page = walk.next_page(&cas, page_size).await?;
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn split_blob(
        &self,
        request: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        super::split::split_blob(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn splice_blob(
        &self,
        request: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        super::split::splice_blob(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }
}
