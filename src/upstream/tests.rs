//! The upstream tier against a fake upstream that answers with wrong bytes: nothing it sends
//! is stored, and a streamed read ends with an error instead of completing.

use super::{ReadThrough, Upstream, UpstreamError, UpstreamSettings};
use crate::auth::Bearer;
use crate::cas::{ActionCache, Cas};
use crate::digest::{Digest, DigestFunction};
use crate::proto::bytestream::byte_stream_server::{ByteStream, ByteStreamServer};
use crate::proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use crate::proto::reapi::content_addressable_storage_server::{
    ContentAddressableStorage, ContentAddressableStorageServer,
};
use crate::proto::reapi::{
    BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, FindMissingBlobsRequest, FindMissingBlobsResponse, GetTreeRequest,
    GetTreeResponse, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse,
    batch_read_blobs_response,
};
use crate::storage::{MemoryStore, Store};
use bytes::Bytes;
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// Answers every read with `data`, whatever digest was asked.
#[derive(Clone)]
struct Liar {
    data: Bytes,
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ByteStream for Liar {
    type ReadStream = Stream<ReadResponse>;
    async fn read(&self, _: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let chunks: Vec<_> = self
            .data
            .chunks(3)
            .map(|c| {
                Ok(ReadResponse {
                    data: Bytes::copy_from_slice(c),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
    async fn write(
        &self,
        _: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }
    async fn query_write_status(
        &self,
        _: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }
}

#[tonic::async_trait]
impl ContentAddressableStorage for Liar {
    /// Claims to lack everything.
    async fn find_missing_blobs(
        &self,
        r: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests: r.into_inner().blob_digests,
        }))
    }
    /// Refuses every blob for good.
    async fn batch_update_blobs(
        &self,
        r: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let responses = r
            .into_inner()
            .requests
            .into_iter()
            .map(
                |q| crate::proto::reapi::batch_update_blobs_response::Response {
                    digest: q.digest,
                    status: Some(crate::proto::google::rpc::Status {
                        code: tonic::Code::InvalidArgument as i32,
                        message: "never".into(),
                        details: vec![],
                    }),
                },
            )
            .collect();
        Ok(Response::new(BatchUpdateBlobsResponse { responses }))
    }
    async fn batch_read_blobs(
        &self,
        r: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let responses = r
            .into_inner()
            .digests
            .into_iter()
            .map(|d| batch_read_blobs_response::Response {
                digest: Some(d),
                data: self.data.clone(),
                compressor: 0,
                status: Some(crate::proto::google::rpc::Status::default()),
            })
            .collect();
        Ok(Response::new(BatchReadBlobsResponse { responses }))
    }
    type GetTreeStream = Stream<GetTreeResponse>;
    async fn get_tree(
        &self,
        _: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        Err(Status::unimplemented("liar"))
    }
    async fn split_blob(
        &self,
        _: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }
    async fn splice_blob(
        &self,
        _: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("liar"))
    }
}

/// A tier over an empty memory store in front of a liar serving `data`.
async fn tier_in_front_of_liar(data: &'static [u8]) -> (Upstream, Cas) {
    tier_with_queue(data, None).await
}

/// The same, with an `async` forwarding queue in `queue_dir` when given.
async fn tier_with_queue(
    data: &'static [u8],
    queue_dir: Option<&std::path::Path>,
) -> (Upstream, Cas) {
    tier_with_store(data, queue_dir, 1 << 30).await
}

/// The same, over a local store keeping blobs of at most `max_blob` bytes.
async fn tier_with_store(
    data: &'static [u8],
    queue_dir: Option<&std::path::Path>,
    max_blob: u64,
) -> (Upstream, Cas) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let liar = Liar {
        data: Bytes::from_static(data),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ByteStreamServer::new(liar.clone()))
            .add_service(ContentAddressableStorageServer::new(liar))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(max_blob));
    let cas = Cas::new(store.clone());
    let ac = ActionCache::new(cas.clone(), store);
    let mut settings = UpstreamSettings::new(&format!("grpc://{addr}"));
    settings.queue_dir = queue_dir.map(std::path::Path::to_path_buf);
    let up = Upstream::new(settings, Bearer::none(), cas.clone(), ac).unwrap();
    (up, cas)
}

fn sha(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

#[tokio::test]
async fn wrong_bytes_from_the_upstream_are_never_stored() {
    // Same length as what is asked for, other content.
    let (up, cas) = tier_in_front_of_liar(b"evil bytes!").await;
    let want = sha(b"good bytes!");
    let got = up.ensure("", &[want]).await;
    let err = got[&want].as_ref().unwrap_err();
    assert!(matches!(err, UpstreamError::BadData { .. }), "{err}");
    assert!(!cas.contains(&want).unwrap());

    // A streamed read delivers what arrived, then fails: never a complete, wrong read.
    let ReadThrough::Stream(s) = up.read("", want, 0, u64::MAX, 1024).await.unwrap() else {
        panic!("a streamed read")
    };
    let items: Vec<_> = s.collect().await;
    let last = items.last().expect("at least the error");
    assert!(
        matches!(last, Err(UpstreamError::BadData { .. })),
        "the stream must end with an error, got {:?}",
        last.as_ref().map(Bytes::len)
    );
    assert!(!cas.contains(&want).unwrap());
}

#[tokio::test]
async fn more_bytes_than_the_size_are_refused() {
    let (up, cas) = tier_in_front_of_liar(b"far longer than asked").await;
    let want = sha(b"short");
    let ReadThrough::Stream(s) = up.read("", want, 0, u64::MAX, 1024).await.unwrap() else {
        panic!("a streamed read")
    };
    let items: Vec<_> = s.collect().await;
    let served: usize = items
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(Bytes::len)
        .sum();
    assert!(served <= 5, "served {served} bytes of a 5-byte blob");
    assert!(matches!(
        items.last(),
        Some(Err(UpstreamError::BadData { .. }))
    ));
    assert!(!cas.contains(&want).unwrap());
    // Batch path: the size check of the verification.
    let err = up
        .ensure("", &[want])
        .await
        .remove(&want)
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, UpstreamError::BadData { .. }), "{err}");
}

/// A blob the upstream refuses for good is counted and dropped from the queue, not retried
/// for ever in front of everything queued after it.
#[tokio::test]
async fn a_refused_forward_does_not_block_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (up, cas) = tier_with_queue(b"unused", Some(dir.path())).await;
    let data = b"refused upstream";
    let d = sha(data);
    cas.put(&d, Bytes::from_static(data)).await.unwrap();
    up.wrote_blobs("", &[d]).await.unwrap();
    let queue = up.inner.queue.clone().expect("async mode has a queue");
    assert_eq!(queue.len(), 1);
    up.start_forwarding();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while queue.len() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue stays blocked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused = up
        .stats()
        .forwards
        .get_or_create(&super::UpstreamLabels {
            kind: "cas",
            result: "error",
        })
        .get();
    assert_eq!(refused, 1);
}

/// A blob too large for the local store is streamed through unstored, and verified all the
/// same: the right bytes complete (a range of them too), wrong ones end with an error.
#[tokio::test]
async fn a_blob_too_large_to_keep_is_verified_as_it_streams_through() {
    let data = b"twelve bytes";
    let (up, cas) = tier_with_store(data, None, 8).await;
    let right = sha(data);
    let ReadThrough::Stream(s) = up.read("", right, 2, 5, 2).await.unwrap() else {
        panic!("a streamed read")
    };
    let got: Vec<Bytes> = s
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect()
        .await;
    assert_eq!(got.concat(), b"elve ");
    assert!(!cas.contains(&right).unwrap(), "not stored");

    let wrong = sha(b"other bytes!");
    let ReadThrough::Stream(s) = up.read("", wrong, 0, u64::MAX, 1024).await.unwrap() else {
        panic!("a streamed read")
    };
    let items: Vec<_> = s.collect().await;
    assert!(
        matches!(items.last(), Some(Err(UpstreamError::BadData { .. }))),
        "the stream must end with an error"
    );
}
