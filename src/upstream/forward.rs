//! Writes passed on to the upstream: blobs (after one FindMissingBlobs per batch, so what the
//! upstream has is skipped; small ones in batch calls, large ones streamed from the local
//! store) and action results (read back from the local action cache).

use super::Upstream;
use super::error::UpstreamError;
use crate::cas::CasError;
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi::{
    BatchUpdateBlobsRequest, UpdateActionResultRequest, batch_update_blobs_request,
};
use std::time::Duration;

/// Bytes per ByteStream message when uploading a large blob.
const WRITE_CHUNK: u64 = 1 << 20;

/// How a blob forward went for the queue's accounting.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Sent now.
    pub sent: u64,
    /// The upstream had them.
    pub skipped: u64,
    /// Gone from the local store before they could be sent.
    pub gone: u64,
}

impl Upstream {
    /// Makes the upstream hold `digests` (stored locally under `instance`), one digest
    /// function at a time (each upstream call names one).
    pub async fn push_blobs(
        &self,
        instance: &str,
        digests: &[Digest],
    ) -> Result<Pushed, UpstreamError> {
        let mut pushed = Pushed::default();
        for function in DigestFunction::ALL {
            let digests: Vec<Digest> = digests
                .iter()
                .filter(|d| d.function == function && !d.is_empty_blob())
                .copied()
                .collect();
            if !digests.is_empty() {
                self.push_blobs_of(instance, &digests, &mut pushed).await?;
            }
        }
        Ok(pushed)
    }

    /// [`Self::push_blobs`] of non-empty blobs of one digest function.
    async fn push_blobs_of(
        &self,
        instance: &str,
        digests: &[Digest],
        pushed: &mut Pushed,
    ) -> Result<(), UpstreamError> {
        let absent = self.upstream_missing(instance, digests).await?;
        let stats = &self.inner.client.stats;
        let skipped = (digests.len() - absent.len()) as u64;
        pushed.skipped += skipped;
        stats.forward("cas", "skipped", skipped);
        let batch_bytes = self.inner.settings.batch_bytes;
        let mut batch: Vec<(Digest, bytes::Bytes)> = Vec::new();
        let mut batch_size = 0u64;
        let (mut sent, mut gone) = (0, 0);
        for d in digests.iter().filter(|d| absent.contains(d)) {
            if d.size > batch_bytes {
                if self.write_stream(instance, d).await? {
                    sent += 1;
                } else {
                    gone += 1;
                }
                continue;
            }
            let Some(blob) = self.inner.cas.read(d).await? else {
                gone += 1;
                continue;
            };
            if !batch.is_empty() && batch_size + d.size > batch_bytes {
                sent += self
                    .write_batch(instance, std::mem::take(&mut batch))
                    .await?;
                batch_size = 0;
            }
            batch_size += d.size;
            batch.push((*d, blob.to_bytes().map_err(CasError::from)?));
        }
        if !batch.is_empty() {
            sent += self.write_batch(instance, batch).await?;
        }
        stats.forward("cas", "sent", sent);
        pushed.sent += sent;
        if gone > 0 {
            tracing::warn!(
                gone,
                "blobs evicted locally before they reached the upstream"
            );
            stats.forward("cas", "gone", gone);
            pushed.gone += gone;
        }
        Ok(())
    }

    async fn write_batch(
        &self,
        instance: &str,
        blobs: Vec<(Digest, bytes::Bytes)>,
    ) -> Result<u64, UpstreamError> {
        let c = &self.inner.client;
        let n = blobs.len() as u64;
        let bytes: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum();
        // One function per batch: `push_blobs_of` never mixes them.
        let function = blobs
            .first()
            .map_or(DigestFunction::Sha256, |(d, _)| d.function);
        let req = BatchUpdateBlobsRequest {
            instance_name: self.instance(instance).to_string(),
            requests: blobs
                .into_iter()
                .map(|(d, data)| batch_update_blobs_request::Request {
                    digest: Some(d.to_proto()),
                    data,
                    compressor: 0,
                })
                .collect(),
            digest_function: function.to_proto(),
        };
        let answer = c
            .call("BatchUpdateBlobs", c.cas.clone().batch_update_blobs(req))
            .await?
            .map_err(|s| c.unavailable(format!("BatchUpdateBlobs: {}", s.message())))?;
        let mut refused = 0;
        for r in &answer.responses {
            let Some(s) = r.status.as_ref().filter(|s| s.code != 0) else {
                continue;
            };
            if !super::client::is_answer(tonic::Code::from_i32(s.code)) {
                // Transient (UNAVAILABLE, RESOURCE_EXHAUSTED..): the round is tried again.
                return Err(c.unavailable(format!(
                    "BatchUpdateBlobs: a blob failed: code {}: {}",
                    s.code, s.message
                )));
            }
            // The upstream will never take this blob: retrying would block the queue behind
            // it for ever, so it is counted and left out.
            refused += 1;
            tracing::warn!(code = s.code, message = %s.message, "upstream refused a forwarded blob");
        }
        if refused > 0 {
            c.stats.forward("cas", "error", refused);
        }
        c.stats.forwarded_bytes.inc_by(bytes);
        Ok(n - refused)
    }

    /// Streams one large blob from the local store; `false` when it is gone locally.
    async fn write_stream(&self, instance: &str, d: &Digest) -> Result<bool, UpstreamError> {
        let c = &self.inner.client;
        let Some(blob) = self.inner.cas.read(d).await? else {
            return Ok(false);
        };
        let inst = self.instance(instance);
        let name = format!(
            "{}uploads/{}/blobs/{}",
            if inst.is_empty() {
                String::new()
            } else {
                format!("{inst}/")
            },
            uuid::Uuid::new_v4(),
            d.resource_path()
        );
        let size = d.size;
        // A stored piece that does not decompress ends the stream short of the size: the
        // upstream refuses the write, and the call fails.
        let reqs = crate::proto::write_requests(
            name,
            size,
            blob.read(0, u64::MAX, WRITE_CHUNK as usize)
                .map_while(Result::ok),
        );
        // A large upload may take longer than one call: the timeout grows with its size.
        let limit = c.timeout * (1 + (size / (4 << 20)) as u32);
        let answer = c
            .call_for(
                "ByteStream.Write",
                limit,
                c.bytestream.clone().write(futures::stream::iter(reqs)),
            )
            .await?
            .map_err(|s| c.unavailable(format!("ByteStream.Write: {}", s.message())))?;
        if answer.committed_size != size as i64 && answer.committed_size != -1 {
            return Err(c.unavailable(format!(
                "ByteStream.Write of {d} committed {} bytes",
                answer.committed_size
            )));
        }
        c.stats.forwarded_bytes.inc_by(size);
        Ok(true)
    }

    /// Sends the locally stored result of `action` upstream; `false` when it is gone locally.
    pub async fn push_action(
        &self,
        instance: &str,
        action: &Digest,
    ) -> Result<bool, UpstreamError> {
        let c = &self.inner.client;
        let Some(result) = self.inner.ac.lookup(instance, action).await? else {
            c.stats.forward("ac", "gone", 1);
            return Ok(false);
        };
        let req = UpdateActionResultRequest {
            instance_name: self.instance(instance).to_string(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            digest_function: action.function.to_proto(),
            ..Default::default()
        };
        let r = c
            .call("UpdateActionResult", c.ac.clone().update_action_result(req))
            .await;
        match r {
            Ok(Ok(_)) => {
                c.stats.forward("ac", "sent", 1);
                Ok(true)
            }
            Ok(Err(s)) => {
                c.stats.forward("ac", "error", 1);
                Err(c.refused("UpdateActionResult", &s))
            }
            Err(e) => {
                c.stats.forward("ac", "error", 1);
                Err(e)
            }
        }
    }
}

/// How long the queue waits before retrying after a failed forward.
pub fn retry_delay(breaker_reset: Duration) -> Duration {
    breaker_reset.clamp(Duration::from_millis(100), Duration::from_secs(5))
}
