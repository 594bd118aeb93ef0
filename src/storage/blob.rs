//! A blob handed out by a store: zero-copy views that keep their backing memory alive.

use bytes::{Bytes, BytesMut};

/// An immutable blob: one or more byte extents in order (a blob larger than a segment spans
/// several). Each extent is a cheap `Bytes` view, so holding a `Blob` keeps its storage alive and
/// cloning it copies nothing.
#[derive(Clone, Debug, Default)]
pub struct Blob {
    extents: Vec<Bytes>,
    len: u64,
}

impl Blob {
    /// A blob made of one extent.
    pub fn from_bytes(bytes: Bytes) -> Self {
        let len = bytes.len() as u64;
        Self {
            extents: vec![bytes],
            len,
        }
    }

    /// A blob made of several extents, in order.
    pub fn from_extents(extents: Vec<Bytes>) -> Self {
        let len = extents.iter().map(|e| e.len() as u64).sum();
        Self { extents, len }
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole blob as one `Bytes`: free for a single extent, a copy otherwise.
    pub fn to_bytes(&self) -> Bytes {
        match self.extents.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len as usize);
                for e in many {
                    out.extend_from_slice(e);
                }
                out.freeze()
            }
        }
    }

    /// Views of the range `[offset, offset + limit)` (clamped to the blob), cut into pieces
    /// of at most `max_chunk` bytes. No bytes are copied.
    pub fn chunks(&self, offset: u64, limit: u64, max_chunk: usize) -> Vec<Bytes> {
        let max_chunk = max_chunk.max(1);
        let end = offset.saturating_add(limit).min(self.len);
        let mut out = Vec::new();
        let mut pos = 0u64;
        for e in &self.extents {
            let e_start = pos;
            let e_end = pos + e.len() as u64;
            pos = e_end;
            if e_end <= offset || e_start >= end {
                continue;
            }
            let mut from = offset.max(e_start) - e_start;
            let to = end.min(e_end) - e_start;
            while from < to {
                let n = (to - from).min(max_chunk as u64);
                out.push(e.slice(from as usize..(from + n) as usize));
                from += n;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_ranges_across_extents() {
        let b = Blob::from_extents(vec![
            Bytes::from_static(b"abcd"),
            Bytes::from_static(b"efgh"),
        ]);
        let join = |v: Vec<Bytes>| v.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>();
        assert_eq!(join(b.chunks(0, u64::MAX, 3)), b"abcdefgh");
        assert_eq!(join(b.chunks(3, 3, 2)), b"def");
        assert_eq!(b.chunks(2, 4, 2).iter().map(Bytes::len).max(), Some(2));
        assert!(b.chunks(8, 10, 4).is_empty());
        assert_eq!(b.to_bytes(), Bytes::from_static(b"abcdefgh"));
    }
}
