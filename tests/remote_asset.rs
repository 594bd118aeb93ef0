//! The Remote Asset API (Fetch and Push) against a local HTTP origin started here, which
//! counts the requests it serves: a first fetch downloads, a second is answered without the
//! origin; a wrong checksum is refused and nothing stored; an origin that is down, answers
//! 404, sends too much or redirects forever gets a clear inline status; pushed assets are
//! answered by URI and qualifiers.

mod common;

use base64::Engine as _;
use bytes::Bytes;
use common::process::metric_value;
use common::{TestServer, bytes, digest, upload_request};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use kiln::proto::asset::fetch_client::FetchClient;
use kiln::proto::asset::push_client::PushClient;
use kiln::proto::asset::{
    FetchBlobRequest, FetchBlobResponse, FetchDirectoryRequest, PushBlobRequest,
    PushDirectoryRequest, Qualifier,
};
use kiln::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest as PDigest, Directory,
    FindMissingBlobsRequest,
};
use prost::Message;
use sha2::Digest as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::Code;

/// What the origin serves.
const CONTENT_LEN: usize = 300_000;
/// The download limit of the servers here.
const MAX_DOWNLOAD: u64 = 1 << 20;

fn content() -> Vec<u8> {
    bytes(CONTENT_LEN, 42)
}

/// A local HTTP/1.1 origin: `/file` (the content), `/other` (other bytes), `/big` (over the
/// limit, with Content-Length), `/stream` (over the limit, chunked, no length), `/loop`
/// (redirects to itself), `/moved` (redirects to `/file`), `/private` (401 without
/// `authorization: Bearer good`), anything else 404. Counts requests.
struct Origin {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Origin {
    async fn start() -> Self {
        Self::start_tls(None).await
    }

    /// The origin over TLS when `tls` (certificate chain and key, PEM) is given.
    async fn start_tls(tls: Option<(String, String)>) -> Self {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let acceptor = tls.map(|(cert, key)| {
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.as_bytes().to_vec());
                        async move {
                            Ok::<_, std::convert::Infallible>(serve(
                                req.uri().path(),
                                auth.as_deref(),
                            ))
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match acceptor {
                        Some(a) => match a.accept(stream).await {
                            Ok(tls) => {
                                http.serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                    .await
                            }
                            Err(_) => return,
                        },
                        None => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await
                        }
                    };
                });
            }
        });
        Self { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn serve(path: &str, auth: Option<&[u8]>) -> Response<Body> {
    let full = |b: Vec<u8>| Full::new(Bytes::from(b)).boxed();
    match path {
        "/private" if auth == Some(b"Bearer good") => {
            Response::new(full(b"secret content".to_vec()))
        }
        "/private" => Response::builder()
            .status(401)
            .body(full(Vec::new()))
            .unwrap(),
        "/file" => Response::new(full(content())),
        "/other" => Response::new(full(b"other bytes".to_vec())),
        "/big" => Response::new(full(vec![1u8; MAX_DOWNLOAD as usize + 1])),
        "/stream" => {
            let frames = (0..40).map(|_| Ok(Frame::data(Bytes::from(vec![2u8; 64 << 10]))));
            Response::new(StreamBody::new(futures::stream::iter(frames)).boxed())
        }
        "/loop" | "/moved" => Response::builder()
            .status(302)
            .header("location", if path == "/loop" { "/loop" } else { "/file" })
            .body(full(Vec::new()))
            .unwrap(),
        _ => Response::builder()
            .status(404)
            .body(full(b"no such file".to_vec()))
            .unwrap(),
    }
}

async fn start() -> TestServer {
    TestServer::start_with(|c| c.remote_asset.max_download_bytes = MAX_DOWNLOAD).await
}

fn sri(data: &[u8]) -> String {
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
    )
}

fn qualifier(name: &str, value: &str) -> Qualifier {
    Qualifier {
        name: name.into(),
        value: value.into(),
    }
}

async fn fetch(s: &TestServer, uris: &[String], qualifiers: Vec<Qualifier>) -> FetchBlobResponse {
    FetchClient::new(s.channel().await)
        .fetch_blob(FetchBlobRequest {
            uris: uris.to_vec(),
            qualifiers,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn code(r: &FetchBlobResponse) -> Code {
    Code::from_i32(r.status.as_ref().unwrap().code)
}

async fn missing(s: &TestServer, d: &PDigest) -> bool {
    !s.cas()
        .await
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![d.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
        .is_empty()
}

async fn read(s: &TestServer, d: &PDigest) -> Bytes {
    let mut r = s
        .cas()
        .await
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![d.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let one = r.responses.pop().unwrap();
    assert_eq!(one.status.unwrap().code, 0);
    one.data
}

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
    let ok = fetch(
        &s,
        &["urn:nothing".into(), url.clone()],
        vec![
            qualifier("http_header:Authorization", "Bearer bad"),
            qualifier("http_header_url:1:Authorization", "Bearer good"),
        ],
    )
    .await;
    assert_eq!(code(&ok), Code::Ok, "{:?}", ok.status);
    assert_eq!(ok.blob_digest, Some(digest(b"secret content").to_proto()));
    assert_eq!(origin.hits(), 2);
    // A rotated token names the same asset: answered without the origin.
    let again = fetch(
        &s,
        std::slice::from_ref(&url),
        vec![qualifier("http_header:Authorization", "Bearer rotated")],
    )
    .await;
    assert_eq!(again.blob_digest, ok.blob_digest);
    assert_eq!(origin.hits(), 2);
}

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
    let server = common::process::KilnServer::start_with_env(
        &tmp.path().join("data"),
        &tmp.path().join("kiln.log"),
        &[],
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
    let server = common::process::KilnServer::start_with_env(
        &tmp.path().join("data"),
        &tmp.path().join("kiln.log"),
        &[],
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
