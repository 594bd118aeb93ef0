//! SpliceBlob with a client's own chunk boundaries: the spliced list is never kept as the
//! blob's split, so SplitBlob always answers FastCDC 2020 with the advertised parameters.
//! Found by an adversarial review.

#[path = "common/data.rs"]
mod data;

use bytes::Bytes;
use kiln::cas::{Cas, chunking};
use kiln::digest::{Digest, DigestFunction};
use kiln::storage::{Blob, MemoryStore};
use std::sync::Arc;

fn sha(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

/// SplitBlob answers `chunking_function = FAST_CDC_2020` with the advertised parameters, so its
/// chunks must be the ones FastCDC cuts. A client's splice that merely *claims* FastCDC with
/// chunks of plausible sizes must not become the blob's split.
#[tokio::test]
async fn a_splice_with_non_fastcdc_boundaries_does_not_become_the_split() {
    let cas = Cas::new(Arc::new(MemoryStore::new(1 << 30)));
    let data = data::pseudo_random(42, 3 * chunking::MAX_CHUNK_BYTES as usize);
    let want: Vec<Digest> = {
        let mut v = Vec::new();
        let blob = Blob::from_bytes(Bytes::from(data.clone()));
        chunking::split(&blob, DigestFunction::Sha256, |c| {
            v.push(c.digest);
            Ok::<_, kiln::storage::StorageError>(())
        })
        .unwrap();
        v
    };
    // The client's cut: every chunk exactly MIN_CHUNK_BYTES (the last one shorter), all within
    // FastCDC's size bounds, but not where FastCDC cuts.
    let mut chunks = Vec::new();
    for piece in data.chunks(chunking::MIN_CHUNK_BYTES as usize) {
        let d = sha(piece);
        cas.put(&d, Bytes::copy_from_slice(piece)).await.unwrap();
        chunks.push(d);
    }
    assert_ne!(chunks, want, "the test's cut must differ from FastCDC's");
    let blob = sha(&data);
    cas.splice(blob, &chunks).await.unwrap();
    let split = cas.split(&blob).await.unwrap();
    assert_eq!(
        split.chunks.len(),
        want.len(),
        "SplitBlob answered the client's {} spliced chunks instead of FastCDC's {} \
         (while saying FAST_CDC_2020)",
        split.chunks.len(),
        want.len()
    );
    assert_eq!(split.chunks, want);
}
