//! The storage engine speaks its own vocabulary: no gRPC, protobuf or upper-layer imports.

use std::path::Path;

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn storage_imports_nothing_from_above() {
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage"),
        &mut files,
    );
    assert!(files.len() > 10);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for banned in [
            "tonic",
            "prost",
            "crate::api",
            "crate::cas",
            "crate::exec",
            "crate::bots",
        ] {
            assert!(!text.contains(banned), "{} mentions {banned}", f.display());
        }
    }
}

#[test]
fn unsafe_only_in_sys() {
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage"),
        &mut files,
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let in_sys = f.components().any(|c| c.as_os_str() == "sys");
        if in_sys {
            // Every unsafe block is preceded by a SAFETY comment.
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if l.contains("unsafe {") || l.contains("unsafe { ") {
                    let before = &lines[i.saturating_sub(8)..i];
                    assert!(
                        before.iter().any(|b| b.contains("SAFETY:")),
                        "{}:{} unsafe without SAFETY",
                        f.display(),
                        i + 1
                    );
                }
            }
        } else {
            assert!(
                !text.contains("unsafe {") && !text.contains("unsafe fn"),
                "{} uses unsafe",
                f.display()
            );
        }
    }
}
