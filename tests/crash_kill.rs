//! A real crash: `kiln serve` is killed with SIGKILL during concurrent uploads and restarted on
//! the same data directory. Every upload acknowledged before the kill must read back
//! byte-identical (the default durability acknowledges only after fdatasync).

mod common;

use bytes::Bytes;
use common::process::KilnServer;
use common::{bytes, digest};
use kiln::digest::Digest;
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::bytestream::{ReadRequest, WriteRequest};
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    ActionResult, BatchUpdateBlobsRequest, FindMissingBlobsRequest, GetActionResultRequest,
    UpdateActionResultRequest, batch_update_blobs_request,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Clone, Debug)]
enum Acked {
    Blob(Digest, Vec<u8>),
    Action(Digest, ActionResult),
}

async fn connect(server: &KilnServer) -> Channel {
    Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// One uploader: blobs of varied sizes through ByteStream and batches, plus AC entries, until
/// the server goes away.
async fn uploader(channel: Channel, id: u64, acked: Arc<Mutex<Vec<Acked>>>) {
    let mut bs = ByteStreamClient::new(channel.clone());
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let mut ac = ActionCacheClient::new(channel);
    for i in 0u64.. {
        let seed = id * 1_000_000 + i;
        let size = [100usize, 4096, 70_000, 1 << 20][(i % 4) as usize] + (seed % 977) as usize;
        let data = bytes(size, seed);
        let d = digest(&data);
        let ok = if i % 2 == 0 {
            let name = format!("uploads/{id}-{i}/blobs/{}/{}", d.hash_hex(), d.size);
            let reqs: Vec<WriteRequest> = data
                .chunks(64 << 10)
                .enumerate()
                .map(|(n, c)| WriteRequest {
                    resource_name: name.clone(),
                    write_offset: (n * (64 << 10)) as i64,
                    finish_write: (n + 1) * (64 << 10) >= data.len(),
                    data: Bytes::copy_from_slice(c),
                })
                .collect();
            bs.write(futures::stream::iter(reqs)).await.is_ok()
        } else {
            let req = BatchUpdateBlobsRequest {
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(d.to_proto()),
                    data: Bytes::from(data.clone()),
                    compressor: 0,
                }],
                ..Default::default()
            };
            match cas.batch_update_blobs(req).await {
                Ok(r) => r.into_inner().responses[0]
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == 0),
                Err(_) => false,
            }
        };
        if !ok {
            return;
        }
        acked.lock().unwrap().push(Acked::Blob(d, data));
        if i % 3 == 0 {
            let action = digest(format!("action {seed}").as_bytes());
            let result = ActionResult {
                stdout_digest: Some(d.to_proto()),
                exit_code: 0,
                ..Default::default()
            };
            let req = UpdateActionResultRequest {
                action_digest: Some(action.to_proto()),
                action_result: Some(result.clone()),
                ..Default::default()
            };
            if ac.update_action_result(req).await.is_err() {
                return;
            }
            acked.lock().unwrap().push(Acked::Action(action, result));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_uploads_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = KilnServer::start(&data_dir, &dir.path().join("kiln1.log"));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for id in 0..6 {
        tasks.push(tokio::spawn(uploader(
            connect(&server).await,
            id,
            acked.clone(),
        )));
    }
    // Kill once enough uploads were acknowledged (uploads are still in flight then).
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 60 {
        assert!(
            Instant::now() < deadline,
            "uploads too slow: {} acknowledged",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let server = KilnServer::start(&data_dir, &dir.path().join("kiln2.log"));
    let channel = connect(&server).await;
    let mut bs = ByteStreamClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let mut ac = ActionCacheClient::new(channel);
    let digests: Vec<_> = acked
        .iter()
        .filter_map(|a| {
            if let Acked::Blob(d, _) = a {
                Some(d.to_proto())
            } else {
                None
            }
        })
        .collect();
    let missing = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: digests.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged blobs lost: {missing:?}",
        missing.len(),
        digests.len()
    );
    for a in &acked {
        match a {
            Acked::Blob(d, data) => {
                let name = format!("blobs/{}/{}", d.hash_hex(), d.size);
                let mut stream = bs
                    .read(ReadRequest {
                        resource_name: name,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut got = Vec::new();
                while let Some(m) = stream.message().await.unwrap() {
                    got.extend_from_slice(&m.data);
                }
                assert!(got == *data, "blob {d} read back different bytes");
            }
            Acked::Action(action, result) => {
                let got = ac
                    .get_action_result(GetActionResultRequest {
                        action_digest: Some(action.to_proto()),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("acknowledged action {action} lost: {e}"))
                    .into_inner();
                assert_eq!(&got, result);
            }
        }
    }
    eprintln!(
        "{} acknowledged uploads and actions survived SIGKILL",
        acked.len()
    );
}
