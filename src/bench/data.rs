//! Deterministic test data: a fast PRNG and blobs that are cheap to make unique.
//!
//! A [`BlobMaker`] fills one shared prefix once and hashes it once; each blob is that prefix
//! plus a 16-byte tail `(seed, n)`. Its digest costs one clone of the prefix's hash state and 16
//! bytes of hashing, so a 256 MiB upload needs no 256 MiB of fresh data or hashing per
//! operation, and a read is verified byte for byte against prefix and tail (memcmp, which is
//! faster than hashing and catches the same wrong bytes).

use crate::digest::{Digest, DigestFunction, Hasher};
use bytes::Bytes;

/// Bytes of each blob that make it unique.
pub const TAIL: usize = 16;

/// splitmix64: small, fast, good enough for choosing keys and filling buffers.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// A random digest of a blob nobody uploaded (random hash, plausible size).
    pub fn absent_digest(&mut self) -> Digest {
        let mut hash = [0u8; 32];
        for c in hash.chunks_exact_mut(8) {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        Digest {
            function: DigestFunction::Sha256,
            hash,
            size: 1 + self.next_u64() % (1 << 20),
        }
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = vec![0u8; len];
    let mut chunks = out.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let last = rng.next_u64().to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
    out
}

/// What blobs are made of (`--content`).
#[derive(Clone, Debug, Default)]
pub enum Content {
    /// Pseudo-random bytes: incompressible (the default).
    #[default]
    Random,
    /// Build-log text (timestamps, targets, timings): compresses several times over.
    Text,
    /// The bytes of the files under a directory, concatenated in path order and repeated as
    /// needed (read once when the flags are parsed, at most [`MAX_CORPUS`] bytes).
    Files {
        /// What was read.
        path: std::path::PathBuf,
        /// The files' bytes.
        bytes: Bytes,
    },
}

/// Most bytes `--content DIR` reads.
pub const MAX_CORPUS: u64 = 1 << 30;

impl Content {
    /// `random`, `text`, or a file or directory to read.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Self::Random),
            "text" => Ok(Self::Text),
            path => {
                let path = std::path::PathBuf::from(path);
                let mut files = Vec::new();
                collect_files(&path, &mut files)
                    .map_err(|e| format!("--content {}: {e}", path.display()))?;
                files.sort();
                let mut bytes = Vec::new();
                for f in files {
                    let room = MAX_CORPUS - bytes.len() as u64;
                    if room == 0 {
                        break;
                    }
                    let data = std::fs::read(&f)
                        .map_err(|e| format!("--content: reading {}: {e}", f.display()))?;
                    bytes.extend_from_slice(&data[..data.len().min(room as usize)]);
                }
                if bytes.is_empty() {
                    return Err(format!(
                        "--content {}: no bytes to read (random, text, or a non-empty file or directory)",
                        path.display()
                    ));
                }
                Ok(Self::Files {
                    path,
                    bytes: bytes.into(),
                })
            }
        }
    }

    /// How the report names it.
    pub fn name(&self) -> String {
        match self {
            Self::Random => "random".into(),
            Self::Text => "text".into(),
            Self::Files { path, bytes } => format!("{} ({} bytes)", path.display(), bytes.len()),
        }
    }

    /// `len` bytes of this content for `seed`.
    pub fn fill(&self, seed: u64, len: usize) -> Vec<u8> {
        match self {
            Self::Random => fill(seed, len),
            Self::Text => text(seed, len),
            Self::Files { bytes, .. } => bytes.iter().copied().cycle().take(len).collect(),
        }
    }
}

/// Regular files under `path` (or `path` itself), not following symlinks.
fn collect_files(path: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
    } else if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            collect_files(&e?.path(), out)?;
        }
    }
    Ok(())
}

/// `len` bytes of build-log-like text from `seed`: lines of a timestamp, a level, a module, a
/// target and a timing, drawn from small vocabularies as a real log repeats itself.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    const LEVELS: [&str; 4] = ["INFO", "INFO", "DEBUG", "WARN"];
    const WORDS: [&str; 12] = [
        "compiling",
        "linking",
        "testing",
        "caching",
        "fetching",
        "analyzing",
        "archive",
        "objects",
        "headers",
        "sources",
        "runfiles",
        "outputs",
    ];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 160);
    let mut ms = 0u64;
    while out.len() < len {
        ms += rng.next_u64() % 900;
        let line = format!(
            "2026-11-30T{:02}:{:02}:{:02}.{:03}Z {:5} kiln::{}: {} //src/pkg{}:lib{} ({} files) in {} ms\n",
            ms / 3_600_000 % 24,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            LEVELS[rng.below(LEVELS.len())],
            WORDS[rng.below(WORDS.len())],
            WORDS[rng.below(WORDS.len())],
            rng.below(300),
            rng.below(40),
            rng.below(2000),
            rng.below(5000),
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(len);
    out
}

/// Makes distinct blobs of one size: a shared prefix plus a unique tail.
#[derive(Clone)]
pub struct BlobMaker {
    seed: u64,
    size: usize,
    prefix: Bytes,
    prefix_hash: Hasher,
    /// With `--content PATH` and blobs of at most [`SLIDE_MAX`]: the corpus, from which blob
    /// `n` takes its prefix at offset `n x size` (so small blobs are different files' bytes,
    /// as a tree's outputs are, not one prefix repeated).
    corpus: Option<Bytes>,
}

/// Largest blob whose prefix slides over a `--content PATH` corpus (hashed per blob).
pub const SLIDE_MAX: usize = 1 << 20;

/// One blob: `prefix ++ tail`.
#[derive(Clone)]
pub struct Blob {
    /// Its digest.
    pub digest: Digest,
    prefix: Bytes,
    tail: Bytes,
}

impl BlobMaker {
    /// Blobs of `size` random bytes; `seed` keeps runs apart.
    pub fn new(seed: u64, size: u64) -> Self {
        Self::with_content(seed, size, &Content::Random)
    }

    /// Blobs of `size` bytes of `content`.
    pub fn with_content(seed: u64, size: u64, content: &Content) -> Self {
        let size = size as usize;
        let corpus = match content {
            Content::Files { bytes, .. } if size <= SLIDE_MAX => Some(bytes.clone()),
            _ => None,
        };
        let prefix = Bytes::from(content.fill(seed, size.saturating_sub(TAIL)));
        let mut prefix_hash = DigestFunction::Sha256.hasher();
        prefix_hash.update(&prefix);
        Self {
            seed,
            size,
            prefix,
            prefix_hash,
            corpus,
        }
    }

    /// The `n`th blob.
    pub fn blob(&self, n: u64) -> Blob {
        let mut tail = [0u8; TAIL];
        tail[..8].copy_from_slice(&self.seed.to_le_bytes());
        tail[8..].copy_from_slice(&n.to_le_bytes());
        let tail = Bytes::copy_from_slice(&tail[..self.size.min(TAIL)]);
        let (prefix, mut h) = match &self.corpus {
            Some(c) => {
                let len = self.size.saturating_sub(TAIL);
                let at = (n as usize).wrapping_mul(self.size) % c.len();
                let prefix: Bytes = if at + len <= c.len() {
                    c.slice(at..at + len)
                } else {
                    c.iter().copied().cycle().skip(at).take(len).collect()
                };
                let mut h = DigestFunction::Sha256.hasher();
                h.update(&prefix);
                (prefix, h)
            }
            None => (self.prefix.clone(), self.prefix_hash.clone()),
        };
        h.update(&tail);
        Blob {
            digest: h.finish(),
            prefix,
            tail,
        }
    }
}

impl Blob {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        (self.prefix.len() + self.tail.len()) as u64
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole blob in one buffer (copies; for small blobs).
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::with_capacity(self.len() as usize);
        v.extend_from_slice(&self.prefix);
        v.extend_from_slice(&self.tail);
        v.into()
    }

    /// The blob as pieces of at most `chunk` bytes, sharing the prefix (no copy).
    pub fn chunks(&self, chunk: usize) -> Vec<Bytes> {
        let mut out: Vec<Bytes> = (0..self.prefix.len())
            .step_by(chunk)
            .map(|at| self.prefix.slice(at..(at + chunk).min(self.prefix.len())))
            .collect();
        out.push(self.tail.clone());
        out
    }

    /// Whether `data` equals the blob's bytes at `offset`.
    pub fn matches_at(&self, offset: u64, data: &[u8]) -> bool {
        let offset = offset as usize;
        let p = self.prefix.len();
        if offset + data.len() > p + self.tail.len() {
            return false;
        }
        let in_prefix = p.saturating_sub(offset).min(data.len());
        let (a, b) = data.split_at(in_prefix);
        let t = (offset + in_prefix).saturating_sub(p);
        a == &self.prefix[offset.min(p)..offset.min(p) + in_prefix]
            && (b.is_empty() || b == &self.tail[t..t + b.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_compress_as_named_and_files_are_read() {
        let ratio = |c: &Content| {
            let v = c.fill(3, 1 << 20);
            assert_eq!(v.len(), 1 << 20);
            zstd::bulk::compress(&v, 1).unwrap().len() as f64 / v.len() as f64
        };
        assert!(ratio(&Content::Random) > 0.99);
        let t = ratio(&Content::Text);
        assert!(t < 0.3 && t > 0.02, "text compresses like a log: {t}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), b"world").unwrap();
        std::fs::write(dir.path().join("a"), b"hello ").unwrap();
        let c = Content::parse(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(c.fill(0, 14), b"hello worldhel");
        // Small blobs slide over the corpus: different bytes, right digests.
        let m = BlobMaker::with_content(1, 20, &c);
        let (a, b) = (m.blob(0).to_bytes(), m.blob(1).to_bytes());
        assert_eq!(&a[..4], b"hell");
        assert_eq!(&b[..4], b"ldhe", "blob 1 starts 20 bytes on, wrapping");
        assert_eq!(m.blob(1).digest, DigestFunction::Sha256.digest_of(&b));
        assert!(Content::parse("/nonexistent/kiln").is_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(Content::parse(empty.path().to_str().unwrap()).is_err());
    }

    #[test]
    fn blobs_are_distinct_and_digests_are_right() {
        for size in [0u64, 5, 16, 17, 100_000] {
            let m = BlobMaker::new(7, size);
            let (a, b) = (m.blob(1), m.blob(2));
            let bytes = a.to_bytes();
            assert_eq!(bytes.len() as u64, size);
            assert_eq!(a.digest, DigestFunction::Sha256.digest_of(&bytes));
            if size >= 16 {
                assert_ne!(a.digest, b.digest);
            }
            let joined: Vec<u8> = a.chunks(4096).concat();
            assert_eq!(joined, bytes);
            assert!(a.matches_at(0, &bytes));
            if size > 20 {
                let mid = size as usize - 20;
                assert!(a.matches_at(mid as u64, &bytes[mid..]));
                let mut bad = bytes[mid..].to_vec();
                bad[19] ^= 1;
                assert!(!a.matches_at(mid as u64, &bad));
            }
        }
    }
}
