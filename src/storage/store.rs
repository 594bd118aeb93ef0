//! The seam between the CAS/AC layer and whatever holds the bytes: [`Store`] (look up,
//! write, capacity) and [`BlobWriter`] (one streamed write). [`super::MemoryStore`] implements
//! it for unit tests, [`super::Engine`] for `kiln serve`, and the metrics layer decorates it.

use super::{Blob, Key, StorageError};
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

    /// `get` for many keys, answers in order (BatchReadBlobs). Engines override it to read
    /// the blobs from disk together rather than one after another.
    fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Blob>>, StorageError> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// `get`, only if it waits on no disk: the blob's bytes are all in memory (or it is
    /// absent). Otherwise [`Cached::OnDisk`], having read nothing (the disk may have been
    /// asked for the bytes): the caller then reads with `get` where a wait harms nobody. Async
    /// callers use it so that a page fault never stalls the runtime's worker threads. A store
    /// whose reads never wait reads at once (the default).
    fn get_cached(&self, key: &Key) -> Result<Cached<Option<Blob>>, StorageError> {
        self.get(key).map(Cached::Read)
    }

    /// `get_many`, only if it waits on no disk for any of `keys` (see `get_cached`).
    fn get_many_cached(&self, keys: &[Key]) -> Result<Cached<Vec<Option<Blob>>>, StorageError> {
        self.get_many(keys).map(Cached::Read)
    }

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

/// What a read that must not wait on the disk did (`Store::get_cached`).
#[derive(Debug)]
pub enum Cached<T> {
    /// Everything it needed was in memory: read.
    Read(T),
    /// Some bytes it needs are on disk: not read.
    OnDisk,
}

impl<T> Cached<T> {
    /// What was read, passed through `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Cached<U> {
        match self {
            Cached::Read(v) => Cached::Read(f(v)),
            Cached::OnDisk => Cached::OnDisk,
        }
    }
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
