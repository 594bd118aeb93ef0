//! `kiln token add/list/revoke`: edits the tokens file. A new token is printed once and only
//! its SHA-256 is stored.

use super::{AuthFileError, PrincipalEntry, Rights, Table, TokensFile, token_sha256};
use std::fmt::Write;
use std::path::Path;

/// Runs one read-modify-write of the tokens file under an exclusive lock on `<file>.lock`, so
/// two `kiln token` commands at once (two admins, a provisioning script) cannot lose each
/// other's change or share the temporary file the new version is written to.
fn locked<T>(
    path: &Path,
    edit: impl FnOnce() -> Result<T, AuthFileError>,
) -> Result<T, AuthFileError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| AuthFileError::Io {
            path: lock_path.clone(),
            source,
        })?;
    let _guard =
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            AuthFileError::Io {
                path: lock_path,
                source: e.into(),
            }
        })?;
    edit()
}

/// Reads the file, or an empty one when it does not exist yet.
fn read_or_empty(path: &Path) -> Result<TokensFile, AuthFileError> {
    match TokensFile::read(path) {
        Err(AuthFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(TokensFile::default())
        }
        other => other,
    }
}

/// A fresh token: 32 random bytes from the OS, hex.
pub fn new_token() -> Result<String, AuthFileError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| AuthFileError::Invalid(format!("no randomness from the OS: {e}")))?;
    Ok(hex::encode(b))
}

/// Adds principal `name` with `rights` (comma-separated) and returns its new token.
pub fn add(path: &Path, name: &str, rights: &str) -> Result<String, AuthFileError> {
    locked(path, || add_unlocked(path, name, rights))
}

fn add_unlocked(path: &Path, name: &str, rights: &str) -> Result<String, AuthFileError> {
    let mut file = read_or_empty(path)?;
    let rights: Vec<String> = rights
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    Rights::parse(&rights)?;
    if file.principal.iter().any(|p| p.name == name) {
        return Err(AuthFileError::Invalid(format!(
            "principal {name:?} exists; revoke it first"
        )));
    }
    let token = new_token()?;
    file.principal.push(PrincipalEntry {
        name: name.into(),
        token_sha256: token_sha256(&token),
        rights,
    });
    Table::from_file(&file)?;
    file.write(path)?;
    Ok(token)
}

/// One line per principal and unix peer: name and rights, no secrets.
pub fn list(path: &Path) -> Result<String, AuthFileError> {
    let file = TokensFile::read(path)?;
    let mut out = String::new();
    for p in &file.principal {
        let _ = writeln!(out, "{}\t{}", p.name, p.rights.join(","));
    }
    for u in &file.unix_peer {
        let _ = writeln!(out, "uid:{}\t{}", u.uid, u.rights.join(","));
    }
    Ok(out)
}

/// Removes principal `name` (a running server forgets it on SIGHUP).
pub fn revoke(path: &Path, name: &str) -> Result<(), AuthFileError> {
    locked(path, || revoke_unlocked(path, name))
}

fn revoke_unlocked(path: &Path, name: &str) -> Result<(), AuthFileError> {
    let mut file = TokensFile::read(path)?;
    let before = file.principal.len();
    file.principal.retain(|p| p.name != name);
    if file.principal.len() == before {
        return Err(AuthFileError::Invalid(format!("no principal {name:?}")));
    }
    file.write(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Authorizer, Right};

    #[test]
    fn add_list_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        let t = add(&p, "ci", "read,write").unwrap();
        assert_eq!(t.len(), 64);
        assert!(add(&p, "ci", "read").is_err(), "duplicate name");
        assert!(add(&p, "x", "fly").is_err(), "unknown right");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains(&t), "only the hash is stored");
        let a = Authorizer::load(&p, Rights::NONE).unwrap();
        assert!(
            a.identify(Some(t.as_bytes()), None)
                .rights
                .has(Right::Write)
        );
        assert_eq!(list(&p).unwrap(), "ci\tread,write\n");
        revoke(&p, "ci").unwrap();
        assert!(revoke(&p, "ci").is_err());
        assert_eq!(list(&p).unwrap(), "");
    }

    /// Concurrent `kiln token add`s each keep their principal (without the lock they read the
    /// same old file, and all but the last rename lose their entry or fail on the shared
    /// temporary file).
    #[test]
    fn concurrent_adds_keep_every_principal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for j in 0..5 {
                        add(&p, &format!("p{i}-{j}"), "read").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(list(&p).unwrap().lines().count(), 40);
    }
}
