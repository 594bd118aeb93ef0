//! Copy-forward at eviction: before the tail segment is dropped, the blobs in it that were
//! touched within the horizon are re-appended at the head and republished, oldest first,
//! within a byte budget per evicted segment, the most recently touched chosen first when the
//! budget cannot take them all (FORMAT.md "Eviction and copy-forward").
//!
//! Two passes per segment. The early pass runs right after a roll that leaves the ring full,
//! for the segment the *next* roll will evict (the tail), and copies into the fresh head
//! segment: the segment a roll evicts shares its file with the new head, so its blobs cannot
//! be copied into the new head at that moment, and keeping a budget's worth of room free in
//! every segment would waste it whenever nothing is copied. The late pass runs at the eviction
//! itself, for blobs first touched after the early pass (their entries still point into the
//! segment), and copies into the small room uploads leave at the end of every segment
//! (`copy_reserve`); what does not fit is evicted and counted as a budget cut.
//!
//! Both passes look at the same records: the keys of the segment's records. A segment is
//! sealed once the head has moved past it, so that list does not change; it is read once by a
//! helper thread (`TailWalk`), started by the roll *before* the one that makes the segment the
//! tail, and kept for both passes. On a ring larger than memory the tail is on disk only and
//! each record header is a read (`walk.rs` reads them with `pread`: through the map, each
//! fault read around itself and the walk read the whole segment, 120-200 ms per 256 MiB), which
//! on the I/O thread stalled every write; the passes themselves still run where they always
//! did (the early pass at the roll, the late pass at the eviction), waiting for the
//! walk only if a whole segment's writes did not give it time.
//!
//! Crash safety: the copies' records are durable (a sync round covering `copy_end`) before the
//! state with the tail moved past their source is written (`copies_durable`, called by every
//! eviction); the old entries are cleared only after the copies' epoch is durable (the usual
//! supersede rule), so a crash at any point leaves one readable version of each blob.

use super::Writer;
use super::walk::Walk;
use crate::storage::blob::Piece;
use crate::storage::format::{
    FLAG_ZSTD, PartLoc, RecordHeader, RecordKind, SEGMENT_HEADER_LEN, decode_manifest, record_span,
};
use crate::storage::index::Entry;
use crate::storage::read::{MANIFEST_EXPECT, Shared};
use crate::storage::segment::SegMap;
use crate::storage::stats::inc;
use crate::storage::sys::mmap::release_pages;
use crate::storage::touch::{age, used_again, within_horizon};
use crate::storage::{Blob, Key, StorageError};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Most keys a walk keeps (33 bytes each): a tail with more distinct keys (a segment of tiny
/// blobs) is walked by each pass itself, as before there was a walk.
const MAX_TAIL_KEYS: usize = 1 << 20;

/// The walk of a segment's records for its two passes, on a helper thread.
pub(super) struct TailWalk {
    seq: u32,
    rx: crossbeam::channel::Receiver<Option<Vec<Key>>>,
    got: Walked,
}

/// Where a walk is.
enum Walked {
    /// Still reading.
    Pending,
    /// In: the keys.
    Keys(Arc<Vec<Key>>),
    /// In, but too many to keep (or the thread is gone): each pass walks itself.
    NotKept,
}

impl TailWalk {
    /// Waits for the walk's result if it is not in yet (the thread has been reading the
    /// segment in for a whole segment's writes, so waiting costs at most what walking here
    /// would).
    fn wait(&mut self) {
        if matches!(self.got, Walked::Pending) {
            self.got = match self.rx.recv() {
                Ok(Some(keys)) => Walked::Keys(Arc::new(keys)),
                Ok(None) | Err(_) => Walked::NotKept,
            };
        }
    }

    /// The keys, once in and kept.
    fn keys(&self) -> Option<Arc<Vec<Key>>> {
        match &self.got {
            Walked::Keys(k) => Some(Arc::clone(k)),
            Walked::Pending | Walked::NotKept => None,
        }
    }
}

impl Drop for TailWalk {
    /// A walk dropped unused (the ring shrank, the engine stops) is waited for: its thread
    /// holds the segment until it is done, and a segment held when it is evicted gets a new
    /// file instead of being reused in place.
    fn drop(&mut self) {
        if matches!(self.got, Walked::Pending) {
            let _ = self.rx.recv();
        }
    }
}

/// The records of segment `seg` (`size` bytes) in log order (see `walk.rs`).
fn records(seg: &SegMap, size: u64) -> impl Iterator<Item = RecordHeader> + '_ {
    let mut walk = Walk::new(seg, SEGMENT_HEADER_LEN, size);
    std::iter::from_fn(move || walk.next_record().map(|(_, h)| h))
}

/// The keys of segment `seg`'s records, each once, in log order (a large blob's parts and
/// manifest share its key). Which of them still depend on the segment is for each pass to look
/// up: the segment is sealed, so this list is exactly what walking it again would find.
/// `None` past [`MAX_TAIL_KEYS`].
fn record_keys(seg: &SegMap, size: u64) -> Option<Vec<Key>> {
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for h in records(seg, size) {
        if seen.insert(h.key) {
            if keys.len() == MAX_TAIL_KEYS {
                return None;
            }
            keys.push(h.key);
        }
    }
    Some(keys)
}

/// Drops the page mappings of `seg` (see `release_pages`): after a walk (its records were
/// read past the map, but readers and the passes' reads of blobs may have faulted pages in),
/// and when its file is reused for a new segment.
pub(super) fn release(seg: &SegMap) {
    if let Err(e) = release_pages(&seg.map) {
        tracing::debug!(error = %e, seq = seg.seq, "storage: releasing a segment's mapped pages");
    }
}

impl Writer {
    /// At the end of a roll (the new head installed): the early pass over the tail, from the
    /// list of its records walked ahead (`TailWalk`, waiting for it if it is not in yet; walked
    /// here when there is none), and the walk of the segment after it started, for the next
    /// roll. Only sealed segments whose records are all written are walked.
    pub(super) fn early_pass_at_roll(&mut self) {
        let (head, tail) = (self.state.head, self.state.tail);
        let next = tail + 1;
        let mut walk = self.take_walk(tail);
        if let Some(w) = walk.as_mut() {
            w.wait();
        }
        let keys = walk.as_ref().and_then(TailWalk::keys);
        self.copy_forward_tail(keys.as_deref().map(Vec::as_slice));
        self.tail_walk = walk;
        if self.next_walk.as_ref().is_some_and(|w| w.seq == next) {
            return;
        }
        // A walk of a later segment (the ring shrank meanwhile) is dropped.
        self.next_walk = None;
        let sh = Arc::clone(&self.sh);
        // The walk ahead is for a ring that is evicting: full now, or one segment short.
        if !sh.cfg().copy_forward || next >= head || head - tail + 2 < sh.ring_limit() {
            return;
        }
        let Some(seg) = sh.segs().get(next) else {
            return;
        };
        // Records of it laid out but not written yet (a tiny ring, where the next tail is the
        // segment this roll sealed) would be missing from the list: it is walked at its roll.
        if self.ops.iter().any(|op| Arc::ptr_eq(&op.file, &seg.file)) {
            return;
        }
        let size = sh.cfg().segment_size;
        let (tx, rx) = crossbeam::channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("kiln-tail-walk".into())
            .spawn(move || {
                let keys = record_keys(&seg, size);
                release(&seg);
                // Let go of the segment before answering (a segment still held when it is
                // evicted gets a new file instead of being reused in place).
                drop(seg);
                let _ = tx.send(keys);
            });
        match spawned {
            Ok(_) => {
                self.next_walk = Some(TailWalk {
                    seq: next,
                    rx,
                    got: Walked::Pending,
                });
            }
            Err(e) => tracing::debug!(error = %e, "storage: no thread for the walk ahead"),
        }
    }

    /// The walk of segment `seq`, if one was started; a walk of a later segment stays (the
    /// walk ahead), any other is dropped.
    fn take_walk(&mut self, seq: u32) -> Option<TailWalk> {
        let mut found = None;
        for w in [self.tail_walk.take(), self.next_walk.take()]
            .into_iter()
            .flatten()
        {
            if w.seq == seq {
                found = Some(w);
            } else if w.seq > seq {
                self.next_walk = Some(w);
            }
        }
        found
    }

    /// Makes the copies laid out so far durable (one sync round if the last one did not cover
    /// them): called before any eviction writes the state with a new tail.
    pub(super) fn copies_durable(&mut self) -> Result<(), StorageError> {
        if self.copy_end > self.state.synced {
            self.flush_ops()?;
            // Published now that their records are written, not with the rest of the batch:
            // the segment they came from is released next, so a later failure of the batch's
            // own write must not leave them unpublished (they would be unreachable).
            for e in std::mem::take(&mut self.copied) {
                self.publish(&e);
            }
            // Not a checkpoint (the rest of the batch is not published yet). A crash before
            // the next checkpoint replays the copies (they lie before `synced`).
            self.sync_round(false)?;
        }
        Ok(())
    }

    /// Copies the touched blobs of the tail segment to the head when the ring is full (the
    /// next roll evicts the tail). Failures are not errors: a blob not copied is evicted, as it
    /// would be without copy-forward, and counted in `copy_forward_budget_cuts`.
    fn copy_forward_tail(&mut self, keys: Option<&[Key]>) {
        let sh = Arc::clone(&self.sh);
        let (head, tail) = (self.state.head, self.state.tail);
        let limit = sh.ring_limit();
        if tail >= head || head - tail + 1 < limit {
            return;
        }
        let budget = sh.cfg().effective_copy_forward_budget();
        self.copy_forward_from(tail, budget, None, keys);
    }

    /// At the eviction of `victim` itself: copies the blobs touched since the early pass (their
    /// entries still point into it) into the room kept free at the end of the head segment
    /// (`copy_reserve`); what does not fit is evicted and counted as a budget cut.
    pub(super) fn copy_forward_late(&mut self, victim: u32) {
        // The walk of the victim, if any, is waited for even when no pass runs: its thread
        // must have let go of the segment before the segment is evicted.
        let keys = self.take_walk(victim).and_then(|mut w| {
            w.wait();
            w.keys()
        });
        // No head segment open yet (the first roll after open): see `hold_for_copy`.
        if self.active.is_none() || self.force_roll {
            return;
        }
        // The room left in the head is the budget: when it cannot take them all, the most
        // recently touched go first.
        let room = self
            .active
            .as_ref()
            .map_or(0, |a| self.sh.cfg().segment_size.saturating_sub(a.pos));
        self.copy_forward_from(
            victim,
            room.max(1),
            None,
            keys.as_deref().map(Vec::as_slice),
        );
    }

    /// The first roll after open evicts the tail with no head segment to copy into (open
    /// starts a new segment, and the new one reuses the tail's file). The touched blobs of the
    /// tail not copied yet (the early pass of the last session did not run or was lost in a
    /// crash, or they were touched after it) are held as views of the old mapping, at most a
    /// budget's worth, and copied into the new segment once it exists (`copy_held`), then
    /// synced at once. This is the one copy not durable before its source is released: a
    /// second crash within that round evicts those blobs as if untouched (they read as
    /// missing and are uploaded again; nothing is served wrong).
    pub(super) fn hold_for_copy(&mut self, victim: u32) -> Vec<(Entry, Blob, u32)> {
        let mut held = Vec::new();
        let budget = self.sh.cfg().effective_copy_forward_budget();
        self.copy_forward_from(victim, budget, Some(&mut held), None);
        held
    }

    /// Appends the blobs `hold_for_copy` held into the new head and makes them durable.
    pub(super) fn copy_held(&mut self, held: Vec<(Entry, Blob, u32)>) -> Result<(), StorageError> {
        if held.is_empty() {
            return Ok(());
        }
        let sh = Arc::clone(&self.sh);
        for (e, blob, _) in held {
            let before = self.position();
            self.copying = true;
            let copied = self.copy_blob(&e, &blob);
            self.copying = false;
            match copied {
                Some(new) => {
                    let after = self.position();
                    self.copied.push(new);
                    self.copy_end = after;
                    inc(&sh.counters().copy_forwards);
                    sh.counters()
                        .copy_forward_bytes
                        .fetch_add(after.off.saturating_sub(before.off), Ordering::Relaxed);
                }
                None => inc(&sh.counters().copy_forward_budget_cuts),
            }
        }
        self.copies_durable()
    }

    /// Copies the blobs of segment `victim` whose entries depend on it and were touched within
    /// the horizon, oldest first, at most `budget` bytes (the most recently touched chosen
    /// first when they do not all fit; never rolling); with `hold`,
    /// collects them (entry, verified blob, hint) instead of appending. `keys`: the segment's
    /// walk (`record_keys`), else its records are walked here.
    fn copy_forward_from(
        &mut self,
        victim: u32,
        budget: u64,
        mut hold: Option<&mut Vec<(Entry, Blob, u32)>>,
        keys: Option<&[Key]>,
    ) {
        let sh = Arc::clone(&self.sh);
        let head = self.state.head;
        let tail = victim;
        let limit = sh.ring_limit();
        if budget == 0 || !sh.cfg().copy_forward || tail >= head || self.poisoned().is_some() {
            return;
        }
        // A shrunk ring (full disk) scales the horizon with it.
        let n = sh.segs().len();
        let horizon = if limit < n {
            (sh.cfg().effective_copy_forward_horizon() * limit / n).max(1)
        } else {
            sh.cfg().effective_copy_forward_horizon()
        };
        let Some(seg) = sh.segs().get(tail) else {
            return;
        };
        let size = sh.cfg().segment_size;
        let walked: Box<dyn Iterator<Item = Key>> = match keys {
            Some(k) => Box::new(k.iter().copied()),
            None => Box::new(records(&seg, size).map(|h| h.key)),
        };
        let mut seen = HashSet::new();
        // Touched within the horizon, in log order: (entry, hint, cost). At most one per
        // record of the segment, like `seen`.
        let mut candidates = Vec::new();
        let (mut spent, mut oldest_touch_age) = (0u64, 0u64);
        for key in walked {
            let Some((index, slot, _, e)) = sh.find(&key) else {
                continue;
            };
            if e.oldest_seq() != tail || !seen.insert(key) {
                continue;
            }
            let hint = index.hint(slot);
            if !within_horizon(hint, head, e.oldest_seq(), horizon) {
                continue;
            }
            candidates.push((e, hint, stored_cost(&sh, &e, sh.cfg().part_size)));
        }
        if keys.is_none() {
            release(&seg);
        }
        // When the budget cannot take them all, the most recently touched go first (a blob
        // used again since is worth more than one touched once by a scan, which may have
        // touched everything); the chosen ones are then copied in log order.
        let chosen = choose(candidates, head, budget);
        for &(e, hint, cost) in &chosen.cut {
            tracing::trace!(seq = tail, ?e.key, hint, cost, "storage: copy-forward budget cut");
            inc(&sh.counters().copy_forward_budget_cuts);
        }
        // Their records are asked of the disk together (neighbours in one call), so a cold
        // tail's copies are read at once rather than one record after another.
        sh.ask_together(chosen.copy.iter().map(|(e, _, _)| e));
        for (e, hint, cost) in chosen.copy {
            if let Some(held) = hold.as_deref_mut() {
                if let Ok(blob) = sh.read_blob(&e, true) {
                    spent += cost;
                    held.push((e, as_stored(&blob), hint));
                    oldest_touch_age = oldest_touch_age.max(u64::from(age(hint, head)));
                }
                continue;
            }
            let before = self.position();
            self.copying = true;
            let copied = self.copy_entry(&e);
            self.copying = false;
            if let Some(new) = copied {
                let after = self.position();
                let wrote = if after.seq == before.seq {
                    after.off - before.off
                } else {
                    cost
                };
                spent += wrote;
                self.copied.push(new);
                self.copy_end = after;
                inc(&sh.counters().copy_forwards);
                sh.counters()
                    .copy_forward_bytes
                    .fetch_add(wrote, Ordering::Relaxed);
                oldest_touch_age = oldest_touch_age.max(u64::from(age(hint, head)));
            } else {
                // No room left in the head segment (uploads of the same batch took it): the
                // blob goes with its segment, counted like a budget cut.
                tracing::trace!(seq = tail, ?e.key, hint, cost, "storage: copy-forward found no room");
                inc(&sh.counters().copy_forward_budget_cuts);
            }
        }
        if oldest_touch_age > 0 || spent > 0 {
            sh.counters()
                .copy_forward_touch_age
                .store(oldest_touch_age, Ordering::Relaxed);
        }
        if spent > 0 {
            tracing::debug!(
                seq = tail,
                bytes = spent,
                "storage: copied touched blobs forward before eviction"
            );
        }
    }

    /// Re-appends the blob of `e` (every part and a new manifest for a large one). The entry
    /// is published after the batch's write succeeds. `None` if its records fail their
    /// checks (it goes with its segment; a read drops it first) or it does not fit. Its first
    /// record was asked of the disk by the pass (`ask_together`).
    fn copy_entry(&mut self, e: &Entry) -> Option<Entry> {
        let blob = self.sh.read_blob(e, true).ok()?;
        self.copy_blob(e, &blob)
    }

    /// Appends `blob` (read and checked from `e`'s records) as a new record (or parts and a
    /// manifest), each piece as it is stored (a compressed record stays compressed); the new
    /// entry, to publish after the write.
    fn copy_blob(&mut self, e: &Entry, blob: &Blob) -> Option<Entry> {
        let stored = |p: &Piece| match p {
            Piece::Plain(b) => (0, b.clone(), b.len() as u64),
            Piece::Zstd { payload, len, .. } => (FLAG_ZSTD, payload.clone(), *len),
        };
        if e.kind == RecordKind::Manifest {
            let mut parts = Vec::new();
            for p in blob.pieces() {
                let (flags, payload, logical) = stored(p);
                let (seq, off) = self
                    .append(RecordKind::Part, &e.key, flags, &[&payload])
                    .ok()?;
                parts.push(PartLoc {
                    seq,
                    off,
                    len: payload.len() as u64,
                    logical,
                });
            }
            self.manifest(&e.key, blob.len(), &parts).ok()
        } else {
            let [p] = blob.pieces() else {
                return None;
            };
            let (flags, payload, _) = stored(p);
            let (seq, off) = self
                .append(RecordKind::Blob, &e.key, flags, &[&payload])
                .ok()?;
            Some(Entry {
                seq,
                off,
                span: 0,
                ..*e
            })
        }
    }
}

/// The candidates of one pass split into those to copy (log order) and those the budget cuts.
struct Chosen {
    copy: Vec<(Entry, u32, u64)>,
    cut: Vec<(Entry, u32, u64)>,
}

/// Picks, from `candidates` (log order, all touched within the horizon of `head`), first
/// those used again (hit at least twice since written: a scan touches everything once), then
/// by the most recent hit, then in log order, while `budget` allows, a blob over the
/// remaining budget skipped so smaller ones may still fit; returns the picked ones in log
/// order.
fn choose(candidates: Vec<(Entry, u32, u64)>, head: u32, budget: u64) -> Chosen {
    let total: u64 = candidates.iter().map(|c| c.2).sum();
    if total <= budget {
        return Chosen {
            copy: candidates,
            cut: Vec::new(),
        };
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        let hint = candidates[i].1;
        (!used_again(hint), age(hint, head), i)
    });
    let mut take = vec![false; candidates.len()];
    let mut spent = 0u64;
    for i in order {
        if spent + candidates[i].2 <= budget {
            spent += candidates[i].2;
            take[i] = true;
        }
    }
    let (mut copy, mut cut) = (Vec::new(), Vec::new());
    for (c, t) in candidates.into_iter().zip(take) {
        if t { copy.push(c) } else { cut.push(c) }
    }
    Chosen { copy, cut }
}

/// Room kept free at the end of every segment for the late pass of copy-forward (blobs first
/// touched after the early pass of their segment): a 64th of a segment, at least one part
/// record, none when copy-forward is off.
pub(super) fn copy_reserve(cfg: &crate::storage::EngineConfig) -> u64 {
    if cfg.copy_forward {
        (cfg.segment_size / 64).max(record_span(cfg.part_size))
    } else {
        0
    }
}

/// `blob` as its stored pieces only: a compressed record the read decompressed (a whole
/// `Blob` record is, to check it) without its bytes. What `hold_for_copy` keeps is bounded by
/// the budget in stored bytes; the decompressed bytes could be many times that.
fn as_stored(blob: &Blob) -> Blob {
    let pieces = blob.pieces().iter().map(|p| match p {
        Piece::Zstd { payload, len, .. } => Piece::Zstd {
            payload: payload.clone(),
            len: *len,
            decoded: None,
        },
        Piece::Plain(b) => Piece::Plain(b.clone()),
    });
    Blob::from_pieces(pieces.collect())
}

/// Bytes the copy of `e` appends, from its records as they are stored (the copy keeps a
/// compressed record compressed, so a blob's logical length would overstate it): the record,
/// or every part and the manifest, with headers and padding. When the records cannot be read,
/// the estimate from the blob's length ([`copy_cost`]); the copy then fails its checks anyway.
fn stored_cost(sh: &Shared, e: &Entry, part_size: u64) -> u64 {
    // An index entry is a `Blob` or a `Manifest` record. A blob's cost is its record's span,
    // known from the header: reading (and checksumming) up to a part of payload for it, as
    // before, doubled the reads of every candidate, chosen or not.
    if e.kind != RecordKind::Manifest {
        return sh
            .record_len(e.seq, e.off, e.kind, &e.key)
            .map_or_else(|| copy_cost(e, part_size), record_span);
    }
    let Ok((_, payload)) = sh.read_record(e.seq, e.off, e.kind, &e.key, MANIFEST_EXPECT, false)
    else {
        return copy_cost(e, part_size);
    };
    let own = record_span(payload.len() as u64);
    match decode_manifest(&payload) {
        Ok((_, parts)) => parts
            .iter()
            .fold(own, |a, p| a.saturating_add(record_span(p.len))),
        Err(_) => copy_cost(e, part_size),
    }
}

/// Bytes the copy of `e` appends, estimated from its length: its records with headers and
/// padding (a manifest: one part record per `part_size` bytes, then the manifest record).
fn copy_cost(e: &Entry, part_size: u64) -> u64 {
    if e.kind == RecordKind::Manifest {
        let parts = e.len.div_ceil(part_size.max(1));
        let full = e.len / part_size.max(1);
        let last = e.len % part_size.max(1);
        full * record_span(part_size)
            + u64::from(last > 0) * record_span(last)
            + record_span(16 + 16 * parts)
    } else {
        record_span(e.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Key;

    #[test]
    fn copy_cost_counts_headers_and_padding() {
        let k = Key::new(1, [0; 32]);
        let blob = Entry {
            key: k,
            kind: RecordKind::Blob,
            epoch: 0,
            seq: 1,
            off: 0,
            len: 100,
            span: 0,
        };
        assert_eq!(copy_cost(&blob, 1 << 20), 192);
        let m = Entry {
            kind: RecordKind::Manifest,
            len: (2 << 20) + 1,
            ..blob
        };
        // Two full parts, a 1-byte last part (128), a manifest of 3 parts (64 + 64).
        assert_eq!(copy_cost(&m, 1 << 20), 2 * ((1 << 20) + 64) + 128 + 128);
    }

    #[test]
    fn the_budget_goes_to_blobs_used_again_then_to_the_most_recently_touched() {
        let again = |seq: u32| seq | 1 << 31;
        let e = |n: u8| Entry {
            key: Key::new(1, [n; 32]),
            kind: RecordKind::Blob,
            epoch: 0,
            seq: 1,
            off: u32::from(n),
            len: 100,
            span: 0,
        };
        let keys = |v: &[(Entry, u32, u64)]| v.iter().map(|c| c.0.key.id[0]).collect::<Vec<_>>();
        // Everything fits: all, in log order.
        let all = vec![(e(0), 10, 100), (e(1), 12, 100), (e(2), 11, 50)];
        let c = choose(all.clone(), 13, 250);
        assert_eq!((keys(&c.copy), keys(&c.cut)), (vec![0, 1, 2], vec![]));
        // Over budget: the later hints win (12, then 11); the copies keep log order. With log
        // order alone blob 0 (touched once, earliest) would have taken the budget first.
        let c = choose(all.clone(), 13, 160);
        assert_eq!((keys(&c.copy), keys(&c.cut)), (vec![1, 2], vec![0]));
        // A blob over the remaining budget is skipped; a smaller one still fits.
        let c = choose(all, 13, 150);
        assert_eq!((keys(&c.copy), keys(&c.cut)), (vec![1, 2], vec![0]));
        let c = choose(vec![(e(0), 5, 100), (e(1), 9, 120), (e(2), 5, 30)], 9, 140);
        assert_eq!((keys(&c.copy), keys(&c.cut)), (vec![1], vec![0, 2]));
        // Ties: log order. Hints wrap (31 bits): 1 is later than 2^31 - 1.
        let c = choose(vec![(e(0), 7, 100), (e(1), 7, 100)], 8, 100);
        assert_eq!((keys(&c.copy), keys(&c.cut)), (vec![0], vec![1]));
        let c = choose(vec![(e(0), (1 << 31) - 1, 100), (e(1), 1, 100)], 2, 100);
        assert_eq!((keys(&c.copy), keys(&c.cut)), (vec![1], vec![0]));
        // Used again beats touched once, however recent the single touch (a scan after a
        // restart touches everything once, at the same head as the blobs used again).
        let scan = vec![
            (e(0), 7, 100),
            (e(1), 7, 100),
            (e(2), again(5), 100),
            (e(3), again(7), 100),
        ];
        let c = choose(scan, 7, 200);
        assert_eq!((keys(&c.copy), keys(&c.cut)), (vec![2, 3], vec![0, 1]));
        let c = choose(
            vec![(e(0), 7, 100), (e(1), again(6), 100), (e(2), again(7), 100)],
            7,
            100,
        );
        assert_eq!((keys(&c.copy), keys(&c.cut)), (vec![2], vec![0, 1]));
    }
}
