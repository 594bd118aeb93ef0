//! `GET`, `HEAD` and `PUT` of `/cas/<sha256>`: the CAS that gRPC serves, named by hash alone.
//!
//! An upload with a plain `Content-Length` streams through the CAS's verified upload (hashed
//! as it arrives, published only if hash and size match the path), so its size is limited by
//! `storage.max_blob_size_bytes` only and its memory by one store part. A chunked or zstd body
//! has no size known in advance: it is read into memory under
//! `http_cache.max_buffered_body_bytes`, hashed and stored the same way.

use super::HttpCache;
use super::body;
use super::encoding::{self, Encoding};
use super::error::HttpCacheError;
use super::response::{self, Body};
use crate::cas::CasError;
use crate::digest::{Digest, DigestFunction};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Response, StatusCode};

impl HttpCache {
    /// `GET`/`HEAD /cas/<hash>`: the blob (zstd-encoded when the client accepts it), or 404.
    pub(super) async fn get_cas(
        &self,
        headers: &HeaderMap,
        hash: [u8; 32],
        head: bool,
    ) -> Result<Response<Body>, HttpCacheError> {
        let s = &self.inner;
        let digest = by_hash(hash);
        let Some(blob) = s.cas.read_by_hash(&digest).await? else {
            return Err(HttpCacheError::NotFound(format!(
                "blob {}",
                hex::encode(hash)
            )));
        };
        // Compressing needs the blob in one buffer: only within the buffered-body limit and
        // the memory budget (held while compressing); otherwise the blob is sent as is.
        let mut held = None;
        if !head
            && encoding::accepts_zstd(headers)
            && blob.len() <= s.settings.max_buffered
            && s.budget.grow(&mut held, blob.len()).is_ok()
        {
            // Stored frames go out as they are.
            let z = crate::cas::compression::compress_blob(&blob).map_err(CasError::from)?;
            drop(held);
            s.metrics.bytes_sent.inc_by(z.len() as u64);
            return Ok(Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_ENCODING, "zstd")
                .header(CONTENT_LENGTH, z.len())
                .body(response::full(z))
                .expect("static response parts are valid"));
        }
        if head {
            return Ok(response::ok(blob.len(), response::empty()));
        }
        s.metrics.bytes_sent.inc_by(blob.len());
        // A stored piece that does not decompress ends the body short of its
        // Content-Length: the client sees a failed download, never wrong bytes.
        let parts = blob
            .read(0, blob.len(), s.settings.read_chunk)
            .map_while(Result::ok);
        Ok(response::ok(blob.len(), response::parts(parts)))
    }

    /// `PUT /cas/<hash>`: stores the body if its SHA-256 and size match the path.
    pub(super) async fn put_cas(
        &self,
        headers: &HeaderMap,
        mut body: Incoming,
        hash: [u8; 32],
    ) -> Result<Response<Body>, HttpCacheError> {
        let s = &self.inner;
        let encoding = encoding::content_encoding(headers)?;
        let declared = body::declared_length(headers)?;
        let max_blob = s.cas.max_blob_size();
        if let (Encoding::Identity, Some(len)) = (encoding, declared) {
            if len > max_blob {
                return Err(HttpCacheError::TooLarge {
                    size: len,
                    limit: max_blob,
                    what: "storage.max_blob_size_bytes",
                });
            }
            let digest = Digest {
                size: len,
                ..by_hash(hash)
            };
            let mut reservation = None;
            s.reserve(&mut reservation, s.settings.part_bytes.min(len))?;
            let Some(mut upload) = s.cas.begin_upload(digest).await? else {
                // Already stored (the path's hash names it): the body is not needed.
                return Ok(response::stored());
            };
            while let Some(chunk) = body::next_chunk(&mut body, s.settings.idle).await? {
                s.metrics.bytes_received.inc_by(chunk.len() as u64);
                upload.write(chunk).await?;
            }
            upload.finish().await?;
            return Ok(response::stored());
        }
        let limit = s.settings.max_buffered.min(max_blob);
        let what = "http_cache.max_buffered_body_bytes";
        let buffered = read(s, &mut body, declared, limit, what).await?;
        s.metrics.bytes_received.inc_by(buffered.data.len() as u64);
        let mut reservation = buffered.reservation;
        let data = match encoding {
            Encoding::Identity => buffered.data,
            Encoding::Zstd => encoding::decompress(buffered.data, limit, &mut |n| {
                s.reserve(&mut reservation, n)
            })?,
        };
        let actual = DigestFunction::Sha256.digest_of(&data);
        if actual.hash != hash {
            return Err(HttpCacheError::DigestMismatch {
                expected: hex::encode(hash),
                actual: actual.hash_hex(),
                size: actual.size,
            });
        }
        s.cas.put_hashed(&actual, data).await?;
        Ok(response::stored())
    }
}

/// Reads a whole body under `limit` and the budget, counting a refusal for want of memory.
pub(super) async fn read(
    s: &super::Inner,
    body: &mut Incoming,
    declared: Option<u64>,
    limit: u64,
    what: &'static str,
) -> Result<body::Buffered, HttpCacheError> {
    body::read_limited(body, declared, limit, what, s.settings.idle, &s.budget)
        .await
        .inspect_err(|e| {
            if matches!(e, HttpCacheError::Busy) {
                s.metrics.refused_busy.inc();
            }
        })
}

impl super::Inner {
    /// Reserves `bytes` more of the body budget for `held`, counting a refusal.
    fn reserve(
        &self,
        held: &mut Option<tokio::sync::OwnedSemaphorePermit>,
        bytes: u64,
    ) -> Result<(), HttpCacheError> {
        let r = self.budget.grow(held, bytes);
        if r.is_err() {
            self.metrics.refused_busy.inc();
        }
        r
    }
}

/// A SHA-256 digest named by its hash alone (the size is not in the path).
pub(super) fn by_hash(hash: [u8; 32]) -> Digest {
    Digest {
        function: DigestFunction::Sha256,
        hash,
        size: 0,
    }
}
