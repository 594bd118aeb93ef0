//! zstd for `compressed-blobs/zstd/...` and the batch calls' `compressor` fields.

use crate::cas::CasError;
use crate::digest::Digest;
use bytes::Bytes;
use std::io::Read;

/// zstd level for data sent to clients: fast, since we compress on every read.
pub const ZSTD_LEVEL: i32 = 1;

/// Compresses a whole buffer (small blobs in batch responses).
pub fn compress(data: &[u8]) -> Bytes {
    Bytes::from(
        zstd::bulk::compress(data, ZSTD_LEVEL).expect("zstd compression of an in-memory buffer"),
    )
}

/// Decompresses a buffer that must expand to exactly `digest.size` bytes. Reads at most one
/// byte more than declared, so a decompression bomb costs nothing.
pub fn decompress_exact(data: &[u8], digest: &Digest) -> Result<Bytes, CasError> {
    let bad = |reason: String| CasError::BadCompression {
        digest: *digest,
        reason,
    };
    let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(digest.size.min(64 << 20) as usize);
    decoder
        .take(digest.size + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(e.to_string()))?;
    if out.len() as u64 != digest.size {
        return Err(bad(format!(
            "decompresses to {} bytes, expected {}",
            out.len(),
            digest.size
        )));
    }
    Ok(Bytes::from(out))
}

/// A streaming zstd decoder for resumable compressed uploads: feed compressed chunks in,
/// get uncompressed bytes out.
pub struct StreamDecoder {
    inner: zstd::stream::raw::Decoder<'static>,
    finished_frame: bool,
}

impl StreamDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            inner: zstd::stream::raw::Decoder::new()?,
            finished_frame: false,
        })
    }

    /// Decodes one compressed chunk, returning the bytes it yields.
    pub fn feed(&mut self, mut input: &[u8]) -> std::io::Result<Vec<u8>> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut out = Vec::new();
        let mut buf = vec![0u8; 128 * 1024];
        while !input.is_empty() {
            let mut inb = InBuffer::around(input);
            let mut outb = OutBuffer::around(&mut buf[..]);
            let hint = self.inner.run(&mut inb, &mut outb)?;
            let produced = outb.pos();
            let consumed = inb.pos();
            out.extend_from_slice(&buf[..produced]);
            input = &input[consumed..];
            self.finished_frame = hint == 0;
            if consumed == 0 && produced == 0 {
                break;
            }
        }
        // Drain output the decoder still holds for input it already consumed.
        loop {
            let mut inb = InBuffer::around(&[][..]);
            let mut outb = OutBuffer::around(&mut buf[..]);
            let hint = self.inner.run(&mut inb, &mut outb)?;
            let produced = outb.pos();
            out.extend_from_slice(&buf[..produced]);
            if hint == 0 {
                self.finished_frame = true;
            }
            if produced < buf.len() {
                break;
            }
        }
        Ok(out)
    }

    /// Whether the input so far ends exactly at the end of a zstd frame.
    pub fn at_frame_end(&self) -> bool {
        self.finished_frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[test]
    fn round_trip_and_bomb_guard() {
        let data = vec![7u8; 300_000];
        let d = DigestFunction::Sha256.digest_of(&data);
        let c = compress(&data);
        assert_eq!(decompress_exact(&c, &d).unwrap().as_ref(), &data[..]);
        let small = Digest { size: 10, ..d };
        assert!(decompress_exact(&c, &small).is_err());
        assert!(decompress_exact(b"not zstd", &d).is_err());
    }

    #[test]
    fn stream_decoder_in_small_pieces() {
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
        let c = compress(&data);
        let mut dec = StreamDecoder::new().unwrap();
        let mut out = Vec::new();
        for piece in c.chunks(1000) {
            out.extend(dec.feed(piece).unwrap());
        }
        assert!(dec.at_frame_end());
        assert_eq!(out, data);
    }
}
