//! The scrub: reads every record of every live segment and checks it, then checks every index
//! entry against the records it points at and drops the entries that can never be served, so
//! FindMissingBlobs reports those blobs missing and clients upload them again.
//!
//! Damage after the last record the index references in a segment cannot belong to anything
//! that was acknowledged (an acknowledged record is durable and indexed, and records are
//! appended in order): it is the torn end of a write a crash interrupted, reported apart and
//! not counted as corruption.

use super::codec;
use super::engine::Engine;
use super::format::FLAG_ZSTD;
use super::format::{self, ALIGN, RECORD_HEADER_LEN, RecordHeader, RecordKind, SEGMENT_HEADER_LEN};
use super::index::Entry;
use super::read::Shared;
use super::stats::inc;
use super::{Blob, Key};
use std::collections::{HashMap, HashSet};

/// Damaged places remembered by position for the index pass; beyond this many the index pass
/// checks every entry's payloads itself (slower, same result).
const MAX_DAMAGE: usize = 1 << 20;

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
    /// Payload bytes in those records (what they take on disk).
    pub bytes: u64,
    /// Bytes of blob content the `Blob` and `Part` records among them hold (more than their
    /// payload bytes where records are compressed).
    pub logical_bytes: u64,
    /// Damaged records or regions (bad header or payload checksum) before the last record the
    /// index references in their segment: real damage.
    pub corrupt_records: u64,
    /// Blobs the caller's check rejected (for `kiln verify`, a CAS blob whose SHA-256 is wrong).
    pub check_failures: u64,
    /// Keys of the first 100 rejected blobs.
    pub failed_keys: Vec<Key>,
    /// Index entries dropped because a record they need is damaged, failed the caller's
    /// check, or is not where the entry points (a damaged slot). Those blobs now read as
    /// missing, so clients upload them again.
    pub dropped_entries: u64,
    /// Damaged regions after the last referenced record of their segment: the torn end of
    /// uploads a crash interrupted before they were acknowledged. Not corruption.
    pub torn_tail_regions: u64,
    /// Bytes in those regions.
    pub torn_tail_bytes: u64,
}

impl VerifyReport {
    /// Whether the scrub found real damage (a torn unacknowledged tail is not).
    pub fn damaged(&self) -> bool {
        self.corrupt_records + self.check_failures + self.dropped_entries > 0
    }
}

/// A caller's check of whole blobs during the scrub (the cas layer passes its SHA-256
/// comparison, `cas::scrub::SCRUB`). The engine knows no key space: `wants` picks the records.
#[derive(Clone, Copy)]
pub struct BlobCheck<'a> {
    /// Whether the record under this key is checked at all.
    pub wants: &'a (dyn Fn(&Key) -> bool + Sync),
    /// Whether the blob's bytes are right for its key; `false` counts a check failure and
    /// drops the index entry.
    pub check: &'a (dyn Fn(&Key, &Blob) -> bool + Sync),
}

/// A damaged region of a segment found by the record walk.
struct Damage {
    seq: u32,
    start: u64,
    end: u64,
}

/// What the record walk hands the index pass.
#[derive(Default)]
struct Walk {
    damage: Vec<Damage>,
    /// Records (segment, byte offset) that must not be served: bad payload or failed check.
    bad: HashSet<(u32, u64)>,
    /// More damage than `MAX_DAMAGE`: the index pass checks payloads itself.
    overflow: bool,
}

impl Walk {
    fn damaged(&mut self, rep: &mut VerifyReport, d: Damage, record: bool) {
        if self.damage.len() >= MAX_DAMAGE {
            self.overflow = true;
            rep.corrupt_records += 1;
            return;
        }
        if record {
            self.bad.insert((d.seq, d.start));
        }
        self.damage.push(d);
    }
}

impl Engine {
    /// Checks every record in the live segments (header checksum, payload xxh3 and, for the
    /// keys `check.wants`, `check.check` when given), then every index entry against its records,
    /// dropping entries that cannot be served. Blocking and I/O bound: call it from a blocking
    /// thread. Meant for a stopped store (`kiln verify`); alongside writes, records written
    /// after the walk passed their position are not seen.
    pub fn verify(
        &self,
        progress: impl FnMut(&VerifyProgress),
        check: Option<BlobCheck<'_>>,
    ) -> VerifyReport {
        let sh = self.shared();
        let mut rep = VerifyReport::default();
        let walk = walk_records(sh, &mut rep, progress, check);
        tracing::info!(
            records = rep.records,
            damaged = walk.damage.len(),
            "verify: records walked; checking every index entry against its records"
        );
        let last_ref = check_index(sh, &walk, &mut rep);
        for d in &walk.damage {
            if walk.bad.contains(&(d.seq, d.start)) && d.end == d.start {
                continue; // a failed check, counted in check_failures
            }
            if d.start >= last_ref.get(&d.seq).copied().unwrap_or(0) {
                rep.torn_tail_regions += 1;
                rep.torn_tail_bytes += d.end - d.start;
            } else {
                rep.corrupt_records += 1;
            }
        }
        if rep.dropped_entries > 0
            && let Err(e) = sh.index().file().file.sync_data()
        {
            tracing::warn!(error = %e, "verify: could not sync the index after dropping entries");
        }
        rep
    }
}

/// Walks every record of every live segment.
fn walk_records(
    sh: &Shared,
    rep: &mut VerifyReport,
    mut progress: impl FnMut(&VerifyProgress),
    check: Option<BlobCheck<'_>>,
) -> Walk {
    let (tail, head) = (sh.tail(), sh.head());
    let mut walk = Walk::default();
    let mut prog = VerifyProgress {
        segments_total: if head >= tail { head - tail + 1 } else { 0 },
        ..Default::default()
    };
    let mut next_report = 64u64 << 20;
    for seq in tail..=head {
        let Some(seg) = sh.segs().get(seq) else {
            continue;
        };
        let end = if seq == head {
            sh.head_end().min(seg.map.len() as u64)
        } else {
            seg.map.len() as u64
        };
        let mut pos = SEGMENT_HEADER_LEN;
        let mut bad_from: Option<u64> = None;
        while pos + RECORD_HEADER_LEN as u64 <= end {
            let at = pos as usize;
            let raw = &seg.map[at..at + RECORD_HEADER_LEN];
            match RecordHeader::decode(raw, seq) {
                Ok(h) if at + RECORD_HEADER_LEN + h.len as usize <= seg.map.len() => {
                    if let Some(start) = bad_from.take() {
                        // A damaged region between two good headers.
                        let d = Damage {
                            seq,
                            start,
                            end: pos,
                        };
                        walk.damaged(rep, d, false);
                    }
                    inc(&sh.counters().record_reads);
                    let p = at + RECORD_HEADER_LEN;
                    let payload = &seg.map[p..p + h.len as usize];
                    let span = format::record_span(h.len);
                    if xxhash_rust::xxh3::xxh3_64(payload) == h.checksum {
                        rep.records += 1;
                        rep.bytes += h.len;
                        let logical = logical_len(&h, payload);
                        if h.kind != RecordKind::Manifest {
                            // A compressed record's prefix is disk bytes: a length no record
                            // may hold is not counted (its content check fails below).
                            let max = codec::max_piece(sh.cfg().segment_size);
                            let sane = logical.filter(|&l| h.flags & FLAG_ZSTD == 0 || l <= max);
                            rep.logical_bytes = rep.logical_bytes.saturating_add(sane.unwrap_or(0));
                        }
                        if let Some(check) = check
                            && (check.wants)(&h.key)
                        {
                            // A compressed record that does not declare a sane length is
                            // damage like content that fails the check (an empty blob fails
                            // any check of a key that is not the empty blob's).
                            let blob = match h.kind {
                                RecordKind::Blob => Some(
                                    logical
                                        .and_then(|l| {
                                            codec::piece(
                                                h.flags,
                                                seg.view(p, h.len as usize),
                                                l,
                                                codec::max_piece(sh.cfg().segment_size),
                                                false,
                                            )
                                        })
                                        .map_or_else(Blob::default, |piece| {
                                            Blob::from_pieces(vec![piece])
                                        }),
                                ),
                                RecordKind::Manifest => manifest_blob(sh, &h.key, payload),
                                RecordKind::Part => None,
                            };
                            if let Some(b) = blob
                                && !(check.check)(&h.key, &b)
                            {
                                rep.check_failures += 1;
                                if rep.failed_keys.len() < 100 {
                                    rep.failed_keys.push(h.key);
                                }
                                // Remembered so its entry is dropped; an empty region, so it
                                // is not counted as damage a second time.
                                let d = Damage {
                                    seq,
                                    start: pos,
                                    end: pos,
                                };
                                walk.damaged(rep, d, true);
                            }
                        }
                    } else {
                        let d = Damage {
                            seq,
                            start: pos,
                            end: pos + span,
                        };
                        walk.damaged(rep, d, true);
                    }
                    pos += span;
                }
                _ => {
                    // Zeros or a bad header: the end of the written area (followed by
                    // leftovers of the file's previous segment) or damage, which is
                    // counted once a good record follows it.
                    bad_from.get_or_insert(pos);
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
    walk
}

/// Checks every live index entry against its records, drops those that cannot be served and
/// returns, per segment, the end of the last record an entry references (dropped entries
/// included: what they point at was acknowledged, so damage there is real).
fn check_index(sh: &Shared, walk: &Walk, rep: &mut VerifyReport) -> HashMap<u32, u64> {
    let mut last_ref: HashMap<u32, u64> = HashMap::new();
    let mut refs = Vec::new();
    let index = sh.index();
    index.scan(|slot, version, e| {
        if e.seq == 0 || !sh.valid(e) {
            return;
        }
        refs.clear();
        let ok = entry_ok(sh, walk, e, &mut refs);
        for &(seq, end) in &refs {
            let r = last_ref.entry(seq).or_default();
            *r = (*r).max(end);
        }
        if !ok && sh.drop_entry(&index, slot, version) {
            rep.dropped_entries += 1;
            tracing::warn!(key = ?e.key, seq = e.seq, off = e.off, "verify: dropped an index entry whose record is damaged");
        }
    });
    last_ref
}

/// Whether every record entry `e` needs is intact; pushes (segment, end) of each record it
/// looks at onto `refs`.
fn entry_ok(sh: &Shared, walk: &Walk, e: &Entry, refs: &mut Vec<(u32, u64)>) -> bool {
    if e.kind == RecordKind::Manifest {
        let Some(m) = record_ok(
            sh,
            walk,
            (e.seq, e.off),
            RecordKind::Manifest,
            &e.key,
            None,
            refs,
        ) else {
            return false;
        };
        let Ok((total, parts)) = format::decode_manifest(&m) else {
            return false;
        };
        let mut ok = total == e.len;
        for p in parts {
            ok &= record_ok(
                sh,
                walk,
                (p.seq, p.off),
                RecordKind::Part,
                &e.key,
                Some(p.logical),
                refs,
            )
            .is_some_and(|b| b.len() as u64 == p.len);
        }
        ok
    } else {
        record_ok(
            sh,
            walk,
            (e.seq, e.off),
            RecordKind::Blob,
            &e.key,
            Some(e.len),
            refs,
        )
        .is_some()
    }
}

/// The blob bytes a `Blob` or `Part` record holds: its payload length, or for a compressed
/// one the length its prefix declares (`None` if too short to declare one).
fn logical_len(h: &RecordHeader, payload: &[u8]) -> Option<u64> {
    if h.flags & FLAG_ZSTD == 0 {
        Some(h.len)
    } else {
        codec::logical_len(payload)
    }
}

/// Checks the record at `(seq, off x 64)`: live segment, header, kind, key, length (of the
/// blob content it holds: the declared length of a compressed one), not found
/// damaged by the walk (after an overflow of the walk's list, or for a manifest, whose payload
/// is parsed here: its payload checksum too). Returns its payload.
fn record_ok(
    sh: &Shared,
    walk: &Walk,
    (seq, off): (u32, u32),
    kind: RecordKind,
    key: &Key,
    len: Option<u64>,
    refs: &mut Vec<(u32, u64)>,
) -> Option<bytes::Bytes> {
    let start = u64::from(off) * ALIGN;
    refs.push((seq, start + RECORD_HEADER_LEN as u64));
    let seg = sh.segs().get(seq)?;
    let h = RecordHeader::decode(seg.map.get(start as usize..)?, seq).ok()?;
    if h.kind != kind || h.key != *key {
        return None;
    }
    let p = start as usize + RECORD_HEADER_LEN;
    let end = p
        .checked_add(h.len as usize)
        .filter(|&e| e <= seg.map.len())?;
    if len.is_some_and(|l| Some(l) != logical_len(&h, &seg.map[p..end])) {
        return None;
    }
    refs.push((seq, start + format::record_span(h.len)));
    if walk.bad.contains(&(seq, start)) {
        return None;
    }
    let check_payload = walk.overflow || kind == RecordKind::Manifest;
    if check_payload && xxhash_rust::xxh3::xxh3_64(&seg.map[p..end]) != h.checksum {
        return None;
    }
    Some(seg.view(p, h.len as usize))
}

fn manifest_blob(sh: &Shared, key: &Key, payload: &[u8]) -> Option<Blob> {
    let (_, parts) = format::decode_manifest(payload).ok()?;
    let max = codec::max_piece(sh.cfg().segment_size);
    let mut pieces = Vec::with_capacity(parts.len());
    for p in parts {
        let (flags, b) = sh
            .read_record(p.seq, p.off, RecordKind::Part, key, p.len, false)
            .ok()?;
        if b.len() as u64 != p.len {
            return None;
        }
        pieces.push(codec::piece(flags, b, p.logical, max, false)?);
    }
    Some(Blob::from_pieces(pieces))
}
