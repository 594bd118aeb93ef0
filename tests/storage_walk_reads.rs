//! Copy-forward's walk of a segment that is no longer in the page cache, and the index
//! rebuild's replay of the whole ring, read record headers, not the segments. Reading them
//! through the segment's map made every header a page fault, and a fault on a shared file map
//! reads around itself as far as the device's readahead goes: with 1 MiB records and an 8 MiB
//! readahead (the test VM's disk) the walk read the whole segment, so a store larger than
//! memory read back as much as it wrote while the ring wrapped, and a rebuild read the whole
//! ring. Needs root and e2fsprogs (a loop-mounted ext4 whose readahead the test sets); without
//! them it fails loudly, never skips.
//!
//! Its tests count the bytes this process has read from disk: they run one at a time, alone in
//! their binary.

#[path = "common/storage.rs"]
mod storage_support;

mod common;

use common::mount::{Mount, one_at_a_time};
use kiln::storage::sys::IoBackend;
use kiln::storage::{Engine, EngineConfig, Store};
use storage_support::{cas_key, config, data, io, rt};

/// Bytes this process has had read from disk (`read_bytes` of `/proc/self/io`).
fn disk_reads() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("read_bytes in /proc/self/io")
}

/// Drops the clean cached pages of every segment file (they were synced when written).
fn drop_segment_pages(store: &std::path::Path) {
    for f in std::fs::read_dir(store.join("segments")).unwrap().flatten() {
        let file = std::fs::File::open(f.path()).unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }
}

const SEG: u64 = 16 << 20;
const BLOB: usize = (1 << 20) - 4096;

/// A loop-mounted ext4 whose readahead is 8 MiB (this VM's disk), and the configuration of a
/// store in it: six segments of 16 MiB, blobs streamed in parts of 1 MiB (records of about
/// 1 MiB, 15 a segment).
fn cold_store() -> (Mount, std::path::PathBuf, EngineConfig) {
    let m = Mount::ext4(192 << 20);
    m.set_read_ahead_kb(8192);
    let store = m.store();
    let c = config(&store, SEG, 6, 1 << 20, 4096);
    (m, store, c)
}

#[test]
fn walking_a_cold_segment_reads_its_headers_not_its_payloads() {
    let _one = one_at_a_time();
    // The ring is full after about 90 blobs.
    let (_m, store, c) = cold_store();
    assert!(c.copy_forward, "copy-forward is on by default");
    let e = Engine::open_with_io(c, io(IoBackend::Psync)).unwrap();
    let rt = rt();
    let mut n = 0u64;
    let mut put = |count: u64| {
        for _ in 0..count {
            rt.block_on(e.put(cas_key(n), data(n, BLOB))).unwrap();
            n += 1;
        }
    };
    put(90);
    let before = e.stats().evictions;
    drop_segment_pages(&store);
    // Blob 20 (the second segment, evicted below) is used again: the walk must find it for
    // copy-forward to keep it. Its pages come back here, before the count starts.
    let touched = cas_key(20);
    assert!(e.get(&touched).unwrap().is_some());
    let read0 = disk_reads();
    // Three segments more: each roll walks the segment the next one evicts.
    put(45);
    let read = disk_reads() - read0;
    let s = e.stats();
    let evicted = s.evictions - before;
    assert!(evicted >= 2, "the ring wrapped: {evicted} evictions");
    eprintln!("{read} bytes read from disk, {evicted} segments evicted");
    // The headers of two or three segments of 15 records, a 4 KiB page each, and the pages at
    // the ends of the records written (partial pages of a reused file): well under a megabyte.
    // Through the map: about a segment per walk.
    assert!(
        read < 4 << 20,
        "{read} bytes read from disk while writing {} MiB ({evicted} segments evicted)",
        (45 * BLOB) >> 20
    );
    // The walk found the records: the blob used again was copied forward and outlived its
    // segment, whose other blobs are gone.
    assert!(s.copy_forwards >= 1, "{s:?}");
    assert!(e.get(&cas_key(19)).unwrap().is_none(), "segment 2 evicted");
    let got = e.get(&touched).unwrap().unwrap().to_bytes().unwrap();
    assert_eq!(got, data(20, BLOB));
}

/// An index rebuilt from the segment records (the index file lost) reads each record's header,
/// and a manifest's payload, not the blobs: through the map the replay read the whole ring.
#[test]
fn rebuilding_the_index_reads_headers_not_payloads() {
    let _one = one_at_a_time();
    // Single-record blobs, and blobs of 3 parts of 1 MiB with a manifest.
    let (_m, store, c) = cold_store();
    let rt = rt();
    let big = |n: u64| data(1000 + n, 3 << 20);
    {
        let e = Engine::open_with_io(c.clone(), io(IoBackend::Psync)).unwrap();
        for n in 0..40u64 {
            rt.block_on(e.put(cas_key(n), data(n, BLOB))).unwrap();
        }
        for n in 0..8u64 {
            rt.block_on(e.put(cas_key(1000 + n), big(n))).unwrap();
        }
        assert_eq!(e.stats().evictions, 0);
    }
    std::fs::remove_file(store.join("index")).unwrap();
    let _ = std::fs::remove_file(store.join("index.touch"));
    drop_segment_pages(&store);
    let read0 = disk_reads();
    let e = Engine::open_with_io(c, io(IoBackend::Psync)).unwrap();
    let read = disk_reads() - read0;
    let s = e.stats();
    assert_eq!(s.index_rebuilds, 1, "{s:?}");
    eprintln!("{read} bytes read from disk by the rebuild");
    // 40 + 24 part records and 8 manifests: a page or two each. Through the map: the ~64 MiB
    // written.
    assert!(read < 4 << 20, "the rebuild read {read} bytes from disk");
    // Every blob was found again.
    for n in 0..40u64 {
        let got = e
            .get(&cas_key(n))
            .unwrap()
            .expect("a blob after the rebuild");
        assert_eq!(got.to_bytes().unwrap(), data(n, BLOB));
    }
    for n in 0..8u64 {
        let got = e
            .get(&cas_key(1000 + n))
            .unwrap()
            .expect("a large blob after the rebuild");
        assert_eq!(got.to_bytes().unwrap(), big(n));
    }
}
