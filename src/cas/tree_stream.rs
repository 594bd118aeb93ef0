//! A GetTree stream's walk, one page at a time, made where it does not stall the runtime.
//!
//! A page of directories whose bytes are all in memory is made on the request's task (a hot
//! tree costs no thread hand-off), [`RUNTIME_BATCH`] directories at a time with other tasks
//! let in between. From the first directory on disk, the rest of the page is made on a
//! blocking thread under the [`TREE_WALKS`](super::TREE_WALKS) slots, and so is a resumed
//! call whose walk must be walked again to its token.
//!
//! A stream that ends before its walk does parks the walk in [`PausedTrees`] for a call
//! resuming with its token: whichever holder lets go last (the stream, or a blocking thread
//! finishing a page for a stream already gone) parks it. A walk stopped part-way through a
//! page (waiting for a slot) is parked at the page's start, the token its client holds.
//! Finished walks and failed ones are not kept.

use super::tree::{CachedPage, TreePage, TreePager};
use super::tree_pagers::PausedTrees;
use super::{Cas, CasError};
use crate::digest::Digest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Directories a page reads on the runtime before it lets other tasks run: each costs a
/// lookup, a look at the page cache and a decode (about 0.7 µs for a small one here), so a
/// 2 MiB page of tiny directories would otherwise hold a worker thread for ~15 ms. A default
/// page (1,000) is one batch: letting other tasks in costs a trip through the scheduler and
/// the I/O driver, which at 128 a batch cost 0.87x calls/s on hot 1,001-directory trees.
const RUNTIME_BATCH: usize = 1024;

/// How long a stream may go without asking for a page before its walk is dropped, giving its
/// directories back to the bound all walks share (`cache.max_walked_directories`): a client
/// that stops reading a GetTree stream holds it for at most about twice this long. Its stream
/// then ends with RESOURCE_EXHAUSTED (never a tree cut short), and a call with its last page
/// token goes on.
pub const STALLED_WALK: Duration = Duration::from_secs(60);

/// The walk of one GetTree stream.
pub struct StreamedWalk {
    trees: Arc<PausedTrees>,
    instance: String,
    /// Locked by whoever makes the stream's page, one page at a time (never across an await).
    pager: Mutex<Option<TreePager>>,
    /// When the stream's last page (or walk to a token) was made, in ms after `born`: idle
    /// time counts from there while no page is being made.
    asked: AtomicU64,
    /// Pages being made (or walks to a token) now: the server's time, never a stall.
    making: AtomicU64,
    born: Instant,
    /// Set when the walk was dropped for going unasked: the stream ends with an error.
    stalled: AtomicBool,
}

impl StreamedWalk {
    /// The walk of `root` positioned at `page_token` (on `instance`), and its first page.
    /// The walk is dropped if the stream then goes `stall` without asking for a page
    /// ([`STALLED_WALK`] for the server's streams).
    pub async fn start(
        cas: &Cas,
        trees: Arc<PausedTrees>,
        instance: String,
        root: Digest,
        page_token: String,
        page_size: usize,
        stall: Duration,
    ) -> Result<(Arc<Self>, TreePage), CasError> {
        let pager = trees.parked(&instance, &root, &page_token);
        let found = pager.is_some();
        let walk = Arc::new(Self {
            trees,
            instance,
            pager: Mutex::new(pager),
            asked: AtomicU64::new(0),
            making: AtomicU64::new(0),
            born: Instant::now(),
            stalled: AtomicBool::new(false),
        });
        Self::watch(&walk, stall);
        if found {
            let first = walk.next_page(cas, page_size).await?;
            return Ok((walk, first));
        }
        // A token whose walk is not parked: walk again to it, reading every directory before
        // it, and make the first page there too.
        let first = {
            let _making = Making::new(&walk);
            let w = walk.clone();
            cas.walk_on_blocking_thread(move |cas| {
                let pager = w.trees.rewalk(cas, &root, &page_token)?;
                *w.lock() = Some(pager);
                w.page_waiting(cas, page_size)
            })
            .await?
        };
        Ok((walk, first))
    }

    /// The walk's next page: empty once a page has failed (which ends the stream).
    pub async fn next_page(
        self: &Arc<Self>,
        cas: &Cas,
        page_size: usize,
    ) -> Result<TreePage, CasError> {
        let _making = Making::new(self);
        loop {
            match self.with_pager(|p| p.page_if_cached(cas, page_size, RUNTIME_BATCH))? {
                None => return Ok(TreePage::default()),
                Some(CachedPage::Made(page)) => return Ok(page),
                // A batch made on the runtime: other tasks go first, then the next one.
                Some(CachedPage::Batch) => tokio::task::yield_now().await,
                // Stopped before a directory on disk: the rest of the page waits for the disk.
                Some(CachedPage::OnDisk) => break,
            }
        }
        let walk = self.clone();
        cas.walk_on_blocking_thread(move |cas| walk.page_waiting(cas, page_size))
            .await
    }

    /// The walk's next page, its reads waiting on the disk (on a blocking thread).
    fn page_waiting(&self, cas: &Cas, page_size: usize) -> Result<TreePage, CasError> {
        let page = self.with_pager(|p| p.next_page(cas, page_size))?;
        Ok(page.unwrap_or_default())
    }

    /// `make` run on the walk; `None` if there is none (a page failed before). A walk that
    /// fails part-way is dropped: it is not a position to resume from. A walk dropped for
    /// going unasked is an error.
    fn with_pager<T>(
        &self,
        make: impl FnOnce(&mut TreePager) -> Result<T, CasError>,
    ) -> Result<Option<T>, CasError> {
        let mut pager = self.lock();
        let Some(p) = pager.as_mut() else {
            if self.stalled.load(Ordering::Relaxed) {
                return Err(CasError::Exhausted(
                    "this GetTree stream went unread too long, so its walk was dropped to free \
                     what it held; call again with the last page token received"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let made = make(p);
        if made.is_err() {
            *pager = None;
        }
        made.map(Some)
    }

    fn lock(&self) -> MutexGuard<'_, Option<TreePager>> {
        self.pager.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn age_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Drops the walk once its stream has gone `stall` without asking for a page (looked at
    /// every `stall`). The watch holds the walk only while it looks.
    fn watch(walk: &Arc<Self>, stall: Duration) {
        let walk = Arc::downgrade(walk);
        let stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(stall).await;
                let Some(w) = walk.upgrade() else {
                    return;
                };
                let idle = w.age_ms().saturating_sub(w.asked.load(Ordering::Relaxed));
                // A page being made (waiting for a walk slot, or for the disk): not stalled.
                // No walk (done, or failed): nothing to drop.
                if idle >= stall_ms
                    && w.making.load(Ordering::SeqCst) == 0
                    && let Ok(mut pager) = w.pager.try_lock()
                    && let Some(p) = pager.take()
                {
                    w.stalled.store(true, Ordering::Relaxed);
                    drop(pager);
                    tracing::debug!(root = %p.root(), "GetTree: an unread stream's walk dropped");
                    return;
                }
            }
        });
    }
}

/// A page being made for a stream (or its walk to a token): the watch leaves the walk alone
/// meanwhile, and the stream counts as having asked when it ends, however it ends.
struct Making<'a>(&'a StreamedWalk);

impl<'a> Making<'a> {
    fn new(walk: &'a StreamedWalk) -> Self {
        walk.making.fetch_add(1, Ordering::SeqCst);
        Self(walk)
    }
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        self.0.asked.store(self.0.age_ms(), Ordering::Relaxed);
        self.0.making.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for StreamedWalk {
    fn drop(&mut self) {
        let pager = self.pager.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(pager) = pager.take() {
            self.trees.pause(&self.instance, pager);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::TREE_WALKS;
    use crate::cas::read::tests::{OpenOnDrop, SlowDisk, slow_disk, until_waiting};
    use crate::cas::tree::get_tree_page;
    use crate::cas::tree::tests::{deep_wide_tree, node, put_dir};
    use crate::digest::DigestFunction;
    use crate::proto::reapi::{Directory, FileNode};
    use crate::storage::MemoryStore;
    use prost::Message;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const PAGE: usize = 50;
    const WAIT: Duration = Duration::from_secs(10);

    /// The deep, wide test tree in a store where its directories at `on_disk` (indexes in walk
    /// order) are on disk, with every walk slot taken; its root and its directories in walk
    /// order.
    async fn slots_taken_and_on_disk(
        on_disk: &[usize],
    ) -> (
        Cas,
        Arc<SlowDisk>,
        tokio::sync::OwnedSemaphorePermit,
        Digest,
        Vec<Directory>,
    ) {
        // The walk order, from a store of its own.
        let scratch = Cas::new(Arc::new(MemoryStore::new(1 << 24)));
        let (root, _) = deep_wide_tree(&scratch).await;
        let all = get_tree_page(&scratch, &root, 10_000, "")
            .unwrap()
            .directories;
        let key = |i: &usize| Cas::key(&DigestFunction::Sha256.digest_of(&all[*i].encode_to_vec()));
        let store = slow_disk(on_disk.iter().map(key).collect());
        let cas = Cas::new(store.clone());
        deep_wide_tree(&cas).await;
        let slots = cas.walks.clone();
        let taken = slots.acquire_many_owned(TREE_WALKS as u32).await.unwrap();
        (cas, store, taken, root, all)
    }

    /// With every walk slot taken, pages of directories in memory are still made (on the
    /// runtime); a page that meets a directory on disk waits for a slot, reads it on a
    /// blocking thread, and finishes the same page: the pages together are the whole walk,
    /// each directory once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_pages_take_no_walk_slot_and_a_page_on_disk_goes_on_where_it_stopped() {
        // The 4th directory of the third page is on disk, and so is the first of the fourth
        // page (whose hash the third page's token names).
        let (cas, store, taken, root, all) =
            slots_taken_and_on_disk(&[2 * PAGE + 3, 3 * PAGE]).await;
        let _open = OpenOnDrop(store.clone());
        assert!(
            all.len() > 4 * PAGE,
            "{} directories: enough for four pages",
            all.len()
        );

        let trees = Arc::new(PausedTrees::default());
        let start = StreamedWalk::start(
            &cas,
            trees,
            String::new(),
            root,
            String::new(),
            PAGE,
            STALLED_WALK,
        );
        let (walk, first) = tokio::time::timeout(WAIT, start)
            .await
            .expect("a page of cached directories needs no walk slot")
            .unwrap();
        let mut got = first.directories;
        let second = tokio::time::timeout(WAIT, walk.next_page(&cas, PAGE))
            .await
            .expect("nor does the next")
            .unwrap();
        got.extend(second.directories);

        let (w, c) = (walk.clone(), cas.clone());
        let third = tokio::spawn(async move { w.next_page(&c, PAGE).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !third.is_finished(),
            "a page meeting a directory on disk waits for a walk slot"
        );
        assert_eq!(
            store.waiting.load(Ordering::SeqCst),
            0,
            "and reads nothing from disk before it has one"
        );
        drop(taken);
        until_waiting(&store, 1);
        store.open_gate();
        let third = tokio::time::timeout(WAIT, third)
            .await
            .expect("made once a slot is free and the disk answers")
            .unwrap()
            .unwrap();
        assert_eq!(third.directories.len(), PAGE, "one whole page");
        assert!(!third.next_page_token.is_empty());
        got.extend(third.directories);
        loop {
            let page = walk.next_page(&cas, PAGE).await.unwrap();
            got.extend(page.directories);
            if page.next_page_token.is_empty() {
                break;
            }
        }
        assert_eq!(
            got, all,
            "the pages are the walk, each directory once, in order"
        );
    }

    /// A stream dropped while its page waits for a walk slot (stopped before a directory on
    /// disk) leaves its walk parked at that page's start: a call with the token its client
    /// holds continues it (no walk again), and, with a smaller page size, gets the rest of the
    /// tree in order in pages of that size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_walk_dropped_waiting_for_a_slot_is_parked_at_its_page() {
        // The 4th directory of the second page is on disk (reads of it do not wait).
        let (cas, store, taken, root, all) = slots_taken_and_on_disk(&[PAGE + 3]).await;
        store.open_gate();
        let trees = Arc::new(PausedTrees::default());

        let start = StreamedWalk::start(
            &cas,
            trees.clone(),
            "i".into(),
            root,
            String::new(),
            PAGE,
            STALLED_WALK,
        );
        let (walk, first) = start.await.unwrap();
        let token = first.next_page_token;
        let (w, c) = (walk.clone(), cas.clone());
        let second = tokio::spawn(async move { w.next_page(&c, PAGE).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "the second page waits for a slot");
        second.abort();
        assert!(second.await.unwrap_err().is_cancelled());
        drop(walk);
        drop(taken);

        let small = 2;
        let resumed = StreamedWalk::start(
            &cas,
            trees.clone(),
            "i".into(),
            root,
            token,
            small,
            STALLED_WALK,
        );
        let (walk, page) = resumed.await.unwrap();
        assert_eq!(
            trees.resumes(),
            (1, 0),
            "the parked walk continued, no walk again"
        );
        let mut got = Vec::new();
        let mut page = page;
        loop {
            assert!(page.directories.len() <= small, "pages of the size asked");
            got.extend(page.directories);
            if page.next_page_token.is_empty() {
                break;
            }
            page = walk.next_page(&cas, small).await.unwrap();
        }
        assert_eq!(
            got,
            all[PAGE..],
            "the rest of the tree, each directory once, in order"
        );
    }

    /// The first page (of up to `page_size`) of a root over `children`, made on a one-thread
    /// runtime beside a task that counts its turns; the page and the turns that task got
    /// before the page was made.
    async fn first_page_beside_another_task(
        cas: &Cas,
        children: Vec<crate::proto::reapi::DirectoryNode>,
        page_size: usize,
    ) -> (TreePage, usize) {
        let root = Directory {
            directories: children,
            ..Default::default()
        };
        let root = put_dir(cas, &root).await;
        let turns = Arc::new(AtomicUsize::new(0));
        let t = turns.clone();
        let other = tokio::spawn(async move {
            loop {
                t.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        let trees = Arc::new(PausedTrees::default());
        let start = StreamedWalk::start(
            cas,
            trees,
            String::new(),
            root,
            String::new(),
            page_size,
            STALLED_WALK,
        );
        let (_walk, page) = start.await.unwrap();
        let turns = turns.load(Ordering::SeqCst);
        other.abort();
        (page, turns)
    }

    /// A page of more cached directories than a batch lets other tasks run while it is made,
    /// and is still the whole walk.
    #[tokio::test(flavor = "current_thread")]
    async fn a_long_cached_page_lets_other_tasks_run() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 24)));
        // A root over more distinct leaves than a batch reads.
        let mut leaves = Vec::new();
        for i in 0..RUNTIME_BATCH + 10 {
            let leaf = Directory {
                files: vec![FileNode {
                    name: format!("f{i}"),
                    ..Default::default()
                }],
                ..Default::default()
            };
            leaves.push(node(&format!("d{i}"), &put_dir(&cas, &leaf).await));
        }
        let (page, turns) = first_page_beside_another_task(&cas, leaves, 10_000).await;
        assert!(turns > 0, "another task ran while the page was made");
        assert_eq!(
            page.directories.len(),
            RUNTIME_BATCH + 11,
            "one page, the whole walk"
        );
        assert!(page.next_page_token.is_empty());
    }

    /// Directories missing from the CAS count against a batch too: a root listing more absent
    /// children than a batch lets other tasks run while they are looked for.
    #[tokio::test(flavor = "current_thread")]
    async fn absent_children_let_other_tasks_run_too() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 26)));
        let absent: Vec<_> = (0..3 * RUNTIME_BATCH)
            .map(|i| {
                let d = DigestFunction::Sha256.digest_of(format!("absent {i}").as_bytes());
                node(&format!("d{i}"), &d)
            })
            .collect();
        let (page, turns) = first_page_beside_another_task(&cas, absent, 10).await;
        assert!(
            turns > 0,
            "another task ran while the absent children were looked for"
        );
        assert_eq!(page.directories.len(), 1, "the root alone");
        assert!(page.next_page_token.is_empty());
    }

    /// A walk whose stream stops asking for pages is dropped after the stall time, giving its
    /// directories back, and its stream then ends with RESOURCE_EXHAUSTED, never a tree cut
    /// short; a walk asked for pages in time is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_walk_left_unasked_is_dropped_and_its_stream_ends_with_an_error() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 24)));
        let (root, _) = deep_wide_tree(&cas).await;
        let trees = Arc::new(PausedTrees::default());
        let start = |stall| {
            StreamedWalk::start(
                &cas,
                trees.clone(),
                String::new(),
                root,
                String::new(),
                10,
                stall,
            )
        };

        // Asked for a page every 200 ms for 3 s: longer than its stall time, never as long
        // without a page.
        let (kept, _) = start(Duration::from_secs(2)).await.unwrap();
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            kept.next_page(&cas, 10).await.expect("asked for in time");
        }
        let held = cas.walked.held();
        assert!(held > 0);

        let (left, _) = start(Duration::from_millis(100)).await.unwrap();
        for _ in 0..200 {
            if cas.walked.held() == held {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            cas.walked.held(),
            held,
            "the unasked walk gave its directories back"
        );
        let r = left.next_page(&cas, 10).await;
        let Err(CasError::Exhausted(m)) = r else {
            panic!("{r:?}");
        };
        assert!(m.contains("last page token"), "{m}");
        kept.next_page(&cas, 10)
            .await
            .expect("the other walk goes on");
    }
}
