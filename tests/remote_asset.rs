//! The Remote Asset API (Fetch and Push) against a local HTTP origin started here, which
//! counts the requests it serves: a first fetch downloads, a second is answered without the
//! origin; a wrong checksum is refused and nothing stored; an origin that is down, answers
//! 404, sends too much or redirects forever gets a clear inline status; pushed assets are
//! answered by URI and qualifiers. HTTPS origins and rights: `remote_asset_tls_auth.rs`.

mod asset_support;
mod common;

use asset_support::*;
use common::process::metric_value;
use common::{TestServer, digest, upload_request};
use kiln::proto::asset::fetch_client::FetchClient;
use kiln::proto::asset::push_client::PushClient;
use kiln::proto::asset::{
    FetchBlobRequest, FetchDirectoryRequest, PushBlobRequest, PushDirectoryRequest,
};
use kiln::proto::reapi::{BatchUpdateBlobsRequest, Directory};
use prost::Message;
use tonic::Code;

#[tokio::test]
async fn first_fetch_downloads_the_second_does_not_touch_the_origin() {
    let origin = Origin::start().await;
    let s = start().await;
    let want = content();
    let checksum = vec![qualifier("checksum.sri", &sri(&want))];

    let first = fetch(&s, &[origin.url("/file")], checksum.clone()).await;
    assert_eq!(code(&first), Code::Ok, "{:?}", first.status);
    assert_eq!(first.uri, origin.url("/file"));
    let d = first.blob_digest.clone().unwrap();
    assert_eq!(d, digest(&want).to_proto());
    assert_eq!(origin.hits(), 1);
    assert!(
        read(&s, &d).await == want,
        "the CAS serves the downloaded bytes"
    );

    // The same fetch, and the same checksum at another URI: from kiln, not the origin.
    let again = fetch(&s, &[origin.url("/file")], checksum.clone()).await;
    assert_eq!(again.blob_digest, Some(d.clone()));
    let mirror = fetch(&s, &["https://mirror.invalid/f".into()], checksum).await;
    assert_eq!(code(&mirror), Code::Ok, "{:?}", mirror.status);
    assert_eq!(mirror.blob_digest, Some(d.clone()));
    assert_eq!(origin.hits(), 1, "served without touching the origin");

    // Without a checksum: downloaded once, then remembered by URI.
    let plain = fetch(&s, &[origin.url("/other")], vec![]).await;
    assert_eq!(plain.blob_digest, Some(digest(b"other bytes").to_proto()));
    let plain_again = fetch(&s, &[origin.url("/other")], vec![]).await;
    assert_eq!(plain_again.blob_digest, plain.blob_digest);
    assert_eq!(origin.hits(), 2);

    // A dead first mirror, a redirect to the file: the second URI answers.
    let moved = fetch(
        &s,
        &["http://127.0.0.1:1/x".into(), origin.url("/moved")],
        vec![qualifier("bazel.canonical_id", "moved")],
    )
    .await;
    assert_eq!(code(&moved), Code::Ok, "{:?}", moved.status);
    assert_eq!(moved.uri, origin.url("/moved"));
    assert_eq!(moved.blob_digest, Some(d));

    let metrics = s.http_get("/metrics").await;
    let count = |name: &str| metric_value(&metrics, name) as u64;
    assert_eq!(count("kiln_remote_asset_downloads_total"), 3);
    assert_eq!(count("kiln_remote_asset_fetch_hits_total"), 3);
    assert_eq!(
        count("kiln_remote_asset_downloaded_bytes_total"),
        (2 * CONTENT_LEN + 11) as u64
    );
    assert_eq!(count("kiln_remote_asset_fetch_failures_total"), 1);
}

#[tokio::test]
async fn a_wrong_checksum_is_refused_and_nothing_is_stored() {
    let origin = Origin::start().await;
    let s = start().await;
    let r = fetch(
        &s,
        &[origin.url("/file")],
        vec![qualifier("checksum.sri", &sri(b"something else"))],
    )
    .await;
    assert_eq!(code(&r), Code::Aborted, "{:?}", r.status);
    let msg = &r.status.as_ref().unwrap().message;
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains(&sri(&content())), "names what it got: {msg}");
    assert!(r.blob_digest.is_none());
    assert_eq!(origin.hits(), 1);
    assert!(missing(&s, &digest(&content()).to_proto()).await);
    // And nothing remembered: the same fetch goes to the origin again.
    fetch(
        &s,
        &[origin.url("/file")],
        vec![qualifier("checksum.sri", &sri(b"something else"))],
    )
    .await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn origin_failures_get_clear_statuses() {
    let origin = Origin::start().await;
    let s = start().await;
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = fetch(&s, &[format!("http://{dead}/x")], vec![]).await;
    assert_eq!(code(&down), Code::Unavailable, "{:?}", down.status);
    let msg = &down.status.as_ref().unwrap().message;
    assert!(msg.contains("cannot reach"), "{msg}");
    assert_eq!(down.uri, format!("http://{dead}/x"));

    let absent = fetch(&s, &[origin.url("/nope")], vec![]).await;
    assert_eq!(code(&absent), Code::NotFound, "{:?}", absent.status);
    assert!(absent.status.unwrap().message.contains("404"));

    for path in ["/big", "/stream"] {
        let r = fetch(&s, &[origin.url(path)], vec![]).await;
        assert_eq!(code(&r), Code::ResourceExhausted, "{path}: {:?}", r.status);
        assert!(
            r.status.unwrap().message.contains("max_download_bytes"),
            "{path}"
        );
    }
    let big = vec![1u8; MAX_DOWNLOAD as usize + 1];
    assert!(missing(&s, &digest(&big).to_proto()).await);

    let looping = fetch(&s, &[origin.url("/loop")], vec![]).await;
    assert_eq!(
        code(&looping),
        Code::PermissionDenied,
        "{:?}",
        looping.status
    );
    assert!(looping.status.unwrap().message.contains("redirect"));

    // Not a URL kiln downloads, and nothing pushed under it.
    let urn = fetch(&s, &["urn:example:nothing".into()], vec![]).await;
    assert_eq!(code(&urn), Code::NotFound, "{:?}", urn.status);
}

#[tokio::test]
async fn refused_origins_and_bad_requests() {
    let origin = Origin::start().await;
    let s = TestServer::start_with(|c| {
        c.remote_asset.allowed_schemes = vec!["https".into()];
    })
    .await;
    let r = fetch(&s, &[origin.url("/file")], vec![]).await;
    assert_eq!(code(&r), Code::PermissionDenied, "{:?}", r.status);
    assert!(r.status.unwrap().message.contains("allowed_schemes"));
    assert_eq!(origin.hits(), 0);

    let mut client = FetchClient::new(s.channel().await);
    let err = client
        .fetch_blob(FetchBlobRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .fetch_blob(FetchBlobRequest {
            uris: vec![origin.url("/file")],
            qualifiers: vec![qualifier("checksum.sri", "sha256-notbase64!")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // An unsupported qualifier on content kiln would vouch for: INVALID_ARGUMENT with a
    // BadRequest detail naming it, as the spec asks.
    let err = client
        .fetch_blob(FetchBlobRequest {
            uris: vec![origin.url("/file")],
            qualifiers: vec![qualifier("vcs.commit", "abc")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let status = kiln::proto::google::rpc::Status::decode(err.details()).unwrap();
    let bad = kiln::proto::google::rpc::BadRequest::decode(&status.details[0].value[..]).unwrap();
    assert_eq!(bad.field_violations[0].field, "qualifiers.name");
    assert!(bad.field_violations[0].description.contains("vcs.commit"));
    // As many unsupported qualifiers as a request may carry (64), with names of 8,000 bytes:
    // the status stays small enough for gRPC clients' trailer limits (8-16 KiB). It used to
    // repeat every name whole in the message and the details, about 1 MiB of trailers, and
    // even tonic's client saw "h2 protocol error", not the status.
    let long: Vec<_> = (0..64)
        .map(|i| qualifier(&format!("x-{i:02}-{}", "\u{e9}".repeat(3998)), "v"))
        .collect();
    let err = client
        .fetch_blob(FetchBlobRequest {
            uris: vec![origin.url("/file")],
            qualifiers: long,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let head: String = err.message().chars().take(200).collect();
    assert_eq!(err.code(), Code::InvalidArgument, "{head}");
    assert!(
        err.message().len() < 1024,
        "message of {} bytes",
        err.message().len()
    );
    assert!(err.message().contains("x-00-") && err.message().ends_with("and 56 more"));
    assert!(
        err.details().len() < 4096,
        "details of {} bytes",
        err.details().len()
    );
    let status = kiln::proto::google::rpc::Status::decode(err.details()).unwrap();
    let bad = kiln::proto::google::rpc::BadRequest::decode(&status.details[0].value[..]).unwrap();
    assert!(!bad.field_violations.is_empty());
    assert!(bad.field_violations[0].description.contains("x-00-"));
}

#[tokio::test]
async fn pushed_assets_are_answered_by_uri_and_qualifiers() {
    let s = start().await;
    let blob = b"pushed content".to_vec();
    let dir = Directory::default().encode_to_vec();
    s.cas()
        .await
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![upload_request(&blob), upload_request(&dir)],
            ..Default::default()
        })
        .await
        .unwrap();
    let uri = "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6".to_string();
    let quals = vec![
        qualifier("vcs.commit", "abc"),
        qualifier("resource_type", "application/x-git"),
    ];
    let mut push = PushClient::new(s.channel().await);
    push.push_blob(PushBlobRequest {
        uris: vec![uri.clone()],
        qualifiers: quals.clone(),
        blob_digest: Some(digest(&blob).to_proto()),
        ..Default::default()
    })
    .await
    .unwrap();
    // Qualifiers in another order name the same asset.
    let mut reversed = quals.clone();
    reversed.reverse();
    let r = fetch(&s, std::slice::from_ref(&uri), reversed).await;
    assert_eq!(code(&r), Code::Ok, "{:?}", r.status);
    assert_eq!(r.blob_digest, Some(digest(&blob).to_proto()));
    // Other qualifiers are another asset (and one kiln cannot download).
    let other = FetchClient::new(s.channel().await)
        .fetch_blob(FetchBlobRequest {
            uris: vec![uri.clone()],
            qualifiers: vec![qualifier("vcs.commit", "def")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::InvalidArgument);

    // A push of content the CAS does not hold is refused.
    let err = push
        .push_blob(PushBlobRequest {
            uris: vec![uri.clone()],
            blob_digest: Some(digest(b"not uploaded").to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("not in the CAS"),
        "{}",
        err.message()
    );

    // Directories: pushed, then fetched; an unknown one is NOT_FOUND inline.
    push.push_directory(PushDirectoryRequest {
        uris: vec!["https://example.invalid/repo.git".into()],
        root_directory_digest: Some(digest(&dir).to_proto()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut fetcher = FetchClient::new(s.channel().await);
    let d = fetcher
        .fetch_directory(FetchDirectoryRequest {
            uris: vec![
                "https://example.invalid/other.git".into(),
                "https://example.invalid/repo.git".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.status.unwrap().code, 0);
    assert_eq!(d.uri, "https://example.invalid/repo.git");
    assert_eq!(d.root_directory_digest, Some(digest(&dir).to_proto()));
    let none = fetcher
        .fetch_directory(FetchDirectoryRequest {
            uris: vec!["https://example.invalid/other.git".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.status.unwrap().code, Code::NotFound as i32);

    // An expired push is not answered.
    push.push_blob(PushBlobRequest {
        uris: vec!["urn:expired".into()],
        blob_digest: Some(digest(&blob).to_proto()),
        expire_at: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let expired = fetch(&s, &["urn:expired".into()], vec![]).await;
    assert_eq!(code(&expired), Code::NotFound, "{:?}", expired.status);
}

#[tokio::test]
async fn header_qualifiers_reach_the_origin_but_not_the_identity() {
    let origin = Origin::start().await;
    let s = start().await;
    let url = origin.url("/private");
    let denied = fetch(&s, std::slice::from_ref(&url), vec![]).await;
    assert_eq!(code(&denied), Code::PermissionDenied, "{:?}", denied.status);
    // The per-URI header (index 1 here) wins over the global one.
    let pin = qualifier("checksum.sri", &sri(b"secret content"));
    let ok = fetch(
        &s,
        &["urn:nothing".into(), url.clone()],
        vec![
            qualifier("http_header:Authorization", "Bearer bad"),
            qualifier("http_header_url:1:Authorization", "Bearer good"),
            pin.clone(),
        ],
    )
    .await;
    assert_eq!(code(&ok), Code::Ok, "{:?}", ok.status);
    assert_eq!(ok.blob_digest, Some(digest(b"secret content").to_proto()));
    assert_eq!(origin.hits(), 2);
    // With the content pinned by its checksum, a rotated token names the same asset:
    // answered without the origin.
    let again = fetch(
        &s,
        std::slice::from_ref(&url),
        vec![
            qualifier("http_header:Authorization", "Bearer rotated"),
            pin.clone(),
        ],
    )
    .await;
    assert_eq!(again.blob_digest, ok.blob_digest);
    assert_eq!(origin.hits(), 2);
    // Unpinned, the headers are part of the asset: a fetch without them is not answered
    // with what the token fetched, it goes to the origin (which refuses it).
    let unpinned = fetch(&s, std::slice::from_ref(&url), vec![]).await;
    assert_eq!(
        code(&unpinned),
        Code::PermissionDenied,
        "{:?}",
        unpinned.status
    );
}

/// By default kiln downloads only from public addresses: an origin on 127.0.0.1, by IP or by a
/// name that resolves only there (`localhost`), is refused with PERMISSION_DENIED naming the
/// setting, and the origin is never contacted.
#[tokio::test]
async fn local_addresses_are_refused_by_default() {
    let origin = Origin::start().await;
    let s = TestServer::start_with(|_| {}).await;
    let by_ip = origin.url("/file");
    let by_name = by_ip.replace("127.0.0.1", "localhost");
    for url in [by_ip, by_name] {
        let r = fetch(&s, std::slice::from_ref(&url), vec![]).await;
        assert_eq!(code(&r), Code::PermissionDenied, "{url}: {:?}", r.status);
        let msg = r.status.unwrap().message;
        assert!(msg.contains("allow_private_addresses"), "{url}: {msg}");
    }
    assert_eq!(origin.hits(), 0, "the origin was contacted");
}
