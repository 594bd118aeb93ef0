//! Validated content digests: the shared vocabulary of the `api`, `cas` and `exec` layers.
//!
//! A [`Digest`] is only ever built through validation, so code below the API never re-checks
//! hashes or sizes. The proto `Digest` is converted here and nowhere else.

use crate::proto::reapi;
use sha2::{Digest as _, Sha256};
use std::fmt;

/// Hash functions kiln accepts. Only SHA-256 today; the enum keeps the door open and makes
/// callers say which function they mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestFunction {
    /// SHA-256, the REAPI default.
    Sha256,
}

impl DigestFunction {
    /// All functions, in the order Capabilities advertises them.
    pub const ALL: [DigestFunction; 1] = [DigestFunction::Sha256];

    /// Resolves a request's `digest_function` field. `UNKNOWN` (0) means "infer from the hash
    /// length", which for 64 hex digits is SHA-256, as the spec asks of servers.
    pub fn from_proto(value: i32) -> Result<Self, DigestError> {
        match reapi::digest_function::Value::try_from(value) {
            Ok(reapi::digest_function::Value::Unknown | reapi::digest_function::Value::Sha256) => {
                Ok(DigestFunction::Sha256)
            }
            Ok(other) => Err(DigestError::UnsupportedFunction(
                other.as_str_name().to_string(),
            )),
            Err(_) => Err(DigestError::UnsupportedFunction(format!(
                "unknown value {value}"
            ))),
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> i32 {
        match self {
            DigestFunction::Sha256 => reapi::digest_function::Value::Sha256 as i32,
        }
    }

    /// Lower-case name as used in resource names and logs.
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
        }
    }

    /// A one-byte tag, used in storage keys to keep functions apart.
    pub fn tag(self) -> u8 {
        match self {
            DigestFunction::Sha256 => 1,
        }
    }

    /// A fresh incremental hasher for this function.
    pub fn hasher(self) -> Hasher {
        match self {
            DigestFunction::Sha256 => Hasher {
                inner: Sha256::new(),
                size: 0,
            },
        }
    }

    /// Digest of a whole buffer.
    pub fn digest_of(self, data: &[u8]) -> Digest {
        let mut h = self.hasher();
        h.update(data);
        h.finish()
    }
}

/// Incremental hashing of streamed bytes: hash once, while the bytes arrive.
#[derive(Clone)]
pub struct Hasher {
    inner: Sha256,
    size: u64,
}

impl Hasher {
    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.size += data.len() as u64;
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let out = self.inner.finalize();
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&out);
        Digest {
            function: DigestFunction::Sha256,
            hash,
            size: self.size,
        }
    }
}

/// A validated digest: function, 32-byte hash and non-negative size.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    /// Which function produced `hash`.
    pub function: DigestFunction,
    /// The raw hash bytes.
    pub hash: [u8; 32],
    /// Blob size in bytes.
    pub size: u64,
}

/// Why a digest was rejected. Every variant names the offending value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The hash is not 64 lower-case hex digits.
    #[error("invalid hash {0:?}: expected 64 lower-case hex digits for SHA-256")]
    BadHash(String),
    /// A negative or unparsable size.
    #[error("invalid size {0}: sizes must be non-negative integers")]
    BadSize(String),
    /// A field that must carry a digest was empty.
    #[error("missing digest in field {0}")]
    Missing(&'static str),
    /// A digest function kiln does not implement.
    #[error("unsupported digest function {0}; this server supports SHA256")]
    UnsupportedFunction(String),
}

impl Digest {
    /// The digest of the empty blob, which every CAS holds.
    pub fn empty(function: DigestFunction) -> Self {
        function.digest_of(&[])
    }

    /// Whether this is the empty blob's digest.
    pub fn is_empty_blob(&self) -> bool {
        self.size == 0 && *self == Self::empty(self.function)
    }

    /// Parses a hex hash and a size, as found in resource names and protos.
    pub fn parse(function: DigestFunction, hash: &str, size: i64) -> Result<Self, DigestError> {
        if size < 0 {
            return Err(DigestError::BadSize(size.to_string()));
        }
        Ok(Self {
            function,
            hash: parse_hash(hash)?,
            size: size as u64,
        })
    }

    /// Parses a size given as text (resource names).
    pub fn parse_str(
        function: DigestFunction,
        hash: &str,
        size: &str,
    ) -> Result<Self, DigestError> {
        let size: i64 = size
            .parse()
            .ok()
            .filter(|_| !size.starts_with('+'))
            .ok_or_else(|| DigestError::BadSize(size.to_string()))?;
        Self::parse(function, hash, size)
    }

    /// Validates a proto digest.
    pub fn from_proto(function: DigestFunction, d: &reapi::Digest) -> Result<Self, DigestError> {
        Self::parse(function, &d.hash, d.size_bytes)
    }

    /// Validates an optional proto digest field, naming the field when it is absent.
    pub fn from_field(
        function: DigestFunction,
        d: Option<&reapi::Digest>,
        field: &'static str,
    ) -> Result<Self, DigestError> {
        Self::from_proto(function, d.ok_or(DigestError::Missing(field))?)
    }

    /// The proto form.
    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hash_hex(),
            size_bytes: self.size as i64,
        }
    }

    /// Lower-case hex of the hash.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

fn parse_hash(hash: &str) -> Result<[u8; 32], DigestError> {
    let bad = || DigestError::BadHash(truncate(hash));
    if hash.len() != 64
        || !hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hash, &mut out).map_err(|_| bad())?;
    Ok(out)
}

fn truncate(s: &str) -> String {
    if s.len() <= 80 {
        s.to_string()
    } else {
        format!("{}...", &s[..s.floor_char_boundary(80)])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash_hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}:{self})", self.function.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn empty_digest_is_well_known() {
        let d = Digest::empty(DigestFunction::Sha256);
        assert_eq!(d.hash_hex(), EMPTY);
        assert!(d.is_empty_blob());
    }

    #[test]
    fn rejects_bad_hashes_and_sizes() {
        let f = DigestFunction::Sha256;
        assert!(Digest::parse(f, EMPTY, 0).is_ok());
        assert!(matches!(
            Digest::parse(f, &EMPTY.to_uppercase(), 0),
            Err(DigestError::BadHash(_))
        ));
        assert!(matches!(
            Digest::parse(f, &EMPTY[1..], 0),
            Err(DigestError::BadHash(_))
        ));
        assert!(matches!(
            Digest::parse(f, &format!("{}g", &EMPTY[1..]), 0),
            Err(DigestError::BadHash(_))
        ));
        assert!(matches!(
            Digest::parse(f, EMPTY, -1),
            Err(DigestError::BadSize(_))
        ));
        assert!(matches!(
            Digest::parse_str(f, EMPTY, "+1"),
            Err(DigestError::BadSize(_))
        ));
        assert!(matches!(
            Digest::parse_str(f, EMPTY, "x"),
            Err(DigestError::BadSize(_))
        ));
        assert_eq!(Digest::parse_str(f, EMPTY, "12").unwrap().size, 12);
    }

    #[test]
    fn function_inference() {
        assert_eq!(DigestFunction::from_proto(0), Ok(DigestFunction::Sha256));
        assert!(DigestFunction::from_proto(reapi::digest_function::Value::Md5 as i32).is_err());
        assert!(DigestFunction::from_proto(999).is_err());
    }
}
