//! `Content-Encoding: zstd` uploads and `Accept-Encoding: zstd` downloads of `/cas/` blobs, as
//! bazel-remote serves them. Decompression reuses the CAS layer's bounded decoder: output is
//! capped by the limit the caller gives (a bomb costs one chunk past it) and the zstd window by
//! [`crate::cas::compression::MAX_WINDOW_LOG`].

use super::error::HttpCacheError;
use crate::cas::compression::{DecodeError, StreamDecoder};
use bytes::{Bytes, BytesMut};
use hyper::HeaderMap;
use hyper::header::{ACCEPT_ENCODING, CONTENT_ENCODING};

/// How a request body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// As is.
    Identity,
    /// One or more zstd frames.
    Zstd,
}

/// The request's `Content-Encoding` (absent: identity); anything else is refused.
pub fn content_encoding(headers: &HeaderMap) -> Result<Encoding, HttpCacheError> {
    let Some(v) = headers.get(CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let s = v.to_str().unwrap_or("").trim();
    if s.is_empty() || s.eq_ignore_ascii_case("identity") {
        Ok(Encoding::Identity)
    } else if s.eq_ignore_ascii_case("zstd") {
        Ok(Encoding::Zstd)
    } else {
        Err(HttpCacheError::Encoding(s.chars().take(64).collect()))
    }
}

/// Whether `Accept-Encoding` lists zstd (with a non-zero weight).
pub fn accepts_zstd(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case("zstd") && !refused
        })
}

/// Decompresses a zstd body to at most `limit` bytes, calling `reserve` with the size of each
/// piece of output before keeping it (so the memory budget is charged before it is spent).
pub fn decompress(
    data: Bytes,
    limit: u64,
    reserve: &mut dyn FnMut(u64) -> Result<(), HttpCacheError>,
) -> Result<Bytes, HttpCacheError> {
    let bad =
        |e: &dyn std::fmt::Display| HttpCacheError::BadBody(format!("invalid zstd body: {e}"));
    let mut out = BytesMut::new();
    // One streaming decoder: frames one after the other decode in turn.
    let mut dec = StreamDecoder::new().map_err(|e| bad(&e))?;
    dec.push(data);
    loop {
        match dec.next_chunk(limit - out.len() as u64) {
            Ok(Some(chunk)) => {
                reserve(chunk.len() as u64)?;
                out.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(DecodeError::TooLarge) => {
                return Err(HttpCacheError::TooLarge {
                    size: limit + 1,
                    limit,
                    what: "decompressed; http_cache.max_buffered_body_bytes",
                });
            }
            Err(e) => return Err(bad(&e)),
        }
    }
    if !dec.at_frame_end() {
        return Err(bad(&"the body ends inside a zstd frame"));
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_lists() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(ACCEPT_ENCODING, v.parse().unwrap());
            m
        };
        assert!(accepts_zstd(&h("zstd")));
        assert!(accepts_zstd(&h("gzip, ZSTD;q=0.5")));
        assert!(!accepts_zstd(&h("gzip, zstd;q=0")));
        assert!(!accepts_zstd(&h("gzip")));
    }

    #[test]
    fn decompression_is_bounded() {
        let big = vec![7u8; 1 << 20];
        let z = Bytes::from(zstd::bulk::compress(&big, 3).unwrap());
        let mut any = |_| Ok(());
        assert_eq!(
            decompress(z.clone(), 1 << 20, &mut any).unwrap().len(),
            1 << 20
        );
        assert!(matches!(
            decompress(z.clone(), (1 << 20) - 1, &mut any),
            Err(HttpCacheError::TooLarge { .. })
        ));
        assert!(decompress(z.slice(..z.len() - 1), 1 << 20, &mut any).is_err());
        assert!(decompress(Bytes::from_static(b"not zstd"), 1 << 20, &mut any).is_err());
        // The budget is charged as output grows, and a refusal stops the decoding.
        let mut charged = 0u64;
        let mut budget = |n: u64| {
            charged += n;
            if charged > 300_000 {
                Err(HttpCacheError::Busy)
            } else {
                Ok(())
            }
        };
        assert!(matches!(
            decompress(z.clone(), 1 << 20, &mut budget),
            Err(HttpCacheError::Busy)
        ));
        assert!(
            charged < 600_000,
            "stopped soon after the budget: {charged}"
        );
    }
}
