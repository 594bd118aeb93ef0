//! The engine's configuration: plain values, documented, validated in one place.

use super::StorageError;
pub use super::sys::IoBackend;
use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// When an upload is acknowledged relative to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// `commit` returns after the record, the index and the state file are fdatasynced (group
    /// commit: one sync round per batch of concurrent commits). Nothing acknowledged is lost
    /// in a power failure.
    #[default]
    Fdatasync,
    /// `commit` returns once the bytes are in the page cache; a sync runs every `interval`.
    /// A power failure loses at most the last interval of uploads (they read as misses).
    Periodic {
        /// Time between syncs.
        interval: Duration,
    },
}

/// Compression of blobs at rest (FORMAT.md "Compressed records").
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Compression {
    /// Records hold the blob's bytes as they are. The default.
    #[default]
    None,
    /// Each record (a blob up to `part_size`, or one part of a larger one) is one zstd frame,
    /// kept only where it pays.
    Zstd {
        /// zstd level, 1..=19. Recommended 1-3: level 1 compresses at several hundred MB/s
        /// per core; higher levels gain a few percent of space for much more CPU on every
        /// upload (records are compressed on blocking threads, one per core at a time).
        level: i32,
        /// Records shorter than this are stored as they are (small blobs gain little and
        /// would pay a decompression on every read). Recommended 1-4 KiB.
        min_size: u64,
        /// A record is kept compressed only if its compressed form is at most this share of
        /// its length (0.05..=1.0); otherwise it is stored as it is (already-compressed
        /// files: jars, images, archives). Recommended 0.9.
        max_ratio: f64,
    },
}

/// Everything `Engine::open` needs. Build it in code (tests) or from `kiln.toml` (the server).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Data directory; `segments/`, `index` and `state` live inside.
    /// Default: none (required). Recommended: a dedicated file system (ext4/xfs) on local SSD.
    /// Wrong: `open` fails with an I/O error naming the path.
    pub dir: PathBuf,
    /// Size of one segment file, the unit of eviction and preallocation.
    /// Default 256 MiB. Recommended: capacity / 64 .. capacity / 1024, at least 4x the part
    /// size. Too small: many files and frequent evictions (`evictions` grows fast); too
    /// large: eviction drops a big slice of the cache at once and disk use can exceed the
    /// capacity by one segment.
    pub segment_size: u64,
    /// Total bytes of segment files (the ring). Disk use stays within capacity + one segment
    /// (plus the index file). Default 64 GiB. Recommended: the disk's free space minus 10%.
    /// Too small: a low hit rate (`evictions` high); too large: the file system fills first,
    /// and the engine evicts its own oldest segments to make room (`enospc_evictions`, a
    /// warning; the ring shrinks to what the disk holds), `StorageError::Full` (`full_errors`)
    /// only when nothing is left to evict.
    pub capacity_bytes: u64,
    /// Largest blob accepted. Default 4 GiB. Must be at most a quarter of the capacity, so a
    /// streaming upload cannot evict its own first parts. Wrong: clients see
    /// `StorageError::TooLarge`.
    pub max_blob_size: u64,
    /// When commits are acknowledged. Default `Fdatasync`. Use `Periodic` only for caches whose
    /// loss on power failure is cheap; symptom of the default being too slow: commit latency
    /// around the disk's fdatasync time (0.2-4 ms) with few uploads in flight.
    pub durability: Durability,
    /// Which I/O engine writes. Default `Auto` (io_uring, else pread/pwrite with one log line).
    /// Recommended: `Auto`. Force `Psync` if io_uring misbehaves on a kernel.
    pub io: IoBackend,
    /// Initial index slots (64 bytes each, file size = slots x 64 + 4 KiB). 0 = derive:
    /// capacity / 16 KiB rounded up to a power of two, at least 65 536. The index doubles by
    /// itself while serving (`index_grow_load`, up to `index_max_slots`); a larger value at
    /// restart rebuilds it from the segment records, a smaller one keeps a grown index as is.
    pub index_slots: u64,
    /// Most slots the index grows to while serving (it doubles when the share of live slots
    /// passes `index_grow_load`). 0 = derive: capacity / 512 rounded up to a power of two
    /// (the index file then takes at most an eighth of the capacity, 2 GiB for 16 GiB, and
    /// holds at least capacity / 1 KiB entries at the threshold), never below `index_slots`.
    /// Too small for a store of many small blobs: `index_displaced` grows once the index is
    /// at its maximum (the oldest entries go first).
    pub index_max_slots: u64,
    /// Share of live slots at which the index is grown. Default 0.5: a hit probes about 1.5
    /// slots and a miss about 2.5 on average (linear probing), so most lookups read one or
    /// two cache lines. Must be in 0.1..=0.9.
    pub index_grow_load: f64,
    /// Pause of the index-growth copier before it copies (tests: widens the window in which
    /// a crash lands during a growth, as a slow disk would). Default 0.
    #[doc(hidden)]
    pub grow_copy_delay: Duration,
    /// Slots probed per lookup/insert. Default 32 (a 2 KiB window; measured at load 0.5 over
    /// 1M inserts: 16 slots displaced ~0.03% of entries, 32 a handful). Larger tolerates higher
    /// load factors but slows misses. Wrong: `index_displaced` grows at a low load factor.
    pub probe_limit: u32,
    /// Payload bytes per record when a blob is streamed in parts; blobs up to this size are one
    /// record. Default 1 MiB (PLATFORM.md: 64 KiB-1 MiB appends reach the disk's ceiling).
    /// An upload fills one part in memory; the parts handed on to be written are bounded
    /// engine-wide (8).
    pub part_size: u64,
    /// Copy-forward at eviction (FORMAT.md "Eviction and copy-forward"). Default true. With
    /// false the ring is plain first-in-first-out: every blob goes when its segment does,
    /// however often it is read (for comparisons; `kiln bench` replays both).
    pub copy_forward: bool,
    /// How recent a touch (a read, FindMissingBlobs or ActionCache hit) must be for a blob to
    /// be copied forward when its segment is evicted, in segments of writes. 0 = derive: half
    /// the ring's segments (a blob used once per half capacity of writes stays). Larger keeps
    /// blobs used more rarely and copies more (`copy_forward_bytes`); smaller behaves more
    /// like FIFO. Must be below the number of segments.
    pub copy_forward_horizon: u32,
    /// Most bytes copied forward per evicted segment (record headers included). 0 = derive: a
    /// quarter of a segment. The copies take this much of the next segment, so write
    /// amplification is at most `budget / segment_size`. Touched blobs beyond it are evicted
    /// and counted in `copy_forward_budget_cuts`: when that counter moves, raise the budget
    /// (or the capacity). At most half a segment.
    pub copy_forward_budget: u64,
    /// Most bytes gathered into one write submission. Default 1 MiB.
    pub max_batch_bytes: u64,
    /// Bytes written after which a sync round also syncs the index file (an index checkpoint).
    /// Between checkpoints a sync round syncs only the segments; after a crash, open replays
    /// the records written since the last checkpoint into the index, so this bounds the work
    /// of an unclean restart (reading that many bytes of record headers). Default 256 MiB.
    /// Too large: slow restarts after a crash (`storage: replayed ...` log line); too small:
    /// commit latency spikes when a round writes back many index pages (`index_checkpoints`).
    pub checkpoint_bytes: u64,
    /// Longest time between index checkpoints while writes go on. Default 10 s.
    pub checkpoint_interval: Duration,
    /// Compression at rest. Default `None`. With `Zstd`, the ring holds more blobs when they
    /// compress (capacity counts stored bytes); reads of compressed records decompress them
    /// (`storage_compression_*` metrics show the ratio and how often it was worth it).
    /// Changing it affects new writes only: a store holds both kinds of records.
    pub compression: Compression,
}

impl EngineConfig {
    /// Defaults for a store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: 256 * MIB,
            capacity_bytes: 64 * GIB,
            max_blob_size: 4 * GIB,
            durability: Durability::default(),
            io: IoBackend::default(),
            index_slots: 0,
            index_max_slots: 0,
            index_grow_load: 0.5,
            grow_copy_delay: Duration::ZERO,
            probe_limit: 32,
            part_size: MIB,
            copy_forward: true,
            copy_forward_horizon: 0,
            copy_forward_budget: 0,
            max_batch_bytes: MIB,
            checkpoint_bytes: 256 * MIB,
            checkpoint_interval: Duration::from_secs(10),
            compression: Compression::None,
        }
    }

    /// Number of segment files in the ring.
    pub fn segments(&self) -> u32 {
        (self.capacity_bytes / self.segment_size.max(1)) as u32
    }

    /// Index slots after applying the default.
    pub fn effective_index_slots(&self) -> u64 {
        if self.index_slots == 0 {
            (self.capacity_bytes / (16 << 10))
                .next_power_of_two()
                .max(1 << 16)
        } else {
            self.index_slots
        }
    }

    /// Largest index after applying the default (never below the initial size).
    pub fn effective_index_max_slots(&self) -> u64 {
        let derived = if self.index_max_slots == 0 {
            (self.capacity_bytes / 512).next_power_of_two()
        } else {
            self.index_max_slots
        };
        derived
            .min(super::index::MAX_SLOTS)
            .max(self.effective_index_slots())
    }

    /// Copy-forward horizon in segments after applying the default (0 when copy-forward is
    /// off).
    pub fn effective_copy_forward_horizon(&self) -> u32 {
        if !self.copy_forward {
            0
        } else if self.copy_forward_horizon == 0 {
            (self.segments() / 2).max(1)
        } else {
            self.copy_forward_horizon
        }
    }

    /// Copy-forward budget per evicted segment after applying the default (0 when off).
    pub fn effective_copy_forward_budget(&self) -> u64 {
        if !self.copy_forward {
            0
        } else if self.copy_forward_budget == 0 {
            self.segment_size / 4
        } else {
            self.copy_forward_budget
        }
    }

    /// Rejects nonsense with a message naming the field.
    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = |m: String| Err(StorageError::Config(m));
        if self.segment_size < 64 * 1024 || !self.segment_size.is_multiple_of(4096) {
            return bad(format!(
                "segment_size {} must be a multiple of 4096 and at least 64 KiB",
                self.segment_size
            ));
        }
        if self.segment_size > 256 * GIB {
            return bad(format!(
                "segment_size {} exceeds 256 GiB (index offsets are 32-bit in 64-byte units)",
                self.segment_size
            ));
        }
        if self.segments() < 4 {
            return bad(format!(
                "capacity_bytes {} holds {} segments of {}; need at least 4",
                self.capacity_bytes,
                self.segments(),
                self.segment_size
            ));
        }
        if self.segments() > 1 << 20 {
            return bad(format!(
                "capacity_bytes / segment_size = {} segments; at most 2^20 (raise segment_size)",
                self.segments()
            ));
        }
        if self.part_size < 4096 || self.part_size * 4 > self.segment_size {
            return bad(format!(
                "part_size {} must be at least 4 KiB and at most segment_size / 4",
                self.part_size
            ));
        }
        if self.max_blob_size > self.capacity_bytes / 4 || self.max_blob_size >= 1 << 40 {
            return bad(format!(
                "max_blob_size {} must be at most capacity_bytes / 4 ({}) and below 1 TiB",
                self.max_blob_size,
                self.capacity_bytes / 4
            ));
        }
        if self.max_blob_size / self.part_size > u64::from(u32::MAX) {
            return bad("max_blob_size / part_size needs fewer than 2^32 parts".into());
        }
        if self.probe_limit == 0 || self.probe_limit > 1024 {
            return bad(format!(
                "probe_limit {} must be in 1..=1024",
                self.probe_limit
            ));
        }
        let slots = self.effective_index_slots();
        if slots < u64::from(self.probe_limit) || slots > 1 << 34 {
            return bad(format!(
                "index_slots {slots} must be at least probe_limit and at most 2^34"
            ));
        }
        if !(0.1..=0.9).contains(&self.index_grow_load) {
            return bad(format!(
                "index_grow_load {} must be in 0.1..=0.9",
                self.index_grow_load
            ));
        }
        if self.effective_copy_forward_horizon() >= self.segments() {
            return bad(format!(
                "copy_forward_horizon {} must be smaller than the number of segments ({})",
                self.copy_forward_horizon,
                self.segments()
            ));
        }
        if self.effective_copy_forward_budget() > self.segment_size / 2 {
            return bad(format!(
                "copy_forward_budget {} must be at most half a segment ({}): the copies go into the next segment",
                self.copy_forward_budget,
                self.segment_size / 2
            ));
        }
        if let Durability::Periodic { interval } = self.durability
            && interval.is_zero()
        {
            return bad("durability.periodic.interval must be > 0".into());
        }
        if self.checkpoint_bytes == 0 || self.checkpoint_interval.is_zero() {
            return bad("checkpoint_bytes and checkpoint_interval must be > 0".into());
        }
        if self.max_batch_bytes < 4096 {
            return bad("max_batch_bytes must be at least 4096".into());
        }
        if let Compression::Zstd {
            level, max_ratio, ..
        } = self.compression
        {
            if !(1..=19).contains(&level) {
                return bad(format!("compression_level {level} must be in 1..=19"));
            }
            if !(0.05..=1.0).contains(&max_ratio) {
                return bad(format!(
                    "compression_max_ratio {max_ratio} must be in 0.05..=1.0"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_nonsense_is_named() {
        EngineConfig::new("/tmp/x").validate().unwrap();
        let mut c = EngineConfig::new("/tmp/x");
        c.capacity_bytes = c.segment_size;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("capacity_bytes")
        );
        let mut c = EngineConfig::new("/tmp/x");
        c.segment_size = 1000;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("segment_size")
        );
    }
}
