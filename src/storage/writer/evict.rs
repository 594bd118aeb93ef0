//! Eviction and rolling: starting the next segment when the active one is full, dropping the
//! oldest segment when the ring is full (after copy-forward kept what was used out of it), and
//! evicting early when the file system fills up. Part of the I/O thread.
//!
//! Contract: the state naming the new tail is durable before the evicted segment's file is
//! overwritten or removed, and every copy out of it is durable before that state
//! (`copies_durable`); the new segment's header is durable before the state names it as the
//! head (FORMAT.md "fsync order").

use super::{Active, Writer};
use crate::storage::StorageError;
use crate::storage::format::{SEGMENT_HEADER_LEN, SegmentHeader};
use crate::storage::segment::SegMap;
use crate::storage::stats::inc;
use crate::storage::sys::mmap::map_readonly;
use crate::storage::sys::{IoFile, WriteOp};
use bytes::BytesMut;
use std::sync::Arc;

/// A segment file ready for records, with its old mapping when the file was reused in place.
type NewSegment = (Arc<IoFile>, Option<memmap2::Mmap>);

impl Writer {
    /// Creates (or reuses in place) the file of segment `new`: allocated, header written and
    /// synced. On error, which step failed.
    fn create_segment(
        &mut self,
        new: u32,
        reused: Option<Result<SegMap, Arc<SegMap>>>,
    ) -> Result<NewSegment, (&'static str, std::io::Error)> {
        let path = self.sh.segs().path(new);
        let size = self.sh.cfg().segment_size;
        let (file, map) = match reused {
            Some(Ok(old)) => {
                // What was read through the old mapping (copy-forward's passes, reads) would
                // stay mapped for the new segment's whole life.
                super::copy_forward::release(&old);
                (old.file, Some(old.map))
            }
            other => {
                if let Some(Err(_held)) = other {
                    // A reader still holds the old mapping: give it the old inode.
                    let _ = std::fs::remove_file(&path);
                }
                let f = IoFile::open(&path).map_err(|e| ("segment create", e))?;
                (f, None)
            }
        };
        self.io
            .allocate(&file, size)
            .map_err(|e| ("segment allocate", e))?;
        let hdr = SegmentHeader {
            seq: u64::from(new),
            size,
        };
        let mut buf = BytesMut::zeroed(SEGMENT_HEADER_LEN as usize);
        buf[..64].copy_from_slice(&hdr.encode());
        let op = WriteOp {
            file: Arc::clone(&file),
            offset: 0,
            buf: buf.freeze(),
        };
        self.io
            .write_batch(&[op])
            .map_err(|e| ("segment header write", e))?;
        self.io
            .sync(&[Arc::clone(&file)])
            .map_err(|e| ("segment header sync", e))?;
        Ok((file, map))
    }

    /// Makes room on a full file system by evicting the oldest segment (`tail`) and removing
    /// its file. Never evicts the head nor a segment holding records laid out in the batch
    /// being written (their commits are not answered yet). `None` when nothing may be
    /// evicted (the write fails with `Full`), else whether the evicted segment's space is free
    /// now (no reader held its mapping). Same order as a roll's eviction: the new tail is
    /// durable before the file goes.
    fn evict_for_space(&mut self, cause: &std::io::Error) -> Result<Option<bool>, StorageError> {
        let sh = Arc::clone(&self.sh);
        let tail = self.state.tail;
        let keep_from = self.pinned.unwrap_or(u32::MAX).min(self.state.head);
        if tail >= keep_from {
            return Ok(None);
        }
        self.copy_forward_late(tail);
        self.copies_durable()?;
        self.state.tail = tail + 1;
        sh.set_tail(tail + 1);
        let old = sh.segs().take_slot(tail);
        self.write_state()
            .map_err(|e| self.io_err("state write", &e))?;
        let freed = old.is_none_or(|m| Arc::try_unwrap(m).is_ok());
        // Readers still holding views keep the inode (and its blocks) until they finish.
        if let Err(e) = std::fs::remove_file(sh.segs().path(tail))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, seq = tail, "storage: cannot remove an evicted segment file");
        }
        inc(&sh.counters().evictions);
        inc(&sh.counters().enospc_evictions);
        tracing::warn!(
            seq = tail,
            live_segments = self.state.head - self.state.tail + 1,
            held_by_a_reader = !freed,
            error = %cause,
            "storage: file system full; evicted the oldest segment to make room (the ring shrinks to fit the disk)"
        );
        Ok(Some(freed))
    }

    /// Seals the active segment and opens the next one, evicting the oldest when the ring is
    /// full. Order: state (new tail) durable before an evicted file is overwritten; segment
    /// header durable before the state names the segment as head.
    pub(super) fn roll(&mut self) -> Result<(), StorageError> {
        // Pending bytes of the old segment must reach the disk before its file may change.
        self.end_run();
        let sh = Arc::clone(&self.sh);
        let n = sh.segs().len();
        let new = self.state.head + 1;
        let mut reused: Option<Arc<SegMap>> = None;
        let mut held = Vec::new();
        if new - self.state.tail >= n {
            // Blobs of the segment about to go that were touched since its early pass are
            // copied into the head's reserve; all copies out of it are durable before it goes.
            // The first roll after open has no head to copy into: they are held for the new one.
            if self.active.is_none() {
                held = self.hold_for_copy(self.state.tail);
            } else {
                self.copy_forward_late(self.state.tail);
            }
            self.copies_durable()?;
            // Ring full: drop the oldest segment (it shares the file slot with `new`).
            self.state.tail = new - n + 1;
            sh.set_tail(self.state.tail);
            reused = sh.segs().take_slot(new);
            inc(&sh.counters().evictions);
            // Earlier ops may target the evicted file: write them first.
            self.flush_ops()?;
            self.write_state()
                .map_err(|e| self.io_err("state write", &e))?;
        }
        let size = sh.cfg().segment_size;
        let mut reused = reused.map(Arc::try_unwrap);
        // A full file system: evict our own oldest segments until the new one fits (the ring
        // shrinks to what the disk holds, and grows back on later rolls once space is free).
        // Evicting a segment a reader still holds frees nothing yet (the inode lives on), so
        // the loop goes on past such segments; but once a segment nobody held was evicted and
        // the disk is still full, someone else holds the space: the write fails with `Full`
        // rather than the whole ring going at once (the next write may evict one more).
        let mut shrunk = false;
        let mut freed = false;
        let (file, map) = loop {
            match self.create_segment(new, reused.take()) {
                Ok(f) => break f,
                Err((what, e)) if super::is_enospc(&e) && !freed => {
                    match self.evict_for_space(&e)? {
                        Some(was_free) => freed = was_free,
                        None => return Err(self.io_err(what, &e)),
                    }
                    shrunk = true;
                }
                Err((what, e)) => return Err(self.io_err(what, &e)),
            }
        };
        // The ring's current limit (for copy-forward): what it holds now after a shrink, and
        // never less than that after a roll that fit.
        let live = new - self.state.tail + 1;
        if shrunk {
            sh.set_ring_limit(live);
        } else if live > sh.ring_limit() {
            sh.set_ring_limit(live.min(n));
        }
        self.force_roll = false;
        self.state.head = new;
        self.write_state()
            .map_err(|e| self.io_err("state write", &e))?;
        let map = match map {
            Some(m) => m,
            None => map_readonly(&file.file, size as usize)
                .map_err(|e| self.io_err("segment map", &e))?,
        };
        let seg = Arc::new(SegMap::new(new, map, file));
        sh.segs().install(Arc::clone(&seg));
        sh.set_head(new);
        sh.set_head_end(SEGMENT_HEADER_LEN);
        self.active = Some(Active {
            seg,
            pos: SEGMENT_HEADER_LEN,
        });
        self.copy_held(held)?;
        // The tail is the next segment to go: keep what was used out of it (its records were
        // read in by the walk ahead), and start the walk of the one after it.
        self.early_pass_at_roll();
        Ok(())
    }
}
