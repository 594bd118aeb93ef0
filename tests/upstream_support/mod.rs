//! Helpers for the upstream-tier tests: two real `kiln serve` processes, the local tier
//! configured with `[upstream]` pointing at the other, and plain REAPI clients.
#![allow(dead_code)]

use crate::common::process::KilnServer;
use kiln::digest::{Digest, DigestFunction};
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::bytestream::{ReadRequest, WriteRequest};
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::batch_update_blobs_request;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    GetActionResultRequest, UpdateActionResultRequest, batch_read_blobs_response,
};
use std::future::Future;
use std::path::Path;
use tonic::Status;
use tonic::transport::Channel;

/// Starts a local tier whose config file has `[upstream]` with `upstream_toml` (the lines
/// after the header).
pub fn start_local(dir: &Path, name: &str, upstream_toml: &str) -> KilnServer {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\n\
             max_blob_size_bytes = 67108864\n[execution]\nenabled = false\n\
             [upstream]\n{upstream_toml}\n"
        ),
    )
    .unwrap();
    KilnServer::start_with(
        &dir.join(format!("{name}-data")),
        &dir.join(format!("{name}.log")),
        &["--config", config.to_str().unwrap()],
    )
}

/// Starts a plain kiln (the upstream) with a small store.
pub fn start_plain(dir: &Path, name: &str) -> KilnServer {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        "[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\n\
         max_blob_size_bytes = 67108864\n[execution]\nenabled = false\n",
    )
    .unwrap();
    KilnServer::start_with(
        &dir.join(format!("{name}-data")),
        &dir.join(format!("{name}.log")),
        &["--config", config.to_str().unwrap()],
    )
}

/// What the client helpers below talk to: a kiln process, or a channel to any other REAPI
/// server (BuildGrid), so one set of helpers serves both.
pub trait Remote {
    /// A channel to the server.
    fn channel(&self) -> impl Future<Output = Channel> + Send;
    /// How a failure names the server.
    fn name(&self) -> String;
}

impl Remote for KilnServer {
    fn channel(&self) -> impl Future<Output = Channel> + Send {
        let endpoint = self.endpoint();
        async move {
            Channel::from_shared(endpoint)
                .unwrap()
                .connect()
                .await
                .unwrap()
        }
    }

    fn name(&self) -> String {
        self.url()
    }
}

impl Remote for Channel {
    fn channel(&self) -> impl Future<Output = Channel> + Send {
        std::future::ready(self.clone())
    }

    fn name(&self) -> String {
        "the server on this channel".into()
    }
}

pub async fn channel(s: &impl Remote) -> Channel {
    s.channel().await
}

pub async fn cas(s: &impl Remote) -> ContentAddressableStorageClient<Channel> {
    ContentAddressableStorageClient::new(channel(s).await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

pub async fn bytestream(s: &impl Remote) -> ByteStreamClient<Channel> {
    ByteStreamClient::new(channel(s).await).max_decoding_message_size(64 << 20)
}

pub async fn ac(s: &impl Remote) -> ActionCacheClient<Channel> {
    ActionCacheClient::new(channel(s).await)
}

pub fn digest(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

/// Deterministic pseudo-random bytes (`common/data.rs`).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    crate::common::data::pseudo_random(seed, len)
}

/// Stores small blobs with one BatchUpdateBlobs, asserting every item is OK.
pub async fn put_batch(s: &impl Remote, blobs: &[&[u8]]) {
    let req = BatchUpdateBlobsRequest {
        requests: blobs
            .iter()
            .map(|b| batch_update_blobs_request::Request {
                digest: Some(digest(b).to_proto()),
                data: bytes::Bytes::copy_from_slice(b),
                compressor: 0,
            })
            .collect(),
        ..Default::default()
    };
    let resp = cas(s)
        .await
        .batch_update_blobs(req)
        .await
        .unwrap()
        .into_inner();
    for r in resp.responses {
        assert_eq!(r.status.unwrap().code, 0, "upload to {}", s.name());
    }
}

/// Stores one blob with a ByteStream Write.
pub async fn put_stream(s: &impl Remote, data: &[u8]) {
    let d = digest(data);
    let name = format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash_hex(),
        d.size
    );
    let mut reqs = Vec::new();
    let mut off = 0usize;
    for piece in data.chunks(1 << 20) {
        reqs.push(WriteRequest {
            resource_name: if off == 0 {
                name.clone()
            } else {
                String::new()
            },
            write_offset: off as i64,
            finish_write: off + piece.len() == data.len(),
            data: bytes::Bytes::copy_from_slice(piece),
        });
        off += piece.len();
    }
    let resp = bytestream(s)
        .await
        .write(futures::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.committed_size, data.len() as i64);
}

/// Reads `[offset, offset+limit)` of a blob with ByteStream (limit 0: to the end).
pub async fn read(s: &impl Remote, d: &Digest, offset: i64, limit: i64) -> Result<Vec<u8>, Status> {
    read_resource(
        s,
        format!("blobs/{}/{}", d.hash_hex(), d.size),
        offset,
        limit,
    )
    .await
}

/// A `compressed-blobs/zstd` ByteStream Read of `d` from uncompressed `offset` on, decompressed
/// (a stream that is not one complete zstd frame fails the test).
pub async fn read_zstd(s: &impl Remote, d: &Digest, offset: i64) -> Result<Vec<u8>, Status> {
    let name = format!("compressed-blobs/zstd/{}/{}", d.hash_hex(), d.size);
    let frame = read_resource(s, name, offset, 0).await?;
    Ok(zstd::stream::decode_all(&frame[..]).expect("a complete zstd frame"))
}

async fn read_resource(
    s: &impl Remote,
    resource_name: String,
    offset: i64,
    limit: i64,
) -> Result<Vec<u8>, Status> {
    let mut stream = bytestream(s)
        .await
        .read(ReadRequest {
            resource_name,
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

/// BatchReadBlobs of `digests` on `s`: one response each, in order.
pub async fn batch_read(
    s: &impl Remote,
    digests: &[Digest],
) -> Vec<batch_read_blobs_response::Response> {
    cas(s)
        .await
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: digests.iter().map(Digest::to_proto).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .responses
}

/// UpdateActionResult: stores `result` for `action` in `s`'s action cache.
pub async fn update_result(
    s: &impl Remote,
    action: &Digest,
    result: &ActionResult,
) -> Result<(), Status> {
    ac(s)
        .await
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            ..Default::default()
        })
        .await
        .map(drop)
}

/// GetActionResult of `action` on `s` (stdout inlined when asked).
pub async fn get_result(
    s: &impl Remote,
    action: &Digest,
    inline_stdout: bool,
) -> Result<ActionResult, Status> {
    ac(s)
        .await
        .get_action_result(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            inline_stdout,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// FindMissingBlobs on `s`.
pub async fn find_missing(s: &impl Remote, digests: &[Digest]) -> Vec<Digest> {
    let resp = cas(s)
        .await
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: digests.iter().map(Digest::to_proto).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    resp.missing_blob_digests
        .iter()
        .map(|d| Digest::from_proto(DigestFunction::Sha256, d).unwrap())
        .collect()
}

/// One series of `s`'s `/metrics` (0 when absent).
pub async fn metric(s: &KilnServer, key: &str) -> f64 {
    let text = kiln::admin::http_get(s.metrics.as_ref().unwrap(), "/metrics")
        .await
        .unwrap();
    crate::common::process::metric_value(&text, key)
}
