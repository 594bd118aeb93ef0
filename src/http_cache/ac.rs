//! `GET`, `HEAD` and `PUT` of `/ac/<sha256>`: the action cache that gRPC serves.
//!
//! Bazel sends serialized ActionResult protos: they are decoded, validated like
//! UpdateActionResult and stored in the same action cache (keyed by instance name and action
//! hash, so `GetActionResult` finds them, and `GET /ac/` finds what gRPC stored). `GET` checks
//! that every output is still present, like `GetActionResult`, and answers 404 otherwise.
//!
//! ccache's `layout=bazel` stores its own result format under `/ac/` keys (its 40 hex digit
//! key padded to 64; its manual notes that the server may have to disable verification of
//! action cache values, since ccache entries are not valid ActionResults). Such a body (anything that is not an ActionResult
//! in its canonical encoding) is kept as an *opaque* value when `http_cache.opaque_ac` is on:
//! the bytes go to the CAS under their own SHA-256, and the action cache holds a small
//! ActionResult naming them as its stdout, under a namespace no gRPC or HTTP instance name
//! can spell (the instance name plus an empty segment). The bytes are served back exactly, and
//! they age and are verified like every blob; a reference whose bytes are gone is a miss.
//! Only canonical encodings count as ActionResults because only those round-trip byte for
//! byte: a foreign format that happened to decode would otherwise be served re-encoded.

use super::HttpCache;
use super::body;
use super::cas::{by_hash, read};
use super::error::HttpCacheError;
use super::response::{self, Body};
use crate::cas::{CasError, InlineRequest};
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi::ActionResult;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{HeaderMap, Response};
use prost::Message;

/// The action-cache namespace of `instance`'s opaque values: an empty segment, which neither
/// gRPC's instance-name check nor the HTTP path parser lets a client name.
fn opaque_instance(instance: &str) -> String {
    format!("{instance}//opaque-ac")
}

/// What the opaque namespace holds for a key.
enum Opaque {
    /// Nothing, or the marker of a later ActionResult: look in the action cache.
    None,
    /// An opaque value.
    Value(Bytes),
    /// An opaque value whose bytes are gone: a miss.
    Gone,
}

impl HttpCache {
    /// `GET`/`HEAD /ac/<hash>`: the serialized ActionResult (or opaque value), or 404.
    pub(super) async fn get_ac(
        &self,
        instance: &str,
        hash: [u8; 32],
        head: bool,
    ) -> Result<Response<Body>, HttpCacheError> {
        let s = &self.inner;
        let action = by_hash(hash);
        let none = InlineRequest::default();
        // The opaque namespace first: a PUT of either kind over HTTP leaves its mark there
        // (an opaque value, or a marker saying "an ActionResult"), so the last PUT wins.
        let data = match self.get_opaque(instance, &action).await? {
            Opaque::Value(b) => b,
            Opaque::Gone => {
                return Err(HttpCacheError::NotFound(format!(
                    "action result {}",
                    action.hash_hex()
                )));
            }
            Opaque::None => match s.ac.get(instance, &action, &none).await {
                Ok(result) => Bytes::from(result.encode_to_vec()),
                Err(CasError::ActionNotFound(_)) => {
                    return Err(HttpCacheError::NotFound(format!(
                        "action result {}",
                        action.hash_hex()
                    )));
                }
                Err(e) => return Err(e.into()),
            },
        };
        if head {
            return Ok(response::ok(data.len() as u64, response::empty()));
        }
        s.metrics.bytes_sent.inc_by(data.len() as u64);
        Ok(response::ok(data.len() as u64, response::full(data)))
    }

    async fn get_opaque(&self, instance: &str, action: &Digest) -> Result<Opaque, HttpCacheError> {
        let s = &self.inner;
        if !s.settings.opaque_ac {
            return Ok(Opaque::None);
        }
        let wrapper = match s
            .ac
            .get(
                &opaque_instance(instance),
                action,
                &InlineRequest::default(),
            )
            .await
        {
            Ok(w) => w,
            Err(CasError::ActionNotFound(_)) => return Ok(Opaque::None),
            Err(e) => return Err(e.into()),
        };
        // No stdout: the marker of an ActionResult PUT after the opaque value.
        let Some(d) = wrapper.stdout_digest.as_ref() else {
            return Ok(Opaque::None);
        };
        let d = Digest::from_proto(DigestFunction::Sha256, d).map_err(CasError::from)?;
        match s.cas.read_bytes(&d).await {
            Ok(b) => Ok(Opaque::Value(b)),
            Err(CasError::BlobNotFound(_)) => Ok(Opaque::Gone),
            Err(e) => Err(e.into()),
        }
    }

    /// `PUT /ac/<hash>`: an ActionResult (validated, shared with gRPC) or an opaque value.
    pub(super) async fn put_ac(
        &self,
        headers: &HeaderMap,
        mut body: Incoming,
        instance: &str,
        hash: [u8; 32],
        no_blob_write: Option<super::auth::BlobWriter>,
    ) -> Result<Response<Body>, HttpCacheError> {
        let s = &self.inner;
        if super::encoding::content_encoding(headers)? != super::encoding::Encoding::Identity {
            return Err(HttpCacheError::Encoding(
                "zstd on /ac/ (only /cas/ bodies may be compressed)".into(),
            ));
        }
        let declared = body::declared_length(headers)?;
        let limit = s.settings.max_ac_bytes.min(s.settings.max_buffered);
        let what = "cache.max_message_bytes and http_cache.max_buffered_body_bytes";
        let buffered = read(s, &mut body, declared, limit, what).await?;
        let data = buffered.data;
        s.metrics.bytes_received.inc_by(data.len() as u64);
        let action = by_hash(hash);
        let decoded = ActionResult::decode(data.clone());
        let canonical = decoded
            .as_ref()
            .is_ok_and(|r| r.encoded_len() == data.len() && r.encode_to_vec() == data);
        match decoded {
            Ok(result) if canonical || !s.settings.opaque_ac => {
                s.ac.update(instance, &action, &result).await?;
                if s.settings.opaque_ac {
                    // Hides an earlier opaque value under this key (see `get_ac`).
                    s.ac.update(
                        &opaque_instance(instance),
                        &action,
                        &ActionResult::default(),
                    )
                    .await?;
                }
            }
            Err(e) if !s.settings.opaque_ac => {
                return Err(HttpCacheError::BadBody(format!(
                    "the body is not a serialized ActionResult ({e}); set \
                     http_cache.opaque_ac = true to store other values"
                )));
            }
            _ => {
                // The value becomes a CAS blob: that needs `write`, as over gRPC.
                if let Some(caller) = no_blob_write {
                    return Err(caller.refuse());
                }
                let content = DigestFunction::Sha256.digest_of(&data);
                s.cas.put_hashed(&content, data).await?;
                let wrapper = ActionResult {
                    stdout_digest: Some(content.to_proto()),
                    ..Default::default()
                };
                s.ac.update(&opaque_instance(instance), &action, &wrapper)
                    .await?;
            }
        }
        Ok(response::stored())
    }
}
