//! ByteStream: Read (plain and zstd), resumable verified Write, QueryWriteStatus.

use super::CacheServices;
use super::resource_name::{Compression, ResourceName};
use super::uploads::{Reservation, UploadRegistry, UploadState, stream_cost};
use crate::cas::compression::{DecodeError, StreamDecoder, ZSTD_LEVEL};
use crate::cas::{Blob, Encoded};
use crate::cas::{CasError, Upload};
use crate::proto::bytestream::byte_stream_server::ByteStream;
use crate::proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use crate::upstream::ReadThrough;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

pub(super) struct ByteStreamService {
    state: CacheServices,
    /// Compressed reads running at once: each compresses on a blocking thread and waits there
    /// for its client, so slow readers must not take the whole blocking pool.
    compress_slots: Arc<tokio::sync::Semaphore>,
}

/// Compressed ByteStream reads served at once; more wait their turn.
const COMPRESS_SLOTS: usize = 32;

impl ByteStreamService {
    pub(super) fn new(state: CacheServices) -> Self {
        Self {
            state,
            compress_slots: Arc::new(tokio::sync::Semaphore::new(COMPRESS_SLOTS)),
        }
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

    /// A local read miss: served from the upstream as it streams in (compressed on the way
    /// for `compressed-blobs/zstd` reads, so a blob too large to keep locally is served that
    /// way too), or from the store (`Err(blob)`) when another request fetched it meanwhile.
    /// Without an upstream, or when the upstream lacks it too, NOT_FOUND.
    async fn read_through(
        &self,
        name: &ResourceName,
        offset: u64,
        limit: u64,
        chunk: usize,
    ) -> Result<Result<ReadStream, Blob>, Status> {
        let digest = name.digest;
        let Some(up) = &self.state.upstream else {
            return Err(CasError::BlobNotFound(digest).into());
        };
        if offset > digest.size {
            return Err(Status::out_of_range(format!(
                "read_offset {offset} is past the end of {digest} ({} bytes)",
                digest.size
            )));
        }
        match up
            .read(&name.instance, digest, offset, limit, chunk)
            .await?
        {
            ReadThrough::Stream(s) => {
                let pieces = s.map(|r| r.map_err(Status::from));
                return Ok(Ok(match name.compression {
                    Compression::Identity => {
                        Box::pin(pieces.map(|r| r.map(|data| ReadResponse { data })))
                    }
                    Compression::Zstd => {
                        let slot = self.compress_slot().await?;
                        compressed_read(pieces, digest.size - offset, chunk, slot)
                    }
                }));
            }
            ReadThrough::Missing => return Err(CasError::BlobNotFound(digest).into()),
            ReadThrough::Local => {}
        }
        Ok(Err(self
            .state
            .cas
            .read(&digest)
            .await?
            .ok_or(CasError::BlobNotFound(digest))?))
    }

    /// A turn among the [`COMPRESS_SLOTS`] compressed reads.
    async fn compress_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.compress_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("server stopping"))
    }

    /// Starts (or restarts) the upload under `key`; `None` when the blob is already stored.
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
                .insert(key, UploadState::new(upload, decoder))?,
        ))
    }

    /// Feeds the rest of a Write stream into a locked upload. Returns the response once the
    /// upload finished (or turned out to be stored by someone else).
    async fn feed_stream(
        &self,
        key: &str,
        name: &ResourceName,
        feeding: &mut Feeding,
        first: WriteRequest,
        stream: &mut Streaming<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let uploads = &self.state.uploads;
        let idle = self.state.limits.upload_idle_timeout.min(STREAM_IDLE);
        let max_compressed = max_compressed_len(name.digest.size);
        let st = &mut *feeding.state;
        if first.write_offset != st.offset() {
            // The client resumed from an older QueryWriteStatus answer than the upload's
            // state now: ABORTED tells it to ask again, which retrying clients do.
            return Err(Status::aborted(format!(
                "write_offset {} but the upload of {key:?} continues at {}; ask \
                 QueryWriteStatus again",
                first.write_offset,
                st.offset()
            )));
        }
        let mut msg = first;
        loop {
            UploadRegistry::touch(st);
            if !msg.resource_name.is_empty() && msg.resource_name != key {
                fail(uploads, key, st);
                return Err(Status::invalid_argument(format!(
                    "resource_name changed within one Write stream: {:?} after {key:?}",
                    msg.resource_name
                )));
            }
            if msg.write_offset != st.offset() {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} within one stream does not continue at {}",
                    msg.write_offset,
                    st.offset()
                )));
            }
            let len = msg.data.len() as i64;
            if st.decoder.is_some() && (st.offset() + len) as u64 > max_compressed {
                fail(uploads, key, st);
                return Err(Status::invalid_argument(format!(
                    "compressed upload of {} sends more than {max_compressed} bytes, more than \
                     zstd needs for its size",
                    name.digest
                )));
            }
            if let Err(e) = feed(st, msg.data).await {
                fail(uploads, key, st);
                return Err(e.into());
            }
            st.advance(len);
            if msg.finish_write {
                if st.decoder.as_ref().is_some_and(|d| !d.at_frame_end()) {
                    fail(uploads, key, st);
                    return Err(Status::invalid_argument(format!(
                        "compressed upload of {} ends inside a zstd frame",
                        name.digest
                    )));
                }
                let upload = st.upload.take().expect("upload in progress");
                st.decoder = None;
                let done = upload.finish().await;
                // Forgotten only now: a client resuming meanwhile waits for the lock and
                // then sees whether the blob was stored.
                uploads.remove_if(key, st);
                done?;
                return Ok(Response::new(WriteResponse {
                    committed_size: st.offset(),
                }));
            }
            if self.state.cas.contains(&name.digest)? {
                // Another client finished the same blob: stop early, as the spec allows.
                fail(uploads, key, st);
                return Ok(Self::already_present(name));
            }
            msg = match tokio::time::timeout(idle, stream.message()).await {
                Err(_) => {
                    return Err(Status::aborted(format!(
                        "Write stream for {key:?} sent nothing for {}s; resume with \
                         QueryWriteStatus",
                        idle.as_secs()
                    )));
                }
                Ok(m) => match m? {
                    Some(m) => m,
                    None => {
                        return Err(Status::invalid_argument(format!(
                            "Write stream for {key:?} ended without finish_write at {} bytes; \
                             resume with QueryWriteStatus",
                            st.offset()
                        )));
                    }
                },
            };
        }
    }
}

/// How long a Write stream may hold its upload without sending anything (at most the
/// upload idle timeout): a silent client must not pin buffers and its upload for ever.
const STREAM_IDLE: Duration = Duration::from_mins(1);

/// The most compressed bytes a zstd upload of `size` bytes may send: zstd's worst case
/// (incompressible data in raw blocks) plus room for frame headers.
fn max_compressed_len(size: u64) -> u64 {
    size + size / 128 + (128 << 10)
}

type UploadStateRef = super::uploads::UploadEntry;
type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

/// A stream's hold on one upload. However the stream stops (an error, the client going away,
/// the handler being dropped mid-await), an unfinished upload is parked: its buffers freed,
/// resumable from the bytes on disk.
struct Feeding {
    state: tokio::sync::OwnedMutexGuard<UploadState>,
    registry: Arc<UploadRegistry>,
    key: String,
    _reservation: Reservation,
}

impl Drop for Feeding {
    fn drop(&mut self) {
        if self.state.upload.is_some() {
            self.registry.park(&self.key, &mut self.state);
        }
    }
}

/// Ends an upload that can no longer continue: waiting streams see it gone.
fn fail(uploads: &UploadRegistry, key: &str, st: &mut UploadState) {
    st.upload = None;
    st.decoder = None;
    uploads.remove_if(key, st);
}

/// Feeds one request's data into an upload, decompressing if needed. A compressed chunk is
/// decoded in bounded pieces, never past the bytes the digest still expects.
async fn feed(st: &mut UploadState, data: Bytes) -> Result<(), CasError> {
    let upload: &mut Upload = st.upload.as_mut().expect("upload in progress");
    let Some(dec) = st.decoder.as_mut() else {
        if !data.is_empty() {
            upload.write(data).await?;
        }
        return Ok(());
    };
    dec.push(data);
    loop {
        match dec.next_chunk(upload.remaining()) {
            Ok(Some(plain)) => upload.write(plain).await?,
            Ok(None) => return Ok(()),
            Err(DecodeError::TooLarge) => {
                return Err(CasError::TooMuchData {
                    expected: *upload.digest(),
                });
            }
            Err(e) => {
                return Err(CasError::BadCompression {
                    digest: *upload.digest(),
                    reason: e.to_string(),
                });
            }
        }
    }
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
        if name.compression == Compression::Zstd && req.read_limit != 0 {
            // REAPI: a compressed read has no meaningful limit, since the client cannot know
            // how many compressed bytes a range of the blob takes.
            return Err(Status::invalid_argument(format!(
                "read_limit {} on a compressed-blobs read; it must be 0 (read_offset counts \
                 uncompressed bytes)",
                req.read_limit
            )));
        }
        let limit = if req.read_limit == 0 {
            u64::MAX
        } else {
            req.read_limit as u64
        };
        let chunk = self.state.limits.read_chunk_bytes;
        let blob = match self.state.cas.read(&name.digest).await? {
            Some(blob) => blob,
            None => match self.read_through(&name, offset, limit, chunk).await? {
                Ok(stream) => return Ok(Response::new(stream)),
                Err(blob) => blob,
            },
        };
        if offset > blob.len() {
            return Err(Status::out_of_range(format!(
                "read_offset {offset} is past the end of {} ({} bytes)",
                name.digest,
                blob.len()
            )));
        }
        match name.compression {
            Compression::Identity => {
                let chunks = blob.read(offset, limit, chunk);
                let stream = futures::stream::iter(
                    chunks.map(|r| r.map(|data| ReadResponse { data }).map_err(stored_damage)),
                );
                Ok(Response::new(Box::pin(stream)))
            }
            Compression::Zstd if blob.is_compressed() => {
                let slot = self.compress_slot().await?;
                Ok(Response::new(stored_frames_read(
                    &blob, offset, chunk, slot,
                )))
            }
            Compression::Zstd => {
                let slot = self.compress_slot().await?;
                let size = blob.len() - offset;
                let pieces = futures::stream::iter(
                    blob.read(offset, u64::MAX, 1 << 20)
                        .map(|r| r.map_err(stored_damage)),
                );
                Ok(Response::new(compressed_read(pieces, size, chunk, slot)))
            }
        }
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut written = None;
        let response = self.write_local(request, &mut written).await?;
        if let (Some(up), Some(name)) = (&self.state.upstream, written) {
            // `sync`: not acknowledged until the upstream has it too.
            up.wrote_blobs(&name.instance, &[name.digest]).await?;
        }
        Ok(response)
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        self.query_write_status_local(request)
    }
}

impl ByteStreamService {
    /// A Write into the local store; sets `written` to the blob's name once it is stored.
    async fn write_local(
        &self,
        request: Request<Streaming<WriteRequest>>,
        written: &mut Option<ResourceName>,
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
        *written = Some(name.clone());
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
        // The stream's buffer memory is reserved before any upload state is created.
        let reservation = self.state.uploads.reserve(stream_cost(
            name.digest.size,
            name.compression == Compression::Zstd,
            self.state.limits.upload_part_bytes,
        ))?;
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
        let idle = self.state.limits.upload_idle_timeout.min(STREAM_IDLE);
        let Ok(state) = tokio::time::timeout(idle, entry.state.lock_owned()).await else {
            return Err(Status::aborted(format!(
                "another stream has been feeding upload {key:?} for over {}s; ask \
                 QueryWriteStatus again",
                idle.as_secs()
            )));
        };
        let mut feeding = Feeding {
            state,
            registry: self.state.uploads.clone(),
            key: key.clone(),
            _reservation: reservation,
        };
        if feeding.state.upload.is_none() {
            // Another stream finished this upload while we waited: a success only if the
            // blob is really stored.
            self.state.uploads.remove_if(&key, &feeding.state);
            if self.state.cas.contains(&name.digest)? {
                return Ok(Self::already_present(&name));
            }
            return Err(Status::aborted(format!(
                "upload {key:?} ended in another stream without storing {}; start again at \
                 offset 0",
                name.digest
            )));
        }
        self.feed_stream(&key, &name, &mut feeding, first, &mut stream)
            .await
    }

    fn query_write_status_local(
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
            Some(entry) => entry.committed(),
            None => 0,
        };
        Ok(Response::new(QueryWriteStatusResponse {
            committed_size,
            complete: false,
        }))
    }
}

/// Streams the zstd compression of `pieces` (the blob from uncompressed offset on, `size`
/// bytes: the REAPI rule for compressed reads is that the offset counts uncompressed bytes and
/// the result is a complete zstd stream of the rest). Compression runs on a blocking thread,
/// a few chunks ahead of the client, and stops when the client goes away. An error from
/// `pieces` (e.g. an upstream read whose bytes fail their digest) ends the stream with that
/// error, never with a complete frame.
fn compressed_read(
    pieces: impl Stream<Item = Result<Bytes, Status>> + Send + 'static,
    size: u64,
    chunk: usize,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> ReadStream {
    let runtime = tokio::runtime::Handle::current();
    compressing_stream(chunk, slot, move |sink| {
        let mut pieces = Box::pin(pieces);
        let mut enc = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?;
        enc.set_pledged_src_size(Some(size))?;
        while let Some(piece) = runtime.block_on(pieces.next()) {
            match piece {
                Ok(piece) => enc.write_all(&piece)?,
                Err(status) => return Ok(Some(status)),
            }
        }
        enc.finish()?.flush()?;
        Ok(None)
    })
}

/// A compressed read of a blob stored (partly) compressed: its stored frames are sent as they
/// are; only pieces stored plain, and a compressed piece `offset` falls inside, are
/// compressed here (each its own frame: a zstd stream may hold several in a row).
fn stored_frames_read(
    blob: &Blob,
    offset: u64,
    chunk: usize,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> ReadStream {
    let pieces = blob.encoded(offset);
    compressing_stream(chunk, slot, move |sink| {
        for piece in pieces {
            match piece {
                Ok(Encoded::Zstd(frame)) => sink.write_all(&frame)?,
                Ok(Encoded::Plain(data)) => {
                    sink.write_all(&zstd::bulk::compress(&data, ZSTD_LEVEL)?)?;
                }
                Err(e) => return Ok(Some(stored_damage(e))),
            }
        }
        sink.flush()?;
        Ok(None)
    })
}

/// The status of a stored piece that does not decompress (damage its checksums missed).
fn stored_damage(e: crate::storage::StorageError) -> Status {
    tracing::warn!(error = %e, "a stored blob failed to decompress while being read");
    CasError::from(e).into()
}

/// Runs `work` on a blocking thread (holding `slot`), writing a reply into `chunk`-sized
/// messages a few ahead of the client. `work` ends the stream with the status it returns; an
/// I/O error ends it with INTERNAL, except a client that went away (nothing left to tell).
fn compressing_stream(
    chunk: usize,
    slot: tokio::sync::OwnedSemaphorePermit,
    work: impl FnOnce(&mut ChunkSink) -> std::io::Result<Option<Status>> + Send + 'static,
) -> ReadStream {
    let (tx, rx) = mpsc::channel::<Result<ReadResponse, Status>>(4);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut sink = ChunkSink {
            tx: tx.clone(),
            chunk,
            buf: Vec::new(),
        };
        let failed = match work(&mut sink) {
            Ok(status) => status,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => None,
            Err(e) => Some(Status::internal(format!("compression failed: {e}"))),
        };
        if let Some(status) = failed {
            let _ = tx.blocking_send(Err(status));
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Collects compressor output into `chunk`-sized messages.
struct ChunkSink {
    tx: mpsc::Sender<Result<ReadResponse, Status>>,
    chunk: usize,
    buf: Vec<u8>,
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
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let room = self.chunk - self.buf.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buf.extend_from_slice(now);
            if self.buf.len() == self.chunk {
                self.send()?;
            }
            rest = later;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
