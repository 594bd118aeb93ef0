//! Black-box tests of Capabilities and the ContentAddressableStorage service.

mod common;

use bytes::Bytes;
use common::{TestServer, bytes, digest, upload_request};
use kiln::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest as PDigest, Directory, DirectoryNode,
    FindMissingBlobsRequest, GetCapabilitiesRequest, GetTreeRequest, batch_update_blobs_request,
    compressor, digest_function,
};
use prost::Message;
use tonic::Code;

/// Sends one blob in a BatchUpdateBlobs call; returns that blob's status code.
async fn status_of_one(
    cas: &mut kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient<
        tonic::transport::Channel,
    >,
    req: batch_update_blobs_request::Request,
) -> i32 {
    let resp = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![req],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    resp.responses[0].status.as_ref().unwrap().code
}

#[tokio::test]
async fn capabilities_tell_the_truth() {
    let s = TestServer::start().await;
    let caps = s
        .capabilities()
        .await
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let cache = caps.cache_capabilities.unwrap();
    assert_eq!(
        cache.digest_functions,
        vec![
            digest_function::Value::Sha256 as i32,
            digest_function::Value::Blake3 as i32
        ]
    );
    assert_eq!(cache.max_batch_total_size_bytes, 4 << 20);
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );
    assert!(
        cache
            .supported_compressors
            .contains(&(compressor::Value::Zstd as i32))
    );
    assert!(
        cache
            .supported_batch_update_compressors
            .contains(&(compressor::Value::Zstd as i32))
    );
    assert!(cache.max_cas_blob_size_bytes > 0);
    assert_eq!(caps.low_api_version.unwrap().major, 2);
    let bad = s
        .capabilities()
        .await
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: "a/blobs/b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn find_missing_batch_update_and_read() {
    let s = TestServer::start().await;
    let mut cas = s.cas().await;
    let a = bytes(1000, 1);
    let b = bytes(70_000, 2);
    let empty = digest(b"");
    let req = FindMissingBlobsRequest {
        blob_digests: vec![
            digest(&a).to_proto(),
            digest(&b).to_proto(),
            empty.to_proto(),
        ],
        ..Default::default()
    };
    let missing = cas
        .find_missing_blobs(req.clone())
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(
        missing,
        vec![digest(&a).to_proto(), digest(&b).to_proto()],
        "empty blob is always present"
    );

    // One good blob, one zstd-compressed blob, one with a wrong hash.
    let mut compressed = upload_request(&b);
    compressed.data = Bytes::from(zstd::bulk::compress(&b, 3).unwrap());
    compressed.compressor = compressor::Value::Zstd as i32;
    let mut wrong = upload_request(b"some data");
    wrong.digest = Some(digest(b"other data").to_proto());
    let resp = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![upload_request(&a), compressed, wrong],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = resp
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, vec![0, 0, Code::InvalidArgument as i32]);
    assert!(
        resp.responses[2]
            .status
            .as_ref()
            .unwrap()
            .message
            .contains("does not match")
    );

    let missing = cas
        .find_missing_blobs(req)
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert!(missing.is_empty(), "{missing:?}");
    let other = digest(b"other data");
    let still = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![other.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(
        still.len(),
        1,
        "mismatched upload must not be stored under either digest"
    );

    let read = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![digest(&a).to_proto(), other.to_proto(), empty.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses[0].data.as_ref(), &a[..]);
    assert_eq!(
        read.responses[1].status.as_ref().unwrap().code,
        Code::NotFound as i32
    );
    assert_eq!(read.responses[2].status.as_ref().unwrap().code, 0);
    assert!(read.responses[2].data.is_empty());

    // zstd accepted by the client: the server may compress; the bytes must round-trip.
    let read = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![digest(&b).to_proto()],
            acceptable_compressors: vec![compressor::Value::Zstd as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = &read.responses[0];
    let data = if r.compressor == compressor::Value::Zstd as i32 {
        zstd::bulk::decompress(&r.data, b.len()).unwrap()
    } else {
        r.data.to_vec()
    };
    assert_eq!(data, b);
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_with_a_message() {
    let s = TestServer::start().await;
    let mut cas = s.cas().await;
    let cases: Vec<(PDigest, &str)> = vec![
        (
            PDigest {
                hash: "abc".into(),
                size_bytes: 1,
            },
            "64 lower-case hex",
        ),
        (
            PDigest {
                hash: "E".repeat(64),
                size_bytes: 1,
            },
            "64 lower-case hex",
        ),
        (
            PDigest {
                hash: "e".repeat(64),
                size_bytes: -5,
            },
            "non-negative",
        ),
    ];
    for (d, want) in cases {
        let err = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: vec![d.clone()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{d:?}");
        assert!(err.message().contains(want), "{}", err.message());
    }
    let err = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            digest_function: digest_function::Value::Md5 as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("MD5"), "{}", err.message());
    let err = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            instance_name: "x/uploads".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Over the advertised batch limit: a clear INVALID_ARGUMENT, not a transport error.
    let big = bytes(3 << 20, 3);
    let big2 = bytes(2 << 20, 4);
    let err = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![upload_request(&big), upload_request(&big2)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_batch_total_size_bytes"),
        "{}",
        err.message()
    );
    let err = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![digest(&big).to_proto(), digest(&big2).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Compressed data that does not expand to the declared size.
    let mut liar = upload_request(b"hello");
    liar.data = Bytes::from(zstd::bulk::compress(b"hello world", 1).unwrap());
    liar.compressor = compressor::Value::Zstd as i32;
    assert_eq!(
        status_of_one(&mut cas, liar).await,
        Code::InvalidArgument as i32
    );
    let mut deflate = upload_request(b"hello");
    deflate.compressor = compressor::Value::Deflate as i32;
    assert_eq!(
        status_of_one(&mut cas, deflate).await,
        Code::InvalidArgument as i32
    );
}

type CasClient =
    kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient<
        tonic::transport::Channel,
    >;

/// A root over `n` distinct subdirectories of about `pad` bytes each, all stored; its digest.
async fn wide_tree(cas: &mut CasClient, n: usize, pad: usize) -> kiln::digest::Digest {
    let mut subdirs = Vec::new();
    let mut uploads = Vec::new();
    for i in 0..n {
        let d = Directory {
            files: vec![kiln::proto::reapi::FileNode {
                name: format!("f{i}{}", "x".repeat(pad)),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        subdirs.push(DirectoryNode {
            name: format!("d{i}"),
            digest: Some(digest(&d).to_proto()),
        });
        uploads.push(upload_request(&d));
    }
    let root = Directory {
        directories: subdirs,
        ..Default::default()
    }
    .encode_to_vec();
    uploads.push(upload_request(&root));
    // In batches under the server's 4 MiB batch limit.
    let mut batch = Vec::new();
    let mut bytes = 0;
    for u in uploads {
        if !batch.is_empty() && bytes + u.data.len() > 3 << 20 {
            send_batch(cas, std::mem::take(&mut batch)).await;
            bytes = 0;
        }
        bytes += u.data.len();
        batch.push(u);
    }
    send_batch(cas, batch).await;
    digest(&root)
}

async fn send_batch(cas: &mut CasClient, requests: Vec<batch_update_blobs_request::Request>) {
    cas.batch_update_blobs(BatchUpdateBlobsRequest {
        requests,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// The bounds on GetTree walks, end to end: a tree of more directories than one walk may hold
/// is INVALID_ARGUMENT naming `cache.max_tree_directories`; while a stream holds a walk, a
/// second one that would take all walks past `cache.max_walked_directories` is
/// RESOURCE_EXHAUSTED naming it; a tree within both is served.
#[tokio::test]
async fn get_tree_walks_are_bounded_one_by_one_and_together() {
    let s = TestServer::start_with(|c| {
        c.cache.max_tree_directories = 7;
        c.cache.max_walked_directories = 12;
    })
    .await;
    // A client whose HTTP/2 stream window is 1 MiB: a stream it does not read stops once
    // about that much is sent (and a page more is buffered), its walk not done.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .initial_stream_window_size(1 << 20)
        .http2_adaptive_window(false)
        .connect()
        .await
        .unwrap();
    let mut cas = CasClient::new(channel).max_decoding_message_size(64 << 20);
    let big = wide_tree(&mut cas, 7, 0).await;
    // Pages of 1 MB each, 6 MB in all.
    let small = wide_tree(&mut cas, 6, 1_000_000).await;
    let req = |root: &kiln::digest::Digest| GetTreeRequest {
        root_digest: Some(root.to_proto()),
        page_size: 1,
        ..Default::default()
    };
    let err = cas.get_tree(req(&big)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("cache.max_tree_directories"),
        "{err:?}"
    );

    // A stream that has read one page of the small tree holds its 7 directories.
    let mut held = cas.get_tree(req(&small)).await.unwrap().into_inner();
    assert_eq!(held.message().await.unwrap().unwrap().directories.len(), 1);
    let err = cas.get_tree(req(&small)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("cache.max_walked_directories"),
        "{err:?}"
    );
    let walked = || s.counter("kiln_get_tree_walked_directories");
    assert_eq!(
        walked().await,
        7,
        "the held walk's directories, on /metrics"
    );
    // The held stream goes on to its end, and a walk done gives its directories back.
    let mut n = 1;
    while let Some(page) = held.message().await.unwrap() {
        n += page.directories.len();
    }
    assert_eq!(n, 7);
    drop(held);
    // The server drops the walk as its stream ends, which may trail the client's last read.
    for _ in 0..100 {
        if walked().await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(walked().await, 0, "a walk done gives its directories back");
    let mut again = cas.get_tree(req(&small)).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(page) = again.message().await.unwrap() {
        n += page.directories.len();
    }
    assert_eq!(n, 7, "served once the first walk was done");
}

#[tokio::test]
async fn get_tree_streams_pages_of_the_present_tree() {
    let s = TestServer::start().await;
    let mut cas = s.cas().await;
    // A root with 5 distinct subdirectories, one of them missing from the CAS.
    let mut subdirs = Vec::new();
    let mut uploads = Vec::new();
    for i in 0..5u8 {
        let d = Directory {
            files: vec![kiln::proto::reapi::FileNode {
                name: format!("f{i}"),
                ..Default::default()
            }],
            ..Default::default()
        };
        let enc = d.encode_to_vec();
        subdirs.push(DirectoryNode {
            name: format!("d{i}"),
            digest: Some(digest(&enc).to_proto()),
        });
        if i != 3 {
            uploads.push(upload_request(&enc));
        }
    }
    let root = Directory {
        directories: subdirs,
        ..Default::default()
    }
    .encode_to_vec();
    uploads.push(upload_request(&root));
    cas.batch_update_blobs(BatchUpdateBlobsRequest {
        requests: uploads,
        ..Default::default()
    })
    .await
    .unwrap();

    let req = GetTreeRequest {
        root_digest: Some(digest(&root).to_proto()),
        page_size: 2,
        ..Default::default()
    };
    let mut stream = cas.get_tree(req.clone()).await.unwrap().into_inner();
    let mut pages = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        pages.push(page);
    }
    assert_eq!(
        pages
            .iter()
            .map(|p| p.directories.len())
            .collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    assert!(pages.last().unwrap().next_page_token.is_empty());
    // Resuming from a token yields the rest.
    let token = pages[0].next_page_token.clone();
    let mut rest = cas
        .get_tree(GetTreeRequest {
            page_token: token,
            ..req.clone()
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(p) = rest.message().await.unwrap() {
        n += p.directories.len();
    }
    assert_eq!(n, 3);
    let err = cas
        .get_tree(GetTreeRequest {
            page_token: "garbage".into(),
            ..req.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = cas
        .get_tree(GetTreeRequest {
            root_digest: Some(digest(b"nope").to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// The value of one `/metrics` series of `s` (0 when absent).
async fn gauge(s: &TestServer, name: &str) -> u64 {
    let text = s.http_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// A GetTree stream the client drops part-way parks its walk (`cas::PausedTrees`); a walk
/// read to the end is not kept; a new call with the dropped stream's token gets exactly the
/// rest, whether it continues a parked walk or walks again.
#[tokio::test]
async fn a_dropped_get_tree_stream_parks_its_walk() {
    let s = TestServer::start().await;
    let mut cas = s.cas().await;
    // 3,000 leaf directories of about 1 KiB each under one root: far more than the stream
    // can run ahead of a client that stops reading.
    let root = wide_tree(&mut cas, 3000, 1000).await;
    let req = GetTreeRequest {
        root_digest: Some(root.to_proto()),
        page_size: 10,
        ..Default::default()
    };

    // Read to the end: nothing parked.
    let mut all = Vec::new();
    let mut stream = cas.get_tree(req.clone()).await.unwrap().into_inner();
    while let Some(page) = stream.message().await.unwrap() {
        all.extend(page.directories);
    }
    assert_eq!(all.len(), 3001);
    assert_eq!(gauge(&s, "kiln_get_tree_paused_walks").await, 0);

    // One page, then the client goes away: the walk is parked.
    let mut stream = cas.get_tree(req.clone()).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    drop(stream);
    common::wait::poll_until(
        "the dropped stream's walk parked",
        std::time::Duration::from_secs(30),
        || async { (gauge(&s, "kiln_get_tree_paused_walks").await == 1).then_some(()) },
    )
    .await;
    assert!(gauge(&s, "kiln_get_tree_paused_bytes").await > 10 * 128);

    // The client resumes from the last page it got: the rest, in order.
    let mut rest = first.directories;
    let mut stream = cas
        .get_tree(GetTreeRequest {
            page_token: first.next_page_token,
            ..req
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(page) = stream.message().await.unwrap() {
        rest.extend(page.directories);
    }
    assert_eq!(rest, all);
    let continued = gauge(&s, "kiln_get_tree_resumes_continued").await;
    let rewalked = gauge(&s, "kiln_get_tree_resumes_rewalked").await;
    assert_eq!(continued + rewalked, 1, "one resumed call");
}
