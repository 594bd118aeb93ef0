//! ByteStream resource names: `{instance}/blobs/{hash}/{size}`,
//! `{instance}/compressed-blobs/{compressor}/{hash}/{size}` and the upload forms
//! `{instance}/uploads/{uuid}/blobs/...` with optional trailing metadata.

use crate::digest::{Digest, DigestError, DigestFunction};

/// Path segments that can never be part of an instance name.
pub const RESERVED: [&str; 7] = [
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
];

/// Compression of a ByteStream transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain bytes (`blobs/`).
    Identity,
    /// zstd frames (`compressed-blobs/zstd/`).
    Zstd,
}

/// A parsed resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceName {
    /// Instance name (may be empty).
    pub instance: String,
    /// Upload id for writes; `None` for reads.
    pub upload_id: Option<String>,
    /// Digest of the uncompressed blob.
    pub digest: Digest,
    /// Transfer compression.
    pub compression: Compression,
}

/// Why a resource name was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceNameError {
    /// Structure wrong: missing or extra parts, empty segments, reserved words.
    #[error("invalid resource name {name:?}: {reason}")]
    Malformed { name: String, reason: String },
    /// A compressor we do not speak.
    #[error("unsupported compressor {0:?} in resource name; this server supports zstd")]
    UnsupportedCompressor(String),
    /// A bad digest inside the name.
    #[error("invalid digest in resource name: {0}")]
    Digest(#[from] DigestError),
}

impl ResourceName {
    /// Parses a read name: `{instance}/blobs/...` or `{instance}/compressed-blobs/...`.
    pub fn parse_read(name: &str) -> Result<Self, ResourceNameError> {
        let parts = split(name)?;
        let at = parts
            .iter()
            .position(|p| *p == "blobs" || *p == "compressed-blobs")
            .ok_or_else(|| malformed(name, "expected {instance}/blobs/{hash}/{size}"))?;
        let instance = instance_of(name, &parts[..at])?;
        let (digest, compression, rest) = parse_blob_part(name, &parts[at..])?;
        if !rest.is_empty() {
            return Err(malformed(name, "unexpected parts after the size"));
        }
        Ok(Self {
            instance,
            upload_id: None,
            digest,
            compression,
        })
    }

    /// Parses a write name: `{instance}/uploads/{uuid}/(compressed-)blobs/.../{size}[/metadata]`.
    pub fn parse_write(name: &str) -> Result<Self, ResourceNameError> {
        let parts = split(name)?;
        let at = parts.iter().position(|p| *p == "uploads").ok_or_else(|| {
            malformed(
                name,
                "expected {instance}/uploads/{uuid}/blobs/{hash}/{size}",
            )
        })?;
        let instance = instance_of(name, &parts[..at])?;
        let upload_id = parts
            .get(at + 1)
            .ok_or_else(|| malformed(name, "missing upload id"))?;
        if RESERVED.contains(upload_id) {
            return Err(malformed(name, "missing upload id"));
        }
        let (digest, compression, _metadata) = parse_blob_part(name, &parts[at + 2..])?;
        Ok(Self {
            instance,
            upload_id: Some((*upload_id).to_string()),
            digest,
            compression,
        })
    }
}

fn split(name: &str) -> Result<Vec<&str>, ResourceNameError> {
    if name.is_empty() {
        return Err(malformed(name, "empty resource name"));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(malformed(name, "empty path segment"));
    }
    Ok(parts)
}

fn instance_of(name: &str, parts: &[&str]) -> Result<String, ResourceNameError> {
    if let Some(bad) = parts
        .iter()
        .find(|p| RESERVED.contains(p) || **p == "." || **p == "..")
    {
        return Err(malformed(
            name,
            &format!("instance name may not contain the reserved segment {bad:?}"),
        ));
    }
    Ok(parts.join("/"))
}

/// Parses `blobs/[function/]hash/size` or `compressed-blobs/compressor/[function/]hash/size`,
/// returning the digest, compression and any trailing segments.
fn parse_blob_part<'a>(
    name: &str,
    parts: &'a [&'a str],
) -> Result<(Digest, Compression, &'a [&'a str]), ResourceNameError> {
    let (compression, mut rest) = match parts.first() {
        Some(&"blobs") => (Compression::Identity, &parts[1..]),
        Some(&"compressed-blobs") => {
            let c = parts
                .get(1)
                .ok_or_else(|| malformed(name, "missing compressor"))?;
            let compression = match *c {
                "zstd" => Compression::Zstd,
                "identity" => Compression::Identity,
                other => return Err(ResourceNameError::UnsupportedCompressor(other.to_string())),
            };
            (compression, &parts[2..])
        }
        _ => return Err(malformed(name, "expected blobs or compressed-blobs")),
    };
    let mut function = DigestFunction::Sha256;
    if let Some(first) = rest.first()
        && first.len() != 64
        && first
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && rest.len() >= 3
    {
        function = DigestFunction::from_name(first)
            .ok_or_else(|| DigestError::UnsupportedFunction(first.to_string()))?;
        rest = &rest[1..];
    }
    let [hash, size, tail @ ..] = rest else {
        return Err(malformed(name, "missing hash or size"));
    };
    Ok((Digest::parse_str(function, hash, size)?, compression, tail))
}

fn malformed(name: &str, reason: &str) -> ResourceNameError {
    let name = if name.len() > 300 {
        format!("{}...", &name[..name.floor_char_boundary(300)])
    } else {
        name.to_string()
    };
    ResourceNameError::Malformed {
        name,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn reads() {
        let r = ResourceName::parse_read(&format!("blobs/{H}/0")).unwrap();
        assert_eq!(
            (r.instance.as_str(), r.compression),
            ("", Compression::Identity)
        );
        let r = ResourceName::parse_read(&format!("a/b/compressed-blobs/zstd/{H}/5")).unwrap();
        assert_eq!(
            (r.instance.as_str(), r.compression, r.digest.size),
            ("a/b", Compression::Zstd, 5)
        );
        let r = ResourceName::parse_read(&format!("i/blobs/sha256/{H}/5")).unwrap();
        assert_eq!(r.instance, "i");
        assert_eq!(r.digest.function, DigestFunction::Sha256);
        let r = ResourceName::parse_read(&format!("i/blobs/blake3/{H}/5")).unwrap();
        assert_eq!(
            (r.instance.as_str(), r.digest.function),
            ("i", DigestFunction::Blake3)
        );
        let r = ResourceName::parse_read(&format!("compressed-blobs/zstd/blake3/{H}/5")).unwrap();
        assert_eq!(r.digest.function, DigestFunction::Blake3);
        assert!(matches!(
            ResourceName::parse_read(&format!("blobs/md5/{H}/5")),
            Err(ResourceNameError::Digest(DigestError::UnsupportedFunction(
                _
            )))
        ));
        for bad in [
            String::new(),
            format!("blobs/{H}"),
            format!("blobs/{H}/1/extra"),
            format!("x//blobs/{H}/1"),
            format!("uploads/blobs/{H}/1"),
            format!("blobs/{H}/-1"),
            format!("blobs/{}/1", &H[1..]),
            format!("compressed-blobs/{H}/1"),
            "foo".to_string(),
        ] {
            assert!(ResourceName::parse_read(&bad).is_err(), "{bad}");
        }
        assert!(matches!(
            ResourceName::parse_read(&format!("compressed-blobs/brotli/{H}/1")),
            Err(ResourceNameError::UnsupportedCompressor(_))
        ));
        assert!(matches!(
            ResourceName::parse_read(&format!("blobs/md5/{H}/1")),
            Err(ResourceNameError::Digest(DigestError::UnsupportedFunction(
                _
            )))
        ));
    }

    #[test]
    fn writes() {
        let w = ResourceName::parse_write(&format!("inst/uploads/u-1/blobs/{H}/0/some/metadata"))
            .unwrap();
        assert_eq!(
            (w.instance.as_str(), w.upload_id.as_deref()),
            ("inst", Some("u-1"))
        );
        let w =
            ResourceName::parse_write(&format!("uploads/u/compressed-blobs/zstd/{H}/7")).unwrap();
        assert_eq!((w.compression, w.digest.size), (Compression::Zstd, 7));
        for bad in [
            format!("uploads/blobs/{H}/0"),
            format!("blobs/{H}/0"),
            format!("actions/uploads/u/blobs/{H}/0"),
            format!("uploads/u/blobs/{H}"),
        ] {
            assert!(ResourceName::parse_write(&bad).is_err(), "{bad}");
        }
    }
}
