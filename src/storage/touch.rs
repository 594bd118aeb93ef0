//! Touch hints: for every index slot, the ring position (`head` segment seq) at the last hit
//! on the entry in that slot. Eviction reads them to decide which blobs of the segment about
//! to go are copied forward (FORMAT.md "Eviction and copy-forward").
//!
//! The hints live in `index.touch`, a side file of one `u32` per index slot after a 64-byte
//! header, allocated in full and mapped read-write like the index (so a store into it can
//! never SIGBUS on a full disk, and hints survive a restart). They are hints, not data: the
//! file is never synced by the engine, a missing, short or damaged file is simply reset, and a
//! wrong hint only costs one needless copy or misses one. A hit stores with one relaxed atomic
//! store, no lock, no channel, no disk write; it skips the store when the hint already holds
//! the current head, so hot hits dirty the cache line once per segment of writes, not on
//! every read.
//!
//! Keyed by slot, not by key: a rebuilt or grown index (issue #16) resets the array (or carries
//! it slot by slot); the publish of an entry resets its slot's hint ("touched since written").

use super::sys::IoFile;
use super::sys::mmap::AtomicMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// Header: magic, then the slot count (two u32 words), padding to 64 bytes.
const HEADER_U32: usize = 16;
const MAGIC: u64 = u64::from_le_bytes(*b"KLNTOUC1");

/// The mapped touch array.
pub(crate) struct Touches {
    map: AtomicMap,
    slots: usize,
}

/// Whether `hint` records a touch after the entry's oldest segment `written` was written.
/// Segment seqs compare with wrap-around (seqs grow forever; u32 wraps only after 4 billion
/// segments, and then the window arithmetic still holds); 0 means never touched.
fn after_write(hint: u32, written: u32) -> bool {
    hint != 0 && hint.wrapping_sub(written) < 1 << 31
}

/// Whether a hint needs no rewrite: it already holds the current head and belongs to the entry
/// (not left by an older entry of the slot). A hint "from the future" (damage) is rewritten.
///
/// Only the current head: a hint kept while one segment old (as before) could lag the last
/// touch by that segment, so a blob touched within the horizon was evicted as if touched a
/// segment earlier (a blob touched at heads `h` and `h + 1` kept `h`; tests/eviction_crash.rs,
/// where the read-back after a restart and the next FindMissingBlobs fall one segment apart).
pub(crate) fn is_recent(hint: u32, head: u32, written: u32) -> bool {
    after_write(hint, written) && hint == head
}

/// Whether the entry whose oldest segment is `written` was touched within the last `horizon`
/// segments of writes, `head` being the current head.
pub(crate) fn within_horizon(hint: u32, head: u32, written: u32, horizon: u32) -> bool {
    after_write(hint, written) && head.wrapping_sub(hint) <= horizon
}

impl Touches {
    /// Opens (or creates, or resets when it does not match `slots`) the touch file at `path`.
    pub fn open(path: &Path, slots: usize) -> io::Result<Self> {
        let len = ((HEADER_U32 + slots) * 4).next_multiple_of(8) as u64;
        if std::fs::metadata(path).map_or(true, |m| m.len() != len) {
            // Like the index: a fresh file renamed into place, allocated before it is mapped.
            let tmp = path.with_extension("touch.new");
            let f = std::fs::File::create(&tmp)?;
            if let Err(e) = crate::storage::sys::allocate_fully(&f, len) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, path)?;
        }
        let file = IoFile::open(path)?;
        crate::storage::sys::allocate_fully(&file.file, len)?;
        let map = AtomicMap::new(&file.file)?;
        let me = Self { map, slots };
        let w = me.map.words();
        if w[0].load(Ordering::Relaxed) != MAGIC || w[1].load(Ordering::Relaxed) != slots as u64 {
            me.reset();
        }
        Ok(me)
    }

    /// Forgets every hint (the index was reset or rebuilt: slots hold other entries now).
    pub fn reset(&self) {
        for x in &self.map.words32()[HEADER_U32..] {
            if x.load(Ordering::Relaxed) != 0 {
                x.store(0, Ordering::Relaxed);
            }
        }
        let w = self.map.words();
        w[1].store(self.slots as u64, Ordering::Relaxed);
        w[0].store(MAGIC, Ordering::Relaxed);
    }

    fn cell(&self, slot: usize) -> Option<&AtomicU32> {
        self.map.words32().get(HEADER_U32 + slot)
    }

    /// The hint of `slot` (0: none).
    pub fn get(&self, slot: usize) -> u32 {
        self.cell(slot).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Records a hit on the entry in `slot` (oldest segment `written`) at ring position
    /// `head`, unless the hint is already recent. Relaxed: a hint orders nothing.
    pub fn touch(&self, slot: usize, head: u32, written: u32) {
        if let Some(c) = self.cell(slot)
            && !is_recent(c.load(Ordering::Relaxed), head, written)
        {
            c.store(head, Ordering::Relaxed);
        }
    }

    /// Sets the hint of `slot` (carried over from another table).
    pub fn set(&self, slot: usize, hint: u32) {
        if let Some(c) = self.cell(slot)
            && c.load(Ordering::Relaxed) != hint
        {
            c.store(hint, Ordering::Relaxed);
        }
    }

    /// Clears the hint of `slot` (a new entry was published there).
    pub fn clear(&self, slot: usize) {
        if let Some(c) = self.cell(slot)
            && c.load(Ordering::Relaxed) != 0
        {
            c.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_hints_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let t = Touches::open(&dir.path().join("t"), 100).unwrap();
        t.touch(7, 10, 5);
        assert_eq!(t.get(7), 10);
        // Same segment: kept (no store).
        t.touch(7, 10, 5);
        assert_eq!(t.get(7), 10);
        // One segment later: rewritten (a stale hint would shorten the horizon).
        t.touch(7, 11, 5);
        assert_eq!(t.get(7), 11);
        t.touch(7, 12, 5);
        assert_eq!(t.get(7), 12);
        // A hint left by an older entry of the slot (before this entry was written) is not
        // the entry's: rewritten although recent.
        t.touch(7, 13, 13);
        assert_eq!(t.get(7), 13);
        // A hint from the future (damaged) is rewritten.
        t.touch(8, 5, 1);
        t.touch(8, 3, 1); // head went "back": 3 - 5 wraps to a huge age
        assert_eq!(t.get(8), 3);
        t.clear(7);
        assert_eq!(t.get(7), 0);
        assert_eq!(t.get(1000), 0, "out of range reads as untouched");
    }

    #[test]
    fn horizon_arithmetic_wraps() {
        assert!(within_horizon(10, 14, 8, 4));
        assert!(!within_horizon(10, 15, 8, 4), "older than the horizon");
        assert!(
            !within_horizon(7, 10, 8, 4),
            "touched before it was written"
        );
        assert!(!within_horizon(0, 3, 1, 4), "never touched");
        // Around the u32 wrap: written at MAX-1, touched at MAX, head 2 (= MAX + 3).
        assert!(within_horizon(u32::MAX, 2, u32::MAX - 1, 4));
        assert!(!within_horizon(u32::MAX, 4, u32::MAX - 1, 4));
        assert!(is_recent(u32::MAX, u32::MAX, u32::MAX - 3));
        assert!(!is_recent(u32::MAX, 0, u32::MAX - 3));
        assert!(!is_recent(u32::MAX - 1, 1, u32::MAX - 3));
    }

    #[test]
    fn a_file_of_another_size_or_damaged_header_is_reset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        {
            let t = Touches::open(&p, 64).unwrap();
            t.touch(3, 9, 1);
        }
        assert_eq!(
            Touches::open(&p, 64).unwrap().get(3),
            9,
            "survives a reopen"
        );
        assert_eq!(Touches::open(&p, 128).unwrap().get(3), 0, "resized: reset");
        {
            let t = Touches::open(&p, 128).unwrap();
            t.touch(3, 9, 1);
        }
        let mut b = std::fs::read(&p).unwrap();
        b[0] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(Touches::open(&p, 128).unwrap().get(3), 0, "damaged: reset");
    }
}
