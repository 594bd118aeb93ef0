//! Helpers for the Remote Asset tests: a local HTTP(S) origin that counts its requests, and
//! small FetchBlob and CAS clients.
#![allow(dead_code)]

use crate::common::{TestServer, bytes};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use kiln::proto::asset::fetch_client::FetchClient;
use kiln::proto::asset::{FetchBlobRequest, FetchBlobResponse, Qualifier};
use kiln::proto::reapi::{BatchReadBlobsRequest, Digest as PDigest, FindMissingBlobsRequest};
use sha2::Digest as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::Code;

/// What the origin serves.
pub const CONTENT_LEN: usize = 300_000;
/// The download limit of the servers here.
pub const MAX_DOWNLOAD: u64 = 1 << 20;

pub fn content() -> Vec<u8> {
    bytes(CONTENT_LEN, 42)
}

/// A local HTTP/1.1 origin: `/file` (the content), `/other` (other bytes), `/big` (over the
/// limit, with Content-Length), `/stream` (over the limit, chunked, no length), `/loop`
/// (redirects to itself), `/moved` (redirects to `/file`), `/private` (401 without
/// `authorization: Bearer good`), anything else 404. Counts requests.
pub struct Origin {
    pub addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Origin {
    pub async fn start() -> Self {
        Self::start_tls(None).await
    }

    /// The origin over TLS when `tls` (certificate chain and key, PEM) is given.
    pub async fn start_tls(tls: Option<(String, String)>) -> Self {
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

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

pub type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

pub fn serve(path: &str, auth: Option<&[u8]>) -> Response<Body> {
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

pub async fn start() -> TestServer {
    // The test origins listen on 127.0.0.1: allowed here, refused by default.
    TestServer::start_with(|c| {
        c.remote_asset.max_download_bytes = MAX_DOWNLOAD;
        c.remote_asset.allow_private_addresses = true;
    })
    .await
}

pub fn sri(data: &[u8]) -> String {
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
    )
}

pub fn qualifier(name: &str, value: &str) -> Qualifier {
    Qualifier {
        name: name.into(),
        value: value.into(),
    }
}

pub async fn fetch(
    s: &TestServer,
    uris: &[String],
    qualifiers: Vec<Qualifier>,
) -> FetchBlobResponse {
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

pub fn code(r: &FetchBlobResponse) -> Code {
    Code::from_i32(r.status.as_ref().unwrap().code)
}

pub async fn missing(s: &TestServer, d: &PDigest) -> bool {
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

pub async fn read(s: &TestServer, d: &PDigest) -> Bytes {
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

/// A config file for `kiln serve` with a small store (as [`TestServer`]'s), so a server does
/// not size itself from the free disk space of a shared machine.
pub fn small_store_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kiln.toml");
    std::fs::write(
        &path,
        "[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\n\
         max_blob_size_bytes = 67108864\n[remote_asset]\nallow_private_addresses = true\n",
    )
    .unwrap();
    path
}
