//! `kiln verify` finds damaged records, and a damaged blob is never served: it reads as a miss.

mod common;

use bytes::Bytes;
use common::{TestServer, bytes, digest, read_name};
use kiln::proto::bytestream::ReadRequest;
use kiln::proto::reapi::{
    BatchUpdateBlobsRequest, FindMissingBlobsRequest, batch_update_blobs_request,
};
use tonic::Code;

/// Runs `kiln verify` on a stopped server's data.
async fn verify_offline(config: &kiln::config::Config) -> kiln::storage::VerifyReport {
    let config = config.clone();
    tokio::task::spawn_blocking(move || kiln::admin::verify(&config).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn verify_counts_records_and_damage_is_a_miss() {
    let s = TestServer::start().await;
    let blobs: Vec<Vec<u8>> = (0..20).map(|i| bytes(10_000 + i * 100, i as u64)).collect();
    s.upload(&blobs.iter().map(Vec::as_slice).collect::<Vec<_>>())
        .await;
    let config = s.config.clone();
    let data_dir = s.dir.path().to_path_buf();
    // The lock keeps verify away from a live server.
    assert!(kiln::admin::verify(&config).is_err());
    // Stop the server but keep its data directory.
    let mut s = s;
    let server_dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    s.stop().await;
    let report = verify_offline(&config).await;
    assert_eq!(
        report.corrupt_records + report.check_failures,
        0,
        "{}",
        kiln::admin::describe(&report)
    );
    assert!(report.records >= 20, "{}", kiln::admin::describe(&report));

    // Flip one byte inside the payload of the first blob.
    let victim = &blobs[0];
    let needle = &victim[100..132];
    let seg_dir = data_dir.join("store/segments");
    let mut flipped = false;
    for entry in std::fs::read_dir(&seg_dir).unwrap() {
        let path = entry.unwrap().path();
        let mut data = std::fs::read(&path).unwrap();
        if let Some(pos) = data.windows(needle.len()).position(|w| w == needle) {
            data[pos] ^= 0xff;
            std::fs::write(&path, &data).unwrap();
            flipped = true;
            break;
        }
    }
    assert!(flipped, "blob bytes not found in {}", seg_dir.display());
    let report = verify_offline(&config).await;
    assert!(
        report.corrupt_records + report.check_failures >= 1,
        "{}",
        kiln::admin::describe(&report)
    );
    // Real damage: `kiln verify` exits 1, and the entry of the damaged blob is dropped, so
    // the message's promise (clients re-upload it) holds.
    assert_eq!(
        report.dropped_entries,
        1,
        "{}",
        kiln::admin::describe(&report)
    );
    let verdict = kiln::admin::outcome(&report).expect_err("damage must fail verify");
    assert!(verdict.contains("upload them again"), "{verdict}");
    assert_eq!(report.torn_tail_regions, 0);

    // Restart on the same data: the damaged blob is a miss, the others still read back.
    let s2 = TestServer::start_with(|c| *c = config.clone()).await;
    // Before any read: FindMissingBlobs reports the damaged blob missing (verify dropped its
    // entry), so clients re-upload it.
    let missing = s2
        .cas()
        .await
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![digest(victim).to_proto(), digest(&blobs[1]).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![digest(victim).to_proto()]);
    let mut bs = s2.bytestream().await;
    let read = |d: kiln::digest::Digest| ReadRequest {
        resource_name: read_name(&d),
        ..Default::default()
    };
    let err = match bs.read(read(digest(victim))).await {
        Err(e) => e,
        Ok(r) => r
            .into_inner()
            .message()
            .await
            .expect_err("damaged blob must not be served"),
    };
    assert_eq!(err.code(), Code::NotFound);
    let mut stream = bs.read(read(digest(&blobs[1]))).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.extend_from_slice(&m.data);
    }
    assert_eq!(got, blobs[1]);

    // The re-upload is accepted and then served.
    s2.cas()
        .await
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(digest(victim).to_proto()),
                data: Bytes::from(victim.clone()),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stream = bs.read(read(digest(victim))).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.extend_from_slice(&m.data);
    }
    assert_eq!(&got, victim);
    drop(server_dir);
}
