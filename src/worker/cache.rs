//! The worker's content-addressed file cache: one read-only file per (digest, executable) in
//! `<work-dir>/cache/`, hardlinked into action directories. Each blob crosses the socket once
//! per work dir; every later staging of it is a `link(2)`, no bytes copied. Two variants exist
//! because a hardlink shares its inode's mode: `HASH-SIZE` (0444) and `HASH-SIZE-x` (0555).
//!
//! Caveat (shared with every hardlink cache, e.g. Buildbarn's): an action running as the same
//! user could chmod a staged file and modify the cached inode. Run workers as a different user
//! from the files' owner, or enable namespaces, if actions are untrusted.

use super::client::{BATCH_BLOB_LIMIT, Client};
use super::error::{WorkerError, io};
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Directory protos kept in memory at most; past this the map is cleared.
const MAX_DIRS: usize = 200_000;

/// The file and directory caches of one worker process.
pub struct FileCache {
    dir: PathBuf,
    known: Mutex<HashSet<(Digest, bool)>>,
    dirs: Mutex<HashMap<Digest, Arc<Directory>>>,
}

impl FileCache {
    /// Opens (creating) the cache under `dir`. Files already there are trusted: they were
    /// verified when written and are renamed into place only when complete.
    pub fn open(dir: PathBuf) -> Result<Self, WorkerError> {
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        Ok(Self {
            dir,
            known: Mutex::default(),
            dirs: Mutex::default(),
        })
    }

    /// Where the cached file of a digest lives.
    pub fn path(&self, d: &Digest, executable: bool) -> PathBuf {
        self.dir.join(Self::file_name(d, executable))
    }

    /// The cache directory (staging links relative to it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name of a cached file inside [`FileCache::dir`].
    pub fn file_name(d: &Digest, executable: bool) -> String {
        let x = if executable { "-x" } else { "" };
        format!("{}-{}{x}", d.hash_hex(), d.size)
    }

    fn is_known(&self, key: &(Digest, bool)) -> bool {
        if self.known.lock().expect("cache lock").contains(key) {
            return true;
        }
        let present = self.path(&key.0, key.1).exists();
        if present {
            self.known.lock().expect("cache lock").insert(*key);
        }
        present
    }

    /// Makes sure every (digest, executable) file is cached, fetching what is missing.
    pub async fn ensure(
        &self,
        client: &Client,
        wanted: &HashSet<(Digest, bool)>,
    ) -> Result<(), WorkerError> {
        let unknown: Vec<(Digest, bool)> = {
            let known = self.known.lock().expect("cache lock");
            wanted
                .iter()
                .filter(|k| !known.contains(*k))
                .copied()
                .collect()
        };
        let mut need: HashMap<Digest, Vec<bool>> = HashMap::new();
        for key in unknown {
            if !self.is_known(&key) {
                need.entry(key.0).or_default().push(key.1);
            }
        }
        if need.is_empty() {
            return Ok(());
        }
        let mut small = Vec::new();
        for (d, variants) in &need {
            // The other variant may be here already: copy locally instead of fetching.
            if let Some(v) = [false, true].into_iter().find(|v| self.is_known(&(*d, *v))) {
                for want in variants {
                    self.install_copy(&self.path(d, v), d, *want)?;
                }
            } else if d.size <= BATCH_BLOB_LIMIT {
                small.push(*d);
            } else {
                let tmp = self.tmp_path();
                client.read_to_file(d, &tmp).await?;
                for want in variants {
                    self.install_copy(&tmp, d, *want)?;
                }
                let _ = std::fs::remove_file(&tmp);
            }
        }
        for (d, data) in client.batch_read(&small).await? {
            for want in &need[&d] {
                let tmp = self.tmp_path();
                std::fs::write(&tmp, &data).map_err(io(format!("write {}", tmp.display())))?;
                self.install(&tmp, &d, *want)?;
            }
        }
        Ok(())
    }

    fn tmp_path(&self) -> PathBuf {
        self.dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()))
    }

    fn install_copy(&self, from: &Path, d: &Digest, executable: bool) -> Result<(), WorkerError> {
        let tmp = self.tmp_path();
        std::fs::copy(from, &tmp).map_err(io(format!("copy {}", from.display())))?;
        self.install(&tmp, d, executable)
    }

    /// Sets the variant's mode and renames the complete file into place.
    fn install(&self, tmp: &Path, d: &Digest, executable: bool) -> Result<(), WorkerError> {
        let mode = if executable { 0o555 } else { 0o444 };
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {}", tmp.display())))?;
        let dest = self.path(d, executable);
        std::fs::rename(tmp, &dest).map_err(io(format!("rename to {}", dest.display())))?;
        self.known
            .lock()
            .expect("cache lock")
            .insert((*d, executable));
        Ok(())
    }

    /// The Directory protos of a whole tree, fetched level by level in batches; directories
    /// seen before come from memory, so repeated trees cost no round trip.
    pub async fn tree(
        &self,
        client: &Client,
        root: &Digest,
    ) -> Result<HashMap<Digest, Arc<Directory>>, WorkerError> {
        let mut out: HashMap<Digest, Arc<Directory>> = HashMap::new();
        let mut level = vec![*root];
        while !level.is_empty() {
            let mut fetch = Vec::new();
            {
                let dirs = self.dirs.lock().expect("dir cache lock");
                for d in level.drain(..) {
                    if out.contains_key(&d) {
                        continue;
                    }
                    match dirs.get(&d) {
                        Some(dir) => {
                            out.insert(d, dir.clone());
                        }
                        None => fetch.push(d),
                    }
                }
            }
            fetch.sort_unstable_by_key(|d| d.hash);
            fetch.dedup();
            let fetched = client.batch_read(&fetch).await?;
            let mut dirs = self.dirs.lock().expect("dir cache lock");
            if dirs.len() > MAX_DIRS {
                dirs.clear();
            }
            for (d, bytes) in fetched {
                let dir = Directory::decode(bytes).map_err(|e| WorkerError::Invalid {
                    what: "Directory",
                    reason: format!("{d}: {e}"),
                })?;
                let dir = Arc::new(dir);
                dirs.insert(d, dir.clone());
                out.insert(d, dir);
            }
            drop(dirs);
            // Next level: children of everything gathered so far that are not yet known.
            let mut next = HashSet::new();
            for dir in out.values() {
                for c in &dir.directories {
                    let c = Digest::from_field(
                        root.function,
                        c.digest.as_ref(),
                        "DirectoryNode.digest",
                    )?;
                    if !out.contains_key(&c) {
                        next.insert(c);
                    }
                }
            }
            level = next.into_iter().collect();
        }
        Ok(out)
    }
}
