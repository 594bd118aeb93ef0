//! Storage engine benchmarks (no gRPC): put/get/contains by blob size, durable put throughput
//! (puts followed by a sync round, the figure to hold against the disk's write rate), index
//! insert/lookup on two threads, reopen time at 1M and 10M entries, and memory per entry.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-storage cargo bench --bench storage_engine`

#[path = "../tests/common/storage.rs"]
mod storage_support;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln::storage::format::RecordKind;
use kiln::storage::index::{Entry, Index};
use kiln::storage::{Cached, Durability, Engine, EngineConfig, Key, Store};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};
use storage_support::{cas_key, config, rt};

fn cfg(dir: &Path, durability: Durability) -> EngineConfig {
    let mut c = config(dir, 64 << 20, 32, 1 << 20, 1 << 21);
    c.max_blob_size = 64 << 20;
    c.durability = durability;
    c
}

const PERIODIC: Durability = Durability::Periodic {
    interval: Duration::from_millis(200),
};
const SIZES: [(usize, &str); 3] = [(1 << 10, "1KiB"), (64 << 10, "64KiB"), (4 << 20, "4MiB")];

fn put(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("storage_put");
    for (mode, dur) in [("periodic", PERIODIC), ("fdatasync", Durability::Fdatasync)] {
        for (size, name) in SIZES {
            if mode == "fdatasync" && size > 64 << 10 {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let e = Engine::open(cfg(dir.path(), dur)).unwrap();
            let data = Bytes::from(vec![7u8; size]);
            let mut n = 0u64;
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(BenchmarkId::new(mode, name), |b| {
                b.iter(|| {
                    n += 1;
                    rt.block_on(e.put(cas_key(n), data.clone())).unwrap();
                });
            });
        }
    }
    g.finish();
}

/// Sustained durable throughput of 4 MiB puts from one client: each sample puts the same number
/// of blobs and ends with `Engine::sync`, so its time covers making every byte durable. This is
/// the figure comparable with `kiln bench baseline`'s "disk write ... +fdatasync" (criterion's
/// per-put means above hide the sync rounds in a bursty series).
fn put_durable(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("storage_put_durable");
    g.sample_size(10);
    g.sampling_mode(criterion::SamplingMode::Flat);
    g.measurement_time(Duration::from_secs(30));
    g.warm_up_time(Duration::from_secs(3));
    let size = 4usize << 20;
    for (mode, dur) in [("periodic", PERIODIC), ("fdatasync", Durability::Fdatasync)] {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(cfg(dir.path(), dur)).unwrap();
        let data = Bytes::from(vec![5u8; size]);
        let mut n = 0u64;
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new(mode, "4MiB"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        n += 1;
                        e.put(cas_key(n), data.clone()).await.unwrap();
                    }
                    e.sync().await.unwrap();
                    t.elapsed()
                })
            });
        });
    }
    g.finish();
}

fn get_contains(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("storage_read");
    for (size, name) in SIZES {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(cfg(dir.path(), PERIODIC)).unwrap();
        let count = ((256u64 << 20) / size as u64).min(100_000);
        let data = Bytes::from(vec![3u8; size]);
        rt.block_on(async {
            for n in 0..count {
                e.put(cas_key(n), data.clone()).await.unwrap();
            }
        });
        let mut n = 0u64;
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("get", name), |b| {
            b.iter(|| {
                n = (n + 1) % count;
                black_box(e.get(&cas_key(n)).unwrap().unwrap());
            });
        });
        // The same through `get_cached` (async callers): a look at the page cache first.
        g.bench_function(BenchmarkId::new("get_cached", name), |b| {
            b.iter(|| {
                n = (n + 1) % count;
                match e.get_cached(&cas_key(n)).unwrap() {
                    Cached::Read(blob) => black_box(blob.unwrap()),
                    Cached::OnDisk => panic!("a blob just written is on disk"),
                };
            });
        });
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("contains_hit", name), |b| {
            b.iter(|| {
                n = (n + 1) % count;
                black_box(e.contains(&cas_key(n)).unwrap());
            });
        });
        // FindMissingBlobs-style batches of 1000, walking through every stored key.
        let all: Vec<Key> = (0..count).map(cas_key).collect();
        let batch = 1000.min(all.len());
        let mut at = 0usize;
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(BenchmarkId::new("contains_many_hit_x1000", name), |b| {
            b.iter(|| {
                at = (at + batch) % (all.len() - batch + 1);
                black_box(e.contains_many(&all[at..at + batch]).unwrap());
            });
        });
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("contains_miss", name), |b| {
            b.iter(|| {
                n += 1;
                black_box(e.contains(&cas_key(u64::MAX - n)).unwrap());
            });
        });
    }
    g.finish();
}

fn entry(k: Key) -> Entry {
    Entry {
        key: k,
        kind: RecordKind::Blob,
        epoch: 1,
        seq: 1,
        off: 0,
        len: 1,
        span: 0,
    }
}

fn index_two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("storage_index_2threads");
    let dir = tempfile::tempdir().unwrap();
    let per_thread = 200_000u64;
    g.throughput(Throughput::Elements(2 * per_thread));
    g.sample_size(10);
    g.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (ix, _) = Index::open(&dir.path().join("ix"), 1 << 20, 16).unwrap();
                let t = Instant::now();
                std::thread::scope(|s| {
                    for th in 0..2u64 {
                        let ix = &ix;
                        s.spawn(move || {
                            for n in 0..per_thread {
                                ix.insert(&entry(cas_key(th << 40 | n)), |_| true);
                            }
                        });
                    }
                });
                total += t.elapsed();
                drop(ix);
                std::fs::remove_file(dir.path().join("ix")).unwrap();
            }
            total
        });
    });
    let (ix, _) = Index::open(&dir.path().join("ix2"), 1 << 20, 16).unwrap();
    for n in 0..2 * per_thread {
        ix.insert(&entry(cas_key(n)), |_| true);
    }
    g.bench_function("lookup_hit", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                std::thread::scope(|s| {
                    for th in 0..2u64 {
                        let ix = &ix;
                        s.spawn(move || {
                            for n in 0..per_thread {
                                black_box(ix.lookup(&cas_key(th * per_thread + n), |_| true));
                            }
                        });
                    }
                });
            }
            t.elapsed()
        });
    });
    g.finish();
}

fn reopen(c: &mut Criterion) {
    let mut g = c.benchmark_group("storage_reopen");
    g.sample_size(10);
    for (entries_wanted, name) in [
        (1_000_000u64, "open_1M_entries"),
        (10_000_000, "open_10M_entries"),
    ] {
        reopen_at(&mut g, entries_wanted, name);
    }
    g.finish();
}

fn reopen_at(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    entries_wanted: u64,
    name: &str,
) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mut conf = cfg(dir.path(), PERIODIC);
    conf.index_slots = 2 * entries_wanted;
    conf.max_batch_bytes = 4 << 20;
    // 10M records of 128 bytes need 1.28 GB of segments.
    conf.capacity_bytes = conf.capacity_bytes.max(entries_wanted * 256);
    {
        let engine = Engine::open(conf.clone()).unwrap();
        rt.block_on(async {
            for batch in 0..entries_wanted / 20_000 {
                let items = (batch * 20_000..(batch + 1) * 20_000)
                    .map(|i| (cas_key(i), Bytes::copy_from_slice(&i.to_le_bytes())))
                    .collect();
                engine.put_many(items).await.unwrap();
            }
        });
        let index_bytes = std::fs::metadata(dir.path().join("index")).unwrap().len();
        let entries = engine.count_entries();
        eprintln!(
            "memory per entry: index file {index_bytes} B / {entries} entries = {:.1} B (slot 64 B, load {:.2}); no per-entry heap",
            index_bytes as f64 / entries as f64,
            entries as f64 / conf.index_slots as f64
        );
    }
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let engine = Engine::open(conf.clone()).unwrap();
                total += t.elapsed();
                assert!(engine.contains(&cas_key(5)).unwrap());
                assert_eq!(engine.stats().replayed, 0, "a clean reopen replays nothing");
                drop(engine);
            }
            total
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = put, put_durable, get_contains, index_two_threads, reopen
}
criterion_main!(benches);
