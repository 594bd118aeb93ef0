//! Black-box tests of the segment engine, each run on both I/O engines.

#[path = "common/storage.rs"]
mod storage_support;

use bytes::Bytes;
use kiln::storage::sys::IoBackend;
use kiln::storage::{BlobCheck, Durability, Engine, EngineConfig, Key, StorageError, Store};
use std::path::Path;
use storage_support::{BACKENDS, cas_key, config, data, io, rt};

fn cfg(dir: &Path) -> EngineConfig {
    config(dir, 256 << 10, 8, 16 << 10, 4096)
}

#[test]
fn put_get_contains_reopen() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        {
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            assert_eq!(
                e.io_engine(),
                if b == IoBackend::Psync {
                    "psync"
                } else {
                    "io_uring"
                }
            );
            rt.block_on(async {
                for n in 0..50 {
                    e.put(cas_key(n), data(n, (n as usize * 97) % 5000))
                        .await
                        .unwrap();
                }
                // Streamed blob spanning many parts (and segments).
                let big = data(999, 500 << 10);
                let mut w = e.begin_write(cas_key(999), big.len() as u64).await.unwrap();
                for c in big.chunks(10_000) {
                    w.write(Bytes::copy_from_slice(c)).await.unwrap();
                }
                w.commit().await.unwrap();
                assert_eq!(
                    e.get(&cas_key(999)).unwrap().map(|b| b.to_bytes().unwrap()),
                    Some(big),
                    "{:?}",
                    e.stats()
                );
            });
            for n in 0..50 {
                assert!(e.contains(&cas_key(n)).unwrap());
                assert_eq!(
                    e.get(&cas_key(n)).unwrap().unwrap().to_bytes().unwrap(),
                    data(n, (n as usize * 97) % 5000)
                );
            }
            assert!(!e.contains(&cas_key(1000)).unwrap());
            assert!(e.get(&cas_key(1000)).unwrap().is_none());
        }
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        for n in 0..50 {
            assert_eq!(
                e.get(&cas_key(n)).unwrap().unwrap().to_bytes().unwrap(),
                data(n, (n as usize * 97) % 5000),
                "{b:?} {n}"
            );
        }
        assert_eq!(
            e.get(&cas_key(999)).unwrap().unwrap().to_bytes().unwrap(),
            data(999, 500 << 10)
        );
        let rep = e.verify(|_| {}, None);
        assert_eq!(rep.corrupt_records, 0);
        assert!(rep.records >= 51);
        assert_eq!(e.stats().record_reads, 50 + 33 + rep.records);
    }
}

#[test]
fn uncommitted_and_wrong_length_writes_are_invisible() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        rt().block_on(async {
            let mut w = e.begin_write(cas_key(1), 10).await.unwrap();
            w.write(Bytes::from_static(b"12345")).await.unwrap();
            assert!(!e.contains(&cas_key(1)).unwrap());
            assert!(matches!(
                w.commit().await,
                Err(StorageError::LengthMismatch { .. })
            ));
            let mut w = e.begin_write(cas_key(2), 3).await.unwrap();
            assert!(w.write(Bytes::from_static(b"1234")).await.is_err());
            drop(w);
            assert!(matches!(
                e.begin_write(cas_key(3), u64::MAX).await,
                Err(StorageError::TooLarge { .. })
            ));
        });
        assert!(!e.contains(&cas_key(1)).unwrap() && !e.contains(&cas_key(2)).unwrap());
    }
}

#[test]
fn ac_rewrite_newest_wins_across_reopen() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let k = Key::new(Key::SPACE_AC, [9; 32]);
        for round in 0..3u64 {
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            if round > 0 {
                assert_eq!(
                    e.get(&k).unwrap().unwrap().to_bytes().unwrap(),
                    data(round * 10 + 4, 100)
                );
            }
            rt().block_on(async {
                for v in 0..5 {
                    e.put(k, data((round + 1) * 10 + v, 100)).await.unwrap();
                    assert_eq!(
                        e.get(&k).unwrap().unwrap().to_bytes().unwrap(),
                        data((round + 1) * 10 + v, 100)
                    );
                }
            });
        }
    }
}

#[test]
fn eviction_keeps_disk_bounded_and_copies_touched_blobs_forward() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let cap = c.capacity_bytes;
        let seg = c.segment_size;
        let e = Engine::open_with_io(c, io(b)).unwrap();
        let rt = rt();
        rt.block_on(e.put(cas_key(0), data(0, 1000))).unwrap();
        // Write 3x the capacity; keep touching blob 0.
        for n in 1..=(3 * cap / 4096) {
            rt.block_on(e.put(cas_key(n), data(n, 4000))).unwrap();
            assert!(
                e.contains(&cas_key(0)).unwrap(),
                "{b:?}: touched blob evicted after {n}"
            );
            if n == cap / 2 / 4096 {
                // Half the ring written: nothing is near eviction, so nothing is copied.
                let s = e.stats();
                assert_eq!(s.copy_forwards, 0, "{b:?}: {s:?}");
            }
        }
        let s = e.stats();
        assert!(s.evictions > 0 && s.copy_forwards > 0, "{s:?}");
        assert!(s.bytes_used <= cap);
        assert!(
            !e.contains(&cas_key(1)).unwrap(),
            "untouched old blob should be gone"
        );
        let on_disk: u64 = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .map(|f| f.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= cap + seg, "{on_disk}");
        assert_eq!(
            e.get(&cas_key(0)).unwrap().unwrap().to_bytes().unwrap(),
            data(0, 1000)
        );
    }
}

#[test]
fn reader_keeps_evicted_segment_alive() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let cap = c.capacity_bytes;
        let e = Engine::open_with_io(c, io(b)).unwrap();
        let rt = rt();
        rt.block_on(e.put(cas_key(0), data(0, 3000))).unwrap();
        let held = e.get(&cas_key(0)).unwrap().unwrap();
        for n in 1..=(2 * cap / 4096) {
            rt.block_on(e.put(cas_key(n), data(n, 4000))).unwrap();
        }
        assert!(!e.contains(&cas_key(0)).unwrap() || e.stats().copy_forwards > 0);
        assert_eq!(
            held.to_bytes().unwrap(),
            data(0, 3000),
            "bytes changed under a reader"
        );
    }
}

#[test]
fn periodic_durability_and_put_many() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.durability = Durability::Periodic {
            interval: std::time::Duration::from_millis(20),
        };
        {
            let e = Engine::open_with_io(c.clone(), io(b)).unwrap();
            rt().block_on(e.put_many((0..200).map(|n| (cas_key(n), data(n, 100))).collect()))
                .unwrap();
            assert!(e.contains(&cas_key(199)).unwrap());
        }
        let e = Engine::open_with_io(c, io(b)).unwrap();
        assert_eq!(
            e.get(&cas_key(150)).unwrap().unwrap().to_bytes().unwrap(),
            data(150, 100)
        );
    }
}

#[test]
fn verify_reports_corruption_and_check_failures() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            rt().block_on(async {
                for n in 0..10 {
                    e.put(cas_key(n), data(n, 500)).await.unwrap();
                }
            });
        }
        // Flip a payload byte of the first record in the first segment.
        let p = dir.path().join("segments/seg-00001");
        let mut f = std::fs::read(&p).unwrap();
        f[4096 + 64 + 10] ^= 0xff;
        std::fs::write(&p, f).unwrap();
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        assert!(
            e.get(&cas_key(0)).unwrap().is_none(),
            "corrupt record must not be served"
        );
        assert_eq!(e.stats().corruptions, 1);
        let mut calls = 0;
        // Only keys 0..5 are checked; of those, key 3 fails. Key 7 would fail if it were asked.
        let check = BlobCheck {
            wants: &|k: &Key| (0..5).any(|n| *k == cas_key(n)),
            check: &|k: &Key, _: &kiln::storage::Blob| k != &cas_key(3) && k != &cas_key(7),
        };
        let rep = e.verify(|_| calls += 1, Some(check));
        assert_eq!(
            (rep.records, rep.corrupt_records, rep.check_failures),
            (9, 1, 1)
        );
        assert_eq!(rep.failed_keys, vec![cas_key(3)]);
        assert!(calls >= 1);
    }
}

#[test]
fn drop_with_live_upload_handle_does_not_hang() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        let mut w = rt.block_on(e.begin_write(cas_key(1), 4)).unwrap();
        drop(e);
        let r = rt.block_on(async {
            w.write(Bytes::from_static(b"abcd")).await?;
            w.commit().await
        });
        assert!(matches!(r, Err(StorageError::Closed)), "{r:?}");
    }
}

/// The highest segment seq named by the headers of the files in `dir/segments`.
fn max_segment_seq(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .filter_map(|f| {
            let b = std::fs::read(f.unwrap().path()).ok()?;
            kiln::storage::format::SegmentHeader::decode(&b)
                .ok()
                .map(|h| h.seq)
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn lost_state_file_rebuilds_and_continues_after_the_highest_segment_on_disk() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        {
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            for n in 1..=150 {
                rt.block_on(e.put(cas_key(n), data(n, 4000))).unwrap();
            }
        }
        let before = max_segment_seq(dir.path());
        assert!(before >= 2, "{b:?}: the first life used {before} segments");
        std::fs::remove_file(dir.path().join("state")).unwrap();
        {
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            // The ring is found from the segment headers and the index rebuilt from them.
            assert_eq!(
                e.get(&cas_key(1)).unwrap().map(|g| g.to_bytes().unwrap()),
                Some(data(1, 4000)),
                "{b:?}: lost state, cache rebuilt"
            );
            assert_eq!(e.stats().index_rebuilds, 1);
            rt.block_on(e.put(cas_key(500), data(500, 4000))).unwrap();
        }
        // Old records can never validate in a new segment: new seqs start past the old ones.
        assert!(max_segment_seq(dir.path()) > before, "{b:?}");
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        assert_eq!(
            e.get(&cas_key(500)).unwrap().unwrap().to_bytes().unwrap(),
            data(500, 4000)
        );
    }
}

/// Bytes of `dir`'s files this process has mapped and resident (`/proc/self/smaps`: a
/// mapping's line "start-end perms offset dev inode [path]", then its "Rss:" among others).
fn mapped_resident(dir: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let dir = dir.to_string_lossy();
    let (mut ours, mut kib) = (false, 0);
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.first() {
            Some(&"Rss:") if ours => kib += fields[1].parse::<u64>().unwrap(),
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                ours = fields.get(5).is_some_and(|p| p.starts_with(&*dir));
            }
            _ => {}
        }
    }
    kib << 10
}

/// Copy-forward's passes read every record header of a segment through its map. The pages
/// they fault in are handed back to the page cache after each pass and when a file is reused,
/// so however often the ring wraps the process keeps little of its segment files mapped (else
/// a ring several times the box's memory fills the memory with mapped pages).
#[test]
fn scanned_and_reused_segments_do_not_stay_mapped() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), 1 << 20, 16, 64 << 10, 1 << 14);
        let cap = c.capacity_bytes;
        let e = Engine::open_with_io(c, io(b)).unwrap();
        let rt = rt();
        for n in 0..(3 * cap / 4096) {
            rt.block_on(e.put(cas_key(n), data(n, 4000))).unwrap();
        }
        let s = e.stats();
        assert!(s.evictions > 20, "{b:?}: the ring wrapped: {s:?}");
        let mapped = mapped_resident(&dir.path().join("segments"));
        assert!(
            mapped < cap / 4,
            "{b:?}: {mapped} bytes of segment files still mapped (ring {cap})"
        );
        assert_eq!(
            e.get(&cas_key(3 * cap / 4096 - 1))
                .unwrap()
                .unwrap()
                .to_bytes()
                .unwrap(),
            data(3 * cap / 4096 - 1, 4000)
        );
    }
}
