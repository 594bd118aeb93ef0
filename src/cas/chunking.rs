//! Content-defined chunking for SplitBlob: FastCDC as the 2020 paper describes it, with the
//! parameters REAPI v2.12 fixes for `ChunkingFunction.FAST_CDC_2020` (the `fastcdc` crate's
//! `v2020` module, which the spec names as a reference implementation).
//!
//! The spec's rules, applied here: normalization level 2; the gear table is the high 64 bits
//! of MD5(i) (the crate's table, XORed with the seed); minimum and maximum chunk sizes derived
//! from the average as avg/4 and avg*4. Capabilities advertises [`AVG_CHUNK_BYTES`] and
//! [`SEED`], so a client chunking with the same parameters gets the same cut points and
//! shares chunks with the server.

use crate::digest::{Digest, DigestFunction};
use crate::storage::{Blob, Chunks, StorageError};
use bytes::Bytes;
use fastcdc::v2020::{Normalization, StreamCDC};
use std::io::Read;

/// Average chunk size: the spec's recommended 512 KiB (it must be a power of two between
/// 1 KiB and 1 MiB).
pub const AVG_CHUNK_BYTES: u64 = 512 << 10;
/// Smallest chunk (except a blob's last): avg/4, as the spec derives it.
pub const MIN_CHUNK_BYTES: u64 = AVG_CHUNK_BYTES / 4;
/// Largest chunk: avg*4, as the spec derives it. Also what the chunker buffers.
pub const MAX_CHUNK_BYTES: u64 = AVG_CHUNK_BYTES * 4;
/// The gear seed advertised: the spec's recommended 0 (the plain MD5 gear table).
pub const SEED: u32 = 0;

/// One chunk of a blob: where it is and what it hashes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the chunk's first byte in the blob.
    pub offset: u64,
    /// The chunk's digest (its size is the chunk's length).
    pub digest: Digest,
    /// The chunk's bytes.
    pub data: Bytes,
}

/// Reads a [`Blob`]'s pieces in order without joining them (a compressed piece is
/// decompressed when the reader reaches it).
struct BlobReader {
    parts: Chunks,
    current: Bytes,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.parts.next() {
                Some(p) => self.current = p.map_err(std::io::Error::other)?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Splits `blob` with FastCDC 2020 and hashes each chunk with `function`, handing the chunks
/// to `each` in order (so at most one chunk and the chunker's [`MAX_CHUNK_BYTES`] buffer are
/// in memory at once). Stops at the first error `each` returns.
pub fn split<E: From<StorageError>>(
    blob: &Blob,
    function: DigestFunction,
    mut each: impl FnMut(Chunk) -> Result<(), E>,
) -> Result<(), E> {
    let reader = BlobReader {
        parts: blob.read(0, u64::MAX, usize::MAX),
        current: Bytes::new(),
    };
    let chunker = StreamCDC::with_level_and_seed(
        reader,
        MIN_CHUNK_BYTES as usize,
        AVG_CHUNK_BYTES as usize,
        MAX_CHUNK_BYTES as usize,
        Normalization::Level2,
        u64::from(SEED),
    );
    for chunk in chunker {
        // The reader fails only on a stored piece that does not decompress.
        let chunk = chunk.map_err(|e| StorageError::Corrupt {
            at: format!("a stored blob being split: {e}"),
        })?;
        let data = Bytes::from(chunk.data);
        each(Chunk {
            offset: chunk.offset,
            digest: function.digest_of(&data),
            data,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn cut(blob: &Blob) -> Vec<Chunk> {
        let mut out = Vec::new();
        split(blob, DigestFunction::Sha256, |c| {
            out.push(c);
            Ok::<(), StorageError>(())
        })
        .unwrap();
        out
    }

    #[test]
    fn chunks_cover_the_blob_within_the_size_bounds() {
        let data = noise(5 << 20, 7);
        let chunks = cut(&Blob::from_bytes(Bytes::from(data.clone())));
        let mut joined = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset, joined.len() as u64);
            assert_eq!(c.digest, DigestFunction::Sha256.digest_of(&c.data));
            assert!(c.data.len() as u64 <= MAX_CHUNK_BYTES);
            if i + 1 < chunks.len() {
                assert!(c.data.len() as u64 >= MIN_CHUNK_BYTES);
            }
            joined.extend_from_slice(&c.data);
        }
        assert_eq!(joined, data);
        assert!(
            chunks.len() > 2,
            "5 MiB at a 512 KiB average: {}",
            chunks.len()
        );
    }

    #[test]
    fn extents_do_not_change_the_cut_points() {
        let data = noise(3 << 20, 9);
        let one = cut(&Blob::from_bytes(Bytes::from(data.clone())));
        let parts: Vec<Bytes> = data.chunks(100_003).map(Bytes::copy_from_slice).collect();
        let many = cut(&Blob::from_extents(parts));
        assert_eq!(one, many);
    }

    #[test]
    fn the_empty_blob_has_no_chunks() {
        assert!(cut(&Blob::default()).is_empty());
    }
}
