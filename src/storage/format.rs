//! Every on-disk byte layout of the engine, in one place. Specified in `FORMAT.md` (same
//! folder); keep the two in step and bump `VERSION` on any change.
//!
//! All integers are little-endian. Checksums are xxh3-64 with seed 0.

use super::Key;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Format version written into segment, record and state headers.
pub const VERSION: u8 = 1;
/// Version byte of records with flags (format 1.5): compressed `Blob`/`Part` records and
/// manifests with logical part lengths. A 1.4 binary refuses them (a miss, never the
/// compressed bytes served as the blob); records without flags keep version 1.
pub const RECORD_VERSION_FLAGS: u8 = 2;
/// Record flag of a `Blob` or `Part`: the payload is `logical len u64 | zstd frame`.
pub const FLAG_ZSTD: u8 = 1;
/// Record flag of a `Manifest` whose entries carry logical lengths (some part compressed).
pub const FLAG_LOGICAL: u8 = 1;
/// Version byte of state slots: 2 since index checkpoints (format 1.1). Version 1 slots are
/// still read (their checkpoint fields are zero); binaries that only know 1 refuse 2 and start
/// with an empty cache instead of trusting an index that was never replayed.
pub const STATE_VERSION: u8 = 2;
/// Bytes at the start of a segment reserved for its header; records start here.
pub const SEGMENT_HEADER_LEN: u64 = 4096;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 64;
/// Records start at multiples of this; index offsets count in these units.
pub const ALIGN: u64 = 64;

const RECORD_MAGIC: [u8; 4] = *b"KLNR";
const SEGMENT_MAGIC: [u8; 4] = *b"KLNS";
const STATE_MAGIC: [u8; 4] = *b"KLST";

/// Why some bytes are not a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Too few bytes.
    #[error("truncated")]
    Truncated,
    /// Magic number absent (typically zeros: never written).
    #[error("bad magic")]
    Magic,
    /// Written by a different format version.
    #[error("unsupported version {0}")]
    Version(u8),
    /// Header checksum mismatch (torn or corrupt).
    #[error("header checksum mismatch")]
    Checksum,
    /// Fields out of range.
    #[error("invalid field")]
    Invalid,
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A whole blob in one record.
    Blob = 1,
    /// One piece of a large blob; only reachable through a manifest.
    Part = 2,
    /// The list of parts of a large blob.
    Manifest = 3,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Blob),
            2 => Some(Self::Part),
            3 => Some(Self::Manifest),
            _ => None,
        }
    }
}

/// Format: `magic "KLNR" | version u8 | kind u8 | space u8 | flags u8 | id [32] |
/// len u64 | payload xxh3 u64 | header xxh3 u64` (64 bytes, then the payload, then zero
/// padding to a multiple of 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Record kind.
    pub kind: RecordKind,
    /// 0, or `FLAG_ZSTD` (blob, part) / `FLAG_LOGICAL` (manifest), written with record
    /// version 2.
    pub flags: u8,
    /// Key of the blob the record belongs to.
    pub key: Key,
    /// Payload length.
    pub len: u64,
    /// xxh3-64 of the payload.
    pub checksum: u64,
}

impl RecordHeader {
    /// A header for `payload` (tests build records by hand; the writer fills headers itself).
    #[cfg(any(test, feature = "testing"))]
    pub fn for_payload(kind: RecordKind, key: Key, payload: &[u8]) -> Self {
        Self {
            kind,
            flags: 0,
            key,
            len: payload.len() as u64,
            checksum: xxh3_64(payload),
        }
    }

    /// Serialises the header of a record in segment `seq` (the header checksum is seeded with
    /// `seq`, so records left over from an earlier use of a recycled file never validate).
    pub fn encode(&self, seq: u32) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        b[4] = if self.flags == 0 {
            VERSION
        } else {
            RECORD_VERSION_FLAGS
        };
        b[5] = self.kind as u8;
        b[6] = self.key.space;
        b[7] = self.flags;
        b[8..40].copy_from_slice(&self.key.id);
        b[40..48].copy_from_slice(&self.len.to_le_bytes());
        b[48..56].copy_from_slice(&self.checksum.to_le_bytes());
        let h = xxh3_64_with_seed(&b[0..56], u64::from(seq));
        b[56..64].copy_from_slice(&h.to_le_bytes());
        b
    }

    /// Parses and checks the header of a record in segment `seq` (not the payload).
    pub fn decode(b: &[u8], seq: u32) -> Result<Self, FormatError> {
        let b = b.get(..RECORD_HEADER_LEN).ok_or(FormatError::Truncated)?;
        if b[0..4] != RECORD_MAGIC {
            return Err(FormatError::Magic);
        }
        if b[4] != VERSION && b[4] != RECORD_VERSION_FLAGS {
            return Err(FormatError::Version(b[4]));
        }
        if xxh3_64_with_seed(&b[0..56], u64::from(seq)) != u64_at(b, 56) {
            return Err(FormatError::Checksum);
        }
        let kind = RecordKind::from_u8(b[5]).ok_or(FormatError::Invalid)?;
        // Version 1 has no flags, version 2 exactly the one its kind knows.
        let flags_ok = match b[4] {
            VERSION => b[7] == 0,
            _ => b[7] == FLAG_ZSTD,
        };
        if !flags_ok {
            return Err(FormatError::Invalid);
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[8..40]);
        Ok(Self {
            kind,
            flags: b[7],
            key: Key::new(b[6], id),
            len: u64_at(b, 40),
            checksum: u64_at(b, 48),
        })
    }

    /// The header checks every reader of a record applies, written once (the engine's read
    /// path, and a co-located reader in another process): the header of the record at `b` in
    /// segment `seq` validates, names `kind` and `key`, and its payload is `len` bytes when a
    /// length is expected. The payload's xxh3 against `checksum` is the caller's (one reads a
    /// mapped slice, the other streams). `None` when any check fails.
    pub fn decode_expected(
        b: &[u8],
        seq: u32,
        kind: RecordKind,
        key: &Key,
        len: Option<u64>,
    ) -> Option<Self> {
        let h = Self::decode(b, seq).ok()?;
        (h.kind == kind && h.key == *key && len.is_none_or(|l| l == h.len)).then_some(h)
    }
}

/// The parts of a manifest payload whose blob is `total` bytes long (as its index entry says):
/// `None` when it does not decode or names another length.
pub fn manifest_parts(m: &[u8], total: u64) -> Option<Vec<PartLoc>> {
    match decode_manifest(m) {
        Ok((t, parts)) if t == total => Some(parts),
        _ => None,
    }
}

/// Bytes a record with a payload of `len` occupies, padding included.
pub fn record_span(len: u64) -> u64 {
    (RECORD_HEADER_LEN as u64 + len).div_ceil(ALIGN) * ALIGN
}

/// Format: `magic "KLNS" | version u8 | 3 zero bytes | seq u64 | segment size u64 |
/// zeros to 56 | header xxh3 u64`, at offset 0 of the segment file; records from 4096.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment (never reused).
    pub seq: u64,
    /// File size it was created with.
    pub size: u64,
}

impl SegmentHeader {
    /// Serialises the header into 64 bytes.
    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&SEGMENT_MAGIC);
        b[4] = VERSION;
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        let h = xxh3_64(&b[0..56]);
        b[56..64].copy_from_slice(&h.to_le_bytes());
        b
    }

    /// Parses and checks a segment header.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let b = b.get(..64).ok_or(FormatError::Truncated)?;
        if b[0..4] != SEGMENT_MAGIC {
            return Err(FormatError::Magic);
        }
        if b[4] != VERSION {
            return Err(FormatError::Version(b[4]));
        }
        if xxh3_64(&b[0..56]) != u64_at(b, 56) {
            return Err(FormatError::Checksum);
        }
        Ok(Self {
            seq: u64_at(b, 8),
            size: u64_at(b, 16),
        })
    }
}

/// Where a part of a large blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLoc {
    /// Segment sequence number.
    pub seq: u32,
    /// Record offset in the segment, in units of `ALIGN`.
    pub off: u32,
    /// Payload length.
    pub len: u64,
    /// Bytes of the blob the part holds (`len` unless the part is compressed).
    pub logical: u64,
}

/// Format of a manifest payload: `total len u64 | count u32 | layout u32 | entries`. Layout 0
/// (every part stored as it is): `count x (seq u32 | offset/64 u32 | len u64)`; layout 1
/// (format 1.5, some part compressed): `count x (seq u32 | offset/64 u32 | len u64 |
/// logical u64)`. Returns the payload and the record flags (`FLAG_LOGICAL` for layout 1).
pub fn encode_manifest(total: u64, parts: &[PartLoc]) -> (Vec<u8>, u8) {
    let logical = parts.iter().any(|p| p.logical != p.len);
    let entry = if logical { 24 } else { 16 };
    let mut v = Vec::with_capacity(16 + parts.len() * entry);
    v.extend_from_slice(&total.to_le_bytes());
    v.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    v.extend_from_slice(&u32::from(logical).to_le_bytes());
    for p in parts {
        v.extend_from_slice(&p.seq.to_le_bytes());
        v.extend_from_slice(&p.off.to_le_bytes());
        v.extend_from_slice(&p.len.to_le_bytes());
        if logical {
            v.extend_from_slice(&p.logical.to_le_bytes());
        }
    }
    (v, if logical { FLAG_LOGICAL } else { 0 })
}

/// Parses a manifest payload; the parts' logical lengths must add up to the total.
pub fn decode_manifest(b: &[u8]) -> Result<(u64, Vec<PartLoc>), FormatError> {
    if b.len() < 16 {
        return Err(FormatError::Truncated);
    }
    let total = u64_at(b, 0);
    let count = u32_at(b, 8) as usize;
    let entry = match u32_at(b, 12) {
        0 => 16,
        1 => 24,
        _ => return Err(FormatError::Invalid),
    };
    if Some(b.len()) != count.checked_mul(entry).and_then(|n| n.checked_add(16)) {
        return Err(FormatError::Invalid);
    }
    let parts: Vec<PartLoc> = (0..count)
        .map(|i| {
            let o = 16 + i * entry;
            let len = u64_at(b, o + 8);
            PartLoc {
                seq: u32_at(b, o),
                off: u32_at(b, o + 4),
                len,
                logical: if entry == 24 { u64_at(b, o + 16) } else { len },
            }
        })
        .collect();
    let sum = parts
        .iter()
        .try_fold(0u64, |a, p| a.checked_add(p.logical))
        .ok_or(FormatError::Invalid)?;
    if sum != total {
        return Err(FormatError::Invalid);
    }
    Ok((total, parts))
}

/// Most crash-invalidated epoch ranges the state file remembers.
pub const MAX_INVALID_RANGES: usize = 16;
/// Size of one state slot; the state file holds two, at offsets 0 and 4096.
pub const STATE_SLOT_LEN: usize = 512;
/// Where the checkpoint and synced positions sit in a state slot (after the invalid ranges).
const STATE_POS_AT: usize = 48 + MAX_INVALID_RANGES * 24;

/// Epochs `[lo, hi)` whose index entries are ignored: they were not durable when the store
/// stopped uncleanly. Entries of such epochs can only point at segments `<= max_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InvalidRange {
    /// First ignored epoch.
    pub lo: u64,
    /// First epoch after the range.
    pub hi: u64,
    /// Highest segment the range's entries can point into.
    pub max_seq: u32,
}

/// Format (one 512-byte slot): `magic "KLST" | version u8 | 3 zero | generation u64 |
/// durable epoch u64 | epoch limit u64 | tail seq u32 | head seq u32 | segment count u32 |
/// range count u32 | 16 x (lo u64 | hi u64 | max seq u32 | 0 u32) | zeros to 504 | xxh3 u64`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// Incremented on every write; the valid slot with the highest generation wins.
    pub generation: u64,
    /// Every index entry of an epoch `<= durable` (and not in `invalid`) is backed by synced data.
    pub durable: u64,
    /// No epoch `>= limit` has been used; reserved ahead so a crash can invalidate the unknown rest.
    pub limit: u64,
    /// Oldest live segment.
    pub tail: u32,
    /// Newest segment ever opened for writing.
    pub head: u32,
    /// Number of segment files in the ring.
    pub segments: u32,
    /// Crash-invalidated epoch ranges.
    pub invalid: Vec<InvalidRange>,
    /// Index checkpoint: every record before this position has its entry in the synced index
    /// file. Records from here to `synced` are replayed into the index on open. Zero: nothing
    /// to replay (stores written before checkpoints existed synced the index every round).
    pub checkpoint: Pos,
    /// Every record before this position is on stable storage (the last sync round's end).
    pub synced: Pos,
}

/// A position in the segment ring: segment `seq`, byte offset `off` in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Segment sequence number (0: none).
    pub seq: u32,
    /// Byte offset in the segment.
    pub off: u64,
}

/// Byte offset of state slot `i` (0 or 1) in the state file: one page each.
pub const fn state_slot_offset(i: u64) -> u64 {
    i * 4096
}

impl State {
    /// The valid slot with the highest generation among `slots` (the two slots of a state
    /// file), if any decodes.
    pub fn newest<'a>(slots: impl IntoIterator<Item = &'a [u8]>) -> Option<Self> {
        slots
            .into_iter()
            .filter_map(|b| Self::decode(b).ok())
            .max_by_key(|s| s.generation)
    }

    /// Serialises into one slot.
    pub fn encode(&self) -> [u8; STATE_SLOT_LEN] {
        let mut b = [0u8; STATE_SLOT_LEN];
        b[0..4].copy_from_slice(&STATE_MAGIC);
        b[4] = STATE_VERSION;
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.durable.to_le_bytes());
        b[24..32].copy_from_slice(&self.limit.to_le_bytes());
        b[32..36].copy_from_slice(&self.tail.to_le_bytes());
        b[36..40].copy_from_slice(&self.head.to_le_bytes());
        b[40..44].copy_from_slice(&self.segments.to_le_bytes());
        let n = self.invalid.len().min(MAX_INVALID_RANGES);
        b[44..48].copy_from_slice(&(n as u32).to_le_bytes());
        for (i, r) in self.invalid.iter().take(n).enumerate() {
            let o = 48 + i * 24;
            b[o..o + 8].copy_from_slice(&r.lo.to_le_bytes());
            b[o + 8..o + 16].copy_from_slice(&r.hi.to_le_bytes());
            b[o + 16..o + 20].copy_from_slice(&r.max_seq.to_le_bytes());
        }
        b[STATE_POS_AT..STATE_POS_AT + 4].copy_from_slice(&self.checkpoint.seq.to_le_bytes());
        b[STATE_POS_AT + 8..STATE_POS_AT + 16].copy_from_slice(&self.checkpoint.off.to_le_bytes());
        b[STATE_POS_AT + 16..STATE_POS_AT + 20].copy_from_slice(&self.synced.seq.to_le_bytes());
        b[STATE_POS_AT + 24..STATE_POS_AT + 32].copy_from_slice(&self.synced.off.to_le_bytes());
        let h = xxh3_64(&b[0..504]);
        b[504..512].copy_from_slice(&h.to_le_bytes());
        b
    }

    /// Parses and checks one slot.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let b = b.get(..STATE_SLOT_LEN).ok_or(FormatError::Truncated)?;
        if b[0..4] != STATE_MAGIC {
            return Err(FormatError::Magic);
        }
        if b[4] != VERSION && b[4] != STATE_VERSION {
            return Err(FormatError::Version(b[4]));
        }
        if xxh3_64(&b[0..504]) != u64_at(b, 504) {
            return Err(FormatError::Checksum);
        }
        let n = u32_at(b, 44) as usize;
        if n > MAX_INVALID_RANGES {
            return Err(FormatError::Invalid);
        }
        let invalid = (0..n)
            .map(|i| {
                let o = 48 + i * 24;
                InvalidRange {
                    lo: u64_at(b, o),
                    hi: u64_at(b, o + 8),
                    max_seq: u32_at(b, o + 16),
                }
            })
            .collect();
        Ok(Self {
            generation: u64_at(b, 8),
            durable: u64_at(b, 16),
            limit: u64_at(b, 24),
            tail: u32_at(b, 32),
            head: u32_at(b, 36),
            segments: u32_at(b, 40),
            invalid,
            checkpoint: Pos {
                seq: u32_at(b, STATE_POS_AT),
                off: u64_at(b, STATE_POS_AT + 8),
            },
            synced: Pos {
                seq: u32_at(b, STATE_POS_AT + 16),
                off: u64_at(b, STATE_POS_AT + 24),
            },
        })
    }
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_header_roundtrip_and_damage() {
        let h = RecordHeader::for_payload(RecordKind::Blob, Key::new(1, [7; 32]), b"hello");
        let mut b = h.encode(7);
        assert_eq!(RecordHeader::decode(&b, 7), Ok(h));
        assert_eq!(
            RecordHeader::decode(&b, 8),
            Err(FormatError::Checksum),
            "stale generation"
        );
        b[45] ^= 1;
        assert_eq!(RecordHeader::decode(&b, 7), Err(FormatError::Checksum));
        assert_eq!(RecordHeader::decode(&[0u8; 64], 7), Err(FormatError::Magic));
        assert_eq!(
            RecordHeader::decode(&[0u8; 3], 7),
            Err(FormatError::Truncated)
        );
        assert_eq!(record_span(0), 64);
        assert_eq!(record_span(1), 128);
        // Flags come with version 2, and only the known one.
        let z = RecordHeader {
            flags: FLAG_ZSTD,
            ..h
        };
        let b = z.encode(7);
        assert_eq!(b[4], RECORD_VERSION_FLAGS);
        assert_eq!(RecordHeader::decode(&b, 7), Ok(z));
        for (version, flags) in [(VERSION, FLAG_ZSTD), (RECORD_VERSION_FLAGS, 0), (2, 6)] {
            let mut b = z.encode(7);
            b[4] = version;
            b[7] = flags;
            let c = xxh3_64_with_seed(&b[0..56], 7);
            b[56..64].copy_from_slice(&c.to_le_bytes());
            assert_eq!(RecordHeader::decode(&b, 7), Err(FormatError::Invalid));
        }
    }

    #[test]
    fn state_and_manifest_roundtrip() {
        let s = State {
            generation: 3,
            durable: 9,
            limit: 100,
            tail: 2,
            head: 5,
            segments: 8,
            invalid: vec![InvalidRange {
                lo: 4,
                hi: 7,
                max_seq: 5,
            }],
            checkpoint: Pos { seq: 4, off: 4096 },
            synced: Pos {
                seq: 5,
                off: 1 << 33,
            },
        };
        assert_eq!(State::decode(&s.encode()), Ok(s));
        let parts = [
            PartLoc {
                seq: 1,
                off: 64,
                len: 10,
                logical: 10,
            },
            PartLoc {
                seq: 2,
                off: 65,
                len: 5,
                logical: 5,
            },
        ];
        let (m, flags) = encode_manifest(15, &parts);
        assert_eq!((m.len(), flags), (48, 0), "plain parts keep the 1.4 layout");
        assert_eq!(decode_manifest(&m), Ok((15, parts.to_vec())));
        assert!(decode_manifest(&encode_manifest(16, &parts).0).is_err());
        // A compressed part: entries carry logical lengths, which add up to the total.
        let mut z = parts;
        z[0].logical = 40;
        let (m, flags) = encode_manifest(45, &z);
        assert_eq!((m.len(), flags), (64, FLAG_LOGICAL));
        assert_eq!(decode_manifest(&m), Ok((45, z.to_vec())));
        assert!(decode_manifest(&encode_manifest(15, &z).0).is_err());
        let sh = SegmentHeader {
            seq: 4,
            size: 1 << 20,
        };
        assert_eq!(SegmentHeader::decode(&sh.encode()), Ok(sh));
    }
}
