//! GetTree walks paused between calls, so a client that resumes with a page token in a new
//! call continues the walk instead of walking again from the root to the token's index.
//!
//! A GetTree stream keeps its [`TreePager`] across its own pages (`tree_stream.rs`); when the
//! stream ends before the walk does (the client stopped reading, the connection broke), the
//! pager is parked here under (instance, root, the token of its position). A call with
//! exactly that token takes it out ([`PausedTrees::parked`]) and goes on from there. Anything
//! else (a token never issued, one whose pager was evicted or already taken by another call,
//! a server restart) walks again ([`PausedTrees::rewalk`], [`TreePager::new`]), which re-walks
//! to the token's index and checks the token there: tokens stay valid and checked either way,
//! the cache only saves reads.
//!
//! When it hits: the walk is parked at the last page the stream *produced*, or at the start of
//! the page it was making when it stopped to wait for the disk. A client that took every page
//! produced and then called again (or a stream ended at a page boundary) finds it. A stream
//! broken mid-flight has usually produced pages the client never got (tonic encodes ahead, up
//! to the HTTP/2 window), so its client's token names an earlier position and the call walks
//! again. Rewinding a parked walk over a bounded history of the pages it produced would catch
//! that case too; not done, as the history would cost up to a window (4 MiB) per parked walk.
//!
//! Bounded on purpose: every paused walk holds its queue, the set of directories it has met
//! and the next directory, and clients choose how many walks to abandon. At most
//! [`MAX_PAUSED`] walks holding at most [`MAX_HELD_BYTES`] between them are kept; parking past
//! either bound evicts the oldest parked walks first, and a walk too big for the whole budget
//! is not parked at all. An evicted walk costs only its re-walk when (if ever) it is resumed.

use super::tree::TreePager;
use super::{Cas, CasError};
use crate::digest::Digest;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most walks parked at once.
pub const MAX_PAUSED: usize = 256;
/// Most memory the parked walks hold between them ([`TreePager::held_bytes`]).
pub const MAX_HELD_BYTES: usize = 32 << 20;

/// Which paused walk: the instance and root of the call, and the token of the position.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    instance: String,
    root: Digest,
    token: String,
}

/// The walks parked by GetTree streams that ended early, oldest first.
#[derive(Debug)]
pub struct PausedTrees {
    max_paused: usize,
    max_held: usize,
    parked: Mutex<Parked>,
    /// Calls with a token that found their walk parked.
    continued: AtomicU64,
    /// Calls with a token that walked again from the root.
    rewalked: AtomicU64,
}

#[derive(Debug, Default)]
struct Parked {
    walks: VecDeque<(Key, TreePager)>,
    /// Sum of `held_bytes()` over `walks`.
    held: usize,
}

impl Default for PausedTrees {
    fn default() -> Self {
        Self::with_bounds(MAX_PAUSED, MAX_HELD_BYTES)
    }
}

impl PausedTrees {
    /// A cache that keeps at most `max_paused` walks holding at most `max_held` bytes.
    pub fn with_bounds(max_paused: usize, max_held: usize) -> Self {
        Self {
            max_paused,
            max_held,
            parked: Mutex::new(Parked::default()),
            continued: AtomicU64::new(0),
            rewalked: AtomicU64::new(0),
        }
    }

    /// The walk of `root` positioned at `page_token` (empty for the start): the parked one
    /// if there is one, else a new walk to the token (which checks it).
    #[cfg(test)]
    pub fn resume(
        &self,
        cas: &Cas,
        instance: &str,
        root: &Digest,
        page_token: &str,
    ) -> Result<TreePager, CasError> {
        match self.parked(instance, root, page_token) {
            Some(pager) => Ok(pager),
            None => self.rewalk(cas, root, page_token),
        }
    }

    /// The walk of `root` at `page_token` if it can be had without reading: a walk from the
    /// start for an empty token, else the one parked under that token, taken out.
    pub fn parked(&self, instance: &str, root: &Digest, page_token: &str) -> Option<TreePager> {
        if page_token.is_empty() {
            return Some(TreePager::start(*root));
        }
        let key = Key {
            instance: instance.to_owned(),
            root: *root,
            token: page_token.to_owned(),
        };
        let mut parked = self.parked.lock().expect("paused trees lock");
        let at = parked.walks.iter().position(|(k, _)| *k == key)?;
        let (_, pager) = parked.walks.remove(at)?;
        parked.held -= pager.held_bytes();
        self.continued.fetch_add(1, Ordering::Relaxed);
        Some(pager)
    }

    /// A new walk of `root` to `page_token`'s position, for a token whose walk is not parked
    /// (reads every directory before it, so it may wait on the disk).
    pub fn rewalk(
        &self,
        cas: &Cas,
        root: &Digest,
        page_token: &str,
    ) -> Result<TreePager, CasError> {
        self.rewalked.fetch_add(1, Ordering::Relaxed);
        TreePager::new(cas, root, page_token)
    }

    /// Parks `pager` (a walk of a call on `instance` that ends here) for a later call with
    /// its token. A finished walk, or one bigger than the whole budget, is dropped.
    pub fn pause(&self, instance: &str, pager: TreePager) {
        let Some(token) = pager.token() else {
            return;
        };
        if pager.held_bytes() > self.max_held || self.max_paused == 0 {
            return;
        }
        let key = Key {
            instance: instance.to_owned(),
            root: *pager.root(),
            token,
        };
        let mut parked = self.parked.lock().expect("paused trees lock");
        // The same position parked twice (two streams stopped at one token) is kept once.
        if let Some(i) = parked.walks.iter().position(|(k, _)| *k == key)
            && let Some((_, old)) = parked.walks.remove(i)
        {
            parked.held -= old.held_bytes();
        }
        while parked.walks.len() >= self.max_paused
            || parked.held + pager.held_bytes() > self.max_held
        {
            let Some((_, old)) = parked.walks.pop_front() else {
                break;
            };
            parked.held -= old.held_bytes();
        }
        parked.held += pager.held_bytes();
        parked.walks.push_back((key, pager));
    }

    /// Gauges for `/metrics`: walks parked, the memory they hold, and the calls that
    /// resumed a parked walk or walked again.
    pub fn gauges(&self) -> Vec<(&'static str, &'static str, i64)> {
        let (paused, held) = {
            let parked = self.parked.lock().expect("paused trees lock");
            (parked.walks.len(), parked.held)
        };
        vec![
            (
                "get_tree_paused_walks",
                "GetTree walks parked for a resuming call (bounded, oldest evicted first)",
                i64::try_from(paused).unwrap_or(i64::MAX),
            ),
            (
                "get_tree_paused_bytes",
                "Memory held by the parked GetTree walks (about; bounded)",
                i64::try_from(held).unwrap_or(i64::MAX),
            ),
            (
                "get_tree_resumes_continued",
                "GetTree calls with a page token that continued a parked walk",
                i64::try_from(self.continued.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            ),
            (
                "get_tree_resumes_rewalked",
                "GetTree calls with a page token that walked again from the root",
                i64::try_from(self.rewalked.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            ),
        ]
    }

    /// Calls with a token so far: (continued a parked walk, walked again).
    pub fn resumes(&self) -> (u64, u64) {
        (
            self.continued.load(Ordering::Relaxed),
            self.rewalked.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::tree::tests::{Counting, deep_wide_tree};
    use crate::cas::{TreePage, get_tree_page};
    use crate::storage::MemoryStore;
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;

    /// Pages of `page_size` in separate calls, each resuming with the last token through
    /// `trees` and parking its walk on `instance` when done; the directories in order.
    fn by_calls(
        trees: &PausedTrees,
        cas: &Cas,
        instance: &str,
        root: &Digest,
        page_size: usize,
    ) -> (Vec<crate::proto::reapi::Directory>, usize) {
        let mut token = String::new();
        let mut out = Vec::new();
        let mut calls = 0;
        loop {
            let mut pager = trees.resume(cas, instance, root, &token).unwrap();
            let TreePage {
                directories,
                next_page_token,
            } = pager.next_page(cas, page_size).unwrap();
            calls += 1;
            out.extend(directories);
            trees.pause(instance, pager);
            if next_page_token.is_empty() {
                return (out, calls);
            }
            token = next_page_token;
        }
    }

    #[tokio::test]
    async fn resumed_calls_continue_the_parked_walk() {
        let store = Arc::new(Counting {
            inner: MemoryStore::new(1 << 24),
            gets: 0.into(),
        });
        let cas = Cas::new(store.clone());
        let (root, count) = deep_wide_tree(&cas).await;
        let all = get_tree_page(&cas, &root, 10_000, "").unwrap().directories;
        let trees = PausedTrees::default();
        for page_size in [1, 3, 7, 200] {
            let before = store.gets.load(Relaxed);
            let (before_continued, before_rewalked) = trees.resumes();
            let (paged, calls) = by_calls(&trees, &cas, "main", &root, page_size);
            assert_eq!(paged, all, "page size {page_size}");
            let reads = store.gets.load(Relaxed) - before;
            assert!(
                reads <= count + 1,
                "{reads} reads for {count} directories in {calls} calls: resumed calls walked again"
            );
            let (continued, rewalked) = trees.resumes();
            assert_eq!(continued - before_continued, calls as u64 - 1);
            assert_eq!(rewalked, before_rewalked);
        }
        assert_eq!(trees.gauges()[0].2, 0, "finished walks are not kept");

        // Another instance's call with the same token finds no walk: it re-walks, and its
        // pages are the same.
        let mut pager = trees.resume(&cas, "main", &root, "").unwrap();
        let first = pager.next_page(&cas, 5).unwrap();
        trees.pause("main", pager);
        let before = store.gets.load(Relaxed);
        let other = trees
            .resume(&cas, "other", &root, &first.next_page_token)
            .unwrap()
            .next_page(&cas, 5)
            .unwrap();
        assert!(store.gets.load(Relaxed) - before > 5, "walked again");
        let parked = trees
            .resume(&cas, "main", &root, &first.next_page_token)
            .unwrap()
            .next_page(&cas, 5)
            .unwrap();
        assert_eq!(other.directories, parked.directories);
        assert_eq!(other.directories, all[5..10]);
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_with_walks_parked() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 24)));
        let (root, _) = deep_wide_tree(&cas).await;
        let trees = PausedTrees::default();
        let mut pager = trees.resume(&cas, "", &root, "").unwrap();
        let good = pager.next_page(&cas, 3).unwrap().next_page_token;
        trees.pause("", pager);
        let (index, tag) = good.split_once('.').unwrap();
        let forged = format!("{index}.{}", "0".repeat(tag.len()));
        let shifted = format!("{}.{tag}", index.parse::<usize>().unwrap() + 1);
        for bad in ["bogus", forged.as_str(), shifted.as_str()] {
            let r = trees.resume(&cas, "", &root, bad);
            assert!(
                matches!(r, Err(CasError::InvalidArgument(_))),
                "token {bad:?}: {r:?}"
            );
        }
        assert!(trees.resume(&cas, "", &root, &good).is_ok());
        assert_eq!(trees.resumes(), (1, 3));
    }

    /// Past either bound the oldest walks go first; a resume of an evicted one re-walks and
    /// still gets its page.
    #[tokio::test]
    async fn bounded_oldest_evicted_first() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 24)));
        let (root, _) = deep_wide_tree(&cas).await;
        let all = get_tree_page(&cas, &root, 10_000, "").unwrap().directories;
        let trees = PausedTrees::with_bounds(2, MAX_HELD_BYTES);
        let mut tokens = Vec::new();
        for size in [1, 2, 3] {
            let mut pager = trees.resume(&cas, "", &root, "").unwrap();
            tokens.push((size, pager.next_page(&cas, size).unwrap().next_page_token));
            trees.pause("", pager);
        }
        assert_eq!(trees.gauges()[0].2, 2, "at most 2 kept");
        for (size, token) in &tokens {
            let page = trees
                .resume(&cas, "", &root, token)
                .unwrap()
                .next_page(&cas, 4)
                .unwrap();
            assert_eq!(page.directories, all[*size..size + 4]);
        }
        assert_eq!(trees.resumes(), (2, 1), "the oldest (size 1) was evicted");

        // A walk holding more than the whole budget is not kept.
        let small = PausedTrees::with_bounds(8, 300);
        let mut pager = small.resume(&cas, "", &root, "").unwrap();
        let token = pager.next_page(&cas, 2).unwrap().next_page_token;
        assert!(pager.held_bytes() > 300);
        small.pause("", pager);
        assert_eq!(small.gauges()[0].2, 0);
        small.resume(&cas, "", &root, &token).unwrap();
        assert_eq!(small.resumes(), (0, 1));
    }
}
