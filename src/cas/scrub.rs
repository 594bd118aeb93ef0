//! The CAS half of `kiln verify`: which records are CAS blobs and whether a blob's bytes hash to
//! its key. The storage scrub walks records and calls this; it never learns the CAS key space.

use super::Cas;
use crate::digest::DigestFunction;
use crate::storage::{Blob, BlobCheck, Key};

/// The check `kiln verify` hands the storage scrub: every CAS blob is hashed (SHA-256, the one
/// digest function) and its key rebuilt with [`Cas::key`]; a mismatch is a damaged blob.
pub const SCRUB: BlobCheck<'static> = BlobCheck {
    wants: &is_cas_key,
    check: &blob_matches_key,
};

/// Whether `key` names a CAS blob (action-cache entries are not content-addressed).
fn is_cas_key(key: &Key) -> bool {
    key.space == Key::SPACE_CAS
}

/// Whether the bytes of `blob` hash to `key` under the CAS's digest-to-key rule.
fn blob_matches_key(key: &Key, blob: &Blob) -> bool {
    let mut h = DigestFunction::Sha256.hasher();
    for part in blob.chunks(0, u64::MAX, 1 << 20) {
        h.update(&part);
    }
    Cas::key(&h.finish()) == *key
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_blob_matches_only_its_own_cas_key() {
        let data = b"scrub me";
        let d = DigestFunction::Sha256.digest_of(data);
        let blob = Blob::from_bytes(Bytes::from_static(data));
        let key = Cas::key(&d);
        assert!((SCRUB.wants)(&key));
        assert!((SCRUB.check)(&key, &blob));
        let other = Blob::from_bytes(Bytes::from_static(b"scrub mE"));
        assert!(!(SCRUB.check)(&key, &other));
        assert!(!(SCRUB.wants)(&Key::new(Key::SPACE_AC, key.id)));
    }
}
