//! Hashing throughput of the two digest functions on one core, at the sizes kiln hashes: a
//! small blob, a 1 MiB upload part and a whole 16 MiB buffer. `kiln bench baseline` reports
//! the 16 MiB figure as the box's limit.
// Criterion's `b.iter(|| expr)` closures read better without a trailing `;` in the callers.
#![allow(clippy::semicolon_if_nothing_returned)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln::digest::DigestFunction;
use std::hint::black_box;

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    for size in [4 << 10, 1 << 20, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i: usize| (i * 31 % 251) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        for f in DigestFunction::ALL {
            g.bench_function(format!("{}/{}KiB", f.name(), size >> 10), |b| {
                b.iter(|| f.digest_of(black_box(&data)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, hashing);
criterion_main!(benches);
