//! The metrics endpoint reflects what the services did.

mod common;

use common::{TestServer, digest};
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
