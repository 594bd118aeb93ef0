//! Reading a segment's records in log order with positioned reads: copy-forward's walk of the
//! tail and the index replay (a rebuild replays the whole ring).
//!
//! Not through the segment's map: a fault on a shared file map reads around the faulting page
//! as far as the device's readahead goes (`read_ahead_kb`, 8 MiB on the test VM), so reading
//! the headers of a segment of 1 MiB records through the map read the whole segment from disk.
//! Here, after a record of at least `WINDOW` bytes only the page holding the next header is
//! read; after a smaller one, a window of them (sequential reads, which the kernel's readahead
//! serves ahead).

use crate::storage::format::{RECORD_HEADER_LEN, RecordHeader, record_span};
use crate::storage::segment::SegMap;
use std::os::unix::fs::FileExt;

/// Most bytes read at a time: after a record smaller than this the next read takes a window
/// of them; after a larger one, only the page holding the next header. Reading past a record
/// costs its bytes at the disk's sequential rate, skipping it one random read (about 0.1-0.2
/// ms on NVMe, and a walk's reads cannot overlap: each header says where the next one is),
/// which breaks even near 256 KiB at 1-2 GB/s.
const WINDOW: u64 = 256 << 10;
/// A page: the least a walk reads (headers are 64-byte aligned, so one never straddles two).
const PAGE: u64 = 4096;

/// A walk over the records of one segment between two offsets.
pub(super) struct Walk<'a> {
    seg: &'a SegMap,
    /// Where the next record starts (after the walk: the end of the last valid record).
    off: u64,
    end: u64,
    window: Vec<u8>,
    /// File offset of `window[0]`.
    at: u64,
    last_span: u64,
}

impl<'a> Walk<'a> {
    /// The records of `seg` from `start` (a record boundary) up to `end`.
    pub(super) fn new(seg: &'a SegMap, start: u64, end: u64) -> Self {
        Self {
            seg,
            off: start,
            end,
            window: Vec::new(),
            at: 0,
            last_span: WINDOW,
        }
    }

    /// The end of the last record returned (the start, before any).
    pub(super) fn pos(&self) -> u64 {
        self.off
    }

    /// The next record (its offset and header), read as replay always read them: the first
    /// header that does not validate, a record reaching past `end`, or a read that fails ends
    /// the segment's written part.
    pub(super) fn next_record(&mut self) -> Option<(u64, RecordHeader)> {
        let off = self.off;
        if off + RECORD_HEADER_LEN as u64 > self.end {
            return None;
        }
        if !self.holds(off, RECORD_HEADER_LEN as u64) {
            self.at = off - off % PAGE;
            let want = if self.last_span < WINDOW {
                WINDOW
            } else {
                PAGE
            };
            let len = usize::try_from(want.min(self.end - self.at)).ok()?;
            self.window.resize(len, 0);
            if let Err(e) = self.seg.file.file.read_exact_at(&mut self.window, self.at) {
                self.fail(off, &e);
                return None;
            }
        }
        let start = usize::try_from(off - self.at).ok()?;
        let h = RecordHeader::decode(&self.window[start..], self.seg.seq).ok()?;
        // The length first: a huge one would overflow the span.
        if h.len > self.end {
            return None;
        }
        let span = record_span(h.len);
        if off + span > self.end {
            return None;
        }
        self.off = off + span;
        self.last_span = span;
        Some((off, h))
    }

    /// `len` bytes at `off` (inside a record returned, so at most a segment: a record never
    /// crosses one), from the window when it holds them.
    pub(super) fn bytes(&mut self, off: u64, len: u64) -> Option<Vec<u8>> {
        if off.checked_add(len)? > self.end {
            return None;
        }
        if self.holds(off, len) {
            let start = usize::try_from(off - self.at).ok()?;
            return Some(self.window[start..start + usize::try_from(len).ok()?].to_vec());
        }
        let mut buf = vec![0; usize::try_from(len).ok()?];
        match self.seg.file.file.read_exact_at(&mut buf, off) {
            Ok(()) => Some(buf),
            Err(e) => {
                self.fail(off, &e);
                None
            }
        }
    }

    fn holds(&self, off: u64, len: u64) -> bool {
        off >= self.at && off + len <= self.at + self.window.len() as u64
    }

    /// Ends the walk at a read that failed: what lies after it is treated as unwritten. Blobs
    /// the index replay does not reach are misses (clients upload them again), touched blobs
    /// copy-forward does not reach are evicted; never wrong bytes (through the map, a SIGBUS).
    fn fail(&mut self, off: u64, e: &std::io::Error) {
        self.end = 0;
        tracing::warn!(seq = self.seg.seq, off, error = %e,
            "storage: cannot read a segment's records; the rest of it is skipped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Key;
    use crate::storage::format::RecordKind;
    use crate::storage::sys::IoFile;
    use crate::storage::sys::mmap::map_readonly;

    const SEQ: u32 = 7;
    const LEN: u64 = 64 << 10;
    const FIRST: u64 = 4096;

    /// A segment file of `LEN` bytes holding `records` (offset, header, payload).
    fn segment(records: &[(u64, RecordHeader, &[u8])]) -> (tempfile::TempDir, SegMap) {
        let dir = tempfile::tempdir().unwrap();
        let file = IoFile::open(&dir.path().join("seg")).unwrap();
        file.file.set_len(LEN).unwrap();
        for (off, h, payload) in records {
            file.file.write_all_at(&h.encode(SEQ), *off).unwrap();
            file.file
                .write_all_at(payload, off + RECORD_HEADER_LEN as u64)
                .unwrap();
        }
        let map = map_readonly(&file.file, LEN as usize).unwrap();
        (dir, SegMap::new(SEQ, map, file))
    }

    fn header(len: u64, payload: &[u8]) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Blob,
            flags: 0,
            key: Key::new(Key::SPACE_CAS, [3; 32]),
            len,
            checksum: xxhash_rust::xxh3::xxh3_64(payload),
        }
    }

    /// A header whose own checksum is good but whose length reaches past the segment (up to
    /// 2^64 - 1, where the span would overflow) ends the walk after the record before it, and
    /// its payload is never read (a buffer of that length is never allocated).
    #[test]
    fn a_valid_header_declaring_a_length_past_the_segment_ends_the_walk() {
        let payload = b"hello";
        let good = header(payload.len() as u64, payload);
        let second = FIRST + record_span(good.len);
        for len in [LEN - second, LEN, LEN << 20, u64::MAX - 64, u64::MAX] {
            let bad = header(len, b"");
            let (_dir, seg) = segment(&[(FIRST, good, payload), (second, bad, b"")]);
            let mut walk = Walk::new(&seg, FIRST, LEN);
            assert_eq!(walk.next_record(), Some((FIRST, good)), "len {len}");
            assert_eq!(walk.next_record(), None, "len {len}");
            assert_eq!(walk.pos(), second, "len {len}");
            let payload_at = second + RECORD_HEADER_LEN as u64;
            assert_eq!(walk.bytes(payload_at, len), None, "len {len}");
            // The record before it still reads.
            let got = walk.bytes(FIRST + RECORD_HEADER_LEN as u64, good.len);
            assert_eq!(got.as_deref(), Some(&payload[..]), "len {len}");
        }
    }
}
