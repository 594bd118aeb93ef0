//! A bare ByteStream service over loopback: sends and discards 64 KiB messages with no
//! storage, hashing or verification, so its MB/s is what tonic and the kernel allow.

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

const CHUNK: usize = 64 << 10;
/// Bytes per transfer.
const TRANSFER: u64 = 64 << 20;

struct Bare {
    chunk: Bytes,
}

#[tonic::async_trait]
impl ByteStream for Bare {
    type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let n = (request.get_ref().read_limit as u64).div_ceil(CHUNK as u64);
        let chunk = self.chunk.clone();
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

/// Read and write MB/s, each for about `secs`.
pub async fn measure(secs: Duration) -> Result<(f64, f64), BenchError> {
    let local = |e: &dyn std::fmt::Display| BenchError::Local(format!("bare stream: {e}"));
    let chunk = Bytes::from(crate::bench::data::fill(5, CHUNK));
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
            .add_service(ByteStreamServer::new(Bare {
                chunk: server_chunk,
            }))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stopped.await;
                },
            )
            .await;
    })
    .await?;
    let channel = super::super::target::Target::parse(&format!("grpc://{addr}"))?
        .connect()
        .await?;
    let mut client = ByteStreamClient::new(channel);

    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < secs || bytes == 0 {
        let mut s = client
            .read(ReadRequest {
                resource_name: "bare".into(),
                read_offset: 0,
                read_limit: TRANSFER as i64,
            })
            .await
            .map_err(|e| local(&e))?
            .into_inner();
        while let Some(m) = s.next().await {
            bytes += m.map_err(|e| local(&e))?.data.len() as u64;
        }
    }
    let read = bytes as f64 / 1e6 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < secs || bytes == 0 {
        let chunk = chunk.clone();
        let reqs = (0..TRANSFER / CHUNK as u64).map(move |i| WriteRequest {
            resource_name: if i == 0 { "bare".into() } else { String::new() },
            write_offset: (i * CHUNK as u64) as i64,
            finish_write: i + 1 == TRANSFER / CHUNK as u64,
            data: chunk.clone(),
        });
        let r = client
            .write(futures::stream::iter(reqs))
            .await
            .map_err(|e| local(&e))?;
        bytes += r.into_inner().committed_size as u64;
    }
    let write = bytes as f64 / 1e6 / start.elapsed().as_secs_f64();
    server.stop().await;
    Ok((read, write))
}
