//! The segment engine behind `kiln serve`: opening a store and the `Store` implementation.

use super::blob::DamageHook;
use super::config::EngineConfig;
use super::format::{
    InvalidRange, MAX_INVALID_RANGES, Pos, SEGMENT_HEADER_LEN, State, state_slot_offset,
};
use super::index::{self, Index};
use super::open::{highest_segment_seq, map_live_segments, no_space, read_state, ring_on_disk};
use super::read::Shared;
use super::segment::Segments;
use super::stats::{Counters, StorageStats};
use super::sys::{self, IoEngine, IoFile};
use super::upload::{EngineWriter, Limits, encode_all};
use super::writer::{Body, EPOCH_RESERVE, Req, Writer};
use super::{Blob, BlobWriter, Cached, Key, StorageError, Store};
use async_trait::async_trait;
use bytes::Bytes;
use crossbeam::channel::{Sender, unbounded};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// The persistent store: segments on disk, a mapped index, one I/O thread.
///
/// Use [`Engine::open`] for the server and [`Engine::open_with_io`] in tests that inject an
/// I/O engine (faults, crash images). Concurrency: `get`/`contains`/`begin_write` may be
/// called from any number of threads or tasks; reads never block on writes.
pub struct Engine {
    sh: Arc<Shared>,
    /// Engine-wide bounds of what uploads hand on (`upload.rs`).
    limits: Arc<Limits>,
    tx: Mutex<Option<Sender<Req>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Opens (or creates) the store described by `cfg`, with the configured I/O engine.
    /// Cost: a few small reads and one map per segment, plus after an unclean stop a replay
    /// bounded by `checkpoint_bytes`; only when the index (or the state file) is lost or
    /// damaged does it read every record header of the ring to rebuild the index.
    pub fn open(cfg: EngineConfig) -> Result<Self, StorageError> {
        cfg.validate()?;
        let io = sys::build(cfg.io)?;
        Self::open_with_io(cfg, io)
    }

    /// Opens the store using `io` for every write (tests pass a fault-injecting engine).
    pub fn open_with_io(
        cfg: EngineConfig,
        mut io: Box<dyn IoEngine>,
    ) -> Result<Self, StorageError> {
        cfg.validate()?;
        let seg_dir = cfg.dir.join("segments");
        std::fs::create_dir_all(&seg_dir)?;
        let n = cfg.segments();
        let state_path = cfg.dir.join("state");
        let state_file = IoFile::open(&state_path)?;
        // Both slots allocated up front: a later state write can never be the one that finds
        // the disk full (a roll or a sync round must not fail for want of 8 KiB).
        sys::allocate_fully(&state_file.file, state_slot_offset(2))
            .map_err(|e| no_space("state file", &state_path, &e))?;
        let mut state = read_state(&mut *io, &state_file)?;
        let index_path = cfg.dir.join("index");
        let probe = cfg.probe_limit as usize;
        let mut slots = cfg.effective_index_slots() as usize;
        // A growth a crash interrupted: the index may lack entries pushed out of it while the
        // copy ran (they were only in the new table). Rebuild it from the segment records at
        // the size the growth aimed for; `index.grow` goes only once that is done.
        let grow_path = cfg.dir.join("index.grow");
        let interrupted_growth = grow_path.exists();
        if interrupted_growth {
            let target = index::existing_slots(&grow_path, probe)
                .or_else(|| index::existing_slots(&index_path, probe).map(|s| s * 2))
                .unwrap_or(slots)
                .min(cfg.effective_index_max_slots() as usize);
            slots = slots.max(target);
            // `index` goes first (durably): once it is gone, every later open rebuilds anyway,
            // so `index.grow` may then go too, before the new table takes its space.
            match std::fs::remove_file(&index_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            std::fs::File::open(&cfg.dir)?.sync_all()?;
            std::fs::remove_file(&grow_path)?;
        }
        // A touch file left by a growth (hints only).
        let _ = std::fs::remove_file(index::touch_path(&grow_path));
        let (mut index, created) = Index::open(&index_path, slots, probe)
            .map_err(|e| no_space("index file", &index_path, &e))?;
        let fresh = state.is_none();
        let mut st = state.take().unwrap_or(State {
            tail: 1,
            segments: n,
            ..State::default()
        });
        // Why the index cannot be used as it is (then it is rebuilt from the segment records
        // where the ring is known, else the cache starts empty).
        let mut reset: Option<&str> = None;
        let mut ring = None;
        if fresh {
            reset = Some("state file lost or unreadable");
            // Only when the files agree with the ring size: a header with a higher seq outside
            // its slot (another ring size) must still push new seqs past it.
            let highest = highest_segment_seq(&seg_dir);
            ring = ring_on_disk(&seg_dir, n, cfg.segment_size).filter(|&(_, h)| h >= highest);
        } else if st.segments != n {
            reset = Some("ring size changed");
        } else if created {
            reset = Some(if interrupted_growth {
                "an index growth was interrupted"
            } else {
                "index file missing, resized or with a damaged header"
            });
            ring = Some((st.tail, st.head)).filter(|(t, h)| t <= h);
        }
        let mut rebuild = false;
        if let Some(why) = reset {
            index.reset();
            st.invalid.clear();
            st.durable = st.durable.max(st.limit);
            st.limit = st.durable + 1;
            st.segments = n;
            if let Some((tail, head)) = ring {
                tracing::warn!(
                    reason = why,
                    tail,
                    head,
                    "storage: index unusable; rebuilding it from the segment records"
                );
                st.tail = tail;
                st.head = head;
                replay_whole_ring(&mut st, cfg.segment_size, fresh);
                rebuild = true;
            } else {
                // Without a state (lost, or never written) old segment files may still hold
                // records: continue after the highest seq on disk, so none of them can ever
                // pass the seq-seeded header check in a new segment.
                st.head = st.head.max(highest_segment_seq(&seg_dir));
                if st.head > 0 {
                    tracing::warn!(reason = why, "storage: starting with an empty cache");
                }
                st.tail = st.head + 1;
            }
            io.sync(&[index.file()])?;
        }
        // Epochs used after the last durable point are lost; remember them as invalid.
        if st.limit > st.durable + 1 {
            tracing::info!(
                durable = st.durable,
                limit = st.limit,
                "storage: unclean stop; ignoring index entries of later epochs"
            );
            st.invalid.push(InvalidRange {
                lo: st.durable + 1,
                hi: st.limit,
                max_seq: st.head,
            });
        }
        let tail = st.tail;
        st.invalid.retain(|r| r.max_seq >= tail && r.lo < r.hi);
        if st.invalid.len() > MAX_INVALID_RANGES {
            tracing::warn!(
                "storage: too many unclean stops within one ring cycle; rebuilding the index from the segment records"
            );
            index.reset();
            io.sync(&[index.file()])?;
            st.invalid.clear();
            replay_whole_ring(&mut st, cfg.segment_size, false);
            rebuild = true;
        }
        let epoch = st.limit.max(st.durable + 1);
        st.limit = epoch + EPOCH_RESERVE;
        let segs = Segments::new(&seg_dir, n);
        map_live_segments(&segs, st.tail, st.head, cfg.segment_size);
        let counters = Counters::default();
        counters
            .index_slots
            .store(index.slots() as u64, Ordering::Relaxed);
        let sh = Arc::new(Shared::new(
            cfg,
            index,
            segs,
            (st.tail, st.head, n),
            st.invalid.clone(),
            counters,
            io.name(),
        ));
        let mut w = Writer::new(Arc::clone(&sh), io, state_file, st, epoch)?;
        w.open_round(rebuild)?;
        let (tx, rx) = unbounded();
        let thread = std::thread::Builder::new()
            .name("kiln-storage-io".into())
            .spawn(move || w.run(&rx))?;
        tracing::debug!(io = sh.io_name(), "storage engine open");
        Ok(Self {
            sh,
            limits: Arc::new(Limits::new()),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn sender(&self) -> Result<Sender<Req>, StorageError> {
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(StorageError::Closed)
    }

    async fn call<T>(
        &self,
        f: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> Req,
    ) -> Result<T, StorageError> {
        let (otx, orx) = oneshot::channel();
        self.sender()?
            .send(f(otx))
            .map_err(|_| StorageError::Closed)?;
        orx.await.map_err(|_| StorageError::Closed)?
    }

    /// Makes everything committed so far durable (a sync round), whatever the durability mode.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.call(|reply| Req::Sync { reply }).await
    }

    /// Commits many small blobs (each at most `part_size`) in one group commit: for batch
    /// uploads. Larger blobs fall back to one `put` each.
    pub async fn put_many(&self, items: Vec<(Key, Bytes)>) -> Result<(), StorageError> {
        let part = self.sh.cfg().part_size;
        let (small, large): (Vec<_>, Vec<_>) =
            items.into_iter().partition(|(_, b)| b.len() as u64 <= part);
        if let Some(m) = self.sh.poison().get() {
            return Err(StorageError::Poisoned(m.clone()));
        }
        if !small.is_empty() {
            let (keys, data): (Vec<Key>, Vec<Bytes>) = small.into_iter().unzip();
            let encoded = encode_all(&self.sh, &self.limits, data).await?;
            let items = keys
                .into_iter()
                .zip(encoded)
                .map(|(k, e)| (k, Body::Single(e)))
                .collect();
            self.call(|reply| Req::Commit { items, reply }).await?;
        }
        for (k, b) in large {
            self.put(k, b).await?;
        }
        Ok(())
    }

    /// Counters for metrics, plus ring occupancy.
    pub fn stats(&self) -> StorageStats {
        let mut s = self.sh.counters().snapshot(self.sh.io_name());
        let (t, h) = (self.sh.tail(), self.sh.head());
        s.segments = u64::from(h.saturating_sub(t) + u32::from(h >= t));
        s.bytes_used = s.segments * self.sh.cfg().segment_size;
        s.index_max_slots = self.sh.cfg().effective_index_max_slots().max(s.index_slots);
        s.index_growing = self.sh.growing().is_some();
        s
    }

    /// Live index entries, by scanning the whole index (slow; for `kiln status`).
    pub fn count_entries(&self) -> u64 {
        self.sh.index().count(|e| self.sh.valid(e))
    }

    /// Name of the I/O engine in use ("io_uring", "psync", "fault").
    pub fn io_engine(&self) -> &'static str {
        self.sh.io_name()
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        self.sh.cfg()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.sh
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Ends the I/O thread after a final sync (clean stop), even while upload handles
        // still hold senders.
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(Req::Shutdown);
        }
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}

/// Points the replay at the whole ring `tail..=head` (the index is rebuilt from its records):
/// the checkpoint at the tail's first record, and, when no synced position is known (or
/// `forget_synced`, the state having been lost), everything up to the head's end counted as
/// synced.
fn replay_whole_ring(st: &mut State, segment_size: u64, forget_synced: bool) {
    if forget_synced || st.synced.seq == 0 {
        st.synced = Pos {
            seq: st.head,
            off: segment_size,
        };
    }
    st.checkpoint = Pos {
        seq: st.tail,
        off: SEGMENT_HEADER_LEN,
    };
}

impl Engine {
    /// The blob `get` found under `key` (entry `e`), as handed to a caller: a blob with parts
    /// decompressed only when read unpublishes itself if one turns out damaged.
    fn hand_out(&self, key: &Key, e: &super::index::Entry, b: Blob) -> Blob {
        if !b.decodes_lazily() {
            return b;
        }
        let sh = Arc::clone(&self.sh);
        let (key, seq, off) = (*key, e.seq, e.off);
        // Once per blob handed out, however often its damaged part is read.
        let fired = std::sync::atomic::AtomicBool::new(false);
        b.on_damage(DamageHook(Arc::new(move || {
            if !fired.swap(true, Ordering::Relaxed) {
                sh.damaged(&key, seq, off);
            }
        })))
    }

    /// `hand_out` for the hits of a batched read of `keys`, in order.
    fn hand_out_all(
        &self,
        keys: &[Key],
        hits: Vec<Option<(index::Entry, Blob)>>,
    ) -> Vec<Option<Blob>> {
        hits.into_iter()
            .zip(keys)
            .map(|(hit, key)| hit.map(|(e, b)| self.hand_out(key, &e, b)))
            .collect()
    }
}

#[async_trait]
impl Store for Engine {
    fn get(&self, key: &Key) -> Result<Option<Blob>, StorageError> {
        // A hit records a touch (read.rs), read by eviction's copy-forward.
        Ok(self.sh.get(key).map(|(e, b)| self.hand_out(key, &e, b)))
    }

    fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Blob>>, StorageError> {
        Ok(self.hand_out_all(keys, self.sh.get_many(keys)))
    }

    fn get_cached(&self, key: &Key) -> Result<Cached<Option<Blob>>, StorageError> {
        let hit = self.sh.get_cached(key);
        Ok(hit.map(|hit| hit.map(|(e, b)| self.hand_out(key, &e, b))))
    }

    fn get_many_cached(&self, keys: &[Key]) -> Result<Cached<Vec<Option<Blob>>>, StorageError> {
        let hits = self.sh.get_many_cached(keys);
        Ok(hits.map(|hits| self.hand_out_all(keys, hits)))
    }

    fn contains(&self, key: &Key) -> Result<bool, StorageError> {
        Ok(self.sh.lookup_touch(key).is_some())
    }

    fn contains_many(&self, keys: &[Key]) -> Result<Vec<bool>, StorageError> {
        // Slots of a large index are cache (and TLB) misses: start loading the slot of a key
        // a few lookups ahead, so the misses overlap instead of queueing one after another.
        const AHEAD: usize = 8;
        let index = self.sh.index();
        for k in keys.iter().take(AHEAD) {
            index.prefetch(k);
        }
        let mut out = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            if let Some(next) = keys.get(i + AHEAD) {
                index.prefetch(next);
            }
            out.push(self.contains(k)?);
        }
        Ok(out)
    }

    async fn put_many(&self, items: Vec<(Key, Bytes)>) -> Result<(), StorageError> {
        // The inherent method: small blobs in one commit request, so one sync round.
        Engine::put_many(self, items).await
    }

    async fn begin_write(&self, key: Key, len: u64) -> Result<Box<dyn BlobWriter>, StorageError> {
        let max = self.sh.cfg().max_blob_size;
        if len > max {
            return Err(StorageError::TooLarge { len, max });
        }
        if let Some(m) = self.sh.poison().get() {
            return Err(StorageError::Poisoned(m.clone()));
        }
        Ok(Box::new(EngineWriter::new(
            Arc::clone(&self.sh),
            Arc::clone(&self.limits),
            self.sender()?,
            key,
            len,
        )))
    }

    fn max_blob_size(&self) -> u64 {
        self.sh.cfg().max_blob_size
    }
}
