//! Memory maps: read-only views of segment files and the shared, atomically accessed index.
//!
//! Rules (after bb-storage's memory-mapped block device): only preallocated files are mapped,
//! mapped files are never shrunk, and bytes are written with pwrite/io_uring, never through a
//! read-only map. The index, written through its map, is allocated in full first
//! (`sys::allocate_fully`), so a full disk cannot turn a store into SIGBUS; a media error on a
//! mapped page still raises SIGBUS (FORMAT.md, "Mapped files, full disks and SIGBUS").

use memmap2::{Mmap, MmapMut, MmapOptions};
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// Maps `len` bytes of `file` read-only.
pub fn map_readonly(file: &File, len: usize) -> io::Result<Mmap> {
    if file.metadata()?.len() < len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file shorter than the map",
        ));
    }
    // SAFETY: the file is at least `len` bytes long and the engine never truncates a mapped
    // file; other processes are not expected to modify kiln's data directory. Bytes read
    // through the map are checksummed before they are served.
    unsafe { MmapOptions::new().len(len).map(file) }
}

/// Drops this process's page-table entries for `map`, a read-only map of a segment file. The
/// pages stay in the page cache, no longer mapped by kiln, so under memory pressure the kernel
/// reclaims them like any clean cache page instead of unmapping them first. For a segment whose
/// every record header was just read through the map (copy-forward's pass) and for a file
/// about to be reused: without it, what those passes faulted in stays mapped for the life of
/// the segment, and a ring several times the box's memory keeps as much of it mapped as the
/// kernel allows.
pub fn release_pages(map: &Mmap) -> io::Result<()> {
    // SAFETY: `map` is a shared, read-only mapping of a file (see `map_readonly`): it has no
    // private or dirty pages, so MADV_DONTNEED only removes page-table entries, and any later
    // access, also one racing with this call on another thread through a `&[u8]` of the map,
    // faults the page back in from the page cache with the same file bytes. No reference into
    // the map is invalidated (the range stays mapped). On error some entries may have been
    // removed and others not, which is equally harmless.
    unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) }
}

/// Whether bytes `start..end` of `map` (clamped to it) are all in memory, so that reading
/// them through the map waits on no disk: `mincore`, which for a file mapping tells whether
/// each page is in the page cache. Says `false` when the kernel cannot tell (an error), which
/// costs the caller only a read on a blocking thread it did not need. `sys::resident` uses it
/// where `cachestat` is missing (about three times as dear: it takes the map's lock and walks
/// its page tables).
pub fn mincore_resident(map: &Mmap, start: u64, end: u64) -> bool {
    let page = rustix::param::page_size();
    let end = end.min(map.len() as u64) as usize;
    let Ok(start) = usize::try_from(start) else {
        return true;
    };
    if start >= end {
        return true;
    }
    // mincore takes page-aligned addresses. Maps made here start at offset 0 of their file,
    // so at a page; any other cannot be asked about.
    if !(map.as_ptr() as usize).is_multiple_of(page) {
        return false;
    }
    // One byte per page; 1 MiB and a page on each side of it in one call.
    let mut vec = [0u8; 272];
    let mut at = start / page * page;
    while at < end {
        let len = (end - at).min(vec.len() * page);
        let pages = len.div_ceil(page);
        // SAFETY: `map` is a live mapping, page-aligned at its start (checked above), of at
        // least `end` bytes; `at` is a multiple of the page size below `end`, so `at..at + len` lies
        // within it and the pointer stays inside the mapping. The kernel writes one byte per
        // page of the range (`pages` of them, at most `vec.len()`) into `vec`, which lives
        // across the call, and reads or changes nothing through the map. On an error the
        // contents of `vec` are unspecified and are not read.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr().add(at).cast_mut().cast::<libc::c_void>(),
                len,
                vec.as_mut_ptr(),
            )
        };
        if rc != 0 || vec[..pages].iter().any(|b| b & 1 == 0) {
            return false;
        }
        at += len;
    }
    true
}

/// A file mapped and seen as an array of `AtomicU64` (the index): read-write for the engine,
/// read-only for another process peeking at a store it does not own.
pub struct AtomicMap {
    map: Map,
}

enum Map {
    Rw(MmapMut),
    Ro(Mmap),
}

fn check_len(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 || len % 8 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "index file length not a multiple of 8",
        ));
    }
    Ok(len)
}

impl AtomicMap {
    /// Maps the whole of `file` (its length must be a non-zero multiple of 8).
    pub fn new(file: &File) -> io::Result<Self> {
        let len = check_len(file)?;
        // SAFETY: as for `map_readonly`; the map is only accessed through atomics below, so
        // concurrent access from many threads is data-race free.
        let map = unsafe { MmapOptions::new().len(len as usize).map_mut(file)? };
        Ok(Self { map: Map::Rw(map) })
    }

    /// Maps the whole of `file` read-only. Only loads may be made through [`AtomicMap::words`]
    /// (a store would fault): for peeking at an index that another process writes.
    pub fn new_readonly(file: &File) -> io::Result<Self> {
        let len = check_len(file)?;
        // SAFETY: as for `new`; the owner process never shrinks the index file in place (a
        // resized index is a new file renamed over the old one, so this mapping keeps the old
        // inode), and this side only loads through the atomics, which see the owner's stores
        // through the shared page cache.
        let map = unsafe { MmapOptions::new().len(len as usize).map(file)? };
        Ok(Self { map: Map::Ro(map) })
    }

    /// The mapped words. Every access must go through the atomics (only loads on a
    /// read-only map).
    #[allow(clippy::cast_ptr_alignment)] // page-aligned, see SAFETY
    pub fn words(&self) -> &[AtomicU64] {
        let (ptr, len) = match &self.map {
            Map::Rw(m) => (m.as_ptr(), m.len()),
            Map::Ro(m) => (m.as_ptr(), m.len()),
        };
        debug_assert_eq!(ptr as usize % std::mem::align_of::<AtomicU64>(), 0);
        // SAFETY: mmap returns page-aligned memory, so the pointer is aligned for AtomicU64;
        // the length is a multiple of 8 (checked in `new`); the mapping lives as long as
        // `self`; AtomicU64 has the same layout as u64 and any bit pattern is valid; all
        // accesses (ours and other threads') go through atomics, so there is no data race.
        unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU64>(), len / 8) }
    }

    /// The mapped bytes seen as `AtomicU32`s (the touch array, one per index slot). Every
    /// access must go through the atomics.
    pub fn words32(&self) -> &[AtomicU32] {
        let w = self.words();
        // SAFETY: the same memory as `words` (page-aligned, a multiple of 8 bytes, alive as
        // long as `self`); two AtomicU32 occupy exactly the bytes of one AtomicU64, any bit
        // pattern is valid, and every access goes through atomics. A slice is only ever used
        // as u32s or as u64s by one owner (the touch file is never seen as u64 words).
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<AtomicU32>(), w.len() * 2) }
    }
}

/// Hints the CPU to bring the cache line at `p` in (no effect where unsupported). Used to
/// overlap the memory latency of index lookups made in a batch.
#[inline]
pub fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and never changes memory; `p` is a valid reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(p).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
