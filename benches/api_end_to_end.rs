//! One end-to-end path through gRPC: FindMissingBlobs, then ByteStream write and read of a
//! blob, against an in-process server built by `kiln::setup::Prepared` on 127.0.0.1:0.
//! (Engine put/get/contains, index contention and reopen benches belong to the storage
//! engine; this one measures the front end plus whatever store `setup` opens.)
// Criterion's `b.iter(|| expr)` closures read better without a trailing `;` in the callers.
#![allow(clippy::semicolon_if_nothing_returned)]

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use kiln::config::Config;
use kiln::digest::DigestFunction;
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::bytestream::{ReadRequest, WriteRequest};
use kiln::proto::reapi::FindMissingBlobsRequest;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::setup::Prepared;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::transport::Channel;

fn blob(n: u64, size: usize) -> Bytes {
    let mut v = vec![0u8; size];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (i as u64 ^ n.wrapping_mul(0x9e37_79b9)) as u8;
    }
    v[..8].copy_from_slice(&n.to_le_bytes());
    v.into()
}

async fn write(bs: &mut ByteStreamClient<Channel>, data: Bytes) {
    let d = DigestFunction::Sha256.digest_of(&data);
    let name = format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash_hex(),
        d.size
    );
    let chunk = 64 << 10;
    let n = data.len().div_ceil(chunk).max(1);
    let reqs: Vec<WriteRequest> = (0..n)
        .map(|i| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * chunk) as i64,
            finish_write: i + 1 == n,
            data: data.slice(i * chunk..((i + 1) * chunk).min(data.len())),
        })
        .collect();
    let r = bs.write(futures::stream::iter(reqs)).await.unwrap();
    assert_eq!(r.into_inner().committed_size, data.len() as i64);
}

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (channel, _stop) = rt.block_on(async {
        let mut config = Config::default();
        config.server.listen = vec!["127.0.0.1:0".into()];
        config.server.metrics_listen = String::new();
        // A 1 GiB ring: large enough for the blobs written here, cheap to set up.
        config.storage.capacity_bytes = 1 << 30;
        config.storage.segment_size_bytes = 64 << 20;
        config.storage.max_blob_size_bytes = 256 << 20;
        config.server.data_dir = dir.path().to_path_buf();
        let prepared = Prepared::new(&config).await.unwrap();
        let addr = prepared.tcp_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(prepared.run(async move {
            let _ = stopped.await;
        }));
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        (ch, stop)
    });
    let cas = ContentAddressableStorageClient::new(channel.clone());
    let bs = ByteStreamClient::new(channel);
    let mut g = c.benchmark_group("end_to_end");

    // FindMissingBlobs of 1000 digests, half of them present.
    let present: Vec<_> = rt.block_on(async {
        let mut bs = bs.clone();
        let mut out = Vec::new();
        for n in 0..500 {
            let b = blob(1_000_000 + n, 256);
            out.push(DigestFunction::Sha256.digest_of(&b).to_proto());
            write(&mut bs, b).await;
        }
        out
    });
    let mut digests = present.clone();
    digests.extend((0..500u64).map(|n| {
        DigestFunction::Sha256
            .digest_of(&n.to_be_bytes())
            .to_proto()
    }));
    g.throughput(Throughput::Elements(1000));
    g.bench_function("find_missing_1000", |b| {
        b.to_async(&rt).iter(|| {
            let mut cas = cas.clone();
            let digests = digests.clone();
            async move {
                let r = cas
                    .find_missing_blobs(FindMissingBlobsRequest {
                        instance_name: String::new(),
                        blob_digests: digests,
                        digest_function: 0,
                    })
                    .await
                    .unwrap();
                assert_eq!(r.into_inner().missing_blob_digests.len(), 500);
            }
        })
    });

    let next = AtomicU64::new(0);
    for size in [4usize << 10, 1 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::new("bytestream_write", size),
            &size,
            |b, &size| {
                b.to_async(&rt).iter(|| {
                    let mut bs = bs.clone();
                    let data = blob(next.fetch_add(1, Ordering::Relaxed), size);
                    async move { write(&mut bs, data).await }
                })
            },
        );
        let data = blob(u64::MAX - size as u64, size);
        let d = DigestFunction::Sha256.digest_of(&data);
        rt.block_on(write(&mut bs.clone(), data.clone()));
        let name = format!("blobs/{}/{}", d.hash_hex(), d.size);
        g.bench_with_input(BenchmarkId::new("bytestream_read", size), &size, |b, _| {
            b.to_async(&rt).iter(|| {
                let mut bs = bs.clone();
                let name = name.clone();
                let data = data.clone();
                async move {
                    let mut s = bs
                        .read(ReadRequest {
                            resource_name: name,
                            read_offset: 0,
                            read_limit: 0,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let mut got = Vec::with_capacity(data.len());
                    while let Some(m) = s.next().await {
                        got.extend_from_slice(&m.unwrap().data);
                    }
                    assert!(got == data, "read returned different bytes");
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
