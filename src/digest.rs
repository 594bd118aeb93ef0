//! Validated content digests: the shared vocabulary of the `api`, `cas` and `exec` layers.
//!
//! A [`Digest`] is only ever built through validation, so code below the API never re-checks
//! hashes or sizes. The proto `Digest` is converted here and nowhere else.

use crate::proto::reapi;
use sha2::{Digest as _, Sha256};
use std::fmt;

/// Hash functions kiln accepts. Callers always say which one they mean: the two share a hash
/// length, so a hash alone does not tell them apart, and their CAS and action-cache entries
/// are kept apart (see `cas::Cas::key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestFunction {
    /// SHA-256, the REAPI default.
    Sha256,
    /// BLAKE3 with 32-byte output (newer Bazel: `--digest_function=blake3`).
    Blake3,
}

impl DigestFunction {
    /// All functions, in the order Capabilities advertises them.
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// Resolves a request's `digest_function` field. `UNKNOWN` (0) means "infer from the hash
    /// length", which for 64 hex digits is SHA-256, as the spec asks of servers (a BLAKE3
    /// client must name its function).
    pub fn from_proto(value: i32) -> Result<Self, DigestError> {
        match reapi::digest_function::Value::try_from(value) {
            Ok(reapi::digest_function::Value::Unknown | reapi::digest_function::Value::Sha256) => {
                Ok(DigestFunction::Sha256)
            }
            Ok(reapi::digest_function::Value::Blake3) => Ok(DigestFunction::Blake3),
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
            DigestFunction::Blake3 => reapi::digest_function::Value::Blake3 as i32,
        }
    }

    /// Lower-case name as used in resource names and logs.
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    /// The function named `name` as in resource names (`blake3`), if kiln has it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// A one-byte tag, used in storage keys to keep functions apart.
    pub fn tag(self) -> u8 {
        match self {
            DigestFunction::Sha256 => 1,
            DigestFunction::Blake3 => 2,
        }
    }

    /// A fresh incremental hasher for this function.
    pub fn hasher(self) -> Hasher {
        let inner = match self {
            DigestFunction::Sha256 => Inner::Sha256(Sha256::new()),
            DigestFunction::Blake3 => Inner::Blake3(Box::new(blake3::Hasher::new())),
        };
        Hasher { inner, size: 0 }
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
    inner: Inner,
    size: u64,
}

#[derive(Clone)]
enum Inner {
    Sha256(Sha256),
    // Boxed: blake3's hasher keeps a chunk stack of about 1.9 KB.
    Blake3(Box<blake3::Hasher>),
}

// BLAKE3 is hashed on the thread that received the bytes (no rayon): its SIMD paths in
// `update` already work across 1 KiB chunks of one call, and the box's other core serves
// other requests.
impl Hasher {
    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.inner {
            Inner::Sha256(h) => h.update(data),
            Inner::Blake3(h) => {
                h.update(data);
            }
        }
        self.size += data.len() as u64;
    }

    /// The function this hasher computes.
    pub fn function(&self) -> DigestFunction {
        match self.inner {
            Inner::Sha256(_) => DigestFunction::Sha256,
            Inner::Blake3(_) => DigestFunction::Blake3,
        }
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let function = self.function();
        let hash: [u8; 32] = match self.inner {
            Inner::Sha256(h) => h.finalize().into(),
            Inner::Blake3(h) => *h.finalize().as_bytes(),
        };
        Digest {
            function,
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
    /// The hash is not 64 lower-case hex digits (the length of both SHA-256 and BLAKE3).
    #[error("invalid hash {0:?}: expected 64 lower-case hex digits for {1}")]
    BadHash(String, &'static str),
    /// A negative or unparsable size.
    #[error("invalid size {0}: sizes must be non-negative integers")]
    BadSize(String),
    /// A field that must carry a digest was empty.
    #[error("missing digest in field {0}")]
    Missing(&'static str),
    /// A digest function kiln does not implement.
    #[error("unsupported digest function {0}; this server supports SHA256 and BLAKE3")]
    UnsupportedFunction(String),
}

impl Digest {
    /// The digest of the empty blob, which every CAS holds.
    pub fn empty(function: DigestFunction) -> Self {
        // Hashed once per function: reads compare every digest with it.
        static EMPTY: std::sync::OnceLock<[Digest; DigestFunction::ALL.len()]> =
            std::sync::OnceLock::new();
        let all = EMPTY.get_or_init(|| DigestFunction::ALL.map(|f| f.digest_of(&[])));
        all.iter()
            .find(|d| d.function == function)
            .copied()
            .unwrap_or_else(|| function.digest_of(&[]))
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
            hash: parse_hash(hash).map_err(|h| DigestError::BadHash(h, function.name()))?,
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

    /// The digest part of a resource name: `hash/size`, with the function's name in front
    /// (`blake3/hash/size`) for every function but SHA-256, as REAPI asks (a server infers
    /// SHA-256 from a 64-digit hash without one).
    pub fn resource_path(&self) -> String {
        match self.function {
            DigestFunction::Sha256 => format!("{}/{}", self.hash_hex(), self.size),
            f @ DigestFunction::Blake3 => format!("{}/{}/{}", f.name(), self.hash_hex(), self.size),
        }
    }
}

/// The 32 bytes of a 64-digit lower-case hex hash; the (shortened) input when it is not one.
fn parse_hash(hash: &str) -> Result<[u8; 32], String> {
    let bad = || truncate(hash);
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
            Err(DigestError::BadHash(..))
        ));
        assert!(matches!(
            Digest::parse(f, &EMPTY[1..], 0),
            Err(DigestError::BadHash(..))
        ));
        assert!(matches!(
            Digest::parse(f, &format!("{}g", &EMPTY[1..]), 0),
            Err(DigestError::BadHash(..))
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

    /// BLAKE3's reference test vectors (BLAKE3-team/BLAKE3 `test_vectors/test_vectors.json`,
    /// the `hash` mode's first 32 bytes): input `len` bytes of 0, 1, .., 250, 0, 1, ...
    /// Fed whole and in uneven pieces, so the incremental path is checked too.
    #[test]
    fn blake3_reference_vectors() {
        const CASES: &[(usize, &str)] = &[
            (
                0,
                "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            ),
            (
                1,
                "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
            ),
            (
                1023,
                "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11",
            ),
            (
                1024,
                "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
            ),
            (
                1025,
                "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
            ),
            (
                2048,
                "e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a",
            ),
            (
                2049,
                "5f4d72f40d7a5f82b15ca2b2e44b1de3c2ef86c426c95c1af0b6879522563030",
            ),
            (
                3072,
                "b98cb0ff3623be03326b373de6b9095218513e64f1ee2edd2525c7ad1e5cffd2",
            ),
            (
                4096,
                "015094013f57a5277b59d8475c0501042c0b642e531b0a1c8f58d2163229e969",
            ),
            (
                5121,
                "628bd2cb2004694adaab7bbd778a25df25c47b9d4155a55f8fbd79f2fe154cff",
            ),
            (
                7169,
                "a003fc7a51754a9b3c7fae0367ab3d782dccf28855a03d435f8cfe74605e7817",
            ),
        ];
        for &(len, want) in CASES {
            let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let d = DigestFunction::Blake3.digest_of(&input);
            assert_eq!(
                (d.hash_hex().as_str(), d.size),
                (want, len as u64),
                "len {len}"
            );
            let mut h = DigestFunction::Blake3.hasher();
            for piece in input.chunks(333) {
                h.update(piece);
            }
            assert_eq!(h.finish(), d, "len {len} in pieces");
        }
    }

    #[test]
    fn both_functions_resolve_and_name_themselves() {
        let b3 = reapi::digest_function::Value::Blake3 as i32;
        assert_eq!(DigestFunction::from_proto(b3), Ok(DigestFunction::Blake3));
        for f in DigestFunction::ALL {
            assert_eq!(DigestFunction::from_proto(f.to_proto()), Ok(f));
            assert_eq!(DigestFunction::from_name(f.name()), Some(f));
        }
        let sha = DigestFunction::Sha256.digest_of(b"abc");
        assert_eq!(sha.resource_path(), format!("{}/3", sha.hash_hex()));
        let b = DigestFunction::Blake3.digest_of(b"abc");
        assert_eq!(b.resource_path(), format!("blake3/{}/3", b.hash_hex()));
        assert_ne!(sha.hash, b.hash);
        let err = Digest::parse(DigestFunction::Blake3, "abc", 1).unwrap_err();
        assert!(err.to_string().contains("blake3"), "{err}");
    }
}
