//! Online growth of the index: when the share of live slots passes `index_grow_load`, a
//! table twice the size is filled in the background from the current one while service goes
//! on, then swapped in (FORMAT.md "Index growth").
//!
//! Steps, all driven from the I/O thread except the copy:
//! 1. **Check**: every `check_every` publishes, a sample of a few thousand slots estimates the
//!    live share (no count is kept, so a restart needs none).
//! 2. **Start**: `index.grow` is created and fully allocated (a full disk fails the growth,
//!    counted and logged; the old table goes on and the next check tries again later); a
//!    copier thread inserts every live entry of the current table into it.
//! 3. **Meanwhile** the writer publishes every new entry into both tables, so the new one
//!    misses nothing published after the copier walked past its slot. Readers keep using the
//!    old table. Entries superseded or dropped meanwhile may survive in the new table as
//!    older duplicates: lookups return the newest valid entry, and eviction invalidates them.
//! 4. **Switch**: after the copy, the writer waits for the sync round in flight (its clears
//!    name slots of the old table and are applied there), forgets the clears still pending
//!    for the old table (same reason), fdatasyncs the new file, renames it over `index`,
//!    fsyncs the directory and publishes the new table to readers. A crash before the rename
//!    leaves the old index (and a stray `index.grow`, removed at open); after it, the new
//!    file, which holds everything the old one held plus what was published since: the
//!    state's checkpoint stays true of it, and open replays from there as after any crash.

use super::Writer;
use crate::storage::index::{Copied, Copy, Entry, Index};
use crate::storage::stats::inc;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Slots read per load check.
const SAMPLES: usize = 4096;

/// Growth bookkeeping of the writer.
#[derive(Default)]
pub(crate) struct Growth {
    /// Publishes since the last load check.
    since_check: u64,
    /// Where the next sample starts (moves on every check so all slots get looked at).
    sample_start: usize,
    job: Option<Job>,
    /// After a failed growth: no new attempt before this many more publishes.
    backoff: u64,
    /// No more growth until restart: a grown table could not be renamed into place (it is
    /// served from memory under `index.grow`, which a new growth must not replace), or the
    /// copier died (its `index.grow` must stay so the next start rebuilds).
    disabled: bool,
}

struct Job {
    new: Arc<Index>,
    path: PathBuf,
    thread: JoinHandle<io::Result<Copied>>,
    started: Instant,
    from: usize,
}

impl Writer {
    fn grow_path(&self) -> PathBuf {
        self.sh.cfg().dir.join("index.grow")
    }

    /// Publishes between load checks: a small share of the table, so the load cannot pass
    /// the threshold by much before a check sees it.
    fn check_every(slots: usize) -> u64 {
        (slots as u64 / 64).clamp(64, 65_536)
    }

    /// A full probe window pushed `displaced` out of the index: unless the index is at its
    /// maximum, a growth starts at once (whatever the sampled load says; windows fill up
    /// before the average load does) and the entry goes into the new table, where lookups
    /// find it until the switch. False if it is lost (the index cannot grow).
    pub(super) fn grow_for_displaced(&mut self, (displaced, hint): &(Entry, u32)) -> bool {
        let index = self.sh.index_full();
        let max = self.sh.cfg().effective_index_max_slots() as usize;
        if index.slots() * 2 > max || !self.may_grow() {
            return false;
        }
        let load = self.sample(&index);
        self.start_growth(&index, self.target_slots(index.slots(), load));
        let Some(job) = &self.growth.job else {
            return false;
        };
        let sh = &self.sh;
        let r = job.new.insert(displaced, |y| sh.valid(y));
        job.new.set_hint(r.slot, *hint);
        true
    }

    /// Whether a growth may start now: not after a failure until the backoff has passed, and
    /// never once growth is disabled.
    fn may_grow(&self) -> bool {
        !self.growth.disabled && self.growth.since_check >= self.growth.backoff
    }

    /// How long the I/O thread may sleep: not long while a copy runs, so the switch follows
    /// its end even when no request arrives.
    pub(super) fn grow_wait(&self, otherwise: Duration) -> Duration {
        if self.growth.job.is_some() {
            otherwise.min(Duration::from_millis(50))
        } else {
            otherwise
        }
    }

    /// Also publishes `e` into the table being filled, if a growth is under way, together
    /// with the entry `e` pushed out of the current table (if any): readers look in the new
    /// table when the current one misses, so nothing is lost while the copy runs. True if a
    /// growth took them.
    pub(super) fn grow_publish(&mut self, e: &Entry, displaced: Option<&(Entry, u32)>) -> bool {
        self.growth.since_check += 1;
        let Some(job) = &self.growth.job else {
            return false;
        };
        let sh = Arc::clone(&self.sh);
        let new = Arc::clone(&job.new);
        // Entries pushed out of the table being filled (its window was full): after an early
        // switch they go into the table in force like any publish.
        let mut overflow = Vec::new();
        let r = new.insert(e, |y| sh.valid(y));
        if let Some(x) = r.displaced {
            overflow.push((x, new.hint(r.slot)));
        }
        new.clear_hint(r.slot);
        if let Some((d, hint)) = displaced {
            let r = new.insert(d, |y| sh.valid(y));
            if let Some(x) = r.displaced {
                overflow.push((x, new.hint(r.slot)));
            }
            new.set_hint(r.slot, *hint);
        }
        if !overflow.is_empty() {
            // A full window in the table being filled: wait for the copy and switch now, so
            // the entry pushed out has a table that can grow again.
            self.finish_growth();
            for x in overflow {
                self.insert_in_force(&x);
            }
        }
        true
    }

    /// Puts an entry that lost its slot during a growth into the index in force (the grown
    /// table, after the switch). Where its window is full the oldest entry there is pushed
    /// out and goes into a new growth; only an index at its maximum (or a second full window
    /// in a row, in the table being filled) loses one, counted in `index_displaced`.
    fn insert_in_force(&mut self, (x, hint): &(Entry, u32)) {
        let sh = Arc::clone(&self.sh);
        let index = sh.index_full();
        let r = index.insert(x, |y| sh.valid(y));
        let pushed = r.displaced.map(|d| (d, index.hint(r.slot)));
        index.set_hint(r.slot, *hint);
        self.pending_clear.extend(r.superseded);
        let Some(d) = pushed else {
            return;
        };
        match &self.growth.job {
            Some(job) => {
                let new = Arc::clone(&job.new);
                match new.insert_copy(&d.0, |y| sh.valid(y)) {
                    Copy::Present => {}
                    Copy::Put(slot, again) => {
                        new.set_hint(slot, d.1);
                        if let Some(a) = again {
                            crate::storage::stats::lost_entry(sh.counters(), &a);
                        }
                    }
                    Copy::WindowFull => crate::storage::stats::lost_entry(sh.counters(), &d.0),
                }
            }
            None => {
                if !self.grow_for_displaced(&d) {
                    crate::storage::stats::lost_entry(sh.counters(), &d.0);
                }
            }
        }
    }

    /// Called by the I/O thread between batches: finishes a growth whose copy is done, or
    /// checks the load and starts one.
    pub(super) fn grow_tick(&mut self) {
        if let Some(job) = &self.growth.job {
            if job.thread.is_finished() {
                self.finish_growth();
            } else if self.growth.since_check >= Self::check_every(job.new.slots()) {
                // The table being filled takes every publish while the copy runs: once it
                // is as loaded as a table that should grow, its windows start to fill, and an
                // entry pushed out of it has nowhere to go. The copy is waited for (it is
                // bounded by the old table's size) and the table switched in, so the next
                // check can grow it in turn.
                self.growth.since_check = 0;
                let new = Arc::clone(&job.new);
                if self.sample(&new) >= self.sh.cfg().index_grow_load {
                    self.finish_growth();
                }
            }
            return;
        }
        let index = self.sh.index_full();
        let slots = index.slots();
        if self.growth.disabled
            || self.growth.since_check < Self::check_every(slots).max(self.growth.backoff)
        {
            return;
        }
        self.growth.since_check = 0;
        self.growth.backoff = 0;
        let load = self.sample(&index);
        self.sh
            .counters()
            .index_load_permille
            .store((load * 1000.0) as u64, Ordering::Relaxed);
        let max = self.sh.cfg().effective_index_max_slots() as usize;
        if load < self.sh.cfg().index_grow_load || slots * 2 > max {
            return;
        }
        self.start_growth(&index, self.target_slots(slots, load));
    }

    /// `grow_tick` from within a batch, once enough publishes passed since the last check
    /// (a batch of many small blobs would otherwise push the load far past the threshold
    /// before the check between batches sees it; tests/storage_index_growth.rs
    /// `one_batch_of_many_entries_into_a_small_index_loses_none`).
    pub(super) fn grow_check_in_batch(&mut self) {
        let slots = match &self.growth.job {
            Some(job) => job.new.slots(),
            None => self.sh.index().slots(),
        };
        if self.growth.since_check >= Self::check_every(slots) {
            self.grow_tick();
        }
    }

    /// The sampled live share of `index` (the sample's start moves on every call).
    fn sample(&mut self, index: &Index) -> f64 {
        let start = self.growth.sample_start;
        self.growth.sample_start = start.wrapping_add(7919) % index.slots();
        index.sample_load(start, SAMPLES, |e| self.sh.valid(e))
    }

    /// The size to grow a table of `slots` at `load` to: twice the size, or more when the
    /// load is already well past the threshold (a check that came late, or a full window
    /// long before the threshold), so that the entries there now fill at most 60% of the
    /// threshold in the new table and what is published while the copy runs has room; at
    /// most the maximum.
    fn target_slots(&self, slots: usize, load: f64) -> usize {
        let max = self.sh.cfg().effective_index_max_slots() as usize;
        let goal = self.sh.cfg().index_grow_load * 0.6;
        let mut to = slots * 2;
        while load * slots as f64 > goal * to as f64 && to * 2 <= max {
            to *= 2;
        }
        to
    }

    fn start_growth(&mut self, old: &Arc<Index>, to: usize) {
        let path = self.grow_path();
        let probe = self.sh.cfg().probe_limit as usize;
        let new = match Index::create_grown(&path, to, probe, old) {
            Ok(ix) => Arc::new(ix),
            Err(e) => {
                inc(&self.sh.counters().index_grow_failures);
                tracing::warn!(
                    error = %e,
                    slots = to,
                    file = %path.display(),
                    "storage: cannot create a larger index (the current one goes on; retrying later)"
                );
                self.growth.since_check = 0;
                self.growth.backoff = Self::check_every(old.slots()) * 16;
                return;
            }
        };
        tracing::info!(
            from = old.slots(),
            to,
            "storage: the index passed its load threshold; growing it in the background"
        );
        // The directory entry is made durable first: after any crash, an `index.grow` at open
        // says the current index may lack entries pushed out of it during the growth.
        if let Err(e) = std::fs::File::open(&self.sh.cfg().dir).and_then(|d| d.sync_all()) {
            tracing::warn!(error = %e, "storage: cannot sync the data directory; not growing the index");
            drop(new);
            remove_grow_files(&path);
            inc(&self.sh.counters().index_grow_failures);
            self.growth.backoff = Self::check_every(old.slots()) * 16;
            return;
        }
        self.sh.set_growing(Some(Arc::clone(&new)));
        let (sh, src, dst) = (Arc::clone(&self.sh), Arc::clone(old), Arc::clone(&new));
        let delay = self.sh.cfg().grow_copy_delay;
        let spawned = std::thread::Builder::new()
            .name("kiln-index-grow".into())
            .spawn(move || {
                std::thread::sleep(delay);
                let mut last = Instant::now();
                let total = src.slots();
                let copied = src.copy_live_into(
                    &dst,
                    |e| sh.valid(e),
                    |done| {
                        if last.elapsed() >= Duration::from_secs(2) {
                            last = Instant::now();
                            tracing::info!(
                                done,
                                total,
                                "storage: growing the index: slots copied so far"
                            );
                        }
                    },
                );
                sh.counters()
                    .index_displaced
                    .fetch_add(copied.lost, Ordering::Relaxed);
                sh.counters()
                    .index_displaced_bytes
                    .fetch_add(copied.lost_bytes, Ordering::Relaxed);
                // The bulk of the new table's pages are written back here, off the I/O
                // thread; the switch syncs again only what the writer added since.
                dst.file().file.sync_data()?;
                Ok(copied)
            });
        match spawned {
            Ok(thread) => {
                self.growth.job = Some(Job {
                    new,
                    path,
                    thread,
                    started: Instant::now(),
                    from: old.slots(),
                });
            }
            Err(e) => {
                self.sh.set_growing(None);
                inc(&self.sh.counters().index_grow_failures);
                tracing::warn!(error = %e, "storage: cannot start the index growth thread");
                remove_grow_files(&path);
                self.growth.backoff = Self::check_every(old.slots()) * 16;
            }
        }
    }

    /// Switches readers to the filled table. Every way out of here switches: the new table
    /// holds entries the current one lost during the copy. If the file cannot be put in place
    /// the table is used from memory and `index.grow` stays, so the next start rebuilds.
    fn finish_growth(&mut self) {
        let Some(job) = self.growth.job.take() else {
            return;
        };
        let copied = match job.thread.join() {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // The copy is complete; only its bulk writeback failed. The switch below syncs
                // again and reports a failure there.
                tracing::warn!(error = %e, "storage: writeback of the grown index failed");
                Copied::default()
            }
            Err(_) => {
                // Entries pushed out meanwhile are only in the half-filled table: its file
                // stays, growth stops until restart, and the next start rebuilds the index
                // from the segment records.
                self.sh.set_growing(None);
                self.growth.disabled = true;
                inc(&self.sh.counters().index_grow_failures);
                tracing::error!(
                    "storage: the index growth thread panicked; some entries may read as missing until the next start rebuilds the index"
                );
                return;
            }
        };
        // Clears recorded so far name slots of the old table: the round in flight applies its
        // own there; the pending ones are dropped (they would hit unrelated slots of the new
        // table). What they would have cleared stays as older duplicates; see the module docs.
        let _ = self.join_round();
        self.pending_clear.clear();
        let index_path = self.sh.cfg().dir.join("index");
        let new = job.new;
        // The fdatasync before the rename makes the new table durable first; the rename goes
        // through the I/O engine, so the fault engine's crash model knows the file by its new
        // name from then on (and undoes the rename in a crash image if the power went first).
        let swap = new
            .file()
            .file
            .sync_data()
            .and_then(|()| self.io.rename_durably(&job.path, &index_path));
        match swap {
            Ok(()) => {
                if let Err(e) = Index::move_touches(&job.path, &index_path) {
                    tracing::warn!(error = %e, "storage: could not move the touch hints of the grown index");
                }
                if let Err(e) = new.moved_to(&index_path) {
                    tracing::warn!(error = %e, "storage: could not reopen the grown index by its new name");
                }
            }
            Err(e) => {
                // Served from memory under `index.grow`, which therefore must not be replaced:
                // no more growth until restart, and the next start rebuilds.
                self.growth.disabled = true;
                inc(&self.sh.counters().index_grow_failures);
                tracing::error!(
                    error = %e,
                    "storage: could not put the larger index in place; serving it from memory, no more growth until restart, and the next start rebuilds the index"
                );
            }
        }
        let to = new.slots();
        self.sh.set_index(new);
        self.sh.set_growing(None);
        self.sh
            .counters()
            .index_slots
            .store(to as u64, Ordering::Relaxed);
        inc(&self.sh.counters().index_growths);
        tracing::info!(
            from = job.from,
            to,
            copied = copied.copied,
            overflow = copied.overflow.len(),
            lost = copied.lost,
            ms = job.started.elapsed().as_millis() as u64,
            "storage: index grown"
        );
        // What the copy could not place (full windows of the new table): now that it is the
        // table in force, placed like any publish (pushing out the oldest of a full window
        // into the next growth).
        for x in copied.overflow {
            self.insert_in_force(&x);
        }
    }

    /// During open's replay or rebuild: checks the load like `grow_tick` and, when it starts
    /// a growth, waits for it (nothing is serving yet), so a rebuild never squeezes more
    /// entries into the table than it can hold.
    pub(super) fn grow_blocking(&mut self) {
        self.grow_tick();
        self.finish_growth_now();
    }

    /// At shutdown: a growth under way is finished (the copy waited for), since the new table
    /// may hold entries the current one lost.
    pub(super) fn finish_growth_now(&mut self) {
        if self.growth.job.is_some() {
            self.finish_growth();
        }
    }
}

/// Removes a growth's table and its touch file.
fn remove_grow_files(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(crate::storage::index::touch_path(path));
}
