//! The I/O thread: the only writer of segments, index entries and the state file.
//!
//! Uploads (on the tokio runtime) send requests over a channel; the thread takes a batch,
//! lays the records out in the active segment, writes each contiguous run with one
//! submission, publishes index entries, and - in `Fdatasync` mode - runs one sync round for
//! the whole batch before answering (group commit). See FORMAT.md for the fsync order.

use super::Key;
use super::StorageError;
use super::config::Durability;
use super::format::{
    self, ALIGN, PartLoc, RECORD_HEADER_LEN, RecordHeader, RecordKind, SEGMENT_HEADER_LEN,
    SegmentHeader, State,
};
use super::index::Entry;
use super::segment::SegMap;
use super::shared::Shared;
use super::stats::inc;
use super::sys::mmap::map_readonly;
use super::sys::{IoEngine, IoFile, WriteOp};
use bytes::{Bytes, BytesMut};
use crossbeam::channel::{Receiver, RecvTimeoutError};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Epochs reserved ahead in the state file (see FORMAT.md "Epochs").
pub(crate) const EPOCH_RESERVE: u64 = 1 << 16;

/// What one committed blob consists of.
pub(crate) enum Body {
    /// Up to `part_size` bytes: one `Blob` record.
    Single(Bytes),
    /// Parts already written plus an optional last part; a manifest is written on commit.
    Parts {
        total: u64,
        parts: Vec<PartLoc>,
        last: Bytes,
    },
}

pub(crate) enum Req {
    Part {
        key: Key,
        data: Bytes,
        reply: oneshot::Sender<Result<PartLoc, StorageError>>,
    },
    Commit {
        items: Vec<(Key, Body)>,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Sync {
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Finish the batch, run a final sync round, mark a clean stop and exit (sent by
    /// `Engine::drop`; upload handles still alive afterwards get `Closed`).
    Shutdown,
}

struct Active {
    seg: Arc<SegMap>,
    pos: u64,
}

/// A run of bytes being gathered for one write.
struct Run {
    file: Arc<IoFile>,
    offset: u64,
    buf: BytesMut,
}

pub(crate) struct Writer {
    pub sh: Arc<Shared>,
    pub io: Box<dyn IoEngine>,
    pub state_file: Arc<IoFile>,
    pub state: State,
    pub epoch: u64,
    active: Option<Active>,
    run: Option<Run>,
    ops: Vec<WriteOp>,
    dirty: Vec<Arc<IoFile>>,
    pending_clear: Vec<(usize, u64)>,
    unsynced: bool,
    last_sync: Instant,
}

enum Done {
    Part(
        oneshot::Sender<Result<PartLoc, StorageError>>,
        Result<PartLoc, StorageError>,
    ),
    Commit(
        oneshot::Sender<Result<(), StorageError>>,
        Result<Vec<Entry>, StorageError>,
    ),
    Sync(oneshot::Sender<Result<(), StorageError>>),
}

fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
}

impl Writer {
    pub fn new(
        sh: Arc<Shared>,
        io: Box<dyn IoEngine>,
        state_file: Arc<IoFile>,
        state: State,
        epoch: u64,
    ) -> Self {
        Self {
            sh,
            io,
            state_file,
            state,
            epoch,
            active: None,
            run: None,
            ops: Vec::new(),
            dirty: Vec::new(),
            pending_clear: Vec::new(),
            unsynced: false,
            last_sync: Instant::now(),
        }
    }

    /// Writes the state into the slot its generation selects and fdatasyncs it.
    pub fn write_state(&mut self) -> io::Result<()> {
        self.state.generation += 1;
        let off = (self.state.generation % 2) * 4096;
        let op = WriteOp {
            file: Arc::clone(&self.state_file),
            offset: off,
            buf: Bytes::copy_from_slice(&self.state.encode()),
        };
        self.io.write_batch(&[op])?;
        self.io.sync(&[Arc::clone(&self.state_file)])
    }

    fn poisoned(&self) -> Option<StorageError> {
        self.sh
            .poison
            .get()
            .map(|m| StorageError::Poisoned(m.clone()))
    }

    fn poison(&self, what: &str, e: &io::Error) -> StorageError {
        let msg = format!("{what}: {e}");
        if self.sh.poison.set(msg.clone()).is_ok() {
            tracing::error!(error = %e, "storage: I/O error during {what}; all further writes are refused until restart (reads go on)");
        }
        StorageError::Poisoned(msg)
    }

    fn io_err(&self, what: &str, e: &io::Error) -> StorageError {
        if is_enospc(e) {
            inc(&self.sh.counters.full_errors);
            StorageError::Full(format!("{what}: {e}"))
        } else {
            self.poison(what, e)
        }
    }

    /// The thread body: runs until `Shutdown` (or every sender is gone), then syncs and marks
    /// a clean stop.
    pub fn run(mut self, rx: &Receiver<Req>, touch: &Receiver<Key>) {
        loop {
            let timeout = match self.sh.cfg.durability {
                Durability::Periodic { interval } if self.unsynced => {
                    interval.saturating_sub(self.last_sync.elapsed())
                }
                _ => Duration::from_secs(3600),
            };
            let first = match rx.recv_timeout(timeout.max(Duration::from_millis(1))) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch: Vec<Req> = Vec::new();
            let mut stop = false;
            let mut bytes = 0u64;
            let mut next = first;
            while let Some(r) = next.take() {
                if matches!(r, Req::Shutdown) {
                    stop = true;
                    break;
                }
                bytes += req_bytes(&r);
                batch.push(r);
                if bytes < self.sh.cfg.max_batch_bytes && batch.len() < 256 {
                    next = rx.try_recv().ok();
                }
            }
            let touched: Vec<Key> = touch.try_iter().take(256).collect();
            self.process(batch, &touched);
            if stop {
                break;
            }
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.poisoned().is_some() {
            return;
        }
        if self.unsynced && self.sync_epoch().is_err() {
            return;
        }
        // Clean stop: no epoch beyond the durable one was used, so nothing is invalidated.
        self.state.limit = self.state.durable + 1;
        if let Err(e) = self.write_state() {
            tracing::warn!(error = %e, "storage: could not record a clean shutdown");
        }
    }

    fn process(&mut self, batch: Vec<Req>, touched: &[Key]) {
        let mut done = Vec::with_capacity(batch.len());
        let mut copies = Vec::new();
        for k in touched {
            if let Some(e) = self.copy_forward(k) {
                copies.push(e);
            }
        }
        let mut wants_sync = false;
        for r in batch {
            match r {
                Req::Part { key, data, reply } => {
                    let res = self
                        .poisoned()
                        .map_or_else(|| self.append(RecordKind::Part, &key, &[&data]), Err);
                    let res = res.map(|(seq, off)| PartLoc {
                        seq,
                        off,
                        len: data.len() as u64,
                    });
                    done.push(Done::Part(reply, res));
                }
                Req::Commit { items, reply } => {
                    wants_sync = true;
                    let res = self
                        .poisoned()
                        .map_or_else(|| self.lay_out_commit(&items), Err);
                    done.push(Done::Commit(reply, res));
                }
                Req::Sync { reply } => {
                    wants_sync = true;
                    done.push(Done::Sync(reply));
                }
                Req::Shutdown => {}
            }
        }
        // Write everything laid out.
        let wrote = self.flush_ops();
        let sync_res = if let Err(e) = &wrote {
            Err(clone_err(e))
        } else {
            for e in copies {
                self.publish(&e);
                inc(&self.sh.counters.copy_forwards);
            }
            for d in &done {
                if let Done::Commit(_, Ok(entries)) = d {
                    for e in entries {
                        self.publish(e);
                    }
                }
            }
            let periodic_due = match self.sh.cfg.durability {
                Durability::Fdatasync => wants_sync,
                Durability::Periodic { interval } => {
                    self.unsynced
                        && (self.last_sync.elapsed() >= interval
                            || done.iter().any(|d| matches!(d, Done::Sync(_))))
                }
            };
            if periodic_due && self.unsynced {
                self.sync_epoch()
            } else {
                Ok(())
            }
        };
        for d in done {
            match d {
                Done::Part(reply, res) => {
                    let _ = reply.send(match (&wrote, res) {
                        (Err(e), Ok(_)) => Err(clone_err(e)),
                        (_, r) => r,
                    });
                }
                Done::Commit(reply, res) => {
                    let _ = reply.send(match (&sync_res, res) {
                        (_, Err(e)) => Err(e),
                        (Err(e), Ok(_)) => Err(clone_err(e)),
                        (Ok(()), Ok(_)) => Ok(()),
                    });
                }
                Done::Sync(reply) => {
                    let _ = reply.send(sync_res.as_ref().copied().map_err(clone_err));
                }
            }
        }
    }

    fn publish(&mut self, e: &Entry) {
        let e = Entry {
            epoch: self.epoch,
            ..*e
        };
        let sh = Arc::clone(&self.sh);
        let r = sh.index.insert(&e, |x| sh.valid(x));
        if r.displaced {
            inc(&sh.counters.index_displaced);
        }
        inc(&sh.counters.entries_published);
        self.pending_clear.extend(r.superseded);
        self.unsynced = true;
    }

    /// One sync round: segments and index, then the state file naming this epoch durable.
    fn sync_epoch(&mut self) -> Result<(), StorageError> {
        let mut files = std::mem::take(&mut self.dirty);
        files.push(Arc::clone(self.sh.index.file()));
        if let Err(e) = self.io.sync(&files) {
            return Err(self.poison("fdatasync", &e));
        }
        self.state.durable = self.epoch;
        self.epoch += 1;
        if self.epoch >= self.state.limit {
            self.state.limit = self.epoch + EPOCH_RESERVE;
        }
        if let Err(e) = self.write_state() {
            return Err(self.poison("state write", &e));
        }
        inc(&self.sh.counters.syncs);
        for (slot, v) in std::mem::take(&mut self.pending_clear) {
            self.sh.index.clear_if(slot, v);
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn flush_ops(&mut self) -> Result<(), StorageError> {
        self.end_run();
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.ops);
        let n: u64 = ops.iter().map(|o| o.buf.len() as u64).sum();
        match self.io.write_batch(&ops) {
            Ok(()) => {
                self.sh
                    .counters
                    .bytes_written
                    .fetch_add(n, Ordering::Relaxed);
                if let Some(a) = &self.active {
                    self.sh.head_end.store(a.pos, Ordering::Release);
                }
                self.unsynced = true;
                Ok(())
            }
            Err(e) => Err(self.io_err("segment write", &e)),
        }
    }

    fn end_run(&mut self) {
        if let Some(run) = self.run.take()
            && !run.buf.is_empty()
        {
            if !self.dirty.iter().any(|f| Arc::ptr_eq(f, &run.file)) {
                self.dirty.push(Arc::clone(&run.file));
            }
            self.ops.push(WriteOp {
                file: run.file,
                offset: run.offset,
                buf: run.buf.freeze(),
            });
        }
    }

    fn lay_out_commit(&mut self, items: &[(Key, Body)]) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::with_capacity(items.len());
        for (key, body) in items {
            out.push(match body {
                Body::Single(data) => {
                    let (seq, off) = self.append(RecordKind::Blob, key, &[data])?;
                    Entry {
                        key: *key,
                        kind: RecordKind::Blob,
                        epoch: 0,
                        seq,
                        off,
                        len: data.len() as u64,
                        span: 0,
                    }
                }
                Body::Parts { total, parts, last } => {
                    let mut parts = parts.clone();
                    if !last.is_empty() {
                        let (seq, off) = self.append(RecordKind::Part, key, &[last])?;
                        parts.push(PartLoc {
                            seq,
                            off,
                            len: last.len() as u64,
                        });
                    }
                    self.manifest(key, *total, &parts)?
                }
            });
        }
        Ok(out)
    }

    fn manifest(
        &mut self,
        key: &Key,
        total: u64,
        parts: &[PartLoc],
    ) -> Result<Entry, StorageError> {
        let oldest = parts.iter().map(|p| p.seq).min().unwrap_or(u32::MAX);
        if oldest < self.sh.tail.load(Ordering::Acquire) {
            inc(&self.sh.counters.full_errors);
            return Err(StorageError::Full(
                "parts of this upload were evicted before commit; capacity too small for the load"
                    .into(),
            ));
        }
        let m = Bytes::from(format::encode_manifest(total, parts));
        let (seq, off) = self.append(RecordKind::Manifest, key, &[&m])?;
        Ok(Entry {
            key: *key,
            kind: RecordKind::Manifest,
            epoch: 0,
            seq,
            off,
            len: total,
            span: seq - oldest.min(seq),
        })
    }

    /// Re-appends a touched blob still in the oldest part of the ring. The entry is published
    /// after the batch's write succeeds.
    fn copy_forward(&mut self, key: &Key) -> Option<Entry> {
        if self.poisoned().is_some() {
            return None;
        }
        let sh = Arc::clone(&self.sh);
        let e = sh.lookup(key).filter(|e| sh.is_old(e))?;
        let blob = sh.read_blob(&e).ok()?;
        let r = if e.kind == RecordKind::Manifest {
            let mut parts = Vec::new();
            for ext in blob.chunks(0, u64::MAX, self.sh.cfg.part_size as usize) {
                let (seq, off) = self.append(RecordKind::Part, key, &[&ext]).ok()?;
                parts.push(PartLoc {
                    seq,
                    off,
                    len: ext.len() as u64,
                });
            }
            self.manifest(key, blob.len(), &parts).ok()
        } else {
            let b = blob.to_bytes();
            let (seq, off) = self.append(RecordKind::Blob, key, &[&b]).ok()?;
            Some(Entry {
                seq,
                off,
                span: 0,
                ..e
            })
        };
        drop(blob);
        r
    }

    /// Lays one record out at the end of the active segment (rolling when it does not fit).
    fn append(
        &mut self,
        kind: RecordKind,
        key: &Key,
        payload: &[&Bytes],
    ) -> Result<(u32, u32), StorageError> {
        let len: u64 = payload.iter().map(|p| p.len() as u64).sum();
        let span = format::record_span(len);
        let seg_size = self.sh.cfg.segment_size;
        if self.active.as_ref().is_none_or(|a| a.pos + span > seg_size) {
            self.roll()?;
        }
        let a = self.active.as_mut().expect("rolled");
        let (seq, pos) = (a.seg.seq, a.pos);
        a.pos += span;
        let mut h = RecordHeader {
            kind,
            flags: 0,
            key: *key,
            len,
            checksum: 0,
        };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for p in payload {
            hasher.update(p);
        }
        h.checksum = hasher.digest();
        let contiguous = self.run.as_ref().is_some_and(|r| {
            Arc::ptr_eq(&r.file, &a.seg.file) && r.offset + r.buf.len() as u64 == pos
        });
        if !contiguous
            || self
                .run
                .as_ref()
                .is_some_and(|r| r.buf.len() as u64 >= self.sh.cfg.max_batch_bytes)
        {
            self.end_run();
            let file = Arc::clone(&self.active.as_ref().expect("active").seg.file);
            self.run = Some(Run {
                file,
                offset: pos,
                buf: BytesMut::with_capacity(span.max(self.sh.cfg.max_batch_bytes) as usize),
            });
        }
        let run = self.run.as_mut().expect("run");
        run.buf.extend_from_slice(&h.encode(seq));
        for p in payload {
            run.buf.extend_from_slice(p);
        }
        let pad = span as usize - RECORD_HEADER_LEN - len as usize;
        run.buf.extend_from_slice(&[0u8; ALIGN as usize][..pad]);
        Ok((seq, (pos / ALIGN) as u32))
    }

    /// Seals the active segment and opens the next one, evicting the oldest when the ring is
    /// full. Order: state (new tail) durable before an evicted file is overwritten; segment
    /// header durable before the state names the segment as head.
    fn roll(&mut self) -> Result<(), StorageError> {
        // Pending bytes of the old segment must reach the disk before its file may change.
        self.end_run();
        let sh = Arc::clone(&self.sh);
        let n = sh.segs.len();
        let new = self.state.head + 1;
        let mut reused: Option<Arc<SegMap>> = None;
        if new - self.state.tail >= n {
            // Ring full: drop the oldest segment (it shares the file slot with `new`).
            self.state.tail = new - n + 1;
            sh.tail.store(self.state.tail, Ordering::Release);
            reused = sh.segs.take_slot(new);
            inc(&sh.counters.evictions);
            // Earlier ops may target the evicted file: write them first.
            self.flush_ops()?;
            self.write_state()
                .map_err(|e| self.io_err("state write", &e))?;
        }
        let path = sh.segs.path(new);
        let size = sh.cfg.segment_size;
        let (file, map) = match reused.map(Arc::try_unwrap) {
            Some(Ok(old)) => (old.file, Some(old.map)),
            other => {
                if let Some(Err(_held)) = other {
                    // A reader still holds the old mapping: give it the old inode.
                    let _ = std::fs::remove_file(&path);
                }
                let f = IoFile::open(&path).map_err(|e| self.io_err("segment create", &e))?;
                (f, None)
            }
        };
        self.io
            .allocate(&file, size)
            .map_err(|e| self.io_err("segment allocate", &e))?;
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
            .map_err(|e| self.io_err("segment header write", &e))?;
        self.io
            .sync(&[Arc::clone(&file)])
            .map_err(|e| self.io_err("segment header sync", &e))?;
        self.state.head = new;
        self.write_state()
            .map_err(|e| self.io_err("state write", &e))?;
        let map = match map {
            Some(m) => m,
            None => map_readonly(&file.file, size as usize)
                .map_err(|e| self.io_err("segment map", &e))?,
        };
        let seg = Arc::new(SegMap {
            seq: new,
            map,
            file,
        });
        sh.segs.install(Arc::clone(&seg));
        sh.head.store(new, Ordering::Release);
        sh.head_end.store(SEGMENT_HEADER_LEN, Ordering::Release);
        self.active = Some(Active {
            seg,
            pos: SEGMENT_HEADER_LEN,
        });
        Ok(())
    }
}

fn req_bytes(r: &Req) -> u64 {
    match r {
        Req::Part { data, .. } => data.len() as u64,
        Req::Commit { items, .. } => items
            .iter()
            .map(|(_, b)| match b {
                Body::Single(d) => d.len() as u64,
                Body::Parts { last, .. } => last.len() as u64,
            })
            .sum(),
        Req::Sync { .. } | Req::Shutdown => 0,
    }
}

pub(crate) fn clone_err(e: &StorageError) -> StorageError {
    match e {
        StorageError::Full(m) => StorageError::Full(m.clone()),
        StorageError::Poisoned(m) => StorageError::Poisoned(m.clone()),
        StorageError::Closed => StorageError::Closed,
        other => StorageError::Poisoned(other.to_string()),
    }
}
