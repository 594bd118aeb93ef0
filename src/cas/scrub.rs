//! The CAS half of `kiln verify`: which records are CAS blobs and whether a blob's bytes hash to
//! its key. The storage scrub walks records and calls this; it never learns the CAS key space.

use super::Cas;
use crate::storage::{Blob, BlobCheck, Key};

/// The check `kiln verify` hands the storage scrub: every CAS blob is hashed with the digest
/// function of its key space (SHA-256 or BLAKE3) and its key rebuilt with [`Cas::key`]; a
/// mismatch is a damaged blob.
pub const SCRUB: BlobCheck<'static> = BlobCheck {
    wants: &is_cas_key,
    check: &blob_matches_key,
};

/// Whether `key` names a CAS blob (action-cache entries are not content-addressed).
fn is_cas_key(key: &Key) -> bool {
    Cas::function_of_space(key.space).is_some()
}

/// Whether the bytes of `blob` hash to `key` under the CAS's digest-to-key rule.
fn blob_matches_key(key: &Key, blob: &Blob) -> bool {
    let Some(function) = Cas::function_of_space(key.space) else {
        return false;
    };
    let mut h = function.hasher();
    for part in blob.read(0, u64::MAX, 1 << 20) {
        let Ok(part) = part else {
            return false;
        };
        h.update(&part);
    }
    Cas::key(&h.finish()) == *key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
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

    #[test]
    fn blake3_blobs_are_checked_with_blake3() {
        let data = b"scrub me too";
        let blob = Blob::from_bytes(Bytes::from_static(data));
        let b3 = Cas::key(&DigestFunction::Blake3.digest_of(data));
        let sha = Cas::key(&DigestFunction::Sha256.digest_of(data));
        assert_ne!(b3, sha, "the two functions' entries are apart");
        assert!((SCRUB.wants)(&b3));
        assert!((SCRUB.check)(&b3, &blob));
        // SHA-256 bytes under a BLAKE3 key (and the reverse) are damage.
        assert!(!(SCRUB.check)(
            &Key::new(Key::SPACE_CAS_BLAKE3, sha.id),
            &blob
        ));
        assert!(!(SCRUB.check)(&Key::new(Key::SPACE_CAS, b3.id), &blob));
    }
}
