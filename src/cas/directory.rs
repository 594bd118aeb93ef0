//! The REAPI rules for a Directory's entries, checked by the scheduler before an action is
//! queued and by the worker before it stages anything (a worker trusts no server).
//!
//! Each name is one path component; each of the three lists (files, directories, symlinks) is
//! sorted by name; no name appears twice within or across the lists. A duplicate name would
//! make staging ambiguous, and once let one input overwrite another in the worker's cache.

use crate::proto::reapi::Directory;
use std::collections::HashSet;

/// Whether `name` is a single path component (not empty, `.`, `..`, no `/` or NUL).
pub fn valid_name(name: &str) -> bool {
    !(name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']))
}

/// Checks one Directory's entries; the error says which rule broke and where.
pub fn check_entries(dir: &Directory) -> Result<(), String> {
    let lists: [(&str, Vec<&str>); 3] = [
        ("files", dir.files.iter().map(|f| f.name.as_str()).collect()),
        (
            "directories",
            dir.directories.iter().map(|d| d.name.as_str()).collect(),
        ),
        (
            "symlinks",
            dir.symlinks.iter().map(|s| s.name.as_str()).collect(),
        ),
    ];
    let mut seen = HashSet::new();
    for (list, names) in &lists {
        for (i, name) in names.iter().enumerate() {
            if !valid_name(name) {
                return Err(format!(
                    "{list} entry {name:?} is not a single path component"
                ));
            }
            if i > 0 && names[i - 1] >= *name {
                return Err(format!(
                    "{list} not sorted or not unique: {:?} then {name:?}",
                    names[i - 1]
                ));
            }
            if !seen.insert(*name) {
                return Err(format!("duplicate name {name:?}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_entries;
    use crate::proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode};

    fn file(name: &str) -> FileNode {
        FileNode {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn names_must_be_sorted_and_unique() {
        let ok = Directory {
            files: vec![file("a"), file("b")],
            directories: vec![DirectoryNode {
                name: "c".into(),
                digest: None,
            }],
            ..Default::default()
        };
        assert!(check_entries(&ok).is_ok());
        let dup = Directory {
            files: vec![file("x"), file("x")],
            ..Default::default()
        };
        assert!(check_entries(&dup).is_err());
        let unsorted = Directory {
            files: vec![file("b"), file("a")],
            ..Default::default()
        };
        assert!(check_entries(&unsorted).is_err());
        let across = Directory {
            files: vec![file("x")],
            symlinks: vec![SymlinkNode {
                name: "x".into(),
                target: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = check_entries(&across).unwrap_err();
        assert!(e.contains("duplicate name \"x\""), "{e}");
        for bad in ["..", ".", "", "a/b", "a\0"] {
            let d = Directory {
                files: vec![file(bad)],
                ..Default::default()
            };
            assert!(check_entries(&d).is_err(), "{bad:?}");
        }
    }
}
