//! One streamed upload into the engine (the `BlobWriter` that `Engine::begin_write` returns)
//! and the compression of what uploads hand the engine.
//!
//! Memory: an upload fills one part in its own buffer (what the API layer reserves per
//! stream); full parts are handed on and written while the next one fills. Parts handed on
//! are bounded engine-wide ([`PARTS_IN_FLIGHT`]), whatever the number of uploads, and so is
//! compression: at most one record per core is being compressed at a time, always on a
//! blocking thread (never on the async threads that serve every RPC).

use super::codec::{self, Encoded};
use super::config::Compression;
use super::format::PartLoc;
use super::read::Shared;
use super::stats;
use super::writer::{Body, Req};
use super::{BlobWriter, Key, StorageError};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use crossbeam::channel::Sender;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Parts handed on by all uploads together and not written yet.
pub const PARTS_IN_FLIGHT: usize = 8;

/// Parts one upload hands on before it waits for the oldest's place on disk (in blob order).
const PARTS_AHEAD: usize = 2;

/// The engine-wide bounds shared by every upload.
pub(crate) struct Limits {
    /// One permit per part handed on and not written yet; the I/O thread drops it with the
    /// request.
    in_flight: Arc<Semaphore>,
    /// One permit per record being compressed: one per core.
    compressing: Arc<Semaphore>,
}

impl Limits {
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            in_flight: Arc::new(Semaphore::new(PARTS_IN_FLIGHT)),
            compressing: Arc::new(Semaphore::new(cores)),
        }
    }
}

/// The record payload for `data` under the configured compression, counted (on the calling
/// thread: call it on a blocking thread when compression is on).
fn encode(sh: &Shared, data: Bytes) -> Encoded {
    let c = sh.cfg().compression;
    if c == Compression::None {
        return Encoded::plain(data);
    }
    let e = codec::encode(c, data);
    let n = sh.counters();
    n.compression_logical_bytes
        .fetch_add(e.logical, Ordering::Relaxed);
    n.compression_stored_bytes
        .fetch_add(e.payload.len() as u64, Ordering::Relaxed);
    if e.flags != 0 {
        stats::inc(&n.compressed_records);
    } else if let Compression::Zstd { min_size, .. } = c
        && e.logical >= min_size
    {
        stats::inc(&n.compression_skipped);
    }
    e
}

/// `encode` of each of `items`, on a blocking thread with a compression slot when
/// compression is on (on the caller otherwise: nothing to compute).
pub(crate) async fn encode_all(
    sh: &Arc<Shared>,
    limits: &Limits,
    items: Vec<Bytes>,
) -> Result<Vec<Encoded>, StorageError> {
    if sh.cfg().compression == Compression::None {
        return Ok(items.into_iter().map(Encoded::plain).collect());
    }
    let slot = Arc::clone(&limits.compressing)
        .acquire_owned()
        .await
        .map_err(|_| StorageError::Closed)?;
    let sh = Arc::clone(sh);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        items.into_iter().map(|d| encode(&sh, d)).collect()
    })
    .await
    .map_err(|e| StorageError::Io(std::io::Error::other(format!("compression task: {e}"))))
}

/// Streams one upload: fills one part, hands full parts on (compressed on a blocking thread
/// when compression is on) and takes in the next while up to [`PARTS_AHEAD`] of them are
/// written.
pub(crate) struct EngineWriter {
    sh: Arc<Shared>,
    limits: Arc<Limits>,
    tx: Sender<Req>,
    key: Key,
    len: u64,
    part: u64,
    got: u64,
    buf: BytesMut,
    /// Parts on disk, in blob order.
    parts: Vec<PartLoc>,
    /// Parts handed on after those, in blob order: each answers with its place on disk.
    ahead: VecDeque<oneshot::Receiver<Result<PartLoc, StorageError>>>,
}

impl EngineWriter {
    pub(crate) fn new(
        sh: Arc<Shared>,
        limits: Arc<Limits>,
        tx: Sender<Req>,
        key: Key,
        len: u64,
    ) -> Self {
        let part = sh.cfg().part_size;
        Self {
            sh,
            limits,
            tx,
            key,
            len,
            part,
            got: 0,
            buf: BytesMut::with_capacity(len.min(part) as usize),
            parts: Vec::new(),
            ahead: VecDeque::new(),
        }
    }

    /// Hands a full part on: to the I/O thread, through a blocking thread that compresses it
    /// when compression is on (the upload task goes on receiving and hashing meanwhile).
    async fn send_part(&mut self, data: Bytes) -> Result<(), StorageError> {
        let closed = |_| StorageError::Closed;
        let permit: OwnedSemaphorePermit = Arc::clone(&self.limits.in_flight)
            .acquire_owned()
            .await
            .map_err(closed)?;
        let (reply, answer) = oneshot::channel();
        if self.sh.cfg().compression == Compression::None {
            self.tx
                .send(Req::Part {
                    key: self.key,
                    data: Encoded::plain(data),
                    reply,
                    _permit: permit,
                })
                .map_err(|_| StorageError::Closed)?;
        } else {
            let (sh, tx, key) = (Arc::clone(&self.sh), self.tx.clone(), self.key);
            let slot = Arc::clone(&self.limits.compressing)
                .acquire_owned()
                .await
                .map_err(closed)?;
            // A send that fails (the engine closed) drops `reply`: the answer is `Closed`.
            tokio::task::spawn_blocking(move || {
                let data = encode(&sh, data);
                drop(slot);
                let _ = tx.send(Req::Part {
                    key,
                    data,
                    reply,
                    _permit: permit,
                });
            });
        }
        self.ahead.push_back(answer);
        Ok(())
    }

    /// Waits for the oldest part handed on and records where it went.
    async fn settle_one(&mut self) -> Result<(), StorageError> {
        if let Some(answer) = self.ahead.pop_front() {
            self.parts
                .push(answer.await.map_err(|_| StorageError::Closed)??);
        }
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for EngineWriter {
    async fn write(&mut self, mut chunk: Bytes) -> Result<(), StorageError> {
        let got = self.got + chunk.len() as u64;
        if got > self.len {
            return Err(StorageError::LengthMismatch {
                announced: self.len,
                got,
            });
        }
        self.got = got;
        while !chunk.is_empty() {
            let take = (self.part as usize - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk.split_to(take));
            if self.buf.len() as u64 == self.part && self.len > self.part {
                let data = self.buf.split().freeze();
                // `split` leaves no capacity: take the next part's whole buffer at once (not
                // grown by doubling, a copy and a fresh page each time).
                let handed = (self.parts.len() + self.ahead.len() + 1) as u64 * self.part;
                self.buf
                    .reserve(self.len.saturating_sub(handed).min(self.part) as usize);
                self.send_part(data).await?;
                while self.ahead.len() > PARTS_AHEAD {
                    self.settle_one().await?;
                }
            }
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StorageError> {
        if self.got != self.len {
            return Err(StorageError::LengthMismatch {
                announced: self.len,
                got: self.got,
            });
        }
        let mut me = *self;
        while !me.ahead.is_empty() {
            me.settle_one().await?;
        }
        let last = encode_all(&me.sh, &me.limits, vec![me.buf.split().freeze()])
            .await?
            .pop()
            .ok_or(StorageError::Closed)?;
        let body = if me.len <= me.part {
            Body::Single(last)
        } else {
            Body::Parts {
                total: me.len,
                parts: me.parts,
                last,
            }
        };
        let (otx, orx) = oneshot::channel();
        me.tx
            .send(Req::Commit {
                items: vec![(me.key, body)],
                reply: otx,
            })
            .map_err(|_| StorageError::Closed)?;
        orx.await.map_err(|_| StorageError::Closed)?
    }

    fn rewind_step(&self) -> Option<u64> {
        Some(self.part)
    }

    fn drop_buffered(&mut self) -> Option<u64> {
        // Parts handed on are records on disk or on their way there (a part that fails
        // fails the next write or the commit); only the partial part is in memory.
        self.buf = BytesMut::new();
        self.got = (self.parts.len() + self.ahead.len()) as u64 * self.part;
        Some(self.got)
    }
}
