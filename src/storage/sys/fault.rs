//! A fault-injecting I/O engine for crash, full-disk and error tests.
//!
//! It forwards to a real engine (psync or io_uring) and remembers, per file, the image that was last made durable by a
//! `sync`. `crash_image` then rewrites every file as a power loss could leave it: each 4 KiB
//! page written since its last sync is kept, dropped (back to the durable image) or torn (a
//! random prefix of 512-byte sectors new, the rest old). It also fails the Nth operation
//! with EIO, fails writes and allocations with ENOSPC while the disk is "full", and can hold
//! the syncs of forked engines (the syncer thread's) until released: a slow disk, to see what
//! goes on while a sync round is in flight.

use super::{IoEngine, IoFile, WriteOp};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

const PAGE: usize = 4096;
const SECTOR: usize = 512;

/// Shared control of a [`FaultIo`]: keep one in the test while the engine owns the I/O.
#[derive(Default, Debug)]
pub struct FaultState {
    inner: Mutex<Inner>,
    /// Signalled when `hold_syncs` is lifted.
    released: Condvar,
}

#[derive(Default, Debug)]
struct Inner {
    durable: HashMap<PathBuf, Vec<u8>>,
    /// Page-cache contents at the moment the power went off (`freeze`).
    at_freeze: Option<HashMap<PathBuf, Vec<u8>>>,
    frozen: bool,
    full: bool,
    ops: u64,
    fail_at: Option<u64>,
    reads: u64,
    writes: u64,
    hold: bool,
    /// Syncs still let through the hold.
    pass: u64,
    /// Syncs waiting at the hold now.
    held: u64,
    syncs: u64,
    /// Renames done after the power went off (`freeze`): undone by `crash_image`.
    renames: Vec<(PathBuf, PathBuf)>,
}

impl FaultState {
    /// A new control block.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
    /// The power goes off now: `crash_image` starts from the files as they are at this
    /// moment (page cache included) and later writes, syncs and mapped stores never reach the
    /// disk. The engine itself keeps running, unaware.
    pub fn freeze(&self) {
        let mut g = self.lock();
        let snap = g
            .durable
            .keys()
            .map(|p| (p.clone(), std::fs::read(p).unwrap_or_default()))
            .collect();
        g.at_freeze = Some(snap);
        g.frozen = true;
    }
    /// Makes writes and allocations fail with ENOSPC (`true`) or succeed again.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }
    /// Makes the operation with sequence number `n` (counting from now) fail with EIO. The
    /// count covers the writer's and the syncer's engines together, so with rounds in flight
    /// which operation that is depends on thread timing.
    pub fn fail_after(&self, n: u64) {
        let mut g = self.lock();
        g.fail_at = Some(g.ops + n);
    }
    /// Number of `read_at` calls so far (open must not read segments).
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }
    /// Number of `write_batch` calls so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }
    /// Number of `sync` calls completed so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }
    /// While `true`, every `sync` of a forked engine (the syncer thread's) waits, before
    /// touching the disk, until it is `false` again.
    pub fn hold_syncer(&self, hold: bool) {
        self.lock().hold = hold;
        self.released.notify_all();
    }
    /// Lets `n` more syncs through the hold (a sync round is two: data, then state).
    pub fn pass_syncs(&self, n: u64) {
        self.lock().pass += n;
        self.released.notify_all();
    }
    /// Number of syncs waiting at the hold right now.
    pub fn held_syncs(&self) -> u64 {
        self.lock().held
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rewrites every file touched through this engine as a power loss would leave it.
    /// `seed` drives the choice per page. Call after the engine is dropped.
    pub fn crash_image(&self, seed: u64) -> io::Result<()> {
        let mut g = self.lock();
        // Renames after the power went off never reached the disk: each file goes back to
        // its old name, and what the old name held at the freeze is there again.
        for (from, to) in std::mem::take(&mut g.renames).into_iter().rev() {
            std::fs::rename(&to, &from)?;
            if let Some(old) = g.at_freeze.as_ref().and_then(|s| s.get(&to)) {
                std::fs::write(&to, old)?;
            }
        }
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for (path, durable) in &g.durable {
            let Ok(on_disk) = std::fs::read(path) else {
                continue;
            };
            // What the page cache held when the power went off (a file first touched after
            // that did not exist: empty).
            let mut cur = match &g.at_freeze {
                Some(snap) => snap.get(path).cloned().unwrap_or_default(),
                None => on_disk.clone(),
            };
            cur.resize(on_disk.len().max(cur.len()), 0);
            let pages = cur.len().div_ceil(PAGE);
            let mut changed = false;
            for p in 0..pages {
                let lo = p * PAGE;
                let hi = (lo + PAGE).min(cur.len());
                let old: Vec<u8> = (lo..hi)
                    .map(|i| durable.get(i).copied().unwrap_or(0))
                    .collect();
                if cur[lo..hi] == old[..] {
                    continue;
                }
                match next() % 3 {
                    0 => {}
                    1 => {
                        cur[lo..hi].copy_from_slice(&old);
                        changed = true;
                    }
                    _ => {
                        let keep = (next() as usize % (PAGE / SECTOR)) * SECTOR;
                        let from = (lo + keep).min(hi);
                        cur[from..hi].copy_from_slice(&old[from - lo..]);
                        changed = true;
                    }
                }
            }
            if changed || cur != on_disk {
                std::fs::write(path, &cur)?;
            }
        }
        Ok(())
    }
}

/// The engine side of fault injection: a real engine plus the bookkeeping of [`FaultState`].
pub struct FaultIo {
    base: Box<dyn IoEngine>,
    state: Arc<FaultState>,
    /// Made by `fork` (its syncs obey `hold_syncer`).
    forked: bool,
}

impl FaultIo {
    /// An engine controlled by `state`, forwarding to `base` (psync or io_uring).
    pub fn new(state: Arc<FaultState>, base: Box<dyn IoEngine>) -> Self {
        Self {
            base,
            state,
            forked: false,
        }
    }

    fn op(&self, files: &[&IoFile], is_write: bool) -> io::Result<()> {
        let mut g = self.state.lock();
        g.ops += 1;
        if g.fail_at == Some(g.ops) {
            return Err(io::Error::other("injected I/O error"));
        }
        if is_write && g.full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        for f in files {
            if !g.durable.contains_key(&f.path) {
                // First touch in this session: what is on disk now counts as durable (if the
                // power is already off, the file's current bytes never made it).
                let img = if g.frozen {
                    Vec::new()
                } else {
                    std::fs::read(&f.path).unwrap_or_default()
                };
                g.durable.insert(f.path.clone(), img);
            }
        }
        Ok(())
    }
}

impl IoEngine for FaultIo {
    fn name(&self) -> &'static str {
        "fault"
    }

    fn write_batch(&mut self, ops: &[WriteOp]) -> io::Result<()> {
        let files: Vec<&IoFile> = ops.iter().map(|o| &*o.file).collect();
        self.op(&files, true)?;
        self.state.lock().writes += 1;
        self.base.write_batch(ops)
    }

    fn sync(&mut self, files: &[Arc<IoFile>]) -> io::Result<()> {
        let refs: Vec<&IoFile> = files.iter().map(|f| &**f).collect();
        // fdatasync guarantees what the file held when it was called; another thread may
        // write on meanwhile (the writer appends while the syncer syncs, or while the sync is
        // held: a slow disk), and those bytes are not promised.
        let images = files
            .iter()
            .map(|f| Ok((f.path.clone(), std::fs::read(&f.path)?)))
            .collect::<io::Result<Vec<_>>>()?;
        if self.forked {
            let mut g = self.state.lock();
            if g.hold {
                g.held += 1;
                while g.hold && g.pass == 0 {
                    g = self
                        .state
                        .released
                        .wait(g)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if g.hold {
                    g.pass -= 1;
                }
                g.held -= 1;
            }
        }
        self.op(&refs, false)?;
        self.base.sync(files)?;
        let mut g = self.state.lock();
        g.syncs += 1;
        if !g.frozen {
            g.durable.extend(images);
        }
        Ok(())
    }

    fn rename_durably(&mut self, from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
        super::rename_durably(from, to)?;
        let mut g = self.state.lock();
        if g.frozen {
            g.renames.push((from.to_path_buf(), to.to_path_buf()));
        } else if let Some(img) = g.durable.remove(from) {
            g.durable.insert(to.to_path_buf(), img);
        } else {
            // The file at `to` is now another one, never synced through this engine: what
            // the rename made durable is what it held (the caller synced it first).
            let img = std::fs::read(to).unwrap_or_default();
            g.durable.insert(to.to_path_buf(), img);
        }
        Ok(())
    }

    fn allocate(&mut self, file: &IoFile, len: u64) -> io::Result<()> {
        self.op(&[file], true)?;
        self.base.allocate(file, len)
    }

    fn read_at(&mut self, file: &IoFile, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.state.lock().reads += 1;
        self.base.read_at(file, offset, buf)
    }

    fn fork(&self) -> io::Result<Box<dyn IoEngine>> {
        Ok(Box::new(Self {
            base: self.base.fork()?,
            state: Arc::clone(&self.state),
            forked: true,
        }))
    }
}
