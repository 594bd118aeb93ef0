//! Decoding (and validating) a 10,000-digest FindMissingBlobs request: the largest message a
//! Bazel build sends on every action batch.
// Criterion's `b.iter(|| expr)` closures read better without a trailing `;` in the callers.
#![allow(clippy::semicolon_if_nothing_returned)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln::digest::{Digest, DigestFunction};
use kiln::proto::reapi::FindMissingBlobsRequest;
use prost::Message;
use std::hint::black_box;

fn request(n: usize) -> Vec<u8> {
    let blob_digests = (0..n as u64)
        .map(|i| {
            DigestFunction::Sha256
                .digest_of(&i.to_le_bytes())
                .to_proto()
        })
        .collect();
    FindMissingBlobsRequest {
        instance_name: "main".into(),
        blob_digests,
        digest_function: 0,
    }
    .encode_to_vec()
}

fn decode(c: &mut Criterion) {
    let bytes = request(10_000);
    let mut g = c.benchmark_group("find_missing_request_10k");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("decode", |b| {
        b.iter(|| FindMissingBlobsRequest::decode(black_box(bytes.as_slice())).unwrap())
    });
    g.bench_function("decode_and_validate", |b| {
        b.iter(|| {
            let r = FindMissingBlobsRequest::decode(black_box(bytes.as_slice())).unwrap();
            r.blob_digests
                .iter()
                .map(|d| Digest::from_proto(DigestFunction::Sha256, d))
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        })
    });
    let msg = FindMissingBlobsRequest::decode(bytes.as_slice()).unwrap();
    g.bench_function("encode", |b| b.iter(|| black_box(&msg).encode_to_vec()));
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
