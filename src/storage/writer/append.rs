//! Appending: laying records out in the active segment and gathering contiguous runs into
//! write submissions (one per run). Part of the I/O thread.
//!
//! Contract: a record is laid out whole in one segment (`append` rolls first when it does not
//! fit, leaving `copy_reserve` free for copy-forward's late pass); nothing laid out is visible
//! until `flush_ops` has written it and the writer publishes its entry; a manifest is laid out
//! only if every part it names is still in the ring.

use super::{Body, Run, Writer};
use crate::storage::Key;
use crate::storage::StorageError;
use crate::storage::format::{self, ALIGN, PartLoc, RECORD_HEADER_LEN, RecordHeader, RecordKind};
use crate::storage::index::Entry;
use crate::storage::stats::inc;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Writer {
    pub(super) fn flush_ops(&mut self) -> Result<(), StorageError> {
        self.end_run();
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.ops);
        let n: u64 = ops.iter().map(|o| o.buf.len() as u64).sum();
        match self.io.write_batch(&ops) {
            Ok(()) => {
                self.sh
                    .counters()
                    .bytes_written
                    .fetch_add(n, Ordering::Relaxed);
                self.since_checkpoint += n;
                if let Some(a) = &self.active {
                    self.sh.set_head_end(a.pos);
                }
                self.unsynced = true;
                Ok(())
            }
            Err(e) => {
                // Nothing more goes into this segment (on a file system without fallocate
                // the rest of it may not exist): the next record rolls, and the roll makes
                // room by evicting the oldest segments if the disk is still full.
                self.force_roll |= super::is_enospc(&e);
                Err(self.io_err("segment write", &e))
            }
        }
    }

    pub(super) fn end_run(&mut self) {
        if let Some(run) = self.run.take()
            && run.len() > 0
        {
            if !self.dirty.iter().any(|f| Arc::ptr_eq(f, run.file())) {
                self.dirty.push(Arc::clone(run.file()));
            }
            self.ops.extend(run.into_ops());
        }
    }

    pub(super) fn lay_out_commit(
        &mut self,
        items: &[(Key, Body)],
    ) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::with_capacity(items.len());
        for (key, body) in items {
            out.push(match body {
                Body::Single(data) => {
                    let (seq, off) =
                        self.append(RecordKind::Blob, key, data.flags, &[&data.payload])?;
                    Entry {
                        key: *key,
                        kind: RecordKind::Blob,
                        epoch: 0,
                        seq,
                        off,
                        len: data.logical,
                        span: 0,
                    }
                }
                Body::Parts { total, parts, last } => {
                    let mut parts = parts.clone();
                    if last.logical > 0 {
                        let (seq, off) =
                            self.append(RecordKind::Part, key, last.flags, &[&last.payload])?;
                        parts.push(PartLoc {
                            seq,
                            off,
                            len: last.payload.len() as u64,
                            logical: last.logical,
                        });
                    }
                    self.manifest(key, *total, &parts)?
                }
            });
        }
        Ok(out)
    }

    pub(super) fn manifest(
        &mut self,
        key: &Key,
        total: u64,
        parts: &[PartLoc],
    ) -> Result<Entry, StorageError> {
        let oldest = parts.iter().map(|p| p.seq).min().unwrap_or(u32::MAX);
        if oldest < self.sh.tail() {
            inc(&self.sh.counters().full_errors);
            return Err(StorageError::Full(
                "parts of this upload were evicted before commit; capacity too small for the load"
                    .into(),
            ));
        }
        let (m, flags) = format::encode_manifest(total, parts);
        let (seq, off) = self.append(RecordKind::Manifest, key, flags, &[&Bytes::from(m)])?;
        Ok(Entry::manifest(*key, seq, off, total, parts))
    }

    /// Lays one record out at the end of the active segment (rolling when it does not fit).
    pub(super) fn append(
        &mut self,
        kind: RecordKind,
        key: &Key,
        flags: u8,
        payload: &[&Bytes],
    ) -> Result<(u32, u32), StorageError> {
        let len: u64 = payload.iter().map(|p| p.len() as u64).sum();
        let span = format::record_span(len);
        // Uploads leave the segment's last `copy_reserve` bytes to the late copy-forward pass.
        let seg_size = if self.copying {
            self.sh.cfg().segment_size
        } else {
            self.sh.cfg().segment_size - super::copy_forward::copy_reserve(self.sh.cfg())
        };
        if self.force_roll || self.active.as_ref().is_none_or(|a| a.pos + span > seg_size) {
            if self.copying {
                return Err(StorageError::Full(
                    "a copy-forward does not fit the segment".into(),
                ));
            }
            self.roll()?;
            // The copies a roll lays out at the start of the new segment (at most two budgets
            // of half a segment each, after a restart) may leave too little room for this
            // record: roll once more (that roll's copies are at most one budget).
            let full = self.sh.cfg().segment_size;
            if self.active.as_ref().is_some_and(|a| a.pos + span > full) {
                self.roll()?;
            }
        }
        let a = self.active.as_mut().expect("rolled");
        let (seq, pos) = (a.seg.seq, a.pos);
        self.pinned.get_or_insert(seq);
        a.pos += span;
        let mut h = RecordHeader {
            kind,
            flags,
            key: *key,
            len,
            checksum: 0,
        };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for p in payload {
            hasher.update(p);
        }
        h.checksum = hasher.digest();
        let max_batch = self.sh.cfg().max_batch_bytes;
        let contiguous = self
            .run
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r.file(), &a.seg.file) && r.end() == pos);
        if !contiguous || self.run.as_ref().is_some_and(|r| r.len() >= max_batch) {
            self.end_run();
            let file = Arc::clone(&self.active.as_ref().expect("active").seg.file);
            self.run = Some(Run::new(file, pos, span, len, max_batch));
        }
        let run = self.run.as_mut().expect("run");
        run.copy(&h.encode(seq));
        for p in payload {
            run.payload(p);
        }
        let pad = span as usize - RECORD_HEADER_LEN - len as usize;
        run.copy(&[0u8; ALIGN as usize][..pad]);
        Ok((seq, (pos / ALIGN) as u32))
    }
}
