//! ByteStream resource-name parsing: once per Read and Write.
// Criterion's `b.iter(|| expr)` closures read better without a trailing `;` in the callers.
#![allow(clippy::semicolon_if_nothing_returned)]

use criterion::{Criterion, criterion_group, criterion_main};
use kiln::api::resource_name::ResourceName;
use std::hint::black_box;

const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn names(c: &mut Criterion) {
    let read = format!("main/blobs/{HASH}/123456");
    let read_zstd = format!("main/compressed-blobs/zstd/{HASH}/123456");
    let write = format!("main/uploads/3f1c7a4e-0b9d-4c49-9a2e-6f1d2b3c4d5e/blobs/{HASH}/123456");
    let write_meta = format!(
        "a/deep/instance/uploads/3f1c7a4e-0b9d-4c49-9a2e-6f1d2b3c4d5e/blobs/{HASH}/123456/some/meta"
    );
    let mut g = c.benchmark_group("resource_name");
    g.bench_function("parse_read", |b| {
        b.iter(|| ResourceName::parse_read(black_box(&read)))
    });
    g.bench_function("parse_read_zstd", |b| {
        b.iter(|| ResourceName::parse_read(black_box(&read_zstd)))
    });
    g.bench_function("parse_write", |b| {
        b.iter(|| ResourceName::parse_write(black_box(&write)))
    });
    g.bench_function("parse_write_metadata", |b| {
        b.iter(|| ResourceName::parse_write(black_box(&write_meta)))
    });
    g.bench_function("reject_malformed", |b| {
        b.iter(|| ResourceName::parse_read(black_box("main/blobs/nothex/12")).is_err())
    });
    g.finish();
}

criterion_group!(benches, names);
criterion_main!(benches);
