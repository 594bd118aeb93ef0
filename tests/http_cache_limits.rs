//! The HTTP cache API's refusals: bodies that do not match their path, sizes over the limits
//! (refused before the body is read), stalled bodies, auth (401/403 with the same rights as
//! gRPC), unknown methods; and its metrics.

mod common;

use common::http::{self, Body};
use common::{TestServer, bytes, digest, tokens_file};
use kiln::proto::reapi::FindMissingBlobsRequest;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn hex(data: &[u8]) -> String {
    digest(data).hash_hex()
}

async fn is_stored(server: &TestServer, data: &[u8]) -> bool {
    let missing = server
        .cas()
        .await
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![digest(data).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    missing.missing_blob_digests.is_empty()
}

#[tokio::test]
async fn a_body_that_does_not_match_its_path_is_refused_and_not_stored() {
    let (server, addr) = TestServer::with_http_cache(|_| {}).await;
    let claimed = bytes(10_000, 1);
    let sent = bytes(10_000, 2);
    let path = format!("/cas/{}", hex(&claimed));
    // Streamed (Content-Length) and buffered (chunked) uploads alike.
    for body in [Body::Sized(&sent), Body::Chunked(&sent, 3000)] {
        let r = http::request(&addr, "PUT", &path, &[], body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(
            r.text().contains(&hex(&sent)),
            "names the body's hash: {}",
            r.text()
        );
        assert_eq!(http::get(&addr, &path).await.status, 404);
        assert!(!is_stored(&server, &claimed).await);
        assert!(!is_stored(&server, &sent).await);
    }
    // A truncated body (right prefix, too short) is refused too.
    let r = http::put(&addr, &path, &claimed[..9000]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!is_stored(&server, &claimed).await);
    // Paths that name no entry.
    for p in ["/", "/cas/abc", "/cas/ABCDEF", "/metrics"] {
        let r = http::get(&addr, p).await;
        assert!(r.status == 404 || r.status == 400, "{p}: {}", r.status);
    }
}

/// Sends only the head of a PUT declaring `len` bytes and reads the answer.
async fn put_head_only(addr: &str, path: &str, len: u64) -> http::Response {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // Half-close: the server must answer without waiting for a body that never comes.
    s.shutdown().await.unwrap();
    http::read_response(&mut s).await
}

#[tokio::test]
async fn sizes_over_the_limits_are_refused_before_the_body_is_read() {
    let (server, addr) = TestServer::with_http_cache(|c| {
        c.cache.max_batch_total_size_bytes = 512 << 10;
        c.cache.max_message_bytes = 1 << 20;
        c.http_cache.max_buffered_body_bytes = 256 << 10;
    })
    .await;
    let max_blob = server.config.storage.max_blob_size_bytes;
    let r = put_head_only(&addr, &format!("/cas/{}", hex(b"x")), max_blob + 1).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("max_blob_size"), "{}", r.text());
    let r = put_head_only(&addr, &format!("/ac/{}", hex(b"x")), 2 << 20).await;
    assert_eq!(r.status, 413, "{}", r.text());
    // A chunked body is cut off once it passes the buffered limit.
    let big = bytes(300 << 10, 3);
    let path = format!("/cas/{}", hex(&big));
    let r = http::request(&addr, "PUT", &path, &[], Body::Chunked(&big, 64 << 10)).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(!is_stored(&server, &big).await);
    // The same blob with a Content-Length streams to disk and is stored.
    let r = http::put(&addr, &path, &big).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A zstd bomb: small body, huge output.
    let bomb = zstd::bulk::compress(&vec![0u8; 8 << 20], 3).unwrap();
    let r = http::request(
        &addr,
        "PUT",
        &format!("/cas/{}", hex(&vec![0u8; 8 << 20])),
        &[("Content-Encoding", "zstd")],
        Body::Sized(&bomb),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
}

#[tokio::test]
async fn a_stalled_body_times_out() {
    let (server, addr) =
        TestServer::with_http_cache(|c| c.http_cache.body_idle_timeout_secs = 1).await;
    let data = bytes(1000, 4);
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /cas/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        hex(&data),
        data.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&data[..100]).await.unwrap();
    // ... and nothing more, without closing: the server gives up on its own.
    let started = Instant::now();
    let r = http::read_response(&mut s).await;
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(25));
    assert!(!is_stored(&server, &data).await);
}

#[tokio::test]
async fn auth_rights_are_the_grpc_ones_with_bearer_or_basic_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let t = tokens_file(
        dir.path(),
        &[
            ("reader", "read-token", &["read"]),
            ("writer", "write-token", &["read", "write"]),
            ("ci", "ci-token", &["read", "write", "cache-write"]),
        ],
    );
    let (server, addr) = TestServer::with_http_cache(move |c| c.auth.tokens_file = t).await;
    let data = bytes(500, 5);
    let path = format!("/cas/{}", hex(&data));
    let bearer = |t: &str| format!("Bearer {t}");
    let basic = |t: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ccache:{t}"))
        )
    };
    let put = |auth: Option<String>, path: String| {
        let addr = addr.clone();
        let data = data.clone();
        async move {
            let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            http::request(&addr, "PUT", &path, &h, Body::Sized(&data)).await
        }
    };
    // No credentials: 401 with a challenge; an unknown token: 401.
    let r = put(None, path.clone()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.contains("Basic"))
    );
    assert_eq!(http::get(&addr, &path).await.status, 401);
    assert_eq!(put(Some(bearer("nope")), path.clone()).await.status, 401);
    // A reader may not write (403), and nothing is stored.
    let r = put(Some(bearer("read-token")), path.clone()).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("write"), "{}", r.text());
    let r = http::request(
        &addr,
        "GET",
        &path,
        &[("Authorization", &bearer("read-token"))],
        Body::None,
    )
    .await;
    assert_eq!(r.status, 404, "nothing stored: {}", r.text());
    // A writer may, with Bearer or with Basic (the token as password).
    assert_eq!(
        put(Some(bearer("write-token")), path.clone()).await.status,
        200
    );
    let r = http::request(
        &addr,
        "GET",
        &path,
        &[("Authorization", &basic("read-token"))],
        Body::None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == data);
    // /ac/ uploads need cache-write, like UpdateActionResult.
    let ac = format!("/ac/{}", hex(b"action"));
    assert_eq!(
        put(Some(basic("write-token")), ac.clone()).await.status,
        403
    );
    assert_eq!(put(Some(basic("ci-token")), ac.clone()).await.status, 200);
    // The token is never logged: nothing to check in-process, but the denial was counted.
    let metrics = server.http_get("/metrics").await;
    assert!(
        metrics.contains("kiln_auth_denied_total{principal=\"reader\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn methods_and_metrics() {
    let (server, addr) = TestServer::with_http_cache(|_| {}).await;
    let data = bytes(1234, 6);
    let path = format!("/cas/{}", hex(&data));
    let r = http::request(&addr, "DELETE", &path, &[], Body::None).await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT"));
    assert_eq!(http::put(&addr, &path, &data).await.status, 200);
    assert_eq!(http::get(&addr, &path).await.status, 200);
    assert_eq!(
        http::get(&addr, &format!("/ac/{}", hex(b"none")))
            .await
            .status,
        404
    );
    let m = server.http_get("/metrics").await;
    for line in [
        "kiln_http_cache_requests_total{method=\"PUT\",kind=\"cas\",status=\"200\"} 1",
        "kiln_http_cache_requests_total{method=\"GET\",kind=\"cas\",status=\"200\"} 1",
        "kiln_http_cache_requests_total{method=\"GET\",kind=\"ac\",status=\"404\"} 1",
        "kiln_http_cache_requests_total{method=\"other\",kind=\"cas\",status=\"405\"} 1",
        "kiln_http_cache_bytes_received_total 1234",
        "kiln_http_cache_bytes_sent_total 1234",
    ] {
        assert!(m.contains(line), "/metrics lacks {line}:\n{m}");
    }
    // And on the status page's text form.
    let status = server.http_get("/status").await;
    for line in [
        "HTTP cache: blobs uploaded: 1",
        "HTTP cache: /ac/ misses: 1",
    ] {
        assert!(status.contains(line), "/status lacks {line:?}:\n{status}");
    }
}

#[tokio::test]
async fn uploads_past_the_memory_budget_get_503_until_it_frees() {
    let (_server, addr) = TestServer::with_http_cache(|c| {
        let part = c.storage.part_size_bytes;
        c.http_cache.max_buffer_bytes = part;
        c.http_cache.max_buffered_body_bytes = part;
    })
    .await;
    // One streamed upload reserves a whole store part (the budget) and stalls mid-body.
    let big = bytes(3 << 20, 7);
    let mut held = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /cas/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        hex(&big),
        big.len()
    );
    held.write_all(head.as_bytes()).await.unwrap();
    held.write_all(&big[..1000]).await.unwrap();
    let small = bytes(5000, 8);
    let path = format!("/cas/{}", hex(&small));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http::put(&addr, &path, &small).await;
        if r.status == 503 {
            assert!(r.text().contains("max_buffer_bytes"), "{}", r.text());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never refused: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stalled client goes away: its reservation is freed and uploads go through again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http::put(&addr, &path, &small).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "the budget was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
