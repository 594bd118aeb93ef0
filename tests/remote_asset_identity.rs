//! Remote Asset identity: without a `checksum.sri`, the header qualifiers of a download are
//! part of the asset, so one client's headers never decide what a fetch without them gets.
//! Found by an adversarial review.

mod asset_support;
mod common;

use asset_support::{code, fetch, qualifier, start};
use common::digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// An origin whose answer depends on a request header, as real ones do (`Range`,
/// `Accept-Encoding`, `Accept`, cookies, API-version headers): `X-Variant: evil` gets other
/// bytes than a plain GET.
async fn header_sensitive_origin() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                let body: &[u8] = if text.contains("x-variant: evil") {
                    b"what one client's header made the origin send"
                } else {
                    b"the file everyone else gets"
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body).await;
            });
        }
    });
    addr
}

/// Header qualifiers are left out of an asset's identity (so rotated credentials find the
/// same asset). But a header can change what the origin sends; the download one client made
/// with its headers must then not be what a fetch *without* them is answered with, or any
/// reader poisons a URI for everyone (no checksum involved, as in `http_file` without sha256
/// or `repository_ctx.download` without one).
#[tokio::test]
async fn a_header_qualifier_does_not_poison_the_uri_for_fetches_without_it() {
    let origin = header_sensitive_origin().await;
    let s = start().await;
    let url = format!("http://{origin}/file");
    let poisoned = fetch(
        &s,
        std::slice::from_ref(&url),
        vec![qualifier("http_header:X-Variant", "evil")],
    )
    .await;
    assert_eq!(code(&poisoned), Code::Ok, "{:?}", poisoned.status);
    let plain = fetch(&s, std::slice::from_ref(&url), vec![]).await;
    assert_eq!(code(&plain), Code::Ok, "{:?}", plain.status);
    assert_eq!(
        plain.blob_digest,
        Some(digest(b"the file everyone else gets").to_proto()),
        "a fetch without header qualifiers was answered with the bytes another client's \
         headers made the origin send"
    );
}
