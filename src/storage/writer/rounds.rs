//! Sync rounds, run by a syncer thread while the I/O thread goes on appending.
//!
//! A round makes everything laid out before it started durable: the I/O thread hands the
//! syncer the files to fdatasync and the state to write after them (FORMAT.md "Epochs and the
//! durable point"), moves on to the next epoch and keeps writing; when the syncer reports back
//! it takes the new state as its own, clears the superseded slots and answers the commits that
//! waited for the round. At most one round is in flight. Everything else that writes the state
//! file (rolls, open, a clean stop) waits for the round first, so state writes stay in order.
//!
//! In `Fdatasync` mode a round starts whenever something is unsynced and none is running, so
//! the disk works on one batch while the next is written (pipelined group commit); in
//! `Periodic` mode one starts every `interval`, or at once for an explicit `Sync`.

use super::{EPOCH_RESERVE, Writer, clone_err};
use crate::storage::StorageError;
use crate::storage::config::Durability;
use crate::storage::format::State;
use crate::storage::stats::inc;
use crate::storage::sys::{IoEngine, IoFile, WriteOp};
use crossbeam::channel::{Receiver, Sender, unbounded};
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Someone waiting for the next round to finish: a commit in `Fdatasync` mode or a `Sync`.
pub(crate) type Waiter = oneshot::Sender<Result<(), StorageError>>;

/// What the syncer does for one round.
struct Job {
    files: Vec<Arc<IoFile>>,
    state: WriteOp,
}

/// Which step of a round failed.
pub(super) enum RoundError {
    Data(io::Error),
    State(io::Error),
    /// The syncer thread is gone (it panicked).
    Gone,
}

/// The syncer thread and its two channels.
pub(super) struct Syncer {
    jobs: Option<Sender<Job>>,
    pub(super) done: Receiver<Result<(), RoundError>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    pub(super) fn spawn(mut io: Box<dyn IoEngine>) -> io::Result<Self> {
        let (jobs, job_rx) = unbounded::<Job>();
        let (done_tx, done) = unbounded();
        let thread = std::thread::Builder::new()
            .name("kiln-storage-sync".into())
            .spawn(move || {
                for job in job_rx {
                    let r = io
                        .sync(&job.files)
                        .map_err(RoundError::Data)
                        .and_then(|()| {
                            io.write_batch(std::slice::from_ref(&job.state))
                                .and_then(|()| io.sync(std::slice::from_ref(&job.state.file)))
                                .map_err(RoundError::State)
                        });
                    if done_tx.send(r).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The round being synced.
pub(super) struct InFlight {
    /// The state the round writes once the data is synced.
    next: State,
    checkpoint: bool,
    /// Superseded slots to clear once the round is durable.
    clear: Vec<(usize, u64)>,
    waiters: Vec<Waiter>,
}

impl Writer {
    fn checkpoint_due(&self) -> bool {
        self.hole
            || self.since_checkpoint >= self.sh.cfg().checkpoint_bytes
            || self.last_checkpoint.elapsed() >= self.sh.cfg().checkpoint_interval
    }

    /// How long the I/O thread may wait for a request before a periodic round is due.
    pub(super) fn round_timeout(&self) -> Duration {
        match self.sh.cfg().durability {
            Durability::Periodic { interval } if self.unsynced && self.in_flight.is_none() => {
                interval
                    .saturating_sub(self.last_round.elapsed())
                    .max(Duration::from_millis(1))
            }
            _ => Duration::from_secs(3600),
        }
    }

    /// Starts a round when one is due and none is running; answers waiters at once when
    /// nothing is left to sync.
    pub(super) fn maybe_start_round(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        if let Some(e) = self.poisoned() {
            for w in self.waiters.drain(..) {
                let _ = w.send(Err(clone_err(&e)));
            }
            return;
        }
        if !self.unsynced {
            for w in self.waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
            return;
        }
        let due = !self.waiters.is_empty()
            || match self.sh.cfg().durability {
                Durability::Fdatasync => true,
                Durability::Periodic { interval } => self.last_round.elapsed() >= interval,
            };
        if due {
            let checkpoint = self.checkpoint_due();
            self.start_round(checkpoint);
        }
    }

    /// Hands a round covering everything laid out so far to the syncer (the index file too for
    /// a `checkpoint`). Every record is laid out and its entry published before a round
    /// starts, so a checkpoint covers every record before the position it names.
    fn start_round(&mut self, checkpoint: bool) {
        debug_assert!(self.in_flight.is_none());
        let mut files = std::mem::take(&mut self.dirty);
        let pos = self.position();
        let mut next = self.state.clone();
        next.synced = pos;
        if checkpoint {
            files.push(self.sh.index().file());
            next.checkpoint = pos;
            // A hole before this point is covered; one made later sets the flag again.
            self.hole = false;
            self.since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
        }
        next.durable = self.epoch;
        self.epoch += 1;
        // No epoch at or past the durable limit may be used before a larger limit is durable:
        // such a round is waited for below.
        let must_wait = self.epoch >= self.state.limit;
        if self.epoch >= next.limit {
            next.limit = self.epoch + EPOCH_RESERVE;
        }
        next.generation += 1;
        let state = self.state_op(&next);
        self.unsynced = false;
        self.last_round = Instant::now();
        self.in_flight = Some(InFlight {
            next,
            checkpoint,
            clear: std::mem::take(&mut self.pending_clear),
            waiters: std::mem::take(&mut self.waiters),
        });
        let sent = self
            .syncer
            .jobs
            .as_ref()
            .is_some_and(|tx| tx.send(Job { files, state }).is_ok());
        if !sent {
            let _ = self.finish_round(Err(RoundError::Gone));
        } else if must_wait {
            let _ = self.join_round();
        }
    }

    /// Takes the syncer's report on the round in flight.
    pub(super) fn finish_round(&mut self, r: Result<(), RoundError>) -> Result<(), StorageError> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        let res = match r {
            Ok(()) => {
                // Only the fields a round writes: nothing else wrote the state meanwhile
                // (`write_state` waits for the round), but a roll may have moved `tail` in
                // memory before doing so.
                self.state.durable = f.next.durable;
                self.state.synced = f.next.synced;
                self.state.checkpoint = f.next.checkpoint;
                self.state.limit = f.next.limit;
                self.state.generation = f.next.generation;
                if f.checkpoint {
                    inc(&self.sh.counters().checkpoints);
                }
                inc(&self.sh.counters().syncs);
                let index = self.sh.index();
                for (slot, v) in f.clear {
                    index.clear_if(slot, v);
                }
                Ok(())
            }
            Err(RoundError::Data(e)) => Err(self.poison("fdatasync", &e)),
            Err(RoundError::State(e)) => Err(self.poison("state write", &e)),
            Err(RoundError::Gone) => {
                let e = io::Error::other("the storage syncer thread died");
                Err(self.poison("sync round", &e))
            }
        };
        for w in f.waiters {
            let _ = w.send(res.as_ref().copied().map_err(clone_err));
        }
        res
    }

    /// Waits for the round in flight, if any, and takes its report.
    pub(super) fn join_round(&mut self) -> Result<(), StorageError> {
        if self.in_flight.is_none() {
            return Ok(());
        }
        let r = self.syncer.done.recv().unwrap_or(Err(RoundError::Gone));
        self.finish_round(r)
    }

    /// One round run to its end on the caller's time: after the round in flight, everything
    /// laid out so far is made durable (with the index file for a `checkpoint`).
    pub(crate) fn sync_round(&mut self, checkpoint: bool) -> Result<(), StorageError> {
        self.join_round()?;
        if let Some(e) = self.poisoned() {
            return Err(e);
        }
        self.start_round(checkpoint);
        self.join_round()?;
        // `start_round` may have waited for the round itself.
        self.poisoned().map_or(Ok(()), Err)
    }
}
