//! The storage engine: fixed-size keys to immutable byte blobs.
//!
//! This layer knows nothing of protobufs, gRPC or REAPI digests: the `cas` layer derives a
//! [`Key`] from a digest (or an action-cache entry) and hands bytes down. It could become its own
//! crate without edits; `tests/layering.rs` checks that it imports nothing from the layers above.
//!
//! The seam is the [`Store`] trait: [`MemoryStore`] for unit tests, the segment engine for
//! `kiln serve` ([`Engine`], configured by [`EngineConfig`]; on-disk format in `FORMAT.md`).
//!
//! Engine files: `config.rs` (EngineConfig, validate), `engine.rs` (open, Store impl, upload
//! handle), `open.rs` (what open reads from disk: state slots, the ring from segment headers,
//! segment maps), `writer.rs` (the I/O thread: batching, group commit, segment roll/eviction,
//! copy-forward at eviction in `writer/evict.rs`), `shared.rs` (read path and validity rules),
//! `touch.rs` (per-slot touch hints read by copy-forward), `index.rs` (lock-free mapped slot
//! table), `segment.rs` (mapped segment table), `format.rs` (every on-disk byte layout),
//! `verify.rs` (scrub), `stats.rs` (metrics), `sys/` (the only `unsafe`: io_uring, psync,
//! fault injection, mmap, fallocate), `fuzzing/` (fuzz helpers). `format`, `index`, `sys` and
//! `fuzzing` are public only with the `testing` feature; the fault-injecting I/O engine and the
//! fuzz helpers are compiled only with it, so the release binary holds neither.

mod blob;
mod config;
mod engine;
mod error;
// The engine's insides (byte layouts, the slot table, the I/O engines, fuzz helpers) are public
// only with the `testing` feature, which tests, benches and fuzz targets enable.
#[cfg(feature = "testing")]
pub mod format;
#[cfg(not(feature = "testing"))]
mod format;
#[cfg(feature = "testing")]
pub mod fuzzing;
#[cfg(feature = "testing")]
pub mod index;
#[cfg(not(feature = "testing"))]
mod index;
mod key;
mod memory;
mod open;
mod peek;
mod segment;
mod shared;
mod stats;
#[cfg(feature = "testing")]
pub mod sys;
#[cfg(not(feature = "testing"))]
mod sys;
mod touch;
mod verify;
mod writer;

pub use blob::Blob;
pub use config::{Durability, EngineConfig, IoBackend};
pub use engine::Engine;
pub use error::StorageError;
pub use key::Key;
pub use memory::MemoryStore;
pub use peek::Peek;
pub use stats::StorageStats;
pub use verify::{BlobCheck, VerifyProgress, VerifyReport};

use async_trait::async_trait;
use bytes::Bytes;

/// A key-value store of immutable blobs, the one interface the CAS and AC are built on.
///
/// Concurrency: every method may be called from many tasks at once. A blob becomes visible to
/// `get`/`contains` only when its writer's `commit` returns, and then whole.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Looks a blob up. `Ok(None)` is a miss (including a record that failed its checksum,
    /// which the engine counts, never returns, and drops from its index so that `contains`
    /// reports the blob missing from then on). A hit counts as a touch for eviction.
    fn get(&self, key: &Key) -> Result<Option<Blob>, StorageError>;

    /// Whether a blob is present, without reading it. A hit counts as a touch for eviction.
    fn contains(&self, key: &Key) -> Result<bool, StorageError>;

    /// `contains` for many keys, answers in order. Engines override it to overlap the memory
    /// latency of the lookups (FindMissingBlobs asks for thousands at once).
    fn contains_many(&self, keys: &[Key]) -> Result<Vec<bool>, StorageError> {
        keys.iter().map(|k| self.contains(k)).collect()
    }

    /// Starts writing a blob of exactly `len` bytes. Dropping the writer without `commit`
    /// abandons the write; nothing becomes visible.
    async fn begin_write(&self, key: Key, len: u64) -> Result<Box<dyn BlobWriter>, StorageError>;

    /// Writes a whole blob held in memory: a convenience over `begin_write`.
    async fn put(&self, key: Key, data: Bytes) -> Result<(), StorageError> {
        let mut w = self.begin_write(key, data.len() as u64).await?;
        w.write(data).await?;
        w.commit().await
    }

    /// Writes several whole blobs held in memory. Engines override it to commit them
    /// together (one sync round for the lot); the default writes them one after another.
    async fn put_many(&self, items: Vec<(Key, Bytes)>) -> Result<(), StorageError> {
        for (key, data) in items {
            self.put(key, data).await?;
        }
        Ok(())
    }

    /// Largest blob this store accepts, in bytes.
    fn max_blob_size(&self) -> u64;
}

/// An in-progress write, fed in order by one task.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends the next chunk. Writing more than the announced length is an error.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;

    /// Publishes the blob once all `len` bytes arrived. When this returns `Ok`, the blob is
    /// durable according to the store's durability setting. Replaces any older blob under
    /// the same key (the action cache rewrites entries).
    async fn commit(self: Box<Self>) -> Result<(), StorageError>;

    /// The step at which [`BlobWriter::drop_buffered`] can cut the write back: bytes are
    /// handed to the disk in whole multiples of it. `None` (the default) when the writer keeps
    /// everything in memory until commit and cannot give any of it up.
    fn rewind_step(&self) -> Option<u64> {
        None
    }

    /// Frees the bytes buffered in memory that have not reached the disk yet, so an upload
    /// whose client went away costs no memory while it waits to be resumed. Returns how many
    /// bytes the write now holds (a multiple of [`BlobWriter::rewind_step`]); the next
    /// [`BlobWriter::write`] continues from there. `None` when the writer cannot do this.
    fn drop_buffered(&mut self) -> Option<u64> {
        None
    }
}
