//! A bare ByteStream service over loopback: sends and discards messages with no storage,
//! hashing or verification, so its MB/s is what tonic and the kernel allow. Measured the way
//! a tuned server and client run (kiln's HTTP/2 windows on both ends), with 64 KiB and 1 MiB
//! messages, on one connection and on two connections with two streams each; the best of
//! them is the box's streaming limit.

use crate::bench::BenchError;
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::bytestream::byte_stream_server::{ByteStream, ByteStreamServer};
use crate::proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

/// Bytes per transfer.
const TRANSFER: u64 = 64 << 20;
/// Message sizes measured: kiln's default `read_chunk_bytes` and a large one.
const MESSAGE_SIZES: [usize; 2] = [64 << 10, 1 << 20];

/// The server sends messages of the size named by the resource name (`bare/SIZE`).
struct Bare {
    chunk: Bytes,
}

/// One way of streaming and what it reached.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamFigure {
    /// `read` or `write`.
    pub direction: &'static str,
    /// Bytes per message.
    pub message_bytes: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Concurrent streams per connection.
    pub streams_per_connection: usize,
    /// MB/s (10^6 bytes) over all streams.
    pub mb_per_s: f64,
}

#[tonic::async_trait]
impl ByteStream for Bare {
    type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let req = request.get_ref();
        let size = req
            .resource_name
            .strip_prefix("bare/")
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|s| (1..=self.chunk.len()).contains(s))
            .ok_or_else(|| Status::invalid_argument("bare/SIZE"))?;
        let n = (req.read_limit as u64).div_ceil(size as u64);
        let chunk = self.chunk.slice(..size);
        Ok(Response::new(Box::pin(futures::stream::iter((0..n).map(
            move |_| {
                Ok(ReadResponse {
                    data: chunk.clone(),
                })
            },
        )))))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut s = request.into_inner();
        let mut committed = 0i64;
        while let Some(r) = s.next().await {
            committed += r?.data.len() as i64;
        }
        Ok(Response::new(WriteResponse {
            committed_size: committed,
        }))
    }

    async fn query_write_status(
        &self,
        _request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

/// Every way of streaming measured for about `secs` each: reads first, then writes.
pub async fn measure(secs: Duration) -> Result<Vec<StreamFigure>, BenchError> {
    let largest = MESSAGE_SIZES.into_iter().max().unwrap_or(1 << 20);
    let chunk = Bytes::from(crate::bench::data::fill(5, largest));
    let server_chunk = chunk.clone();
    let (addr, server) = super::own_runtime::start(move |stopped, ready| async move {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("bare stream: {e}")));
                return;
            }
        };
        let _ = ready.send(listener.local_addr().map_err(|e| e.to_string()));
        let _ = tonic::transport::Server::builder()
            .initial_stream_window_size(Some(crate::server::STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(crate::server::CONNECTION_WINDOW_BYTES))
            .add_service(
                ByteStreamServer::new(Bare {
                    chunk: server_chunk,
                })
                .max_decoding_message_size(2 * largest),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stopped.await;
                },
            )
            .await;
    })
    .await?;
    let target = super::super::target::Target::parse(&format!("grpc://{addr}"))?;
    let mut channels = Vec::new();
    for _ in 0..2 {
        channels.push(target.connect().await?);
    }
    let mut figures = Vec::new();
    for direction in ["read", "write"] {
        for (message_bytes, connections, streams_per_connection) in [
            (MESSAGE_SIZES[0], 1, 1),
            (MESSAGE_SIZES[1], 1, 1),
            (MESSAGE_SIZES[1], 2, 2),
        ] {
            let mut tasks = Vec::new();
            for ch in channels.iter().take(connections) {
                for _ in 0..streams_per_connection {
                    let client = ByteStreamClient::new(ch.clone())
                        .max_decoding_message_size(2 * largest)
                        .max_encoding_message_size(2 * largest);
                    let chunk = chunk.slice(..message_bytes);
                    tasks.push(tokio::spawn(transfer(client, direction, chunk, secs)));
                }
            }
            let start = Instant::now();
            let mut bytes = 0u64;
            for t in tasks {
                bytes += t.await.map_err(|e| BenchError::Local(e.to_string()))??;
            }
            figures.push(StreamFigure {
                direction,
                message_bytes,
                connections,
                streams_per_connection,
                mb_per_s: bytes as f64 / 1e6 / start.elapsed().as_secs_f64(),
            });
        }
    }
    server.stop().await;
    Ok(figures)
}

/// Repeated 64 MiB transfers in `direction` with `chunk`-sized messages for about `secs`;
/// the bytes moved.
async fn transfer(
    mut client: ByteStreamClient<tonic::transport::Channel>,
    direction: &'static str,
    chunk: Bytes,
    secs: Duration,
) -> Result<u64, BenchError> {
    let local = |e: &dyn std::fmt::Display| BenchError::Local(format!("bare stream: {e}"));
    let size = chunk.len() as u64;
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < secs || bytes == 0 {
        if direction == "read" {
            let mut s = client
                .read(ReadRequest {
                    resource_name: format!("bare/{size}"),
                    read_offset: 0,
                    read_limit: TRANSFER as i64,
                })
                .await
                .map_err(|e| local(&e))?
                .into_inner();
            while let Some(m) = s.next().await {
                bytes += m.map_err(|e| local(&e))?.data.len() as u64;
            }
        } else {
            let chunk = chunk.clone();
            let n = TRANSFER / size;
            let reqs = (0..n).map(move |i| WriteRequest {
                resource_name: if i == 0 { "bare".into() } else { String::new() },
                write_offset: (i * size) as i64,
                finish_write: i + 1 == n,
                data: chunk.clone(),
            });
            let r = client
                .write(futures::stream::iter(reqs))
                .await
                .map_err(|e| local(&e))?;
            bytes += r.into_inner().committed_size as u64;
        }
    }
    Ok(bytes)
}
