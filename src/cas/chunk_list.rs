//! The stored form of a blob's chunk list (what SplitBlob answers), kept in the engine under
//! [`crate::storage::Key::SPACE_SPLIT`] so that splitting a blob twice costs one lookup.
//!
//! Layout (little-endian): `KSPL`, version 1, chunking tag (1 = FastCDC 2020 with the average
//! and seed that follow, 0 = a client's chunking of unknown kind), average chunk bytes (u64),
//! seed (u32), chunk count (u32), then per chunk its 32-byte hash and size (u64). The digest
//! function is the blob's: the record's key already says which.
//!
//! Stored bytes are read back as hostile: every length is checked before anything is
//! allocated, and a list whose sizes do not add up to the blob's is refused.

use super::CasError;
use crate::digest::Digest;

const MAGIC: &[u8; 4] = b"KSPL";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 1 + 8 + 4 + 4;
const ENTRY: usize = 32 + 8;

/// How a list's chunks were cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunking {
    /// FastCDC 2020 with these parameters.
    FastCdc2020 {
        /// Average chunk size, bytes.
        avg: u64,
        /// Gear seed.
        seed: u32,
    },
    /// A client's splice of unknown chunking.
    Unknown,
}

/// A blob's chunks in order; their concatenation is the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkList {
    /// How the chunks were cut.
    pub chunking: Chunking,
    /// The chunks, in blob order (same digest function as the blob).
    pub chunks: Vec<Digest>,
}

impl ChunkList {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + ENTRY * self.chunks.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        let (tag, avg, seed) = match self.chunking {
            Chunking::FastCdc2020 { avg, seed } => (1u8, avg, seed),
            Chunking::Unknown => (0u8, 0, 0),
        };
        out.push(tag);
        out.extend_from_slice(&avg.to_le_bytes());
        out.extend_from_slice(&seed.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.hash);
            out.extend_from_slice(&c.size.to_le_bytes());
        }
        out
    }

    /// Reads a stored list of `blob`'s chunks, checking that it describes exactly `blob.size`
    /// bytes in non-empty chunks.
    pub fn decode(bytes: &[u8], blob: &Digest) -> Result<Self, CasError> {
        let bad = |reason: String| CasError::BadMessage {
            what: "stored chunk list",
            reason,
        };
        if bytes.len() < HEADER {
            return Err(bad(format!(
                "{} bytes, shorter than its header",
                bytes.len()
            )));
        }
        let (header, body) = bytes.split_at(HEADER);
        if &header[..4] != MAGIC || header[4] != VERSION {
            return Err(bad("unknown magic or version".into()));
        }
        let avg = u64::from_le_bytes(header[6..14].try_into().expect("8 bytes"));
        let seed = u32::from_le_bytes(header[14..18].try_into().expect("4 bytes"));
        let chunking = match header[5] {
            1 => Chunking::FastCdc2020 { avg, seed },
            // One encoding per list: an unknown chunking carries no parameters.
            0 if avg == 0 && seed == 0 => Chunking::Unknown,
            0 => return Err(bad("parameters on an unknown chunking".into())),
            t => return Err(bad(format!("unknown chunking tag {t}"))),
        };
        let count = u32::from_le_bytes(header[18..22].try_into().expect("4 bytes")) as usize;
        if count.checked_mul(ENTRY) != Some(body.len()) {
            return Err(bad(format!("{count} chunks in {} bytes", body.len())));
        }
        let mut chunks = Vec::with_capacity(count);
        let mut total = 0u64;
        for entry in body.chunks_exact(ENTRY) {
            let size = u64::from_le_bytes(entry[32..].try_into().expect("8 bytes"));
            if size == 0 {
                return Err(bad("an empty chunk".into()));
            }
            total = total
                .checked_add(size)
                .ok_or_else(|| bad("chunk sizes overflow".into()))?;
            chunks.push(Digest {
                function: blob.function,
                hash: entry[..32].try_into().expect("32 bytes"),
                size,
            });
        }
        if total != blob.size {
            return Err(bad(format!(
                "chunks total {total} bytes, the blob has {}",
                blob.size
            )));
        }
        Ok(Self { chunking, chunks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn list() -> (ChunkList, Digest) {
        let a = DigestFunction::Sha256.digest_of(b"hello ");
        let b = DigestFunction::Sha256.digest_of(b"world");
        let blob = DigestFunction::Sha256.digest_of(b"hello world");
        let l = ChunkList {
            chunking: Chunking::FastCdc2020 {
                avg: 1 << 19,
                seed: 0,
            },
            chunks: vec![a, b],
        };
        (l, blob)
    }

    #[test]
    fn round_trip() {
        let (l, blob) = list();
        assert_eq!(ChunkList::decode(&l.encode(), &blob).unwrap(), l);
        let unknown = ChunkList {
            chunking: Chunking::Unknown,
            ..l
        };
        assert_eq!(
            ChunkList::decode(&unknown.encode(), &blob).unwrap(),
            unknown
        );
    }

    #[test]
    fn damaged_records_are_refused() {
        let (l, blob) = list();
        let good = l.encode();
        for cut in 0..good.len() {
            assert!(
                ChunkList::decode(&good[..cut], &blob).is_err(),
                "cut at {cut}"
            );
        }
        let wrong_size = Digest { size: 12, ..blob };
        assert!(ChunkList::decode(&good, &wrong_size).is_err());
        let mut huge_count = good.clone();
        huge_count[18..22].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ChunkList::decode(&huge_count, &blob).is_err());
        // Found by the fuzz target: parameters under the unknown tag (decoded, then re-encoded
        // without them).
        let unknown = ChunkList {
            chunking: Chunking::Unknown,
            chunks: l.chunks.clone(),
        };
        let mut with_params = unknown.encode();
        with_params[6] = 1;
        assert!(ChunkList::decode(&with_params, &blob).is_err());
        let mut bad_magic = good;
        bad_magic[0] = b'X';
        assert!(ChunkList::decode(&bad_magic, &blob).is_err());
    }
}
