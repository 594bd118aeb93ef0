//! The index grows while serving and never forgets a blob the disk still holds (issue #16):
//! many times the initial slot count of small blobs, inserted while readers look them up,
//! are all found during and after every growth and after a restart; a power loss (the fault
//! engine's crash images) and a real SIGKILL during and right after a growth recover to an
//! index that serves every acknowledged blob; a larger `index_slots` at restart keeps them.

#[path = "common/storage.rs"]
mod storage_support;
#[path = "common/wait.rs"]
mod wait;

use bytes::Bytes;
use kiln::storage::sys::IoBackend;
use kiln::storage::{Durability, Engine, EngineConfig, Key, Store};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use storage_support::{cas_key, config, data, faulty, rt_threads};
use wait::wait_until;

const INITIAL_SLOTS: u64 = 4096;

fn cfg(dir: &Path) -> EngineConfig {
    let mut c = config(dir, 4 << 20, 16, 64 << 10, INITIAL_SLOTS);
    c.max_blob_size = 1 << 20;
    c.durability = Durability::Periodic {
        interval: Duration::from_millis(20),
    };
    c
}

/// Blob `n`: 40 to 199 bytes, so many fit and the index fills before the ring.
fn blob(n: u64) -> Bytes {
    data(n, 40 + (n % 160) as usize)
}

fn check(e: &Engine, n: u64, when: &str) {
    match e.get(&cas_key(n)).unwrap() {
        Some(b) => assert_eq!(
            b.to_bytes().unwrap(),
            blob(n),
            "{when}: wrong bytes for blob {n}"
        ),
        None => panic!("{when}: acknowledged blob {n} not found ({:?})", e.stats()),
    }
}

/// Inserts blobs `from..to` in batches of `batch`, publishing the highest acknowledged count.
async fn insert(e: &Engine, from: u64, to: u64, batch: u64, acked: &AtomicU64) {
    let mut n = from;
    while n < to {
        let end = (n + batch).min(to);
        e.put_many((n..end).map(|i| (cas_key(i), blob(i))).collect())
            .await
            .unwrap();
        acked.store(end, Ordering::Release);
        if std::env::var("DBG").is_ok() {
            let s = e.stats();
            eprintln!(
                "{end} slots {} disp {} growths {} load {}",
                s.index_slots, s.index_displaced, s.index_growths, s.index_load_permille
            );
        }
        n = end;
    }
}

#[test]
fn grows_online_while_reads_and_writes_go_on_and_forgets_nothing() {
    const N: u64 = 40_000; // ~10x the initial slots: five doublings at load 0.5
    let dir = tempfile::tempdir().unwrap();
    let rt = rt_threads(2);
    let e = Arc::new(Engine::open(cfg(dir.path())).unwrap());
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let (e, acked) = (Arc::clone(&e), Arc::clone(&acked));
        std::thread::spawn(move || {
            // Every acknowledged blob must be found at every moment, growths included.
            let mut reads = 0u64;
            let mut x = 0x2545_f491_4f6c_dd1d_u64;
            loop {
                let top = acked.load(Ordering::Acquire);
                if top == N {
                    return reads;
                }
                if top == 0 {
                    std::thread::yield_now();
                    continue;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                check(&e, x % top, "during the growths");
                // The newest acknowledged blob too: it may have gone only to the new table.
                check(&e, top - 1, "during the growths (newest)");
                reads += 2;
            }
        })
    };
    rt.block_on(insert(&e, 0, N, 250, &acked));
    let reads = reader.join().expect("reader saw a lost or wrong blob");
    assert!(
        reads > 1000,
        "the reader ran alongside the writes ({reads})"
    );
    // A growth started by the last writes finishes without further writes.
    wait_until("the last growth finishes", Duration::from_mins(1), || {
        !e.stats().index_growing
    });
    let s = e.stats();
    assert!(s.index_growths >= 4, "{s:?}");
    assert_eq!(s.index_displaced, 0, "{s:?}");
    assert_eq!(s.index_grow_failures, 0, "{s:?}");
    // Growth starts once a sample of the load reaches 0.5, checked every slots/64 publishes.
    let load = N as f64 / s.index_slots as f64;
    assert!(load < 0.55, "load {load} stays at most about 0.5: {s:?}");
    assert!(
        s.index_load_permille > 0 && s.index_load_permille < 600,
        "{s:?}"
    );
    assert!(!dir.path().join("index.grow").exists());
    let found = e
        .contains_many(&(0..N).map(cas_key).collect::<Vec<_>>())
        .unwrap();
    assert!(
        found.iter().all(|&f| f),
        "FindMissing-style lookup after growth"
    );
    for n in (0..N).step_by(7) {
        check(&e, n, "after the growths");
    }
    let grown = s.index_slots;
    let index_len = std::fs::metadata(dir.path().join("index")).unwrap().len();
    assert_eq!(
        index_len,
        4096 + grown * 64,
        "the grown table is the index file"
    );
    drop(e);

    // A restart keeps the grown index as it is (no rebuild, nothing replayed).
    let e = Engine::open(cfg(dir.path())).unwrap();
    let s = e.stats();
    assert_eq!((s.index_rebuilds, s.index_slots), (0, grown), "{s:?}");
    for n in 0..N {
        check(&e, n, "after a restart");
    }
    drop(e);

    // A larger configured size at restart rebuilds the index from the segments: every blob kept.
    let mut bigger = cfg(dir.path());
    bigger.index_slots = grown * 2;
    let e = Engine::open(bigger).unwrap();
    let s = e.stats();
    assert_eq!((s.index_rebuilds, s.index_slots), (1, grown * 2), "{s:?}");
    for n in 0..N {
        check(&e, n, "after a restart with more slots");
    }
}

#[test]
fn index_at_its_maximum_displaces_oldest_first() {
    const N: u64 = 6000;
    let dir = tempfile::tempdir().unwrap();
    let rt = rt_threads(2);
    let mut c = cfg(dir.path());
    c.index_slots = 1024;
    c.index_max_slots = 2048;
    c.probe_limit = 8;
    let e = Engine::open(c).unwrap();
    let acked = AtomicU64::new(0);
    rt.block_on(insert(&e, 0, N, 100, &acked));
    let s = e.stats();
    assert_eq!(s.index_slots, 2048, "grew once, up to the maximum: {s:?}");
    assert!(s.index_displaced > 0, "{s:?}");
    // The bytes they named are accounted as reclaimable (blobs of 40-199 bytes here).
    assert!(
        s.index_displaced_bytes >= 40 * s.index_displaced
            && s.index_displaced_bytes < 200 * s.index_displaced,
        "{s:?}"
    );
    // Each insert into a full window pushes out the entry written earliest: what is left is
    // the newest blobs. (A hash table has no global order, so this is per window: the newest
    // thousand are nearly all there, the oldest thousand nearly all gone.)
    let found = |r: std::ops::Range<u64>| r.filter(|&n| e.contains(&cas_key(n)).unwrap()).count();
    let (oldest, newest) = (found(0..1000), found(N - 1000..N));
    assert!(
        oldest < 50 && newest > 900,
        "oldest kept {oldest}, newest kept {newest}"
    );
    for n in N - 1000..N {
        if e.contains(&cas_key(n)).unwrap() {
            check(&e, n, "kept at the maximum");
        }
    }
}

/// Power losses at many points around growths (before a switch, with the new table still being
/// filled; right after one, before the next index checkpoint; later): every blob acknowledged
/// before the power went is served with its bytes after reopening, and nothing is damaged.
#[test]
fn power_loss_around_growths_keeps_every_acknowledged_blob() {
    let rt = rt_threads(2);
    for seed in 1..=8u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.index_slots = 256;
        c.probe_limit = 16;
        c.durability = Durability::Fdatasync;
        // Odd seeds: the copy waits, so the power goes while a growth is under way.
        if seed % 2 == 1 {
            c.grow_copy_delay = Duration::from_millis(300);
        }
        let (fault, io) = faulty(if seed % 4 < 2 {
            IoBackend::Psync
        } else {
            IoBackend::IoUring
        });
        let freeze_at = 300 + seed * 397 % 3000;
        let total = freeze_at + 600;
        {
            let e = Engine::open_with_io(c.clone(), io).unwrap();
            let acked = AtomicU64::new(0);
            rt.block_on(insert(&e, 0, freeze_at, 20, &acked));
            if seed % 2 == 1 {
                // A growth is under way now in most of these runs.
                let grew = e.stats().index_growths;
                fault.freeze();
                eprintln!("seed {seed}: frozen at {freeze_at} with {grew} growths done");
            } else {
                fault.freeze();
            }
            rt.block_on(insert(&e, freeze_at, total, 20, &acked));
        }
        fault.crash_image(seed).unwrap();
        c.grow_copy_delay = Duration::ZERO;
        let e = Engine::open(c.clone()).unwrap();
        for n in 0..freeze_at {
            check(&e, n, &format!("seed {seed}: after a power loss"));
        }
        for n in freeze_at..total {
            if let Some(b) = e.get(&cas_key(n)).unwrap() {
                assert_eq!(
                    b.to_bytes().unwrap(),
                    blob(n),
                    "seed {seed}: unacknowledged blob {n}"
                );
            }
        }
        let rep = e.verify(|_| {}, None);
        assert!(
            !rep.damaged(),
            "seed {seed}: {}",
            kiln::admin::describe(&rep)
        );
    }
}

/// The child side of the SIGKILL test: inserts blobs until killed, printing the count
/// acknowledged so far after every batch.
fn child_cfg(dir: &Path) -> EngineConfig {
    let mut c = cfg(dir);
    c.index_slots = 1024;
    c.durability = Durability::Fdatasync;
    c
}

fn sigkill_child(dir: &Path) -> ! {
    let mut c = child_cfg(dir);
    c.grow_copy_delay = Duration::from_millis(
        std::env::var("KILN_GROW_CHILD_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let start: u64 = std::env::var("KILN_GROW_CHILD_FROM")
        .unwrap()
        .parse()
        .unwrap();
    let rt = rt_threads(2);
    let e = Engine::open(c).unwrap();
    let mut n = start;
    loop {
        rt.block_on(e.put_many((n..n + 50).map(|i| (cas_key(i), blob(i))).collect()))
            .unwrap();
        n += 50;
        println!("acked {n} growths {}", e.stats().index_growths);
    }
}

/// A real `kill -9` of a process writing through the engine: once while a growth is copying
/// (its new file exists), once right after one finished. Every acknowledged blob is found
/// after each restart.
#[test]
fn sigkill_during_and_right_after_a_growth_keeps_every_acknowledged_blob() {
    if let Ok(dir) = std::env::var("KILN_GROW_CHILD_DIR") {
        sigkill_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked = 0u64;
    for (round, delay_ms) in [(0, 1500u64), (1, 0)] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_during_and_right_after_a_growth_keeps_every_acknowledged_blob",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KILN_GROW_CHILD_DIR", dir.path())
            .env("KILN_GROW_CHILD_DELAY_MS", delay_ms.to_string())
            .env("KILN_GROW_CHILD_FROM", acked.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_mins(2);
        let mut growths_at_start = None;
        let mut after_growth = 0;
        let killed_when = loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: no growth seen in time"
            );
            let Some(Ok(line)) = lines.next() else {
                panic!("round {round}: the child stopped early");
            };
            let Some(rest) = line.strip_prefix("acked ") else {
                continue;
            };
            let mut it = rest.split(" growths ");
            acked = it.next().unwrap().parse().unwrap();
            let growths: u64 = it.next().unwrap().parse().unwrap();
            let base = *growths_at_start.get_or_insert(growths);
            if round == 0 && dir.path().join("index.grow").exists() {
                // Mid-copy, with writes going to both tables: a few more batches, then kill.
                after_growth += 1;
                if after_growth == 4 {
                    break "while a growth was copying";
                }
            }
            if round == 1 && growths > base {
                break "right after a growth";
            }
        };
        // SIGKILL: no destructor, no clean stop.
        child.kill().unwrap();
        let _ = child.wait();
        let grow_left = dir.path().join("index.grow").exists();
        assert!(grow_left || round == 1, "killed mid-copy");
        // Everything printed was acknowledged (later lines may have been lost with the pipe).
        let e = Engine::open(child_cfg(dir.path())).unwrap();
        let s = e.stats();
        eprintln!("round {round}: killed {killed_when} at {acked} acknowledged; {s:?}");
        // Killed mid-copy: the current index may lack entries pushed out of it meanwhile, so
        // the `index.grow` left behind makes open rebuild it from the records. Killed after
        // the switch: the grown index is in place and needs no rebuild.
        // (A growth can start again right after one ends, when writes went on meanwhile.)
        let rebuilds = u64::from(grow_left);
        assert_eq!(s.index_rebuilds, rebuilds, "{s:?}");
        assert!(!dir.path().join("index.grow").exists());
        for n in 0..acked {
            check(&e, n, &format!("after a SIGKILL {killed_when}"));
        }
    }
}

/// A co-located reader (a worker's `Peek`, another process in real use) keeps finding blobs
/// after the owner grew the index: the grown file is a new inode renamed over `index`, so the
/// reader maps it again when a lookup misses.
#[test]
fn co_located_reader_follows_a_grown_index() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt_threads(2);
    let e = Engine::open(cfg(dir.path())).unwrap();
    let acked = AtomicU64::new(0);
    rt.block_on(insert(&e, 0, 100, 100, &acked));
    rt.block_on(e.sync()).unwrap();
    let peek = kiln::storage::Peek::open(dir.path()).unwrap();
    let mut out = Vec::new();
    assert!(peek.copy_to(&cas_key(5), &mut out).unwrap());
    assert_eq!(out, blob(5));
    rt.block_on(insert(&e, 100, 10_000, 250, &acked));
    rt.block_on(e.sync()).unwrap();
    assert!(e.stats().index_growths >= 2, "{:?}", e.stats());
    for n in [5, 9_999, 5_000] {
        let mut out = Vec::new();
        assert!(
            peek.copy_to(&cas_key(n), &mut out).unwrap(),
            "blob {n} after the growth"
        );
        assert_eq!(out, blob(n));
    }
}

/// Touch hints belong to a table: a growth carries each entry's hint to its new slot, so a
/// blob touched before the index grew is still copied forward when its segment is evicted.
#[test]
fn a_growth_keeps_the_touches_eviction_reads() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt_threads(2);
    let mut c = cfg(dir.path());
    c.capacity_bytes = 32 << 20; // 8 segments of 4 MiB; horizon: the last 4 segments
    c.index_slots = 1024;
    c.index_max_slots = 1 << 20;
    let e = Engine::open(c).unwrap();
    let hot: Vec<Key> = (0..200).map(|n| cas_key(1_000_000 + n)).collect();
    let hot_data = |k: &Key| Bytes::from(k.id.repeat(32)); // 1 KiB
    rt.block_on(e.put_many(hot.iter().map(|k| (*k, hot_data(k))).collect()))
        .unwrap();
    let head = |e: &Engine| e.stats().segments;
    // 4 KiB fillers up to the seventh segment: few entries, the index stays small.
    let mut n = 0u64;
    while head(&e) < 7 {
        let items = (n..n + 64)
            .map(|i| (cas_key(i), Bytes::from(vec![i as u8; 4096])))
            .collect();
        rt.block_on(e.put_many(items)).unwrap();
        n += 64;
    }
    // One touch of the hot set, within the horizon of its segment's eviction.
    assert!(e.contains_many(&hot).unwrap().iter().all(|&f| f));
    let before = e.stats().index_growths;
    // Then tiny blobs: tens of thousands of entries, several growths, and the hot set's
    // segment is evicted.
    while e.stats().evictions < 2 {
        let items = (n..n + 500)
            .map(|i| (cas_key(i), Bytes::copy_from_slice(&i.to_le_bytes())))
            .collect();
        rt.block_on(e.put_many(items)).unwrap();
        n += 500;
    }
    let s = e.stats();
    assert!(
        s.index_growths >= before + 2,
        "the index grew after the touch: {s:?}"
    );
    let missing = hot.iter().filter(|k| e.get(k).unwrap().is_none()).count();
    assert_eq!(missing, 0, "hot blobs evicted although touched: {s:?}");
    for k in &hot {
        assert_eq!(e.get(k).unwrap().unwrap().to_bytes().unwrap(), hot_data(k));
    }
}

/// A batch of many small blobs into a small index: the load passes the growth threshold in
/// the middle of the batch, and a growth runs while the rest of it is published. Before, the
/// load was checked only between batches and the table being filled took every publish
/// whatever its load: its windows filled and entries were pushed out of both tables (counted
/// as displaced; the oldest first, so an early hot set went first).
#[test]
fn one_batch_of_many_entries_into_a_small_index_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt_threads(2);
    let mut c = cfg(dir.path());
    c.index_slots = 1024;
    c.index_max_slots = 1 << 20;
    let e = Engine::open(c).unwrap();
    let mut n = 0u64;
    for batch in [3_000u64, 500, 8_000, 500, 20_000] {
        let items = (n..n + batch)
            .map(|i| (cas_key(i), Bytes::copy_from_slice(&i.to_le_bytes())))
            .collect();
        rt.block_on(e.put_many(items)).unwrap();
        n += batch;
        let s = e.stats();
        assert_eq!(s.index_displaced, 0, "after {n} entries: {s:?}");
    }
    let keys: Vec<Key> = (0..n).map(cas_key).collect();
    let missing = e
        .contains_many(&keys)
        .unwrap()
        .iter()
        .filter(|&&f| !f)
        .count();
    assert_eq!(missing, 0, "{:?}", e.stats());
}
