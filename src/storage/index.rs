//! The persistent index: a fixed-size open-addressing table of 64-byte slots in a mapped file.
//!
//! Layout, publish rule and memory orderings are specified in `FORMAT.md` ("Index"). In short:
//! every slot is eight `AtomicU64` words guarded by a per-slot sequence lock (word 0, odd while
//! a writer is inside). Writers claim a slot with a compare-and-swap on that word, so inserts
//! need no mutex and may run on several threads; readers never write and retry on a torn read.
//!
//! Concurrency contract: `lookup` may run on any number of threads at once with `insert` and
//! `clear_if`. Two concurrent inserts of the same key both succeed and leave two entries; the
//! newest (epoch, segment, offset) wins on lookup and the caller clears the older one later.

use super::Key;
use super::format::{PartLoc, RecordKind};
use super::sys::IoFile;
use super::sys::mmap::AtomicMap;
use super::touch::Touches;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Words per slot (64 bytes).
pub const SLOT_WORDS: usize = 8;
/// Bytes before the first slot.
const HEADER_WORDS: usize = 512;
const MAGIC: u64 = u64::from_le_bytes(*b"KLNINDX1");
const ENDIAN: u64 = 0x0102_0304_0506_0708;
/// Header words covered by the header checksum (magic, endian, slots, probe, seed); the
/// checksum is word 5. Without it a flipped seed bit would silently send every lookup to the
/// wrong slots: the whole cache lost without a word in the log.
const CHECKED_WORDS: usize = 5;

/// xxh3 of the first `CHECKED_WORDS` header words (little-endian bytes).
fn header_checksum(w: &[AtomicU64]) -> u64 {
    let mut v = [0u64; CHECKED_WORDS];
    for (d, x) in v.iter_mut().zip(w) {
        *d = x.load(Ordering::Relaxed);
    }
    checksum_of(&v)
}

fn checksum_of(v: &[u64; CHECKED_WORDS]) -> u64 {
    let mut b = [0u8; CHECKED_WORDS * 8];
    for (i, x) in v.iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&x.to_le_bytes());
    }
    xxh3_64_with_seed(&b, 0)
}

/// Bytes of an index file with `slots` slots.
pub fn file_len(slots: usize) -> u64 {
    ((HEADER_WORDS + slots * SLOT_WORDS) * 8) as u64
}

/// Most slots an index may have (offsets and lengths stay far inside 64 bits).
pub const MAX_SLOTS: u64 = 1 << 34;

/// The slot count of the index file at `path` if its header is intact, names `probe` and
/// matches the file's size: how a grown index (larger than configured) is recognised at open.
pub fn existing_slots(path: &Path, probe: usize) -> Option<usize> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut b = [0u8; (CHECKED_WORDS + 1) * 8];
    f.read_exact(&mut b).ok()?;
    let w: Vec<u64> = b
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8")))
        .collect();
    let checked: [u64; CHECKED_WORDS] = w[..CHECKED_WORDS].try_into().expect("5 words");
    let slots = w[2];
    let ok = w[0] == MAGIC
        && w[1] == ENDIAN
        && w[CHECKED_WORDS] == checksum_of(&checked)
        && w[3] == probe as u64
        && slots > 0
        && slots <= MAX_SLOTS
        && f.metadata().ok()?.len() == file_len(slots as usize);
    ok.then_some(slots as usize)
}
const EPOCH_MASK: u64 = (1 << 48) - 1;
const LEN_MASK: u64 = (1 << 40) - 1;

/// One index entry, unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: Key,
    /// `Blob` (points at the data record) or `Manifest` (points at the part list).
    pub kind: RecordKind,
    /// Epoch it was published in.
    pub epoch: u64,
    /// Segment of the record the entry points at; 0 marks a cleared slot.
    pub seq: u32,
    /// Record offset in units of 64 bytes.
    pub off: u32,
    /// Blob length (< 1 TiB).
    pub len: u64,
    /// For manifests: `seq - span` is the oldest segment holding a part.
    pub span: u32,
}

impl Entry {
    /// The entry of a manifest record at (`seq`, `off`) listing `parts` of a blob of `total`
    /// bytes; its span reaches back to the oldest part (epoch set at publish).
    pub fn manifest(key: Key, seq: u32, off: u32, total: u64, parts: &[PartLoc]) -> Self {
        let oldest = parts.iter().map(|p| p.seq).min().unwrap_or(seq).min(seq);
        Self {
            key,
            kind: RecordKind::Manifest,
            epoch: 0,
            seq,
            off,
            len: total,
            span: seq - oldest,
        }
    }

    /// Oldest segment this entry depends on.
    pub fn oldest_seq(&self) -> u32 {
        self.seq.saturating_sub(self.span)
    }

    fn newer_than(&self, o: &Entry) -> bool {
        (self.epoch, self.seq, self.off) > (o.epoch, o.seq, o.off)
    }

    fn pack(&self) -> [u64; 7] {
        let id = &self.key.id;
        let w = |i: usize| u64::from_ne_bytes(id[i * 8..i * 8 + 8].try_into().expect("8"));
        [
            w(0),
            w(1),
            w(2),
            w(3),
            (u64::from(self.key.space) << 56)
                | ((self.kind as u64) << 48)
                | (self.epoch & EPOCH_MASK),
            (u64::from(self.seq) << 32) | u64::from(self.off),
            (self.len & LEN_MASK) | (u64::from(self.span) << 40),
        ]
    }

    fn unpack(w: &[u64; 7]) -> Self {
        let mut id = [0u8; 32];
        for i in 0..4 {
            id[i * 8..i * 8 + 8].copy_from_slice(&w[i].to_ne_bytes());
        }
        let kind = if (w[4] >> 48) as u8 == RecordKind::Manifest as u8 {
            RecordKind::Manifest
        } else {
            RecordKind::Blob
        };
        Self {
            key: Key::new((w[4] >> 56) as u8, id),
            kind,
            epoch: w[4] & EPOCH_MASK,
            seq: (w[5] >> 32) as u32,
            off: w[5] as u32,
            len: w[6] & LEN_MASK,
            span: (w[6] >> 40) as u32,
        }
    }
}

/// What [`Index::copy_live_into`] did.
#[derive(Debug, Default, Clone)]
#[allow(clippy::struct_field_names)] // `copied` is the count the struct is named after
pub struct Copied {
    /// Entries put into the new table.
    pub copied: u64,
    /// Entries that found their window in the new table full, or were pushed out of it by a
    /// racing insert, with their touch hints: the writer places them after the switch (at
    /// most [`MAX_OVERFLOW`]; beyond that they are counted in `lost`).
    pub overflow: Vec<(Entry, u32)>,
    /// Entries lost to the index (overflow past its bound).
    pub lost: u64,
    /// Bytes of the blobs those entries named.
    pub lost_bytes: u64,
}

/// Bound of [`Copied::overflow`]: entries a growth's copy could not place, kept for the writer.
pub const MAX_OVERFLOW: usize = 1 << 16;

/// What [`Index::insert_copy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// The new table already holds this entry or a newer one of its key.
    Present,
    /// Put into this slot; a racing insert took the free slot first and this one pushed the
    /// entry returned out (rare; the caller must place it).
    Put(usize, Option<Entry>),
    /// No free slot in the window: not copied.
    WindowFull,
}

/// Result of an insert.
#[derive(Debug, Default)]
pub struct Inserted {
    /// Older entries of the same key: `(slot, version)` to clear once the new one is durable.
    pub superseded: Vec<(usize, u64)>,
    /// The window was full of live entries and the oldest one (this entry) was overwritten.
    pub displaced: Option<Entry>,
    /// The slot the entry went into (its touch hint is reset by the caller).
    pub slot: usize,
}

/// The slot table. See the module docs for the concurrency contract.
pub struct Index {
    map: AtomicMap,
    slots: usize,
    probe: usize,
    seed: u64,
    /// The backing file; replaced (same inode) when a grown table is renamed into place.
    file: arc_swap::ArcSwap<IoFile>,
    /// Touch hints, one per slot, in `<index file>.touch` (none for a read-only index).
    touches: Option<Touches>,
}

/// Where the touch hints of the index file at `path` live.
pub fn touch_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".touch");
    name.into()
}

impl Index {
    /// Opens the index at `path`, or creates an empty one when it is missing or was made with
    /// other parameters (then `created` is true and the caller treats the store as empty).
    ///
    /// An intact index larger than `slots` (grown while serving, see [`Index::create`]) is
    /// kept at its own size: asking for fewer slots never empties a grown index.
    pub fn open(path: &Path, slots: usize, probe: usize) -> io::Result<(Self, bool)> {
        let slots = existing_slots(path, probe)
            .filter(|&s| s > slots)
            .unwrap_or(slots);
        let want_len = file_len(slots);
        let mut created = false;
        if std::fs::metadata(path).map_or(true, |m| m.len() != want_len) {
            // A new file renamed into place: a process that still maps the old one (a
            // co-located worker's `Peek`) keeps a valid mapping of the old inode.
            let tmp = path.with_extension("new");
            // Fully allocated before it is mapped (and before it replaces the old file): a
            // store into a hole of the mapping on a full disk would be a SIGBUS.
            let f = std::fs::File::create(&tmp)?;
            if let Err(e) = crate::storage::sys::allocate_fully(&f, want_len) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, path)?;
            created = true;
        }
        let file = IoFile::open(path)?;
        // An existing file may be sparse (written by kiln before it allocated the index, or
        // copied with holes): allocate what is missing; a no-op when nothing is.
        crate::storage::sys::allocate_fully(&file.file, want_len)?;
        let map = AtomicMap::new(&file.file)?;
        let w = map.words();
        let ok = w[0].load(Ordering::Relaxed) == MAGIC
            && w[1].load(Ordering::Relaxed) == ENDIAN
            && w[CHECKED_WORDS].load(Ordering::Relaxed) == header_checksum(w)
            && w[2].load(Ordering::Relaxed) == slots as u64
            && w[3].load(Ordering::Relaxed) == probe as u64;
        let seed = w[4].load(Ordering::Relaxed);
        let touches = Touches::open(&touch_path(path), slots)?;
        let mut me = Self {
            map,
            slots,
            probe,
            seed,
            file: arc_swap::ArcSwap::new(file),
            touches: Some(touches),
        };
        if !ok || created {
            me.reset();
            created = true;
        }
        Ok((me, created))
    }

    /// Opens an existing index read-only, with the parameters its header names: for looking
    /// up entries of a store that another process owns. Only [`Index::lookup`] may be used.
    pub fn open_readonly(path: &Path) -> io::Result<Self> {
        let file = IoFile::open_readonly(path)?;
        let map = AtomicMap::new_readonly(&file.file)?;
        let w = map.words();
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("index {what}"));
        if w.len() < HEADER_WORDS
            || w[0].load(Ordering::Acquire) != MAGIC
            || w[1].load(Ordering::Relaxed) != ENDIAN
            || w[CHECKED_WORDS].load(Ordering::Relaxed) != header_checksum(w)
        {
            return Err(bad("header does not match"));
        }
        let slots = w[2].load(Ordering::Relaxed) as usize;
        let probe = w[3].load(Ordering::Relaxed) as usize;
        let seed = w[4].load(Ordering::Relaxed);
        if slots == 0 || probe == 0 || w.len() != HEADER_WORDS + slots * SLOT_WORDS {
            return Err(bad("size does not match its header"));
        }
        Ok(Self {
            map,
            slots,
            probe,
            seed,
            file: arc_swap::ArcSwap::new(file),
            touches: None,
        })
    }

    /// Creates an empty index of `slots` slots at `path` (replacing any file there), fully
    /// allocated before it is mapped: the target of an online growth from `from`, renamed over
    /// `index` once filled. It hashes with `from`'s seed, so with twice the slots an entry at
    /// home `h` there has home `h` or `h + from.slots()` here, and the copy, walking `from` in
    /// order, writes this table in two sequential runs instead of at random. Random writes over
    /// a table larger than the memory left for it made a growth crawl (a page written back and
    /// read again per entry).
    pub fn create_grown(path: &Path, slots: usize, probe: usize, from: &Index) -> io::Result<Self> {
        // Never over an existing file: one of that name may be a table in use (a grown table
        // whose rename failed is served from memory under this name).
        let made = Self::create_new(path, slots, probe, from.seed);
        if made.is_err() {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(touch_path(path));
        }
        made
    }

    fn create_new(path: &Path, slots: usize, probe: usize, seed: u64) -> io::Result<Self> {
        let want_len = file_len(slots);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        crate::storage::sys::allocate_fully(&f, want_len)?;
        drop(f);
        let file = IoFile::open(path)?;
        let map = AtomicMap::new(&file.file)?;
        let touches = Touches::open(&touch_path(path), slots)?;
        let mut me = Self {
            map,
            slots,
            probe,
            seed: 0,
            file: arc_swap::ArcSwap::new(file),
            touches: Some(touches),
        };
        // The file is new and allocated as zeros: only the header needs writing.
        me.write_header(Some(seed));
        Ok(me)
    }

    /// Re-opens the backing file under `path` after it was renamed there, so later syncs name
    /// the file by where it now lives (the mapping is unchanged: same inode).
    pub fn moved_to(&self, path: &Path) -> io::Result<()> {
        self.file.store(IoFile::open(path)?);
        Ok(())
    }

    /// The touch file of an index at `from` renamed along with it to `to`'s (hints only: a
    /// crash between the two renames leaves a touch file of another size, which is reset).
    pub fn move_touches(from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(touch_path(from), touch_path(to))
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Estimates the share of slots holding a live entry from `samples` evenly spaced slots
    /// starting at `start` (callers vary it): a few thousand slot reads instead of a scan, so
    /// the writer can check its load as it goes and a restart needs no count.
    pub fn sample_load(&self, start: usize, samples: usize, valid: impl Fn(&Entry) -> bool) -> f64 {
        let samples = samples.clamp(1, self.slots);
        let stride = self.slots / samples;
        let live = (0..samples)
            .filter(|k| {
                let i = (start + k * stride) % self.slots;
                self.slot(i)[0].load(Ordering::Relaxed) != 0
                    && self.read(i).is_some_and(|(_, e)| e.seq != 0 && valid(&e))
            })
            .count();
        live as f64 / samples as f64
    }

    /// Inserts every live entry of this table into `dst` (a larger one), slot by slot. Runs
    /// beside lookups and inserts on both tables. Returns the entries copied; `progress` sees
    /// the slots walked so far.
    pub fn copy_live_into(
        &self,
        dst: &Index,
        valid: impl Fn(&Entry) -> bool,
        mut progress: impl FnMut(usize),
    ) -> Copied {
        let mut out = Copied::default();
        for i in 0..self.slots {
            if i % 4096 == 0 {
                progress(i);
            }
            let hint = self.hint(i);
            if let Some((_, e)) = self.read(i)
                && e.seq != 0
                && valid(&e)
            {
                let mut keep = |x: Entry, hint: u32| {
                    if out.overflow.len() < MAX_OVERFLOW {
                        out.overflow.push((x, hint));
                    } else {
                        out.lost += 1;
                        out.lost_bytes += x.len;
                    }
                };
                match dst.insert_copy(&e, &valid) {
                    Copy::Present => {}
                    Copy::Put(to, pushed) => {
                        let pushed_hint = dst.hint(to);
                        dst.set_hint(to, hint);
                        out.copied += 1;
                        if let Some(x) = pushed {
                            keep(x, pushed_hint);
                        }
                    }
                    Copy::WindowFull => keep(e, hint),
                }
            }
        }
        out
    }

    /// Empties the table and writes a fresh header (new hash seed); forgets every touch hint.
    pub fn reset(&mut self) {
        if let Some(t) = &self.touches {
            t.reset();
        }
        let w = self.map.words();
        for x in &w[HEADER_WORDS..] {
            if x.load(Ordering::Relaxed) != 0 {
                x.store(0, Ordering::Relaxed);
            }
        }
        self.write_header(None);
    }

    /// Writes a header with `seed`, or a fresh random hash seed.
    fn write_header(&mut self, seed: Option<u64>) {
        let w = self.map.words();
        self.seed = seed.unwrap_or_else(|| {
            u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().expect("8"))
        });
        w[4].store(self.seed, Ordering::Relaxed);
        w[3].store(self.probe as u64, Ordering::Relaxed);
        w[2].store(self.slots as u64, Ordering::Relaxed);
        w[1].store(ENDIAN, Ordering::Relaxed);
        w[0].store(MAGIC, Ordering::Relaxed);
        w[CHECKED_WORDS].store(header_checksum(w), Ordering::Release);
    }

    /// The backing file (the engine fdatasyncs it as part of each durable epoch).
    pub fn file(&self) -> Arc<IoFile> {
        self.file.load_full()
    }

    /// Records a hit on the entry in `slot` (see [`Touches::touch`]).
    pub fn touch(&self, slot: usize, head: u32, written: u32) {
        if let Some(t) = &self.touches {
            t.touch(slot, head, written);
        }
    }

    /// The touch hint of `slot` (0: none).
    pub fn hint(&self, slot: usize) -> u32 {
        self.touches.as_ref().map_or(0, |t| t.get(slot))
    }

    /// Sets the touch hint of `slot` (a growth carries hints to the new table).
    pub fn set_hint(&self, slot: usize, hint: u32) {
        if let Some(t) = &self.touches {
            t.set(slot, hint);
        }
    }

    /// Clears the hint of `slot` (a new entry was published there).
    pub fn clear_hint(&self, slot: usize) {
        if let Some(t) = &self.touches {
            t.clear(slot);
        }
    }

    fn home(&self, key: &Key) -> usize {
        let mut b = [0u8; 33];
        b[0] = key.space;
        b[1..].copy_from_slice(&key.id);
        (xxh3_64_with_seed(&b, self.seed) % self.slots as u64) as usize
    }

    fn slot(&self, i: usize) -> &[AtomicU64] {
        let base = HEADER_WORDS + i * SLOT_WORDS;
        &self.map.words()[base..base + SLOT_WORDS]
    }

    /// Consistent read of slot `i`: `(version, entry)`; `None` if never used, or if the slot
    /// stays odd ("being written") for `STUCK_SPINS` spins: a writer only holds a slot for a
    /// few stores, so such a slot was left mid-write by a process crash (or written back to
    /// disk mid-write before a power loss). It is skipped by readers and never reused.
    fn read(&self, i: usize) -> Option<(u64, Entry)> {
        const STUCK_SPINS: u32 = 100_000;
        let s = self.slot(i);
        let mut spins = 0u32;
        loop {
            let v1 = s[0].load(Ordering::Acquire);
            if v1 == 0 {
                return None;
            }
            if v1 & 1 == 1 {
                spins += 1;
                if spins > STUCK_SPINS {
                    return None;
                }
                std::hint::spin_loop();
                continue;
            }
            let mut w = [0u64; 7];
            for (d, a) in w.iter_mut().zip(&s[1..]) {
                *d = a.load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            if s[0].load(Ordering::Relaxed) == v1 {
                return Some((v1, Entry::unpack(&w)));
            }
        }
    }

    /// Starts loading the first slot `key` would be looked up in (see [`prefetch`]).
    ///
    /// [`prefetch`]: crate::storage::sys::mmap::prefetch
    pub fn prefetch(&self, key: &Key) {
        crate::storage::sys::mmap::prefetch(&self.slot(self.home(key))[0]);
    }

    /// The newest entry for `key` that `valid` accepts. Takes no lock and allocates nothing.
    pub fn lookup(&self, key: &Key, valid: impl Fn(&Entry) -> bool) -> Option<Entry> {
        self.lookup_slot(key, valid).map(|(_, _, e)| e)
    }

    /// [`Index::lookup`] with the slot and version the entry was read from, so a caller that
    /// finds the entry's record damaged can drop exactly that entry ([`Index::clear_if`]).
    pub fn lookup_slot(
        &self,
        key: &Key,
        valid: impl Fn(&Entry) -> bool,
    ) -> Option<(usize, u64, Entry)> {
        let first = u64::from_ne_bytes(key.id[0..8].try_into().expect("8"));
        let home = self.home(key);
        let mut best: Option<(usize, u64, Entry)> = None;
        for p in 0..self.probe {
            let i = (home + p) % self.slots;
            let s = self.slot(i);
            let v = s[0].load(Ordering::Acquire);
            if v == 0 {
                break;
            }
            if s[1].load(Ordering::Relaxed) != first {
                continue;
            }
            if let Some((v, e)) = self.read(i)
                && e.key == *key
                && e.seq != 0
                && valid(&e)
                && best.is_none_or(|(_, _, b)| e.newer_than(&b))
            {
                best = Some((i, v, e));
            }
        }
        best
    }

    /// Publishes `entry`. Slots in its window that are never used, cleared or rejected by
    /// `valid` (evicted segment, crashed epoch) are reused; when none is left, the entry
    /// pointing at the oldest segment is overwritten.
    pub fn insert(&self, entry: &Entry, valid: impl Fn(&Entry) -> bool) -> Inserted {
        let home = self.home(&entry.key);
        'retry: loop {
            let mut out = Inserted::default();
            let mut target: Option<(usize, u64)> = None;
            let mut oldest: Option<(usize, u64, Entry)> = None;
            for p in 0..self.probe {
                let i = (home + p) % self.slots;
                let v = self.slot(i)[0].load(Ordering::Acquire);
                if v == 0 {
                    target.get_or_insert((i, 0));
                    break;
                }
                if v & 1 == 1 {
                    continue;
                }
                let Some((v, e)) = self.read(i) else { continue };
                let live = e.seq != 0 && valid(&e);
                if !live {
                    target.get_or_insert((i, v));
                } else if e.key == entry.key {
                    out.superseded.push((i, v));
                } else if oldest.is_none_or(|(_, _, o)| (e.seq, e.off) < (o.seq, o.off)) {
                    // Oldest by log position: of two blobs in one window, the one written
                    // later is never pushed out first.
                    oldest = Some((i, v, e));
                }
            }
            let (i, v) = match (target, oldest) {
                (Some(t), _) => t,
                (None, Some((i, v, e))) => {
                    out.displaced = Some(e);
                    (i, v)
                }
                // Every slot busy being written or holding this key: overwrite the oldest copy.
                (None, None) => match out.superseded.first() {
                    Some(&t) => t,
                    None => continue 'retry,
                },
            };
            out.superseded.retain(|&(s, _)| s != i);
            if !self.write(i, v, &entry.pack()) {
                continue 'retry;
            }
            out.slot = i;
            return out;
        }
    }

    /// [`Index::insert`] for a copy into a table being grown: nothing is written when the
    /// window already holds this entry or a newer one of its key (the writer publishes into
    /// both tables while the copy runs; without this check each growth would carry those
    /// entries twice, and the duplicates would pile up growth after growth), nor when the
    /// window is full: the copy never pushes out an entry, which could be one that only the
    /// new table holds (the caller counts the copy as lost instead).
    #[allow(clippy::collapsible_match)] // the arms read as the three kinds of slot
    pub fn insert_copy(&self, entry: &Entry, valid: impl Fn(&Entry) -> bool) -> Copy {
        let home = self.home(&entry.key);
        let mut room = false;
        for p in 0..self.probe {
            let i = (home + p) % self.slots;
            if self.slot(i)[0].load(Ordering::Acquire) == 0 {
                room = true;
                break;
            }
            match self.read(i) {
                Some((_, e)) if e.seq != 0 && valid(&e) => {
                    if e.key == entry.key && !entry.newer_than(&e) {
                        return Copy::Present;
                    }
                }
                // A cleared or no longer valid slot: the insert may reuse it.
                Some(_) => room = true,
                // Left mid-write by a crash: skipped, never reused.
                None => {}
            }
        }
        if !room {
            return Copy::WindowFull;
        }
        let r = self.insert(entry, valid);
        Copy::Put(r.slot, r.displaced)
    }

    /// Seqlock write: claim by CAS `v -> v+1`, store, release `v+2`. False if the slot changed.
    fn write(&self, i: usize, v: u64, words: &[u64; 7]) -> bool {
        let s = self.slot(i);
        if s[0]
            .compare_exchange(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        fence(Ordering::Release);
        for (a, &w) in s[1..].iter().zip(words) {
            a.store(w, Ordering::Relaxed);
        }
        s[0].store(v + 2, Ordering::Release);
        true
    }

    /// Marks slot `i` cleared if it still holds version `v` (a superseded or damaged entry).
    /// True if this call cleared it.
    pub fn clear_if(&self, i: usize, v: u64) -> bool {
        if let Some((cur, e)) = self.read(i)
            && cur == v
            && e.seq != 0
        {
            let dead = Entry { seq: 0, ..e };
            return self.write(i, v, &dead.pack());
        }
        false
    }

    /// Calls `f(slot, version, entry)` for every slot holding an entry (cleared ones
    /// included: `seq == 0`). O(slots): for `verify`, never on a request path.
    pub fn scan(&self, mut f: impl FnMut(usize, u64, &Entry)) {
        for i in 0..self.slots {
            if let Some((v, e)) = self.read(i) {
                f(i, v, &e);
            }
        }
    }

    /// Counts live entries by scanning every slot: O(slots), for `kiln status`, not metrics.
    pub fn count(&self, valid: impl Fn(&Entry) -> bool) -> u64 {
        (0..self.slots)
            .filter(|&i| self.read(i).is_some_and(|(_, e)| e.seq != 0 && valid(&e)))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&n.to_le_bytes());
        Key::new(1, id)
    }

    fn entry(n: u64, epoch: u64, seq: u32) -> Entry {
        Entry {
            key: key(n),
            kind: RecordKind::Blob,
            epoch,
            seq,
            off: n as u32,
            len: n,
            span: 0,
        }
    }

    // The hash seed is random per index file: keep the load low (500 of 8192 slots) so no
    // probe window can overflow and displace an entry this test looks up.
    #[test]
    fn insert_lookup_supersede_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index");
        {
            let (ix, created) = Index::open(&p, 8192, 16).unwrap();
            assert!(created);
            for n in 0..500 {
                assert!(ix.insert(&entry(n, 1, 1), |_| true).superseded.is_empty());
            }
            let r = ix.insert(&entry(7, 2, 2), |_| true);
            assert_eq!(r.superseded.len(), 1);
            assert_eq!(ix.lookup(&key(7), |_| true).unwrap().epoch, 2);
            let (s, v) = r.superseded[0];
            ix.clear_if(s, v);
            assert_eq!(ix.lookup(&key(7), |e| e.epoch == 1), None);
        }
        let (ix, created) = Index::open(&p, 8192, 16).unwrap();
        assert!(!created);
        for n in 0..500 {
            assert_eq!(ix.lookup(&key(n), |_| true).map(|e| e.len), Some(n));
        }
        assert_eq!(ix.lookup(&key(9999), |_| true), None);
        // Segment 1 evicted: its entries count as empty and their slots are reused.
        assert_eq!(ix.lookup(&key(3), |e| e.seq >= 2), None);
        assert_eq!(ix.count(|e| e.seq >= 2), 1);
    }

    /// A table grown from another hashes as it does: with twice the slots, a key's home is
    /// its old home or that plus the old size, so the copy (walking the old table in order)
    /// writes the new one in two ascending runs rather than at random.
    #[test]
    fn a_grown_table_keeps_the_hash_so_its_copy_writes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = Index::open(&dir.path().join("index"), 1024, 16).unwrap();
        for n in 0..400 {
            old.insert(&entry(n, 1, 1), |_| true);
        }
        let new = Index::create_grown(&dir.path().join("index.grow"), 2048, 16, &old).unwrap();
        for n in 0..400 {
            let (was, is) = (old.home(&key(n)), new.home(&key(n)));
            assert!(
                is == was || is == was + 1024,
                "key {n}: home {was}, then {is}"
            );
        }
        let copied = old.copy_live_into(&new, |_| true, |_| {});
        assert_eq!((copied.copied, copied.lost), (400, 0));
        for n in 0..400 {
            assert_eq!(new.lookup(&key(n), |_| true).map(|e| e.len), Some(n));
        }
    }

    #[test]
    fn slot_left_mid_write_is_skipped_not_spun_on() {
        let dir = tempfile::tempdir().unwrap();
        let (ix, _) = Index::open(&dir.path().join("i"), 64, 8).unwrap();
        ix.insert(&entry(1, 1, 1), |_| true);
        let home = ix.home(&key(1));
        // Simulate a crash between claim and release.
        ix.slot(home)[0].fetch_add(1, Ordering::SeqCst);
        assert_eq!(ix.lookup(&key(1), |_| true), None);
        ix.insert(&entry(1, 2, 2), |_| true);
        assert_eq!(ix.lookup(&key(1), |_| true).map(|e| e.epoch), Some(2));
    }

    #[test]
    fn full_window_displaces_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let (ix, _) = Index::open(&dir.path().join("i"), 4, 4).unwrap();
        for n in 0..4 {
            ix.insert(&entry(n, 1, 10 + n as u32), |_| true);
        }
        let r = ix.insert(&entry(99, 1, 50), |_| true);
        assert_eq!(r.displaced.map(|e| e.key), Some(key(0)));
        assert!(ix.lookup(&key(0), |_| true).is_none());
        assert!(ix.lookup(&key(99), |_| true).is_some());
    }

    #[test]
    fn concurrent_inserts_and_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let (ix, _) = Index::open(&dir.path().join("i"), 1 << 16, 16).unwrap();
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let ix = &ix;
                s.spawn(move || {
                    for n in 0..3000 {
                        let k = t * 100_000 + n;
                        ix.insert(&entry(k, 1, 1), |_| true);
                        assert!(ix.lookup(&key(k), |_| true).is_some());
                    }
                });
            }
        });
        assert_eq!(ix.count(|_| true), 6000);
    }
}
