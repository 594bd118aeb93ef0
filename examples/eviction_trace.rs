//! Replays a seeded access trace against the storage engine at several store sizes, with
//! kiln's eviction policy (copy-forward of blobs touched within the horizon) and with plain
//! FIFO (`copy_forward = false`), and prints the hit ratio and the write amplification of the
//! copies as a Markdown table (tuning/RESULTS.md, "Eviction policy").
//!
//! ```text
//! cargo run --release --example eviction_trace -- [--seed N] [--dir PATH]
//! ```
//!
//! The trace, in "days" of a team's cache:
//! * hot: `HOT` blobs (toolchains, base layers) read by every daily build;
//! * weekly: `WEEKLY` blobs read by the weekly release build only (every 7th day);
//! * one-off: `ONE_OFF` new blobs uploaded by every daily build and never read again;
//! * the order of reads and uploads within a day is shuffled from the seed.
//!
//! A read is `contains` (FindMissingBlobs) then `get`; a miss uploads the blob again (what a
//! client does). The hit ratio counts reads of hot and weekly blobs after their first
//! upload. All blobs are `BLOB` bytes; keys need not be SHA-256 (the storage layer does not
//! hash). Durability is periodic (the trace measures the policy, not the disk). Policies:
//! FIFO, kiln's defaults (horizon half the ring, budget a quarter segment), and kiln with the
//! budget raised to half a segment.

use bytes::Bytes;
use kiln::storage::{Durability, Engine, EngineConfig, Key, Store};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const BLOB: usize = 16 << 10;
const SEGMENT: u64 = 4 * MIB;
const HOT: u64 = 300;
const WEEKLY: u64 = 1000;
const ONE_OFF: u64 = 1500;
const DAYS: u64 = 35;
const SIZES_MIB: [u64; 6] = [64, 96, 128, 192, 256, 384];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Clone, Copy)]
enum Op {
    Read(Key),
    Upload(Key),
}

fn key(kind: u8, n: u64) -> Key {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id[31] = kind;
    Key::new(Key::SPACE_CAS, id)
}

/// The whole trace: one list of operations per day.
fn trace(seed: u64) -> Vec<Vec<Op>> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut one_off = 0u64;
    (0..DAYS)
        .map(|day| {
            let mut ops: Vec<Op> = (0..HOT).map(|n| Op::Read(key(1, n))).collect();
            if day % 7 == 6 {
                ops.extend((0..WEEKLY).map(|n| Op::Read(key(2, n))));
            }
            ops.extend((0..ONE_OFF).map(|_| {
                one_off += 1;
                Op::Upload(key(3, one_off))
            }));
            // Fisher-Yates from the seed.
            for i in (1..ops.len()).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                ops.swap(i, j);
            }
            ops
        })
        .collect()
}

#[derive(Default)]
struct Outcome {
    reads: u64,
    hits: u64,
    hot_hits: u64,
    hot_reads: u64,
    weekly_hits: u64,
    weekly_reads: u64,
    uploaded: u64,
    copied: u64,
    cuts: u64,
}

fn run(dir: &Path, capacity: u64, copy_forward: bool, budget: u64, days: &[Vec<Op>]) -> Outcome {
    let _ = std::fs::remove_dir_all(dir);
    let mut c = EngineConfig::new(dir);
    c.segment_size = SEGMENT;
    c.capacity_bytes = capacity;
    c.max_blob_size = capacity / 4;
    c.part_size = MIB;
    c.index_slots = 1 << 16;
    c.copy_forward = copy_forward;
    c.copy_forward_budget = budget;
    c.durability = Durability::Periodic {
        interval: Duration::from_secs(1),
    };
    let e = Engine::open(c).expect("open the store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let data = Bytes::from(vec![0x42u8; BLOB]);
    let mut seen = std::collections::HashSet::new();
    let mut out = Outcome::default();
    let mut pending: Vec<(Key, Bytes)> = Vec::new();
    for ops in days {
        for op in ops {
            match *op {
                Op::Upload(k) => pending.push((k, data.clone())),
                Op::Read(k) => {
                    let first = seen.insert(k);
                    let hit = e.contains(&k).expect("contains")
                        && e.get(&k)
                            .expect("get")
                            .is_some_and(|b| b.len() == BLOB as u64);
                    if !first {
                        out.reads += 1;
                        out.hits += u64::from(hit);
                        if k.id[31] == 1 {
                            out.hot_reads += 1;
                            out.hot_hits += u64::from(hit);
                        } else {
                            out.weekly_reads += 1;
                            out.weekly_hits += u64::from(hit);
                        }
                    }
                    if !hit {
                        pending.push((k, data.clone()));
                    }
                }
            }
            if pending.len() >= 64 {
                out.uploaded += pending.len() as u64 * BLOB as u64;
                rt.block_on(e.put_many(std::mem::take(&mut pending)))
                    .expect("upload");
            }
        }
    }
    out.uploaded += pending.len() as u64 * BLOB as u64;
    rt.block_on(e.put_many(pending)).expect("upload");
    let s = e.stats();
    out.copied = s.copy_forward_bytes;
    out.cuts = s.copy_forward_budget_cuts;
    out
}

fn pct(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * a as f64 / b as f64)
    }
}

fn main() {
    let mut seed = 1u64;
    let mut dir = std::env::temp_dir().join("kiln-eviction-trace");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--seed", Some(v)) => seed = v.parse().expect("--seed N"),
            ("--dir", Some(v)) => dir = PathBuf::from(v),
            _ => {
                eprintln!("usage: eviction_trace [--seed N] [--dir PATH]");
                std::process::exit(2);
            }
        }
    }
    let days = trace(seed);
    let per_day = (HOT + ONE_OFF) * BLOB as u64 / MIB;
    println!(
        "seed {seed}: {DAYS} days; daily {HOT} hot reads + {ONE_OFF} one-off uploads of {} KiB \
         (~{per_day} MiB/day of uploads), weekly {WEEKLY} reads; segments of {} MiB\n",
        BLOB >> 10,
        SEGMENT / MIB
    );
    println!(
        "| store | policy | hit ratio | hot | weekly | copied / uploaded | budget cuts |\n|---|---|---|---|---|---|---|"
    );
    for mib in SIZES_MIB {
        let policies = [
            ("FIFO", false, 0),
            ("kiln", true, 0),
            ("kiln, budget 1/2 segment", true, SEGMENT / 2),
        ];
        for (name, cf, budget) in policies {
            let o = run(&dir, mib * MIB, cf, budget, &days);
            println!(
                "| {mib} MiB | {name} | {} | {} | {} | {} | {} |",
                pct(o.hits, o.reads),
                pct(o.hot_hits, o.hot_reads),
                pct(o.weekly_hits, o.weekly_reads),
                pct(o.copied, o.uploaded),
                o.cuts
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
