//! A blob handed out by a store: zero-copy views that keep their backing memory alive.
//!
//! A blob is a list of pieces in order (a blob larger than a segment spans several records).
//! A piece is either bytes as they are or, with compression at rest, one zstd frame that
//! holds a known number of bytes: such a piece is decompressed only when bytes in it are
//! read, one piece at a time, so a read at an offset of a large blob decompresses only what
//! it needs, and a compressed read can send the stored frames as they are ([`Blob::encoded`]).

use super::StorageError;
use super::codec;
use bytes::{Bytes, BytesMut};

/// An immutable blob. Cloning it copies nothing.
#[derive(Clone, Debug, Default)]
pub struct Blob {
    pieces: Vec<Piece>,
    len: u64,
    /// Called when a compressed piece turns out not to decode: the store unpublishes the
    /// blob then, as it does for a record that fails its checksum at `get`.
    damage: Option<DamageHook>,
}

/// What a blob calls when a piece of it does not decode.
#[derive(Clone)]
pub(crate) struct DamageHook(pub(crate) std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for DamageHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DamageHook")
    }
}

impl DamageHook {
    /// `p`'s bytes; on a piece that does not decode, the hook runs first.
    fn bytes(hook: Option<&Self>, p: &Piece) -> Result<Bytes, StorageError> {
        p.bytes().inspect_err(|_| {
            if let Some(h) = hook {
                (h.0)();
            }
        })
    }
}

/// One stored piece of a blob.
#[derive(Clone, Debug)]
pub(crate) enum Piece {
    /// Bytes as they are.
    Plain(Bytes),
    /// A compressed record's payload (`logical len u64 | zstd frame`) holding `len` bytes,
    /// with the bytes themselves when the reader has decompressed them already.
    Zstd {
        payload: Bytes,
        len: u64,
        decoded: Option<Bytes>,
    },
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Plain(b) => b.len() as u64,
            Piece::Zstd { len, .. } => *len,
        }
    }

    /// The bytes of the piece, decompressing them if needed.
    fn bytes(&self) -> Result<Bytes, StorageError> {
        match self {
            Piece::Plain(b)
            | Piece::Zstd {
                decoded: Some(b), ..
            } => Ok(b.clone()),
            Piece::Zstd { payload, len, .. } => {
                codec::decode(payload, *len, *len).ok_or_else(|| StorageError::Corrupt {
                    at: "a compressed record that does not decode".into(),
                })
            }
        }
    }
}

/// A stretch of a blob as [`Blob::encoded`] hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    /// One complete zstd frame, as stored, holding the next bytes of the blob.
    Zstd(Bytes),
    /// The next bytes of the blob as they are.
    Plain(Bytes),
}

impl Blob {
    /// A blob made of one extent.
    pub fn from_bytes(bytes: Bytes) -> Self {
        Self::from_extents(vec![bytes])
    }

    /// A blob made of several extents, in order.
    pub fn from_extents(extents: Vec<Bytes>) -> Self {
        Self::from_pieces(extents.into_iter().map(Piece::Plain).collect())
    }

    pub(crate) fn from_pieces(pieces: Vec<Piece>) -> Self {
        let len = pieces.iter().map(Piece::len).sum();
        Self {
            pieces,
            len,
            damage: None,
        }
    }

    /// Whether some piece is decompressed only when read (it may then turn out damaged).
    pub(crate) fn decodes_lazily(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Zstd { decoded: None, .. }))
    }

    /// The blob, with `hook` called when a piece of it does not decode.
    pub(crate) fn on_damage(mut self, hook: DamageHook) -> Self {
        self.damage = Some(hook);
        self
    }

    pub(crate) fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Total length in bytes (of the blob, not of what stores it).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some of it is stored compressed.
    pub fn is_compressed(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Zstd { .. }))
    }

    /// The whole blob as one `Bytes`: free for a single plain extent, a copy otherwise.
    /// `Err` when a compressed piece does not decode (damage the record checksums missed).
    pub fn to_bytes(&self) -> Result<Bytes, StorageError> {
        let hook = self.damage.as_ref();
        match self.pieces.as_slice() {
            [] => Ok(Bytes::new()),
            [one] => DamageHook::bytes(hook, one),
            many => {
                let mut out = BytesMut::with_capacity(self.len as usize);
                for p in many {
                    out.extend_from_slice(&DamageHook::bytes(hook, p)?);
                }
                Ok(out.freeze())
            }
        }
    }

    /// The range `[offset, offset + limit)` (clamped to the blob) in pieces of at most
    /// `max_chunk` bytes. Plain bytes are views (no copy); a compressed piece is decompressed
    /// when the iterator reaches it, so at most one piece is held decompressed at a time.
    pub fn read(&self, offset: u64, limit: u64, max_chunk: usize) -> Chunks {
        let end = offset.saturating_add(limit).min(self.len);
        Chunks {
            pieces: self.pieces.clone().into_iter(),
            pos: 0,
            offset,
            end,
            max_chunk: max_chunk.max(1),
            current: None,
            damage: self.damage.clone(),
        }
    }

    /// The blob from `offset` on, for a compressed read: every compressed piece that starts at
    /// or after `offset` as its stored frame, everything else as plain bytes (the caller
    /// compresses those). Nothing is decompressed except a compressed piece `offset` falls
    /// inside. Never empty: with nothing from `offset` on, one empty plain piece.
    pub fn encoded(
        &self,
        offset: u64,
    ) -> impl Iterator<Item = Result<Encoded, StorageError>> + Send + 'static {
        let mut pos = 0u64;
        let mut out = Vec::new();
        for p in &self.pieces {
            let (start, end) = (pos, pos + p.len());
            pos = end;
            if end <= offset {
                continue;
            }
            out.push((p.clone(), offset.saturating_sub(start)));
        }
        // Nothing from `offset` on (the empty blob, or `offset == len`): one empty plain
        // piece, so that the caller still sends a zstd stream (one empty frame), not zero
        // bytes, which is no zstd stream.
        if out.is_empty() {
            out.push((Piece::Plain(Bytes::new()), 0));
        }
        let hook = self.damage.clone();
        out.into_iter().map(move |(p, skip)| match p {
            Piece::Zstd { payload, .. } if skip == 0 => Ok(Encoded::Zstd(codec::frame(&payload))),
            p => Ok(Encoded::Plain(
                DamageHook::bytes(hook.as_ref(), &p)?.slice(skip as usize..),
            )),
        })
    }
}

/// The pieces of a range of a blob, decompressed one stored piece at a time.
pub struct Chunks {
    pieces: std::vec::IntoIter<Piece>,
    /// Blob offset of the next stored piece.
    pos: u64,
    offset: u64,
    end: u64,
    max_chunk: usize,
    /// The rest of the current piece's bytes in range.
    current: Option<Bytes>,
    damage: Option<DamageHook>,
}

impl Iterator for Chunks {
    type Item = Result<Bytes, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(cur) = &mut self.current {
                if !cur.is_empty() {
                    let n = cur.len().min(self.max_chunk);
                    return Some(Ok(cur.split_to(n)));
                }
                self.current = None;
            }
            if self.pos >= self.end {
                return None;
            }
            let p = self.pieces.next()?;
            let (start, stop) = (self.pos, self.pos + p.len());
            self.pos = stop;
            if stop <= self.offset {
                continue;
            }
            let bytes = match DamageHook::bytes(self.damage.as_ref(), &p) {
                Ok(b) => b,
                Err(e) => {
                    self.pos = self.end;
                    return Some(Err(e));
                }
            };
            let from = self.offset.max(start) - start;
            let to = self.end.min(stop) - start;
            self.current = Some(bytes.slice(from as usize..to as usize));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::config::Compression;

    fn join(c: Chunks) -> Vec<u8> {
        c.flat_map(|b| b.unwrap().to_vec()).collect()
    }

    #[test]
    fn chunks_cover_ranges_across_extents() {
        let b = Blob::from_extents(vec![
            Bytes::from_static(b"abcd"),
            Bytes::from_static(b"efgh"),
        ]);
        assert_eq!(join(b.read(0, u64::MAX, 3)), b"abcdefgh");
        assert_eq!(join(b.read(3, 3, 2)), b"def");
        assert_eq!(b.read(2, 4, 2).map(|c| c.unwrap().len()).max(), Some(2));
        assert_eq!(b.read(8, 10, 4).count(), 0);
        assert_eq!(b.to_bytes().unwrap(), Bytes::from_static(b"abcdefgh"));
    }

    fn zstd_piece(data: &[u8]) -> Piece {
        let e = codec::encode(
            Compression::Zstd {
                level: 1,
                min_size: 16,
                max_ratio: 1.0,
            },
            Bytes::copy_from_slice(data),
        );
        assert_eq!(e.flags, crate::storage::format::FLAG_ZSTD);
        Piece::Zstd {
            payload: e.payload,
            len: e.logical,
            decoded: None,
        }
    }

    #[test]
    fn compressed_pieces_read_like_plain_ones() {
        let a = "a".repeat(1000);
        let c = "c".repeat(1000);
        let b = Blob::from_pieces(vec![
            zstd_piece(a.as_bytes()),
            Piece::Plain(Bytes::from_static(b"bbbb")),
            zstd_piece(c.as_bytes()),
        ]);
        let whole = format!("{a}bbbb{c}");
        assert_eq!(b.len(), 2004);
        assert!(b.is_compressed());
        assert_eq!(b.to_bytes().unwrap(), whole.as_bytes());
        for (off, lim) in [
            (0u64, u64::MAX),
            (999, 6),
            (1003, 1),
            (1500, 10_000),
            (5, 0),
        ] {
            let want = &whole.as_bytes()
                [(off as usize).min(2004)..(off.saturating_add(lim) as usize).min(2004)];
            assert_eq!(join(b.read(off, lim, 7)), want, "{off} {lim}");
        }
        // Stored frames are handed out as they are; a frame the offset falls inside is not.
        let enc: Vec<Encoded> = b.encoded(0).map(Result::unwrap).collect();
        assert!(
            matches!(&enc[0], Encoded::Zstd(f) if zstd::decode_all(&f[..]).unwrap() == a.as_bytes())
        );
        assert_eq!(enc[1], Encoded::Plain(Bytes::from_static(b"bbbb")));
        assert!(matches!(enc[2], Encoded::Zstd(_)));
        let enc: Vec<Encoded> = b.encoded(10).map(Result::unwrap).collect();
        assert_eq!(
            enc[0],
            Encoded::Plain(Bytes::copy_from_slice(&a.as_bytes()[10..]))
        );
        assert_eq!(enc.len(), 3);
    }

    #[test]
    fn a_damaged_piece_is_an_error_not_bytes() {
        let Piece::Zstd { payload, len, .. } = zstd_piece(&[b'x'; 500]) else {
            unreachable!()
        };
        let mut bad = payload.to_vec();
        let n = bad.len();
        bad[n - 2] ^= 1;
        let b = Blob::from_pieces(vec![
            Piece::Plain(Bytes::from_static(b"ok")),
            Piece::Zstd {
                payload: Bytes::from(bad),
                len,
                decoded: None,
            },
        ]);
        assert!(b.to_bytes().is_err());
        let got: Vec<_> = b.read(0, u64::MAX, 1 << 20).collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok() && got[1].is_err());
    }
}
