//! Resumable ByteStream uploads: state kept per upload resource name, so a client whose stream
//! broke can ask QueryWriteStatus and continue from `committed_size`.
//!
//! Bounds (every one reported by [`UploadRegistry::gauges`]):
//! - at most `max_open` uploads are registered; past it, after sweeping idle ones, a new upload
//!   is RESOURCE_EXHAUSTED;
//! - a stream that is feeding an upload holds a reservation of the memory it may buffer (one
//!   storage part, plus the zstd window for compressed uploads) from a budget of
//!   `max_buffer_bytes`; a stream that cannot reserve is RESOURCE_EXHAUSTED;
//! - when a stream ends without finishing, its upload is *parked*: cut back to the bytes already
//!   on disk, so a waiting upload costs no buffer memory (compressed uploads, whose decoder state
//!   cannot be cut back, are dropped and restart from zero);
//! - parked uploads idle longer than the idle timeout are swept by a timer task.
//!
//! Concurrency: the registry map is locked only to find, insert or sweep; each upload has its
//! own async mutex, held while one stream feeds it. Many clients uploading the same blob under
//! different upload ids each write their own copy; the first to finish publishes it and the
//! others stop early once they see it present.

use crate::cas::Upload;
use crate::cas::compression::{MAX_WINDOW_LOG, StreamDecoder};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Memory a stream decoding zstd may hold beyond the storage part: the window and a chunk.
const ZSTD_STREAM_BYTES: u64 = (1 << MAX_WINDOW_LOG) + (256 << 10);

/// An upload in progress.
pub(super) struct UploadState {
    /// The verified write into the CAS; `None` once finished or failed.
    pub upload: Option<Upload>,
    /// Decoder for `compressed-blobs` uploads.
    pub decoder: Option<StreamDecoder>,
    /// Bytes of the request stream accepted so far (compressed bytes for compressed uploads):
    /// where the stream holding the upload must continue.
    offset: i64,
    /// What QueryWriteStatus reports, read without the lock: only progress that survives the
    /// stream ending (whole parts on disk for plain uploads; 0 for compressed ones, which
    /// restart). A client resuming from it is never ahead of what a park keeps.
    committed: Arc<AtomicI64>,
    last_used: Instant,
}

impl UploadState {
    pub(super) fn new(upload: Upload, decoder: Option<StreamDecoder>) -> Self {
        Self {
            upload: Some(upload),
            decoder,
            offset: 0,
            committed: Arc::default(),
            last_used: Instant::now(),
        }
    }

    /// Bytes of the request stream accepted so far.
    pub(super) fn offset(&self) -> i64 {
        self.offset
    }

    /// Records that `len` more request bytes were accepted, and publishes what would survive
    /// the stream ending now.
    pub(super) fn advance(&mut self, len: i64) {
        self.offset += len;
        let durable = match (&self.upload, &self.decoder) {
            (Some(upload), None) => upload.resumable_from() as i64,
            _ => 0,
        };
        self.committed.store(durable, Ordering::Release);
    }

    /// Sets the offset after a park cut the upload back.
    fn rewind_to(&mut self, kept: i64) {
        self.offset = kept;
        self.committed.store(kept, Ordering::Release);
    }
}

/// Memory one stream feeding an upload of `size` bytes may buffer: one storage part (or the
/// whole blob if smaller), plus the zstd window and an output chunk for compressed uploads.
pub(super) fn stream_cost(size: u64, compressed: bool, part_bytes: u64) -> u64 {
    let zstd = if compressed { ZSTD_STREAM_BYTES } else { 0 };
    size.min(part_bytes) + zstd
}

/// What the registry counts, for `/metrics`.
#[derive(Default)]
struct Counters {
    refused: AtomicU64,
    swept: AtomicU64,
    parked: AtomicU64,
}

/// One registered upload: its state, locked by the stream feeding it, and its committed size,
/// readable without the lock.
#[derive(Clone)]
pub(super) struct UploadEntry {
    pub state: Arc<tokio::sync::Mutex<UploadState>>,
    committed: Arc<AtomicI64>,
}

impl UploadEntry {
    /// Bytes accepted so far.
    pub(super) fn committed(&self) -> i64 {
        self.committed.load(Ordering::Acquire)
    }
}

/// Uploads by resource name.
pub(super) struct UploadRegistry {
    map: Mutex<HashMap<String, UploadEntry>>,
    idle_timeout: Duration,
    max_open: usize,
    max_buffer_bytes: u64,
    /// The budget in KiB permits.
    permits: usize,
    buffers: Arc<Semaphore>,
    counters: Counters,
}

/// A stream's claim on upload buffer memory, returned when dropped.
pub(super) struct Reservation(#[allow(dead_code)] OwnedSemaphorePermit);

impl UploadRegistry {
    /// A registry with its bounds; starts the idle sweeper if a tokio runtime is running.
    pub(super) fn new(idle_timeout: Duration, max_open: usize, max_buffer_bytes: u64) -> Arc<Self> {
        // Permits count KiB so that budgets beyond 4 GiB fit the semaphore's u32 acquire.
        let permits = (max_buffer_bytes >> 10).min(Semaphore::MAX_PERMITS as u64) as usize;
        let me = Arc::new(Self {
            permits,
            map: Mutex::default(),
            idle_timeout,
            max_open,
            max_buffer_bytes,
            buffers: Arc::new(Semaphore::new(permits)),
            counters: Counters::default(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweeper(Arc::downgrade(&me)));
        }
        me
    }

    /// The upload under `name`, if one is in progress.
    pub(super) fn get(&self, name: &str) -> Option<UploadEntry> {
        self.map
            .lock()
            .expect("upload registry lock")
            .get(name)
            .cloned()
    }

    /// Registers a new upload (replacing any older one under the same name). Past `max_open`
    /// uploads, idle ones are swept first; if none can go, the upload is refused.
    pub(super) fn insert(&self, name: &str, state: UploadState) -> Result<UploadEntry, Status> {
        let entry = UploadEntry {
            committed: state.committed.clone(),
            state: Arc::new(tokio::sync::Mutex::new(state)),
        };
        let mut map = self.map.lock().expect("upload registry lock");
        if map.len() >= self.max_open && !map.contains_key(name) {
            self.sweep_locked(&mut map, self.idle_timeout);
        }
        if map.len() >= self.max_open && !map.contains_key(name) {
            // Still full: drop the one parked upload idle longest (at least a second).
            let oldest = map
                .iter()
                .filter_map(|(k, e)| {
                    let s = e.state.try_lock().ok()?;
                    let idle = s.last_used.elapsed();
                    (idle >= Duration::from_secs(1)).then(|| (idle, k.clone()))
                })
                .max();
            if let Some((_, k)) = oldest {
                map.remove(&k);
                self.counters.swept.fetch_add(1, Ordering::Relaxed);
            }
        }
        if map.len() >= self.max_open && !map.contains_key(name) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "{} ByteStream uploads are in progress, the limit (cache.max_open_uploads); \
                 retry later",
                map.len()
            )));
        }
        map.insert(name.to_string(), entry.clone());
        Ok(entry)
    }

    /// Reserves the buffer memory of one stream, or refuses it.
    pub(super) fn reserve(&self, bytes: u64) -> Result<Reservation, Status> {
        let kib = bytes.div_ceil(1024).max(1).min(u64::from(u32::MAX)) as u32;
        if let Ok(permit) = self.buffers.clone().try_acquire_many_owned(kib) {
            return Ok(Reservation(permit));
        }
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        Err(Status::resource_exhausted(format!(
            "upload buffers are full: streams in progress hold the {} bytes of \
             cache.max_upload_buffer_bytes; retry later",
            self.max_buffer_bytes
        )))
    }

    /// Forgets an upload (finished or failed).
    pub(super) fn remove(&self, name: &str) {
        self.map.lock().expect("upload registry lock").remove(name);
    }

    /// Forgets the upload under `name` only if it is still the one `state` belongs to: a
    /// restart at offset 0 may have put a new upload under the same name meanwhile.
    pub(super) fn remove_if(&self, name: &str, state: &UploadState) {
        let mut map = self.map.lock().expect("upload registry lock");
        if map
            .get(name)
            .is_some_and(|e| Arc::ptr_eq(&e.committed, &state.committed))
        {
            map.remove(name);
        }
    }

    /// Marks an upload as used now.
    pub(super) fn touch(state: &mut UploadState) {
        state.last_used = Instant::now();
    }

    /// Called when a stream stops feeding an unfinished upload: frees its buffers, or drops
    /// it when they cannot be freed (the client then restarts at offset 0).
    pub(super) fn park(&self, name: &str, state: &mut UploadState) {
        let kept = match (state.upload.as_mut(), state.decoder.is_some()) {
            (Some(upload), false) => upload.park(),
            _ => None,
        };
        if let Some(kept) = kept {
            state.rewind_to(kept as i64);
            self.counters.parked.fetch_add(1, Ordering::Relaxed);
        } else {
            state.upload = None;
            state.decoder = None;
            self.remove_if(name, state);
        }
        Self::touch(state);
    }

    /// Drops uploads idle for longer than the timeout.
    fn sweep(&self) {
        let mut map = self.map.lock().expect("upload registry lock");
        self.sweep_locked(&mut map, self.idle_timeout);
    }

    fn sweep_locked(&self, map: &mut HashMap<String, UploadEntry>, idle: Duration) {
        let before = map.len();
        // An upload whose lock is held has a stream feeding it: never idle.
        map.retain(|_, e| {
            e.state
                .try_lock()
                .map_or(true, |s| s.last_used.elapsed() < idle)
        });
        let swept = before - map.len();
        if swept > 0 {
            self.counters
                .swept
                .fetch_add(swept as u64, Ordering::Relaxed);
            tracing::debug!(swept, "dropped idle ByteStream uploads");
        }
    }

    /// Gauges for `/metrics`: open uploads, buffer bytes reserved, refusals, sweeps, parks.
    pub(super) fn gauges(&self) -> Vec<(&'static str, &'static str, i64)> {
        let open = self.map.lock().expect("upload registry lock").len() as i64;
        let used_kib = self.permits - self.buffers.available_permits();
        let reserved = (used_kib as i64) << 10;
        let c = &self.counters;
        vec![
            (
                "uploads_open",
                "ByteStream uploads registered (streaming or parked)",
                open,
            ),
            (
                "uploads_open_limit",
                "cache.max_open_uploads",
                self.max_open as i64,
            ),
            (
                "uploads_buffer_reserved_bytes",
                "Upload buffer memory reserved by streams in progress",
                reserved,
            ),
            (
                "uploads_buffer_limit_bytes",
                "cache.max_upload_buffer_bytes",
                self.max_buffer_bytes as i64,
            ),
            (
                "uploads_refused",
                "Uploads refused with RESOURCE_EXHAUSTED (count or buffer limit)",
                c.refused.load(Ordering::Relaxed) as i64,
            ),
            (
                "uploads_swept",
                "Idle uploads dropped",
                c.swept.load(Ordering::Relaxed) as i64,
            ),
            (
                "uploads_parked",
                "Unfinished uploads cut back to their bytes on disk when their stream ended",
                c.parked.load(Ordering::Relaxed) as i64,
            ),
        ]
    }
}

/// Sweeps idle uploads every tenth of the idle timeout (at least each second) until the
/// registry is dropped.
async fn sweeper(registry: Weak<UploadRegistry>) {
    let period = match registry.upgrade() {
        Some(r) => (r.idle_timeout / 10).max(Duration::from_secs(1)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match registry.upgrade() {
            Some(r) => r.sweep(),
            None => return,
        }
    }
}
