//! Segment files and the table of mapped, live segments.
//!
//! A segment is a preallocated file `segments/seg-NNNNN`; the ring has `n` of them and
//! segment `seq` lives in file `seq % n`. Readers get an `Arc<SegMap>`; the bytes they are
//! handed (`Bytes::from_owner`) keep that `Arc`, so a mapping outlives every view into it.
//! The writer reuses a file in place only when nobody else holds its old mapping; otherwise
//! it unlinks the file (the old inode lives on until the last view is dropped) and creates a
//! new one, which is why disk use can exceed the capacity by a segment while a slow reader
//! streams an evicted blob.
//!
//! Concurrency: `get` may run on any thread; `install`/`remove` only on the writer thread.
//! The per-slot `RwLock` is held only to clone or swap an `Arc` (never across I/O).

use super::Key;
use super::format::{RECORD_HEADER_LEN, RecordHeader, RecordKind};
use super::sys::IoFile;
use bytes::Bytes;
use memmap2::Mmap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

/// One live segment: its sequence number, read-only mapping and file.
pub struct SegMap {
    /// Sequence number.
    pub seq: u32,
    /// Read-only mapping of the whole file.
    pub map: Mmap,
    /// The file, for writes.
    pub file: Arc<IoFile>,
    /// When the disk was last asked for pages of this segment (`Shared::ask`), on
    /// [`clock_ns`]'s clock; 0: never. Pages asked for are in the page cache before the disk
    /// has filled them, so a look at the cache soon after an ask must tell the two apart.
    pub asked: AtomicU64,
}

impl SegMap {
    /// A live segment, its disk not asked for anything yet.
    pub fn new(seq: u32, map: Mmap, file: Arc<IoFile>) -> Self {
        Self {
            seq,
            map,
            file,
            asked: AtomicU64::new(0),
        }
    }
}

/// Nanoseconds since this process first asked, plus one (never 0): a cheap clock that never
/// goes back, for `SegMap::asked`.
pub fn clock_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    (start.elapsed().as_nanos() as u64).saturating_add(1)
}

struct MapSlice {
    seg: Arc<SegMap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.seg.map[self.start..self.end]
    }
}

impl SegMap {
    /// A zero-copy view of `start..start+len` that keeps the mapping alive.
    pub fn view(self: &Arc<Self>, start: usize, len: usize) -> Bytes {
        Bytes::from_owner(MapSlice {
            seg: Arc::clone(self),
            start,
            end: start + len,
        })
    }
}

/// The header of the record at byte `at` of segment `seq`'s file, read with `pread` and
/// checked for its kind, key and (when given) payload length; `None` when it cannot be read or
/// does not match. A fault on a map of the file would read around the header as far as the
/// device's readahead goes.
pub fn read_record_header(
    file: &std::fs::File,
    at: u64,
    seq: u32,
    kind: RecordKind,
    key: &Key,
    len: Option<u64>,
) -> Option<RecordHeader> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; RECORD_HEADER_LEN];
    file.read_exact_at(&mut b, at).ok()?;
    RecordHeader::decode_expected(&b, seq, kind, key, len)
}

/// Path of the file holding segment `seq` in a ring of `n` files in `dir`.
pub fn segment_path(dir: &Path, n: u32, seq: u32) -> PathBuf {
    dir.join(format!("seg-{:05}", seq % n.max(1)))
}

/// The live segments, by file slot.
pub struct Segments {
    slots: Vec<RwLock<Option<Arc<SegMap>>>>,
    dir: PathBuf,
}

impl Segments {
    /// An empty table for a ring of `n` files in `dir`.
    pub fn new(dir: &Path, n: u32) -> Self {
        Self {
            slots: (0..n).map(|_| RwLock::new(None)).collect(),
            dir: dir.to_path_buf(),
        }
    }

    /// Number of files in the ring.
    pub fn len(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Path of the file holding segment `seq`.
    pub fn path(&self, seq: u32) -> PathBuf {
        segment_path(&self.dir, self.len(), seq)
    }

    fn slot(&self, seq: u32) -> &RwLock<Option<Arc<SegMap>>> {
        &self.slots[(seq % self.len()) as usize]
    }

    /// The mapping of segment `seq`, if it is live.
    pub fn get(&self, seq: u32) -> Option<Arc<SegMap>> {
        let g = self
            .slot(seq)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.as_ref().filter(|s| s.seq == seq).cloned()
    }

    /// Makes `seg` live (replacing whatever held its slot).
    pub fn install(&self, seg: Arc<SegMap>) {
        let seq = seg.seq;
        *self
            .slot(seq)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(seg);
    }

    /// Takes whatever mapping holds the file slot of `seq` out of the table.
    pub fn take_slot(&self, seq: u32) -> Option<Arc<SegMap>> {
        self.slot(seq)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}
