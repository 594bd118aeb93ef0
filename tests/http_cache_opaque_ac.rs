//! The HTTP cache API's opaque `/ac/` values (ccache's): storing one needs the `write` right
//! too (its bytes become a CAS blob anyone may read), and the last PUT of a key wins whether it
//! was an ActionResult or an opaque value. Found by an adversarial review.

mod common;

use common::http;
use common::{TestServer, digest, tokens_file};
use kiln::proto::reapi::ActionResult;
use prost::Message;

/// A PUT to `/ac/<hash>` replaces what the key held: a GET afterwards returns the last value
/// written, whichever of the two kinds (ActionResult or opaque value) each write was.
#[tokio::test]
async fn ac_put_of_an_opaque_value_replaces_an_earlier_action_result() {
    let (_server, addr) = TestServer::with_http_cache(|_| {}).await;
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
    // And back: an ActionResult PUT after the opaque value is what GET serves.
    let r = http::put(&addr, &path, &result).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::get(&addr, &path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == result, "GET /ac/ served the older opaque value");
}

/// `PUT /ac/` needs `cache-write`, and over gRPC that right stores no CAS blob
/// (UpdateActionResult drops inlined bytes). An opaque `/ac/` value is stored in the CAS under
/// its own SHA-256, so it must also need `write`: otherwise a principal without `write` puts
/// arbitrary blobs in the CAS, served to everyone by `GET /cas/` and gRPC.
#[tokio::test]
async fn an_opaque_ac_put_does_not_store_cas_blobs_without_the_write_right() {
    use common::http::Body;
    let dir = tempfile::tempdir().unwrap();
    let t = tokens_file(
        dir.path(),
        &[
            ("cacher", "cache-token", &["read", "cache-write"]),
            ("reader", "read-token", &["read"]),
        ],
    );
    let (_server, addr) = TestServer::with_http_cache(move |c| c.auth.tokens_file = t).await;
    let payload = b"any bytes the cacher wants in the CAS, no write right needed".to_vec();
    let cas_path = format!("/cas/{}", digest(&payload).hash_hex());
    let ac_path = format!("/ac/{}", digest(b"some key").hash_hex());
    // Directly: refused (403), as the cacher lacks `write`.
    let r = http::request(
        &addr,
        "PUT",
        &cas_path,
        &[("Authorization", "Bearer cache-token")],
        Body::Sized(&payload),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // Through an opaque /ac/ value.
    let _ = http::request(
        &addr,
        "PUT",
        &ac_path,
        &[("Authorization", "Bearer cache-token")],
        Body::Sized(&payload),
    )
    .await;
    let r = http::request(
        &addr,
        "GET",
        &cas_path,
        &[("Authorization", "Bearer read-token")],
        Body::None,
    )
    .await;
    assert_eq!(
        r.status, 404,
        "a principal without `write` stored a CAS blob through PUT /ac/ (GET /cas/ answered {})",
        r.status
    );
}
