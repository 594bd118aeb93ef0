//! A GetTree stream's walk, one page at a time, made where it does not stall the runtime.
//!
//! A page of directories whose bytes are all in memory is made at once, on the request's task
//! (a hot tree costs no thread hand-off). From the first directory on disk, the rest of the
//! page is made on a blocking thread under the [`TREE_WALKS`](super::TREE_WALKS) slots, and so
//! is a resumed walk that must walk again to its token. A stream that ends before its walk
//! does parks the walk in [`PausedTrees`] for a call resuming with its token: whichever holder
//! lets go last (the stream, or a blocking thread finishing a page for a stream already
//! gone) parks it. Finished walks, failed ones and pages half made are not kept.

use super::tree::{TreePage, TreePager};
use super::tree_pagers::PausedTrees;
use super::{Cas, CasError};
use crate::digest::Digest;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The walk of one GetTree stream.
pub struct StreamedWalk {
    trees: Arc<PausedTrees>,
    instance: String,
    /// Locked by whoever makes the stream's page, one page at a time (never across an await).
    pager: Mutex<Option<TreePager>>,
}

impl StreamedWalk {
    /// The walk of `root` positioned at `page_token` (on `instance`), and its first page.
    pub async fn start(
        cas: &Cas,
        trees: Arc<PausedTrees>,
        instance: String,
        root: Digest,
        page_token: String,
        page_size: usize,
    ) -> Result<(Arc<Self>, TreePage), CasError> {
        let pager = trees.parked(&instance, &root, &page_token);
        let walk = Arc::new(Self {
            trees,
            instance,
            pager: Mutex::new(pager),
        });
        if walk.lock().is_none() {
            // A token whose walk is not parked: walk again to it, reading every directory
            // before it.
            let w = walk.clone();
            cas.walk_on_blocking_thread(move |cas| {
                let pager = w.trees.rewalk(cas, &root, &page_token)?;
                *w.lock() = Some(pager);
                Ok(())
            })
            .await?;
        }
        let first = walk.next_page(cas, page_size).await?;
        Ok((walk, first))
    }

    /// The walk's next page: empty once a page has failed (which ends the stream).
    pub async fn next_page(
        self: &Arc<Self>,
        cas: &Cas,
        page_size: usize,
    ) -> Result<TreePage, CasError> {
        match self.with_pager(|p| p.page_if_cached(cas, page_size))? {
            None => return Ok(TreePage::default()),
            Some(Some(page)) => return Ok(page),
            // Stopped before a directory on disk: the rest of the page waits for the disk.
            Some(None) => {}
        }
        let walk = self.clone();
        cas.walk_on_blocking_thread(move |cas| {
            let page = walk.with_pager(|p| p.next_page(cas, page_size))?;
            Ok(page.unwrap_or_default())
        })
        .await
    }

    /// `make` run on the walk; `None` if there is none (a page failed before). A walk that
    /// fails part-way is dropped: it is not a position to resume from.
    fn with_pager<T>(
        &self,
        make: impl FnOnce(&mut TreePager) -> Result<T, CasError>,
    ) -> Result<Option<T>, CasError> {
        let mut pager = self.lock();
        let Some(p) = pager.as_mut() else {
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
    use crate::cas::read::tests::{OpenOnDrop, slow_disk, until_waiting};
    use crate::cas::tree::get_tree_page;
    use crate::cas::tree::tests::deep_wide_tree;
    use crate::digest::DigestFunction;
    use crate::proto::reapi::Directory;
    use crate::storage::MemoryStore;
    use prost::Message;
    use std::time::Duration;

    const PAGE: usize = 50;
    const WAIT: Duration = Duration::from_secs(10);

    /// With every walk slot taken, pages of directories in memory are still made (on the
    /// runtime); a page that meets a directory on disk waits for a slot, reads it on a
    /// blocking thread, and finishes the same page: the pages together are the whole walk,
    /// each directory once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_pages_take_no_walk_slot_and_a_page_on_disk_goes_on_where_it_stopped() {
        // The tree's directories in walk order, from a store of its own.
        let scratch = Cas::new(Arc::new(MemoryStore::new(1 << 24)));
        let (root, count) = deep_wide_tree(&scratch).await;
        assert!(
            count > 4 * PAGE,
            "{count} directories: enough for four pages"
        );
        let all = get_tree_page(&scratch, &root, 10_000, "")
            .unwrap()
            .directories;
        let key =
            |dir: &Directory| Cas::key(&DigestFunction::Sha256.digest_of(&dir.encode_to_vec()));
        // The same tree where the 4th directory of the third page is on disk, and so is the
        // first of the fourth page (whose hash the third page's token names).
        let store = slow_disk(vec![key(&all[2 * PAGE + 3]), key(&all[3 * PAGE])]);
        let _open = OpenOnDrop(store.clone());
        let cas = Cas::new(store.clone());
        deep_wide_tree(&cas).await;
        let taken = cas
            .walks
            .clone()
            .acquire_many_owned(TREE_WALKS as u32)
            .await
            .unwrap();

        let trees = Arc::new(PausedTrees::default());
        let start = StreamedWalk::start(&cas, trees, String::new(), root, String::new(), PAGE);
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
}
