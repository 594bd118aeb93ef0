//! A minimal HTTP/1.1 client over a plain TCP socket for the HTTP cache API tests: one
//! request per connection (`Connection: close`), the response read to the end. Written by hand
//! so the tests see exactly the bytes on the wire (declared lengths without bodies, chunked
//! bodies, stalls).

use std::fmt::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status, headers (names lower-cased) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a request sends its body.
pub enum Body<'a> {
    /// No body and no length.
    None,
    /// With `Content-Length`.
    Sized(&'a [u8]),
    /// `Transfer-Encoding: chunked`, in pieces of the given size.
    Chunked(&'a [u8], usize),
}

/// Longest a test waits for a response.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request and reads the whole response.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body<'_>,
) -> Response {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    match &body {
        Body::None => {}
        Body::Sized(b) => {
            let _ = write!(head, "Content-Length: {}\r\n", b.len());
        }
        Body::Chunked(..) => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and close) before the body is all sent: a refused upload.
    let _ = match body {
        Body::None => Ok(()),
        Body::Sized(b) => s.write_all(b).await,
        Body::Chunked(b, n) => write_chunked(&mut s, b, n).await,
    };
    read_response(&mut s).await
}

async fn write_chunked(s: &mut TcpStream, b: &[u8], n: usize) -> std::io::Result<()> {
    for piece in b.chunks(n.max(1)) {
        s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await?;
        s.write_all(piece).await?;
        s.write_all(b"\r\n").await?;
    }
    s.write_all(b"0\r\n\r\n").await
}

/// Reads a response to the end of the connection (within [`TIMEOUT`]) and parses it.
pub async fn read_response(s: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("no complete response within the timeout");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let len = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + len]);
        b = &b[eol + 2 + len + 2..];
    }
}

/// `GET` without headers.
pub async fn get(addr: &str, path: &str) -> Response {
    request(addr, "GET", path, &[], Body::None).await
}

/// `PUT` of `body` with `Content-Length`.
pub async fn put(addr: &str, path: &str, body: &[u8]) -> Response {
    request(addr, "PUT", path, &[], Body::Sized(body)).await
}
