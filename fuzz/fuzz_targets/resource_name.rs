//! ByteStream resource names (`api::resource_name`): arbitrary text to `parse_read` and
//! `parse_write`. Never panics; whatever parses has a valid instance name (the same rule as
//! `api::validate_instance`) and re-parses, from its canonical form, to the same value.
#![no_main]

use kiln::api::resource_name::{Compression, ResourceName};
use kiln::api::validate_instance;

fn canonical_blob_part(r: &ResourceName) -> String {
    let kind = match r.compression {
        Compression::Identity => "blobs",
        Compression::Zstd => "compressed-blobs/zstd",
    };
    format!("{kind}/{}/{}", r.digest.hash_hex(), r.digest.size)
}

fn with_instance(instance: &str, rest: &str) -> String {
    if instance.is_empty() {
        rest.to_string()
    } else {
        format!("{instance}/{rest}")
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    if let Ok(r) = ResourceName::parse_read(&name) {
        assert!(r.upload_id.is_none());
        assert!(validate_instance(&r.instance).is_ok(), "{name:?} -> {r:?}");
        assert!(r.digest.size <= i64::MAX as u64);
        let again = with_instance(&r.instance, &canonical_blob_part(&r));
        assert_eq!(ResourceName::parse_read(&again).as_ref(), Ok(&r), "{name:?}");
    }
    if let Ok(w) = ResourceName::parse_write(&name) {
        assert!(validate_instance(&w.instance).is_ok(), "{name:?} -> {w:?}");
        let id = w.upload_id.as_deref().expect("a write name has an upload id");
        assert!(!id.is_empty() && !id.contains('/'));
        let again = with_instance(&w.instance, &format!("uploads/{id}/{}", canonical_blob_part(&w)));
        assert_eq!(ResourceName::parse_write(&again).as_ref(), Ok(&w), "{name:?}");
    }
});
