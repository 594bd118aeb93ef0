//! Crash, full-disk and I/O-error tests: a fault-injecting I/O engine (over psync and over
//! io_uring) builds the image a power loss would leave, and the engine reopens it.

#[path = "common/storage.rs"]
mod storage_support;
#[path = "common/wait.rs"]
mod wait;

use bytes::Bytes;
use kiln::storage::sys::fault::FaultState;
use kiln::storage::{Engine, EngineConfig, Key, StorageError, Store};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use storage_support::{BACKENDS, config, data, faulty, io, key, rt, rt_threads};
use wait::wait_until;

/// How long a crash test waits for the engine to reach a state.
const PATIENCE: Duration = Duration::from_secs(20);

fn cfg(dir: &Path) -> EngineConfig {
    let mut c = config(dir, 128 << 10, 16, 8 << 10, 2048);
    c.max_blob_size = 256 << 10;
    c
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Lifts a sync hold when a test ends, failed or not (the engine's drop waits for the round).
struct Release(Arc<FaultState>);
impl Drop for Release {
    fn drop(&mut self) {
        self.0.hold_syncer(false);
    }
}

/// `len` bytes for `seed` that compress about 4x (4 letters), for compression at rest.
fn letters(seed: u64, len: usize) -> Bytes {
    data(seed, len).iter().map(|b| b'a' + b % 4).collect()
}

/// Random puts (small, multi-part, AC rewrites); power off at a random point; a few more
/// writes while "off"; crash image; reopen. Checks: no acknowledged write lost, nothing served
/// that was never written for that key. Seeds 13-20 run with compression at rest and
/// compressible values, so the image holds compressed records and layout-1 manifests torn
/// at every point.
#[test]
fn power_loss_keeps_acknowledged_and_serves_nothing_corrupt() {
    let rt = rt();
    for b in BACKENDS {
        let mut replayed = 0;
        for seed in 1..=20u64 {
            let dir = tempfile::tempdir().unwrap();
            let compress = seed > 12;
            let data = |s: u64, len: usize| {
                if compress {
                    letters(s, len)
                } else {
                    data(s, len)
                }
            };
            // Odd seeds take index checkpoints every 64 KiB, so a crash also falls between
            // checkpoints in the middle of a segment; even seeds never checkpoint before it.
            let cfg = |dir: &Path| {
                let mut c = cfg(dir);
                if seed % 2 == 1 {
                    c.checkpoint_bytes = 64 << 10;
                }
                if compress {
                    c.compression = kiln::storage::Compression::Zstd {
                        level: 1,
                        min_size: 256,
                        max_ratio: 0.9,
                    };
                }
                c
            };
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            // For every key: all versions ever written, and the last acknowledged one.
            let mut written: HashMap<Key, Vec<Bytes>> = HashMap::new();
            let mut acked: HashMap<Key, Bytes> = HashMap::new();
            let (fault, fio) = faulty(b);
            {
                let e = Engine::open_with_io(cfg(dir.path()), fio).unwrap();
                let ops = 20 + rng.next() % 60;
                let freeze_at = rng.next() % ops;
                for i in 0..ops {
                    if i == freeze_at {
                        fault.freeze();
                    }
                    let r = rng.next();
                    let (k, v) = match r % 4 {
                        0 => (key(Key::SPACE_AC, r % 3), data(r, 50 + (r % 300) as usize)),
                        1 => (
                            key(Key::SPACE_CAS, r % 1000),
                            data(r % 1000, 20_000 + (r % 20_000) as usize),
                        ),
                        _ => (
                            key(Key::SPACE_CAS, r % 1000),
                            data(r % 1000, 1 + (r % 3000) as usize),
                        ),
                    };
                    if k.space == Key::SPACE_CAS && written.contains_key(&k) {
                        continue;
                    }
                    written.entry(k).or_default().push(v.clone());
                    rt.block_on(e.put(k, v.clone())).unwrap();
                    if i < freeze_at {
                        acked.insert(k, v);
                    }
                }
                assert_eq!(e.stats().compressed_records > 0, compress, "seed {seed}");
            }
            fault.crash_image(seed).unwrap();
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            replayed += e.stats().replayed;
            for (k, v) in &acked {
                let got = e.get(k).unwrap().map(|b| b.to_bytes().unwrap());
                let ok = match &got {
                    None => false,
                    // A later, unacknowledged version may have made it too.
                    Some(g) => g == v || written[k].iter().skip_while(|w| *w != v).any(|w| w == g),
                };
                assert!(
                    ok,
                    "{b:?} seed {seed}: acknowledged {k:?} lost or wrong ({:?})",
                    got.map(|g| g.len())
                );
            }
            for (k, vs) in &written {
                if let Some(g) = e.get(k).unwrap() {
                    assert!(
                        vs.contains(&g.to_bytes().unwrap()),
                        "{b:?} seed {seed}: served bytes never written for {k:?}"
                    );
                }
            }
            // The store keeps working after the crash and survives a clean reopen.
            rt.block_on(e.put(key(1, 5555), data(5555, 777))).unwrap();
            let rep = e.verify(|_| {}, None);
            assert!(rep.records > 0);
            // What a crash tears is never acknowledged: not corruption, nothing dropped.
            assert!(
                !rep.damaged(),
                "{b:?} seed {seed}: {}",
                kiln::admin::describe(&rep)
            );
            drop(e);
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            assert_eq!(
                e.get(&key(1, 5555)).unwrap().unwrap().to_bytes().unwrap(),
                data(5555, 777)
            );
            for (k, v) in &acked {
                assert!(
                    e.get(k)
                        .unwrap()
                        .is_some_and(|g| g.to_bytes().unwrap() == *v
                            || written[k].contains(&g.to_bytes().unwrap()))
                );
            }
        }
        // The index file is written back only at checkpoints: the crash images must have
        // needed the replay (without it, acknowledged entries go missing).
        assert!(replayed > 0, "{b:?}: no crash image exercised the replay");
    }
}

#[test]
fn full_disk_fails_uploads_keeps_reads_and_recovers() {
    let rt = rt();
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (fault, fio) = faulty(b);
        let e = Engine::open_with_io(cfg(dir.path()), fio).unwrap();
        rt.block_on(e.put(key(1, 1), data(1, 1000))).unwrap();
        fault.set_full(true);
        for n in 2..40 {
            let r = rt.block_on(e.put(key(1, n), data(n, 9000)));
            assert!(matches!(r, Err(StorageError::Full(_))), "{b:?}: {r:?}");
        }
        assert_eq!(
            e.get(&key(1, 1)).unwrap().unwrap().to_bytes().unwrap(),
            data(1, 1000)
        );
        assert!(!e.contains(&key(1, 2)).unwrap());
        assert!(e.stats().full_errors > 0);
        fault.set_full(false);
        for n in 2..40 {
            rt.block_on(e.put(key(1, n), data(n, 9000))).unwrap();
        }
        assert_eq!(
            e.get(&key(1, 39)).unwrap().unwrap().to_bytes().unwrap(),
            data(39, 9000)
        );
        drop(e);
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        assert_eq!(
            e.get(&key(1, 20)).unwrap().unwrap().to_bytes().unwrap(),
            data(20, 9000)
        );
    }
}

#[test]
fn io_error_poisons_writes_but_not_reads() {
    let rt = rt();
    for b in BACKENDS {
        for nth in 1..6 {
            let dir = tempfile::tempdir().unwrap();
            let (fault, fio) = faulty(b);
            let e = Engine::open_with_io(cfg(dir.path()), fio).unwrap();
            rt.block_on(e.put(key(1, 1), data(1, 100))).unwrap();
            fault.fail_after(nth);
            let mut failed = false;
            for n in 2..10 {
                match rt.block_on(e.put(key(1, n), data(n, 100))) {
                    Ok(()) => assert!(!failed, "write succeeded after poisoning"),
                    Err(StorageError::Poisoned(m)) => {
                        assert!(m.contains("injected"), "{m}");
                        failed = true;
                    }
                    Err(other) => panic!("{other:?}"),
                }
            }
            assert!(failed);
            assert!(matches!(
                rt.block_on(e.begin_write(key(1, 99), 1)),
                Err(StorageError::Poisoned(_))
            ));
            assert_eq!(
                e.get(&key(1, 1)).unwrap().unwrap().to_bytes().unwrap(),
                data(1, 100)
            );
            drop(e);
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            assert_eq!(
                e.get(&key(1, 1)).unwrap().unwrap().to_bytes().unwrap(),
                data(1, 100)
            );
            rt.block_on(e.put(key(1, 50), data(50, 100))).unwrap();
        }
    }
}

/// A write refused for a full disk leaves a hole in the segment; replay stops at it, so what is
/// acknowledged after the disk recovers must survive a power loss some other way.
#[test]
fn power_loss_after_a_full_disk_keeps_later_acknowledged_writes() {
    let rt = rt();
    for b in BACKENDS {
        for seed in 1..=6u64 {
            let dir = tempfile::tempdir().unwrap();
            let (fault, fio) = faulty(b);
            {
                let e = Engine::open_with_io(cfg(dir.path()), fio).unwrap();
                rt.block_on(e.put(key(1, 1), data(1, 1000))).unwrap();
                fault.set_full(true);
                let r = rt.block_on(e.put(key(1, 2), data(2, 9000)));
                assert!(matches!(r, Err(StorageError::Full(_))), "{b:?}: {r:?}");
                fault.set_full(false);
                for n in 3..30 {
                    rt.block_on(e.put(key(1, n), data(n, 500))).unwrap();
                }
                fault.freeze();
            }
            fault.crash_image(seed).unwrap();
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            for n in (1..30).filter(|n| *n != 2) {
                let want = data(n, if n == 1 { 1000 } else { 500 });
                assert_eq!(
                    e.get(&key(1, n)).unwrap().map(|g| g.to_bytes().unwrap()),
                    Some(want),
                    "{b:?} seed {seed}: acknowledged blob {n} lost after the full-disk hole"
                );
            }
        }
    }
}

/// In periodic mode the I/O thread goes on appending while a sync round is on the disk:
/// commits are not held up by a slow fdatasync. (Everything stays in one segment: a roll
/// writes the state, which waits for the round.)
#[test]
fn periodic_commits_go_on_while_a_round_is_syncing() {
    let rt = rt();
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.durability = kiln::storage::Durability::Periodic {
            interval: std::time::Duration::from_millis(5),
        };
        let (fault, fio) = faulty(b);
        let e = Engine::open_with_io(c.clone(), fio).unwrap();
        let _release = Release(Arc::clone(&fault));
        fault.hold_syncer(true);
        rt.block_on(e.put(key(1, 0), data(0, 4000))).unwrap();
        wait_until("a periodic round starts", PATIENCE, || {
            fault.held_syncs() == 1
        });
        let syncs = fault.syncs();
        for n in 1..20 {
            let put = async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    e.put(key(1, n), data(n, 4000)),
                )
                .await
            };
            rt.block_on(put)
                .expect("a commit waited for the periodic round")
                .unwrap();
        }
        assert_eq!(fault.held_syncs(), 1, "the round is still on the disk");
        assert_eq!(fault.syncs(), syncs, "no sync finished meanwhile");
        fault.hold_syncer(false);
        rt.block_on(e.sync()).unwrap();
        assert!(fault.syncs() > syncs);
        // Power loss right after the explicit sync: everything before it is durable.
        fault.freeze();
        drop(e);
        fault.crash_image(b as u64 + 7).unwrap();
        let e = Engine::open_with_io(c, io(b)).unwrap();
        for n in 0..20 {
            assert_eq!(
                e.get(&key(1, n)).unwrap().map(|g| g.to_bytes().unwrap()),
                Some(data(n, 4000)),
                "blob {n} lost after a sync"
            );
        }
    }
}

/// In fdatasync mode a commit is answered only when its round is durable, and the next batch
/// is written while that round is on the disk (pipelined group commit).
#[test]
fn fdatasync_commit_waits_for_its_round_while_the_next_batch_is_written() {
    let rt = rt_threads(2);
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (fault, fio) = faulty(b);
        let e = Arc::new(Engine::open_with_io(cfg(dir.path()), fio).unwrap());
        let _release = Release(Arc::clone(&fault));
        // The first segment is made (header, state) before the hold.
        rt.block_on(e.put(key(1, 0), data(0, 100))).unwrap();
        fault.hold_syncer(true);
        let writes = fault.writes();
        let first = rt.spawn({
            let e = Arc::clone(&e);
            async move { e.put(key(1, 1), data(1, 3000)).await }
        });
        wait_until("the first commit's round starts", PATIENCE, || {
            fault.held_syncs() == 1
        });
        assert_eq!(fault.writes(), writes + 1);
        let second = rt.spawn({
            let e = Arc::clone(&e);
            async move { e.put(key(1, 2), data(2, 3000)).await }
        });
        wait_until(
            "the second batch is written during the round",
            PATIENCE,
            || fault.writes() == writes + 2,
        );
        // Not a wait for state: a window in which a premature acknowledgement would show.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !first.is_finished(),
            "acknowledged before its round was durable"
        );
        assert!(
            !second.is_finished(),
            "acknowledged before any round covered it"
        );
        // Let the first round finish (data sync, state sync); the second is held.
        fault.pass_syncs(2);
        wait_until("the first commit is answered", PATIENCE, || {
            first.is_finished()
        });
        wait_until("the second round starts", PATIENCE, || {
            fault.held_syncs() == 1
        });
        assert!(
            !second.is_finished(),
            "answered by a round that started before its batch was written"
        );
        fault.hold_syncer(false);
        rt.block_on(first).unwrap().unwrap();
        rt.block_on(second).unwrap().unwrap();
        assert_eq!(
            e.get(&key(1, 2)).unwrap().unwrap().to_bytes().unwrap(),
            data(2, 3000)
        );
    }
}

/// A power loss while a round is on the disk, the writer appending meanwhile (and rolling to a
/// new segment, which waits for the round): what was durable before stays, nothing written
/// during the round is served with wrong bytes.
#[test]
fn power_loss_with_a_round_in_flight() {
    let rt = rt_threads(2);
    for b in BACKENDS {
        for seed in 1..=4u64 {
            let dir = tempfile::tempdir().unwrap();
            let mut c = cfg(dir.path());
            if seed % 2 == 0 {
                c.durability = kiln::storage::Durability::Periodic {
                    interval: Duration::from_millis(2),
                };
            }
            let (fault, fio) = faulty(b);
            let e = Arc::new(Engine::open_with_io(c.clone(), fio).unwrap());
            let _release = Release(Arc::clone(&fault));
            for n in 0..10 {
                rt.block_on(e.put(key(1, n), data(n, 7000))).unwrap();
            }
            rt.block_on(e.sync()).unwrap();
            fault.hold_syncer(true);
            // Writers during the round: small blobs, large ones (parts and a manifest), an
            // AC rewrite of a durable key; 40 x 7 KB and more passes a 128 KiB segment.
            let writers: Vec<_> = (0..3u64)
                .map(|w| {
                    let e = Arc::clone(&e);
                    rt.spawn(async move {
                        for i in 0..15u64 {
                            let n = 100 + w * 100 + i;
                            let len = if i % 5 == 4 { 20_000 } else { 7000 };
                            let _ = e.put(key(1, n), data(n, len)).await;
                        }
                        let _ = e.put(key(2, 1), data(w + 50, 300)).await;
                    })
                })
                .collect();
            wait_until("a round is on the disk", PATIENCE, || {
                fault.held_syncs() == 1
            });
            // Pacing, not a wait: each seed lets the writers run a different while first.
            std::thread::sleep(Duration::from_millis(30 * seed));
            fault.freeze();
            fault.hold_syncer(false);
            for w in writers {
                rt.block_on(w).unwrap();
            }
            drop(Arc::into_inner(e).expect("writers are done"));
            fault.crash_image(seed * 31 + b as u64).unwrap();
            let e = Engine::open_with_io(c, io(b)).unwrap();
            for n in 0..10 {
                assert_eq!(
                    e.get(&key(1, n)).unwrap().map(|g| g.to_bytes().unwrap()),
                    Some(data(n, 7000)),
                    "durable blob {n} lost (seed {seed})"
                );
            }
            for w in 0..3u64 {
                for i in 0..15u64 {
                    let n = 100 + w * 100 + i;
                    let len = if i % 5 == 4 { 20_000 } else { 7000 };
                    if let Some(g) = e.get(&key(1, n)).unwrap() {
                        assert_eq!(g.to_bytes().unwrap(), data(n, len), "wrong bytes for {n}");
                    }
                }
            }
            if let Some(g) = e.get(&key(2, 1)).unwrap() {
                let g = g.to_bytes().unwrap();
                assert!((50..53).any(|s| g == data(s, 300)), "wrong AC bytes");
            }
        }
    }
}
