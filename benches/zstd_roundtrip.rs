//! zstd round trip as kiln does it for `compressed-blobs/zstd` and batch compressors.
// Criterion's `b.iter(|| expr)` closures read better without a trailing `;` in the callers.
#![allow(clippy::semicolon_if_nothing_returned)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln::cas::compression::{compress, decompress_exact};
use kiln::digest::DigestFunction;
use std::hint::black_box;

/// Text-like data (compresses roughly 3-4x, like source and object files).
fn data(len: usize) -> Vec<u8> {
    let words = [
        "fn ", "let ", "struct ", "impl ", "return ", "0x", "kiln", "(", ");\n", "    ", "{\n",
        "}\n", "digest", "blob", "cas",
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        if (x >> 40) as u8 > 200 {
            out.extend_from_slice(&x.to_le_bytes()[..3]);
        }
    }
    out.truncate(len);
    out
}

fn roundtrip(c: &mut Criterion) {
    let mut g = c.benchmark_group("zstd");
    for size in [4usize << 10, 1 << 20] {
        let input = data(size);
        let digest = DigestFunction::Sha256.digest_of(&input);
        let packed = compress(&input);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("compress", size), &input, |b, i| {
            b.iter(|| compress(black_box(i)))
        });
        g.bench_with_input(
            BenchmarkId::new("decompress_exact", size),
            &packed,
            |b, p| b.iter(|| decompress_exact(black_box(p), &digest).unwrap()),
        );
        g.bench_with_input(BenchmarkId::new("roundtrip", size), &input, |b, i| {
            b.iter(|| decompress_exact(&compress(black_box(i)), &digest).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
