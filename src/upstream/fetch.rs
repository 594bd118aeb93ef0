//! Read-through of blobs: the local tier's misses fetched from the upstream, verified, stored,
//! then served. Small blobs travel in upstream batch calls; large ones (and every ByteStream
//! read miss) stream, the client receiving the bytes while they fill the local store. Nothing
//! is stored unless its hash and size match, and a streamed read ends with an error, never as
//! complete, when they do not.

use super::error::UpstreamError;
use super::flight::{self, Claim, Lead, Outcome};
use super::{Inner, Upstream};
use crate::cas::{self, CasError};
use crate::digest::Digest;
use crate::proto::bytestream::{ReadRequest, ReadResponse};
use crate::proto::reapi::{BatchReadBlobsRequest, compressor};
use bytes::Bytes;
use futures::Stream;
use std::collections::HashMap;
use std::pin::Pin;
use tokio::sync::mpsc;
use tonic::{Code, Streaming};

/// Digests one `ensure` step claims at once, well under the single-flight table's bound.
const ENSURE_STEP: usize = 256;

/// Chunks buffered between the upstream and a slow client (each at most one upstream
/// message): the fetch slows down with its reader instead of buffering the blob.
const STREAM_BUFFER: usize = 4;

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

/// `{instance}/blobs/{hash}/{size}`: the REAPI read name of a blob.
fn read_name(instance: &str, d: &Digest) -> String {
    if instance.is_empty() {
        format!("blobs/{}/{}", d.hash_hex(), d.size)
    } else {
        format!("{instance}/blobs/{}/{}", d.hash_hex(), d.size)
    }
}

fn outcome(r: &Result<bool, UpstreamError>) -> Outcome {
    match r {
        Ok(b) => Ok(*b),
        Err(e) => Err(e.to_string().into()),
    }
}

impl Upstream {
    /// Makes `digests` present locally where the upstream has them: `Ok(true)` present (or
    /// fetched now), `Ok(false)` the upstream lacks it, `Err` the fetch failed. Concurrent
    /// callers share fetches.
    pub async fn ensure(
        &self,
        instance: &str,
        digests: &[Digest],
    ) -> HashMap<Digest, Result<bool, UpstreamError>> {
        let mut out = HashMap::with_capacity(digests.len());
        let mut distinct: Vec<Digest> = Vec::with_capacity(digests.len());
        for d in digests {
            if !out.contains_key(d) {
                out.insert(*d, Ok(true));
                distinct.push(*d);
            }
        }
        for step in distinct.chunks(ENSURE_STEP) {
            self.ensure_step(instance, step, &mut out).await;
        }
        out
    }

    async fn ensure_step(
        &self,
        instance: &str,
        digests: &[Digest],
        out: &mut HashMap<Digest, Result<bool, UpstreamError>>,
    ) {
        let inner = &self.inner;
        let mut leads: Vec<Lead> = Vec::new();
        let mut follows = Vec::new();
        for d in digests {
            match inner.cas.contains(d) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    out.insert(*d, Err(e.into()));
                    continue;
                }
            }
            match inner.flights.claim(*d) {
                Claim::Lead(l) => leads.push(l),
                Claim::Follow(slot) => follows.push((*d, slot)),
                Claim::Full => {
                    out.insert(*d, Err(self.busy()));
                }
            }
        }
        let batch_bytes = inner.settings.batch_bytes;
        let (small, large): (Vec<Lead>, Vec<Lead>) = leads
            .into_iter()
            .partition(|l| l.digest().size <= batch_bytes);
        let mut batch: Vec<Lead> = Vec::new();
        let mut batch_size = 0u64;
        for l in small {
            if !batch.is_empty() && batch_size + l.digest().size > batch_bytes {
                self.fetch_batch(instance, std::mem::take(&mut batch), out)
                    .await;
                batch_size = 0;
            }
            batch_size += l.digest().size;
            batch.push(l);
        }
        if !batch.is_empty() {
            self.fetch_batch(instance, batch, out).await;
        }
        for l in large {
            let d = l.digest();
            let r = self.fetch_streamed(instance, d, None).await;
            l.finish(outcome(&r));
            out.insert(d, r);
        }
        for (d, slot) in follows {
            let r = flight::follow(slot).await;
            out.insert(
                d,
                r.map_err(|reason| self.inner.client.unavailable(&*reason)),
            );
        }
    }

    fn busy(&self) -> UpstreamError {
        UpstreamError::Busy {
            endpoint: self.inner.settings.endpoint.clone(),
            limit: self.inner.flights.limit(),
        }
    }

    /// One upstream BatchReadBlobs for `leads`, each answer verified before it is stored.
    async fn fetch_batch(
        &self,
        instance: &str,
        leads: Vec<Lead>,
        out: &mut HashMap<Digest, Result<bool, UpstreamError>>,
    ) {
        let inner = &self.inner;
        let c = &inner.client;
        let function = leads[0].digest().function;
        let req = BatchReadBlobsRequest {
            instance_name: self.instance(instance).to_string(),
            digests: leads.iter().map(|l| l.digest().to_proto()).collect(),
            acceptable_compressors: vec![],
            digest_function: function.to_proto(),
        };
        let answer = match c
            .call("BatchReadBlobs", c.cas.clone().batch_read_blobs(req))
            .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(s)) => {
                let e = c.unavailable(format!("BatchReadBlobs: {}", s.message()));
                self.fail_all(leads, &e, out);
                return;
            }
            Err(e) => {
                self.fail_all(leads, &e, out);
                return;
            }
        };
        let mut answers: HashMap<Digest, _> = HashMap::with_capacity(answer.responses.len());
        for r in answer.responses {
            if let Some(Ok(d)) = r.digest.as_ref().map(|d| Digest::from_proto(function, d)) {
                answers.insert(d, r);
            }
        }
        let mut verified = Vec::new();
        let mut verified_leads = Vec::new();
        for l in leads {
            let d = l.digest();
            let r = match answers.remove(&d) {
                None => Err(c.unavailable(format!("BatchReadBlobs answer lacks {d}"))),
                Some(a) => {
                    let code = a.status.as_ref().map_or(0, |s| s.code);
                    if code == Code::NotFound as i32 {
                        Ok(false)
                    } else if code != 0 {
                        let msg = a.status.map(|s| s.message).unwrap_or_default();
                        Err(c.unavailable(format!("BatchReadBlobs {d}: code {code}: {msg}")))
                    } else if a.compressor != compressor::Value::Identity as i32 {
                        Err(self.bad_data(d, "compressed answer to an uncompressed request"))
                    } else if let Err(e) = cas::verify(&d, &a.data) {
                        Err(self.bad_data(d, &e.to_string()))
                    } else {
                        verified.push((d, a.data));
                        verified_leads.push(l);
                        continue;
                    }
                }
            };
            self.count_read(&r);
            c.record(&r);
            l.finish(outcome(&r));
            out.insert(d, r);
        }
        if verified.is_empty() {
            return;
        }
        let bytes: u64 = verified.iter().map(|(_, b)| b.len() as u64).sum();
        c.stats.fetched_bytes.inc_by(bytes);
        let stored = inner.cas.put_many(verified).await;
        for (l, s) in verified_leads.into_iter().zip(stored) {
            let r = s.map(|()| true).map_err(UpstreamError::from);
            self.count_read(&r);
            let d = l.digest();
            l.finish(outcome(&r));
            out.insert(d, r);
        }
    }

    fn fail_all(
        &self,
        leads: Vec<Lead>,
        e: &UpstreamError,
        out: &mut HashMap<Digest, Result<bool, UpstreamError>>,
    ) {
        for l in leads {
            let r = Err(e.duplicate());
            self.count_read(&r);
            let d = l.digest();
            l.finish(outcome(&r));
            out.insert(d, r);
        }
    }

    pub(super) fn bad_data(&self, digest: Digest, reason: &str) -> UpstreamError {
        UpstreamError::BadData {
            endpoint: self.inner.settings.endpoint.clone(),
            digest,
            reason: reason.to_string(),
        }
    }

    fn count_read(&self, r: &Result<bool, UpstreamError>) {
        let result = match r {
            Ok(true) => "hit",
            Ok(false) => "miss",
            Err(_) => "error",
        };
        self.inner.client.stats.read("cas", result);
    }

    /// Serves a ByteStream read miss of `digest` (range `offset`, `limit`, in chunks of at
    /// most `chunk` bytes): from the upstream as it streams in when this call leads the
    /// fetch, from the store once another caller's fetch of it finished.
    pub async fn read(
        &self,
        instance: &str,
        digest: Digest,
        offset: u64,
        limit: u64,
        chunk: usize,
    ) -> Result<ReadThrough, UpstreamError> {
        let lead = match self.inner.flights.claim(digest) {
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
    async fn fetch_streamed(
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
    async fn open_read(
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
                let blob = inner.cas.get_bytes(digest)?;
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
fn range(
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
