//! `upload-small` / `read-small`: many small blobs through batch calls or ByteStream.

use super::rpc::seed_blobs;
use super::{Clients, OpError, Workload};
use crate::bench::BenchError;
use crate::bench::args::{LoadArgs, SmallApi};
use crate::bench::data::{Blob, BlobMaker, Rng};
use crate::proto::reapi::BatchReadBlobsRequest;
use std::sync::atomic::{AtomicU64, Ordering};

/// Default small blob size.
const DEFAULT_SIZE: u64 = 4 << 10;

/// Blobs per batch call: `--batch`, or as many as fit in 3 MiB (at most 100).
/// Blobs per op: `--batch` (default: as many as fit ~3 MiB, at most 100) for the batch API,
/// one for ByteStream.
fn batch_of(args: &LoadArgs, size: u64) -> usize {
    match args.small_api {
        SmallApi::Batch => args
            .batch
            .unwrap_or_else(|| ((3u64 << 20) / (size + 128)).clamp(1, 100) as usize)
            .max(1),
        SmallApi::Bytestream => 1,
    }
}

fn api_name(api: SmallApi) -> &'static str {
    match api {
        SmallApi::Batch => "batch",
        SmallApi::Bytestream => "bytestream",
    }
}

/// Uploads fresh blobs: one BatchUpdateBlobs of `batch` blobs, or one ByteStream Write, per op.
pub struct SmallUpload {
    api: SmallApi,
    batch: usize,
    maker: BlobMaker,
    next: AtomicU64,
}

impl SmallUpload {
    /// From `--size` (4 KiB), `--small-api`, `--batch`.
    pub fn new(args: &LoadArgs, seed: u64) -> Self {
        let size = args.size.unwrap_or(DEFAULT_SIZE);
        Self {
            api: args.small_api,
            batch: batch_of(args, size),
            maker: BlobMaker::with_content(seed, size, &args.content),
            next: AtomicU64::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Workload for SmallUpload {
    async fn seed(&mut self, _clients: &Clients) -> Result<(), BenchError> {
        Ok(())
    }

    async fn op(&self, clients: &Clients, worker: usize, _rng: &mut Rng) -> Result<u64, OpError> {
        let first = self.next.fetch_add(self.batch as u64, Ordering::Relaxed);
        match self.api {
            SmallApi::Batch => {
                let blobs = (first..first + self.batch as u64).map(|n| {
                    let b = self.maker.blob(n);
                    (b.digest, b.to_bytes())
                });
                clients.batch_upload(worker, blobs).await
            }
            SmallApi::Bytestream => {
                clients
                    .bytestream_write(worker, &self.maker.blob(first))
                    .await
            }
        }
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "size": self.maker.blob(0).len(), "api": api_name(self.api), "batch": self.batch })
    }

    fn items_per_op(&self) -> u64 {
        self.batch as u64
    }
}

/// Reads seeded blobs: one BatchReadBlobs of `batch` blobs, or one ByteStream Read, per op.
pub struct SmallRead {
    api: SmallApi,
    batch: usize,
    count: usize,
    maker: BlobMaker,
    blobs: Vec<Blob>,
    pick: super::Pick,
}

impl SmallRead {
    /// From `--size` (4 KiB), `--small-api`, `--batch`, `--blobs` (1000 seeded).
    pub fn new(args: &LoadArgs, seed: u64) -> Self {
        let size = args.size.unwrap_or(DEFAULT_SIZE);
        Self {
            api: args.small_api,
            batch: batch_of(args, size),
            count: args.blobs.unwrap_or(1000).max(1),
            maker: BlobMaker::with_content(seed, size, &args.content),
            blobs: Vec::new(),
            pick: super::Pick::from_args(args),
        }
    }
}

#[async_trait::async_trait]
impl Workload for SmallRead {
    async fn seed(&mut self, clients: &Clients) -> Result<(), BenchError> {
        self.blobs = (0..self.count as u64).map(|n| self.maker.blob(n)).collect();
        seed_blobs(clients, &self.blobs).await
    }

    async fn op(&self, clients: &Clients, worker: usize, rng: &mut Rng) -> Result<u64, OpError> {
        match self.api {
            SmallApi::Bytestream => {
                let b = &self.blobs[self.pick.next(self.blobs.len(), rng)];
                clients.bytestream_read(worker, b).await
            }
            SmallApi::Batch => {
                // Distinct digests: servers may answer a repeated digest once.
                let n = self.blobs.len();
                let first = match &self.pick {
                    super::Pick::Random => rng.below(n),
                    // Consecutive batches, so each blob is asked for once per pass.
                    super::Pick::InOrder(_) => {
                        self.pick.next(n.div_ceil(self.batch), rng) * self.batch
                    }
                };
                let picked: Vec<&Blob> = (0..self.batch.min(n))
                    .map(|k| &self.blobs[(first + k) % n])
                    .collect();
                let resp = clients
                    .cas(worker)
                    .batch_read_blobs(BatchReadBlobsRequest {
                        instance_name: clients.instance.clone(),
                        digests: picked.iter().map(|b| b.digest.to_proto()).collect(),
                        acceptable_compressors: Vec::new(),
                        digest_function: 0,
                    })
                    .await?
                    .into_inner();
                let mut bytes = 0;
                let mut unanswered = picked.len();
                for r in &resp.responses {
                    if let Some(s) = r.status.as_ref().filter(|s| s.code != 0) {
                        return Err(OpError::Verify(format!(
                            "BatchReadBlobs entry failed: code {} {}",
                            s.code, s.message
                        )));
                    }
                    let hash = r.digest.as_ref().map_or("", |d| d.hash.as_str());
                    let Some(b) = picked.iter().find(|b| b.digest.hash_hex() == hash) else {
                        return Err(OpError::Verify(format!(
                            "BatchReadBlobs answered an unrequested digest {hash}"
                        )));
                    };
                    if r.data.len() as u64 != b.len() || !b.matches_at(0, &r.data) {
                        return Err(OpError::Verify(format!(
                            "BatchReadBlobs returned wrong bytes for {hash}"
                        )));
                    }
                    bytes += r.data.len() as u64;
                    unanswered = unanswered.saturating_sub(1);
                }
                if unanswered > 0 {
                    return Err(OpError::Verify(format!(
                        "BatchReadBlobs left {unanswered} digests unanswered"
                    )));
                }
                Ok(bytes)
            }
        }
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "size": self.maker.blob(0).len(), "api": api_name(self.api),
            "batch": self.batch, "seeded": self.count, "pick": self.pick.name(),
        })
    }

    fn items_per_op(&self) -> u64 {
        self.batch as u64
    }
}
