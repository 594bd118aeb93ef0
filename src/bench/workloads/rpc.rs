//! Clients for the target and the RPC helpers the workloads share (standard REAPI only).

use crate::auth::{AuthChannel, Bearer};
use crate::bench::BenchError;
use crate::bench::data::Blob;
use crate::bench::target::MAX_MESSAGE;
use crate::digest::Digest;
use crate::proto::bytestream::ReadRequest;
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::reapi::action_cache_client::ActionCacheClient;
use crate::proto::reapi::batch_update_blobs_request::Request as UpdateEntry;
use crate::proto::reapi::capabilities_client::CapabilitiesClient;
use crate::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::proto::reapi::execution_client::ExecutionClient;
use crate::proto::reapi::{BatchUpdateBlobsRequest, GetCapabilitiesRequest, ServerCapabilities};
use futures::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Bytes per ByteStream write message (Bazel sends 16–64 KiB).
pub const WRITE_CHUNK: usize = 64 << 10;

/// Why one operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The target answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    /// The target answered, but wrongly (wrong bytes, missing entries, wrong sizes).
    #[error("verification failed: {0}")]
    Verify(String),
}

/// Connections to the target, shared round-robin by the workers.
pub struct Clients {
    channels: Vec<Channel>,
    /// The REAPI instance name.
    pub instance: String,
    bearer: Bearer,
    /// Whether seeding writes (`--seeded` turns it off).
    seed_writes: bool,
}

impl Clients {
    /// Wraps open connections.
    pub fn new(channels: Vec<Channel>, instance: String) -> Self {
        assert!(!channels.is_empty(), "at least one connection");
        Self {
            channels,
            instance,
            bearer: Bearer::none(),
            seed_writes: true,
        }
    }

    /// Clients whose seeding writes nothing: the target holds the seed already (`--seeded`).
    #[must_use]
    pub fn without_seed_writes(mut self) -> Self {
        self.seed_writes = false;
        self
    }

    /// Whether seeding writes what it seeds.
    pub fn seed_writes(&self) -> bool {
        self.seed_writes
    }

    /// Sends `bearer`'s `authorization` header on every call (`--token-file`).
    #[must_use]
    pub fn with_bearer(mut self, bearer: Bearer) -> Self {
        self.bearer = bearer;
        self
    }

    fn channel(&self, worker: usize) -> AuthChannel {
        InterceptedService::new(
            self.channels[worker % self.channels.len()].clone(),
            self.bearer.clone(),
        )
    }

    /// CAS client for a worker.
    pub fn cas(&self, worker: usize) -> ContentAddressableStorageClient<AuthChannel> {
        ContentAddressableStorageClient::new(self.channel(worker))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// ByteStream client for a worker.
    pub fn bytestream(&self, worker: usize) -> ByteStreamClient<AuthChannel> {
        ByteStreamClient::new(self.channel(worker))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Action cache client for a worker.
    pub fn ac(&self, worker: usize) -> ActionCacheClient<AuthChannel> {
        ActionCacheClient::new(self.channel(worker))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Execution client for a worker.
    pub fn execution(&self, worker: usize) -> ExecutionClient<AuthChannel> {
        ExecutionClient::new(self.channel(worker))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The target's Capabilities, asked on a worker's connection.
    pub async fn capabilities_on(
        &self,
        worker: usize,
    ) -> Result<ServerCapabilities, tonic::Status> {
        CapabilitiesClient::new(self.channel(worker))
            .get_capabilities(GetCapabilitiesRequest {
                instance_name: self.instance.clone(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    fn prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }

    /// `{instance}/blobs/{hash}/{size}`.
    pub fn read_name(&self, d: &Digest) -> String {
        format!("{}blobs/{}/{}", self.prefix(), d.hash_hex(), d.size)
    }

    /// `{instance}/uploads/{uuid}/blobs/{hash}/{size}`.
    pub fn write_name(&self, d: &Digest) -> String {
        format!(
            "{}uploads/{}/blobs/{}/{}",
            self.prefix(),
            uuid::Uuid::new_v4(),
            d.hash_hex(),
            d.size
        )
    }

    /// Uploads blobs with BatchUpdateBlobs and checks every per-blob status.
    pub async fn batch_upload(
        &self,
        worker: usize,
        blobs: impl IntoIterator<Item = (Digest, bytes::Bytes)>,
    ) -> Result<u64, OpError> {
        let mut total = 0;
        let requests: Vec<UpdateEntry> = blobs
            .into_iter()
            .map(|(d, data)| {
                total += data.len() as u64;
                UpdateEntry {
                    digest: Some(d.to_proto()),
                    data,
                    compressor: 0,
                }
            })
            .collect();
        let n = requests.len();
        let resp = self
            .cas(worker)
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests,
                digest_function: 0,
            })
            .await?
            .into_inner();
        if resp.responses.len() != n {
            return Err(OpError::Verify(format!(
                "BatchUpdateBlobs answered {} of {n} blobs",
                resp.responses.len()
            )));
        }
        for r in &resp.responses {
            if let Some(s) = r.status.as_ref().filter(|s| s.code != 0) {
                return Err(OpError::Verify(format!(
                    "BatchUpdateBlobs entry failed: code {} {}",
                    s.code, s.message
                )));
            }
        }
        Ok(total)
    }

    /// Uploads one blob with a ByteStream Write (zero-copy chunks) and checks committed_size.
    pub async fn bytestream_write(&self, worker: usize, blob: &Blob) -> Result<u64, OpError> {
        let name = self.write_name(&blob.digest);
        let reqs = crate::proto::write_requests(name, blob.digest.size, blob.chunks(WRITE_CHUNK));
        let resp = self
            .bytestream(worker)
            .write(futures::stream::iter(reqs))
            .await?
            .into_inner();
        // A server may answer early with the full size when it already has the blob.
        if resp.committed_size != blob.len() as i64 {
            return Err(OpError::Verify(format!(
                "Write committed_size {} for a {}-byte blob",
                resp.committed_size,
                blob.len()
            )));
        }
        Ok(blob.len())
    }

    /// Reads one blob with ByteStream Read and compares every byte with what was uploaded.
    pub async fn bytestream_read(&self, worker: usize, blob: &Blob) -> Result<u64, OpError> {
        let mut stream = self
            .bytestream(worker)
            .read(ReadRequest {
                resource_name: self.read_name(&blob.digest),
                read_offset: 0,
                read_limit: 0,
            })
            .await?
            .into_inner();
        let mut offset = 0u64;
        while let Some(msg) = stream.next().await {
            let data = msg?.data;
            if !blob.matches_at(offset, &data) {
                return Err(OpError::Verify(format!(
                    "Read of {}: wrong bytes at offset {offset}..{}",
                    blob.digest.hash_hex(),
                    offset + data.len() as u64
                )));
            }
            offset += data.len() as u64;
        }
        if offset != blob.len() {
            return Err(OpError::Verify(format!(
                "Read of {}: {offset} bytes, expected {}",
                blob.digest.hash_hex(),
                blob.len()
            )));
        }
        Ok(offset)
    }
}

/// Turns a seeding failure into a `BenchError`, naming the step.
pub fn seed_error(step: &str) -> impl FnOnce(OpError) -> BenchError + '_ {
    move |e| BenchError::Seed(format!("{step}: {e}"))
}

/// Uploads blobs in batches that fit `max_batch` bytes (seeding, untimed).
pub async fn seed_blobs(clients: &Clients, blobs: &[Blob]) -> Result<(), BenchError> {
    if !clients.seed_writes() {
        return Ok(());
    }
    let max_batch: u64 = 3 << 20;
    let mut batch = Vec::new();
    let mut size = 0;
    for b in blobs {
        if b.len() > max_batch {
            clients
                .bytestream_write(0, b)
                .await
                .map_err(seed_error("seeding large blob"))?;
            continue;
        }
        if size + b.len() > max_batch && !batch.is_empty() {
            clients
                .batch_upload(0, std::mem::take(&mut batch))
                .await
                .map_err(seed_error("seeding blobs"))?;
            size = 0;
        }
        size += b.len();
        batch.push((b.digest, b.to_bytes()));
    }
    if !batch.is_empty() {
        clients
            .batch_upload(0, batch)
            .await
            .map_err(seed_error("seeding blobs"))?;
    }
    Ok(())
}
