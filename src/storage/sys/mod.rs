#![allow(unsafe_code)]
//! The storage engine's only `unsafe`, and its other system calls: I/O engines (io_uring,
//! pread/pwrite, fault injection), memory maps, `fallocate`, the page-cache advice given
//! before reads (`will_need`) and the look at what the page cache holds (`resident`).
//!
//! Everything above this module talks to the disk through the [`IoEngine`] trait, which takes
//! owned buffers (`Bytes`) because io_uring needs the memory to stay put until the kernel is
//! done with it. Both real engines run the same test suite (`tests/storage_*.rs`).

/// Fault injection for crash tests: only with the `testing` feature (never in the binary).
#[cfg(feature = "testing")]
pub mod fault;
pub mod mmap;
pub mod psync;
pub mod uring;

use bytes::Bytes;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open file together with its path (fault injection needs the path to build crash images).
#[derive(Debug)]
pub struct IoFile {
    /// The open file, read-write.
    pub file: File,
    /// Where it lives.
    pub path: PathBuf,
}

impl IoFile {
    /// Opens an existing file for reading only (a store owned by another process).
    pub fn open_readonly(path: &Path) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            file: File::open(path)?,
            path: path.to_path_buf(),
        }))
    }

    /// Opens (creating if needed) a file for reading and writing.
    pub fn open(path: &Path) -> io::Result<Arc<Self>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(Self {
            file,
            path: path.to_path_buf(),
        }))
    }
}

/// One positioned write: `buf` lands at `offset` in `file`.
#[derive(Clone, Debug)]
pub struct WriteOp {
    /// Target file.
    pub file: Arc<IoFile>,
    /// Byte offset in the file.
    pub offset: u64,
    /// The bytes; owned so an asynchronous engine can hold them until completion.
    pub buf: Bytes,
}

/// The disk, as one of the engine's I/O threads sees it.
///
/// Concurrency: an engine is owned by one thread (`&mut self`); the writer thread and the
/// syncer thread each own one (`fork`). Every call blocks until the I/O it started has
/// completed, so a buffer is free again once the call returns.
pub trait IoEngine: Send + 'static {
    /// A short name for logs and metrics ("io_uring", "psync", "fault").
    fn name(&self) -> &'static str;
    /// Performs all writes (one submission where the engine can batch). Either all bytes
    /// are written or an error is returned.
    fn write_batch(&mut self, ops: &[WriteOp]) -> io::Result<()>;
    /// `fdatasync`s every file in `files`, in one submission where possible.
    fn sync(&mut self, files: &[Arc<IoFile>]) -> io::Result<()>;
    /// Reserves `len` bytes of disk for `file` (fallocate; set_len where unsupported).
    fn allocate(&mut self, file: &IoFile, len: u64) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset` (zero-filled past the end of the file).
    fn read_at(&mut self, file: &IoFile, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Renames `from` to `to` (replacing it) and fsyncs the directory holding `to`, making
    /// the rename durable. The fault engine records it, so a crash image taken after a power
    /// loss that came first puts both files back as they were.
    fn rename_durably(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        rename_durably(from, to)
    }
    /// A second engine of the same kind for another thread (the syncer). A fault-injecting
    /// engine's fork shares its bookkeeping, so crash images see both threads' I/O.
    fn fork(&self) -> io::Result<Box<dyn IoEngine>>;
}

/// Starts reading `len` bytes of `file` at `offset` into the page cache (`POSIX_FADV_WILLNEED`),
/// those pages and no more, without waiting. Advice only: an error is ignored, and the bytes
/// are then read by the faults that need them. Before a record is read through a map, so that
/// the fault does not read around itself as far as the device's readahead goes (FORMAT.md
/// "Records served to clients"). Asked in pieces of [`WILL_NEED_PIECE`]: Linux reads at most
/// the device's readahead (or its largest request, if larger) per call and drops the rest.
pub fn will_need(file: &File, offset: u64, len: u64) {
    let end = offset.saturating_add(len);
    let mut at = offset;
    while at < end {
        let n = (end - at).min(WILL_NEED_PIECE);
        let _ = rustix::fs::fadvise(
            file,
            at,
            std::num::NonZeroU64::new(n),
            rustix::fs::Advice::WillNeed,
        );
        at += n;
    }
}

/// Whether bytes `start..end` of the segment `file`, mapped as `map`, are all in the page
/// cache, so that reading them through the map waits on no disk. Reads nothing. `cachestat`
/// (Linux 6.5) counts the file's cached pages in the range, at the cost of a `fadvise`, but it
/// also counts pages the disk is still filling (readahead puts them in the cache first); with
/// `exact`, and where `cachestat` is missing, `mincore` on the map (`mmap::mincore_resident`),
/// which counts only filled pages and costs about three times as much. A hint: `false` when
/// the kernel cannot tell.
pub fn resident(file: &File, map: &memmap2::Mmap, start: u64, end: u64, exact: bool) -> bool {
    let end = end.min(map.len() as u64);
    if start >= end {
        return true;
    }
    if !exact && let Some(all) = cachestat_resident(file, start, end) {
        return all;
    }
    mmap::mincore_resident(map, start, end)
}

/// Whether this process looks at the page cache with `cachestat` (the kernel has it and
/// answered): for tests, which would otherwise compare `mincore` with itself.
#[cfg(feature = "testing")]
pub fn cachestat_in_use(file: &File) -> bool {
    cachestat_resident(file, 0, 1).is_some()
}

/// `cachestat`'s answer for bytes `start..end` (`start < end`) of `file`: whether every page
/// they touch is cached; `None` where the kernel (or this architecture's build) lacks it or
/// refuses it.
fn cachestat_resident(file: &File, start: u64, end: u64) -> Option<bool> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Set once the kernel refused: not asked again.
    static MISSING: AtomicBool = AtomicBool::new(false);
    if !CACHESTAT_BUILT || MISSING.load(Ordering::Relaxed) {
        return None;
    }
    let range = CachestatRange {
        off: start,
        len: end - start,
    };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat(fd, range, stat, flags) reads `range` and writes `stat`, both live
    // for the call and laid out as the kernel's `struct cachestat_range` and `struct
    // cachestat` (repr(C), u64 fields); the fd is valid while `file` is borrowed. It touches
    // no other memory; on an error `stat` may be unwritten, and is then not read.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &raw const range,
            &raw mut stat,
            0u32,
        )
    };
    if rc != 0 {
        // ENOSYS (before 6.5), or EPERM from a seccomp filter, or anything else: no call
        // with these arguments fails for a passing reason, so `mincore` from now on.
        let err = io::Error::last_os_error();
        if !MISSING.swap(true, Ordering::Relaxed) {
            tracing::debug!(error = %err, "cachestat failed; the page cache is looked at with mincore");
        }
        return None;
    }
    let page = rustix::param::page_size() as u64;
    let pages = (end - 1) / page - start / page + 1;
    Some(stat.cache == pages)
}

/// The kernel's `struct cachestat_range`: bytes `off..off + len` of a file.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// The kernel's `struct cachestat` (its fields are `nr_cache` and so on): pages of the range
/// in the page cache, dirty, under writeback, evicted, evicted lately.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    cache: u64,
    dirty: u64,
    writeback: u64,
    evicted: u64,
    recently_evicted: u64,
}

/// `cachestat`'s number: 451 on every architecture whose syscall table is the common one
/// (x86_64, aarch64, riscv64 among them); other builds use `mincore` only.
const SYS_CACHESTAT: libc::c_long = 451;
const CACHESTAT_BUILT: bool = cfg!(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
));

/// Bytes asked per `will_need` call: the default readahead (`read_ahead_kb` 128), the least
/// the kernel takes whole from one call on a device with default settings.
pub const WILL_NEED_PIECE: u64 = 128 << 10;

/// `rename(from, to)`, then an fsync of `to`'s directory.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    let dir = to
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// `fallocate(fd, 0, 0, len)`, falling back to `set_len` where the file system refuses. For
/// segments, which are read through their (read-only) mapping and by `pread`: a hole reads as
/// zeros, so a sparse segment cannot raise SIGBUS; a full disk shows up as ENOSPC on the
/// `pwrite`.
pub fn fallocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate only reads its integer arguments; the fd is valid for the call because
    // `file` is borrowed for its duration.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS) => {
            if file.metadata()?.len() < len {
                file.set_len(len)?;
            }
            Ok(())
        }
        _ => Err(err),
    }
}

/// Gives `file` at least `len` bytes with every block of `0..len` allocated on disk, for files
/// that are written through a shared mapping (the index): a store into a hole of a mapped file
/// needs a block at fault time, and a full file system answers that with SIGBUS. Allocating
/// first turns "disk full" into an ordinary error here. Uses `fallocate` (existing data is kept;
/// already allocated ranges cost nothing); where the file system does not support it, writes
/// zeros into every hole (found with `SEEK_HOLE`/`SEEK_DATA`), never over data.
pub fn allocate_fully(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: as in `fallocate`.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) {
        return Err(err);
    }
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    fill_holes(file, len)
}

/// Writes zeros into every hole of `0..len` (the fallback of [`allocate_fully`]).
fn fill_holes(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let seek = |off: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek only reads its integer arguments; the fd is valid while `file` is
        // borrowed. It moves the file offset, which kiln never uses (all I/O is positioned).
        let r = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = io::Error::last_os_error();
        // ENXIO: no hole/data at or after `off`.
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    };
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let Some(hole) = seek(off, libc::SEEK_HOLE)? else {
            break;
        };
        if hole >= len {
            break;
        }
        let data = seek(hole, libc::SEEK_DATA)?.unwrap_or(len).min(len);
        let mut at = hole;
        while at < data {
            let n = (data - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        off = data;
    }
    Ok(())
}

/// Shared pread loop: zero-fills past end of file.
pub(crate) fn pread_exact(file: &File, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                buf.fill(0);
                return Ok(());
            }
            Ok(n) => {
                offset += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Which engine to build; see `EngineConfig::io`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// io_uring when the kernel allows it, else pread/pwrite (logged once).
    #[default]
    Auto,
    /// io_uring or fail to open.
    IoUring,
    /// pread/pwrite on the I/O thread.
    Psync,
}

/// Builds the engine `kind` asks for. `Auto` falls back to psync when io_uring setup fails,
/// and logs that once per process.
pub fn build(kind: IoBackend) -> io::Result<Box<dyn IoEngine>> {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    match kind {
        IoBackend::Psync => Ok(Box::new(psync::Psync)),
        IoBackend::IoUring => Ok(Box::new(uring::Uring::new()?)),
        IoBackend::Auto => match uring::Uring::new() {
            Ok(u) => Ok(Box::new(u)),
            Err(e) => {
                LOGGED.call_once(|| {
                    tracing::warn!(error = %e, "io_uring unavailable; storage uses pread/pwrite");
                });
                Ok(Box::new(psync::Psync))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    /// The fallback of `allocate_fully` (file systems without fallocate): every hole gets
    /// blocks, existing data is kept.
    #[test]
    fn fill_holes_allocates_every_hole_and_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let len = 4u64 << 20;
        f.set_len(len).unwrap();
        f.write_all_at(b"keep me", 1 << 20).unwrap();
        f.sync_all().unwrap();
        assert!(f.metadata().unwrap().blocks() * 512 < len, "starts sparse");
        fill_holes(&f, len).unwrap();
        f.sync_all().unwrap();
        assert!(f.metadata().unwrap().blocks() * 512 >= len, "no hole left");
        let mut b = [0u8; 7];
        f.read_exact_at(&mut b, 1 << 20).unwrap();
        assert_eq!(&b, b"keep me");
        allocate_fully(&f, len).unwrap();
        assert_eq!(f.metadata().unwrap().len(), len);
    }
}
