//! `find-missing`: FindMissingBlobs batches, a set fraction of whose digests are present.

use super::rpc::seed_blobs;
use super::{Clients, OpError, Workload};
use crate::bench::BenchError;
use crate::bench::args::LoadArgs;
use crate::bench::data::{Blob, BlobMaker, Rng};
use crate::proto::reapi::FindMissingBlobsRequest;
use std::collections::HashSet;

/// FindMissingBlobs of `batch` digests, `present` of them seeded.
pub struct FindMissing {
    batch: usize,
    present: f64,
    pool: Vec<Blob>,
    pool_size: usize,
    maker: BlobMaker,
}

impl FindMissing {
    /// From the arguments: `--batch` (1000), `--present` (0.5), `--blobs` (10000, the pool of
    /// present blobs), `--size` (64 B per seeded blob).
    pub fn new(args: &LoadArgs, seed: u64) -> Self {
        Self {
            batch: args.batch.unwrap_or(1000).max(1),
            present: args.present.clamp(0.0, 1.0),
            pool: Vec::new(),
            pool_size: args.blobs.unwrap_or(10_000).max(1),
            maker: BlobMaker::new(seed, args.size.unwrap_or(64)),
        }
    }
}

#[async_trait::async_trait]
impl Workload for FindMissing {
    async fn seed(&mut self, clients: &Clients) -> Result<(), BenchError> {
        self.pool = (0..self.pool_size as u64)
            .map(|n| self.maker.blob(n))
            .collect();
        seed_blobs(clients, &self.pool).await
    }

    async fn op(&self, clients: &Clients, worker: usize, rng: &mut Rng) -> Result<u64, OpError> {
        let n_present = (self.batch as f64 * self.present).round() as usize;
        let mut digests = Vec::with_capacity(self.batch);
        let mut absent = HashSet::with_capacity(self.batch - n_present);
        for _ in 0..n_present {
            digests.push(self.pool[rng.below(self.pool.len())].digest.to_proto());
        }
        for _ in n_present..self.batch {
            let d = rng.absent_digest().to_proto();
            absent.insert(d.hash.clone());
            digests.push(d);
        }
        let resp = clients
            .cas(worker)
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: clients.instance.clone(),
                blob_digests: digests,
                digest_function: 0,
            })
            .await?
            .into_inner();
        let missing: HashSet<&str> = resp
            .missing_blob_digests
            .iter()
            .map(|d| d.hash.as_str())
            .collect();
        if missing.len() != absent.len() || !absent.iter().all(|h| missing.contains(h.as_str())) {
            return Err(OpError::Verify(format!(
                "FindMissingBlobs reported {} missing, expected exactly the {} absent digests",
                missing.len(),
                absent.len()
            )));
        }
        Ok(0)
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "batch": self.batch, "present": self.present, "pool": self.pool_size })
    }

    fn items_per_op(&self) -> u64 {
        self.batch as u64
    }
}
