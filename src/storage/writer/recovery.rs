//! Open after an unclean stop: records between the last index checkpoint and the last synced
//! position are durable, but their index slots may not have reached the disk (the index file
//! is written back only at checkpoints). They are read back, in log order, and published again.
//! The work is bounded by `checkpoint_bytes`, not by the number of blobs in the store.

use super::Writer;
use super::walk::Walk;
use crate::storage::StorageError;
use crate::storage::codec;
use crate::storage::format::{
    FLAG_ZSTD, RECORD_HEADER_LEN, RecordKind, SEGMENT_HEADER_LEN, decode_manifest,
};
use crate::storage::index::Entry;
use crate::storage::stats::inc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often a long replay (an index rebuild) logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
use xxhash_rust::xxh3::xxh3_64;

impl Writer {
    /// Replays what the last checkpoint missed, then runs a checkpoint round so the next open
    /// starts from here. Called once, by `Engine::open`, before the I/O thread starts.
    ///
    /// `rebuild`: the index was reset and `[checkpoint, synced)` spans the whole live ring
    /// (`Engine::open` sets it so): the same replay then rebuilds the index from every record,
    /// reading record headers only (plus manifest payloads), so its cost is bounded by the data
    /// in the ring, not by the number of blobs beyond one header read each.
    pub(crate) fn open_round(&mut self, rebuild: bool) -> Result<(), StorageError> {
        // First make the new epoch reservation (and any invalid range) durable: replay
        // publishes in this session's first epoch.
        self.write_state()?;
        let started = Instant::now();
        let (records, bytes) = self.replay(rebuild);
        let ms = started.elapsed().as_millis() as u64;
        if rebuild {
            inc(&self.sh.counters().index_rebuilds);
            tracing::warn!(
                records,
                bytes,
                ms,
                "storage: rebuilt the index from the segment records"
            );
        } else if records > 0 {
            tracing::info!(
                records,
                bytes,
                ms,
                "storage: replayed records written after the last index checkpoint"
            );
        }
        self.sync_round(true)
    }

    /// Publishes every valid record in `[checkpoint, synced)`. Returns (records, bytes read).
    /// With `progress`, logs where it is every few seconds (a rebuild reads the whole ring).
    fn replay(&mut self, progress: bool) -> (u64, u64) {
        let (from, to) = (self.state.checkpoint, self.state.synced);
        if from.seq == 0 || to <= from {
            return (0, 0);
        }
        let sh = Arc::clone(&self.sh);
        let tail = sh.tail();
        let head = sh.head();
        let size = sh.cfg().segment_size;
        let (mut records, mut bytes) = (0u64, 0u64);
        let (first, last) = (from.seq.max(tail), to.seq.min(head));
        let mut next_log = Instant::now() + PROGRESS_EVERY;
        for seq in first..=last {
            if progress && Instant::now() >= next_log {
                next_log = Instant::now() + PROGRESS_EVERY;
                tracing::info!(
                    segment = seq - first,
                    of = last - first + 1,
                    records,
                    bytes,
                    "storage: rebuilding the index"
                );
            }
            let Some(seg) = sh.segs().get(seq) else {
                continue;
            };
            let start = if seq == from.seq {
                from.off.clamp(SEGMENT_HEADER_LEN, size)
            } else {
                SEGMENT_HEADER_LEN
            };
            let end = if seq == to.seq {
                to.off.min(size)
            } else {
                size
            };
            // The first record that does not validate ends the written part of a segment.
            let mut walk = Walk::new(&seg, start, end);
            while let Some((off, h)) = walk.next_record() {
                let payload = off + RECORD_HEADER_LEN as u64;
                let at = (off / crate::storage::format::ALIGN) as u32;
                let entry = match h.kind {
                    // A compressed record's entry names the blob's length, from its prefix.
                    RecordKind::Blob => if h.flags & FLAG_ZSTD == 0 {
                        Some(h.len)
                    } else {
                        walk.bytes(payload, h.len.min(codec::PREFIX as u64))
                            .and_then(|p| codec::logical_len(&p))
                    }
                    .map(|len| Entry {
                        key: h.key,
                        kind: h.kind,
                        epoch: 0,
                        seq,
                        off: at,
                        len,
                        span: 0,
                    }),
                    RecordKind::Part => None,
                    RecordKind::Manifest => {
                        walk.bytes(payload, h.len)
                            .and_then(|m| match decode_manifest(&m) {
                                Ok((total, parts)) if xxh3_64(&m) == h.checksum => {
                                    Some(Entry::manifest(h.key, seq, at, total, &parts))
                                        .filter(|e| e.oldest_seq() >= tail)
                                }
                                _ => None,
                            })
                    }
                };
                // Skip records whose entry reached the index file anyway (the kernel writes
                // mapped pages back on its own): republishing them would only crowd the
                // probe windows. In log order, a record that needs republishing is never
                // what the current lookup finds.
                if let Some(e) = entry
                    && sh
                        .lookup(&e.key)
                        .is_none_or(|x| (x.seq, x.off) != (e.seq, e.off))
                {
                    self.publish(&e);
                    self.grow_blocking();
                    records += 1;
                }
            }
            bytes += walk.pos() - start;
        }
        sh.counters().replayed.fetch_add(records, Ordering::Relaxed);
        (records, bytes)
    }
}
