//! The Remote Asset API over HTTPS and with `[auth]`: origins verified against the system's
//! CA roots (and kiln starting without any), and the rights Fetch, Push, SplitBlob and
//! SpliceBlob need.

mod asset_support;
mod common;

use asset_support::*;
use common::{TestServer, digest};
use kiln::proto::asset::fetch_client::FetchClient;
use kiln::proto::asset::push_client::PushClient;
use kiln::proto::asset::{FetchBlobRequest, PushBlobRequest};
use tonic::Code;

/// A request with the read-only token of [`fetch_and_split_need_read_push_and_splice_need_write`].
fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        "Bearer reader-0123456789abcdef".parse().unwrap(),
    );
    r
}

/// With `[auth]` on: Fetch and SplitBlob need `read`, Push and SpliceBlob `write`.
#[tokio::test]
async fn fetch_and_split_need_read_push_and_splice_need_write() {
    let dir = tempfile::tempdir().unwrap();
    let token = "reader-0123456789abcdef";
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[principal]]\nname = \"reader\"\ntoken_sha256 = {:?}\nrights = [\"read\"]\n",
            kiln::auth::token_sha256(token)
        ),
    )
    .unwrap();
    let path = tokens.to_str().unwrap().to_string();
    let s = TestServer::start_with(move |c| c.auth.tokens_file = path).await;
    let fetched = FetchClient::new(s.channel().await)
        .fetch_blob(authed(FetchBlobRequest {
            uris: vec!["urn:nothing".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(&fetched),
        Code::NotFound,
        "allowed, and nothing pushed"
    );
    let denied = PushClient::new(s.channel().await)
        .push_blob(authed(PushBlobRequest {
            uris: vec!["urn:x".into()],
            blob_digest: Some(digest(b"x").to_proto()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("write"), "{}", denied.message());

    let mut cas = s.cas().await;
    let split = cas
        .split_blob(authed(kiln::proto::reapi::SplitBlobRequest {
            blob_digest: Some(digest(b"x").to_proto()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(split.code(), Code::NotFound, "allowed: {split:?}");
    let splice = cas
        .splice_blob(authed(kiln::proto::reapi::SpliceBlobRequest {
            blob_digest: Some(digest(b"x").to_proto()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(splice.code(), Code::PermissionDenied, "{splice:?}");
}

/// A system without CA certificates: kiln still starts, plain HTTP downloads work, and an
/// HTTPS one is refused with the reason instead of a TLS error (rustls-native-certs reads only
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` when they are set, so pointing them nowhere leaves no roots).
#[tokio::test]
async fn without_ca_roots_kiln_starts_and_says_why_https_fails() {
    let origin = Origin::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("no-certs");
    let nowhere = nowhere.to_str().unwrap();
    let config = small_store_config(tmp.path());
    let server = common::process::KilnServer::start_with_env(
        &tmp.path().join("data"),
        &tmp.path().join("kiln.log"),
        &["--config", config.to_str().unwrap()],
        &[("SSL_CERT_FILE", nowhere), ("SSL_CERT_DIR", nowhere)],
    );
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", server.port))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut fetch = FetchClient::new(channel);
    let https = fetch
        .fetch_blob(FetchBlobRequest {
            uris: vec!["https://127.0.0.1:1/x".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&https), Code::Unavailable, "{:?}", https.status);
    assert!(
        https.status.unwrap().message.contains("CA certificates"),
        "the reason is given"
    );
    let http = fetch
        .fetch_blob(FetchBlobRequest {
            uris: vec![origin.url("/other")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&http), Code::Ok, "{:?}", http.status);
}

/// HTTPS origins: one whose certificate a CA in kiln's roots (`SSL_CERT_FILE`) signed is
/// downloaded and verified; one signed by another CA is refused (UNAVAILABLE naming the
/// certificate problem) and nothing is stored.
#[tokio::test]
async fn https_origins_are_verified_against_the_system_roots() {
    let trusted = common::pki::Ca::new("kiln test roots");
    let stranger = common::pki::Ca::new("someone else");
    let good = Origin::start_tls(Some(trusted.leaf("origin", &["127.0.0.1"], true))).await;
    let bad = Origin::start_tls(Some(stranger.leaf("origin", &["127.0.0.1"], true))).await;
    let tmp = tempfile::tempdir().unwrap();
    let roots = tmp.path().join("roots.pem");
    std::fs::write(&roots, &trusted.pem).unwrap();
    let nowhere = tmp.path().join("no-dir");
    let config = small_store_config(tmp.path());
    let server = common::process::KilnServer::start_with_env(
        &tmp.path().join("data"),
        &tmp.path().join("kiln.log"),
        &["--config", config.to_str().unwrap()],
        &[
            ("SSL_CERT_FILE", roots.to_str().unwrap()),
            ("SSL_CERT_DIR", nowhere.to_str().unwrap()),
        ],
    );
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", server.port))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut fetch = FetchClient::new(channel);
    let want = content();
    let https = |o: &Origin| o.url("/file").replace("http://", "https://");
    let ok = fetch
        .fetch_blob(FetchBlobRequest {
            uris: vec![https(&good)],
            qualifiers: vec![qualifier("checksum.sri", &sri(&want))],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&ok), Code::Ok, "{:?}", ok.status);
    assert_eq!(ok.blob_digest, Some(digest(&want).to_proto()));
    assert_eq!(good.hits(), 1);

    let refused = fetch
        .fetch_blob(FetchBlobRequest {
            uris: vec![bad.url("/other").replace("http://", "https://")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&refused), Code::Unavailable, "{:?}", refused.status);
    let msg = refused.status.unwrap().message;
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    assert_eq!(bad.hits(), 0, "no request after a failed handshake");
}
