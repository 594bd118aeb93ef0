//! Response bodies and builders. Blob bodies are the stored parts themselves (no copy); error
//! bodies are one line of text for people and logs.

use super::error::HttpCacheError;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use std::convert::Infallible;

/// The body of every response.
pub type Body = BoxBody<Bytes, Infallible>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().boxed()
}

/// A body of one buffer.
pub fn full(data: Bytes) -> Body {
    Full::new(data).boxed()
}

/// A body of several buffers sent one after the other.
pub fn parts(parts: impl Iterator<Item = Bytes> + Send + Sync + 'static) -> Body {
    StreamBody::new(futures::stream::iter(
        parts.map(|b| Ok::<_, Infallible>(Frame::data(b))),
    ))
    .boxed()
}

/// `200 OK` with `len` bytes of `body` (for HEAD the body is empty, the length still given).
pub fn ok(len: u64, body: Body) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, len)
        .body(body)
        .expect("static response parts are valid")
}

/// `200 OK` for a stored upload.
pub fn stored() -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_LENGTH, 0)
        .body(empty())
        .expect("static response parts are valid")
}

/// The response for an error: its status (see `status.rs`) and message; 401 carries a
/// `WWW-Authenticate` challenge so clients know to send credentials, 405 the methods served.
pub fn error(err: &HttpCacheError, head: bool) -> Response<Body> {
    let status = super::status::status(err);
    let text = format!("{err}\n");
    let mut b = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(CACHE_CONTROL, "no-store")
        .header(CONTENT_LENGTH, text.len());
    if status == StatusCode::METHOD_NOT_ALLOWED {
        b = b.header(ALLOW, "GET, HEAD, PUT");
    }
    if status == StatusCode::UNAUTHORIZED {
        b = b.header(
            WWW_AUTHENTICATE,
            "Basic realm=\"kiln\", Bearer realm=\"kiln\"",
        );
    }
    let body = if head {
        empty()
    } else {
        full(Bytes::from(text))
    };
    b.body(body).expect("static response parts are valid")
}
