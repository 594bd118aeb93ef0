//! A store on a file system that fills up: a small tmpfs and a loop-mounted ext4 (the ext4
//! case is the one that used to die with SIGBUS on the sparse mapped index). Needs root (CI
//! runs as root) and `mkfs.ext4`; without them these tests fail loudly, they never skip.
//!
//! Each test runs on both I/O engines: no SIGBUS or abort, writes make room by evicting the
//! store's own oldest segments, `Full` only when nothing can be evicted, reads go on, and
//! writes succeed again after a restart.

#[path = "common/storage.rs"]
mod storage_support;

mod common;

use bytes::Bytes;
use common::mount::{Mount, one_at_a_time};
use kiln::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    batch_update_blobs_request,
};
use kiln::storage::sys::IoBackend;
use kiln::storage::{Engine, EngineConfig, StorageError, Store};
use std::io::Write;
use std::path::{Path, PathBuf};
use storage_support::{BACKENDS, cas_key, config, data, io, rt};

/// Sizes of the file systems the engine tests fill (small: every byte written costs test time).
const TMPFS: u64 = 4 << 20;
const EXT4: u64 = 12 << 20;

fn both_fs(mut f: impl FnMut(&str, &Mount, IoBackend)) {
    for b in BACKENDS {
        f("tmpfs", &Mount::tmpfs(TMPFS), b);
        f("ext4", &Mount::ext4(EXT4), b);
    }
}

/// A configured capacity far larger than the file system: the disk fills before the ring does.
/// Periodic durability keeps the tests fast (a full disk shows up on allocation, not on
/// fdatasync; the server test below runs with the default, fdatasync).
fn cfg(dir: &Path) -> EngineConfig {
    let mut c = config(dir, 256 << 10, 256, 16 << 10, 4096);
    c.max_blob_size = 1 << 20;
    c.durability = kiln::storage::Durability::Periodic {
        interval: std::time::Duration::from_millis(20),
    };
    c
}

const BLOB: usize = 12 << 10;
const BATCH: u64 = 16;

/// Writes batches `from..to` (BATCH blobs of BLOB bytes each).
fn write_batches(rt: &tokio::runtime::Runtime, e: &Engine, from: u64, to: u64) {
    for batch in from..to {
        let items = (batch * BATCH..(batch + 1) * BATCH)
            .map(|n| (cas_key(n), data(n, BLOB)))
            .collect();
        rt.block_on(e.put_many(items))
            .unwrap_or_else(|err| panic!("batch {batch}: {err} ({:?})", e.stats()));
    }
}

fn assert_batch_readable(e: &Engine, batch: u64, what: &str) {
    for n in batch * BATCH..(batch + 1) * BATCH {
        assert_eq!(
            e.get(&cas_key(n)).unwrap().map(|b| b.to_bytes().unwrap()),
            Some(data(n, BLOB)),
            "{what}: blob {n}"
        );
    }
}

/// Fills the file system with a file of zeros until it refuses more.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Small writes may still fit a last partial block.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    let _ = f.sync_all();
    path
}

/// Two file systems' worth of writes into a store whose capacity exceeds the disk: every
/// write succeeds because the store evicts its own oldest segments when the disk is full; the
/// newest blobs read back; old ones are misses, never wrong bytes. After a restart on the full
/// disk, writes still succeed.
#[test]
fn full_filesystem_evicts_own_oldest_segments_and_keeps_writing() {
    let _one = one_at_a_time();
    let rt = rt();
    both_fs(|fs, m, b| {
        let what = format!("{fs} {b:?}");
        let batch_bytes = BATCH * BLOB as u64;
        let fs_size = if fs == "tmpfs" { TMPFS } else { EXT4 };
        let batches = 2 * fs_size / batch_bytes;
        {
            let e = Engine::open_with_io(cfg(&m.store()), io(b)).unwrap();
            write_batches(&rt, &e, 0, batches);
            let st = e.stats();
            assert!(st.enospc_evictions > 0, "{what}: {st:?}");
            assert_eq!(st.full_errors, 0, "{what}: {st:?}");
            for batch in batches - 4..batches {
                assert_batch_readable(&e, batch, &what);
            }
            for n in 0..batches * BATCH {
                if let Some(got) = e.get(&cas_key(n)).unwrap() {
                    assert_eq!(got.to_bytes().unwrap(), data(n, BLOB), "{what}: blob {n}");
                }
            }
            assert!(
                !e.contains(&cas_key(0)).unwrap(),
                "{what}: the oldest blob must have been evicted"
            );
        }
        // Restart with the disk full of the store's own segments.
        let e = Engine::open_with_io(cfg(&m.store()), io(b)).unwrap();
        assert_batch_readable(&e, batches - 1, &what);
        write_batches(&rt, &e, batches, batches + 20);
        assert!(e.stats().enospc_evictions > 0, "{what}: {:?}", e.stats());
        assert_batch_readable(&e, batches + 19, &what);
    });
}

/// In a ring shrunk by a full disk, a blob that keeps being read is copied forward before its
/// segment is evicted (the copy-forward window follows the ring's current size, not the
/// configured one).
#[test]
fn hot_blob_survives_in_a_ring_shrunk_by_a_full_disk() {
    let _one = one_at_a_time();
    let rt = rt();
    both_fs(|fs, m, b| {
        let what = format!("{fs} {b:?}");
        let fs_size = if fs == "tmpfs" { TMPFS } else { EXT4 };
        // A quarter more than the disk holds: the ring has shrunk and cycles; then as much
        // again, so every segment live at the start is evicted by the end.
        let batches = fs_size * 5 / 4 / (BATCH * BLOB as u64);
        let e = Engine::open_with_io(cfg(&m.store()), io(b)).unwrap();
        write_batches(&rt, &e, 0, batches);
        assert!(e.stats().enospc_evictions > 0, "{what}");
        // The oldest blob still live: the next to be evicted.
        let hot = (0..batches * BATCH)
            .find(|&n| e.contains(&cas_key(n)).unwrap())
            .unwrap();
        for batch in batches..2 * batches {
            assert_eq!(
                e.get(&cas_key(hot)).unwrap().map(|b| b.to_bytes().unwrap()),
                Some(data(hot, BLOB)),
                "{what}: hot blob {hot} lost before batch {batch}: {:?}",
                e.stats()
            );
            write_batches(&rt, &e, batch, batch + 1);
        }
        assert!(e.stats().copy_forwards > 0, "{what}: {:?}", e.stats());
        assert!(
            !e.contains(&cas_key(hot + 1)).unwrap(),
            "{what}: cold neighbour evicted"
        );
    });
}

/// When evicting a segment frees nothing (another process holds its file open), the write
/// fails with `Full` after one eviction instead of the store evicting its whole ring; once the
/// file is let go, writes succeed again.
#[test]
fn eviction_that_frees_nothing_stops_at_one_segment() {
    let _one = one_at_a_time();
    let rt = rt();
    both_fs(|fs, m, b| {
        let what = format!("{fs} {b:?}");
        let fs_size = if fs == "tmpfs" { TMPFS } else { EXT4 };
        let batches = fs_size * 5 / 4 / (BATCH * BLOB as u64);
        let e = Engine::open_with_io(cfg(&m.store()), io(b)).unwrap();
        write_batches(&rt, &e, 0, batches);
        let before = e.stats();
        assert!(before.enospc_evictions > 0, "{what}");
        // Hold every segment file open: an evicted file keeps its blocks.
        let held: Vec<std::fs::File> = std::fs::read_dir(m.store().join("segments"))
            .unwrap()
            .map(|f| std::fs::File::open(f.unwrap().path()).unwrap())
            .collect();
        let mut full_at = None;
        for batch in batches..batches + 8 {
            let items = (batch * BATCH..(batch + 1) * BATCH)
                .map(|n| (cas_key(n), data(n, BLOB)))
                .collect();
            match rt.block_on(e.put_many(items)) {
                Ok(()) => {}
                Err(StorageError::Full(_)) => {
                    full_at = Some(batch);
                    break;
                }
                Err(other) => panic!("{what}: {other}"),
            }
        }
        assert!(full_at.is_some(), "{what}: never Full: {:?}", e.stats());
        let after = e.stats();
        assert_eq!(
            after.enospc_evictions - before.enospc_evictions,
            1,
            "{what}: one eviction, not the ring: {after:?}"
        );
        assert!(after.segments + 2 >= before.segments, "{what}: {after:?}");
        drop(held);
        let next = full_at.unwrap() + 100;
        write_batches(&rt, &e, next, next + 2);
        assert_batch_readable(&e, next + 1, &what);
    });
}

/// When the disk is full of someone else's data and the store has nothing it may evict (only
/// its head segment), writes fail with `Full`, reads go on, and once space is freed (or after
/// a restart) writes succeed again.
#[test]
fn full_filesystem_with_nothing_to_evict_answers_full_and_recovers() {
    let _one = one_at_a_time();
    let rt = rt();
    both_fs(|fs, m, b| {
        let what = format!("{fs} {b:?}");
        let e = Engine::open_with_io(cfg(&m.store()), io(b)).unwrap();
        write_batches(&rt, &e, 0, 1);
        let filler = fill(&m.dir);
        // The head segment still has room (it is preallocated); past it, nothing fits.
        let mut full = None;
        for n in 1000..1100u64 {
            match rt.block_on(e.put(cas_key(n), data(n, BLOB))) {
                Ok(()) => {}
                Err(StorageError::Full(msg)) => {
                    full = Some(n);
                    assert!(!msg.is_empty());
                    break;
                }
                Err(other) => panic!("{what}: {other}"),
            }
        }
        let first_full = full.unwrap_or_else(|| panic!("{what}: never Full: {:?}", e.stats()));
        assert!(!e.contains(&cas_key(first_full)).unwrap(), "{what}");
        assert!(
            matches!(
                rt.block_on(e.put(cas_key(2000), data(2000, BLOB))),
                Err(StorageError::Full(_))
            ),
            "{what}"
        );
        assert_batch_readable(&e, 0, &what);
        assert!(e.stats().full_errors > 0, "{what}");
        std::fs::remove_file(&filler).unwrap();
        rt.block_on(e.put(cas_key(2001), data(2001, BLOB))).unwrap();
        drop(e);
        let e = Engine::open_with_io(cfg(&m.store()), io(b)).unwrap();
        rt.block_on(e.put(cas_key(2002), data(2002, BLOB))).unwrap();
        for n in [2001, 2002] {
            assert_eq!(
                e.get(&cas_key(n)).unwrap().map(|b| b.to_bytes().unwrap()),
                Some(data(n, BLOB)),
                "{what}"
            );
        }
        assert_batch_readable(&e, 0, &what);
    });
}

/// A new store on a full disk: the index (a mapped file) cannot be allocated, and open says
/// so with `Full` instead of mapping a sparse file that would SIGBUS on first use.
#[test]
fn index_that_does_not_fit_is_a_clear_error_at_open() {
    let _one = one_at_a_time();
    both_fs(|fs, m, b| {
        let what = format!("{fs} {b:?}");
        let filler = fill(&m.dir);
        // Free a little, far less than the index needs (32768 slots: 2 MiB).
        let len = std::fs::metadata(&filler).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap();
        f.set_len(len.saturating_sub(256 << 10)).unwrap();
        drop(f);
        let mut c = cfg(&m.store());
        c.index_slots = 32768;
        match Engine::open_with_io(c.clone(), io(b)) {
            Err(StorageError::Full(msg)) => assert!(msg.contains("index"), "{what}: {msg}"),
            Err(other) => panic!("{what}: expected Full, got {other}"),
            Ok(e) => panic!("{what}: opened on a full disk: {:?}", e.stats()),
        }
        std::fs::remove_file(&filler).unwrap();
        let e = Engine::open_with_io(c, io(b)).unwrap();
        rt().block_on(e.put(cas_key(1), data(1, 100))).unwrap();
        assert_eq!(
            e.get(&cas_key(1)).unwrap().unwrap().to_bytes().unwrap(),
            data(1, 100)
        );
    });
}

/// BatchUpdateBlobs of blobs `from..to` (16 KiB each); the per-item status codes.
async fn upload(s: &common::TestServer, from: u64, to: u64) -> Vec<i32> {
    let requests = (from..to)
        .map(|n| {
            let b = common::bytes(16 << 10, n);
            batch_update_blobs_request::Request {
                digest: Some(common::digest(&b).to_proto()),
                data: Bytes::from(b),
                compressor: 0,
            }
        })
        .collect();
    s.cas()
        .await
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .expect("the call itself succeeds; items carry their status")
        .into_inner()
        .responses
        .into_iter()
        .map(|r| r.status.map_or(0, |st| st.code))
        .collect()
}

/// Whether blobs `from..to` read back with the right bytes (BatchReadBlobs).
async fn readable(s: &common::TestServer, from: u64, to: u64) -> bool {
    let digests: Vec<_> = (from..to)
        .map(|n| common::digest(&common::bytes(16 << 10, n)).to_proto())
        .collect();
    let r = s
        .cas()
        .await
        .batch_read_blobs(BatchReadBlobsRequest {
            digests,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.responses.iter().zip(from..to).all(|(x, n)| {
        x.status.as_ref().is_none_or(|st| st.code == 0) && x.data == common::bytes(16 << 10, n)
    })
}

/// The whole server on a full tmpfs: RESOURCE_EXHAUSTED (never a crash) while nothing can be
/// evicted, uploads again once space is free, then two disks' worth of uploads that succeed
/// because the store evicts its own oldest segments, reads throughout, and a restart on the
/// full disk that still accepts uploads.
#[test]
fn server_on_a_full_disk_answers_resource_exhausted_then_evicts_its_own_segments() {
    let _one = one_at_a_time();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(server_on_a_full_disk());
}

async fn server_on_a_full_disk() {
    const FS: u64 = 12 << 20;
    let m = Mount::tmpfs(FS);
    let store = m.dir.join("data");
    let tweak = |c: &mut kiln::config::Config| {
        c.server.data_dir.clone_from(&store);
        c.storage.capacity_bytes = 256 << 20;
        c.storage.segment_size_bytes = 1 << 20;
        c.storage.part_size_bytes = 256 << 10;
        c.storage.max_blob_size_bytes = 2 << 20;
        c.storage.index_slots = 4096;
    };
    let s = common::TestServer::start_with(tweak).await;
    let filler = fill(&m.dir);
    let codes = upload(&s, 0, 8).await;
    assert!(
        codes
            .iter()
            .all(|&c| c == tonic::Code::ResourceExhausted as i32),
        "{codes:?}"
    );
    let missing = s
        .cas()
        .await
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![common::digest(&common::bytes(16 << 10, 0)).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing.len(), 1);
    std::fs::remove_file(&filler).unwrap();
    // 64 blobs of 16 KiB per call: two file systems' worth.
    let calls = 2 * FS / (64 * (16 << 10));
    for c in 0..calls {
        let codes = upload(&s, c * 64, (c + 1) * 64).await;
        assert!(codes.iter().all(|&x| x == 0), "call {c}: {codes:?}");
    }
    assert!(readable(&s, (calls - 1) * 64, calls * 64).await);
    let metrics = s.http_get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kiln_storage_enospc_evictions ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    s.stop().await;
    let s = common::TestServer::start_with(tweak).await;
    assert!(readable(&s, (calls - 1) * 64, calls * 64).await);
    for c in calls..calls + 8 {
        let codes = upload(&s, c * 64, (c + 1) * 64).await;
        assert!(
            codes.iter().all(|&x| x == 0),
            "after restart, call {c}: {codes:?}"
        );
    }
    assert!(readable(&s, (calls + 7) * 64, (calls + 8) * 64).await);
    s.stop().await;
}
