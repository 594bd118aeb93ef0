//! A ByteStream read miss of a blob larger than the local store's `max_blob_size_bytes`: the
//! local tier cannot keep it, so it is streamed from the upstream to the client without being
//! stored. The whole blob is read and hashed on the way (only the requested range is sent), and
//! the stream ends with an error, never as complete, when the bytes are not the digest's.
//! Nothing is shared between readers (no single flight: there is no stored copy to wait for),
//! and the fetch stops when its client goes away.

use super::Upstream;
use super::error::UpstreamError;
use super::stream::{ReadThrough, STREAM_BUFFER, range};
use crate::cas::CasError;
use crate::digest::Digest;
use crate::proto::bytestream::ReadResponse;
use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::{Code, Streaming};

type Sender = mpsc::Sender<Result<Bytes, UpstreamError>>;

impl Upstream {
    /// Whether a blob of `digest` is too large for the local store (then read through only).
    pub(super) fn too_large_to_keep(&self, digest: &Digest) -> bool {
        digest.size > self.inner.cas.max_blob_size()
    }

    /// Serves the range `offset`, `limit` of a blob too large to keep, from the upstream.
    pub(super) async fn pass_through(
        &self,
        instance: &str,
        digest: Digest,
        offset: u64,
        limit: u64,
        chunk: usize,
    ) -> Result<ReadThrough, UpstreamError> {
        let stream = match self.open_read(instance, &digest).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.count_read(&Ok(false));
                return Ok(ReadThrough::Missing);
            }
            Err(e) => {
                let r = Err(e);
                self.count_read(&r);
                self.inner.client.record(&r);
                return r.map(|_| ReadThrough::Missing);
            }
        };
        tracing::debug!(%digest, "blob over max_blob_size_bytes: streamed from the upstream, not stored");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            let r = this.relay_verified(&digest, stream, &tx).await;
            match &r {
                Err(e) => {
                    let _ = tx.send(Err(e.duplicate())).await;
                }
                Ok(false) => {
                    let _ = tx
                        .send(Err(UpstreamError::Local(CasError::BlobNotFound(digest))))
                        .await;
                }
                Ok(true) => {}
            }
            this.count_read(&r);
            this.inner.client.record(&r);
        });
        Ok(ReadThrough::Stream(Box::pin(range(
            rx, offset, limit, chunk,
        ))))
    }

    /// Sends the upstream's bytes of `digest` to `tx`, hashing them; `Ok(false)` when the
    /// upstream says NOT_FOUND before any byte. A client that goes away ends it quietly.
    async fn relay_verified(
        &self,
        digest: &Digest,
        mut stream: Streaming<ReadResponse>,
        tx: &Sender,
    ) -> Result<bool, UpstreamError> {
        let c = &self.inner.client;
        let mut hasher = digest.function.hasher();
        loop {
            let received = hasher.size();
            let msg = match tokio::time::timeout(c.timeout, stream.message()).await {
                Err(_) => {
                    return Err(c.unavailable(format!(
                        "ByteStream.Read of {digest}: nothing for {} ms after {received} bytes",
                        c.timeout.as_millis(),
                    )));
                }
                Ok(Err(s)) if s.code() == Code::NotFound && received == 0 => return Ok(false),
                Ok(Err(s)) => {
                    return Err(c.unavailable(format!(
                        "ByteStream.Read of {digest}: {:?}: {} after {received} bytes",
                        s.code(),
                        s.message(),
                    )));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(m))) => m,
            };
            if received + msg.data.len() as u64 > digest.size {
                return Err(self.bad_data(*digest, "more bytes than the digest's size"));
            }
            hasher.update(&msg.data);
            c.stats.fetched_bytes.inc_by(msg.data.len() as u64);
            if tx.send(Ok(msg.data)).await.is_err() {
                return Ok(true);
            }
        }
        if hasher.size() != digest.size {
            return Err(self.bad_data(
                *digest,
                &format!("the stream ended after {} bytes", hasher.size()),
            ));
        }
        let got = hasher.finish();
        if got != *digest {
            return Err(self.bad_data(*digest, &format!("the bytes hash to {got}")));
        }
        Ok(true)
    }
}
