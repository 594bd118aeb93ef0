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
use crate::storage::{Cached, Key, StorageError, Store};
use bytes::Bytes;
use std::sync::Arc;

/// Cold reads in flight at once, each on a blocking thread. More wait (asynchronously) for a
/// slot: enough to keep a fast disk busy, far below tokio's limit on blocking threads (512),
/// which uploads and other blocking work share.
pub const COLD_READS: usize = 64;

/// GetTree pages being finished at once on blocking threads (pages that met a directory on
/// disk, and walks again to a token). A page reads many directories, so pages have slots of
/// their own: walks of large trees never hold the slots single cold reads wait for.
pub const TREE_WALKS: usize = 16;

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
        self.read_key(&self.store, Self::key(digest)).await
    }

    /// `get` if the blob's bytes are all in memory; `OnDisk` (nothing read) if reading them
    /// would wait on the disk. For async callers that make many reads in a row (a GetTree
    /// page) and go to a blocking thread only when one is on disk.
    pub fn get_if_cached(&self, digest: &Digest) -> Result<Cached<Option<Blob>>, CasError> {
        if Self::is_empty_hash(digest) {
            return Ok(Cached::Read(Self::sized(digest, Some(Blob::default()))));
        }
        let found = self.store.get_cached(&Self::key(digest))?;
        Ok(found.map(|found| Self::sized(digest, found)))
    }

    /// `get_bytes`, for async callers: the blob in one buffer, or `BlobNotFound`.
    pub async fn read_bytes(&self, digest: &Digest) -> Result<Bytes, CasError> {
        Self::found_bytes(digest, self.read(digest).await?)
    }

    /// `store.get(key)` for async callers: a record on disk is read on a blocking thread
    /// (the action cache's entries, which may live in a store of their own, come this way).
    pub(super) async fn read_key(
        &self,
        store: &Arc<dyn Store>,
        key: Key,
    ) -> Result<Option<Blob>, CasError> {
        match store.get_cached(&key)? {
            Cached::Read(found) => Ok(found),
            Cached::OnDisk => {
                let store = store.clone();
                self.on_blocking_thread(move |_| Ok(store.get(&key)?)).await
            }
        }
    }

    /// Runs `read` on a blocking thread once one of the [`COLD_READS`] slots is free: for a
    /// read that may wait on the disk.
    pub(super) async fn on_blocking_thread<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Cas) -> Result<T, CasError> + Send + 'static,
    ) -> Result<T, CasError> {
        self.blocking(&self.cold, read).await
    }

    /// Runs `walk` on a blocking thread once one of the [`TREE_WALKS`] slots is free: for work
    /// that reads many blobs in a row (a GetTree page), which would hold a runtime thread for
    /// as long.
    pub(super) async fn walk_on_blocking_thread<T: Send + 'static>(
        &self,
        walk: impl FnOnce(&Cas) -> Result<T, CasError> + Send + 'static,
    ) -> Result<T, CasError> {
        self.blocking(&self.walks, walk).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        slots: &Arc<tokio::sync::Semaphore>,
        work: impl FnOnce(&Cas) -> Result<T, CasError> + Send + 'static,
    ) -> Result<T, CasError> {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Closed)?;
        let cas = self.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work(&cas)
        })
        .await
        .map_err(|e| {
            StorageError::Io(std::io::Error::other(format!(
                "a read on a blocking thread failed: {e}"
            )))
        })?
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::storage::{BlobWriter, Key, MemoryStore, Store};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    /// A store whose blobs under `cold` keys are "on disk": `get_cached` says `OnDisk`, and `get`
    /// blocks its thread until the test opens the gate, as a page fault would.
    pub(in crate::cas) struct SlowDisk {
        inner: MemoryStore,
        cold: Vec<Key>,
        gate: Mutex<bool>,
        opened: Condvar,
        pub(in crate::cas) waiting: AtomicUsize,
        most_waiting: AtomicUsize,
    }

    impl SlowDisk {
        pub(in crate::cas) fn open_gate(&self) {
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
    pub(in crate::cas) struct OpenOnDrop(pub(in crate::cas) Arc<SlowDisk>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open_gate();
        }
    }

    pub(in crate::cas) fn slow_disk(cold: Vec<Key>) -> Arc<SlowDisk> {
        Arc::new(SlowDisk {
            inner: MemoryStore::new(1 << 24),
            cold,
            gate: Mutex::new(false),
            opened: Condvar::new(),
            waiting: AtomicUsize::new(0),
            most_waiting: AtomicUsize::new(0),
        })
    }

    fn two_workers() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
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
        let rt = two_workers();
        let f = DigestFunction::Sha256;
        let cold: Vec<Digest> = (0..n)
            .map(|i| f.digest_of(format!("cold {i}").as_bytes()))
            .collect();
        let hot = f.digest_of(b"hot");
        let store = slow_disk(cold.iter().map(Cas::key).collect());
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
    pub(in crate::cas) fn until_waiting(store: &SlowDisk, n: usize) {
        for _ in 0..1000 {
            if store.waiting.load(Ordering::SeqCst) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let now = store.waiting.load(Ordering::SeqCst);
        panic!("{now} reads waiting on the disk at once, not {n}");
    }

    /// While reads of `on_disk` wait in the store, a read of the cached blob `hot` is answered
    /// (within 10 s); then the gate opens for them.
    fn hot_read_answered_then_open(
        rt: &tokio::runtime::Runtime,
        store: &SlowDisk,
        cas: &Cas,
        hot: Digest,
        on_disk: &str,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let c = cas.clone();
        rt.spawn(async move {
            let _ = tx.send(c.read(&hot).await.unwrap());
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        store.open_gate();
        let got = got.unwrap_or_else(|_| panic!("no hot read answered while {on_disk} wait"));
        assert_eq!(got.unwrap().to_bytes().unwrap(), "hot");
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
        hot_read_answered_then_open(&rt, &store, &cas, hot, "cold blobs");
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

    #[test]
    fn tree_walks_in_flight_are_bounded_and_leave_cold_reads_their_slots() {
        let extra = 4;
        let (rt, store, cas, cold, _) = setup(TREE_WALKS + extra + 1);
        let _gate = OpenOnDrop(store.clone());
        // Walks (GetTree pages) that each wait on the disk, more than their slots.
        let walks: Vec<_> = cold[..TREE_WALKS + extra]
            .iter()
            .map(|d| {
                let (cas, d) = (cas.clone(), *d);
                rt.spawn(async move {
                    cas.walk_on_blocking_thread(move |cas| cas.get(&d))
                        .await
                        .unwrap()
                })
            })
            .collect();
        until_waiting(&store, TREE_WALKS);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(store.waiting.load(Ordering::SeqCst), TREE_WALKS);
        // A cold read is not held up behind them: its slots are its own.
        let last = cold[TREE_WALKS + extra];
        let c = cas.clone();
        let read = rt.spawn(async move { c.read(&last).await.unwrap() });
        until_waiting(&store, TREE_WALKS + 1);
        store.open_gate();
        for (i, w) in walks.into_iter().enumerate() {
            let b = rt.block_on(w).unwrap().expect("a stored blob");
            assert_eq!(b.to_bytes().unwrap(), format!("cold {i}"));
        }
        let b = rt.block_on(read).unwrap().expect("a stored blob");
        assert_eq!(
            b.to_bytes().unwrap(),
            format!("cold {}", TREE_WALKS + extra)
        );
        assert_eq!(store.most_waiting.load(Ordering::SeqCst), TREE_WALKS + 1);
    }

    /// The read of a GetActionResult that finds its blob on disk.
    #[derive(Clone, Copy, Debug)]
    enum OnDisk {
        /// The action-cache entry.
        Entry,
        /// The tree of an output directory (read for the completeness check).
        Tree,
        /// The inlined stdout.
        Stdout,
    }

    /// Three lookups of complete results (one output directory, stdout inlined), each finding
    /// its `part` on disk, more than the runtime's two worker threads: a hot read is answered
    /// while they wait, and each gets its own result once the disk answers.
    fn action_results_on_disk_leave_the_runtime_to_the_rest(part: OnDisk) {
        use crate::cas::{ActionCache, InlineRequest};
        use crate::proto::reapi::{ActionResult, Directory, FileNode, OutputDirectory, Tree};
        use prost::Message;
        let rt = two_workers();
        let f = DigestFunction::Sha256;
        let n = 3;
        let mut cold = Vec::new();
        let mut stored = Vec::new();
        for i in 0..n {
            let action = f.digest_of(format!("action {i}").as_bytes());
            let stdout = format!("stdout {i}");
            let out = f.digest_of(stdout.as_bytes());
            let tree = Tree {
                root: Some(Directory {
                    files: vec![FileNode {
                        name: "f".into(),
                        digest: Some(out.to_proto()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                children: vec![],
            }
            .encode_to_vec();
            let tree_digest = f.digest_of(&tree);
            cold.push(match part {
                OnDisk::Entry => ActionCache::hash_key("", &action),
                OnDisk::Tree => Cas::key(&tree_digest),
                OnDisk::Stdout => Cas::key(&out),
            });
            let result = ActionResult {
                stdout_digest: Some(out.to_proto()),
                output_directories: vec![OutputDirectory {
                    path: "d".into(),
                    tree_digest: Some(tree_digest.to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            };
            stored.push((action, stdout, out, tree, tree_digest, result));
        }
        let store = slow_disk(cold);
        let _gate = OpenOnDrop(store.clone());
        let cas = Cas::new(store.clone());
        let ac = ActionCache::new(cas.clone(), store.clone());
        let hot = f.digest_of(b"hot");
        rt.block_on(async {
            cas.put(&hot, "hot".into()).await.unwrap();
            for (action, stdout, out, tree, tree_digest, result) in &stored {
                cas.put(out, stdout.clone().into()).await.unwrap();
                cas.put(tree_digest, tree.clone().into()).await.unwrap();
                ac.update("", action, result).await.unwrap();
            }
        });
        let lookups: Vec<_> = stored
            .iter()
            .map(|(action, ..)| {
                let (ac, action) = (ac.clone(), *action);
                let inline = InlineRequest {
                    stdout: true,
                    max_bytes: 1024,
                    ..Default::default()
                };
                rt.spawn(async move { ac.get("", &action, &inline).await })
            })
            .collect();
        until_waiting(&store, n);
        hot_read_answered_then_open(&rt, &store, &cas, hot, &format!("{part:?}"));
        for (r, (_, stdout, ..)) in lookups.into_iter().zip(&stored) {
            let result = rt.block_on(r).unwrap().expect("a complete result");
            assert_eq!(result.stdout_raw, stdout.as_bytes(), "{part:?} on disk");
            assert_eq!(result.output_directories.len(), 1);
        }
    }

    #[test]
    fn action_cache_entries_on_disk_leave_the_runtime_to_the_rest() {
        action_results_on_disk_leave_the_runtime_to_the_rest(OnDisk::Entry);
    }

    #[test]
    fn output_trees_on_disk_leave_the_runtime_to_the_rest() {
        action_results_on_disk_leave_the_runtime_to_the_rest(OnDisk::Tree);
    }

    #[test]
    fn inlined_outputs_on_disk_leave_the_runtime_to_the_rest() {
        action_results_on_disk_leave_the_runtime_to_the_rest(OnDisk::Stdout);
    }
}
