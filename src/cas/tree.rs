//! GetTree: the directories reachable from a root, breadth-first, in pages.
//!
//! The walk is [`TreeWalk`]; a [`TreePager`] keeps one between pages, so the pages of one
//! GetTree stream continue where the last stopped. A page token names the position for a
//! client that resumes in a new call: `INDEX.TAG`, the count of directories already returned
//! and the first 8 bytes (hex) of the next one's hash. A call that stops early leaves its walk
//! in [`PausedTrees`] (`tree_pagers.rs`), and a new call with that token continues it; one
//! that finds none walks to `INDEX` again and refuses the token unless the directory found
//! there has that hash, so a forged or stale token is INVALID_ARGUMENT, never a silently
//! wrong page.

use super::walk::TreeWalk;
use super::{Cas, CasError};
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use crate::storage::Cached;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest page token accepted (`INDEX.TAG` is at most 20 + 1 + 16 characters).
const MAX_TOKEN_LEN: usize = 64;
/// Bytes of the next directory's hash a token carries.
const TAG_BYTES: usize = 8;
/// Most encoded bytes of directories in one page: a page stops before the directory that
/// would take it past this (but holds at least one), however large a `page_size` the client
/// asked for. gRPC clients refuse messages over 4 MiB unless told otherwise, and the walk
/// holds a page in memory.
pub const MAX_PAGE_BYTES: usize = 2 << 20;
/// Default bound on the distinct directories one GetTree walk holds (met, whether returned,
/// queued or absent; about 150 bytes each): a tree with more is refused (INVALID_ARGUMENT), as
/// Execute refuses an input tree of more than `execution.max_input_directories` (the same
/// default). Setting: `cache.max_tree_directories`.
pub const MAX_TREE_DIRECTORIES: usize = 1 << 20;
/// Default bound on the distinct directories all GetTree walks hold at once, parked ones
/// included (1-1.5 GiB): a walk that would pass it fails with RESOURCE_EXHAUSTED, and may be
/// tried again. Setting: `cache.max_walked_directories`.
pub const MAX_WALKED_DIRECTORIES: usize = 8 << 20;
/// Default bound on one Directory's encoded size: a walk refuses a larger one before reading
/// it (INVALID_ARGUMENT), so one message cannot queue millions of children before the bounds
/// above are looked at. Setting: `execution.max_directory_bytes`, which Execute applies too.
pub const MAX_DIRECTORY_BYTES: u64 = 4 << 20;

/// The bounds on the directories GetTree walks hold, and how many they hold now.
#[derive(Debug)]
pub(super) struct WalkBudget {
    per_walk: usize,
    all_walks: usize,
    directory_bytes: u64,
    held: AtomicUsize,
}

impl WalkBudget {
    pub(super) fn new(per_walk: usize, all_walks: usize, directory_bytes: u64) -> Self {
        Self {
            per_walk,
            all_walks,
            directory_bytes,
            held: AtomicUsize::new(0),
        }
    }

    /// Directories the walks hold now.
    pub(super) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// The directories one walk holds, charged to the budget of all walks, and given back when
/// the walk is dropped.
#[derive(Debug)]
struct Charge {
    budget: Arc<WalkBudget>,
    held: usize,
}

impl Charge {
    /// Charges the walk of `root` for `seen` directories in all.
    fn grow_to(&mut self, seen: usize, root: &Digest) -> Result<(), CasError> {
        let more = seen.saturating_sub(self.held);
        if more == 0 {
            return Ok(());
        }
        let b = &self.budget;
        let grown = b
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(more).filter(|&total| total <= b.all_walks)
            });
        if let Err(held) = grown {
            return Err(CasError::Exhausted(format!(
                "GetTree of {root}: {more} more directories would take the walks under way \
                 (holding {held}) past the server's bound of {} (cache.max_walked_directories); \
                 try again later",
                b.all_walks
            )));
        }
        self.held = seen;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// One page of a tree walk.
#[derive(Debug, Default)]
pub struct TreePage {
    /// Directories of this page, in breadth-first order.
    pub directories: Vec<Directory>,
    /// Token for the next page; empty on the last page.
    pub next_page_token: String,
}

/// A GetTree walk positioned between two pages. Directories missing from the CAS are left
/// out with their subtrees, as the spec asks; a missing root is `BlobNotFound`.
///
/// A page can be made in several goes: [`TreePager::page_if_cached`] reads only directories
/// whose bytes are in memory (on the async runtime), a batch at a time, and stops before one
/// on disk, keeping the directories gathered; [`TreePager::next_page`] (on a blocking thread)
/// goes on from there. A walk stopped part-way through a page is still a position: its token
/// names the first directory gathered, and the next page starts with them.
#[derive(Debug)]
pub struct TreePager {
    walk: TreeWalk,
    /// Directories gathered so far, `page` included (the index of `next`).
    returned: usize,
    next: Next,
    /// Directories gathered for the next page and not returned yet.
    page: Gathered,
    /// The walk's directories, charged to the budget of all walks (from its first visit).
    charge: Option<Charge>,
}

/// Directories gathered for a page: the messages, their digests (a page cut short names the
/// first one left in its token) and their bytes in a page.
#[derive(Debug, Default)]
struct Gathered {
    dirs: Vec<Directory>,
    digests: Vec<Digest>,
    bytes: usize,
}

impl Gathered {
    fn push(&mut self, d: Digest, dir: Directory, size: usize) {
        self.digests.push(d);
        self.dirs.push(dir);
        self.bytes += size;
    }

    /// The first `n` directories (all of them without a copy when that is all there are).
    fn take(&mut self, n: usize) -> Vec<Directory> {
        if n >= self.dirs.len() {
            self.digests.clear();
            self.bytes = 0;
            return std::mem::take(&mut self.dirs);
        }
        let rest = self.dirs.split_off(n);
        self.digests.drain(..n);
        self.bytes = rest.iter().map(page_size_of).sum();
        std::mem::replace(&mut self.dirs, rest)
    }
}

/// What comes after the directories gathered so far.
#[derive(Debug)]
enum Next {
    /// Not loaded yet: the walk's next directory, or this one, already taken from the walk
    /// (found on disk by a read that must not wait, or its read failed).
    Unread(Option<(Digest, usize)>),
    /// The next directory, loaded.
    Dir(Digest, Directory),
    /// The walk is done.
    End,
}

/// How far [`TreePager::page_if_cached`] got.
#[derive(Debug)]
pub enum CachedPage {
    /// The page, made.
    Made(TreePage),
    /// Stopped before a directory on disk: [`TreePager::next_page`] goes on.
    OnDisk,
    /// Gathered a batch of directories: call again (after letting other tasks run).
    Batch,
}

/// Bytes a directory takes in a page: the message and the field's tag and length prefix (at
/// most 6 bytes).
fn page_size_of(dir: &Directory) -> usize {
    dir.encoded_len() + 6
}

impl TreePager {
    /// A walk of `root` from its start, nothing read yet (a missing root is found by the
    /// first page).
    pub fn start(root: Digest) -> Self {
        Self {
            walk: TreeWalk::new(root),
            returned: 0,
            next: Next::Unread(None),
            page: Gathered::default(),
            charge: None,
        }
    }

    /// A walk of `root` positioned at `page_token` (empty for the start), read from wherever
    /// the directories are (a thread that may wait on the disk).
    pub fn new(cas: &Cas, root: &Digest, page_token: &str) -> Result<Self, CasError> {
        let mut pager = Self::start(*root);
        let (index, tag) = if page_token.is_empty() {
            (0, None)
        } else {
            let (index, tag) = parse_token(page_token)?;
            (index, Some(tag))
        };
        // Reads on this thread may wait: no batches.
        let mut unbounded = usize::MAX;
        pager.load(cas, true, &mut unbounded)?;
        while pager.returned < index {
            if !matches!(pager.next, Next::Dir(..)) {
                return Err(CasError::InvalidArgument(format!(
                    "page_token {page_token:?} is past the end of the tree"
                )));
            }
            pager.returned += 1;
            pager.next = Next::Unread(None);
            pager.load(cas, true, &mut unbounded)?;
        }
        if let Some(tag) = tag
            && !matches!(&pager.next, Next::Dir(d, _) if token_tag(d) == tag)
        {
            return Err(CasError::InvalidArgument(format!(
                "page_token {page_token:?} does not match the tree under {root}"
            )));
        }
        Ok(pager)
    }

    /// The next page of up to `page_size` directories (at least one), and of at most
    /// [`MAX_PAGE_BYTES`] unless its one directory is larger. Reads may wait on the disk.
    pub fn next_page(&mut self, cas: &Cas, page_size: usize) -> Result<TreePage, CasError> {
        self.fill(cas, page_size, true, usize::MAX)?;
        Ok(self.take_page(page_size))
    }

    /// [`TreePager::next_page`] if every directory it needs is in memory, reading at most
    /// `batch` of them in this call; else how far it got (what it gathered is kept).
    pub fn page_if_cached(
        &mut self,
        cas: &Cas,
        page_size: usize,
        batch: usize,
    ) -> Result<CachedPage, CasError> {
        Ok(match self.fill(cas, page_size, false, batch)? {
            Progress::Done => CachedPage::Made(self.take_page(page_size)),
            Progress::OnDisk => CachedPage::OnDisk,
            Progress::Batch => CachedPage::Batch,
        })
    }

    /// Gathers directories until the page is full or the walk is done, or (with `wait` false)
    /// until the next directory is on disk, or until `batch` directories (present or not)
    /// were looked at.
    fn fill(
        &mut self,
        cas: &Cas,
        page_size: usize,
        wait: bool,
        mut batch: usize,
    ) -> Result<Progress, CasError> {
        loop {
            match self.load(cas, wait, &mut batch)? {
                Progress::Done => {}
                stopped => return Ok(stopped),
            }
            let Next::Dir(_, dir) = &self.next else {
                return Ok(Progress::Done);
            };
            let size = page_size_of(dir);
            let gathered = self.page.dirs.len();
            let full = gathered >= page_size.max(1)
                || (gathered > 0 && self.page.bytes + size > MAX_PAGE_BYTES);
            if full {
                return Ok(Progress::Done);
            }
            if let Next::Dir(d, dir) = std::mem::replace(&mut self.next, Next::Unread(None)) {
                self.page.push(d, dir, size);
                self.returned += 1;
            }
        }
    }

    /// The page made: up to `page_size` of the directories gathered (a walk parked part-way
    /// through a page and resumed with a smaller size has more), with the token of the
    /// position after it.
    fn take_page(&mut self, page_size: usize) -> TreePage {
        TreePage {
            directories: self.page.take(page_size.max(1)),
            next_page_token: self.token().unwrap_or_default(),
        }
    }

    /// The page token naming this position (the first directory not returned yet); `None`
    /// once the walk is done, and at its very start while the root is not read yet.
    pub fn token(&self) -> Option<String> {
        let ((Some(first), _) | (None, Next::Dir(first, _))) =
            (self.page.digests.first(), &self.next)
        else {
            return None;
        };
        let index = self.returned - self.page.dirs.len();
        Some(format!("{index}.{}", hex::encode(token_tag(first))))
    }

    /// The root this walk started from.
    pub fn root(&self) -> &Digest {
        self.walk.root()
    }

    /// About how many bytes of memory the walk keeps: its digests (seen and queued), the
    /// next directory, loaded already, and the directories gathered for the next page.
    pub fn held_bytes(&self) -> usize {
        // A digest in the seen set and (at most once) in the queue, with the tables' slack.
        const PER_DIGEST: usize = 128;
        let next = match &self.next {
            Next::Dir(_, d) => d.encoded_len(),
            _ => 0,
        };
        self.walk.seen() * PER_DIGEST + next + self.page.bytes
    }

    /// Loads the next directory present in the CAS into `next` (its children queued), or the
    /// end (`Done`; at once if `next` is loaded already). With `wait` false, a directory on
    /// disk is not read: it stays `Unread` (`OnDisk`). Each directory looked at, absent ones
    /// included, takes one of `batch`; with none left it stops (`Batch`). A directory whose
    /// read fails stays `Unread` too.
    fn load(&mut self, cas: &Cas, wait: bool, batch: &mut usize) -> Result<Progress, CasError> {
        let Next::Unread(taken) = &mut self.next else {
            return Ok(Progress::Done);
        };
        let mut taken = taken.take();
        loop {
            if *batch == 0 {
                self.next = Next::Unread(taken);
                return Ok(Progress::Batch);
            }
            let Some((d, depth)) = taken.take().or_else(|| self.walk.pop()) else {
                self.next = Next::End;
                return Ok(Progress::Done);
            };
            *batch -= 1;
            // Until it is read, the directory is where the walk stands.
            self.next = Next::Unread(Some((d, depth)));
            let max = cas.walked.directory_bytes;
            if d.size > max {
                return Err(CasError::InvalidArgument(format!(
                    "Directory {d} of the tree under {} is larger than the {max} bytes a \
                     GetTree walk reads (execution.max_directory_bytes)",
                    self.walk.root()
                )));
            }
            let found = if wait {
                cas.get(&d)?
            } else {
                match cas.get_if_cached(&d)? {
                    Cached::Read(found) => found,
                    Cached::OnDisk => return Ok(Progress::OnDisk),
                }
            };
            let Some(blob) = found else {
                if depth == 0 {
                    return Err(CasError::BlobNotFound(d));
                }
                continue;
            };
            let dir = Directory::decode(blob.to_bytes()?).map_err(|e| CasError::BadMessage {
                what: "Directory",
                reason: format!("{d}: {e}"),
            })?;
            self.walk.visit(&dir, depth)?;
            self.account(&cas.walked)?;
            self.next = Next::Dir(d, dir);
            return Ok(Progress::Done);
        }
    }

    /// Charges the directories the walk has met to `budget`: an error past the bound on one
    /// walk or on all of them.
    fn account(&mut self, budget: &Arc<WalkBudget>) -> Result<(), CasError> {
        let seen = self.walk.seen();
        let root = *self.walk.root();
        if seen > budget.per_walk {
            return Err(CasError::InvalidArgument(format!(
                "the tree under {root} has more than {} distinct directories, more than one \
                 GetTree walk holds (cache.max_tree_directories)",
                budget.per_walk
            )));
        }
        let charge = self.charge.get_or_insert_with(|| Charge {
            budget: budget.clone(),
            held: 0,
        });
        charge.grow_to(seen, &root)
    }
}

/// How far [`TreePager::load`] or [`TreePager::fill`] got: done (loaded; the page full or the
/// walk over), stopped before a directory on disk, or out of batch.
enum Progress {
    Done,
    OnDisk,
    Batch,
}

fn token_tag(d: &Digest) -> [u8; TAG_BYTES] {
    d.hash[..TAG_BYTES]
        .try_into()
        .expect("hash is longer than a tag")
}

/// `INDEX.TAG` of a page token; anything else is INVALID_ARGUMENT.
fn parse_token(token: &str) -> Result<(usize, [u8; TAG_BYTES]), CasError> {
    let bad = || CasError::InvalidArgument(format!("invalid page_token {token:?}"));
    if token.len() > MAX_TOKEN_LEN {
        return Err(CasError::InvalidArgument(format!(
            "invalid page_token: {} bytes, longer than any token this server issues",
            token.len()
        )));
    }
    let (index, tag) = token.split_once('.').ok_or_else(bad)?;
    let index = index.parse().map_err(|_| bad())?;
    let mut out = [0u8; TAG_BYTES];
    hex::decode_to_slice(tag, &mut out).map_err(|_| bad())?;
    Ok((index, out))
}

/// One page of the tree under `root` starting at `page_token` (see [`TreePager`]).
pub fn get_tree_page(
    cas: &Cas,
    root: &Digest,
    page_size: usize,
    page_token: &str,
) -> Result<TreePage, CasError> {
    TreePager::new(cas, root, page_token)?.next_page(cas, page_size)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::proto::reapi::DirectoryNode;
    use crate::storage::MemoryStore;
    use bytes::Bytes;
    use std::sync::Arc;

    pub(in crate::cas) async fn put_dir(cas: &Cas, dir: &Directory) -> Digest {
        let bytes = dir.encode_to_vec();
        let d = DigestFunction::Sha256.digest_of(&bytes);
        cas.put(&d, Bytes::from(bytes)).await.unwrap();
        d
    }

    pub(in crate::cas) fn node(name: &str, d: &Digest) -> DirectoryNode {
        DirectoryNode {
            name: name.into(),
            digest: Some(d.to_proto()),
        }
    }

    #[tokio::test]
    async fn pages_cover_tree_once_and_skip_missing() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 20)));
        let leaf = put_dir(&cas, &Directory::default()).await;
        let missing = DigestFunction::Sha256.digest_of(b"no such dir");
        let mid = put_dir(
            &cas,
            &Directory {
                directories: vec![node("l", &leaf)],
                ..Default::default()
            },
        )
        .await;
        let root = put_dir(
            &cas,
            &Directory {
                directories: vec![
                    node("a", &mid),
                    node("b", &mid),
                    node("c", &missing),
                    node("d", &leaf),
                ],
                ..Default::default()
            },
        )
        .await;
        let all = get_tree_page(&cas, &root, 100, "").unwrap();
        assert_eq!(
            all.directories.len(),
            3,
            "root, mid, leaf once each; missing skipped"
        );
        assert!(all.next_page_token.is_empty());
        let p1 = get_tree_page(&cas, &root, 2, "").unwrap();
        assert_eq!(p1.directories.len(), 2);
        let p2 = get_tree_page(&cas, &root, 2, &p1.next_page_token).unwrap();
        assert_eq!(p2.directories.len(), 1);
        assert!(p2.next_page_token.is_empty());
        assert!(get_tree_page(&cas, &root, 2, "bogus").is_err());
        assert!(matches!(
            get_tree_page(&cas, &missing, 2, ""),
            Err(CasError::BlobNotFound(_))
        ));
    }

    /// A store that counts reads, to see that pages continue instead of walking again.
    pub(in crate::cas) struct Counting {
        pub(in crate::cas) inner: MemoryStore,
        pub(in crate::cas) gets: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl crate::storage::Store for Counting {
        fn get(
            &self,
            key: &crate::storage::Key,
        ) -> Result<Option<crate::storage::Blob>, crate::storage::StorageError> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.get(key)
        }
        fn contains(
            &self,
            key: &crate::storage::Key,
        ) -> Result<bool, crate::storage::StorageError> {
            self.inner.contains(key)
        }
        async fn begin_write(
            &self,
            key: crate::storage::Key,
            len: u64,
        ) -> Result<Box<dyn crate::storage::BlobWriter>, crate::storage::StorageError> {
            self.inner.begin_write(key, len).await
        }
        fn max_blob_size(&self) -> u64 {
            self.inner.max_blob_size()
        }
    }

    /// A tree 40 levels deep, each level with 5 distinct directories that all point at the
    /// next level's 5 (so every directory is reached many times), plus a missing one.
    pub(in crate::cas) async fn deep_wide_tree(cas: &Cas) -> (Digest, usize) {
        let missing = DigestFunction::Sha256.digest_of(b"absent");
        let mut below: Vec<Digest> = Vec::new();
        let mut count = 0;
        for level in 0..40 {
            let mut here = Vec::new();
            for i in 0..5 {
                let mut dirs: Vec<DirectoryNode> = below
                    .iter()
                    .enumerate()
                    .map(|(j, d)| node(&format!("d{j}"), d))
                    .collect();
                if i == 0 {
                    dirs.push(node("zz", &missing));
                }
                let dir = Directory {
                    directories: dirs,
                    files: vec![crate::proto::reapi::FileNode {
                        name: format!("f{level}-{i}"),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                here.push(put_dir(cas, &dir).await);
                count += 1;
            }
            below = here;
        }
        let root = put_dir(
            cas,
            &Directory {
                directories: below.iter().map(|d| node("x", d)).collect(),
                ..Default::default()
            },
        )
        .await;
        (root, count + 1)
    }

    #[tokio::test]
    async fn pages_equal_one_unpaged_walk_and_continue() {
        let store = Arc::new(Counting {
            inner: MemoryStore::new(1 << 24),
            gets: 0.into(),
        });
        let cas = Cas::new(store.clone());
        let (root, count) = deep_wide_tree(&cas).await;
        let all = get_tree_page(&cas, &root, 10_000, "").unwrap();
        assert!(all.next_page_token.is_empty());
        assert_eq!(all.directories.len(), count, "each directory once");
        for page_size in [1, 3, 7, 200] {
            // One pager across pages, as a GetTree stream uses it.
            let before = store.gets.load(std::sync::atomic::Ordering::Relaxed);
            let mut pager = TreePager::new(&cas, &root, "").unwrap();
            let mut paged = Vec::new();
            let mut tokens = Vec::new();
            loop {
                let page = pager.next_page(&cas, page_size).unwrap();
                assert!(page.directories.len() <= page_size);
                paged.extend(page.directories);
                if page.next_page_token.is_empty() {
                    break;
                }
                tokens.push(page.next_page_token);
            }
            assert_eq!(paged, all.directories, "page size {page_size}");
            let reads = store.gets.load(std::sync::atomic::Ordering::Relaxed) - before;
            assert!(
                reads <= count + 1,
                "{reads} reads for {count} directories: the pages walked again"
            );
            // Each token also resumes in a new call at the same place.
            let mut resumed = get_tree_page(&cas, &root, page_size, "")
                .unwrap()
                .directories;
            for t in &tokens {
                resumed.extend(
                    get_tree_page(&cas, &root, page_size, t)
                        .unwrap()
                        .directories,
                );
            }
            assert_eq!(resumed, all.directories, "page size {page_size}, by token");
        }
    }

    #[tokio::test]
    async fn bad_tokens_are_invalid_argument() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 24)));
        let (root, count) = deep_wide_tree(&cas).await;
        let good = get_tree_page(&cas, &root, 3, "").unwrap().next_page_token;
        let (index, tag) = good.split_once('.').unwrap();
        let forged_tag = format!("{index}.{}", "0".repeat(tag.len()));
        let other_index = format!("{}.{tag}", index.parse::<usize>().unwrap() + 1);
        let past_end = format!("{}.{tag}", count + 5);
        let huge = format!("{}.{tag}", usize::MAX);
        let long = "1".repeat(10_000);
        for bad in [
            "bogus",
            "3",
            "x.0011223344556677",
            "3.zz",
            "3.00112233",
            forged_tag.as_str(),
            other_index.as_str(),
            past_end.as_str(),
            huge.as_str(),
            long.as_str(),
        ] {
            let r = get_tree_page(&cas, &root, 3, bad);
            assert!(
                matches!(r, Err(CasError::InvalidArgument(_))),
                "token {:?}: {r:?}",
                &bad[..bad.len().min(40)]
            );
        }
        assert!(get_tree_page(&cas, &root, 3, &good).is_ok());
    }

    /// A walk that meets more distinct directories than one walk may hold fails with
    /// INVALID_ARGUMENT naming the bound, and gives back what it had charged.
    #[tokio::test]
    async fn a_tree_past_the_bound_on_one_walk_is_refused() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 24))).with_walk_limits(
            100,
            1000,
            MAX_DIRECTORY_BYTES,
        );
        let (root, count) = deep_wide_tree(&cas).await;
        assert!(count > 100);
        let r = get_tree_page(&cas, &root, 10_000, "");
        let Err(CasError::InvalidArgument(m)) = r else {
            panic!("{r:?}");
        };
        assert!(m.contains("more than 100 distinct directories"), "{m}");
        assert_eq!(cas.walked.held(), 0, "the failed walk gave its charge back");
        // A smaller tree under the same bound is walked whole.
        let leaf = put_dir(&cas, &Directory::default()).await;
        let small = Directory {
            directories: vec![node("a", &leaf)],
            ..Default::default()
        };
        let small = put_dir(&cas, &small).await;
        assert_eq!(
            get_tree_page(&cas, &small, 10, "")
                .unwrap()
                .directories
                .len(),
            2
        );
    }

    /// A Directory larger than a walk reads is refused before it is read (INVALID_ARGUMENT
    /// naming the setting), wherever it is in the tree.
    #[tokio::test]
    async fn a_directory_past_the_size_bound_is_refused_unread() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 24))).with_walk_limits(100, 1000, 1000);
        let big = Directory {
            files: vec![crate::proto::reapi::FileNode {
                name: "x".repeat(2000),
                ..Default::default()
            }],
            ..Default::default()
        };
        let big = put_dir(&cas, &big).await;
        let root = Directory {
            directories: vec![node("big", &big)],
            ..Default::default()
        };
        let root = put_dir(&cas, &root).await;
        for (what, tree) in [("the root", big), ("a child", root)] {
            let r = get_tree_page(&cas, &tree, 10, "");
            let Err(CasError::InvalidArgument(m)) = r else {
                panic!("{what}: {r:?}");
            };
            assert!(m.contains("execution.max_directory_bytes"), "{what}: {m}");
        }
        assert_eq!(cas.walked.held(), 0);
    }

    /// Walks held at once share one bound: a walk that would take the directories held past
    /// it fails with `Exhausted` (RESOURCE_EXHAUSTED); once the walks holding them are gone,
    /// it succeeds.
    #[tokio::test]
    async fn walks_held_at_once_share_a_bound_and_give_it_back() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 24))).with_walk_limits(
            1000,
            300,
            MAX_DIRECTORY_BYTES,
        );
        let (root, count) = deep_wide_tree(&cas).await;
        // A stream's walk part-way through the tree holds what it has met.
        let mut first = TreePager::new(&cas, &root, "").unwrap();
        first.next_page(&cas, count / 2).unwrap();
        let held = cas.walked.held();
        assert!(held > 300 - count, "{held} held");
        let r = get_tree_page(&cas, &root, 10_000, "");
        assert!(matches!(r, Err(CasError::Exhausted(_))), "{r:?}");
        assert_eq!(
            cas.walked.held(),
            held,
            "the failed walk gave its charge back"
        );
        drop(first);
        assert_eq!(cas.walked.held(), 0);
        let all = get_tree_page(&cas, &root, 10_000, "").unwrap();
        assert_eq!(all.directories.len(), count);
        assert_eq!(
            cas.walked.held(),
            0,
            "a walk done and dropped holds nothing"
        );
    }

    #[tokio::test]
    async fn pages_stop_at_the_byte_limit_whatever_page_size_asks() {
        use crate::proto::reapi::FileNode;
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 26)));
        let file = DigestFunction::Sha256.digest_of(b"f");
        // Twelve directories of about 500 KB each (distinct by their names), under a root.
        let big = |tag: usize| Directory {
            files: (0..6000)
                .map(|i| FileNode {
                    name: format!("{tag:02}-{i:05}"),
                    digest: Some(file.to_proto()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut children = Vec::new();
        for tag in 0..12 {
            let d = put_dir(&cas, &big(tag)).await;
            children.push(node(&format!("d{tag:02}"), &d));
        }
        let root = put_dir(
            &cas,
            &Directory {
                directories: children,
                ..Default::default()
            },
        )
        .await;
        let (mut token, mut pages, mut seen, mut total) = (String::new(), 0, 0, 0);
        loop {
            let page = get_tree_page(&cas, &root, usize::MAX, &token).unwrap();
            let bytes: usize = page.directories.iter().map(|d| d.encoded_len() + 6).sum();
            assert!(bytes <= MAX_PAGE_BYTES, "a page of {bytes} bytes");
            assert!(!page.directories.is_empty());
            total += bytes;
            seen += page.directories.len();
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, 13, "every directory once");
        assert!(total > 2 * MAX_PAGE_BYTES, "{total} bytes in all");
        // The directories are all of one size, four to a page: the fewest pages possible.
        assert_eq!(
            pages,
            total.div_ceil(MAX_PAGE_BYTES),
            "{total} bytes in {pages} pages"
        );
    }
}
