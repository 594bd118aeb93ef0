//! Streamed read-through: a ByteStream read miss is served from the upstream as it arrives,
//! the local store filling at the same time, on a task of its own (a client that goes away
//! does not cancel it; followers of the same blob wait for it). The stream ends with an error,
//! never as complete, when the bytes turn out longer, shorter or other than the digest says.

use super::error::UpstreamError;
use super::fetch::{outcome, read_name};
use super::flight::{self, Claim};
use super::{Inner, Upstream};
use crate::cas::CasError;
use crate::digest::Digest;
use crate::proto::bytestream::{ReadRequest, ReadResponse};
use bytes::Bytes;
use futures::Stream;
use std::pin::Pin;
use tokio::sync::mpsc;
use tonic::{Code, Streaming};

/// Chunks buffered between the upstream and a slow client (each at most one upstream
/// message): the fetch slows down with its reader instead of buffering the blob.
pub(super) const STREAM_BUFFER: usize = 4;

/// A blob's bytes as they arrive from the upstream. Ends with an error when the fetch fails or
/// the bytes do not match the digest.
pub type UpstreamRead = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// How a ByteStream read miss is served.
pub enum ReadThrough {
    /// The blob is in the local store now: serve it from there.
    Local,
    /// The upstream lacks it too.
    Missing,
    /// The requested range, streamed from the upstream while the local store fills.
    Stream(UpstreamRead),
}

impl Upstream {
    /// Serves a ByteStream read miss of `digest` (range `offset`, `limit`, in chunks of at
    /// most `chunk` bytes): from the upstream as it streams in when this call leads the
    /// fetch, from the store once another caller's fetch of it finished. A blob too large for
    /// the local store is streamed through without being stored (`passthrough`).
    pub async fn read(
        &self,
        instance: &str,
        digest: Digest,
        offset: u64,
        limit: u64,
        chunk: usize,
    ) -> Result<ReadThrough, UpstreamError> {
        if self.too_large_to_keep(&digest) {
            return self
                .pass_through(instance, digest, offset, limit, chunk)
                .await;
        }
        let deadline = tokio::time::Instant::now() + self.inner.settings.timeout;
        let lead = match self.inner.flights.claim_waiting(digest, deadline).await {
            Claim::Full => return Err(self.busy()),
            Claim::Follow(slot) => {
                return match flight::follow(slot).await {
                    Ok(true) => Ok(ReadThrough::Local),
                    Ok(false) => Ok(ReadThrough::Missing),
                    Err(reason) => Err(self.inner.client.unavailable(&*reason)),
                };
            }
            Claim::Lead(l) => l,
        };
        if self.inner.cas.contains(&digest)? {
            lead.finish(Ok(true));
            return Ok(ReadThrough::Local);
        }
        let stream = match self.open_read(instance, &digest).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.count_read(&Ok(false));
                lead.finish(Ok(false));
                return Ok(ReadThrough::Missing);
            }
            Err(e) => {
                self.count_read(&Err(e.duplicate()));
                lead.finish(Err(e.to_string().into()));
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        // The fetch runs on its own task: a client that goes away does not cancel it, so the
        // store still fills and followers still get their answer.
        tokio::spawn(async move {
            let r = this.pump(&digest, stream, Some(tx)).await;
            this.count_read(&r);
            this.inner.client.record(&r);
            lead.finish(outcome(&r));
        });
        Ok(ReadThrough::Stream(Box::pin(range(
            rx, offset, limit, chunk,
        ))))
    }

    /// Fetches one blob with ByteStream into the store, sending its bytes to `tx` as well.
    pub(super) async fn fetch_streamed(
        &self,
        instance: &str,
        digest: Digest,
        tx: Option<mpsc::Sender<Result<Bytes, UpstreamError>>>,
    ) -> Result<bool, UpstreamError> {
        let r = match self.open_read(instance, &digest).await {
            Ok(Some(stream)) => self.pump(&digest, stream, tx).await,
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        self.count_read(&r);
        self.inner.client.record(&r);
        r
    }

    /// Opens the upstream read; `None` when the upstream says NOT_FOUND.
    pub(super) async fn open_read(
        &self,
        instance: &str,
        digest: &Digest,
    ) -> Result<Option<Streaming<ReadResponse>>, UpstreamError> {
        let c = &self.inner.client;
        let req = ReadRequest {
            resource_name: read_name(self.instance(instance), digest),
            read_offset: 0,
            read_limit: 0,
        };
        match c
            .call("ByteStream.Read", c.bytestream.clone().read(req))
            .await?
        {
            Ok(s) => Ok(Some(s)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(c.unavailable(format!("ByteStream.Read: {}", s.message()))),
        }
    }

    /// Moves an upstream read into the store (and to `tx`), verifying it on the way.
    async fn pump(
        &self,
        digest: &Digest,
        mut stream: Streaming<ReadResponse>,
        mut tx: Option<mpsc::Sender<Result<Bytes, UpstreamError>>>,
    ) -> Result<bool, UpstreamError> {
        let r = self.pump_inner(digest, &mut stream, &mut tx).await;
        if let (Err(e), Some(tx)) = (&r, &tx) {
            let _ = tx.send(Err(e.duplicate())).await;
        }
        if let (Ok(false), Some(tx)) = (&r, &tx) {
            let _ = tx
                .send(Err(UpstreamError::Local(CasError::BlobNotFound(*digest))))
                .await;
        }
        r
    }

    async fn pump_inner(
        &self,
        digest: &Digest,
        stream: &mut Streaming<ReadResponse>,
        tx: &mut Option<mpsc::Sender<Result<Bytes, UpstreamError>>>,
    ) -> Result<bool, UpstreamError> {
        let inner: &Inner = &self.inner;
        let c = &inner.client;
        let Some(mut upload) = inner.cas.begin_upload(*digest).await? else {
            // Stored meanwhile (an upload by a client): serve that copy.
            if let Some(tx) = tx.as_ref() {
                let blob = inner.cas.read_bytes(digest).await?;
                let _ = tx.send(Ok(blob)).await;
            }
            return Ok(true);
        };
        loop {
            let msg = match tokio::time::timeout(c.timeout, stream.message()).await {
                Err(_) => {
                    return Err(c.unavailable(format!(
                        "ByteStream.Read of {digest}: nothing for {} ms after {} bytes",
                        c.timeout.as_millis(),
                        upload.received()
                    )));
                }
                Ok(Err(s)) if s.code() == Code::NotFound && upload.received() == 0 => {
                    return Ok(false);
                }
                Ok(Err(s)) => {
                    return Err(c.unavailable(format!(
                        "ByteStream.Read of {digest}: {:?}: {} after {} bytes",
                        s.code(),
                        s.message(),
                        upload.received()
                    )));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(m))) => m,
            };
            if upload.received() + msg.data.len() as u64 > digest.size {
                return Err(self.bad_data(*digest, "more bytes than the digest's size"));
            }
            c.stats.fetched_bytes.inc_by(msg.data.len() as u64);
            upload.write(msg.data.clone()).await?;
            if let Some(t) = tx.as_ref()
                && t.send(Ok(msg.data)).await.is_err()
            {
                // The client went away; the fetch goes on for the store and followers.
                *tx = None;
            }
        }
        if upload.received() != digest.size {
            return Err(self.bad_data(
                *digest,
                &format!("the stream ended after {} bytes", upload.received()),
            ));
        }
        match upload.finish().await {
            Ok(()) => Ok(true),
            Err(e @ CasError::DigestMismatch { .. }) => Err(self.bad_data(*digest, &e.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}

/// The part `[offset, offset + limit)` of a blob arriving in `rx`, re-cut into chunks of at
/// most `chunk` bytes; an error ends it.
pub(super) fn range(
    mut rx: mpsc::Receiver<Result<Bytes, UpstreamError>>,
    offset: u64,
    limit: u64,
    chunk: usize,
) -> impl Stream<Item = Result<Bytes, UpstreamError>> + Send {
    let end = offset.saturating_add(limit);
    async_stream::stream! {
        let mut pos = 0u64;
        while let Some(item) = rx.recv().await {
            let data = match item {
                Ok(d) => d,
                Err(e) => {
                    yield Err(e);
                    return;
                }
            };
            let start = pos;
            pos += data.len() as u64;
            let from = offset.clamp(start, pos) - start;
            let to = end.clamp(start, pos) - start;
            let mut part = data.slice(from as usize..to as usize);
            while !part.is_empty() {
                let n = part.len().min(chunk.max(1));
                yield Ok(part.split_to(n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn range_cuts_the_requested_part_into_chunks() {
        let (tx, rx) = mpsc::channel(8);
        for part in [&b"0123"[..], b"4567", b"89"] {
            tx.send(Ok(Bytes::from_static(part))).await.unwrap();
        }
        drop(tx);
        let got: Vec<Bytes> = range(rx, 3, 5, 2)
            .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
            .collect()
            .await;
        assert_eq!(got, vec![&b"3"[..], b"45", b"67"]);
    }
}
