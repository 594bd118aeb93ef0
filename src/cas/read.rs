//! Reads for async callers: the blob's bytes are read where they do not stall the runtime.
//!
//! `Cas::get` reads through the store's maps, so a blob that is not in memory is read by page
//! faults, which block the calling thread until the disk answers. On the async runtime's few
//! worker threads (one per core), two cold reads would stop every other request. So a read
//! first asks the store for the blob only if its bytes are all in memory
//! (`Store::get_cached`: the lookup and a look at the page cache, then the read); a blob on
//! disk is read with `get` on a blocking thread, at most [`COLD_READS`] at a time, so cold
//! reads overlap each other and leave the runtime to the rest.

use super::{Blob, Cas, CasError};
use crate::digest::Digest;
use crate::storage::{Cached, StorageError};

/// Cold reads in flight at once, each on a blocking thread. More wait (asynchronously) for a
/// slot: enough to keep a fast disk busy, far below tokio's limit on blocking threads (512),
/// which uploads and other blocking work share.
pub const COLD_READS: usize = 64;

impl Cas {
    /// `get`, for async callers (ByteStream Read): a blob on disk is read on a blocking
    /// thread.
    pub async fn read(&self, digest: &Digest) -> Result<Option<Blob>, CasError> {
        Ok(Self::sized(digest, self.read_by_hash(digest).await?))
    }

    /// `get_many`, for async callers (BatchReadBlobs): if any blob is on disk, the whole
    /// batch is read on a blocking thread (its records asked of the disk together there).
    pub async fn read_many(&self, digests: &[Digest]) -> Result<Vec<Option<Blob>>, CasError> {
        match self.store.get_many_cached(&Self::stored_keys(digests))? {
            Cached::Read(found) => Ok(Self::answers(digests, found)),
            Cached::OnDisk => {
                let owned = digests.to_vec();
                self.on_blocking_thread(move |cas| cas.get_many(&owned))
                    .await
            }
        }
    }

    /// `get_by_hash`, for async callers (the HTTP cache's `/cas/<hash>`).
    pub async fn read_by_hash(&self, digest: &Digest) -> Result<Option<Blob>, CasError> {
        if Self::is_empty_hash(digest) {
            return Ok(Some(Blob::default()));
        }
        match self.store.get_cached(&Self::key(digest))? {
            Cached::Read(found) => Ok(found),
            Cached::OnDisk => {
                let d = *digest;
                self.on_blocking_thread(move |cas| cas.get_by_hash(&d))
                    .await
            }
        }
    }

    /// Runs `read` on a blocking thread once one of the [`COLD_READS`] slots is free.
    async fn on_blocking_thread<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Cas) -> Result<T, CasError> + Send + 'static,
    ) -> Result<T, CasError> {
        let slot = self
            .cold
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Closed)?;
        let cas = self.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            read(&cas)
        })
        .await
        .map_err(|e| StorageError::Io(std::io::Error::other(format!("a cold read failed: {e}"))))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::storage::{BlobWriter, Key, MemoryStore, Store};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    /// A store whose blobs under `cold` keys are "on disk": `get_cached` says `OnDisk`, and `get`
    /// blocks its thread until the test opens the gate, as a page fault would.
    struct SlowDisk {
        inner: MemoryStore,
        cold: Vec<Key>,
        gate: Mutex<bool>,
        opened: Condvar,
        waiting: AtomicUsize,
        most_waiting: AtomicUsize,
    }

    impl SlowDisk {
        fn open_gate(&self) {
            *self.gate.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    #[async_trait::async_trait]
    impl Store for SlowDisk {
        fn get(&self, key: &Key) -> Result<Option<Blob>, StorageError> {
            if self.cold.contains(key) {
                let now = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_waiting.fetch_max(now, Ordering::SeqCst);
                let mut open = self.gate.lock().unwrap();
                while !*open {
                    open = self.opened.wait(open).unwrap();
                }
                self.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            self.inner.get(key)
        }
        fn get_cached(&self, key: &Key) -> Result<Cached<Option<Blob>>, StorageError> {
            if self.cold.contains(key) {
                return Ok(Cached::OnDisk);
            }
            self.get(key).map(Cached::Read)
        }
        fn get_many_cached(&self, keys: &[Key]) -> Result<Cached<Vec<Option<Blob>>>, StorageError> {
            if keys.iter().any(|k| self.cold.contains(k)) {
                return Ok(Cached::OnDisk);
            }
            self.get_many(keys).map(Cached::Read)
        }
        fn contains(&self, key: &Key) -> Result<bool, StorageError> {
            self.inner.contains(key)
        }
        async fn begin_write(
            &self,
            key: Key,
            len: u64,
        ) -> Result<Box<dyn BlobWriter>, StorageError> {
            self.inner.begin_write(key, len).await
        }
        fn max_blob_size(&self) -> u64 {
            self.inner.max_blob_size()
        }
    }

    /// Opens the gate when dropped: a failing test unwinds through it before the runtime is
    /// dropped, so the runtime's threads end and the test fails instead of hanging.
    struct OpenOnDrop(Arc<SlowDisk>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open_gate();
        }
    }

    /// A runtime like `kiln serve`'s on this box (two worker threads), a store with `n` cold
    /// blobs and one hot one, and their digests.
    fn setup(
        n: usize,
    ) -> (
        tokio::runtime::Runtime,
        Arc<SlowDisk>,
        Cas,
        Vec<Digest>,
        Digest,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let f = DigestFunction::Sha256;
        let cold: Vec<Digest> = (0..n)
            .map(|i| f.digest_of(format!("cold {i}").as_bytes()))
            .collect();
        let hot = f.digest_of(b"hot");
        let store = Arc::new(SlowDisk {
            inner: MemoryStore::new(1 << 24),
            cold: cold.iter().map(Cas::key).collect(),
            gate: Mutex::new(false),
            opened: Condvar::new(),
            waiting: AtomicUsize::new(0),
            most_waiting: AtomicUsize::new(0),
        });
        rt.block_on(async {
            for (i, d) in cold.iter().enumerate() {
                let b = bytes::Bytes::from(format!("cold {i}"));
                store.put(Cas::key(d), b).await.unwrap();
            }
            store
                .put(Cas::key(&hot), bytes::Bytes::from_static(b"hot"))
                .await
                .unwrap();
        });
        let cas = Cas::new(store.clone());
        (rt, store, cas, cold, hot)
    }

    /// Waits (up to 10 s) until `n` reads are blocked in the store.
    fn until_waiting(store: &SlowDisk, n: usize) {
        for _ in 0..1000 {
            if store.waiting.load(Ordering::SeqCst) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let now = store.waiting.load(Ordering::SeqCst);
        panic!("{now} reads waiting on the disk at once, not {n}");
    }

    #[test]
    fn reads_waiting_on_the_disk_leave_the_runtime_to_the_rest() {
        let (rt, store, cas, cold, hot) = setup(8);
        let _gate = OpenOnDrop(store.clone());
        // Eight cold reads at once, four times the runtime's worker threads, single and in a
        // batch: read inline, two of them would stop the runtime until the disk answered.
        let mut cold_reads = Vec::new();
        for d in &cold[..6] {
            let (cas, d) = (cas.clone(), *d);
            cold_reads.push(rt.spawn(async move { vec![cas.read(&d).await.unwrap()] }));
        }
        let batch = cold[6..].to_vec();
        let c = cas.clone();
        cold_reads.push(rt.spawn(async move { c.read_many(&batch).await.unwrap() }));
        until_waiting(&store, 7);
        // Meanwhile a hot read is answered at once.
        let (tx, rx) = std::sync::mpsc::channel();
        let c = cas.clone();
        rt.spawn(async move {
            let _ = tx.send(c.read(&hot).await.unwrap());
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        store.open_gate();
        let got = got.expect("a hot read answered while cold reads wait on the disk");
        assert_eq!(got.unwrap().to_bytes().unwrap(), "hot");
        for (i, r) in cold_reads.into_iter().enumerate() {
            let blobs = rt.block_on(r).unwrap();
            for (j, b) in blobs.into_iter().enumerate() {
                let n = if i < 6 { i } else { 6 + j };
                assert_eq!(b.unwrap().to_bytes().unwrap(), format!("cold {n}"));
            }
        }
    }

    #[test]
    fn cold_reads_in_flight_are_bounded() {
        let extra = 10;
        let (rt, store, cas, cold, _) = setup(COLD_READS + extra);
        let _gate = OpenOnDrop(store.clone());
        let reads: Vec<_> = cold
            .iter()
            .map(|d| {
                let (cas, d) = (cas.clone(), *d);
                rt.spawn(async move { cas.read(&d).await.unwrap() })
            })
            .collect();
        until_waiting(&store, COLD_READS);
        // The rest wait for a slot, not on a thread of their own.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(store.waiting.load(Ordering::SeqCst), COLD_READS);
        store.open_gate();
        for (i, r) in reads.into_iter().enumerate() {
            let b = rt.block_on(r).unwrap().expect("a stored blob");
            assert_eq!(b.to_bytes().unwrap(), format!("cold {i}"));
        }
        assert_eq!(store.most_waiting.load(Ordering::SeqCst), COLD_READS);
    }
}
