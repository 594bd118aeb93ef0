//! The io_uring engine: one ring owned by the storage I/O thread.
//!
//! Why io-uring 0.7 on a dedicated thread rather than tokio-uring: tokio-uring 0.5 is barely
//! maintained (last tag 2024-05, pins io-uring 0.6) and wants its own runtime per thread, while
//! the server runs on a multi-threaded tokio runtime. One I/O thread fed by a channel batches
//! appends from every upload into one submission, which is where io_uring's gain lies on this
//! hardware (PLATFORM.md: same disk ceiling as psync, fewer syscalls).

use super::{IoEngine, IoFile, WriteOp, fallocate, pread_exact};
use io_uring::{IoUring, opcode, types};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

const RING_ENTRIES: u32 = 64;

/// An io_uring instance with `RING_ENTRIES` submission slots.
pub struct Uring {
    ring: IoUring,
}

impl Uring {
    /// Sets up a ring; fails where the kernel or a seccomp policy forbids io_uring.
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // Probe with a no-op so a ring that can be created but not used (some sandboxes) fails
        // here and Auto falls back to psync.
        let mut me = Self { ring };
        let nop = opcode::Nop::new().build().user_data(0);
        me.run(&mut [nop])?;
        Ok(me)
    }

    /// Submits `sqes` (at most RING_ENTRIES) and waits for all completions. Returns the result
    /// of each entry, indexed by its `user_data`.
    fn run(&mut self, sqes: &mut [io_uring::squeue::Entry]) -> io::Result<Vec<i32>> {
        let n = sqes.len();
        debug_assert!(n <= RING_ENTRIES as usize);
        for sqe in sqes.iter() {
            // SAFETY: every buffer and fd an entry points at is borrowed by the caller for the
            // whole of `run`, and `run` returns only once every entry has completed, or with
            // an error after which the caller keeps the buffers alive for ever (see
            // `write_batch`): the kernel never reads memory that was freed.
            unsafe { self.ring.submission().push(sqe) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        let mut results = vec![0i32; n];
        let mut done = 0;
        while done < n {
            match self.ring.submit_and_wait(n - done) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                let i = cqe.user_data() as usize;
                if i < n {
                    results[i] = cqe.result();
                    done += 1;
                }
            }
        }
        Ok(results)
    }
}

fn check(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

impl IoEngine for Uring {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn write_batch(&mut self, ops: &[WriteOp]) -> io::Result<()> {
        // (op index, bytes already written) for ops not yet complete.
        let mut pending: Vec<(usize, usize)> = (0..ops.len()).map(|i| (i, 0)).collect();
        while !pending.is_empty() {
            let take = pending.len().min(RING_ENTRIES as usize);
            let mut sqes = Vec::with_capacity(take);
            for (slot, &(i, done)) in pending[..take].iter().enumerate() {
                let op = &ops[i];
                let rest = &op.buf[done..];
                let len = rest.len().min(1 << 30) as u32;
                sqes.push(
                    opcode::Write::new(types::Fd(op.file.file.as_raw_fd()), rest.as_ptr(), len)
                        .offset(op.offset + done as u64)
                        .build()
                        .user_data(slot as u64),
                );
            }
            let results = match self.run(&mut sqes) {
                Ok(r) => r,
                Err(e) => {
                    // Entries of this submission may still be in flight, reading from the
                    // buffers (an upload's own, or a view of a segment's mapping): they are
                    // leaked rather than freed under the kernel. Only a broken ring gets here.
                    for op in ops {
                        std::mem::forget(op.buf.clone());
                    }
                    return Err(e);
                }
            };
            let mut next = Vec::new();
            for (slot, res) in results.into_iter().enumerate() {
                let (i, done) = pending[slot];
                let n = check(res)?;
                if n == 0 && !ops[i].buf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "io_uring write returned 0",
                    ));
                }
                if done + n < ops[i].buf.len() {
                    next.push((i, done + n));
                }
            }
            next.extend_from_slice(&pending[take..]);
            pending = next;
        }
        Ok(())
    }

    fn sync(&mut self, files: &[Arc<IoFile>]) -> io::Result<()> {
        for chunk in files.chunks(RING_ENTRIES as usize) {
            let mut sqes: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    opcode::Fsync::new(types::Fd(f.file.as_raw_fd()))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(i as u64)
                })
                .collect();
            for r in self.run(&mut sqes)? {
                check(r)?;
            }
        }
        Ok(())
    }

    fn allocate(&mut self, file: &IoFile, len: u64) -> io::Result<()> {
        fallocate(&file.file, len)
    }

    fn read_at(&mut self, file: &IoFile, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // Only the tiny state file is read this way, once at open: a syscall is fine.
        pread_exact(&file.file, offset, buf)
    }

    /// The syncer issues only fdatasyncs and one small state write per round, where a ring
    /// gains nothing; a second ring could also fail to set up (memlock limits) where the
    /// first one did not.
    fn fork(&self) -> io::Result<Box<dyn IoEngine>> {
        Ok(Box::new(super::psync::Psync))
    }
}
