//! Auth for the HTTP cache API: the same tokens and rights as gRPC.
//!
//! The token comes from `Authorization: Bearer <token>` or, since Bazel's and ccache's HTTP
//! clients put credentials in the URL (`http://user:TOKEN@host/`), from HTTP Basic, whose
//! password is the token (the user name is ignored, as bazel-remote's htpasswd users have no
//! rights of their own here). The token is never logged.

use super::error::HttpCacheError;
use super::path::Kind;
use crate::auth::{Authorizer, Right};
use base64::Engine as _;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;

/// Longest `Authorization` value decoded (tokens are short; the header is client input).
const MAX_AUTHORIZATION_BYTES: usize = 4096;

/// The right a request needs: reads need `read`, blob uploads `write`, action-cache
/// uploads `cache-write`, exactly as ByteStream Write and UpdateActionResult over gRPC.
pub fn required_right(write: bool, kind: Kind) -> (Right, &'static str) {
    match (write, kind) {
        (false, Kind::Ac) => (Right::Read, "GET /ac/"),
        (false, Kind::Cas) => (Right::Read, "GET /cas/"),
        (true, Kind::Cas) => (Right::Write, "PUT /cas/"),
        (true, Kind::Ac) => (Right::CacheWrite, "PUT /ac/"),
    }
}

/// The token a request presents, if any: a Bearer token or a Basic password.
pub fn token(headers: &HeaderMap) -> Option<Vec<u8>> {
    let v = headers.get(AUTHORIZATION)?.as_bytes();
    if v.len() > MAX_AUTHORIZATION_BYTES {
        // Not a token kiln issued; it identifies no one.
        return Some(Vec::new());
    }
    let scheme_is =
        |s: &[u8]| v.len() > s.len() && v[..s.len()].eq_ignore_ascii_case(s) && v[s.len()] == b' ';
    if scheme_is(b"bearer") {
        return Some(v[7..].trim_ascii().to_vec());
    }
    if scheme_is(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v[6..].trim_ascii())
            .unwrap_or_default();
        let password = match decoded.iter().position(|&c| c == b':') {
            Some(i) => decoded[i + 1..].to_vec(),
            None => decoded,
        };
        return Some(password);
    }
    Some(v.trim_ascii().to_vec())
}

/// Decides one request before its body is read (so a refused upload stores nothing), and
/// counts it per principal like the gRPC auth layer. On success, tells whether the caller
/// also holds `write` (an opaque `/ac/` value is stored as a CAS blob, which needs it).
pub fn check(
    auth: &Authorizer,
    headers: &HeaderMap,
    write: bool,
    kind: Kind,
) -> Result<Option<BlobWriter>, HttpCacheError> {
    if !auth.enabled() {
        return Ok(None);
    }
    let (right, what) = required_right(write, kind);
    let token = token(headers);
    let caller = auth.identify(token.as_deref(), None);
    let outcome = if caller.unknown_token {
        Err(HttpCacheError::Unauthenticated("unknown token".into()))
    } else if caller.rights.has(right) {
        Ok((!caller.rights.has(Right::Write)).then(|| BlobWriter {
            principal: caller.name.to_string(),
        }))
    } else if token.is_none() && &*caller.name == "anonymous" {
        Err(HttpCacheError::Unauthenticated(format!(
            "this server needs a token (Authorization: Bearer <token>, or HTTP Basic with the \
             token as password) for {what}"
        )))
    } else {
        Err(HttpCacheError::Forbidden {
            principal: caller.name.to_string(),
            right: right.name(),
            what,
        })
    };
    let denied = outcome.is_err();
    if auth.record(&caller, denied)
        && let Err(e) = &outcome
    {
        tracing::warn!(principal = %caller.name, error = %e, "HTTP cache request denied (logged once a minute per principal)");
    }
    outcome
}

/// A caller allowed the request but *not* to write CAS blobs (`Some` from [`check`]).
pub struct BlobWriter {
    /// Its principal name, for the refusal.
    pub principal: String,
}

impl BlobWriter {
    /// The refusal of an opaque `/ac/` value (stored as a CAS blob) for this caller.
    pub fn refuse(&self) -> HttpCacheError {
        HttpCacheError::Forbidden {
            principal: self.principal.clone(),
            right: Right::Write.name(),
            what: "PUT /ac/ of a value that is not an ActionResult (stored as a CAS blob)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn bearer_and_basic_password_are_the_token() {
        assert_eq!(token(&headers("Bearer s3cret")).unwrap(), b"s3cret");
        assert_eq!(token(&headers("bearer  s3cret ")).unwrap(), b"s3cret");
        // base64("ccache:s3cret")
        let basic = base64::engine::general_purpose::STANDARD.encode("ccache:s3cret");
        assert_eq!(
            token(&headers(&format!("Basic {basic}"))).unwrap(),
            b"s3cret"
        );
        assert_eq!(token(&headers("Basic !!!")).unwrap(), b"");
        assert!(token(&HeaderMap::new()).is_none());
    }
}
