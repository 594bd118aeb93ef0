//! Black-box tests of ByteStream: reads with offsets and limits, streamed and resumable writes,
//! compression, early completion, concurrency and malformed resource names.

mod common;

use bytes::Bytes;
use common::{TestServer, bytes, digest, write_requests as requests};
use kiln::digest::Digest;
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest, WriteResponse};
use tonic::transport::Channel;
use tonic::{Code, Status};

fn read_name(d: &Digest) -> String {
    format!("main/blobs/{}/{}", d.hash_hex(), d.size)
}

/// A read of `limit` bytes (0: to the end) from `offset`.
fn read_range(d: &Digest, offset: i64, limit: i64) -> ReadRequest {
    ReadRequest {
        resource_name: read_name(d),
        read_offset: offset,
        read_limit: limit,
    }
}

/// A read of a whole blob.
fn read_whole(d: &Digest) -> ReadRequest {
    ReadRequest {
        resource_name: read_name(d),
        ..Default::default()
    }
}

fn write_name(d: &Digest, id: &str) -> String {
    format!("main/uploads/{id}/blobs/{}/{}", d.hash_hex(), d.size)
}

async fn write(
    bs: &mut ByteStreamClient<Channel>,
    reqs: Vec<WriteRequest>,
) -> Result<WriteResponse, Status> {
    bs.write(futures::stream::iter(reqs))
        .await
        .map(tonic::Response::into_inner)
}

async fn read_all(bs: &mut ByteStreamClient<Channel>, req: ReadRequest) -> Result<Vec<u8>, Status> {
    let mut stream = bs.read(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

#[tokio::test]
async fn write_then_read_with_offsets_and_limits() {
    let s = TestServer::start().await;
    let mut bs = s.bytestream().await;
    let data = bytes(3 << 20, 7);
    let d = digest(&data);
    let resp = write(
        &mut bs,
        requests(&write_name(&d, "u1"), &data, 0, 100_000, true),
    )
    .await
    .unwrap();
    assert_eq!(resp.committed_size, data.len() as i64);

    let whole = read_all(&mut bs, read_whole(&d)).await.unwrap();
    assert_eq!(whole, data);
    let part = read_all(&mut bs, read_range(&d, 1000, 5000)).await.unwrap();
    assert_eq!(part, &data[1000..6000]);
    let tail = read_all(&mut bs, read_range(&d, data.len() as i64, 0))
        .await
        .unwrap();
    assert!(tail.is_empty());

    let past = read_all(&mut bs, read_range(&d, data.len() as i64 + 1, 0))
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange);
    let neg = read_all(&mut bs, read_range(&d, -1, 0)).await.unwrap_err();
    assert_eq!(neg.code(), Code::OutOfRange);
    let neg = read_all(&mut bs, read_range(&d, 0, -1)).await.unwrap_err();
    assert_eq!(neg.code(), Code::InvalidArgument);
    let missing = digest(b"missing");
    let err = read_all(&mut bs, read_whole(&missing)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The empty blob is always readable.
    let empty = read_all(&mut bs, read_whole(&digest(b""))).await.unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn mismatched_or_oversized_uploads_are_rejected_and_not_stored() {
    let s = TestServer::start().await;
    let mut bs = s.bytestream().await;
    let data = bytes(200_000, 8);
    let claimed = digest(&bytes(200_000, 9));
    let err = write(
        &mut bs,
        requests(&write_name(&claimed, "bad"), &data, 0, 65536, true),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("does not match"),
        "{}",
        err.message()
    );
    let err = read_all(&mut bs, read_whole(&claimed)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // More bytes than the size in the name.
    let small = digest(&data[..1000]);
    let err = write(
        &mut bs,
        requests(&write_name(&small, "big"), &data[..2000], 0, 500, true),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Fewer bytes than declared, then finish_write.
    let err = write(
        &mut bs,
        requests(&write_name(&small, "short"), &data[..999], 0, 500, true),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Offset that does not continue the upload.
    let mut reqs = requests(&write_name(&small, "gap"), &data[..1000], 0, 400, true);
    reqs[1].write_offset += 10;
    let err = write(&mut bs, reqs).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("write_offset"), "{}", err.message());
    // Larger than the configured maximum.
    let s2 = TestServer::start_with(|c| c.storage.max_blob_size_bytes = 1000).await;
    let mut bs2 = s2.bytestream().await;
    let err = write(
        &mut bs2,
        requests(
            &write_name(&digest(&data[..1001]), "max"),
            &data[..1001],
            0,
            500,
            true,
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_cas_blob_size_bytes"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn malformed_resource_names() {
    let s = TestServer::start().await;
    let mut bs = s.bytestream().await;
    let d = digest(b"x");
    let h = d.hash_hex();
    for name in [
        String::new(),
        format!("blobs/{h}"),
        format!("blobs/{h}/1/extra"),
        format!("blobs/{}/1", &h[2..]),
        format!("blobs/{h}/-1"),
        format!("actions/blobs/{h}/1"),
        format!("compressed-blobs/lz4/{h}/1"),
        format!("a//blobs/{h}/1"),
    ] {
        let err = read_all(
            &mut bs,
            ReadRequest {
                resource_name: name.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}");
        assert!(!err.message().is_empty());
    }
    for name in [
        format!("blobs/{h}/1"),
        format!("uploads/blobs/{h}/1"),
        format!("uploads/u/blobs/{h}"),
    ] {
        let err = write(&mut bs, requests(&name, b"x", 0, 1, true))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}");
    }
    let err = write(
        &mut bs,
        vec![WriteRequest {
            data: Bytes::from_static(b"x"),
            ..Default::default()
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = bs
        .query_write_status(QueryWriteStatusRequest {
            resource_name: "junk".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn interrupted_upload_resumes_from_committed_size() {
    let s = TestServer::start().await;
    let mut bs = s.bytestream().await;
    let part = s.config.storage.part_size_bytes as usize;
    let data = bytes(3 * part, 10);
    let d = digest(&data);
    let name = write_name(&d, "resume-1");
    // First attempt: half the data, then the client half-closes without finish_write.
    let half = data.len() / 2;
    let err = write(&mut bs, requests(&name, &data[..half], 0, 65536, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let st = bs
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // The upload was parked: cut back to the whole parts on disk, its buffer freed.
    let kept = half / part * part;
    assert_eq!((st.committed_size, st.complete), (kept as i64, false));
    // Resume from the committed size.
    let resp = write(&mut bs, requests(&name, &data, kept, 65536, true))
        .await
        .unwrap();
    assert_eq!(resp.committed_size, data.len() as i64);
    let st = bs
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((st.committed_size, st.complete), (data.len() as i64, true));
    assert_eq!(read_all(&mut bs, read_whole(&d)).await.unwrap(), data);
    // Resuming an upload that does not exist is refused with a clear message.
    let other = digest(b"other");
    let err = write(
        &mut bs,
        requests(&write_name(&other, "nope"), b"other", 2, 10, true),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn existing_blob_completes_early() {
    let s = TestServer::start().await;
    let mut bs = s.bytestream().await;
    let data = bytes(500_000, 11);
    let d = digest(&data);
    write(
        &mut bs,
        requests(&write_name(&d, "first"), &data, 0, 65536, true),
    )
    .await
    .unwrap();
    // Second upload: only the first chunk is needed before the server answers.
    let resp = write(
        &mut bs,
        requests(&write_name(&d, "second"), &data[..1000], 0, 1000, false),
    )
    .await
    .unwrap();
    assert_eq!(resp.committed_size, data.len() as i64);
    let cname = format!(
        "main/uploads/third/compressed-blobs/zstd/{}/{}",
        d.hash_hex(),
        d.size
    );
    let resp = write(&mut bs, requests(&cname, b"\x28\xb5", 0, 2, false))
        .await
        .unwrap();
    assert_eq!(
        resp.committed_size, -1,
        "compressed uploads of present blobs report -1"
    );
}

#[tokio::test]
async fn zstd_compressed_write_and_read() {
    let s = TestServer::start().await;
    let mut bs = s.bytestream().await;
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 97) as u8).collect();
    let d = digest(&data);
    let compressed = zstd::bulk::compress(&data, 3).unwrap();
    let name = format!(
        "main/uploads/z1/compressed-blobs/zstd/{}/{}",
        d.hash_hex(),
        d.size
    );
    let resp = write(&mut bs, requests(&name, &compressed, 0, 4096, true))
        .await
        .unwrap();
    assert_eq!(resp.committed_size, compressed.len() as i64);
    let rname = format!("main/compressed-blobs/zstd/{}/{}", d.hash_hex(), d.size);
    let got = read_all(
        &mut bs,
        ReadRequest {
            resource_name: rname.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(zstd::stream::decode_all(&got[..]).unwrap(), data);
    // Offsets address the uncompressed blob (REAPI: "When downloading compressed blobs"):
    // the answer is a zstd stream of the rest of the blob.
    let tail = read_all(
        &mut bs,
        ReadRequest {
            resource_name: rname,
            read_offset: 10,
            read_limit: 0,
        },
    )
    .await
    .unwrap();
    assert_eq!(zstd::stream::decode_all(&tail[..]).unwrap(), data[10..]);
    // Corrupt compressed data is refused.
    let other: Vec<u8> = bytes(10_000, 12);
    let od = digest(&other);
    let name = format!(
        "main/uploads/z2/compressed-blobs/zstd/{}/{}",
        od.hash_hex(),
        od.size
    );
    let err = write(&mut bs, requests(&name, &other, 0, 4096, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn many_clients_uploading_the_same_blob() {
    let s = TestServer::start().await;
    let data = bytes(2 << 20, 13);
    let d = digest(&data);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut bs = s.bytestream().await;
        let reqs = requests(&write_name(&d, &format!("c{i}")), &data, 0, 64 << 10, true);
        tasks.push(tokio::spawn(async move { write(&mut bs, reqs).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().committed_size, data.len() as i64);
    }
    let mut bs = s.bytestream().await;
    assert_eq!(read_all(&mut bs, read_whole(&d)).await.unwrap(), data);
}
