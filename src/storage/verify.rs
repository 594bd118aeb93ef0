//! The scrub: reads every record of every live segment and checks it.

use super::engine::Engine;
use super::format::{self, ALIGN, RECORD_HEADER_LEN, RecordHeader, RecordKind, SEGMENT_HEADER_LEN};
use super::stats::inc;
use super::{Blob, Key};
use std::sync::atomic::Ordering;

/// Where a running scrub is; passed to the progress callback after each segment and every
/// 64 MiB.
#[derive(Debug, Clone, Default)]
pub struct VerifyProgress {
    /// Segments finished.
    pub segments_done: u32,
    /// Segments to check.
    pub segments_total: u32,
    /// Segment bytes walked so far.
    pub bytes_done: u64,
    /// Records checked so far.
    pub records: u64,
}

/// What a scrub found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: u32,
    /// Records whose header and payload checksums matched.
    pub records: u64,
    /// Payload bytes in those records.
    pub bytes: u64,
    /// Damaged records or regions (bad header or payload checksum).
    pub corrupt_records: u64,
    /// CAS blobs the caller's check rejected (e.g. SHA-256 mismatch).
    pub check_failures: u64,
    /// Keys of the first 100 rejected blobs.
    pub failed_keys: Vec<Key>,
}

/// A caller's check of a whole CAS blob (the cas layer passes a SHA-256 comparison).
pub type BlobCheck<'a> = &'a (dyn Fn(&Key, &Blob) -> bool + Sync);

impl Engine {
    /// Checks every record in the live segments: header checksum, payload xxh3 and, for CAS
    /// blobs (space 1), `check` when given. Blocking and I/O bound: call it from a blocking
    /// thread. Runs alongside reads and writes; records written after the scrub passed their
    /// position are not seen.
    pub fn verify(
        &self,
        mut progress: impl FnMut(&VerifyProgress),
        check: Option<BlobCheck<'_>>,
    ) -> VerifyReport {
        let sh = self.shared();
        let (tail, head) = (
            sh.tail.load(Ordering::Acquire),
            sh.head.load(Ordering::Acquire),
        );
        let mut rep = VerifyReport::default();
        let mut prog = VerifyProgress {
            segments_total: if head >= tail { head - tail + 1 } else { 0 },
            ..Default::default()
        };
        let mut next_report = 64u64 << 20;
        for seq in tail..=head {
            let Some(seg) = sh.segs.get(seq) else {
                continue;
            };
            let end = if seq == head {
                sh.head_end
                    .load(Ordering::Acquire)
                    .min(seg.map.len() as u64)
            } else {
                seg.map.len() as u64
            };
            let mut pos = SEGMENT_HEADER_LEN;
            let mut in_bad = false;
            while pos + RECORD_HEADER_LEN as u64 <= end {
                let at = pos as usize;
                let raw = &seg.map[at..at + RECORD_HEADER_LEN];
                match RecordHeader::decode(raw, seq) {
                    Ok(h) if at + RECORD_HEADER_LEN + h.len as usize <= seg.map.len() => {
                        if in_bad {
                            // A damaged region between two good records.
                            rep.corrupt_records += 1;
                            in_bad = false;
                        }
                        inc(&sh.counters.record_reads);
                        let p = at + RECORD_HEADER_LEN;
                        let payload = &seg.map[p..p + h.len as usize];
                        if xxhash_rust::xxh3::xxh3_64(payload) == h.checksum {
                            rep.records += 1;
                            rep.bytes += h.len;
                            if let Some(check) = check
                                && h.key.space == Key::SPACE_CAS
                            {
                                let blob = match h.kind {
                                    RecordKind::Blob => {
                                        Some(Blob::from_bytes(seg.view(p, h.len as usize)))
                                    }
                                    RecordKind::Manifest => manifest_blob(sh, &h.key, payload),
                                    RecordKind::Part => None,
                                };
                                if let Some(b) = blob
                                    && !check(&h.key, &b)
                                {
                                    rep.check_failures += 1;
                                    if rep.failed_keys.len() < 100 {
                                        rep.failed_keys.push(h.key);
                                    }
                                }
                            }
                        } else {
                            rep.corrupt_records += 1;
                        }
                        pos += format::record_span(h.len);
                    }
                    _ => {
                        // Zeros or a bad header: the end of the written area (followed by
                        // leftovers of the file's previous segment) or damage, which is
                        // counted once a good record follows it.
                        in_bad = true;
                        pos += ALIGN;
                    }
                }
                if pos > next_report {
                    next_report = pos + (64 << 20);
                    prog.records = rep.records;
                    progress(&prog);
                }
            }
            prog.segments_done += 1;
            prog.bytes_done += end;
            prog.records = rep.records;
            rep.segments += 1;
            next_report = 64 << 20;
            progress(&prog);
        }
        rep
    }
}

fn manifest_blob(sh: &super::shared::Shared, key: &Key, payload: &[u8]) -> Option<Blob> {
    let (_, parts) = format::decode_manifest(payload).ok()?;
    let mut ext = Vec::with_capacity(parts.len());
    for p in parts {
        ext.push(sh.read_record(p.seq, p.off, RecordKind::Part, key).ok()?);
    }
    Some(Blob::from_extents(ext))
}
