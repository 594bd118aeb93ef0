//! `upload-large` / `read-large`: ByteStream streams of `--size` bytes (256 MiB by default).

use super::{Clients, OpError, Workload};
use crate::bench::BenchError;
use crate::bench::args::LoadArgs;
use crate::bench::data::{Blob, BlobMaker, Rng};
use std::sync::atomic::{AtomicU64, Ordering};

/// Default large blob size.
const DEFAULT_SIZE: u64 = 256 << 20;

/// Uploads a fresh blob per op with one ByteStream Write.
pub struct LargeUpload {
    maker: BlobMaker,
    next: AtomicU64,
}

impl LargeUpload {
    /// From `--size` (256 MiB).
    pub fn new(args: &LoadArgs, seed: u64) -> Self {
        Self {
            maker: BlobMaker::with_content(seed, args.size.unwrap_or(DEFAULT_SIZE), &args.content),
            next: AtomicU64::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Workload for LargeUpload {
    async fn seed(&mut self, _clients: &Clients) -> Result<(), BenchError> {
        Ok(())
    }

    async fn op(&self, clients: &Clients, worker: usize, _rng: &mut Rng) -> Result<u64, OpError> {
        let blob = self.maker.blob(self.next.fetch_add(1, Ordering::Relaxed));
        clients.bytestream_write(worker, &blob).await
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "size": self.maker.blob(0).len(), "chunk": super::rpc::WRITE_CHUNK })
    }
}

/// Reads seeded blobs with ByteStream Read, comparing every byte.
pub struct LargeRead {
    maker: BlobMaker,
    count: usize,
    blobs: Vec<Blob>,
    pick: super::Pick,
}

impl LargeRead {
    /// From `--size` (256 MiB) and `--blobs` (2 seeded; each op reads one at random, or in
    /// order with `--seed-target`).
    pub fn new(args: &LoadArgs, seed: u64) -> Self {
        Self {
            maker: BlobMaker::with_content(seed, args.size.unwrap_or(DEFAULT_SIZE), &args.content),
            count: args.blobs.unwrap_or(2).max(1),
            blobs: Vec::new(),
            pick: super::Pick::from_args(args),
        }
    }
}

#[async_trait::async_trait]
impl Workload for LargeRead {
    async fn seed(&mut self, clients: &Clients) -> Result<(), BenchError> {
        self.blobs = (0..self.count as u64).map(|n| self.maker.blob(n)).collect();
        if !clients.seed_writes() {
            return Ok(());
        }
        for b in &self.blobs {
            clients
                .bytestream_write(0, b)
                .await
                .map_err(super::rpc::seed_error("seeding large blob"))?;
        }
        Ok(())
    }

    async fn op(&self, clients: &Clients, worker: usize, rng: &mut Rng) -> Result<u64, OpError> {
        let b = &self.blobs[self.pick.next(self.blobs.len(), rng)];
        clients.bytestream_read(worker, b).await
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "size": self.maker.blob(0).len(), "seeded": self.count, "pick": self.pick.name(),
        })
    }
}
