//! What `Engine::open` reads from disk before the engine runs: the state slots, the ring as
//! the segment headers describe it (when the state is lost), the live segment maps, and clear
//! errors for the files it must allocate.

use super::StorageError;
use super::format::{STATE_SLOT_LEN, SegmentHeader, State, state_slot_offset};
use super::segment::{SegMap, Segments};
use super::sys::mmap::map_readonly;
use super::sys::{IoEngine, IoFile};
use std::sync::Arc;

pub(super) fn read_state(io: &mut dyn IoEngine, f: &IoFile) -> Result<Option<State>, StorageError> {
    let mut slots = [[0u8; STATE_SLOT_LEN]; 2];
    for (i, b) in slots.iter_mut().enumerate() {
        io.read_at(f, state_slot_offset(i as u64), b)?;
    }
    Ok(State::newest(
        slots.iter().map(<[u8; STATE_SLOT_LEN]>::as_slice),
    ))
}

/// The highest segment seq named by a valid header among the files in `dir` (0 if none).
/// Reads one header per file.
pub(super) fn highest_segment_seq(dir: &std::path::Path) -> u32 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|f| {
            let h = segment_header(&std::fs::File::open(f.path()).ok()?)?;
            u32::try_from(h.seq).ok()
        })
        .max()
        .unwrap_or(0)
}

/// The valid header at the start of a segment file, read with `pread` (a fault on a map of
/// the file would read around it as far as the device's readahead goes).
fn segment_header(file: &std::fs::File) -> Option<SegmentHeader> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 64];
    file.read_exact_at(&mut b, 0).ok()?;
    SegmentHeader::decode(&b).ok()
}

/// A clear error for a file kiln must allocate at open: a full disk is `Full` (the server
/// refuses to start and says why), anything else an I/O error naming the file.
pub(super) fn no_space(what: &str, path: &std::path::Path, e: &std::io::Error) -> StorageError {
    let msg = format!("cannot allocate the {what} {}: {e}", path.display());
    if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        StorageError::Full(format!("{msg}; free disk space or lower the capacity"))
    } else {
        StorageError::Io(std::io::Error::new(e.kind(), msg))
    }
}

/// The ring as the segment headers on disk describe it, for a store whose state file is lost:
/// the highest seq whose header sits in its own file slot (`seq % n`) with the configured
/// size, and the run of consecutive seqs below it (at most `n`). Reads one header per file.
pub(super) fn ring_on_disk(dir: &std::path::Path, n: u32, size: u64) -> Option<(u32, u32)> {
    let mut seqs = std::collections::HashSet::new();
    for slot in 0..n {
        let path = super::segment::segment_path(dir, n, slot);
        let Ok(f) = std::fs::File::open(&path) else {
            continue;
        };
        if let Some(h) = segment_header(&f)
            && h.size == size
            && let Ok(seq) = u32::try_from(h.seq)
            && seq > 0
            && seq % n == slot
        {
            seqs.insert(seq);
        }
    }
    let head = *seqs.iter().max()?;
    let mut tail = head;
    while tail > 1 && seqs.contains(&(tail - 1)) && head - (tail - 1) < n {
        tail -= 1;
    }
    Some((tail, head))
}

/// Maps segments `tail..=head` whose header names the expected sequence number. Reads one
/// header per segment (`segment_header`: a fault on the new map would read around it, 8 MiB a
/// segment on the test VM), never the records.
pub(super) fn map_live_segments(segs: &Segments, tail: u32, head: u32, size: u64) {
    for seq in tail..=head {
        let path = segs.path(seq);
        let Ok(file) = IoFile::open(&path) else {
            continue;
        };
        // Mapping reads nothing, and refuses a file shorter than a segment.
        let Ok(map) = map_readonly(&file.file, size as usize) else {
            continue;
        };
        match segment_header(&file.file) {
            Some(h) if h.seq == u64::from(seq) && h.size == size => {
                segs.install(Arc::new(SegMap::new(seq, map, file)));
            }
            _ => tracing::warn!(
                seq,
                "storage: segment header missing or stale; its blobs read as misses"
            ),
        }
    }
}
