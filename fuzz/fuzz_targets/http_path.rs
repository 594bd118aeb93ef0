//! HTTP cache API paths (`http_cache::path::parse`): arbitrary text. Never panics; whatever
//! parses names `ac` or `cas`, a hash that prints back as the path's last segment, and an
//! instance name gRPC accepts too (`api::validate_instance`); its canonical form re-parses to
//! the same value.
#![no_main]

use kiln::api::validate_instance;
use kiln::http_cache::path::{self, MAX_PATH_BYTES};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(route) = path::parse(&text) else {
        return;
    };
    assert!(text.len() <= MAX_PATH_BYTES);
    assert!(validate_instance(&route.instance).is_ok(), "{text:?} -> {route:?}");
    assert!(!route.instance.contains("//"));
    let hash: String = route.hash.iter().map(|b| format!("{b:02x}")).collect();
    assert!(text.ends_with(&format!("/{}/{hash}", route.kind.name())), "{text:?}");
    let canonical = if route.instance.is_empty() {
        format!("/{}/{hash}", route.kind.name())
    } else {
        format!("/{}/{}/{hash}", route.instance, route.kind.name())
    };
    assert_eq!(canonical, text, "only the canonical form parses");
    assert_eq!(path::parse(&canonical).as_ref(), Ok(&route));
});
