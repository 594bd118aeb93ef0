//! The clock of the copy-forward horizon: bytes *uploaded*, not ring positions.
//!
//! A touch hint records the head segment seq at the touch (touch.rs). Measuring its age in
//! segments counts copy-forward's own writes, the reserve and the padding a segment ends with
//! as if they were uploads; when many touched blobs are copied (after a client read the whole
//! cache once, say), a segment holds up to a budget of copies and only half a segment of
//! uploads, so a horizon of `h` segments shrank to `h / 2` segments of uploads and blobs used
//! regularly (every `0.6 h` segments of uploads) were evicted as if untouched
//! (tests/eviction_crash.rs after a restart). The age is therefore the bytes uploaded since
//! the segment of the touch, which copies do not advance.
//!
//! Kept in memory by the I/O thread only: the cumulative upload count at the start of every
//! live segment this process started. Segments started before (an earlier process) count as
//! full segments of uploads, the old measure, so after a restart a hint is never older than it
//! was.

/// Upload bytes laid out, per live segment, for the horizon of copy-forward.
pub(super) struct UploadClock {
    /// Upload bytes laid out by this process.
    total: u64,
    /// `total` when each segment started, at `seq % len`; valid for live segments started by
    /// this process.
    start: Vec<u64>,
    /// The first segment this process started (`None` before its first roll).
    first: Option<u32>,
    segment_size: u64,
}

impl UploadClock {
    /// A clock for a ring of `segments` segments of `segment_size` bytes.
    pub fn new(segments: u32, segment_size: u64) -> Self {
        Self {
            total: 0,
            start: vec![0; segments.max(1) as usize],
            first: None,
            segment_size,
        }
    }

    /// Segment `seq` starts (the writer rolled to it).
    pub fn started(&mut self, seq: u32) {
        let n = self.start.len();
        self.start[seq as usize % n] = self.total;
        self.first.get_or_insert(seq);
    }

    /// An upload record of `bytes` (span) was laid out in the current segment.
    pub fn uploaded(&mut self, bytes: u64) {
        self.total += bytes;
    }

    /// Bytes uploaded since the end of segment `hint` (in the segments after it, up to the
    /// current one `head`), segments of an earlier process counting as full ones. `hint` must
    /// be a live segment (`head - hint` below the ring size).
    pub fn since(&self, hint: u32, head: u32) -> u64 {
        let n = self.start.len();
        let later = u64::from(head.wrapping_sub(hint));
        if later == 0 {
            return 0;
        }
        let from = hint.wrapping_add(1);
        let Some(first) = self.first else {
            return later * self.segment_size;
        };
        // Segments `from..first` were started by an earlier process.
        let unknown = u64::from(first.wrapping_sub(from)).min(later);
        let before = first.wrapping_sub(from) < 1 << 31;
        if before {
            unknown * self.segment_size + self.total - self.start[first as usize % n]
        } else {
            self.total - self.start[from as usize % n]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_do_not_advance_the_clock() {
        let mut c = UploadClock::new(8, 100);
        // Before any roll: every segment counts as full.
        assert_eq!(c.since(3, 5), 200);
        c.started(6);
        c.uploaded(40);
        c.started(7);
        c.uploaded(100);
        c.started(8);
        c.uploaded(10);
        // Segment 4, 5: earlier process (full); 6..=8: 150 uploaded.
        assert_eq!(c.since(3, 8), 200 + 150);
        assert_eq!(c.since(6, 8), 110);
        assert_eq!(c.since(7, 8), 10);
        assert_eq!(c.since(8, 8), 0);
        assert_eq!(c.since(5, 8), 150);
    }

    #[test]
    fn seqs_wrap() {
        let mut c = UploadClock::new(8, 100);
        c.started(u32::MAX);
        c.uploaded(30);
        c.started(0);
        c.uploaded(20);
        assert_eq!(c.since(u32::MAX - 1, 0), 50);
        assert_eq!(c.since(u32::MAX, 0), 20);
        assert_eq!(c.since(u32::MAX - 2, 0), 150);
    }
}
