//! `cas::chunk_list::ChunkList::decode` (the stored SplitBlob chunk list) on arbitrary bytes
//! with an arbitrary blob size: never panics, never allocates for a count its bytes do not
//! hold; whatever decodes has non-empty chunks adding up to the blob's size and re-encodes to
//! exactly its bytes.
#![no_main]

use kiln::cas::chunk_list::ChunkList;
use kiln::digest::{Digest, DigestFunction};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap());
    let blob = Digest {
        size,
        ..Digest::empty(DigestFunction::Sha256)
    };
    let record = &data[8..];
    if let Ok(list) = ChunkList::decode(record, &blob) {
        assert!(list.chunks.iter().all(|c| c.size > 0));
        assert_eq!(list.chunks.iter().map(|c| c.size).sum::<u64>(), size);
        assert_eq!(list.encode(), record);
    }
});
