//! SplitBlob and SpliceBlob (REAPI v2.12) through tonic: Capabilities advertises FastCDC 2020,
//! similar blobs share chunks, a split's chunks reassemble the blob, and a splice stores a blob
//! only when its chunks are all present and hash to the requested digest.

mod common;

use bytes::Bytes;
use common::{TestServer, bytes, digest, upload_request};
use kiln::digest::Digest;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest as PDigest, FindMissingBlobsRequest,
    GetCapabilitiesRequest, SpliceBlobRequest, SplitBlobRequest, chunking_function,
};
use std::collections::HashSet;
use tonic::Code;
use tonic::transport::Channel;

type Cas = ContentAddressableStorageClient<Channel>;

async fn start() -> TestServer {
    TestServer::start_with(|c| {
        // Two 64 MiB blobs and their chunks.
        c.storage.capacity_bytes = 768 << 20;
    })
    .await
}

/// Uploads one blob through ByteStream in 1 MiB messages.
async fn upload_large(s: &TestServer, data: &[u8]) -> Digest {
    let d = digest(data);
    let name = common::upload_name(&d);
    let reqs = common::write_requests(&name, data, 0, 1 << 20, true);
    let resp = s
        .bytestream()
        .await
        .write(futures::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.committed_size, data.len() as i64);
    d
}

async fn split(cas: &mut Cas, d: &Digest) -> Result<Vec<PDigest>, tonic::Status> {
    let resp = cas
        .split_blob(SplitBlobRequest {
            blob_digest: Some(d.to_proto()),
            chunking_function: chunking_function::Value::FastCdc2020 as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        resp.chunking_function,
        chunking_function::Value::FastCdc2020 as i32
    );
    Ok(resp.chunk_digests)
}

async fn read_one(cas: &mut Cas, d: &PDigest) -> Bytes {
    let mut resp = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![d.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = resp.responses.pop().unwrap();
    assert_eq!(r.status.unwrap().code, 0, "chunk {d:?} readable");
    r.data
}

async fn is_missing(cas: &mut Cas, d: &PDigest) -> bool {
    !cas.find_missing_blobs(FindMissingBlobsRequest {
        blob_digests: vec![d.clone()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .missing_blob_digests
    .is_empty()
}

fn splice_req(blob: &PDigest, chunks: &[PDigest]) -> SpliceBlobRequest {
    SpliceBlobRequest {
        blob_digest: Some(blob.clone()),
        chunk_digests: chunks.to_vec(),
        chunking_function: chunking_function::Value::FastCdc2020 as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn capabilities_advertise_split_splice_and_fast_cdc_2020() {
    let s = TestServer::start().await;
    let cache = s
        .capabilities()
        .await
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cache_capabilities
        .unwrap();
    assert!(cache.split_blob_support);
    assert!(cache.splice_blob_support);
    let params = cache.fast_cdc_2020_params.expect("FastCDC 2020 advertised");
    // The spec's recommended values; it requires a power of two between 1 KiB and 1 MiB.
    assert_eq!(params.avg_chunk_size_bytes, 512 << 10);
    assert_eq!(params.seed, 0);
}

#[tokio::test]
async fn similar_large_blobs_share_all_but_a_few_chunks() {
    let s = start().await;
    let mut cas = s.cas().await;
    let a = bytes(64 << 20, 1);
    let mut b = a.clone();
    // A few KiB changed in the middle.
    b[(30 << 20)..(30 << 20) + 4096].copy_from_slice(&bytes(4096, 2));
    let da = upload_large(&s, &a).await;
    let db = upload_large(&s, &b).await;

    let chunks_a = split(&mut cas, &da).await.unwrap();
    assert!(
        chunks_a.len() >= 64,
        "64 MiB at a 512 KiB average: {} chunks",
        chunks_a.len()
    );
    // The chunks are in the CAS and concatenate to the blob.
    let mut joined = Vec::with_capacity(a.len());
    for c in &chunks_a {
        let data = read_one(&mut cas, c).await;
        assert_eq!(data.len() as i64, c.size_bytes);
        joined.extend_from_slice(&data);
    }
    assert!(joined == a, "the chunks of a reassemble a");

    let chunks_b = split(&mut cas, &db).await.unwrap();
    let in_a: HashSet<&PDigest> = chunks_a.iter().collect();
    let new: Vec<&PDigest> = chunks_b.iter().filter(|c| !in_a.contains(c)).collect();
    assert!(
        !new.is_empty() && new.len() <= 3,
        "{} of b's {} chunks are not a's",
        new.len(),
        chunks_b.len()
    );
    let total: i64 = chunks_b.iter().map(|c| c.size_bytes).sum();
    assert_eq!(total, b.len() as i64);

    // A second split answers the same list (from the stored chunk list).
    assert_eq!(split(&mut cas, &da).await.unwrap(), chunks_a);
}

#[tokio::test]
async fn split_of_a_missing_blob_is_not_found() {
    let s = TestServer::start().await;
    let mut cas = s.cas().await;
    let err = split(&mut cas, &digest(b"never stored")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("not found"), "{}", err.message());
}

#[tokio::test]
async fn splice_checks_every_chunk_and_the_digest_before_storing() {
    let s = TestServer::start().await;
    let mut cas = s.cas().await;
    let parts: Vec<Vec<u8>> = (0..3)
        .map(|i| bytes(100_000 + i * 7, 10 + i as u64))
        .collect();
    s.cas()
        .await
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: parts.iter().map(|p| upload_request(p)).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let chunk: Vec<PDigest> = parts.iter().map(|p| digest(p).to_proto()).collect();
    let whole = parts.concat();
    let blob = digest(&whole).to_proto();

    // Chunks in the wrong order: right size, wrong hash.
    let err = cas
        .splice_blob(splice_req(
            &blob,
            &[chunk[1].clone(), chunk[0].clone(), chunk[2].clone()],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("concatenate"), "{}", err.message());
    assert!(is_missing(&mut cas, &blob).await, "nothing stored");

    // A chunk the CAS does not hold.
    let absent = digest(b"not uploaded").to_proto();
    let with_absent = [&parts[0][..], b"not uploaded"].concat();
    let err = cas
        .splice_blob(splice_req(
            &digest(&with_absent).to_proto(),
            &[chunk[0].clone(), absent],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("not in the CAS"),
        "{}",
        err.message()
    );
    assert!(is_missing(&mut cas, &digest(&with_absent).to_proto()).await);

    // Chunks that do not add up to the blob's size.
    let err = cas
        .splice_blob(splice_req(&blob, &chunk[..2]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("total"), "{}", err.message());
    assert!(is_missing(&mut cas, &blob).await);

    // Declared sizes are checked before anything is read: past the max blob size, and sizes
    // that overflow.
    let huge = PDigest {
        hash: blob.hash.clone(),
        size_bytes: 1 << 40,
    };
    let fake = PDigest {
        hash: chunk[0].hash.clone(),
        size_bytes: 1 << 39,
    };
    let err = cas
        .splice_blob(splice_req(&huge, &[fake.clone(), fake.clone()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("max blob size"), "{}", err.message());
    let max = PDigest {
        hash: chunk[0].hash.clone(),
        size_bytes: i64::MAX,
    };
    let err = cas
        .splice_blob(splice_req(&huge, &[max.clone(), max]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // The right list stores the blob.
    let resp = cas
        .splice_blob(splice_req(&blob, &chunk))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.blob_digest.as_ref(), Some(&blob));
    assert!(!is_missing(&mut cas, &blob).await);
    assert!(read_one(&mut cas, &blob).await == whole);
    // Splicing it again is a no-op.
    cas.splice_blob(splice_req(&blob, &chunk)).await.unwrap();
}
