//! Read-only access to a store that another process owns (the `kiln serve` on the same box),
//! for co-located workers: input blobs are copied from the segment files instead of crossing
//! gRPC. Nothing here writes or locks. The index is mapped read-only and searched with the
//! owner's lock-free lookup; every record read is checked (segment-seeded header checksum,
//! key, kind, payload xxh3), and callers check the SHA-256 of what they copied. A stale index
//! entry, an evicted segment or one recycled mid-copy is therefore a miss, never wrong bytes.

use super::Key;
use super::codec;
use super::format::{
    ALIGN, FLAG_ZSTD, RECORD_HEADER_LEN, RecordHeader, RecordKind, State, manifest_parts,
    state_slot_offset,
};
use super::index::Index;
use super::segment::{read_record_header, segment_path};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes read per `pread` while copying a record.
const CHUNK: usize = 1 << 20;

/// A read-only view of the store in a data directory.
pub struct Peek {
    /// The owner's index as last mapped. The owner replaces the file when it grows the index
    /// (a new inode renamed into place): a miss checks for that and maps the new one.
    index: arc_swap::ArcSwap<Index>,
    index_path: PathBuf,
    /// Inode of the mapped index file.
    index_ino: std::sync::atomic::AtomicU64,
    segments: PathBuf,
    ring: u32,
}

impl Peek {
    /// Opens the store in `data_dir` (its `state`, `index` and `segments/`) read-only.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let raw = std::fs::read(data_dir.join("state"))?;
        let state = State::newest((0..2).filter_map(|i| raw.get(state_slot_offset(i) as usize..)))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no valid state slot"))?;
        let index_path = data_dir.join("index");
        let (index, ino) = Self::map_index(&index_path)?;
        Ok(Self {
            index: arc_swap::ArcSwap::from_pointee(index),
            index_path,
            index_ino: std::sync::atomic::AtomicU64::new(ino),
            segments: data_dir.join("segments"),
            ring: state.segments,
        })
    }

    fn map_index(path: &Path) -> io::Result<(Index, u64)> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(path)?.ino();
        Ok((Index::open_readonly(path)?, ino))
    }

    /// Looks `key` up; on a miss, maps the owner's index again if the file was replaced (the
    /// owner grew it) and looks again.
    fn lookup(&self, key: &Key) -> Option<super::index::Entry> {
        use std::os::unix::fs::MetadataExt;
        use std::sync::atomic::Ordering;
        if let Some(e) = self.index.load().lookup(key, |_| true) {
            return Some(e);
        }
        let ino = std::fs::metadata(&self.index_path).ok()?.ino();
        if ino == self.index_ino.load(Ordering::Relaxed) {
            return None;
        }
        let (index, ino) = Self::map_index(&self.index_path).ok()?;
        self.index.store(std::sync::Arc::new(index));
        self.index_ino.store(ino, Ordering::Relaxed);
        self.index.load().lookup(key, |_| true)
    }

    /// Copies blob `key` into `out`. `Ok(false)`: not in the store, or a record failed its
    /// checks (`out` may then hold a partial copy: discard it). `Err`: writing `out` failed.
    pub fn copy_to(&self, key: &Key, out: &mut impl Write) -> io::Result<bool> {
        let Some(e) = self.lookup(key) else {
            return Ok(false);
        };
        let off = u64::from(e.off) * ALIGN;
        // The engine's read rules (`read.rs` `read_blob`): the same header checks and manifest
        // decoding, each part of the length its manifest names.
        match e.kind {
            RecordKind::Blob => {
                self.copy_record(e.seq, off, key, RecordKind::Blob, (None, e.len), out)
            }
            RecordKind::Manifest => {
                let mut m = Vec::new();
                let whole = (None, u64::MAX);
                if !self.copy_record(e.seq, off, key, RecordKind::Manifest, whole, &mut m)? {
                    return Ok(false);
                }
                let Some(parts) = manifest_parts(&m, e.len) else {
                    return Ok(false);
                };
                for p in parts {
                    let off = u64::from(p.off) * ALIGN;
                    let len = (Some(p.len), p.logical);
                    if !self.copy_record(p.seq, off, key, RecordKind::Part, len, out)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            RecordKind::Part => Ok(false),
        }
    }

    /// Copies the blob bytes of one record, which must have `stored` payload bytes (when
    /// given) and hold `logical` bytes of the blob (any number for a manifest): a compressed
    /// record is read whole, checked and decompressed.
    fn copy_record(
        &self,
        seq: u32,
        off: u64,
        key: &Key,
        kind: RecordKind,
        (stored, logical): (Option<u64>, u64),
        out: &mut impl Write,
    ) -> io::Result<bool> {
        let Ok(file) = File::open(segment_path(&self.segments, self.ring, seq)) else {
            return Ok(false);
        };
        let Some(h) = read_record_header(&file, off, seq, kind, key, stored) else {
            return Ok(false);
        };
        if kind != RecordKind::Manifest && h.flags & FLAG_ZSTD != 0 {
            return Self::copy_compressed(&file, off, &h, logical, out);
        }
        if kind != RecordKind::Manifest && h.len != logical {
            return Ok(false);
        }
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; CHUNK.min(h.len as usize)];
        let start = off + RECORD_HEADER_LEN as u64;
        let mut pos = 0u64;
        while pos < h.len {
            let n = (h.len - pos).min(buf.len() as u64) as usize;
            if file.read_exact_at(&mut buf[..n], start + pos).is_err() {
                return Ok(false);
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            pos += n as u64;
        }
        Ok(hasher.digest() == h.checksum)
    }

    /// A compressed record: its payload read whole (at most the segment's size), checked
    /// against its checksum, then decompressed (at most a quarter of a segment, as the
    /// engine's reader allows) into `out`.
    fn copy_compressed(
        file: &File,
        off: u64,
        h: &RecordHeader,
        logical: u64,
        out: &mut impl Write,
    ) -> io::Result<bool> {
        let size = file.metadata()?.len();
        if h.len > size {
            return Ok(false);
        }
        let mut payload = vec![0u8; h.len as usize];
        if file
            .read_exact_at(&mut payload, off + RECORD_HEADER_LEN as u64)
            .is_err()
            || xxhash_rust::xxh3::xxh3_64(&payload) != h.checksum
        {
            return Ok(false);
        }
        match codec::decode(&payload, logical, codec::max_piece(size)) {
            Some(bytes) => out.write_all(&bytes).map(|()| true),
            None => Ok(false),
        }
    }
}
