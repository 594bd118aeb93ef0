//! Compressed records (FORMAT.md "Compressed records"): the payload of a `Blob` or `Part`
//! record with the zstd flag is `logical length u64 | one zstd frame` (the frame with its
//! content size and content checksum). What is compressed is decided here, per record: a record
//! is kept compressed only where that pays, so a store holds both kinds.

use super::blob::Piece;
use super::config::Compression;
use super::format::FLAG_ZSTD;
use bytes::Bytes;
use std::cell::RefCell;

/// Bytes before the frame: the record's logical (uncompressed) length.
pub const PREFIX: usize = 8;

/// A record payload ready to append.
pub struct Encoded {
    /// What goes to disk.
    pub payload: Bytes,
    /// Record flags: `FLAG_ZSTD` or 0.
    pub flags: u8,
    /// Bytes of the blob it holds.
    pub logical: u64,
}

impl Encoded {
    /// Bytes stored as they are.
    pub fn plain(data: Bytes) -> Self {
        Self {
            logical: data.len() as u64,
            payload: data,
            flags: 0,
        }
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compression contexts kept for reuse (a context costs a few MB at high levels, too much
/// to keep one per thread of a blocking pool that may grow to hundreds): at most this many.
const KEPT_COMPRESSORS: usize = 8;

static COMPRESSORS: std::sync::Mutex<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
    std::sync::Mutex::new(Vec::new());

/// A compression context for `level` from the kept ones, or a new one.
fn take_compressor(level: i32) -> Option<zstd::bulk::Compressor<'static>> {
    let mut kept = COMPRESSORS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(i) = kept.iter().position(|(l, _)| *l == level) {
        return Some(kept.swap_remove(i).1);
    }
    drop(kept);
    let mut z = zstd::bulk::Compressor::new(level).ok()?;
    z.set_parameter(zstd::stream::raw::CParameter::ChecksumFlag(true))
        .ok()?;
    Some(z)
}

/// Gives a context back for reuse (dropped when enough are kept).
fn keep_compressor(level: i32, z: zstd::bulk::Compressor<'static>) {
    let mut kept = COMPRESSORS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if kept.len() < KEPT_COMPRESSORS {
        kept.push((level, z));
    }
}

/// The payload to store for `data` under `c`: compressed when it is long enough and its
/// frame (with the prefix) is at most `max_ratio` of its length, else `data` itself.
pub fn encode(c: Compression, data: Bytes) -> Encoded {
    let Compression::Zstd {
        level,
        min_size,
        max_ratio,
    } = c
    else {
        return Encoded::plain(data);
    };
    let len = data.len();
    if (len as u64) < min_size.max(PREFIX as u64 + 1) {
        return Encoded::plain(data);
    }
    // The output buffer is as large as a payload worth keeping: zstd fails when the frame
    // does not fit, which is the answer "store it as it is" at no extra memory.
    let room = ((len as f64 * max_ratio) as usize).min(len);
    if room <= PREFIX {
        return Encoded::plain(data);
    }
    let mut out = vec![0u8; room];
    out[..PREFIX].copy_from_slice(&(len as u64).to_le_bytes());
    let fitted = take_compressor(level).and_then(|mut z| {
        // An error is "the frame does not fit": the context stays usable.
        let n = z.compress_to_buffer(&data[..], &mut out[PREFIX..]).ok();
        keep_compressor(level, z);
        n
    });
    match fitted {
        Some(n) => Encoded {
            payload: Bytes::from(out).slice(..PREFIX + n),
            flags: FLAG_ZSTD,
            logical: len as u64,
        },
        _ => Encoded::plain(data),
    }
}

/// The logical length a compressed payload declares (`None`: too short to hold one).
pub fn logical_len(payload: &[u8]) -> Option<u64> {
    let b: [u8; PREFIX] = payload.get(..PREFIX)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// The frame of a compressed payload.
pub fn frame(payload: &Bytes) -> Bytes {
    payload.slice(PREFIX.min(payload.len())..)
}

/// Decompresses a compressed payload that must hold exactly `logical` bytes, at most `max`
/// (memory is spent only after both checks). `None` for anything else: a payload whose
/// prefix names another length, a frame that does not decode, fails its content checksum or
/// yields another length. Disk bytes are hostile: this never panics and never allocates
/// more than `logical`.
pub fn decode(payload: &[u8], logical: u64, max: u64) -> Option<Bytes> {
    if logical_len(payload)? != logical || logical > max {
        return None;
    }
    let mut out = Vec::with_capacity(usize::try_from(logical).ok()?);
    let n = DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new().ok()?);
        }
        cell.as_mut()?
            .decompress_to_buffer(&payload[PREFIX..], &mut out)
            .ok()
    })?;
    (n as u64 == logical && out.len() as u64 == logical).then(|| Bytes::from(out))
}

/// Most bytes one record may hold decompressed: a part is at most a quarter of a segment
/// (`EngineConfig::validate`), whatever `part_size` was when it was written.
pub fn max_piece(segment_size: u64) -> u64 {
    segment_size / 4
}

/// The piece of a blob a checked record payload holds, if it holds `logical` bytes (at most
/// `max` when compressed). With `eager` a compressed payload is decompressed now (`None` if
/// it does not decode); otherwise only its declared length is checked and it is decompressed
/// when read.
pub(crate) fn piece(
    flags: u8,
    payload: Bytes,
    logical: u64,
    max: u64,
    eager: bool,
) -> Option<Piece> {
    if flags & FLAG_ZSTD == 0 {
        return (payload.len() as u64 == logical).then_some(Piece::Plain(payload));
    }
    if logical_len(&payload)? != logical || logical > max {
        return None;
    }
    let decoded = if eager {
        Some(decode(&payload, logical, max)?)
    } else {
        None
    };
    Some(Piece::Zstd {
        payload,
        len: logical,
        decoded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZSTD: Compression = Compression::Zstd {
        level: 1,
        min_size: 1024,
        max_ratio: 0.9,
    };

    #[test]
    fn text_is_compressed_and_decodes_exactly() {
        let data = Bytes::from("kiln stores text compressed. ".repeat(1000));
        let e = encode(ZSTD, data.clone());
        assert_eq!(e.flags, FLAG_ZSTD);
        assert_eq!(e.logical, data.len() as u64);
        assert!(e.payload.len() < data.len() / 10, "{}", e.payload.len());
        assert_eq!(decode(&e.payload, e.logical, 1 << 20).unwrap(), data);
        // Wrong expectations are refused, not guessed at.
        assert!(decode(&e.payload, e.logical - 1, 1 << 20).is_none());
        assert!(decode(&e.payload, e.logical, e.logical - 1).is_none());
    }

    #[test]
    fn incompressible_short_and_off_are_stored_as_they_are() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..64 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for (c, data) in [
            (ZSTD, Bytes::from(noise)),
            (ZSTD, Bytes::from("short ".repeat(100))),
            (Compression::None, Bytes::from("text ".repeat(1000))),
        ] {
            let e = encode(c, data.clone());
            assert_eq!((e.flags, &e.payload), (0, &data));
        }
    }

    #[test]
    fn a_damaged_frame_is_refused() {
        let data = Bytes::from("damage must not pass. ".repeat(500));
        let e = encode(ZSTD, data);
        let mut bad = e.payload.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1; // the content checksum
        assert!(decode(&bad, e.logical, 1 << 20).is_none());
        let mut bad = e.payload.to_vec();
        bad[PREFIX + 10] ^= 0x40;
        assert!(decode(&bad, e.logical, 1 << 20).is_none());
        assert!(decode(&e.payload[..PREFIX - 1], e.logical, 1 << 20).is_none());
    }
}
