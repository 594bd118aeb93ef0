//! The pread/pwrite engine: plain positioned syscalls on the I/O thread. Used where io_uring
//! is unavailable (old kernels, seccomp sandboxes) and as the base of fault injection.

use super::{IoEngine, IoFile, WriteOp, fallocate, pread_exact};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// pwrite + fdatasync, one call per operation.
#[derive(Debug, Default)]
pub struct Psync;

impl IoEngine for Psync {
    fn name(&self) -> &'static str {
        "psync"
    }

    fn write_batch(&mut self, ops: &[WriteOp]) -> io::Result<()> {
        for op in ops {
            op.file.file.write_all_at(&op.buf, op.offset)?;
        }
        Ok(())
    }

    fn sync(&mut self, files: &[Arc<IoFile>]) -> io::Result<()> {
        for f in files {
            f.file.sync_data()?;
        }
        Ok(())
    }

    fn allocate(&mut self, file: &IoFile, len: u64) -> io::Result<()> {
        fallocate(&file.file, len)
    }

    fn read_at(&mut self, file: &IoFile, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        pread_exact(&file.file, offset, buf)
    }

    fn fork(&self) -> io::Result<Box<dyn IoEngine>> {
        Ok(Box::new(Self))
    }
}
