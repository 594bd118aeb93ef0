//! Digest parsing: every request field and resource name goes through it.
// Criterion's `b.iter(|| expr)` closures read better without a trailing `;` in the callers.
#![allow(clippy::semicolon_if_nothing_returned)]

use criterion::{Criterion, criterion_group, criterion_main};
use kiln::digest::{Digest, DigestFunction};
use kiln::proto::reapi;
use std::hint::black_box;

const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("digest");
    g.bench_function("parse", |b| {
        b.iter(|| Digest::parse(DigestFunction::Sha256, black_box(HASH), black_box(4096)))
    });
    g.bench_function("parse_str", |b| {
        b.iter(|| Digest::parse_str(DigestFunction::Sha256, black_box(HASH), black_box("4096")))
    });
    let proto = reapi::Digest {
        hash: HASH.into(),
        size_bytes: 4096,
    };
    g.bench_function("from_proto", |b| {
        b.iter(|| Digest::from_proto(DigestFunction::Sha256, black_box(&proto)))
    });
    g.bench_function("reject_bad_hash", |b| {
        b.iter(|| Digest::parse(DigestFunction::Sha256, black_box(&HASH[1..]), 1).is_err())
    });
    let d = Digest::parse(DigestFunction::Sha256, HASH, 4096).unwrap();
    g.bench_function("hash_hex", |b| b.iter(|| black_box(&d).hash_hex()));
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
