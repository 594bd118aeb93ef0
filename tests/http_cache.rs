//! The HTTP cache API (bazel-remote's layout) over a real socket: round trips of `/cas/` and
//! `/ac/`, the same entries seen over gRPC both ways, the instance prefix, ccache-style opaque
//! `/ac/` values, and zstd.

mod common;

use common::http::{self, Body};
use common::{TestServer, bytes, digest};
use kiln::proto::reapi::{
    ActionResult, BatchReadBlobsRequest, FindMissingBlobsRequest, GetActionResultRequest,
    OutputFile, UpdateActionResultRequest,
};
use prost::Message;
use tonic::Code;

async fn start() -> (TestServer, String) {
    TestServer::with_http_cache(|_| {}).await
}

fn hex(data: &[u8]) -> String {
    digest(data).hash_hex()
}

/// An ActionResult with one output file and a stdout blob.
fn result_for(out: &[u8], stdout: &[u8]) -> ActionResult {
    ActionResult {
        output_files: vec![OutputFile {
            path: "out/a.o".into(),
            digest: Some(digest(out).to_proto()),
            is_executable: true,
            ..Default::default()
        }],
        exit_code: 0,
        stdout_digest: Some(digest(stdout).to_proto()),
        ..Default::default()
    }
}

#[tokio::test]
async fn cas_put_get_head_and_missing() {
    let (_server, addr) = start().await;
    let data = bytes(300_000, 1);
    let path = format!("/cas/{}", hex(&data));
    let r = http::get(&addr, &path).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = http::request(&addr, "HEAD", &path, &[], Body::None).await;
    assert_eq!(r.status, 404);
    let r = http::put(&addr, &path, &data).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::get(&addr, &path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == data, "GET returned other bytes");
    let r = http::request(&addr, "HEAD", &path, &[], Body::None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("300000"));
    assert!(r.body.is_empty());
    // A chunked upload (no Content-Length) of another blob is stored too.
    let other = bytes(70_000, 2);
    let opath = format!("/cas/{}", hex(&other));
    let r = http::request(&addr, "PUT", &opath, &[], Body::Chunked(&other, 10_000)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(http::get(&addr, &opath).await.body == other);
    // The empty blob is always there.
    let r = http::get(&addr, &format!("/cas/{}", hex(b""))).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[tokio::test]
async fn grpc_sees_http_blobs_and_http_sees_grpc_blobs() {
    let (server, addr) = start().await;
    let over_http = bytes(5000, 3);
    let r = http::put(&addr, &format!("/cas/{}", hex(&over_http)), &over_http).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let read = server
        .cas()
        .await
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![digest(&over_http).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses[0].status.as_ref().unwrap().code, 0);
    assert_eq!(read.responses[0].data, over_http);

    let over_grpc = bytes(6000, 4);
    server.upload(&[&over_grpc]).await;
    let r = http::get(&addr, &format!("/cas/{}", hex(&over_grpc))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == over_grpc);
}

#[tokio::test]
async fn action_results_are_shared_with_grpc_both_ways() {
    let (server, addr) = start().await;
    let (out, stdout) = (bytes(1000, 5), b"compiled\n".to_vec());
    for b in [&out, &stdout] {
        let r = http::put(&addr, &format!("/cas/{}", hex(b)), b).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Bazel's way: PUT the serialized ActionResult under the action's hash.
    let action = b"action one".to_vec();
    let result = result_for(&out, &stdout);
    let sent = result.encode_to_vec();
    let path = format!("/ac/{}", hex(&action));
    assert_eq!(http::get(&addr, &path).await.status, 404);
    let r = http::put(&addr, &path, &sent).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::get(&addr, &path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, sent, "GET /ac/ returns the ActionResult as sent");
    // gRPC names the action with its size and gets the same entry.
    let got = server
        .ac()
        .await
        .get_action_result(GetActionResultRequest {
            action_digest: Some(digest(&action).to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, result);

    // The other way: UpdateActionResult, then GET /ac/.
    let action2 = b"action two".to_vec();
    let mut result2 = result_for(&out, &stdout);
    result2.exit_code = 3;
    server
        .ac()
        .await
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(digest(&action2).to_proto()),
            action_result: Some(result2.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = http::get(&addr, &format!("/ac/{}", hex(&action2))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ActionResult::decode(&r.body[..]).unwrap(), result2);
}

#[tokio::test]
async fn an_action_result_whose_outputs_are_gone_is_a_miss_and_a_bad_one_is_refused() {
    let (_server, addr) = start().await;
    // The output was never uploaded: GET /ac/ must not hand out a result it cannot serve.
    let result = result_for(b"never uploaded", b"");
    let path = format!("/ac/{}", hex(b"action"));
    let r = http::put(&addr, &path, &result.encode_to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::get(&addr, &path).await;
    assert_eq!(r.status, 404, "{}", r.text());
    // An ActionResult that UpdateActionResult refuses (an absolute output path) is refused.
    let mut bad = result_for(b"x", b"");
    bad.output_files[0].path = "/etc/passwd".into();
    let r = http::put(&addr, &path, &bad.encode_to_vec()).await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn opaque_ac_values_round_trip_byte_for_byte_and_stay_out_of_grpc() {
    let (server, addr) = start().await;
    // What ccache's layout=bazel stores: its own format (magic "cCrS"), not an ActionResult.
    let mut value = b"cCrS\x00\x01".to_vec();
    value.extend(bytes(4000, 6));
    let key = hex(b"ccache key");
    let path = format!("/ac/{key}");
    let r = http::put(&addr, &path, &value).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::get(&addr, &path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == value, "the opaque value came back changed");
    let r = http::request(&addr, "HEAD", &path, &[], Body::None).await;
    assert_eq!(
        r.header("content-length"),
        Some(value.len().to_string().as_str())
    );
    let err = server
        .ac()
        .await
        .get_action_result(GetActionResultRequest {
            action_digest: Some(
                kiln::digest::Digest::parse(kiln::digest::DigestFunction::Sha256, &key, 1)
                    .unwrap()
                    .to_proto(),
            ),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // With opaque values off, such a body is refused and nothing is stored.
    let (_server2, addr2) = TestServer::with_http_cache(|c| c.http_cache.opaque_ac = false).await;
    let r = http::put(&addr2, &path, &value).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(http::get(&addr2, &path).await.status, 404);
}

#[tokio::test]
async fn instance_prefixes_are_separate_action_caches_over_one_cas() {
    let (server, addr) = start().await;
    let out = bytes(100, 7);
    let r = http::put(&addr, &format!("/team/a/cas/{}", hex(&out)), &out).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The CAS is shared by every instance, as over gRPC.
    assert_eq!(
        http::get(&addr, &format!("/cas/{}", hex(&out)))
            .await
            .status,
        200
    );
    assert_eq!(
        http::get(&addr, &format!("/b/cas/{}", hex(&out)))
            .await
            .status,
        200
    );

    let result = result_for(&out, b"");
    let key = hex(b"action");
    let r = http::put(&addr, &format!("/team/a/ac/{key}"), &result.encode_to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        http::get(&addr, &format!("/team/a/ac/{key}")).await.status,
        200
    );
    assert_eq!(http::get(&addr, &format!("/ac/{key}")).await.status, 404);
    assert_eq!(
        http::get(&addr, &format!("/team/ac/{key}")).await.status,
        404
    );
    assert_eq!(
        http::get(&addr, &format!("/team/b/ac/{key}")).await.status,
        404
    );
    // gRPC's instance "team/a" is the same namespace.
    let got = server
        .ac()
        .await
        .get_action_result(GetActionResultRequest {
            instance_name: "team/a".into(),
            action_digest: Some(digest(b"action").to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, result);
    // Instance names gRPC refuses are refused here too.
    for bad in ["/blobs/ac/", "/a//b/ac/", "/../ac/"] {
        let r = http::get(&addr, &format!("{bad}{key}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
}

#[tokio::test]
async fn zstd_uploads_and_downloads() {
    let (server, addr) = start().await;
    let data = bytes(200_000, 8).repeat(3);
    let z = zstd::bulk::compress(&data, 3).unwrap();
    let path = format!("/cas/{}", hex(&data));
    let r = http::request(
        &addr,
        "PUT",
        &path,
        &[("Content-Encoding", "zstd")],
        Body::Sized(&z),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let missing = server
        .cas()
        .await
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![digest(&data).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        missing.missing_blob_digests.is_empty(),
        "stored decompressed"
    );
    let r = http::request(
        &addr,
        "GET",
        &path,
        &[("Accept-Encoding", "gzip, zstd")],
        Body::None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    assert!(r.body.len() < data.len());
    assert!(zstd::stream::decode_all(&r.body[..]).unwrap() == data);
    let r = http::get(&addr, &path).await;
    assert_eq!(r.header("content-encoding"), None);
    assert!(r.body == data);
    // A zstd body that decompresses to other bytes is refused and not stored.
    let other = zstd::bulk::compress(b"other bytes", 3).unwrap();
    let wrong = format!("/cas/{}", hex(b"something else"));
    let r = http::request(
        &addr,
        "PUT",
        &wrong,
        &[("Content-Encoding", "zstd")],
        Body::Sized(&other),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(http::get(&addr, &wrong).await.status, 404);
    // Encodings kiln does not speak are refused.
    let r = http::request(
        &addr,
        "PUT",
        &path,
        &[("Content-Encoding", "br")],
        Body::Sized(&z),
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.text());
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_accepting() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, addr) = start().await;
    // A keep-alive connection that has finished one request and waits for the next.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!("GET /cas/{} HTTP/1.1\r\nHost: x\r\n\r\n", hex(b""));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    server.stop().await;
    let n = tokio::time::timeout(http::TIMEOUT, s.read(&mut buf))
        .await
        .expect("the idle connection stays open after shutdown")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected the connection closed");
    common::wait::poll_until("the listener to close", http::TIMEOUT, || {
        let addr = addr.clone();
        async move {
            tokio::net::TcpStream::connect(&addr)
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
}
