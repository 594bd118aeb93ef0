//! Sequential write and read of a segment-sized file, 1 MiB at a time.

use crate::bench::BenchError;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

const CHUNK: usize = 1 << 20;
const ALIGN: usize = 4096;

/// Disk figures.
#[derive(Debug, Serialize)]
pub struct DiskFigures {
    /// Directory measured.
    pub dir: String,
    /// File size.
    pub size: u64,
    /// O_DIRECT sequential write, fdatasync at the end, MB/s.
    pub write_direct_mb_per_s: f64,
    /// Buffered sequential write then fdatasync, MB/s.
    pub write_buffered_mb_per_s: f64,
    /// O_DIRECT sequential read, MB/s (page cache bypassed).
    pub read_direct_mb_per_s: f64,
    /// Set when O_DIRECT was refused and buffered I/O stood in.
    pub note: Option<String>,
}

/// A 4 KiB-aligned 1 MiB window into a Vec, as O_DIRECT needs, without unsafe code.
struct Aligned {
    buf: Vec<u8>,
    at: usize,
}

impl Aligned {
    fn new() -> Self {
        let mut buf = crate::bench::data::fill(3, CHUNK + ALIGN);
        let at = buf.as_mut_ptr().align_offset(ALIGN);
        Self { buf, at }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.buf[self.at..self.at + CHUNK]
    }
}

fn open(path: &Path, write: bool, direct: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    if write {
        o.write(true).create(true).truncate(true);
    } else {
        o.read(true);
    }
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

fn write_file(path: &Path, size: u64, direct: bool, buf: &mut Aligned) -> std::io::Result<f64> {
    let start = Instant::now();
    let mut f = open(path, true, direct)?;
    let mut done = 0u64;
    while done < size {
        f.write_all(buf.get())?;
        done += CHUNK as u64;
    }
    f.sync_data()?;
    Ok(done as f64 / 1e6 / start.elapsed().as_secs_f64())
}

fn read_file(path: &Path, direct: bool, buf: &mut Aligned) -> std::io::Result<f64> {
    let start = Instant::now();
    let mut f = open(path, false, direct)?;
    let mut done = 0u64;
    loop {
        let n = f.read(buf.get())?;
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// Writes and reads `size` bytes (rounded up to 1 MiB) in `dir`, then removes the file.
pub fn measure(dir: &Path, size: u64) -> Result<DiskFigures, BenchError> {
    let path = dir.join(format!(".kiln-baseline-{}.tmp", std::process::id()));
    let fail = |what: &str, e: std::io::Error| {
        let _ = std::fs::remove_file(&path);
        BenchError::Local(format!("{what} {}: {e}", path.display()))
    };
    let mut buf = Aligned::new();
    let size = size.max(CHUNK as u64).div_ceil(CHUNK as u64) * CHUNK as u64;
    let write_buffered = write_file(&path, size, false, &mut buf).map_err(|e| fail("write", e))?;
    let (write_direct, read_direct, note) = match write_file(&path, size, true, &mut buf) {
        Ok(w) => {
            let r = read_file(&path, true, &mut buf).map_err(|e| fail("read", e))?;
            (w, r, None)
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let r = read_file(&path, false, &mut buf).map_err(|e| fail("read", e))?;
            (
                write_buffered,
                r,
                Some(format!(
                    "O_DIRECT refused in {} (tmpfs?): direct figures are buffered, reads may come \
                     from the page cache",
                    dir.display()
                )),
            )
        }
        Err(e) => return Err(fail("write", e)),
    };
    let _ = std::fs::remove_file(&path);
    Ok(DiskFigures {
        dir: dir.display().to_string(),
        size,
        write_direct_mb_per_s: write_direct,
        write_buffered_mb_per_s: write_buffered,
        read_direct_mb_per_s: read_direct,
        note,
    })
}
