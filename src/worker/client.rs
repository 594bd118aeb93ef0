//! The worker's connection to the server (`unix:PATH`, `grpc://` or `grpcs://HOST:PORT`) and the blob
//! transfers it needs: batched reads of small blobs, streamed ByteStream reads into files,
//! FindMissingBlobs + BatchUpdateBlobs / ByteStream writes for outputs.

use super::error::{WorkerError, io, rpc};
use crate::auth::{AuthChannel, Bearer, ClientTls};
use crate::digest::{Digest, DigestFunction};
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::bytestream::{ReadRequest, WriteRequest};
use crate::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    batch_update_blobs_request,
};
use crate::proto::rwapi::bots_client::BotsClient;
use bytes::Bytes;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tonic::transport::{Endpoint, Uri};

/// Blobs up to this size travel in batches; larger ones stream through ByteStream.
pub const BATCH_BLOB_LIMIT: u64 = 1 << 20;
/// Payload per batch call, under the 4 MiB gRPC default every server accepts.
const BATCH_TOTAL_LIMIT: u64 = 3 << 20;
const MAX_MESSAGE: usize = 64 << 20;
const WRITE_CHUNK: usize = 1 << 20;

/// Where bytes of an output come from.
pub enum Source {
    /// In memory (trees, small files).
    Bytes(Bytes),
    /// A file on disk (read when uploaded).
    File(PathBuf),
}

/// Clients for one server connection (HTTP/2 multiplexes them over one socket).
#[derive(Clone)]
pub struct Client {
    /// Bots service.
    pub bots: BotsClient<AuthChannel>,
    cas: ContentAddressableStorageClient<AuthChannel>,
    bytestream: ByteStreamClient<AuthChannel>,
}

/// Connects to `unix:PATH` or `grpc://HOST:PORT` (also `http://`).
pub async fn connect(server: &str) -> Result<Client, WorkerError> {
    connect_with(server, Bearer::none()).await
}

/// Connects, sending `bearer`'s `authorization` header on every call (`--token-file`).
pub async fn connect_with(server: &str, bearer: Bearer) -> Result<Client, WorkerError> {
    connect_tls(server, bearer, &ClientTls::default()).await
}

/// Connects to `unix:PATH`, `grpc://HOST:PORT` or (with `tls`) `grpcs://HOST:PORT`, sending
/// `bearer`'s header on every call.
pub async fn connect_tls(
    server: &str,
    bearer: Bearer,
    tls: &ClientTls,
) -> Result<Client, WorkerError> {
    let fail = |reason: String| WorkerError::Connect {
        server: server.to_string(),
        reason,
    };
    if tls.is_set() && !server.starts_with("grpcs://") {
        return Err(fail(
            "--tls-* options need a grpcs://HOST:PORT server".into(),
        ));
    }
    let channel = if let Some(path) = server.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        Endpoint::try_from("http://localhost")
            .map_err(|e| fail(e.to_string()))?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| fail(e.to_string()))?
    } else if let Some(rest) = server.strip_prefix("grpcs://") {
        let url = format!("https://{rest}");
        let endpoint = Endpoint::try_from(url).map_err(|e| fail(e.to_string()))?;
        let host = endpoint.uri().host().unwrap_or("localhost").to_string();
        let config = tls.config(&host).map_err(|e| fail(e.to_string()))?;
        endpoint
            .tls_config(config)
            .map_err(|e| fail(e.to_string()))?
            .connect()
            .await
            .map_err(|e| fail(format!("{e} ({:?})", std::error::Error::source(&e))))?
    } else {
        let url = server.replacen("grpc://", "http://", 1);
        Endpoint::try_from(url)
            .map_err(|e| fail(e.to_string()))?
            .connect()
            .await
            .map_err(|e| fail(e.to_string()))?
    };
    Ok(Client {
        bots: BotsClient::with_interceptor(channel.clone(), bearer.clone())
            .max_decoding_message_size(MAX_MESSAGE),
        cas: ContentAddressableStorageClient::with_interceptor(channel.clone(), bearer.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        bytestream: ByteStreamClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(MAX_MESSAGE),
    })
}

impl Client {
    /// Reads small blobs in batches. A blob the server lacks is `MissingInput`.
    pub async fn batch_read(
        &self,
        digests: &[Digest],
    ) -> Result<HashMap<Digest, Bytes>, WorkerError> {
        let mut out = HashMap::with_capacity(digests.len());
        let mut cas = self.cas.clone();
        for chunk in batches(digests.iter().map(|d| (d.size, *d))) {
            let function = chunk.first().map_or(DigestFunction::Sha256, |d| d.function);
            let req = BatchReadBlobsRequest {
                digests: chunk.iter().map(Digest::to_proto).collect(),
                digest_function: function.to_proto(),
                ..Default::default()
            };
            let resp = cas
                .batch_read_blobs(req)
                .await
                .map_err(rpc("BatchReadBlobs"))?
                .into_inner();
            for r in resp.responses {
                let d = Digest::from_field(function, r.digest.as_ref(), "digest")?;
                match r.status.as_ref().map_or(0, |s| s.code) {
                    0 => {}
                    5 => return Err(WorkerError::MissingInput(d)),
                    code => {
                        let msg = r.status.map(|s| s.message).unwrap_or_default();
                        return Err(WorkerError::Rpc {
                            call: "BatchReadBlobs",
                            status: tonic::Status::new(code.into(), msg),
                        });
                    }
                }
                if function.digest_of(&r.data) != d {
                    return Err(WorkerError::Invalid {
                        what: "blob",
                        reason: format!("{d}: server sent wrong bytes"),
                    });
                }
                out.insert(d, r.data);
            }
        }
        Ok(out)
    }

    /// Streams one blob into `path` (created), verifying its digest.
    pub async fn read_to_file(&self, digest: &Digest, path: &Path) -> Result<(), WorkerError> {
        let req = ReadRequest {
            resource_name: format!("blobs/{}", digest.resource_path()),
            read_offset: 0,
            read_limit: 0,
        };
        let mut stream = match self.bytestream.clone().read(req).await {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(WorkerError::MissingInput(*digest));
            }
            Err(s) => return Err(rpc("ByteStream.Read")(s)),
        };
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(io(format!("create {}", path.display())))?;
        let mut hasher = digest.function.hasher();
        while let Some(msg) = stream.message().await.map_err(rpc("ByteStream.Read"))? {
            hasher.update(&msg.data);
            file.write_all(&msg.data)
                .await
                .map_err(io(format!("write {}", path.display())))?;
        }
        file.flush()
            .await
            .map_err(io(format!("write {}", path.display())))?;
        if hasher.finish() != *digest {
            return Err(WorkerError::Invalid {
                what: "blob",
                reason: format!("{digest}: server sent wrong bytes"),
            });
        }
        Ok(())
    }

    /// Uploads whatever of `blobs` the server lacks.
    pub async fn upload(&self, mut blobs: Vec<(Digest, Source)>) -> Result<(), WorkerError> {
        // The empty blob is always present; most actions' stderr (and many stdouts) are empty.
        blobs.retain(|(d, _)| !d.is_empty_blob());
        let Some(function) = blobs.first().map(|(d, _)| d.function) else {
            return Ok(());
        };
        let req = FindMissingBlobsRequest {
            blob_digests: blobs.iter().map(|(d, _)| d.to_proto()).collect(),
            digest_function: function.to_proto(),
            ..Default::default()
        };
        let missing = self
            .cas
            .clone()
            .find_missing_blobs(req)
            .await
            .map_err(rpc("FindMissingBlobs"))?
            .into_inner();
        let missing: std::collections::HashSet<String> = missing
            .missing_blob_digests
            .into_iter()
            .map(|d| d.hash)
            .collect();
        let mut small = Vec::new();
        for (d, src) in blobs {
            if !missing.contains(&d.hash_hex()) {
                continue;
            }
            if d.size <= BATCH_BLOB_LIMIT {
                let data = match src {
                    Source::Bytes(b) => b,
                    Source::File(p) => Bytes::from(
                        tokio::fs::read(&p)
                            .await
                            .map_err(io(format!("read {}", p.display())))?,
                    ),
                };
                small.push((d, data));
            } else {
                self.write_stream(&d, src).await?;
            }
        }
        let mut cas = self.cas.clone();
        for chunk in batches(small.into_iter().map(|(d, b)| (d.size, (d, b)))) {
            let req = BatchUpdateBlobsRequest {
                requests: chunk
                    .into_iter()
                    .map(|(d, data)| batch_update_blobs_request::Request {
                        digest: Some(d.to_proto()),
                        data,
                        ..Default::default()
                    })
                    .collect(),
                digest_function: function.to_proto(),
                ..Default::default()
            };
            let resp = cas
                .batch_update_blobs(req)
                .await
                .map_err(rpc("BatchUpdateBlobs"))?
                .into_inner();
            if let Some(s) = resp
                .responses
                .into_iter()
                .filter_map(|r| r.status)
                .find(|s| s.code != 0)
            {
                return Err(WorkerError::Rpc {
                    call: "BatchUpdateBlobs",
                    status: tonic::Status::new(s.code.into(), s.message),
                });
            }
        }
        Ok(())
    }

    async fn write_stream(&self, d: &Digest, src: Source) -> Result<(), WorkerError> {
        let name = format!(
            "uploads/{}/blobs/{}",
            uuid::Uuid::new_v4(),
            d.resource_path()
        );
        let total = d.size as usize;
        let request = move |start: usize, data: Bytes| WriteRequest {
            resource_name: if start == 0 {
                name.clone()
            } else {
                String::new()
            },
            write_offset: start as i64,
            finish_write: start + data.len() == total,
            data,
        };
        match src {
            Source::Bytes(data) => {
                let reqs: Vec<WriteRequest> = (0..total.div_ceil(WRITE_CHUNK).max(1))
                    .map(|i| {
                        let start = i * WRITE_CHUNK;
                        let end = (start + WRITE_CHUNK).min(total);
                        request(start, data.slice(start..end))
                    })
                    .collect();
                self.bytestream
                    .clone()
                    .write(tokio_stream::iter(reqs))
                    .await
                    .map_err(rpc("ByteStream.Write"))?;
            }
            // Files are streamed: one chunk in memory at a time, however large the output.
            Source::File(p) => {
                use tokio::io::AsyncReadExt;
                let mut file = tokio::fs::File::open(&p)
                    .await
                    .map_err(io(format!("open {}", p.display())))?;
                let (tx, rx) = tokio::sync::mpsc::channel(2);
                let mut bytestream = self.bytestream.clone();
                let send = bytestream.write(tokio_stream::wrappers::ReceiverStream::new(rx));
                let read = async move {
                    let mut start = 0usize;
                    loop {
                        let want = WRITE_CHUNK.min(total - start);
                        let mut buf = vec![0u8; want];
                        file.read_exact(&mut buf)
                            .await
                            .map_err(io(format!("read {}", p.display())))?;
                        let last = start + want == total;
                        if tx.send(request(start, Bytes::from(buf))).await.is_err() || last {
                            return Ok::<(), WorkerError>(());
                        }
                        start += want;
                    }
                };
                let (sent, read) = tokio::join!(send, read);
                read?;
                sent.map_err(rpc("ByteStream.Write"))?;
            }
        }
        Ok(())
    }
}

/// Groups items into batches under the batch payload limit.
fn batches<T>(items: impl Iterator<Item = (u64, T)>) -> Vec<Vec<T>> {
    let mut out = vec![];
    let mut cur = vec![];
    let mut size = 0;
    for (n, item) in items {
        if !cur.is_empty() && size + n > BATCH_TOTAL_LIMIT {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += n;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
