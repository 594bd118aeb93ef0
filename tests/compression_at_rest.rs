//! Compression at rest through the API (`[storage] compression = "zstd"`): identity reads
//! decompress, at any offset; `compressed-blobs/zstd` reads and zstd batch reads send the
//! frames the store holds instead of compressing again; `/metrics` and the status page show
//! stored against logical bytes.
//!
//! How a test tells a stored frame from one compressed for the reply: the store writes its
//! frames with a content checksum (FORMAT.md "Compressed records"), the reply compressor does
//! not, and every stored frame holds one part (1 MiB) of the blob.

mod common;
use bytes::Bytes;
use common::{TestServer, digest, upload_request};
use kiln::config::CompressionName;
use kiln::digest::Digest;
use kiln::proto::reapi::{BatchReadBlobsRequest, BatchUpdateBlobsRequest, compressor};

/// The frames of a zstd stream: (has a content checksum) for each.
fn frames(z: &[u8]) -> Vec<bool> {
    let mut out = Vec::new();
    let mut rest = z;
    while !rest.is_empty() {
        let n = zstd::zstd_safe::find_frame_compressed_size(rest).expect("a whole frame");
        // Frame header descriptor: the byte after the 4-byte magic; bit 2 is the checksum flag.
        out.push(rest[4] & 0b100 != 0);
        rest = &rest[n..];
    }
    out
}

async fn upload(s: &TestServer, data: &[u8]) -> Digest {
    let d = digest(data);
    let mut bs = s.bytestream().await;
    let name = format!("uploads/x/blobs/{}/{}", d.hash_hex(), d.size);
    let reqs = kiln::proto::write_requests(
        name,
        d.size,
        data.chunks(100_000).map(Bytes::copy_from_slice),
    );
    bs.write(futures::stream::iter(reqs.collect::<Vec<_>>()))
        .await
        .unwrap();
    d
}

#[tokio::test]
async fn stored_frames_are_served_and_identity_reads_decompress() {
    let s = TestServer::start_with(|c| c.storage.compression = CompressionName::Zstd).await;
    let big = common::data::text(1, (3 << 20) + 12_345); // 4 parts
    let d = upload(&s, &big).await;
    let mut bs = s.bytestream().await;
    let plain = |d: &Digest| format!("blobs/{}/{}", d.hash_hex(), d.size);
    let zname = |d: &Digest| format!("compressed-blobs/zstd/{}/{}", d.hash_hex(), d.size);
    for off in [
        0usize,
        1,
        (1 << 20) - 1,
        1 << 20,
        (5 << 19) + 3,
        big.len() - 1,
    ] {
        let got = common::read_from(&mut bs, plain(&d), off as i64).await;
        assert!(got == big[off..], "identity read at {off}");
    }
    // Compressed: the four stored frames as they are.
    let z = common::read_from(&mut bs, zname(&d), 0).await;
    assert_eq!(zstd::decode_all(&z[..]).unwrap(), big);
    assert_eq!(frames(&z), vec![true; 4], "the stored frames, one per part");
    assert!(z.len() < big.len() / 5);
    // From inside the second part: that part's rest compressed for the reply, then the
    // stored frames of the third and fourth.
    let off = (1 << 20) + 777;
    let z = common::read_from(&mut bs, zname(&d), off as i64).await;
    assert_eq!(zstd::decode_all(&z[..]).unwrap(), &big[off..]);
    assert_eq!(frames(&z), vec![false, true, true]);

    // A batch: small text compressed at rest comes back as its stored frame; noise is stored
    // as it is and compressed for the reply only.
    let small = common::data::text(2, 8_000);
    let noise = common::bytes(8_000, 3);
    let mut cas = s.cas().await;
    cas.batch_update_blobs(BatchUpdateBlobsRequest {
        requests: vec![upload_request(&small), upload_request(&noise)],
        ..Default::default()
    })
    .await
    .unwrap();
    let resp = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![digest(&small).to_proto(), digest(&noise).to_proto()],
            acceptable_compressors: vec![compressor::Value::Zstd as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = &resp.responses;
    assert_eq!(r[0].compressor, compressor::Value::Zstd as i32);
    assert_eq!(zstd::decode_all(&r[0].data[..]).unwrap(), small);
    assert_eq!(frames(&r[0].data), vec![true]);
    assert_eq!(zstd::decode_all(&r[1].data[..]).unwrap(), noise);
    assert_eq!(frames(&r[1].data), vec![false]);
    // Identity batch reads decompress.
    let resp = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![digest(&small).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses[0].data, small);

    // What the box reports.
    let m = s.http_get("/metrics").await;
    let logical = common::process::metric_value(&m, "kiln_storage_compression_logical_bytes");
    let stored = common::process::metric_value(&m, "kiln_storage_compression_stored_bytes");
    assert_eq!(logical as usize, big.len() + small.len() + noise.len());
    assert!(stored < logical / 3.0, "{stored} of {logical}");
    assert!(common::process::metric_value(&m, "kiln_storage_compressed_records") >= 5.0);
    assert_eq!(
        common::process::metric_value(&m, "kiln_storage_compression_skipped") as u64,
        1
    );
    let status = s.http_get("/status").await;
    assert!(status.contains("stored / logical"), "{status}");
}

#[tokio::test]
async fn compression_off_keeps_sending_one_fresh_frame() {
    // The control: the same reads from a store without compression at rest compress on the
    // fly, so the frame checks above cannot pass by accident.
    let s = TestServer::start().await;
    let big = common::data::text(1, (3 << 20) + 12_345);
    let d = upload(&s, &big).await;
    let mut bs = s.bytestream().await;
    let z = common::read_from(
        &mut bs,
        format!("compressed-blobs/zstd/{}/{}", d.hash_hex(), d.size),
        0,
    )
    .await;
    assert_eq!(zstd::decode_all(&z[..]).unwrap(), big);
    assert_eq!(frames(&z), vec![false]);
    let m = s.http_get("/metrics").await;
    assert_eq!(
        common::process::metric_value(&m, "kiln_storage_compression_logical_bytes") as u64,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_with_pypi_zstandard_decodes_the_stored_frames() {
    let s = TestServer::start_with(|c| c.storage.compression = CompressionName::Zstd).await;
    let stubs = tempfile::tempdir().unwrap();
    let target = s.addr.to_string();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        common::grpcio::run(stubs.path(), &["--client", &target, "zstd"])
            .expect("grpc_clients.py finished within its deadline")
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    // The 3.9 MB text blob came back as its stored frames, one per 1 MiB part.
    let frames: u32 = out
        .split(" frames")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in {out}"));
    assert_eq!(frames, 4, "{out}");
    let m = s.http_get("/metrics").await;
    assert!(
        common::process::metric_value(&m, "kiln_storage_compressed_records") >= 4.0,
        "{m}"
    );
}
