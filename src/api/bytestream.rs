//! ByteStream: Read (plain and zstd), resumable verified Write, QueryWriteStatus.

use super::CacheServices;
use super::resource_name::{Compression, ResourceName};
use super::uploads::{UploadRegistry, UploadState};
use crate::cas::compression::{StreamDecoder, ZSTD_LEVEL};
use crate::cas::{CasError, Upload};
use crate::proto::bytestream::byte_stream_server::ByteStream;
use crate::proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use crate::storage::Blob;
use bytes::Bytes;
use futures::Stream;
use std::io::Write;
use std::pin::Pin;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

pub(super) struct ByteStreamService {
    state: CacheServices,
}

impl ByteStreamService {
    pub(super) fn new(state: CacheServices) -> Self {
        Self { state }
    }

    /// The reply when the blob is already stored: the full size, or -1 for compressed uploads
    /// (the spec's rule, since the compressed length is unknown).
    fn already_present(name: &ResourceName) -> Response<WriteResponse> {
        let committed_size = match name.compression {
            Compression::Identity => name.digest.size as i64,
            Compression::Zstd => -1,
        };
        Response::new(WriteResponse { committed_size })
    }

    async fn new_upload(
        &self,
        name: &ResourceName,
        key: &str,
    ) -> Result<Option<UploadStateRef>, Status> {
        let Some(upload) = self.state.cas.begin_upload(name.digest).await? else {
            return Ok(None);
        };
        let decoder = match name.compression {
            Compression::Identity => None,
            Compression::Zstd => {
                Some(StreamDecoder::new().map_err(|e| Status::internal(e.to_string()))?)
            }
        };
        Ok(Some(
            self.state
                .uploads
                .insert(key, UploadState::new(upload, decoder)),
        ))
    }
}

type UploadStateRef = std::sync::Arc<tokio::sync::Mutex<UploadState>>;
type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

/// Feeds one request's data into an upload, decompressing if needed.
async fn feed(st: &mut UploadState, data: Bytes) -> Result<(), CasError> {
    let upload: &mut Upload = st.upload.as_mut().expect("upload in progress");
    let plain = match st.decoder.as_mut() {
        None => data,
        Some(dec) => Bytes::from(dec.feed(&data).map_err(|e| CasError::BadCompression {
            digest: *upload.digest(),
            reason: e.to_string(),
        })?),
    };
    if !plain.is_empty() {
        upload.write(plain).await?;
    }
    Ok(())
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let req = request.into_inner();
        let name = ResourceName::parse_read(&req.resource_name)?;
        if req.read_offset < 0 {
            return Err(Status::out_of_range(format!(
                "negative read_offset {}",
                req.read_offset
            )));
        }
        if req.read_limit < 0 {
            return Err(Status::invalid_argument(format!(
                "negative read_limit {}",
                req.read_limit
            )));
        }
        let offset = req.read_offset as u64;
        let limit = if req.read_limit == 0 {
            u64::MAX
        } else {
            req.read_limit as u64
        };
        let blob = self
            .state
            .cas
            .get(&name.digest)?
            .ok_or(CasError::BlobNotFound(name.digest))?;
        let chunk = self.state.limits.read_chunk_bytes;
        match name.compression {
            Compression::Identity => {
                if offset > blob.len() {
                    return Err(Status::out_of_range(format!(
                        "read_offset {offset} is past the end of {} ({} bytes)",
                        name.digest,
                        blob.len()
                    )));
                }
                let chunks = blob.chunks(offset, limit, chunk);
                let stream =
                    futures::stream::iter(chunks.into_iter().map(|data| Ok(ReadResponse { data })));
                Ok(Response::new(Box::pin(stream)))
            }
            Compression::Zstd => Ok(Response::new(compressed_read(blob, offset, limit, chunk))),
        }
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty Write stream"))?;
        if first.resource_name.is_empty() {
            return Err(Status::invalid_argument(
                "the first WriteRequest must carry resource_name",
            ));
        }
        let key = first.resource_name.clone();
        let name = ResourceName::parse_write(&key)?;
        let max = self.state.cas.max_blob_size();
        if name.digest.size > max {
            return Err(Status::invalid_argument(format!(
                "blob {} is larger than max_cas_blob_size_bytes ({max})",
                name.digest
            )));
        }
        if self.state.cas.contains(&name.digest)? {
            self.state.uploads.remove(&key);
            return Ok(Self::already_present(&name));
        }
        // Offset 0 starts (or restarts) the upload; a later offset resumes an existing one.
        let entry = if first.write_offset == 0 {
            self.new_upload(&name, &key).await?
        } else {
            Some(self.state.uploads.get(&key).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "write_offset {} but no upload of {key:?} is in progress; start again at offset 0",
                    first.write_offset
                ))
            })?)
        };
        let Some(entry) = entry else {
            return Ok(Self::already_present(&name));
        };
        let mut st = entry.lock().await;
        if st.upload.is_none() {
            return Ok(Self::already_present(&name));
        }
        let mut msg = first;
        loop {
            UploadRegistry::touch(&mut st);
            if !msg.resource_name.is_empty() && msg.resource_name != key {
                self.state.uploads.remove(&key);
                return Err(Status::invalid_argument(format!(
                    "resource_name changed within one Write stream: {:?} after {key:?}",
                    msg.resource_name
                )));
            }
            if msg.write_offset != st.committed {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} does not match committed_size {}",
                    msg.write_offset, st.committed
                )));
            }
            let len = msg.data.len() as i64;
            if let Err(e) = feed(&mut st, msg.data).await {
                self.state.uploads.remove(&key);
                return Err(e.into());
            }
            st.committed += len;
            if msg.finish_write {
                self.state.uploads.remove(&key);
                if st.decoder.as_ref().is_some_and(|d| !d.at_frame_end()) {
                    return Err(Status::invalid_argument(format!(
                        "compressed upload of {} ends inside a zstd frame",
                        name.digest
                    )));
                }
                let upload = st.upload.take().expect("upload in progress");
                upload.finish().await?;
                return Ok(Response::new(WriteResponse {
                    committed_size: st.committed,
                }));
            }
            if self.state.cas.contains(&name.digest)? {
                // Another client finished the same blob: stop early, as the spec allows.
                self.state.uploads.remove(&key);
                return Ok(Self::already_present(&name));
            }
            msg = match stream.message().await? {
                Some(m) => m,
                None => {
                    return Err(Status::invalid_argument(format!(
                        "Write stream for {key:?} ended without finish_write at {} bytes; \
                         resume with QueryWriteStatus",
                        st.committed
                    )));
                }
            };
        }
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let key = request.into_inner().resource_name;
        let name = ResourceName::parse_write(&key)?;
        if self.state.cas.contains(&name.digest)? {
            let committed_size = Self::already_present(&name).into_inner().committed_size;
            return Ok(Response::new(QueryWriteStatusResponse {
                committed_size,
                complete: true,
            }));
        }
        let committed_size = match self.state.uploads.get(&key) {
            Some(entry) => entry.lock().await.committed,
            None => 0,
        };
        Ok(Response::new(QueryWriteStatusResponse {
            committed_size,
            complete: false,
        }))
    }
}

/// Streams the zstd compression of `blob`, skipping `offset` compressed bytes and stopping after
/// `limit`. Compression runs on a blocking thread, a few chunks ahead of the client.
fn compressed_read(blob: Blob, offset: u64, limit: u64, chunk: usize) -> ReadStream {
    let (tx, mut rx) = mpsc::channel::<Result<ReadResponse, Status>>(4);
    tokio::task::spawn_blocking(move || {
        let sink = ChunkSink {
            tx: tx.clone(),
            skip: offset,
            left: limit,
            chunk,
            buf: Vec::new(),
            total: 0,
        };
        let result = (|| -> std::io::Result<ChunkSink> {
            let mut enc = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?;
            for piece in blob.chunks(0, u64::MAX, 1 << 20) {
                enc.write_all(&piece)?;
            }
            let mut sink = enc.finish()?;
            sink.flush()?;
            Ok(sink)
        })();
        match result {
            Ok(sink) if sink.total < offset => {
                let _ = tx.blocking_send(Err(Status::out_of_range(format!(
                    "read_offset {offset} is past the end of the compressed stream ({} bytes)",
                    sink.total
                ))));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!("compression failed: {e}"))));
            }
        }
    });
    Box::pin(async_stream::stream! {
        while let Some(item) = rx.recv().await {
            yield item;
        }
    })
}

/// Collects compressor output into `chunk`-sized messages, applying offset and limit.
struct ChunkSink {
    tx: mpsc::Sender<Result<ReadResponse, Status>>,
    skip: u64,
    left: u64,
    chunk: usize,
    buf: Vec<u8>,
    total: u64,
}

impl ChunkSink {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(ReadResponse { data }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader went away"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        self.total += n as u64;
        let skip = self.skip.min(data.len() as u64) as usize;
        self.skip -= skip as u64;
        data = &data[skip..];
        let take = self.left.min(data.len() as u64) as usize;
        self.left -= take as u64;
        for b in data[..take].chunks(self.chunk) {
            let room = self.chunk - self.buf.len();
            let (now, later) = b.split_at(room.min(b.len()));
            self.buf.extend_from_slice(now);
            if self.buf.len() == self.chunk {
                self.send()?;
            }
            self.buf.extend_from_slice(later);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
