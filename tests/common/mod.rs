//! Test harness: a real kiln server on port 0 with a temp data dir, and clients for it.
#![allow(dead_code)]

pub mod data;
pub mod grpcio;
pub mod http;
pub mod mount;
pub mod pki;
pub mod process;
pub mod wait;

use kiln::config::Config;
use kiln::digest::{Digest, DigestFunction};
use kiln::proto::bytestream::WriteRequest;
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{BatchUpdateBlobsRequest, batch_update_blobs_request};
use kiln::setup::Prepared;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A running in-process server. Dropping it stops the server.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    /// The HTTP cache API's address, when `[http_cache] listen` is set.
    pub http_cache_addr: Option<std::net::SocketAddr>,
    pub config: Config,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// A server with the HTTP cache API on a free port (and `tweak` applied), with that
    /// API's `HOST:PORT`.
    pub async fn with_http_cache(tweak: impl FnOnce(&mut Config)) -> (Self, String) {
        let server = Self::start_with(|c| {
            c.http_cache.listen = "127.0.0.1:0".into();
            tweak(c);
        })
        .await;
        let addr = server
            .http_cache_addr
            .expect("the HTTP cache API listens")
            .to_string();
        (server, addr)
    }

    /// Starts a server with the default config on 127.0.0.1:0.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusts its config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.listen = vec!["127.0.0.1:0".into()];
        config.server.data_dir = dir.path().to_path_buf();
        config.server.metrics_listen = "127.0.0.1:0".into();
        // A small ring keeps many test servers cheap.
        config.storage.capacity_bytes = 256 << 20;
        config.storage.segment_size_bytes = 16 << 20;
        config.storage.max_blob_size_bytes = 64 << 20;
        tweak(&mut config);
        let prepared = Prepared::new(&config).await.expect("server setup");
        let config_copy = config.clone();
        let addr = prepared.tcp_addrs()[0];
        let metrics_addr = prepared.metrics_addr().expect("metrics endpoint enabled");
        let http_cache_addr = prepared.http_cache_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            prepared
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("server run");
        });
        Self {
            addr,
            metrics_addr,
            http_cache_addr,
            config: config_copy,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A fresh connection to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel().await)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    pub async fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel().await)
    }

    pub async fn ac(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel().await)
    }

    pub async fn capabilities(&self) -> CapabilitiesClient<Channel> {
        CapabilitiesClient::new(self.channel().await)
    }

    /// Uploads `blobs` in one BatchUpdateBlobs call and checks that every one was stored.
    pub async fn upload(&self, blobs: &[&[u8]]) {
        let requests = blobs.iter().map(|b| upload_request(b)).collect();
        let resp = self
            .cas()
            .await
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.responses.len(), blobs.len());
        for r in &resp.responses {
            assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
        }
    }

    /// GETs a path of the metrics endpoint and returns the body.
    pub async fn http_get(&self, path: &str) -> String {
        kiln::admin::http_get(&self.metrics_addr.to_string(), path)
            .await
            .unwrap()
    }

    /// One counter of this server's `/metrics` (0 when absent). Counters are exposed as
    /// floats: whole numbers well below 2^53, so exact.
    pub async fn counter(&self, key: &str) -> u64 {
        process::metric_value(&self.http_get("/metrics").await, key) as u64
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The bytes of a ByteStream Read of `name` from `offset` to the end.
pub async fn read_from(
    bs: &mut kiln::proto::bytestream::byte_stream_client::ByteStreamClient<Channel>,
    name: String,
    offset: i64,
) -> Vec<u8> {
    let mut stream = bs
        .read(kiln::proto::bytestream::ReadRequest {
            resource_name: name,
            read_offset: offset,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        out.extend_from_slice(&m.data);
    }
    out
}

/// One BatchUpdateBlobs entry: `data` under its own digest, uncompressed.
pub fn upload_request(data: &[u8]) -> batch_update_blobs_request::Request {
    batch_update_blobs_request::Request {
        digest: Some(digest(data).to_proto()),
        data: ::bytes::Bytes::copy_from_slice(data),
        compressor: 0,
    }
}

/// `blobs/HASH/SIZE`: the ByteStream read name of `d` on the default instance.
pub fn read_name(d: &Digest) -> String {
    format!("blobs/{}/{}", d.hash_hex(), d.size)
}

/// `uploads/UUID/blobs/HASH/SIZE`: a fresh ByteStream upload name for `d`.
pub fn upload_name(d: &Digest) -> String {
    format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash_hex(),
        d.size
    )
}

/// SHA-256 digest of some bytes.
pub fn digest(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes an `[auth]` tokens file under `dir` with one principal per (name, token, rights)
/// and returns its path, for `config.auth.tokens_file`.
pub fn tokens_file(dir: &std::path::Path, principals: &[(&str, &str, &[&str])]) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for (name, token, rights) in principals {
        let _ = write!(
            text,
            "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nrights = {rights:?}\n\n",
            kiln::auth::token_sha256(token)
        );
    }
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// ByteStream Write requests for `data` from `offset` on, in `chunk`-sized pieces (one empty
/// request when nothing is left), the last one finishing the write if `finish`.
pub fn write_requests(
    name: &str,
    data: &[u8],
    offset: usize,
    chunk: usize,
    finish: bool,
) -> Vec<WriteRequest> {
    let mut out: Vec<WriteRequest> = data[offset..]
        .chunks(chunk)
        .scan(offset, |pos, c| {
            let r = WriteRequest {
                resource_name: name.to_string(),
                write_offset: *pos as i64,
                finish_write: false,
                data: bytes::Bytes::copy_from_slice(c),
            };
            *pos += c.len();
            Some(r)
        })
        .collect();
    if out.is_empty() {
        out.push(WriteRequest {
            resource_name: name.into(),
            write_offset: offset as i64,
            ..Default::default()
        });
    }
    if finish {
        out.last_mut().unwrap().finish_write = true;
    }
    out
}
