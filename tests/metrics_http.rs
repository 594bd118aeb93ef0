//! The metrics endpoint reflects what the services did.

mod common;

use common::wait::poll_until;
use common::{TestServer, digest, read_name};
use kiln::proto::reapi::FindMissingBlobsRequest;

#[tokio::test]
async fn metrics_and_status_count_lookups() {
    let s = TestServer::start().await;
    let req = FindMissingBlobsRequest {
        blob_digests: vec![digest(b"a").to_proto(), digest(b"b").to_proto()],
        ..Default::default()
    };
    s.cas().await.find_missing_blobs(req).await.unwrap();
    let text = s.http_get("/metrics").await;
    assert!(
        text.contains(r#"kiln_store_contains_total{space="cas",result="miss"} 2"#),
        "{text}"
    );
    assert!(text.contains("# EOF"), "{text}");
    let status = s.http_get("/status").await;
    assert!(status.contains("cas: 0 hits, 2 misses"), "{status}");
}

/// The value of series `key` in a `/metrics` text, if exposed.
fn series(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn status_page_is_html_never_cached_and_renders_before_the_plots_have_data() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| c.server.status_sample_interval_ms = 60_000).await;
    let mut conn = tokio::net::TcpStream::connect(s.metrics_addr)
        .await
        .unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    // One sample a minute: the ring holds at most one, too few to draw a line.
    assert!(body.contains("collecting…"), "{body}");
    assert!(body.contains("http-equiv=refresh"), "{body}");
    assert!(body.ends_with("</html>\n"), "{body}");
}

#[tokio::test]
async fn every_rpc_is_counted_with_its_code_and_timed() {
    use kiln::proto::bytestream::ReadRequest;
    use kiln::proto::reapi::{
        BatchUpdateBlobsRequest, GetActionResultRequest, batch_update_blobs_request,
    };
    let s = TestServer::start().await;
    // OK in the trailers.
    let req = FindMissingBlobsRequest {
        blob_digests: vec![digest(b"a").to_proto()],
        ..Default::default()
    };
    s.cas().await.find_missing_blobs(req).await.unwrap();
    // An error status.
    let miss = s
        .ac()
        .await
        .get_action_result(GetActionResultRequest {
            action_digest: Some(digest(b"no such action").to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(miss.code(), tonic::Code::NotFound);
    // A stream the client abandons after its first message.
    let data = common::bytes(4 << 20, 3);
    let d = digest(&data);
    let up = BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(d.to_proto()),
            data: data.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut cas = s.cas().await.max_encoding_message_size(64 << 20);
    cas.batch_update_blobs(up).await.unwrap();
    let mut stream = s
        .bytestream()
        .await
        .read(ReadRequest {
            resource_name: read_name(&d),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);

    let find = r#"kiln_grpc_requests_total{method="ContentAddressableStorage/FindMissingBlobs",code="OK"}"#;
    let get = r#"kiln_grpc_requests_total{method="ActionCache/GetActionResult",code="NOT_FOUND"}"#;
    let read = r#"kiln_grpc_requests_total{method="ByteStream/Read",code="CANCELLED"}"#;
    // The abandoned read is counted once the server notices the reset stream.
    let text = poll_until(
        "the abandoned read is counted",
        std::time::Duration::from_secs(20),
        || async {
            let text = s.http_get("/metrics").await;
            series(&text, read).is_some().then_some(text)
        },
    )
    .await;
    assert_eq!(series(&text, find), Some(1.0), "{text}");
    assert_eq!(series(&text, get), Some(1.0), "{text}");
    assert_eq!(series(&text, read), Some(1.0), "{text}");
    let count = r#"kiln_grpc_request_duration_seconds_count{method="ContentAddressableStorage/FindMissingBlobs"}"#;
    assert_eq!(series(&text, count), Some(1.0), "{text}");
    // The status views show them.
    let status = s.http_get("/status").await;
    assert!(
        status.contains("ActionCache/GetActionResult NOT_FOUND: 1"),
        "{status}"
    );
    assert!(
        status.contains("ContentAddressableStorage/FindMissingBlobs: 1 requests, 0 errors, p50 "),
        "{status}"
    );
}
