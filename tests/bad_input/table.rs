//! The vocabulary of the bad-input tables: what a row expects ([`Want`]), what the server did
//! ([`Got`]), a [`Table`] that checks every row and fails once at the end naming each bad row,
//! and the lists of bad values shared by every RPC that has such a field.

use kiln::proto::reapi;
use tonic::Code;

/// Where a row's expected status must appear.
#[derive(Clone, Copy, Debug)]
pub enum Want {
    /// As the status of the call (or an error ending its response stream).
    Call(Code),
    /// As the per-item status of a batch call that itself succeeds.
    Item(Code),
    /// Either of the two (the spec allows both, e.g. a declared size over the limit).
    Either(Code),
}

/// The level at which the server answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The call's own status, or an error in its response stream.
    Call,
    /// A batch item's status.
    Item,
}

/// What the server answered to one row.
#[derive(Debug)]
pub struct Got {
    pub level: Level,
    pub code: Code,
    pub message: String,
}

impl Got {
    pub fn call(code: Code, message: impl Into<String>) -> Self {
        Self {
            level: Level::Call,
            code,
            message: message.into(),
        }
    }

    pub fn status(s: &tonic::Status) -> Self {
        Self::call(s.code(), s.message())
    }

    pub fn ok() -> Self {
        Self::call(Code::Ok, "")
    }

    /// The call's error, or OK.
    pub fn of<T>(r: &Result<T, tonic::Status>) -> Self {
        r.as_ref().map_or_else(Self::status, |_| Self::ok())
    }

    /// A batch item's `google.rpc.Status` (absent means OK).
    pub fn item(s: Option<&kiln::proto::google::rpc::Status>) -> Self {
        Self {
            level: Level::Item,
            code: Code::from_i32(s.map_or(0, |s| s.code)),
            message: s.map(|s| s.message.clone()).unwrap_or_default(),
        }
    }

    fn matches(&self, want: Want) -> bool {
        match want {
            Want::Call(c) => self.level == Level::Call && self.code == c,
            Want::Item(c) => self.level == Level::Item && self.code == c,
            Want::Either(c) => self.code == c,
        }
    }
}

/// The rows of one RPC's table. Every row is checked (a failing row does not hide the next);
/// [`Table::finish`] fails once, listing every row that went wrong.
pub struct Table {
    rpc: &'static str,
    rows: usize,
    failures: Vec<String>,
}

impl Table {
    pub fn new(rpc: &'static str) -> Self {
        Self {
            rpc,
            rows: 0,
            failures: Vec::new(),
        }
    }

    /// Checks one row's answer.
    pub fn check(&mut self, row: &str, want: Want, got: &Got) {
        self.rows += 1;
        if !got.matches(want) {
            self.fail(
                row,
                &format!(
                    "want {want:?}, got {:?} {:?}: {:?}",
                    got.level,
                    got.code,
                    short(&got.message)
                ),
            );
        }
    }

    /// Records a failed extra assertion of a row (nothing stored, message contents, ...).
    pub fn fail(&mut self, row: &str, what: &str) {
        self.failures
            .push(format!("{} row {row:?}: {what}", self.rpc));
    }

    /// Asserts that `cond` holds for `row`.
    pub fn expect(&mut self, row: &str, cond: bool, what: impl FnOnce() -> String) {
        if !cond {
            self.fail(row, &what());
        }
    }

    /// Fails if any row failed, naming each.
    pub fn finish(self) {
        eprintln!("{}: {} rows checked", self.rpc, self.rows);
        assert!(self.rows > 0, "{}: no row was checked", self.rpc);
        assert!(
            self.failures.is_empty(),
            "{} of {} rows of {} failed:\n  {}",
            self.failures.len(),
            self.rows,
            self.rpc,
            self.failures.join("\n  ")
        );
    }
}

fn short(s: &str) -> &str {
    &s[..s.floor_char_boundary(200)]
}

/// A valid-looking SHA-256 hex hash (of nothing stored).
pub const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Instance names no request may carry: empty or `.`/`..` segments, and reserved words.
pub const BAD_INSTANCES: &[&str] = &[
    "blobs",
    "uploads",
    "compressed-blobs",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "a/blobs/b",
    "a//b",
    "/a",
    "a/",
    "/",
    ".",
    "..",
    "a/../b",
    "a/./b",
];

/// `digest_function` values kiln does not implement (0, UNKNOWN, means "infer": valid; SHA256
/// and BLAKE3 are served).
pub fn bad_digest_functions() -> Vec<(String, i32)> {
    use reapi::digest_function::Value as F;
    let mut v: Vec<(String, i32)> = [
        F::Sha1,
        F::Md5,
        F::Sha384,
        F::Sha512,
        F::Vso,
        F::Murmur3,
        F::Sha256tree,
        F::Gitsha1,
    ]
    .iter()
    .map(|f| (format!("digest_function {}", f.as_str_name()), *f as i32))
    .collect();
    v.push(("digest_function 999 (undefined)".into(), 999));
    v.push(("digest_function -1 (undefined)".into(), -1));
    v
}

/// Digests that are malformed whatever the server stores: each with the name of its defect.
pub fn bad_digests() -> Vec<(&'static str, reapi::Digest)> {
    let d = |hash: String, size_bytes: i64| reapi::Digest { hash, size_bytes };
    vec![
        ("empty hash", d(String::new(), 5)),
        ("hash of 63 hex digits", d(H[1..].into(), 5)),
        ("hash of 65 hex digits", d(format!("{H}0"), 5)),
        ("hash of 128 hex digits (SHA-512 length)", d(H.repeat(2), 5)),
        ("hash of 40 hex digits (SHA-1 length)", d(H[..40].into(), 5)),
        ("upper-case hash", d(H.to_uppercase(), 5)),
        ("non-hex hash", d(format!("{}g", &H[1..]), 5)),
        ("hash with a space", d(format!("{} ", &H[1..]), 5)),
        (
            "hash with a multi-byte character",
            d(format!("{}é", &H[2..]), 5),
        ),
        ("hash with a NUL", d(format!("{}\0", &H[1..]), 5)),
        ("hash of 10 KB", d("a".repeat(10_000), 5)),
        ("negative size", d(H.into(), -1)),
        ("size i64::MIN", d(H.into(), i64::MIN)),
    ]
}

/// ByteStream read names in malformed shapes (`{hash}` stands for a valid hash).
pub fn bad_read_names() -> Vec<String> {
    [
        "",
        "/",
        "blobs",
        "blobs/",
        "blobs/{hash}",
        "blobs/{hash}/",
        "/blobs/{hash}/5",
        "blobs//{hash}/5",
        "blobs/{hash}//5",
        "blobs/{hash}/5/",
        "blobs/{hash}/5/extra",
        "blobs/{hash}/-1",
        "blobs/{hash}/+5",
        "blobs/{hash}/5x",
        "blobs/{hash}/0x10",
        "blobs/{hash}/ 5",
        "blobs/{hash}/99999999999999999999",
        "blobs/{HASH}/5",
        "blobs/{hash}0/5",
        "blobs/ab/5",
        "blobs/5",
        "blobs/md5/{hash}/5",
        "blobs/sha512/{hash}/5",
        "compressed-blobs/{hash}/5",
        "compressed-blobs/zstd",
        "compressed-blobs/zstd/{hash}",
        "compressed-blobs/brotli/{hash}/5",
        "compressed-blobs/deflate/{hash}/5",
        "compressed-blobs/ZSTD/{hash}/5",
        "compressed-blobs/zstd/{hash}/5/extra",
        "uploads/{uuid}/blobs/{hash}/5",
        "actions/blobs/{hash}/5",
        "operations/blobs/{hash}/5",
        "a/uploads/blobs/{hash}/5",
        "../blobs/{hash}/5",
        "a/../blobs/{hash}/5",
        "./blobs/{hash}/5",
        "blob/{hash}/5",
        "Blobs/{hash}/5",
        "{hash}/5",
    ]
    .iter()
    .map(|s| fill(s))
    .collect()
}

/// ByteStream write names in malformed shapes.
pub fn bad_write_names() -> Vec<String> {
    [
        "",
        "uploads",
        "uploads/{uuid}",
        "uploads/{uuid}/blobs",
        "uploads/{uuid}/blobs/{hash}",
        "uploads/blobs/{hash}/5",
        "uploads//blobs/{hash}/5",
        "uploads/{uuid}/{hash}/5",
        "uploads/{uuid}/blobs/{hash}/-5",
        "uploads/{uuid}/blobs/{hash}/five",
        "uploads/{uuid}/blobs/{HASH}/5",
        "uploads/{uuid}/blobs/{hash}0/5",
        "uploads/{uuid}/blobs/md5/{hash}/5",
        "uploads/{uuid}/compressed-blobs/{hash}/5",
        "uploads/{uuid}/compressed-blobs/brotli/{hash}/5",
        "uploads/{uuid}/compressed-blobs/zstd/{hash}",
        "blobs/{hash}/5",
        "compressed-blobs/zstd/{hash}/5",
        "/uploads/{uuid}/blobs/{hash}/5",
        "blobs/uploads/{uuid}/blobs/{hash}/5",
        "actions/uploads/{uuid}/blobs/{hash}/5",
        "../uploads/{uuid}/blobs/{hash}/5",
        "a/./uploads/{uuid}/blobs/{hash}/5",
    ]
    .iter()
    .map(|s| fill(s))
    .collect()
}

fn fill(pattern: &str) -> String {
    pattern
        .replace("{hash}", H)
        .replace("{HASH}", &H.to_uppercase())
        .replace("{uuid}", "4d3c2b1a-0000-4000-8000-000000000000")
}

/// A zstd frame of RLE blocks: `blocks` blocks of 128 KiB of `byte` each (4 bytes per block),
/// in a frame that declares neither its content size nor a window bigger than 128 KiB, so a
/// decoder cannot know the output size before running. 8,192 blocks (32 KiB) expand to 1 GiB.
pub fn zstd_rle_bomb(blocks: usize, byte: u8) -> Vec<u8> {
    const BLOCK: u32 = 128 << 10;
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD];
    // Frame header descriptor: no content size, no single segment, no checksum, no dict.
    f.push(0x00);
    // Window descriptor: exponent 7, mantissa 0 -> window log 17 (128 KiB).
    f.push(7 << 3);
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = (BLOCK << 3) | (1 << 1) | last;
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(byte);
    }
    f
}
