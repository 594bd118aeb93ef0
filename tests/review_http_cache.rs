//! Review findings on the HTTP cache API (adversarial tests; see the commit messages).

mod common;

use common::http;
use common::{TestServer, digest};
use kiln::proto::reapi::ActionResult;
use prost::Message;

async fn start() -> (TestServer, String) {
    let server = TestServer::start_with(|c| {
        c.http_cache.listen = "127.0.0.1:0".into();
    })
    .await;
    let addr = server
        .http_cache_addr
        .expect("the HTTP cache API listens")
        .to_string();
    (server, addr)
}

/// A PUT to `/ac/<hash>` replaces what the key held: a GET afterwards returns the last value
/// written, whichever of the two kinds (ActionResult or opaque value) each write was.
#[tokio::test]
async fn ac_put_of_an_opaque_value_replaces_an_earlier_action_result() {
    let (_server, addr) = start().await;
    let path = format!("/ac/{}", digest(b"one key, two values").hash_hex());
    // First a canonical ActionResult (no outputs: always complete).
    let result = ActionResult {
        exit_code: 3,
        ..Default::default()
    }
    .encode_to_vec();
    let r = http::put(&addr, &path, &result).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(http::get(&addr, &path).await.body == result);
    // Then an opaque (ccache-style) value under the same key.
    let mut value = b"cCrS\x00\x01".to_vec();
    value.extend(std::iter::repeat_n(7u8, 100));
    let r = http::put(&addr, &path, &value).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::get(&addr, &path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.body == value,
        "GET /ac/ after PUT served a stale value ({} bytes, the earlier ActionResult) \
         instead of the {} bytes just stored",
        r.body.len(),
        value.len()
    );
}
