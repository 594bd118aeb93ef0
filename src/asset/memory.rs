//! What kiln remembers of assets: a URI with its qualifiers (and instance, digest function and
//! kind) names a digest, since when, and until when. Pushes write these records, downloads too;
//! a Fetch reads them first.
//!
//! The record's id is SHA-256 over a length-prefixed encoding of the identity, so no two
//! identities share one; the record itself is fixed-size: `KAS1`, kind, hash (32 bytes), size,
//! stored-at and expire-at (Unix seconds, 0 = never), little-endian. Stored records are read
//! back as hostile: a record of any other length or kind is ignored.

use crate::cas::{Cas, CasError};
use crate::digest::{Digest, DigestFunction};
use bytes::Bytes;
use sha2::Digest as _;

const MAGIC: &[u8; 4] = b"KAS1";
/// Bytes of an encoded [`Record`].
pub const RECORD_BYTES: usize = 4 + 1 + 32 + 8 + 8 + 8;

/// What an asset resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A blob (FetchBlob/PushBlob).
    Blob,
    /// A Directory tree's root (FetchDirectory/PushDirectory).
    Directory,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Blob => 1,
            Kind::Directory => 2,
        }
    }
}

/// Who an asset is: everything a fetch must match exactly.
pub struct Identity<'a> {
    /// Blob or directory.
    pub kind: Kind,
    /// The request's instance name.
    pub instance: &'a str,
    /// The digest function of the answer.
    pub function: DigestFunction,
    /// The URI.
    pub uri: &'a str,
    /// Every qualifier, sorted by name.
    pub qualifiers: &'a [(String, String)],
}

impl Identity<'_> {
    /// The record id: SHA-256 of the length-prefixed parts.
    pub fn id(&self) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        let mut part = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        part(b"kiln remote asset v1");
        part(&[self.kind.tag(), self.function.tag()]);
        part(self.instance.as_bytes());
        part(self.uri.as_bytes());
        part(&(self.qualifiers.len() as u64).to_le_bytes());
        for (name, value) in self.qualifiers {
            part(name.as_bytes());
            part(value.as_bytes());
        }
        h.finalize().into()
    }
}

/// A remembered asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Blob or directory.
    pub kind: Kind,
    /// What it resolved to.
    pub digest: Digest,
    /// When it was pushed or downloaded (Unix seconds).
    pub stored_at: u64,
    /// When it stops being valid (Unix seconds), 0 = never.
    pub expire_at: u64,
}

impl Record {
    /// The stored bytes.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut out = [0u8; RECORD_BYTES];
        out[..4].copy_from_slice(MAGIC);
        out[4] = self.kind.tag();
        out[5..37].copy_from_slice(&self.digest.hash);
        out[37..45].copy_from_slice(&self.digest.size.to_le_bytes());
        out[45..53].copy_from_slice(&self.stored_at.to_le_bytes());
        out[53..61].copy_from_slice(&self.expire_at.to_le_bytes());
        out
    }

    /// Reads a stored record; `None` for anything that is not one of `function`'s. Sizes past
    /// `i64::MAX` are refused (no proto digest can carry them).
    pub fn decode(bytes: &[u8], function: DigestFunction) -> Option<Self> {
        if bytes.len() != RECORD_BYTES || &bytes[..4] != MAGIC {
            return None;
        }
        let kind = match bytes[4] {
            1 => Kind::Blob,
            2 => Kind::Directory,
            _ => return None,
        };
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let size = u64_at(37);
        if size > i64::MAX as u64 {
            return None;
        }
        Some(Self {
            kind,
            digest: Digest {
                function,
                hash: bytes[5..37].try_into().expect("32 bytes"),
                size,
            },
            stored_at: u64_at(45),
            expire_at: u64_at(53),
        })
    }

    /// Whether the record may answer a fetch at `now` that accepts content stored at or
    /// after `oldest` (Unix seconds).
    pub fn usable(&self, now: u64, oldest: u64) -> bool {
        (self.expire_at == 0 || now < self.expire_at) && self.stored_at >= oldest
    }
}

/// Reads the record of `who`, if kept and of the right kind.
pub async fn recall(cas: &Cas, who: &Identity<'_>) -> Result<Option<Record>, CasError> {
    Ok(cas
        .asset_record(who.id())
        .await?
        .and_then(|b| Record::decode(&b, who.function))
        .filter(|r| r.kind == who.kind))
}

/// Keeps `record` for `who`.
pub async fn remember(cas: &Cas, who: &Identity<'_>, record: &Record) -> Result<(), CasError> {
    cas.put_asset_record(who.id(), Bytes::copy_from_slice(&record.encode()))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_junk_is_ignored() {
        let r = Record {
            kind: Kind::Directory,
            digest: DigestFunction::Sha256.digest_of(b"x"),
            stored_at: 5,
            expire_at: 9,
        };
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes, DigestFunction::Sha256), Some(r));
        assert_eq!(Record::decode(&bytes[1..], DigestFunction::Sha256), None);
        let mut bad = bytes;
        bad[4] = 7;
        assert_eq!(Record::decode(&bad, DigestFunction::Sha256), None);
        assert!(r.usable(8, 5) && !r.usable(9, 0) && !r.usable(1, 6));
    }

    #[test]
    fn identities_differ_in_every_part() {
        let q = vec![("a".to_string(), "b".to_string())];
        let base = Identity {
            kind: Kind::Blob,
            instance: "",
            function: DigestFunction::Sha256,
            uri: "https://x/y",
            qualifiers: &q,
        };
        let moved = vec![("ab".to_string(), String::new())];
        let ids = [
            base.id(),
            Identity {
                kind: Kind::Directory,
                ..base
            }
            .id(),
            Identity {
                instance: "i",
                ..base
            }
            .id(),
            Identity {
                uri: "https://x/z",
                ..base
            }
            .id(),
            Identity {
                qualifiers: &moved,
                ..base
            }
            .id(),
            Identity {
                qualifiers: &[],
                ..base
            }
            .id(),
        ];
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }
}
