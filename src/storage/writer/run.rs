//! A run: contiguous bytes of one segment gathered for one batch of writes. Part of appending.
//!
//! Small pieces (record headers, small payloads, padding) are copied into one buffer. A large
//! payload is not copied: the span of it that covers whole pages of the file is written
//! straight from the upload's own buffer (its `Bytes` is held until the write completes), and
//! only its first and last partial pages are copied beside the headers around it.
//!
//! Why whole pages: the writes of one run go to the kernel together and may run in parallel.
//! With every page of the file covered by exactly one of them (the run's first page excepted,
//! whose start the previous run wrote and left in the page cache), no write has to read a
//! page from disk that another write of the same batch is about to fill: a partial write of a
//! page that is not cached reads it first, which on a reused segment is a disk read.

use crate::storage::sys::{IoFile, WriteOp};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// The page size the spans written in place are aligned to (the file system's block size on
/// the file systems kiln supports; a larger page only makes a few more partial writes).
const PAGE: u64 = 4096;

/// Payloads of at least this many whole pages are written in place rather than copied.
const IN_PLACE_MIN: u64 = 64 * 1024;

/// The copy buffer's first allocation when the run starts with a large payload (its header
/// and partial pages).
const SMALL_START: usize = 3 * PAGE as usize;

pub(super) struct Run {
    file: Arc<IoFile>,
    offset: u64,
    /// Spans before `buf`, in file order: copied buffers and payload spans written in place.
    done: Vec<Bytes>,
    done_len: u64,
    buf: BytesMut,
}

impl Run {
    /// A run starting at `offset` of `file`, sized for a first record of `span` bytes laid
    /// out of `payload_len` bytes of payload, in a run of up to `max_batch` bytes.
    pub(super) fn new(
        file: Arc<IoFile>,
        offset: u64,
        span: u64,
        payload_len: u64,
        max_batch: u64,
    ) -> Self {
        let cap = if payload_len >= IN_PLACE_MIN {
            SMALL_START
        } else {
            span.max(max_batch) as usize
        };
        Self {
            file,
            offset,
            done: Vec::new(),
            done_len: 0,
            buf: BytesMut::with_capacity(cap),
        }
    }

    pub(super) fn file(&self) -> &Arc<IoFile> {
        &self.file
    }

    /// The file offset just past the run.
    pub(super) fn end(&self) -> u64 {
        self.offset + self.len()
    }

    pub(super) fn len(&self) -> u64 {
        self.done_len + self.buf.len() as u64
    }

    /// Appends a copy of `b`.
    pub(super) fn copy(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Appends `p`: its whole pages in place when it spans enough of them, the rest copied.
    pub(super) fn payload(&mut self, p: &Bytes) {
        let at = self.end();
        let len = p.len() as u64;
        let head = (PAGE - at % PAGE) % PAGE;
        let tail = (at + len) % PAGE;
        if len < head + IN_PLACE_MIN + tail {
            self.copy(p);
            return;
        }
        let (head, tail) = (head as usize, tail as usize);
        self.copy(&p[..head]);
        self.seal();
        self.done_len += (p.len() - head - tail) as u64;
        self.done.push(p.slice(head..p.len() - tail));
        self.copy(&p[p.len() - tail..]);
    }

    /// Moves the copied bytes gathered so far into `done`.
    fn seal(&mut self) {
        if !self.buf.is_empty() {
            let b = self.buf.split().freeze();
            self.done_len += b.len() as u64;
            self.done.push(b);
        }
    }

    /// The writes that put the run in place, in file order.
    pub(super) fn into_ops(mut self) -> impl Iterator<Item = WriteOp> {
        self.seal();
        let (file, mut offset) = (self.file, self.offset);
        self.done.into_iter().map(move |buf| {
            let op = WriteOp {
                file: Arc::clone(&file),
                offset,
                buf,
            };
            offset += op.buf.len() as u64;
            op
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<IoFile> {
        let dir = tempfile::tempdir().expect("tempdir");
        IoFile::open(&dir.path().join("f")).expect("open")
    }

    fn pattern(n: usize, seed: u8) -> Bytes {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    /// The ops of a run, checked to tile the run's range in order.
    fn tiles(run: Run, offset: u64) -> Vec<WriteOp> {
        let ops: Vec<WriteOp> = run.into_ops().collect();
        let mut at = offset;
        for op in &ops {
            assert_eq!(op.offset, at, "ops tile the run in order");
            assert!(!op.buf.is_empty(), "no empty op");
            at += op.buf.len() as u64;
        }
        ops
    }

    #[test]
    fn large_payloads_are_written_in_place_in_whole_pages() {
        let big = pattern(1 << 20, 7);
        let small = pattern(100, 9);
        let offset = 5 * PAGE + 192;
        let mut run = Run::new(file(), offset, 0, big.len() as u64, 1 << 20);
        run.copy(&[1u8; 64]);
        run.payload(&big);
        run.copy(&[0u8; 32]);
        run.copy(&[2u8; 64]);
        run.payload(&small);
        let total = run.len();
        assert_eq!(total, 64 + (1 << 20) + 32 + 64 + 100);
        let ops = tiles(run, offset);
        let mut bytes = Vec::new();
        for op in &ops {
            bytes.extend_from_slice(&op.buf);
        }
        let mut want = vec![1u8; 64];
        want.extend_from_slice(&big);
        want.extend_from_slice(&[0u8; 32]);
        want.extend_from_slice(&[2u8; 64]);
        want.extend_from_slice(&small);
        assert_eq!(bytes, want, "the ops write exactly the run's bytes");
        // One op is the big payload's whole pages, taken from its buffer, not copied.
        let in_place: Vec<&WriteOp> = ops
            .iter()
            .filter(|o| {
                o.buf.as_ptr() >= big.as_ptr() && o.buf.as_ptr() < big[big.len()..].as_ptr()
            })
            .collect();
        assert_eq!(in_place.len(), 1, "one span written in place");
        let span = in_place[0];
        assert_eq!(span.offset % PAGE, 0, "starts on a page");
        assert_eq!(
            (span.offset + span.buf.len() as u64) % PAGE,
            0,
            "ends on a page"
        );
        assert!(span.buf.len() as u64 > (1 << 20) - 2 * PAGE);
        // No other op shares a page with it.
        for o in &ops {
            if std::ptr::eq(o, span) {
                continue;
            }
            let (a, b) = (o.offset, o.offset + o.buf.len() as u64);
            assert!(
                b <= span.offset || a >= span.offset + span.buf.len() as u64,
                "op [{a}, {b}) overlaps the in-place span's pages"
            );
        }
    }

    #[test]
    fn small_payloads_are_copied_into_one_write() {
        let mut run = Run::new(file(), 64, 0, 100, 1 << 20);
        for i in 0..10 {
            run.copy(&[i; 64]);
            run.payload(&pattern(IN_PLACE_MIN as usize - 1, i));
        }
        let ops = tiles(run, 64);
        assert_eq!(ops.len(), 1, "one copied buffer");
    }

    #[test]
    fn a_payload_whose_whole_pages_are_too_few_is_copied() {
        // 64 KiB + 1 page, starting one byte past a page: fewer than 64 KiB of whole pages.
        let p = pattern(IN_PLACE_MIN as usize + PAGE as usize - 2, 3);
        let mut run = Run::new(file(), PAGE + 1, 0, p.len() as u64, 1 << 20);
        run.payload(&p);
        let ops = tiles(run, PAGE + 1);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].buf, p);
    }
}
