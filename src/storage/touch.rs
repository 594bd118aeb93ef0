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

/// The top bit of a hint: the entry was hit again after an earlier hit since it was written
/// ("used again"). The other 31 bits hold the segment seq of the last hit.
const AGAIN: u32 = 1 << 31;
/// The seq bits of a hint.
const SEQ: u32 = !AGAIN;

/// `a - b` on 31-bit segment seqs (seqs grow forever; the hint keeps their low 31 bits, which
/// wrap after 2 billion segments, and then this arithmetic still holds).
fn seq_distance(a: u32, b: u32) -> u32 {
    a.wrapping_sub(b) & SEQ
}

/// Whether `hint` records a touch after the entry's oldest segment `written` was written.
/// 0 in the seq bits means never touched (so a hit at a head whose low 31 bits are 0, one
/// segment in 2 billion, is not recorded).
fn after_write(hint: u32, written: u32) -> bool {
    hint & SEQ != 0 && seq_distance(hint, written) < 1 << 30
}

/// Whether the entry was hit at least twice since it was written (or copied): a blob a scan
/// touched once loses to it when the copy budget cannot take both.
pub(crate) fn used_again(hint: u32) -> bool {
    hint & AGAIN != 0
}

/// Segments of writes since the last hit recorded in `hint`, `head` being the current head.
pub(crate) fn age(hint: u32, head: u32) -> u32 {
    seq_distance(head, hint)
}

/// The hint a hit at `head` leaves on an entry whose oldest segment is `written` and whose
/// hint is `hint`: the head, and "used again" when it had been hit since it was written.
fn after_hit(hint: u32, head: u32, written: u32) -> u32 {
    let seq = head & SEQ;
    if after_write(hint, written) {
        seq | AGAIN
    } else {
        seq
    }
}

/// Whether a hint needs no rewrite: it already holds the current head with "used again", and
/// belongs to the entry (not left by an older entry of the slot). A hint "from the future"
/// (damage) is rewritten. So a blob hit over and over dirties its cache line at most twice per
/// segment of writes (its first hit at a head and its second since written).
///
/// Only the current head: a hint kept while one segment old (as before) could lag the last
/// touch by that segment, so a blob touched within the horizon was evicted as if touched a
/// segment earlier (a blob touched at heads `h` and `h + 1` kept `h`; tests/eviction_crash.rs,
/// where the read-back after a restart and the next FindMissingBlobs fall one segment apart).
fn is_recent(hint: u32, head: u32, written: u32) -> bool {
    after_write(hint, written) && hint == (head & SEQ) | AGAIN
}

/// Whether the entry whose oldest segment is `written` was touched within the last `horizon`
/// segments of writes, `head` being the current head.
pub(crate) fn within_horizon(hint: u32, head: u32, written: u32, horizon: u32) -> bool {
    after_write(hint, written) && age(hint, head) <= horizon
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
    /// `head`, unless the hint is already recent. Relaxed: a hint orders nothing (two hits
    /// racing may record one hit, not two: a hint, never data).
    pub fn touch(&self, slot: usize, head: u32, written: u32) {
        if let Some(c) = self.cell(slot) {
            let hint = c.load(Ordering::Relaxed);
            if !is_recent(hint, head, written) {
                c.store(after_hit(hint, head, written), Ordering::Relaxed);
            }
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

    /// A hint of a hit at `seq`, used again.
    fn again(seq: u32) -> u32 {
        seq | AGAIN
    }

    #[test]
    fn recent_hints_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let t = Touches::open(&dir.path().join("t"), 100).unwrap();
        t.touch(7, 10, 5);
        assert_eq!(t.get(7), 10);
        assert!(!used_again(t.get(7)), "one hit");
        // Same segment: a second hit marks it used again, further hits keep it (no store).
        t.touch(7, 10, 5);
        assert_eq!(t.get(7), again(10));
        t.touch(7, 10, 5);
        assert_eq!(t.get(7), again(10));
        // One segment later: rewritten (a stale hint would shorten the horizon), still used
        // again.
        t.touch(7, 11, 5);
        assert_eq!(t.get(7), again(11));
        t.touch(7, 12, 5);
        assert_eq!(t.get(7), again(12));
        assert_eq!(age(t.get(7), 15), 3);
        // A hint left by an older entry of the slot (before this entry was written) is not
        // the entry's: rewritten although recent, as a first hit.
        t.touch(7, 13, 13);
        assert_eq!(t.get(7), 13);
        // A hint from the future (damaged) is rewritten; it lies after the write, so it counts.
        t.touch(8, 5, 1);
        t.touch(8, 3, 1); // head went "back": 3 - 5 wraps to a huge age
        assert_eq!(
            t.get(8),
            again(3),
            "5 lies after the write: counted as a hit"
        );
        t.touch(9, 5, 1);
        t.touch(9, 7, 6); // written after the hint: not a hit of this entry
        assert_eq!(t.get(9), 7);
        t.clear(7);
        assert_eq!(t.get(7), 0);
        t.touch(7, 14, 13);
        assert_eq!(t.get(7), 14, "a cleared slot starts over with one hit");
        assert_eq!(t.get(1000), 0, "out of range reads as untouched");
    }

    #[test]
    fn horizon_arithmetic_wraps() {
        assert!(within_horizon(10, 14, 8, 4));
        assert!(
            within_horizon(again(10), 14, 8, 4),
            "the flag is not part of the age"
        );
        assert!(!within_horizon(10, 15, 8, 4), "older than the horizon");
        assert!(!within_horizon(again(10), 15, 8, 4));
        assert!(
            !within_horizon(7, 10, 8, 4),
            "touched before it was written"
        );
        assert!(!within_horizon(0, 3, 1, 4), "never touched");
        assert!(
            !within_horizon(AGAIN, 3, 1, 4),
            "never touched, whatever the flag"
        );
        // Around the 31-bit wrap of the hint: written at 2^31 - 2, touched at 2^31 - 1, head
        // 2^31 + 2 (its low 31 bits are 2).
        let top = SEQ;
        assert!(within_horizon(top, 1 << 31 | 2, top - 1, 4));
        assert!(within_horizon(again(top), 1 << 31 | 2, top - 1, 4));
        assert!(!within_horizon(top, 1 << 31 | 4, top - 1, 4));
        // And around the u32 wrap of seqs: written at MAX - 1, touched at MAX, head 2.
        let t = tempfile::tempdir().unwrap();
        let touches = Touches::open(&t.path().join("t"), 4).unwrap();
        touches.touch(0, u32::MAX, u32::MAX - 1);
        let hint = touches.get(0);
        assert_eq!(hint, SEQ, "the low 31 bits of the head");
        assert!(within_horizon(hint, 2, u32::MAX - 1, 4));
        assert!(!within_horizon(hint, 4, u32::MAX - 1, 4));
        touches.touch(0, 1, u32::MAX - 1);
        assert_eq!(
            touches.get(0),
            again(1),
            "head 1 past the wrap: a second hit"
        );
        assert!(within_horizon(touches.get(0), 3, u32::MAX - 1, 4));
        // A hit at a head whose low 31 bits are 0 (one segment in 2 billion) reads as none.
        touches.touch(1, 0, u32::MAX - 1);
        assert!(!within_horizon(touches.get(1), 1, u32::MAX - 1, 4));
        assert!(is_recent(again(top), u32::MAX, u32::MAX - 3));
        assert!(
            !is_recent(top, u32::MAX, u32::MAX - 3),
            "one hit: the next one is stored"
        );
        assert!(!is_recent(again(top), 0, u32::MAX - 3));
        assert!(!is_recent(again(top - 1), 1, u32::MAX - 3));
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
