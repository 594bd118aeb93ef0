//! The I/O thread: the only writer of segments and index entries.
//!
//! Uploads (on the tokio runtime) send requests over a channel; the thread takes a batch,
//! lays the records out in the active segment, writes each contiguous run with one
//! submission and publishes index entries. Sync rounds run on a syncer thread meanwhile
//! (`rounds`); in `Fdatasync` mode a commit is answered when the round covering it is
//! durable (group commit). See FORMAT.md for the fsync order.

mod append;
mod copy_forward;
mod evict;
mod grow;
mod recovery;
mod rounds;
mod run;
mod walk;

use super::Key;
use super::StorageError;
use super::codec::Encoded;
use super::config::Durability;
use super::format::{PartLoc, Pos, RecordKind, State, state_slot_offset};
use super::index::Entry;
use super::read::Shared;
use super::segment::SegMap;
use super::stats::inc;
use super::sys::{IoEngine, IoFile, WriteOp};
use bytes::Bytes;
use crossbeam::channel::Receiver;
use rounds::{InFlight, RoundError, Syncer, Waiter};
use run::Run;
use std::io;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Epochs reserved ahead in the state file (see FORMAT.md "Epochs").
pub(crate) const EPOCH_RESERVE: u64 = 1 << 16;

/// What one committed blob consists of (payloads as `codec` encoded them).
pub(crate) enum Body {
    /// Up to `part_size` bytes: one `Blob` record.
    Single(Encoded),
    /// Parts already written plus an optional last part; a manifest is written on commit.
    Parts {
        total: u64,
        parts: Vec<PartLoc>,
        last: Encoded,
    },
}

pub(crate) enum Req {
    Part {
        key: Key,
        data: Encoded,
        reply: oneshot::Sender<Result<PartLoc, StorageError>>,
        /// The upload's share of the parts in flight, returned when the request is done.
        _permit: tokio::sync::OwnedSemaphorePermit,
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

/// The I/O thread's state. Contract: the only writer of segment files, the state file and
/// index entries; everything it lays out is written before it is published, and published
/// before it is acknowledged (after a sync round in `Fdatasync` mode). Its fields belong to
/// the parts named in `storage/mod.rs`: `sh` to the read path (shared with readers), `io`,
/// `active`, `run`, `ops`, `dirty`, `hole`, `pinned` and `force_roll` to appending
/// (`append.rs`), `state`, `epoch`, `state_file`, `unsynced`, `last_round`, `syncer`,
/// `in_flight`, `waiters`, `since_checkpoint`, `last_checkpoint` and `pending_clear` to group
/// commit (`rounds.rs`), `copied`, `copy_end` and `copying` to copy-forward, `growth` to index
/// growth. Private to the `writer` module and its parts.
// Four independent flags of the I/O thread's state machine; an enum would not be clearer.
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct Writer {
    sh: Arc<Shared>,
    io: Box<dyn IoEngine>,
    state_file: Arc<IoFile>,
    state: State,
    epoch: u64,
    active: Option<Active>,
    run: Option<Run>,
    ops: Vec<WriteOp>,
    dirty: Vec<Arc<IoFile>>,
    pending_clear: Vec<(usize, u64)>,
    /// Something was written or published since the last round started.
    unsynced: bool,
    /// When the last round started.
    last_round: Instant,
    syncer: Syncer,
    in_flight: Option<InFlight>,
    /// Waiting for the next round (registered after the one in flight started).
    waiters: Vec<Waiter>,
    /// Bytes written since the last index checkpoint.
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// A failed write left a hole in the active segment: replay stops at the first record
    /// that does not validate, so records after the hole must reach the index file by a
    /// checkpoint before they are acknowledged.
    hole: bool,
    /// The oldest segment holding a record laid out in the batch being processed: a full
    /// disk may not evict it before the batch is written and answered.
    pinned: Option<u32>,
    /// A segment write failed for a full disk: the next record starts a new segment.
    force_roll: bool,
    /// Online index growth (`grow`).
    growth: grow::Growth,
    /// Copies made by eviction's copy-forward, published with the batch after its write.
    copied: Vec<Entry>,
    /// The position after the last copy laid out: it must be durable before the segment the
    /// copies came from is evicted (FORMAT.md "fsync order").
    copy_end: Pos,
    /// The walk of the tail for its copy-forward passes, and the walk ahead of the segment
    /// after it (`copy_forward.rs`).
    tail_walk: Option<copy_forward::TailWalk>,
    next_walk: Option<copy_forward::TailWalk>,
    /// Copy-forward is laying records out: an append that would roll fails instead (a copy
    /// never triggers another eviction).
    copying: bool,
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

pub(super) fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
}

impl Writer {
    pub fn new(
        sh: Arc<Shared>,
        io: Box<dyn IoEngine>,
        state_file: Arc<IoFile>,
        state: State,
        epoch: u64,
    ) -> io::Result<Self> {
        let syncer = Syncer::spawn(io.fork()?)?;
        Ok(Self {
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
            last_round: Instant::now(),
            syncer,
            in_flight: None,
            waiters: Vec::new(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            hole: false,
            pinned: None,
            force_roll: false,
            growth: grow::Growth::default(),
            copied: Vec::new(),
            copy_end: Pos::default(),
            copying: false,
            tail_walk: None,
            next_walk: None,
        })
    }

    /// Writes the state into the slot its generation selects and fdatasyncs it, after the
    /// round in flight (whose state write must come first).
    pub fn write_state(&mut self) -> io::Result<()> {
        if let Err(e) = self.join_round() {
            return Err(io::Error::other(e.to_string()));
        }
        self.state.generation += 1;
        let op = self.state_op(&self.state);
        let r = self
            .io
            .write_batch(&[op])
            .and_then(|()| self.io.sync(&[Arc::clone(&self.state_file)]));
        if r.is_err() {
            // The slot may be torn: the next write goes to the same slot again, never over
            // the newest valid one.
            self.state.generation -= 1;
        }
        r
    }

    /// The write of `state` into the slot its generation selects.
    fn state_op(&self, state: &State) -> WriteOp {
        WriteOp {
            file: Arc::clone(&self.state_file),
            offset: state_slot_offset(state.generation % 2),
            buf: Bytes::copy_from_slice(&state.encode()),
        }
    }

    fn poisoned(&self) -> Option<StorageError> {
        self.sh
            .poison()
            .get()
            .map(|m| StorageError::Poisoned(m.clone()))
    }

    fn poison(&self, what: &str, e: &io::Error) -> StorageError {
        let msg = format!("{what}: {e}");
        if self.sh.poison().set(msg.clone()).is_ok() {
            tracing::error!(error = %e, "storage: I/O error during {what}; all further writes are refused until restart (reads go on)");
        }
        StorageError::Poisoned(msg)
    }

    fn io_err(&mut self, what: &str, e: &io::Error) -> StorageError {
        // Whatever was laid out and not written is a hole (other errors poison the store).
        self.hole = true;
        if is_enospc(e) {
            inc(&self.sh.counters().full_errors);
            StorageError::Full(format!("{what}: {e}"))
        } else {
            self.poison(what, e)
        }
    }

    /// The thread body: runs until `Shutdown` (or every sender is gone), then syncs and marks
    /// a clean stop.
    pub fn run(mut self, rx: &Receiver<Req>) {
        let mut done = self.syncer.done.clone();
        loop {
            let first = crossbeam::select! {
                recv(rx) -> r => match r {
                    Ok(r) => Some(r),
                    Err(_) => break,
                },
                recv(done) -> r => {
                    let r = r.unwrap_or_else(|_| {
                        // The syncer is gone (it panicked): poison, answer the waiters, and
                        // stop listening to the closed channel.
                        done = crossbeam::channel::never();
                        Err(RoundError::Gone)
                    });
                    let _ = self.finish_round(r);
                    self.maybe_start_round();
                    continue;
                },
                default(self.grow_wait(self.round_timeout())) => None,
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
                if bytes < self.sh.cfg().max_batch_bytes && batch.len() < 256 {
                    next = rx.try_recv().ok();
                }
            }
            self.process(batch);
            self.maybe_start_round();
            self.grow_tick();
            if stop {
                break;
            }
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.finish_growth_now();
        let _ = self.join_round();
        if self.poisoned().is_some() {
            self.maybe_start_round(); // answers the waiters with the error
            return;
        }
        if self.unsynced || self.state.checkpoint != self.position() {
            if self.sync_round(true).is_err() {
                return;
            }
        } else {
            self.maybe_start_round(); // nothing to sync: answers the waiters
        }
        // Clean stop: no epoch beyond the durable one was used, so nothing is invalidated.
        self.state.limit = self.state.durable + 1;
        if let Err(e) = self.write_state() {
            tracing::warn!(error = %e, "storage: could not record a clean shutdown");
        }
    }

    fn process(&mut self, batch: Vec<Req>) {
        self.pinned = None;
        let mut done = Vec::with_capacity(batch.len());
        for r in batch {
            match r {
                Req::Part {
                    key, data, reply, ..
                } => {
                    let res = self.poisoned().map_or_else(
                        || self.append(RecordKind::Part, &key, data.flags, &[&data.payload]),
                        Err,
                    );
                    let res = res.map(|(seq, off)| PartLoc {
                        seq,
                        off,
                        len: data.payload.len() as u64,
                        logical: data.logical,
                    });
                    done.push(Done::Part(reply, res));
                }
                Req::Commit { items, reply } => {
                    let res = self
                        .poisoned()
                        .map_or_else(|| self.lay_out_commit(&items), Err);
                    done.push(Done::Commit(reply, res));
                }
                Req::Sync { reply } => done.push(Done::Sync(reply)),
                Req::Shutdown => {}
            }
        }
        // Write everything laid out.
        let wrote = self.flush_ops();
        // Copies laid out by a roll in this batch (their records are written now).
        let copies = std::mem::take(&mut self.copied);
        if wrote.is_ok() {
            for e in copies {
                self.publish(&e);
            }
            for d in &done {
                if let Done::Commit(_, Ok(entries)) = d {
                    for e in entries {
                        self.publish(e);
                    }
                }
            }
        }
        // Answer what is done; commits in `Fdatasync` mode and syncs wait for a round.
        let fdatasync = self.sh.cfg().durability == Durability::Fdatasync;
        for d in done {
            match (d, &wrote) {
                (Done::Part(reply, res), Ok(())) => {
                    let _ = reply.send(res);
                }
                (Done::Part(reply, res), Err(e)) => {
                    let _ = reply.send(res.and(Err(clone_err(e))));
                }
                (Done::Commit(reply, Err(e)), _) => {
                    let _ = reply.send(Err(e));
                }
                (Done::Commit(reply, Ok(_)) | Done::Sync(reply), Err(e)) => {
                    let _ = reply.send(Err(clone_err(e)));
                }
                (Done::Commit(reply, Ok(_)), Ok(())) if !fdatasync => {
                    let _ = reply.send(Ok(()));
                }
                (Done::Commit(reply, Ok(_)) | Done::Sync(reply), Ok(())) => {
                    self.waiters.push(reply);
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
        let index = sh.index();
        let r = index.insert(&e, |x| sh.valid(x));
        // An entry pushed out keeps its touch hint where it goes.
        let displaced = r.displaced.map(|d| (d, index.hint(r.slot)));
        // A new entry in the slot: "touched since written" starts afresh.
        index.clear_hint(r.slot);
        // Recorded before the growth step below: should it switch tables early, the switch
        // drops the clears that name slots of the table it replaces.
        self.pending_clear.extend(r.superseded);
        drop(index);
        if !self.grow_publish(&e, displaced.as_ref())
            && let Some(d) = displaced
            && !self.grow_for_displaced(&d)
        {
            crate::storage::stats::lost_entry(sh.counters(), &d.0);
        }
        inc(&sh.counters().entries_published);
        self.unsynced = true;
        self.grow_check_in_batch();
    }

    /// The position after the last record laid out: where the next one goes.
    pub(crate) fn position(&self) -> Pos {
        match &self.active {
            Some(a) => Pos {
                seq: a.seg.seq,
                off: a.pos,
            },
            None => Pos {
                seq: self.state.head + 1,
                off: 0,
            },
        }
    }
}

fn req_bytes(r: &Req) -> u64 {
    match r {
        Req::Part { data, .. } => data.payload.len() as u64,
        Req::Commit { items, .. } => items
            .iter()
            .map(|(_, b)| match b {
                Body::Single(d) => d.payload.len() as u64,
                Body::Parts { last, .. } => last.payload.len() as u64,
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
