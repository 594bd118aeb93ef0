//! Path rules shared by the server (checking a Command's paths before it runs) and the worker
//! (staging inputs and capturing outputs): REAPI paths are relative, `/`-separated, and must
//! never leave the action's root.

/// `base/path` normalised lexically, or `None` if it is absolute or climbs out of the root.
pub fn within_root(base: &str, path: &str) -> Option<String> {
    if path.starts_with('/') || base.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in base.split('/').chain(path.split('/')) {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::within_root;

    #[test]
    fn lexical_paths() {
        assert_eq!(within_root("", "a/b").as_deref(), Some("a/b"));
        assert_eq!(within_root("w", "../x").as_deref(), Some("x"));
        assert_eq!(within_root("", "../x"), None);
        assert_eq!(within_root("w", "../../x"), None);
        assert_eq!(within_root("", "/etc/passwd"), None);
        assert_eq!(within_root("", "a/./b/../c").as_deref(), Some("a/c"));
    }
}
