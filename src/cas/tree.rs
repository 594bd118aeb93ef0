//! GetTree: the directories reachable from a root, breadth-first, in pages.

use super::{Cas, CasError};
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use prost::Message;
use std::collections::{HashSet, VecDeque};

/// One page of a tree walk.
#[derive(Debug, Default)]
pub struct TreePage {
    /// Directories of this page, in breadth-first order.
    pub directories: Vec<Directory>,
    /// Token for the next page; empty on the last page.
    pub next_page_token: String,
}

/// Walks the tree under `root` breadth-first, visiting each distinct directory once, and
/// returns up to `page_size` directories starting at `page_token` (an opaque position from an
/// earlier page; empty for the start). Directories missing from the CAS are left out with their
/// subtrees, as the spec asks; a missing root is `BlobNotFound`.
pub fn get_tree_page(
    cas: &Cas,
    root: &Digest,
    page_size: usize,
    page_token: &str,
) -> Result<TreePage, CasError> {
    let skip: usize = if page_token.is_empty() {
        0
    } else {
        page_token
            .parse()
            .map_err(|_| CasError::InvalidArgument(format!("invalid page_token {page_token:?}")))?
    };
    let page_size = page_size.max(1);
    let mut queue = VecDeque::from([*root]);
    let mut seen = HashSet::from([*root]);
    let mut index = 0usize;
    let mut page = TreePage::default();
    while let Some(d) = queue.pop_front() {
        let Some(blob) = cas.get(&d)? else {
            if d == *root {
                return Err(CasError::BlobNotFound(d));
            }
            continue;
        };
        let dir = Directory::decode(blob.to_bytes()).map_err(|e| CasError::BadMessage {
            what: "Directory",
            reason: format!("{d}: {e}"),
        })?;
        for child in &dir.directories {
            let c =
                Digest::from_field(root.function, child.digest.as_ref(), "DirectoryNode.digest")?;
            if seen.insert(c) {
                queue.push_back(c);
            }
        }
        if index >= skip {
            if page.directories.len() == page_size {
                page.next_page_token = index.to_string();
                return Ok(page);
            }
            page.directories.push(dir);
        }
        index += 1;
    }
    if skip > index {
        return Err(CasError::InvalidArgument(format!(
            "page_token {page_token:?} is past the end of the tree"
        )));
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::proto::reapi::DirectoryNode;
    use crate::storage::MemoryStore;
    use bytes::Bytes;
    use std::sync::Arc;

    async fn put_dir(cas: &Cas, dir: &Directory) -> Digest {
        let bytes = dir.encode_to_vec();
        let d = DigestFunction::Sha256.digest_of(&bytes);
        cas.put(&d, Bytes::from(bytes)).await.unwrap();
        d
    }

    fn node(name: &str, d: &Digest) -> DirectoryNode {
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
}
