//! zstd for `compressed-blobs/zstd/...` and the batch calls' `compressor` fields.
//!
//! Every decoder here is bounded by the size the client declared: a frame that would expand past
//! it is refused as soon as the first byte too many appears, so a decompression bomb (a small
//! frame of RLE blocks declaring gigabytes) costs at most one output chunk of memory. The zstd
//! window is capped too ([`MAX_WINDOW_LOG`]), since a frame header may ask the decoder for a
//! window of up to 2 GiB before any content arrives.

use crate::cas::CasError;
use crate::digest::Digest;
use crate::storage::{Blob, Encoded, StorageError};
use bytes::Bytes;
use zstd::stream::raw::{DParameter, InBuffer, Operation, OutBuffer};

/// zstd level for data sent to clients: fast, since we compress on every read.
pub const ZSTD_LEVEL: i32 = 1;

/// Largest zstd window accepted from a client, as a power of two: 2^23 = 8 MiB, the largest
/// window of every standard level (1-19). Frames made with `--ultra` levels or `--long` ask for
/// more and are refused with a message saying so.
pub const MAX_WINDOW_LOG: u32 = 23;

/// Largest output chunk one decoding step yields.
const CHUNK: usize = 256 * 1024;

/// Compresses a whole buffer (small blobs in batch responses).
pub fn compress(data: &[u8]) -> Bytes {
    Bytes::from(
        zstd::bulk::compress(data, ZSTD_LEVEL).expect("zstd compression of an in-memory buffer"),
    )
}

/// A whole blob as one zstd stream: the frames it is stored as, as they are, and its other
/// pieces compressed, one frame each (a zstd stream may hold several frames in a row).
pub fn compress_blob(blob: &Blob) -> Result<Bytes, StorageError> {
    let mut out = Vec::new();
    for piece in blob.encoded(0) {
        match piece? {
            Encoded::Zstd(frame) => out.extend_from_slice(&frame),
            Encoded::Plain(data) => out.extend_from_slice(&compress(&data)),
        }
    }
    Ok(Bytes::from(out))
}

/// Decompresses a buffer that must expand to exactly `digest.size` bytes. Memory grows with the
/// output actually produced, never past `digest.size` plus one chunk, so a bomb costs nothing.
/// The caller checks `digest.size` against its limits first.
pub fn decompress_exact(data: &[u8], digest: &Digest) -> Result<Bytes, CasError> {
    let bad = |reason: String| CasError::BadCompression {
        digest: *digest,
        reason,
    };
    let mut dec = StreamDecoder::new().map_err(|e| bad(e.to_string()))?;
    dec.push(Bytes::copy_from_slice(data));
    let mut out = Vec::with_capacity(digest.size.min(CHUNK as u64) as usize);
    while let Some(chunk) = dec
        .next_chunk(digest.size - out.len() as u64)
        .map_err(|e| bad(e.to_string()))?
    {
        out.extend_from_slice(&chunk);
    }
    if !dec.at_frame_end() {
        return Err(bad("the data ends inside a zstd frame".into()));
    }
    if out.len() as u64 != digest.size {
        return Err(bad(format!(
            "decompresses to {} bytes, expected {}",
            out.len(),
            digest.size
        )));
    }
    Ok(Bytes::from(out))
}

/// Why a bounded decoder stopped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame expands past the bytes the client declared.
    #[error("decompresses to more than the declared size")]
    TooLarge,
    /// Not zstd, damaged, or asking for a window over [`MAX_WINDOW_LOG`].
    #[error("{0} (kiln accepts zstd windows up to 8 MiB: no --ultra levels or --long)")]
    Zstd(#[from] std::io::Error),
}

/// A streaming zstd decoder for resumable compressed uploads: push compressed chunks in, pull
/// bounded uncompressed chunks out with [`StreamDecoder::next_chunk`].
pub struct StreamDecoder {
    inner: zstd::stream::raw::Decoder<'static>,
    pending: Bytes,
    finished_frame: bool,
    /// Output space reused by every step (allocated on first use).
    buf: Vec<u8>,
    /// Whether the decoder may still hold output for input it consumed: false once a step
    /// ended with room to spare and no input left, so an empty push costs nothing.
    may_have_output: bool,
}

impl StreamDecoder {
    /// A decoder at the start of a stream, with the window cap set.
    pub fn new() -> std::io::Result<Self> {
        let mut inner = zstd::stream::raw::Decoder::new()?;
        inner.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))?;
        Ok(Self {
            inner,
            pending: Bytes::new(),
            finished_frame: false,
            buf: Vec::new(),
            may_have_output: false,
        })
    }

    /// Queues the next compressed chunk. The previous one must have been drained
    /// (`next_chunk` returned `None`).
    pub fn push(&mut self, input: Bytes) {
        debug_assert!(self.pending.is_empty(), "push before draining");
        if !input.is_empty() {
            self.pending = input;
            self.may_have_output = true;
        }
    }

    /// The next piece of output (at most 256 KiB), or `None` once the pushed input is used up
    /// and nothing is left to flush. Fails with [`DecodeError::TooLarge`] as soon as the output
    /// would exceed `remaining` bytes: at most `remaining + 1` bytes are ever decoded.
    pub fn next_chunk(&mut self, remaining: u64) -> Result<Option<Bytes>, DecodeError> {
        if self.pending.is_empty() && !self.may_have_output {
            return Ok(None);
        }
        let cap = remaining.saturating_add(1).min(CHUNK as u64) as usize;
        if self.buf.len() < CHUNK {
            self.buf = vec![0u8; CHUNK];
        }
        loop {
            let had_input = !self.pending.is_empty();
            let mut inb = InBuffer::around(&self.pending[..]);
            let mut outb = OutBuffer::around(&mut self.buf[..cap]);
            let hint = self.inner.run(&mut inb, &mut outb)?;
            let (consumed, produced) = (inb.pos(), outb.pos());
            let _ = self.pending.split_to(consumed);
            if had_input && consumed > 0 {
                self.finished_frame = hint == 0;
            } else if hint == 0 {
                self.finished_frame = true;
            }
            if produced as u64 > remaining {
                return Err(DecodeError::TooLarge);
            }
            if produced > 0 {
                self.may_have_output = produced == cap || !self.pending.is_empty();
                return Ok(Some(Bytes::copy_from_slice(&self.buf[..produced])));
            }
            if self.pending.is_empty() || consumed == 0 {
                self.may_have_output = false;
                return Ok(None);
            }
        }
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

    /// A frame of RLE blocks: 4 GiB of zeros from about 100 KiB of input.
    fn bomb() -> Vec<u8> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            std::io::Write::write_all(&mut enc, &zeros).unwrap();
        }
        enc.finish().unwrap()
    }

    #[test]
    fn round_trip_and_size_guard() {
        let data = vec![7u8; 300_000];
        let d = DigestFunction::Sha256.digest_of(&data);
        let c = compress(&data);
        assert_eq!(decompress_exact(&c, &d).unwrap().as_ref(), &data[..]);
        let small = Digest { size: 10, ..d };
        assert!(decompress_exact(&c, &small).is_err());
        let big = Digest { size: 400_000, ..d };
        assert!(decompress_exact(&c, &big).is_err());
        assert!(decompress_exact(b"not zstd", &d).is_err());
        assert!(decompress_exact(&c[..c.len() - 3], &d).is_err());
    }

    #[test]
    fn stream_decoder_in_small_pieces() {
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
        let c = compress(&data);
        let mut dec = StreamDecoder::new().unwrap();
        let mut out = Vec::new();
        for piece in c.chunks(1000) {
            dec.push(Bytes::copy_from_slice(piece));
            while let Some(chunk) = dec
                .next_chunk(data.len() as u64 - out.len() as u64)
                .unwrap()
            {
                out.extend_from_slice(&chunk);
            }
        }
        assert!(dec.at_frame_end());
        assert_eq!(out, data);
    }

    #[test]
    fn bomb_stops_one_byte_past_the_bound() {
        let frame = bomb();
        let mut dec = StreamDecoder::new().unwrap();
        dec.push(Bytes::from(frame.clone()));
        let mut total = 0u64;
        let err = loop {
            match dec.next_chunk(1000 - total) {
                Ok(Some(c)) => total += c.len() as u64,
                Ok(None) => panic!("bomb decoded to its end"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, DecodeError::TooLarge), "{err}");
        assert!(total <= 1000, "{total} bytes handed out past the bound");
        let d = Digest {
            size: 1000,
            ..DigestFunction::Sha256.digest_of(b"")
        };
        assert!(decompress_exact(&frame, &d).is_err());
    }

    #[test]
    fn huge_windows_are_refused() {
        let data = vec![1u8; 1 << 16];
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(27))
            .unwrap();
        enc.long_distance_matching(true).unwrap();
        std::io::Write::write_all(&mut enc, &data).unwrap();
        // Without a pledged size the header names the 128 MiB window.
        let c = enc.finish().unwrap();
        let mut dec = StreamDecoder::new().unwrap();
        dec.push(Bytes::from(c));
        let err = dec.next_chunk(1 << 20).unwrap_err();
        assert!(matches!(err, DecodeError::Zstd(_)), "{err}");
    }
}
