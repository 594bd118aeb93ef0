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

const SMALL: usize = 4096;
const MEDIUM: usize = 200 << 10;
const LARGE: usize = 3 << 20;

/// Blobs served to clients, read cold, read their own records: the engine asks for exactly a
/// record's pages before touching the map. Through the map with no advice, each cold read
/// faulted and read around itself as far as the readahead goes (8 MiB here): a cold read of a
/// 4 KiB blob read 8 MiB, and a store larger than memory served random small reads at a few
/// hundred a second (tuning/RESULTS.md). Large blobs (parts and a manifest) are read whole,
/// a batch of neighbours as one range, and nothing around any of them.
#[test]
fn cold_reads_of_blobs_read_their_records_not_the_readahead() {
    let _one = one_at_a_time();
    let m = Mount::ext4(192 << 20);
    m.set_read_ahead_kb(8192);
    let store = m.store();
    let c = config(&store, SEG, 6, 1 << 20, 16384);
    let e = Engine::open_with_io(c, io(IoBackend::Psync)).unwrap();
    let rt = rt();
    // 4,000 blobs of 4 KiB (a segment), two of 3 parts of 1 MiB and a manifest, 24 of
    // 200 KiB, then 4,000 more small ones: every blob read below has written data around it.
    let medium = |n: u64| data(10_000 + n, MEDIUM);
    let large = |n: u64| data(20_000 + n, LARGE);
    let put = |n: u64, d| rt.block_on(e.put(cas_key(n), d)).unwrap();
    (0..4000u64).for_each(|n| put(n, data(n, SMALL)));
    (0..2u64).for_each(|n| put(20_000 + n, large(n)));
    (0..24u64).for_each(|n| put(10_000 + n, medium(n)));
    (4000..8000u64).for_each(|n| put(n, data(n, SMALL)));
    drop_segment_pages(&store);
    let served = |n: u64, want: bytes::Bytes| {
        let got = e.get(&cas_key(n)).unwrap().expect("a blob");
        assert_eq!(got.to_bytes().unwrap(), want, "blob {n}");
    };
    let reads = |what: &str, f: &dyn Fn()| {
        let before = disk_reads();
        f();
        let read = disk_reads() - before;
        eprintln!("{read} bytes read from disk by {what}");
        read
    };
    // The parts and manifests, 6 MiB and two pages: asking for parts ahead reads no more
    // than the blob. Unadvised, the first fault's window alone is 8 MiB.
    let read = reads("2 cold reads of 3 MiB blobs", &|| {
        (0..2u64).for_each(|n| served(20_000 + n, large(n)));
    });
    assert!(read < 7 << 20, "{read} bytes read by 2 cold reads of 3 MiB");
    // 16 neighbours in one `get_many` (one range): their 65 KiB and the pages at its ends.
    let read = reads("a get_many of 16 neighbours", &|| {
        let keys: Vec<_> = (6000..6016u64).map(cas_key).collect();
        for (n, b) in (6000u64..).zip(e.get_many(&keys).unwrap()) {
            let b = b.expect("a small blob").to_bytes().unwrap();
            assert_eq!(b, data(n, SMALL), "blob {n}");
        }
    });
    assert!(
        read < 256 << 10,
        "{read} bytes read by a batch of 16 neighbours"
    );
    // 40 small blobs 200 apart (800 KiB apart on disk), the first 20 in one `get_many` as
    // BatchReadBlobs reads them, and 6 medium ones, 4 apart: two pages per small record, the
    // pages of each medium one (1.2 MiB in all), about 2 MiB. Unadvised: the ~37 MiB written,
    // as the reads' windows cover all of it.
    let read = reads("40 cold small reads and 6 medium ones", &|| {
        let batch: Vec<u64> = (0..4000u64).step_by(200).collect();
        let keys: Vec<_> = batch.iter().map(|&n| cas_key(n)).collect();
        let got = e.get_many(&keys).unwrap();
        assert_eq!(got.len(), batch.len());
        for (&n, b) in batch.iter().zip(got) {
            let b = b.expect("a small blob").to_bytes().unwrap();
            assert_eq!(b, data(n, SMALL), "blob {n}");
        }
        (4000..8000u64)
            .step_by(200)
            .for_each(|n| served(n, data(n, SMALL)));
        (0..24u64)
            .step_by(4)
            .for_each(|n| served(10_000 + n, medium(n)));
    });
    assert!(
        read < 4 << 20,
        "{read} bytes read from disk by 40 cold 4 KiB reads and 6 of 200 KiB"
    );
}
