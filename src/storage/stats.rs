//! Counters for metrics. Relaxed atomics: they are statistics, not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated by readers and the writer thread.
#[derive(Default, Debug)]
pub struct Counters {
    pub(crate) corruptions: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) copy_forwards: AtomicU64,
    pub(crate) copy_forward_bytes: AtomicU64,
    pub(crate) copy_forward_budget_cuts: AtomicU64,
    pub(crate) copy_forward_touch_age: AtomicU64,
    pub(crate) index_displaced: AtomicU64,
    pub(crate) index_displaced_bytes: AtomicU64,
    pub(crate) full_errors: AtomicU64,
    pub(crate) entries_published: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) record_reads: AtomicU64,
    pub(crate) dropped_entries: AtomicU64,
    pub(crate) enospc_evictions: AtomicU64,
    pub(crate) index_rebuilds: AtomicU64,
    pub(crate) index_growths: AtomicU64,
    pub(crate) index_grow_failures: AtomicU64,
    pub(crate) compression_logical_bytes: AtomicU64,
    pub(crate) compression_stored_bytes: AtomicU64,
    pub(crate) compressed_records: AtomicU64,
    pub(crate) compression_skipped: AtomicU64,
    /// Gauges kept here for the snapshot: slots of the index in force, and the live share of
    /// slots at the last load check, in thousandths.
    pub(crate) index_slots: AtomicU64,
    pub(crate) index_load_permille: AtomicU64,
}

/// Counts an entry lost to a full index (and the bytes it named, now reclaimable only by
/// eviction).
pub(crate) fn lost_entry(c: &Counters, e: &super::index::Entry) {
    inc(&c.index_displaced);
    c.index_displaced_bytes.fetch_add(e.len, Ordering::Relaxed);
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot for `/metrics` and `kiln status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Bytes of live segment files (segments x segment size).
    pub bytes_used: u64,
    /// Live segments in the ring.
    pub segments: u64,
    /// Index entries published since open (rewrites and copy-forwards included).
    pub entries_published: u64,
    /// Records that failed their key or checksum check on read (served as misses).
    pub corruptions: u64,
    /// Segments dropped from the ring.
    pub evictions: u64,
    /// Blobs copied forward at eviction because they were touched within the horizon.
    pub copy_forwards: u64,
    /// Record bytes (headers included) those copies wrote: the write amplification of the
    /// policy is this over `bytes_written - copy_forward_bytes`.
    pub copy_forward_bytes: u64,
    /// Touched blobs evicted anyway because the per-eviction budget was spent (or the copy
    /// failed): "touched but evicted". Moving: raise `copy_forward_budget`.
    pub copy_forward_budget_cuts: u64,
    /// Segments of writes since the touch of the least recently touched blob the last
    /// eviction kept (0 before any copy): how close to the horizon the survivors' last use
    /// is. Near the horizon: blobs used a bit more rarely are being lost.
    pub copy_forward_touch_age: u64,
    /// Live index entries overwritten because their probe window was full.
    pub index_displaced: u64,
    /// Bytes of the blobs those entries named: their records stay in the ring, unreachable,
    /// until eviction reclaims them.
    pub index_displaced_bytes: u64,
    /// Writes refused with `StorageError::Full`.
    pub full_errors: u64,
    /// Payload and header bytes appended.
    pub bytes_written: u64,
    /// Durable epochs (sync rounds) completed.
    pub syncs: u64,
    /// Sync rounds that also wrote back the index file (index checkpoints).
    pub checkpoints: u64,
    /// Records replayed into the index at open (after an unclean stop).
    pub replayed: u64,
    /// Record headers read (gets, verify); a clean open performs none.
    pub record_reads: u64,
    /// Index entries dropped because their record failed its checks (on read or by `verify`):
    /// the blob then reads as missing everywhere, so clients upload it again.
    pub dropped_entries: u64,
    /// Segments evicted early because the file system was full (the ring shrank to fit).
    pub enospc_evictions: u64,
    /// Index rebuilds from the segment records at open (index header damaged, file lost).
    pub index_rebuilds: u64,
    /// Times the index was grown online (doubled) because its load passed the threshold.
    pub index_growths: u64,
    /// Growths that could not be done (no disk space for the larger file, ...).
    pub index_grow_failures: u64,
    /// With compression on: bytes of blobs uploaded since open (records the engine decided
    /// on, compressed or not; copies not counted).
    pub compression_logical_bytes: u64,
    /// The payload bytes those took on disk: stored over logical is the ratio at rest.
    pub compression_stored_bytes: u64,
    /// Records written compressed.
    pub compressed_records: u64,
    /// Records long enough to try that were stored as they are (the frame was not at most
    /// `max_ratio` of them: already-compressed data).
    pub compression_skipped: u64,
    /// Slots of the index in force.
    pub index_slots: u64,
    /// Most slots the index may grow to (`index_max_slots`).
    pub index_max_slots: u64,
    /// Share of slots holding a live entry at the last load check, in thousandths (sampled).
    pub index_load_permille: u64,
    /// A growth is under way (a larger table is being filled).
    pub index_growing: bool,
    /// I/O engine in use.
    pub io_engine: &'static str,
}

impl Counters {
    pub(crate) fn snapshot(&self, io_engine: &'static str) -> StorageStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StorageStats {
            bytes_used: 0,
            segments: 0,
            entries_published: g(&self.entries_published),
            corruptions: g(&self.corruptions),
            evictions: g(&self.evictions),
            copy_forwards: g(&self.copy_forwards),
            copy_forward_bytes: g(&self.copy_forward_bytes),
            copy_forward_budget_cuts: g(&self.copy_forward_budget_cuts),
            copy_forward_touch_age: g(&self.copy_forward_touch_age),
            index_displaced: g(&self.index_displaced),
            index_displaced_bytes: g(&self.index_displaced_bytes),
            full_errors: g(&self.full_errors),
            bytes_written: g(&self.bytes_written),
            syncs: g(&self.syncs),
            checkpoints: g(&self.checkpoints),
            replayed: g(&self.replayed),
            record_reads: g(&self.record_reads),
            dropped_entries: g(&self.dropped_entries),
            enospc_evictions: g(&self.enospc_evictions),
            index_rebuilds: g(&self.index_rebuilds),
            index_growths: g(&self.index_growths),
            index_grow_failures: g(&self.index_grow_failures),
            compression_logical_bytes: g(&self.compression_logical_bytes),
            compression_stored_bytes: g(&self.compression_stored_bytes),
            compressed_records: g(&self.compressed_records),
            compression_skipped: g(&self.compression_skipped),
            index_slots: g(&self.index_slots),
            index_max_slots: 0,
            index_load_permille: g(&self.index_load_permille),
            index_growing: false,
            io_engine,
        }
    }
}
