//! State shared by readers (any thread) and the writer thread: the index, the live segment
//! table, the ring bounds and the read path.

use super::codec;
use super::format::{self, ALIGN, RECORD_HEADER_LEN, RecordHeader, RecordKind};
use super::index::{Entry, Index};
use super::segment::{SegMap, Segments, clock_ns, read_record_header};
use super::stats::{Counters, inc};
use super::sys::{resident, will_need};
use super::{Blob, Cached, EngineConfig, Key};
use crate::storage::format::InvalidRange;
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A manifest's payload length as `read_record` expects it (the true one is known from its
/// header): its fixed part and 167 entries of 24 bytes, within a 4 KiB page with the header.
pub(crate) const MANIFEST_EXPECT: u64 = 4096 - RECORD_HEADER_LEN as u64;

/// A page: records this close are asked of the disk together (`ask_together`).
const PAGE: u64 = 4096;

/// Bytes of a large blob's parts asked of the disk ahead of the part being read.
const PARTS_AHEAD: u64 = 32 << 20;

/// Blobs up to this size are looked at page by page by `Shared::in_memory`; a larger one
/// counts as not in memory without looking (reading it takes long either way).
const IN_MEMORY_MAX: u64 = 1 << 20;

/// Bytes `start..end` of a segment holding the record at `off` (in 64-byte units): its header
/// and `expect` bytes of payload.
fn record_range(off: u32, expect: u64) -> (u64, u64) {
    let start = u64::from(off) * ALIGN;
    let len = expect.saturating_add(RECORD_HEADER_LEN as u64);
    (start, start.saturating_add(len))
}

/// Bytes `offset..offset + len` of segment `seg` asked of the disk (`sys::will_need`), and the
/// time of the ask noted on the segment (`SegMap::asked`).
fn ask(seg: &SegMap, offset: u64, len: u64) {
    // Noted at most once a millisecond: readers on every core load the stamp, and a store on
    // every read would bounce its cache line between them.
    let now = clock_ns();
    if now.saturating_sub(seg.asked.load(Ordering::Relaxed)) > 1_000_000 {
        seg.asked.store(now, Ordering::Relaxed);
    }
    will_need(&seg.file.file, offset, len);
}

/// How long after an ask a segment's pages are looked at exactly (`Shared::in_memory`): far
/// longer than a disk takes to fill them.
const ASKED_LATELY_NS: u64 = 100_000_000;

/// The payload length `read_record` expects of the record an index entry names.
fn first_record_expect(e: &Entry) -> u64 {
    if e.kind == RecordKind::Manifest {
        MANIFEST_EXPECT
    } else {
        e.len
    }
}

/// Where a key was found (`Shared::hit`): the table, the other table a touch must also reach,
/// and the slot, version and entry.
type Hit<'a> = (&'a Index, Option<&'a Index>, (usize, u64, Entry));

/// Why a record could not be served.
#[derive(Debug)]
pub(crate) enum Miss {
    /// The segment is gone (evicted): a plain miss.
    Gone,
    /// Bytes failed a check: counted as corruption.
    Corrupt,
}

/// The state readers share with the writer. Contract: readers see an index entry only after
/// its records are written (the writer publishes last), and treat an entry as servable only
/// while [`Shared::valid`] holds; `tail`, `head` and the index table are changed only by the
/// writer thread, through the setters below (Release), and read anywhere (Acquire).
pub(crate) struct Shared {
    cfg: EngineConfig,
    /// The index in force. Replaced whole when the writer grows it (readers that loaded the
    /// old one finish on it; its file lives until the last of them drops it). Load it once
    /// per operation: a slot number is only meaningful in the table it came from.
    index: ArcSwap<Index>,
    /// The larger table being filled while the index grows: lookups that miss in `index`
    /// look here too (the writer puts every new entry, and every entry it pushes out of
    /// `index`, into both while the copy runs).
    growing: arc_swap::ArcSwapOption<Index>,
    segs: Segments,
    /// Oldest live segment. Written by the writer (Release), read anywhere (Acquire).
    tail: AtomicU32,
    /// Newest segment. Written by the writer (Release) after the segment is installed.
    head: AtomicU32,
    /// End of the written area of the head segment (for verify). Writer: Release.
    head_end: AtomicU64,
    /// Epoch ranges lost in earlier crashes; fixed for the life of the process.
    invalid: Vec<InvalidRange>,
    /// Segments the ring holds at most right now: the ring size, or fewer after the file
    /// system filled up first (ENOSPC evictions shrink it; rolls that fit grow it back).
    /// Written and read by the writer (copy-forward follows the shrunk ring).
    ring_limit: AtomicU32,
    counters: Counters,
    poison: OnceLock<String>,
    io_name: &'static str,
}

impl Shared {
    /// The shared state of an engine opened with `cfg` at ring position `tail..=head`.
    pub fn new(
        cfg: EngineConfig,
        index: Index,
        segs: Segments,
        (tail, head, ring_limit): (u32, u32, u32),
        invalid: Vec<InvalidRange>,
        counters: Counters,
        io_name: &'static str,
    ) -> Self {
        Self {
            cfg,
            index: ArcSwap::from_pointee(index),
            growing: arc_swap::ArcSwapOption::empty(),
            segs,
            tail: AtomicU32::new(tail),
            head: AtomicU32::new(head),
            head_end: AtomicU64::new(u64::MAX),
            invalid,
            ring_limit: AtomicU32::new(ring_limit),
            counters,
            poison: OnceLock::new(),
            io_name,
        }
    }

    pub fn cfg(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The segment table (mappings by seq).
    pub fn segs(&self) -> &Segments {
        &self.segs
    }

    /// The index in force (load it once per operation: a slot number means something only in
    /// the table it came from).
    pub fn index(&self) -> arc_swap::Guard<std::sync::Arc<Index>> {
        self.index.load()
    }

    pub fn index_full(&self) -> std::sync::Arc<Index> {
        self.index.load_full()
    }

    /// Writer only: switches readers to a grown table.
    pub fn set_index(&self, index: std::sync::Arc<Index>) {
        self.index.store(index);
    }

    /// The table being filled while the index grows, if any.
    pub fn growing(&self) -> Option<std::sync::Arc<Index>> {
        self.growing.load_full()
    }

    /// Writer only: starts or ends a growth.
    pub fn set_growing(&self, index: Option<std::sync::Arc<Index>>) {
        self.growing.store(index);
    }

    /// Oldest live segment.
    pub fn tail(&self) -> u32 {
        self.tail.load(Ordering::Acquire)
    }

    /// Writer only: the ring's new oldest segment (after the state naming it is durable).
    pub fn set_tail(&self, tail: u32) {
        self.tail.store(tail, Ordering::Release);
    }

    /// Newest segment.
    pub fn head(&self) -> u32 {
        self.head.load(Ordering::Acquire)
    }

    /// Writer only: a new head segment, installed in `segs` first.
    pub fn set_head(&self, head: u32) {
        self.head.store(head, Ordering::Release);
    }

    /// End of the written area of the head segment (for verify).
    pub fn head_end(&self) -> u64 {
        self.head_end.load(Ordering::Acquire)
    }

    /// Writer only.
    pub fn set_head_end(&self, end: u64) {
        self.head_end.store(end, Ordering::Release);
    }

    /// Segments the ring holds at most right now (fewer after a full disk shrank it).
    pub fn ring_limit(&self) -> u32 {
        self.ring_limit.load(Ordering::Relaxed)
    }

    /// Writer only.
    pub fn set_ring_limit(&self, limit: u32) {
        self.ring_limit.store(limit, Ordering::Relaxed);
    }

    /// Set once when a write failure leaves the engine unable to go on safely.
    pub fn poison(&self) -> &OnceLock<String> {
        &self.poison
    }

    /// Which I/O engine the writer uses (for logs and metrics).
    pub fn io_name(&self) -> &'static str {
        self.io_name
    }
}

impl Shared {
    /// Whether an index entry may be served: all its segments live, its epoch not lost.
    pub fn valid(&self, e: &Entry) -> bool {
        e.oldest_seq() >= self.tail.load(Ordering::Acquire)
            && e.seq <= self.head.load(Ordering::Acquire)
            && !self
                .invalid
                .iter()
                .any(|r| r.lo <= e.epoch && e.epoch < r.hi)
    }

    pub fn lookup(&self, key: &Key) -> Option<Entry> {
        // `growing` before `index`: a switch between the two loads then still leaves the entry
        // in one of the snapshots (loaded the other way round, a reader could miss in the old
        // table and then find `growing` already cleared).
        let growing = self.growing.load();
        self.index
            .load()
            .lookup(key, |e| self.valid(e))
            .or_else(|| growing.as_ref()?.lookup(key, |e| self.valid(e)))
    }

    /// A hit on the entry `e` read from `slot`: records the ring position in the slot's touch
    /// hint (one relaxed store, skipped when the hint already holds the head and "used
    /// again"). No lock, no queue, no disk write. A touch racing an insert into the same slot may tag the new entry instead: that
    /// costs at most one needless copy of it at its eviction, never a loss (FORMAT.md).
    pub fn touch(&self, index: &Index, slot: usize, e: &Entry) {
        let head = self.head.load(Ordering::Relaxed);
        index.touch(slot, head, e.oldest_seq());
    }

    /// `touch`, and while the index grows the same entry's slot in the new table too (the
    /// copier may have passed the slot already; the new table's hints are what eviction reads
    /// after the switch). Costs a second lookup only while a growth runs.
    fn touch_hit(&self, index: &Index, growing: Option<&Index>, slot: usize, e: &Entry) {
        self.touch(index, slot, e);
        if let Some(g) = growing
            && !std::ptr::eq(g, index)
            && let Some((s, _, x)) = g.lookup_slot(&e.key, |x| self.valid(x))
            && (x.seq, x.off) == (e.seq, e.off)
        {
            self.touch(g, s, &x);
        }
    }

    /// The table, slot, version and entry for `key`: in the index, else in a table being
    /// grown (for the writer's own lookups; readers use `get`/`lookup_touch`).
    pub fn find(&self, key: &Key) -> Option<(std::sync::Arc<Index>, usize, u64, Entry)> {
        let index = self.index.load_full();
        if let Some((slot, v, e)) = index.lookup_slot(key, |e| self.valid(e)) {
            return Some((index, slot, v, e));
        }
        let ix = self.growing.load_full()?;
        let (slot, v, e) = ix.lookup_slot(key, |e| self.valid(e))?;
        Some((ix, slot, v, e))
    }

    /// `lookup`, recording a touch on a hit (FindMissingBlobs, the ActionCache completeness
    /// check).
    pub fn lookup_touch(&self, key: &Key) -> Option<Entry> {
        let growing = self.growing.load();
        let index = self.index.load();
        if let Some((slot, _, e)) = index.lookup_slot(key, |e| self.valid(e)) {
            self.touch_hit(&index, growing.as_deref(), slot, &e);
            return Some(e);
        }
        let ix = growing.as_ref()?;
        let (slot, _, e) = ix.lookup_slot(key, |e| self.valid(e))?;
        self.touch(ix, slot, &e);
        Some(e)
    }

    /// The stored payload length of the record at (`seq`, `off`), from its header alone (the
    /// header's own checksum, kind and key checked; the payload neither read nor checked).
    /// For estimates only, such as what a copy will append. Read with `pread`: copy-forward
    /// asks it of the tail, often on disk only, where a fault on the map would read around the
    /// header as far as the device's readahead goes (FORMAT.md "Headers are read past the map").
    pub fn record_len(&self, seq: u32, off: u32, kind: RecordKind, key: &Key) -> Option<u64> {
        let seg = self.segs.get(seq)?;
        let at = u64::from(off) * ALIGN;
        read_record_header(&seg.file.file, at, seq, kind, key, None).map(|h| h.len)
    }

    /// Asks the disk for bytes `start..end` of segment `seq` (clamped to the segment), without
    /// waiting: a read that follows finds the pages cached or in flight.
    fn advise(&self, seq: u32, start: u64, end: u64) {
        if let Some(seg) = self.segs.get(seq) {
            let end = end.min(seg.map.len() as u64);
            ask(&seg, start, end.saturating_sub(start));
        }
    }

    /// Asks the disk for the first record of each entry (a blob's record, a large blob's
    /// manifest page) in one go, records on the same or the next page in one call: so the
    /// records a batch reads are read together, not one after another, and a batch of
    /// neighbours (the outputs of one action) costs one call.
    pub fn ask_together<'a>(&self, entries: impl Iterator<Item = &'a Entry>) {
        let mut ranges: Vec<(u32, u64, u64)> = entries
            .map(|e| {
                let (start, end) = record_range(e.off, first_record_expect(e));
                (e.seq, start, end)
            })
            .collect();
        ranges.sort_unstable();
        let mut ranges = ranges.into_iter();
        let Some(mut cur) = ranges.next() else {
            return;
        };
        for r in ranges {
            if r.0 == cur.0 && r.1 <= cur.2.saturating_add(PAGE) {
                cur.2 = cur.2.max(r.2);
            } else {
                self.advise(cur.0, cur.1, cur.2);
                cur = r;
            }
        }
        self.advise(cur.0, cur.1, cur.2);
    }

    /// Reads and checks one record, returning its flags and a zero-copy view of its payload.
    /// `expect` is the payload length the caller expects (a part's stored length from its
    /// manifest, a blob's logical length, which bounds its stored one): the record's pages are
    /// asked for before the map is touched, exactly those, unless the caller `asked` for them
    /// already (the header and `expect` bytes). A fault on a map with no advice
    /// reads around itself as far as the device's readahead goes (8 MiB on some virtual
    /// disks), so that one cold read of a 4 KiB blob read 8 MiB (FORMAT.md "Records served to
    /// clients"); asked for first, the pages are cached or in flight when the fault comes,
    /// and a fault that finds its page reads nothing more.
    pub fn read_record(
        &self,
        seq: u32,
        off: u32,
        kind: RecordKind,
        key: &Key,
        expect: u64,
        asked: bool,
    ) -> Result<(u8, Bytes), Miss> {
        let seg = self.segs.get(seq).ok_or(Miss::Gone)?;
        inc(&self.counters.record_reads);
        let start = (u64::from(off) * ALIGN) as usize;
        let map = &seg.map[..];
        let wanted = expect
            .saturating_add(RECORD_HEADER_LEN as u64)
            .min(map.len().saturating_sub(start) as u64);
        if !asked {
            ask(&seg, start as u64, wanted);
        }
        let h = RecordHeader::decode_expected(
            map.get(start..).ok_or(Miss::Corrupt)?,
            seq,
            kind,
            key,
            None,
        )
        .ok_or(Miss::Corrupt)?;
        let p = start + RECORD_HEADER_LEN;
        let end = p
            .checked_add(h.len as usize)
            .filter(|&e| e <= map.len())
            .ok_or(Miss::Corrupt)?;
        // Longer than expected (a manifest of many parts): the rest too.
        let wanted_end = start + wanted as usize;
        if end > wanted_end {
            ask(&seg, wanted_end as u64, (end - wanted_end) as u64);
        }
        if xxhash_rust::xxh3::xxh3_64(&map[p..end]) != h.checksum {
            return Err(Miss::Corrupt);
        }
        Ok((h.flags, seg.view(p, h.len as usize)))
    }

    /// Reads a whole blob for entry `e`, checking every record. A compressed `Blob` record is
    /// decompressed here (a frame that does not decode is damage, dropped like a bad
    /// checksum); compressed parts of a large blob are checked to declare the length their
    /// manifest names and decompressed when they are read.
    ///
    /// `asked`: the caller asked the disk for the entry's first record already
    /// ([`Shared::get_many`]).
    pub fn read_blob(&self, e: &Entry, asked: bool) -> Result<Blob, Miss> {
        let max = codec::max_piece(self.cfg.segment_size);
        if e.kind == RecordKind::Manifest {
            let (_, m) = self.read_record(
                e.seq,
                e.off,
                RecordKind::Manifest,
                &e.key,
                MANIFEST_EXPECT,
                asked,
            )?;
            let parts = format::manifest_parts(&m, e.len).ok_or(Miss::Corrupt)?;
            let mut pieces = Vec::with_capacity(parts.len());
            // Parts are asked for up to PARTS_AHEAD bytes ahead, so their reads overlap.
            let (mut told, mut ahead) = (0, 0u64);
            for (i, p) in parts.iter().enumerate() {
                while told < parts.len() && (told <= i || ahead < PARTS_AHEAD) {
                    let q = &parts[told];
                    let (start, end) = record_range(q.off, q.len);
                    self.advise(q.seq, start, end);
                    ahead = ahead.saturating_add(q.len);
                    told += 1;
                }
                ahead = ahead.saturating_sub(p.len);
                let (flags, b) =
                    self.read_record(p.seq, p.off, RecordKind::Part, &e.key, p.len, true)?;
                if b.len() as u64 != p.len {
                    return Err(Miss::Corrupt);
                }
                pieces.push(codec::piece(flags, b, p.logical, max, false).ok_or(Miss::Corrupt)?);
            }
            Ok(Blob::from_pieces(pieces))
        } else {
            let (flags, b) =
                self.read_record(e.seq, e.off, RecordKind::Blob, &e.key, e.len, asked)?;
            let piece = codec::piece(flags, b, e.len, max, true).ok_or(Miss::Corrupt)?;
            Ok(Blob::from_pieces(vec![piece]))
        }
    }

    /// `read_blob`, counting corruption and logging it. A record that fails its checks has
    /// its index entry dropped at once: `contains` (FindMissingBlobs) then reports the blob
    /// missing, so clients upload it again, and the new copy is what later reads find.
    pub fn get(&self, key: &Key) -> Option<(Entry, Blob)> {
        let growing = self.growing.load();
        let index = self.index.load();
        let (table, also, hit) = self.hit(&index, growing.as_deref(), key)?;
        self.serve(table, also, key, hit, false)
    }

    /// `get` for many keys, answers in order: every hit's first record is asked of the disk
    /// before any is read (`ask_together`), so cold blobs are read together.
    pub fn get_many(&self, keys: &[Key]) -> Vec<Option<(Entry, Blob)>> {
        let (growing, index) = (self.growing.load(), self.index.load());
        let hits = self.hits(&index, growing.as_deref(), keys);
        self.ask_together(hits.iter().flatten().map(|(_, _, (_, _, e))| e));
        self.serve_all(keys, hits)
    }

    /// `get`, only if it waits on no disk: `OnDisk` if the record's pages are not all in the
    /// page cache (then asked of the disk, not read). An absent key is a miss at once. A blob
    /// larger than [`IN_MEMORY_MAX`] or split into parts is never read here. For readers on
    /// an async runtime, who read with `get` on a blocking thread when this says `OnDisk`
    /// (FORMAT.md "Who waits for a cold record").
    pub fn get_cached(&self, key: &Key) -> Cached<Option<(Entry, Blob)>> {
        let growing = self.growing.load();
        let index = self.index.load();
        let Some((table, also, hit)) = self.hit(&index, growing.as_deref(), key) else {
            return Cached::Read(None);
        };
        if !self.in_memory(&hit.2) {
            self.ask_together(std::iter::once(&hit.2));
            return Cached::OnDisk;
        }
        // In memory: nothing to ask of the disk first.
        Cached::Read(self.serve(table, also, key, hit, true))
    }

    /// `get_many`, only if it waits on no disk for any key (`get_cached`): `OnDisk` if some
    /// record is not in memory (then every record is asked of the disk, none read).
    pub fn get_many_cached(&self, keys: &[Key]) -> Cached<Vec<Option<(Entry, Blob)>>> {
        let (growing, index) = (self.growing.load(), self.index.load());
        let hits = self.hits(&index, growing.as_deref(), keys);
        let entries = || hits.iter().flatten().map(|(_, _, (_, _, e))| e);
        if !entries().all(|e| self.in_memory(e)) {
            self.ask_together(entries());
            return Cached::OnDisk;
        }
        Cached::Read(self.serve_all(keys, hits))
    }

    /// Where each of `keys` is (`hit`), in order.
    fn hits<'a>(
        &self,
        index: &'a Index,
        growing: Option<&'a Index>,
        keys: &[Key],
    ) -> Vec<Option<Hit<'a>>> {
        keys.iter().map(|k| self.hit(index, growing, k)).collect()
    }

    /// Reads the blobs of `hits` (of `keys`, in order), their records asked for already.
    fn serve_all(&self, keys: &[Key], hits: Vec<Option<Hit<'_>>>) -> Vec<Option<(Entry, Blob)>> {
        keys.iter()
            .zip(hits)
            .map(|(k, hit)| {
                let (table, also, hit) = hit?;
                self.serve(table, also, k, hit, true)
            })
            .collect()
    }

    /// Whether the record of entry `e` is in the page cache, every page of it (`sys::resident`;
    /// no I/O). A blob larger than [`IN_MEMORY_MAX`] or split into parts counts as not, without
    /// looking; one whose segment is gone as in memory (reading it misses at once).
    fn in_memory(&self, e: &Entry) -> bool {
        if e.kind == RecordKind::Manifest || e.len > IN_MEMORY_MAX {
            return false;
        }
        // A segment gone meanwhile: `get` misses without reading.
        let Some(seg) = self.segs.get(e.seq) else {
            return true;
        };
        let (start, end) = record_range(e.off, e.len);
        // Asked for lately, its pages may be in the cache but not filled yet: looked at
        // exactly then.
        let lately = clock_ns().saturating_sub(seg.asked.load(Ordering::Relaxed)) < ASKED_LATELY_NS;
        resident(&seg.file.file, &seg.map, start, end, lately)
    }

    /// Where `key` is: the table it was found in (the index, else the one being grown), the
    /// other table a touch must also reach, and the slot, version and entry.
    fn hit<'a>(&self, index: &'a Index, growing: Option<&'a Index>, key: &Key) -> Option<Hit<'a>> {
        if let Some(hit) = index.lookup_slot(key, |e| self.valid(e)) {
            return Some((index, growing, hit));
        }
        let hit = growing?.lookup_slot(key, |e| self.valid(e))?;
        Some((growing?, None, hit))
    }

    /// Reads the blob of entry `e`, found in `slot` of `index` at `version` (`asked`: see
    /// `read_blob`).
    fn serve(
        &self,
        index: &Index,
        growing: Option<&Index>,
        key: &Key,
        (slot, version, e): (usize, u64, Entry),
        asked: bool,
    ) -> Option<(Entry, Blob)> {
        match self.read_blob(&e, asked) {
            Ok(b) => {
                self.touch_hit(index, growing, slot, &e);
                Some((e, b))
            }
            // Evicted meanwhile: a plain miss. Still valid, yet a segment it needs is not
            // mapped: its header was damaged or the file is gone (`open` skips such segments),
            // so the entry can never be served: dropped like a damaged record.
            Err(Miss::Gone) if self.valid(&e) => {
                let _ = self.drop_entry(index, slot, version);
                tracing::warn!(
                    ?key,
                    seq = e.seq,
                    "storage: a segment this blob needs is missing; dropped from the index"
                );
                None
            }
            Err(Miss::Gone) => None,
            Err(Miss::Corrupt) => {
                inc(&self.counters.corruptions);
                let _ = self.drop_entry(index, slot, version);
                tracing::warn!(
                    ?key,
                    seq = e.seq,
                    off = e.off,
                    "storage: record failed its checks; served as a miss and dropped from the index"
                );
                None
            }
        }
    }

    /// A blob read through `get` turned out damaged after all (a compressed part that does
    /// not decode): counted, logged and unpublished like a record that fails its checks at
    /// `get`, if the index still holds that very entry.
    pub fn damaged(&self, key: &Key, seq: u32, off: u32) {
        inc(&self.counters.corruptions);
        if let Some((index, slot, version, e)) = self.find(key)
            && (e.seq, e.off) == (seq, off)
        {
            let _ = self.drop_entry(&index, slot, version);
        }
        tracing::warn!(
            ?key,
            seq,
            off,
            "storage: a compressed part failed to decode while read; dropped from the index"
        );
    }

    /// Drops the entry in `slot` of `index` (the table it was read from) if it still holds `version` (nothing else replaced it
    /// meanwhile), and counts it. Safe from any thread: the slot's seqlock orders it with the
    /// writer's inserts. The cleared slot reaches the index file at the next checkpoint; should
    /// a crash come first, the entry is back and the next read drops it again.
    pub fn drop_entry(&self, index: &Index, slot: usize, version: u64) -> bool {
        let dropped = index.clear_if(slot, version);
        if dropped {
            inc(&self.counters.dropped_entries);
        }
        dropped
    }
}
