//! Read-through of blobs: the local tier's misses fetched from the upstream, verified, stored,
//! then served. Small blobs travel in upstream batch calls; large ones stream (see `stream`).
//! Nothing is stored unless its hash and size match.

use super::Upstream;
use super::error::UpstreamError;
use super::flight::{self, Claim, Lead, Outcome};
use crate::cas;
use crate::digest::Digest;
use crate::proto::reapi::{BatchReadBlobsRequest, compressor};
use std::collections::HashMap;
use tonic::Code;

/// Digests one `ensure` step claims at once, well under the single-flight table's bound.
const ENSURE_STEP: usize = 256;

/// `{instance}/blobs/{hash}/{size}`: the REAPI read name of a blob.
pub(super) fn read_name(instance: &str, d: &Digest) -> String {
    if instance.is_empty() {
        format!("blobs/{}", d.resource_path())
    } else {
        format!("{instance}/blobs/{}", d.resource_path())
    }
}

pub(super) fn outcome(r: &Result<bool, UpstreamError>) -> Outcome {
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
        // Digests the full flight table turned away wait for room, then go again: many
        // clients' batch misses at once are served in turn, not refused.
        let deadline = tokio::time::Instant::now() + self.inner.settings.timeout;
        let mut pending = digests.to_vec();
        while !pending.is_empty() {
            let (leads, follows, full) = self.claim_all(&pending, out);
            if leads.is_empty() && follows.is_empty() && !self.inner.flights.room(deadline).await {
                for d in full {
                    out.insert(d, Err(self.busy()));
                }
                return;
            }
            self.fetch_claimed(instance, leads, follows, out).await;
            pending = full;
        }
    }

    /// Claims the fetch of each digest not stored locally: the ones this call leads, the ones
    /// others are fetching, and the ones the full table turned away.
    fn claim_all(
        &self,
        digests: &[Digest],
        out: &mut HashMap<Digest, Result<bool, UpstreamError>>,
    ) -> (Vec<Lead>, Vec<(Digest, flight::Slot)>, Vec<Digest>) {
        let inner = &self.inner;
        let (mut leads, mut follows, mut full) = (Vec::new(), Vec::new(), Vec::new());
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
                Claim::Full => full.push(*d),
            }
        }
        (leads, follows, full)
    }

    /// Fetches what this call leads (small blobs in batches, large ones streamed) and waits
    /// for what others fetch.
    async fn fetch_claimed(
        &self,
        instance: &str,
        leads: Vec<Lead>,
        follows: Vec<(Digest, flight::Slot)>,
        out: &mut HashMap<Digest, Result<bool, UpstreamError>>,
    ) {
        let inner = &self.inner;
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

    pub(super) fn busy(&self) -> UpstreamError {
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

    pub(super) fn count_read(&self, r: &Result<bool, UpstreamError>) {
        let result = match r {
            Ok(true) => "hit",
            Ok(false) => "miss",
            Err(_) => "error",
        };
        self.inner.client.stats.read("cas", result);
    }
}
