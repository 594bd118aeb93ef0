//! The forwarding queue's durable log: writes waiting to reach the upstream survive kill -9
//! and restart.
//!
//! Format (`<data_dir>/upstream-queue/journal`, little-endian), one record per queued write:
//! ```text
//! u32 body length | u64 xxh3 of body | body:
//!   u8 kind (1 blob, 2 action result) | u8 digest function tag | [u8; 32] hash | u64 size |
//!   u64 queued at (ms since the Unix epoch) | u16 instance length | instance (UTF-8)
//! ```
//! `<dir>/cursor` holds the offset of the first record not yet forwarded (8 bytes, replaced
//! atomically: written to `cursor.tmp`, synced, renamed, directory synced). Appends are synced
//! (fdatasync) before they are acknowledged. On open, records after the cursor are read back
//! up to the first torn or damaged one (a crash mid-append), where the file is cut. When every
//! record is forwarded the file is emptied and the cursor reset to 0.
//!
//! Concurrency: not shared; the queue holds it under one lock and calls it on blocking threads.

use crate::digest::{Digest, DigestFunction};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What a queued write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A blob stored locally.
    Blob = 1,
    /// An action result stored locally.
    Action = 2,
}

/// One write waiting to be forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Blob or action result.
    pub kind: Kind,
    /// The blob's digest, or the action's.
    pub digest: Digest,
    /// The local instance name it was written under.
    pub instance: String,
    /// When it was queued, ms since the Unix epoch (for the queue-age gauge).
    pub queued_ms: u64,
}

/// Largest record body: the fixed part plus an instance name of at most 4 KiB.
const MAX_BODY: usize = 1 + 1 + 32 + 8 + 8 + 2 + 4096;

/// The open log.
pub struct Journal {
    dir: PathBuf,
    file: File,
    len: u64,
    cursor: u64,
}

fn encode(e: &Entry, out: &mut Vec<u8>) {
    let inst = e.instance.as_bytes();
    let inst = &inst[..inst.len().min(4096)];
    let mut body = Vec::with_capacity(60 + inst.len());
    body.push(e.kind as u8);
    body.push(e.digest.function.tag());
    body.extend_from_slice(&e.digest.hash);
    body.extend_from_slice(&e.digest.size.to_le_bytes());
    body.extend_from_slice(&e.queued_ms.to_le_bytes());
    body.extend_from_slice(&(inst.len() as u16).to_le_bytes());
    body.extend_from_slice(inst);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

fn decode(body: &[u8]) -> Option<Entry> {
    let kind = match *body.first()? {
        1 => Kind::Blob,
        2 => Kind::Action,
        _ => return None,
    };
    let tag = *body.get(1)?;
    let function = DigestFunction::ALL.into_iter().find(|f| f.tag() == tag)?;
    let hash: [u8; 32] = body.get(2..34)?.try_into().ok()?;
    let size = u64::from_le_bytes(body.get(34..42)?.try_into().ok()?);
    let queued_ms = u64::from_le_bytes(body.get(42..50)?.try_into().ok()?);
    let n = u16::from_le_bytes(body.get(50..52)?.try_into().ok()?) as usize;
    let instance = std::str::from_utf8(body.get(52..52 + n)?).ok()?.to_string();
    if body.len() != 52 + n {
        return None;
    }
    Some(Entry {
        kind,
        digest: Digest {
            function,
            hash,
            size,
        },
        instance,
        queued_ms,
    })
}

/// Reads records from `rest` (the log from offset `base` on) up to the first torn or damaged
/// one: the entries, each with the offset just past it, and how many bytes were good. Every
/// length is checked against the bytes left and `MAX_BODY` before it is used.
pub fn parse(rest: &[u8], base: u64) -> (Vec<(u64, Entry)>, usize) {
    let mut entries = Vec::new();
    let mut at = 0usize;
    while rest.len() - at >= 12 {
        let n = u32::from_le_bytes(rest[at..at + 4].try_into().expect("4 bytes")) as usize;
        let sum = u64::from_le_bytes(rest[at + 4..at + 12].try_into().expect("8 bytes"));
        if n > MAX_BODY || rest.len() - at - 12 < n {
            break;
        }
        let body = &rest[at + 12..at + 12 + n];
        if xxhash_rust::xxh3::xxh3_64(body) != sum {
            break;
        }
        let Some(e) = decode(body) else { break };
        at += 12 + n;
        entries.push((base + at as u64, e));
    }
    (entries, at)
}

/// The fuzz target's check (`fuzz/fuzz_targets/upstream_journal.rs`): parsing arbitrary bytes
/// never panics, what parses re-encodes to exactly the bytes it came from, and a log written
/// from the parsed entries parses back to them.
#[cfg(any(test, feature = "testing"))]
pub fn fuzz_parse(data: &[u8]) {
    let (entries, good) = parse(data, 0);
    assert!(good <= data.len());
    let mut again = Vec::new();
    for (_, e) in &entries {
        encode(e, &mut again);
    }
    assert_eq!(
        again,
        data[..good],
        "parsed records re-encode to their bytes"
    );
    let (back, n) = parse(&again, 0);
    assert_eq!(n, again.len());
    assert_eq!(back, entries);
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens (or creates) the log in `dir` and returns the records not yet forwarded, each
    /// with the offset just past it.
    pub fn open(dir: &Path) -> std::io::Result<(Self, Vec<(u64, Entry)>)> {
        std::fs::create_dir_all(dir)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("journal"))?;
        let len = file.metadata()?.len();
        let mut cursor = match std::fs::read(dir.join("cursor")) {
            Ok(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().expect("8 bytes")),
            _ => 0,
        };
        if cursor > len {
            // The file was emptied after everything was forwarded, before the cursor reset.
            cursor = len;
        }
        file.seek(SeekFrom::Start(cursor))?;
        let mut rest = Vec::new();
        file.read_to_end(&mut rest)?;
        let (entries, at) = parse(&rest, cursor);
        let good = cursor + at as u64;
        if good < len {
            tracing::warn!(
                cut = len - good,
                "upstream queue journal ends in a torn record (a crash mid-append): cut"
            );
            file.set_len(good)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(good))?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                file,
                len: good,
                cursor,
            },
            entries,
        ))
    }

    /// Appends `entries` durably; returns the offset just past each.
    pub fn append(&mut self, entries: &[Entry]) -> std::io::Result<Vec<u64>> {
        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(entries.len());
        for e in entries {
            encode(e, &mut buf);
            ends.push(self.len + buf.len() as u64);
        }
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            // Cut back what may have been written: the next append starts at a record edge.
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(e);
        }
        self.len += buf.len() as u64;
        Ok(ends)
    }

    /// Marks every record before `to` forwarded. When that is all of them, empties the file.
    pub fn advance(&mut self, to: u64) -> std::io::Result<()> {
        if to <= self.cursor {
            return Ok(());
        }
        if to >= self.len {
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
            self.file.sync_all()?;
            self.len = 0;
            self.write_cursor(0)?;
            self.cursor = 0;
            return Ok(());
        }
        self.write_cursor(to)?;
        self.cursor = to;
        Ok(())
    }

    fn write_cursor(&self, at: u64) -> std::io::Result<()> {
        let tmp = self.dir.join("cursor.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&at.to_le_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("cursor"))?;
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8) -> Entry {
        Entry {
            kind: if i.is_multiple_of(2) {
                Kind::Blob
            } else {
                Kind::Action
            },
            digest: DigestFunction::Sha256.digest_of(&[i]),
            instance: format!("inst{i}"),
            queued_ms: u64::from(i),
        }
    }

    /// The fuzz target's check on a valid log, every truncation of it, flipped bytes and
    /// garbage (the fuzzer explores further).
    #[test]
    fn parse_never_panics_and_round_trips() {
        let mut log = Vec::new();
        for i in 0..4 {
            encode(&entry(i), &mut log);
        }
        fuzz_parse(&log);
        assert_eq!(parse(&log, 0).0.len(), 4);
        for cut in 0..log.len() {
            fuzz_parse(&log[..cut]);
        }
        for i in 0..log.len() {
            let mut bad = log.clone();
            bad[i] ^= 0x55;
            fuzz_parse(&bad);
        }
        fuzz_parse(&[0xff; 64]);
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 20]);
        assert_eq!(
            parse(&huge, 0).0.len(),
            0,
            "a length past MAX_BODY is refused"
        );
    }

    #[test]
    fn records_survive_reopen_advance_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, old) = Journal::open(dir.path()).unwrap();
        assert!(old.is_empty());
        let ends = j.append(&[entry(0), entry(1), entry(2)]).unwrap();
        j.advance(ends[0]).unwrap();
        drop(j);
        // A crash mid-append leaves half a record.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal"))
            .unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (mut j, pending) = Journal::open(dir.path()).unwrap();
        let got: Vec<Entry> = pending.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(got, vec![entry(1), entry(2)]);
        // Appends continue after the cut tail.
        let more = j.append(&[entry(3)]).unwrap();
        drop(j);
        let (mut j, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(pending.len(), 3);
        assert_eq!(pending[2].1, entry(3));
        j.advance(more[0]).unwrap();
        drop(j);
        let (_, pending) = Journal::open(dir.path()).unwrap();
        assert!(pending.is_empty());
        assert_eq!(
            std::fs::metadata(dir.path().join("journal")).unwrap().len(),
            0,
            "emptied once all is forwarded"
        );
    }

    #[test]
    fn a_damaged_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&[entry(0), entry(1)]).unwrap();
        drop(j);
        let path = dir.path().join("journal");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (_, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].1, entry(0));
    }
}
