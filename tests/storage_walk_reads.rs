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
use kiln::storage::{Blob, Engine, EngineConfig, Store};
use storage_support::{cas_key, config, data, io, rt};

/// Bytes this process has had read from disk (`read_bytes` of `/proc/self/io`).
///
/// The first call reads this test binary through once, so that all of it is in memory: a page
/// of its code that a busy box had evicted would otherwise be read from disk when first run,
/// by whichever test thread runs it, and counted by the test measuring then.
fn disk_reads() -> u64 {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let mut exe = std::fs::File::open("/proc/self/exe").unwrap();
        std::io::copy(&mut exe, &mut std::io::sink()).unwrap();
    });
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("read_bytes in /proc/self/io")
}

/// Reads the server made on a blocking thread because their bytes were on disk.
const COLD_READS: &str = "kiln_store_cold_reads_total";

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

/// A store for the read tests: in a loop-mounted ext4 with an 8 MiB readahead, six segments
/// of 16 MiB, blobs streamed in parts of 1 MiB; its mount, directory and engine.
fn read_store() -> (Mount, std::path::PathBuf, Engine) {
    let m = Mount::ext4(192 << 20);
    m.set_read_ahead_kb(8192);
    let store = m.store();
    let c = config(&store, SEG, 6, 1 << 20, 16384);
    let e = Engine::open_with_io(c, io(IoBackend::Psync)).unwrap();
    (m, store, e)
}

/// Blobs served to clients, read cold, read their own records: the engine asks for exactly a
/// record's pages before touching the map. Through the map with no advice, each cold read
/// faulted and read around itself as far as the readahead goes (8 MiB here): a cold read of a
/// 4 KiB blob read 8 MiB, and a store larger than memory served random small reads at a few
/// hundred a second (tuning/RESULTS.md). Large blobs (parts and a manifest) are read whole,
/// a batch of neighbours as one range, and nothing around any of them.
#[test]
fn cold_reads_of_blobs_read_their_records_not_the_readahead() {
    let _one = one_at_a_time();
    let (_m, store, e) = read_store();
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

/// `get_cached`, which async callers use so that page faults stay off the runtime's worker
/// threads: it reads a blob whose record is in the page cache, and for one on disk answers
/// `OnDisk` having read nothing through the map (only asked the disk for the record); a large
/// blob (parts and a manifest) is always `OnDisk`, an absent key a miss at once.
#[test]
fn get_cached_reads_cached_records_and_leaves_those_on_disk() {
    use kiln::storage::Cached;
    let _one = one_at_a_time();
    let (_m, store, e) = read_store();
    let rt = rt();
    let put = |n: u64, d| rt.block_on(e.put(cas_key(n), d)).unwrap();
    (0..2000u64).for_each(|n| put(n, data(n, SMALL)));
    (0..4u64).for_each(|n| put(10_000 + n, data(10_000 + n, MEDIUM)));
    put(20_000, data(20_000, LARGE));
    (2000..4000u64).for_each(|n| put(n, data(n, SMALL)));
    drop_segment_pages(&store);
    // One key through `get_cached`, more through `get_many_cached`. (Asked for, a record may
    // be in memory soon after: each cold blob is asked about once.)
    let on_disk = |keys: &[u64]| {
        let keys: Vec<_> = keys.iter().map(|&n| cas_key(n)).collect();
        if let [one] = &keys[..] {
            matches!(e.get_cached(one).unwrap(), Cached::OnDisk)
        } else {
            matches!(e.get_many_cached(&keys).unwrap(), Cached::OnDisk)
        }
    };
    let before = disk_reads();
    assert!(on_disk(&[100]), "a small blob on disk");
    assert!(on_disk(&[300, 500]), "small blobs on disk, batched");
    assert!(on_disk(&[10_001]), "a 200 KiB blob on disk");
    assert!(on_disk(&[10_002, 700]), "a 200 KiB blob on disk, batched");
    assert!(on_disk(&[20_000]), "a large blob");
    let read = disk_reads() - before;
    assert!(
        read < 1 << 20,
        "{read} bytes read: more than the records asked for"
    );
    match e.get_cached(&cas_key(99_999)).unwrap() {
        Cached::Read(None) => {}
        other => panic!("an absent key: {other:?}"),
    }
    // Read once (by `get`), their pages are cached: read at once from then on, alone or in a
    // batch, but not in a batch with a blob still on disk.
    for n in [100, 10_001, 20_000] {
        e.get(&cas_key(n)).unwrap().expect("a stored blob");
    }
    for n in [100u64, 10_001] {
        let want = data(n, if n == 100 { SMALL } else { MEDIUM });
        match e.get_cached(&cas_key(n)).unwrap() {
            Cached::Read(Some(b)) => assert_eq!(b.to_bytes().unwrap(), want, "blob {n}"),
            other => panic!("blob {n} after a read: {other:?}"),
        }
    }
    let keys = [cas_key(100), cas_key(99_999), cas_key(10_001)];
    match e.get_many_cached(&keys).unwrap() {
        Cached::Read(got) => {
            let lens: Vec<_> = got.iter().map(|b| b.as_ref().map(Blob::len)).collect();
            assert_eq!(lens, [Some(SMALL as u64), None, Some(MEDIUM as u64)]);
        }
        Cached::OnDisk => panic!("a batch of cached blobs and an absent key"),
    }
    assert!(on_disk(&[100, 3_100]), "a batch with a blob on disk");
    assert!(on_disk(&[20_000]), "a large blob, even cached");
}

/// A server (with its HTTP cache, whose address comes last) over a 64 MiB store on a
/// loop-mounted ext4, in a runtime with two worker threads like `kiln serve`'s on this box.
fn ext4_server() -> (Mount, tokio::runtime::Runtime, common::TestServer, String) {
    let m = Mount::ext4(192 << 20);
    let data_dir = m.store();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, http) = rt.block_on(common::TestServer::with_http_cache(|c| {
        c.server.data_dir = data_dir;
        c.storage.capacity_bytes = 64 << 20;
        c.storage.max_blob_size_bytes = 16 << 20;
    }));
    (m, rt, server, http)
}

/// The server end to end: blobs whose pages are on disk are read off the async runtime
/// (`kiln_store_cold_reads_total` counts each such read) through ByteStream Read,
/// BatchReadBlobs and the HTTP cache's `/cas/`, and are served right; read again, cached,
/// they are read at once and not counted.
#[test]
fn the_server_reads_blobs_on_disk_off_its_runtime_and_serves_them_right() {
    use kiln::proto::reapi::BatchReadBlobsRequest;
    let _one = one_at_a_time();
    let (m, rt, server, http) = ext4_server();
    let data_dir = m.store();
    rt.block_on(async {
        let blobs: Vec<Vec<u8>> = (0..400u64).map(|n| common::bytes(4096, n)).collect();
        let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        server.upload(&refs).await;
        drop_segment_pages(&kiln::cas::local::store_dir(&data_dir));
        let cold_reads = || server.counter(COLD_READS);
        let hits = || server.counter(r#"kiln_store_gets_total{space="cas",result="hit"}"#);
        let before = cold_reads().await;
        let hits_at_start = hits().await;
        let d = |n: usize| common::digest(&blobs[n]);
        let mut bs = server.bytestream().await;
        let got = common::read_from(&mut bs, common::read_name(&d(10)), 0).await;
        assert_eq!(got, blobs[10], "ByteStream Read of a blob on disk");
        let batch = server
            .cas()
            .await
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: vec![d(200).to_proto(), d(300).to_proto()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let got: Vec<&[u8]> = batch.responses.iter().map(|r| &r.data[..]).collect();
        assert_eq!(got, [&blobs[200][..], &blobs[300][..]], "BatchReadBlobs");
        let path = format!("/cas/{}", d(390).hash_hex());
        let r = common::http::get(&http, &path).await;
        assert_eq!(r.body, blobs[390], "GET {path}");
        assert_eq!(cold_reads().await - before, 3, "three reads from disk");
        // Cached now: read at once, on the runtime, and counted as a hit.
        let hits_before = hits().await;
        assert_eq!(
            hits_before - hits_at_start,
            4,
            "the cold reads counted once each"
        );
        let again = common::read_from(&mut bs, common::read_name(&d(10)), 0).await;
        assert_eq!(again, blobs[10]);
        assert_eq!(
            cold_reads().await - before,
            3,
            "a cached blob counted as cold"
        );
        assert_eq!(
            hits().await - hits_before,
            1,
            "a cached read not counted as a hit"
        );
        server.stop().await;
    });
}

/// The action cache end to end, on a store whose pages are on disk: GetActionResult reads the
/// entry, the output directory's tree and the inlined stdout off the runtime (three cold
/// reads), the HTTP cache's `/ac/` reads the entry and the tree so (two more), GetTree finds
/// its root on disk (one more) and walks the tree on a blocking thread from there, and all of
/// them answer right.
#[test]
fn action_results_and_trees_on_disk_are_read_off_the_runtime_and_served_right() {
    use kiln::proto::reapi::{
        ActionResult, Directory, DirectoryNode, FileNode, GetActionResultRequest, GetTreeRequest,
        OutputDirectory, Tree, UpdateActionResultRequest,
    };
    use prost::Message;
    let _one = one_at_a_time();
    let (m, rt, server, http) = ext4_server();
    let data_dir = m.store();
    rt.block_on(async {
        // Each blob read below is stored between 100 others (400 KiB), so reading one from
        // disk does not bring the next into memory by readahead.
        let mut seed = 0;
        let mut spaced = async |blob: &[u8]| {
            let filler: Vec<Vec<u8>> = (0..100)
                .map(|_| {
                    seed += 1;
                    common::bytes(4096, seed)
                })
                .collect();
            let mut all: Vec<&[u8]> = filler.iter().map(Vec::as_slice).collect();
            all.push(blob);
            server.upload(&all).await;
            common::digest(blob)
        };
        let mut stored = Vec::new();
        for n in 0..2u64 {
            let stdout = common::bytes(3000, 1000 + n);
            let out = spaced(&stdout).await;
            let tree = Tree {
                root: Some(Directory {
                    files: vec![FileNode {
                        name: format!("f{n}"),
                        digest: Some(out.to_proto()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                children: vec![],
            }
            .encode_to_vec();
            let tree = spaced(&tree).await;
            let action = common::digest(format!("action {n}").as_bytes());
            let result = ActionResult {
                stdout_digest: Some(out.to_proto()),
                output_directories: vec![OutputDirectory {
                    path: "d".into(),
                    tree_digest: Some(tree.to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            };
            spaced(b"").await;
            server
                .ac()
                .await
                .update_action_result(UpdateActionResultRequest {
                    action_digest: Some(action.to_proto()),
                    action_result: Some(result.clone()),
                    ..Default::default()
                })
                .await
                .unwrap();
            stored.push((action, stdout, result));
        }
        // A tree of directories for GetTree: a root and two leaves, each stored apart.
        let leaves: Vec<Directory> = (0..2)
            .map(|n| Directory {
                files: vec![FileNode {
                    name: format!("leaf{n}"),
                    digest: Some(common::digest(b"").to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let mut nodes = Vec::new();
        for (n, leaf) in leaves.iter().enumerate() {
            let d = spaced(&leaf.encode_to_vec()).await;
            nodes.push(DirectoryNode {
                name: format!("l{n}"),
                digest: Some(d.to_proto()),
            });
        }
        let root_dir = Directory {
            directories: nodes,
            ..Default::default()
        };
        let root = spaced(&root_dir.encode_to_vec()).await;
        spaced(b"").await;
        drop_segment_pages(&kiln::cas::local::store_dir(&data_dir));
        let cold_reads = || server.counter(COLD_READS);
        let before = cold_reads().await;

        let (action, stdout, result) = &stored[0];
        let got = server
            .ac()
            .await
            .get_action_result(GetActionResultRequest {
                action_digest: Some(action.to_proto()),
                inline_stdout: true,
                ..Default::default()
            })
            .await
            .expect("a complete result on disk")
            .into_inner();
        assert_eq!(got.stdout_raw, stdout[..], "the inlined stdout");
        assert_eq!(got.output_directories, result.output_directories);
        assert_eq!(
            cold_reads().await - before,
            3,
            "GetActionResult: the entry, the tree and stdout from disk"
        );

        let (action, _, result) = &stored[1];
        let r = common::http::get(&http, &format!("/ac/{}", action.hash_hex())).await;
        assert_eq!(r.status, 200, "GET /ac/");
        assert_eq!(ActionResult::decode(&r.body[..]).unwrap(), *result);
        assert_eq!(
            cold_reads().await - before,
            5,
            "GET /ac/: the entry and the tree from disk"
        );

        let mut pages = server
            .cas()
            .await
            .get_tree(GetTreeRequest {
                root_digest: Some(root.to_proto()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut dirs = Vec::new();
        while let Some(page) = pages.message().await.unwrap() {
            dirs.extend(page.directories);
        }
        assert_eq!(
            dirs,
            [root_dir, leaves[0].clone(), leaves[1].clone()],
            "GetTree"
        );
        assert_eq!(
            cold_reads().await - before,
            6,
            "GetTree: the root found on disk by the page's start on the runtime (one cold \
             read); the page goes on on a blocking thread, its reads not counted"
        );
        server.stop().await;
    });
}

/// The look at the page cache behind `get_cached`: `cachestat` (Linux 6.5) and the `mincore`
/// it falls back to agree, page by page, on a file whose pages were dropped and then read in
/// part through a map; neither reads anything.
#[test]
fn cachestat_and_mincore_agree_on_what_is_cached() {
    use kiln::storage::sys::{mmap, resident};
    let _one = one_at_a_time();
    let m = Mount::ext4(64 << 20);
    // No readahead: a fault reads its own page only.
    m.set_read_ahead_kb(0);
    std::fs::create_dir_all(m.store()).unwrap();
    let path = m.store().join("pages");
    std::fs::write(&path, vec![7u8; 8 * 4096]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.sync_all().unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    let map = mmap::map_readonly(&file, 8 * 4096).unwrap();
    assert!(
        kiln::storage::sys::cachestat_in_use(&file),
        "cachestat (Linux 6.5 and later) is missing or refused: mincore would be compared with itself"
    );
    let both = |start: u64, end: u64| {
        let a = resident(&file, &map, start, end, false);
        let b = mmap::mincore_resident(&map, start, end);
        assert_eq!(a, b, "cachestat and mincore on {start}..{end}");
        assert_eq!(
            resident(&file, &map, start, end, true),
            b,
            "exact on {start}..{end}"
        );
        a
    };
    let before = disk_reads();
    assert!(!both(0, 100), "a dropped page");
    assert!(!both(4096, 8 * 4096), "dropped pages");
    assert_eq!(disk_reads(), before, "looking read from disk");
    // Pages 2 and 3 read through the map.
    assert_eq!(map[2 * 4096 + 5] + map[3 * 4096 + 4000], 14);
    assert!(both(2 * 4096, 4 * 4096), "pages read");
    assert!(both(2 * 4096 + 100, 3 * 4096 + 10), "within pages read");
    assert!(!both(2 * 4096, 4 * 4096 + 1), "a page past them");
    assert!(!both(4096 + 4095, 3 * 4096), "a page before them");
    assert!(both(5 * 4096, 5 * 4096), "an empty range");
    assert!(both(9 * 4096, 10 * 4096), "past the end (nothing to read)");
}
