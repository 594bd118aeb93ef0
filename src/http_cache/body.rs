//! Request bodies, read under limits: a declared `Content-Length` is checked before a byte is
//! read; a body of unknown length (chunked) is cut off as soon as it passes its limit; every
//! wait for the next frame is bounded (a stalled client gets 408 and frees its slot); and the
//! bytes held in memory by all uploads together come from one budget ([`Budget`]).

use super::error::HttpCacheError;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::HeaderMap;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Granularity of the budget: permits are KiB.
const UNIT: u64 = 1024;

/// The memory budget of request bodies in progress (`http_cache.max_buffer_bytes`).
#[derive(Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS as u64) as usize;
        Self {
            permits: Arc::new(Semaphore::new(units)),
        }
    }

    /// Reserves `bytes` more for `held` (or fails with [`HttpCacheError::Busy`]).
    pub fn grow(
        &self,
        held: &mut Option<OwnedSemaphorePermit>,
        bytes: u64,
    ) -> Result<(), HttpCacheError> {
        let units = u32::try_from(bytes.div_ceil(UNIT)).map_err(|_| HttpCacheError::Busy)?;
        if units == 0 {
            return Ok(());
        }
        let more = self
            .permits
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| HttpCacheError::Busy)?;
        match held {
            Some(h) => h.merge(more),
            None => *held = Some(more),
        }
        Ok(())
    }
}

/// The `Content-Length` a request declares, if any (a malformed one is refused).
pub fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, HttpCacheError> {
    let Some(v) = headers.get(CONTENT_LENGTH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| HttpCacheError::BadBody("malformed Content-Length".into()))
}

/// The next chunk of data of `body` (trailers are skipped), waiting at most `idle`.
pub async fn next_chunk(
    body: &mut Incoming,
    idle: Duration,
) -> Result<Option<Bytes>, HttpCacheError> {
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| HttpCacheError::Timeout(idle))?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(HttpCacheError::Body(e.to_string())),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// A whole body read into memory.
pub struct Buffered {
    /// The bytes.
    pub data: Bytes,
    /// Their share of the budget, released when dropped.
    pub reservation: Option<OwnedSemaphorePermit>,
}

/// Reads a whole body of at most `limit` bytes (`what` names the limit in the error),
/// reserving what it holds from `budget` as it grows.
pub async fn read_limited(
    body: &mut Incoming,
    declared: Option<u64>,
    limit: u64,
    what: &'static str,
    idle: Duration,
    budget: &Budget,
) -> Result<Buffered, HttpCacheError> {
    if let Some(len) = declared
        && len > limit
    {
        return Err(HttpCacheError::TooLarge {
            size: len,
            limit,
            what,
        });
    }
    let mut reservation = None;
    let mut reserved = 0u64;
    let mut buf = BytesMut::new();
    if let Some(len) = declared {
        budget.grow(&mut reservation, len)?;
        reserved = len;
        buf.reserve(len as usize);
    }
    while let Some(chunk) = next_chunk(body, idle).await? {
        let total = buf.len() as u64 + chunk.len() as u64;
        if total > limit {
            return Err(HttpCacheError::TooLarge {
                size: total,
                limit,
                what,
            });
        }
        if total > reserved {
            // Grow in steps so a trickle of small chunks does not take the lock each time.
            let step = (total - reserved).max(64 * UNIT).min(limit - reserved);
            budget.grow(&mut reservation, step)?;
            reserved += step;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Buffered {
        data: buf.freeze(),
        reservation,
    })
}
