//! The worker's content-addressed file cache: one read-only file per (digest, executable) in
//! `<work-dir>/cache/`, hardlinked into action directories. A co-located worker fills it by
//! copying from the server's store through the cas-level local reader
//! ([`LocalReader`], which also serves the input tree's Directory protos); otherwise each blob crosses the socket
//! once per work dir. Every later staging of it is a `link(2)`, no bytes copied. Two variants exist
//! because a hardlink shares its inode's mode: `HASH-SIZE` (0444) and `HASH-SIZE-x` (0555).
//! The cache is bounded (`--cache-max-bytes`): least recently used files go first, never one
//! that a staging in progress still has to link (it holds a [`Pin`]). Removing a cached file
//! does not touch action directories: their hardlinks keep the inode.
//!
//! Cached files are never opened for writing once installed: staging links them, and its copy
//! fallback creates new files (see `stage.rs`). Caveat shared with every hardlink cache (e.g.
//! Buildbarn's): an action running as the files' owner could chmod a staged file and modify the
//! cached inode. So actions run as another user (`--action-user`, default `nobody`, see
//! `sandbox.rs`): the files stay the worker's, mode 0444/0555, and cannot be changed.

use super::client::{BATCH_BLOB_LIMIT, Client};
use super::dircache::{DEFAULT_MAX_FILES, DirCache};
use super::error::{WorkerError, io};
use crate::cas::local::LocalReader;
use crate::cas::walk::TreeWalk;
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi::Directory;
use bytes::Bytes;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Directory protos kept in memory at most; past this the map is cleared.
const MAX_DIRS: usize = 200_000;

/// Largest Directory or Command proto read from the co-located store (larger ones come over
/// gRPC).
const LOCAL_DIR_MAX: u64 = 16 << 20;

/// One cached file: its size, when a staging last wanted it, and how many stagings in
/// progress still need it (a pinned file is never evicted).
#[derive(Clone, Copy, Debug)]
struct Entry {
    size: u64,
    used: u64,
    pins: u32,
}

/// The cached files and their total size.
#[derive(Default)]
struct Entries {
    map: HashMap<(Digest, bool), Entry>,
    bytes: u64,
    tick: u64,
}

/// The file and directory caches of one worker process.
pub struct FileCache {
    dir: PathBuf,
    /// Most bytes of cached files (0: unbounded); least recently used files go first.
    max_bytes: u64,
    entries: Mutex<Entries>,
    dirs: Mutex<HashMap<Digest, Arc<Directory>>>,
    /// The server's store, when this worker shares its disk: files are copied from its
    /// segments, not fetched over gRPC.
    store: Option<Arc<LocalReader>>,
    /// Blobs copied from the co-located store, since start.
    from_store: AtomicU64,
    /// Blobs fetched over gRPC (not co-located, or missed in the store).
    over_grpc: AtomicU64,
    /// Whole materialized input subtrees, in `<work-dir>/dirs` (see `dircache.rs`).
    trees: DirCache,
    /// Threads that build one staged tree (0: chosen by its size, see `build.rs`).
    build_threads: AtomicU64,
}

/// Keeps the files of one staging in the cache until it is dropped (after the hardlinks are
/// made).
pub struct Pin {
    cache: Arc<FileCache>,
    keys: Vec<(Digest, bool)>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut e = self.cache.lock();
        for k in &self.keys {
            if let Some(x) = e.map.get_mut(k) {
                x.pins = x.pins.saturating_sub(1);
            }
        }
    }
}

impl FileCache {
    /// Opens (creating) the cache under `dir`, bounded to `max_bytes` (0: unbounded). Files
    /// already there are trusted: they were verified when written and are renamed into place
    /// only when complete; they count as least recently used. The directory cache lives
    /// beside it (`dirs`, emptied), bounded to [`DEFAULT_MAX_FILES`] links and `max_bytes`.
    pub fn open(
        dir: PathBuf,
        max_bytes: u64,
        store: Option<Arc<LocalReader>>,
    ) -> Result<Self, WorkerError> {
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let mut entries = Entries::default();
        for f in std::fs::read_dir(&dir).map_err(io(format!("list {}", dir.display())))? {
            let f = f.map_err(io(format!("list {}", dir.display())))?;
            let name = f.file_name().to_string_lossy().into_owned();
            match Self::parse_name(&name) {
                Some(key) => {
                    entries.bytes += key.0.size;
                    entries.map.insert(
                        key,
                        Entry {
                            size: key.0.size,
                            used: 0,
                            pins: 0,
                        },
                    );
                }
                // Leftovers of an interrupted fetch.
                None => {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        let trees = DirCache::open(dir.with_file_name("dirs"), DEFAULT_MAX_FILES, max_bytes)?;
        let cache = Self {
            trees,
            build_threads: AtomicU64::new(0),
            dir,
            max_bytes,
            entries: Mutex::new(entries),
            dirs: Mutex::default(),
            store,
            from_store: AtomicU64::new(0),
            over_grpc: AtomicU64::new(0),
        };
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the cached file of a digest lives.
    pub fn path(&self, d: &Digest, executable: bool) -> PathBuf {
        self.dir.join(Self::file_name(d, executable))
    }

    /// The cache directory (staging links relative to it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name of a cached file inside [`FileCache::dir`]: `hash-size[-x]`, with the
    /// function's name in front for all but SHA-256 (`blake3-hash-size`), so the same hash
    /// under two functions is two files.
    pub fn file_name(d: &Digest, executable: bool) -> String {
        let x = if executable { "-x" } else { "" };
        match d.function {
            DigestFunction::Sha256 => format!("{}-{}{x}", d.hash_hex(), d.size),
            f @ DigestFunction::Blake3 => format!("{}-{}-{}{x}", f.name(), d.hash_hex(), d.size),
        }
    }

    fn parse_name(name: &str) -> Option<(Digest, bool)> {
        let (name, executable) = match name.strip_suffix("-x") {
            Some(n) => (n, true),
            None => (name, false),
        };
        let (function, name) = match name.split_once('-') {
            Some((f, rest)) if f.len() != 64 => (DigestFunction::from_name(f)?, rest),
            _ => (DigestFunction::Sha256, name),
        };
        let (hash, size) = name.split_once('-')?;
        let d = Digest::parse(function, hash, size.parse().ok()?).ok()?;
        Some((d, executable))
    }

    /// Bytes of cached files now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Threads to build a staged tree of `files` files in `dirs` directories with.
    pub fn build_threads(&self, files: usize, dirs: usize) -> usize {
        match self.build_threads.load(Ordering::Relaxed) {
            0 => super::build::threads(files, dirs),
            n => usize::try_from(n).unwrap_or(1),
        }
    }

    /// Fixes the threads that build one staged tree (0: by its size); for measurements.
    pub fn set_build_threads(&self, n: usize) {
        self.build_threads.store(n as u64, Ordering::Relaxed);
    }

    /// The directory cache.
    pub fn trees(&self) -> &DirCache {
        &self.trees
    }

    /// Marks cached files as just used (those of trees the directory cache keeps).
    pub fn touch(&self, keys: impl Iterator<Item = (Digest, bool)>) {
        let mut e = self.lock();
        e.tick += 1;
        let tick = e.tick;
        for k in keys {
            if let Some(x) = e.map.get_mut(&k) {
                x.used = tick;
            }
        }
    }

    /// Makes sure every (digest, executable) file is cached, fetching what is missing, and
    /// pins them until the returned guard is dropped.
    pub async fn ensure(
        self: &Arc<Self>,
        client: &Client,
        wanted: &HashSet<(Digest, bool)>,
    ) -> Result<Pin, WorkerError> {
        let mut pin = Pin {
            cache: Arc::clone(self),
            keys: Vec::with_capacity(wanted.len()),
        };
        let mut need: HashMap<Digest, Vec<bool>> = HashMap::new();
        {
            let mut e = self.lock();
            e.tick += 1;
            let tick = e.tick;
            for key in wanted {
                match e.map.get_mut(key) {
                    Some(x) => {
                        x.pins += 1;
                        x.used = tick;
                        pin.keys.push(*key);
                    }
                    None => need.entry(key.0).or_default().push(key.1),
                }
            }
        }
        if need.is_empty() {
            return Ok(pin);
        }
        let mut fetch = Vec::new();
        for (d, variants) in &need {
            // The other variant may be here already: copy locally instead of fetching.
            let other = [false, true]
                .into_iter()
                .find(|v| self.pin_if_present(&(*d, *v), &mut pin));
            if let Some(v) = other {
                for want in variants {
                    self.install_copy(&self.path(d, v), d, *want, &mut pin)?;
                }
            } else {
                fetch.push(*d);
            }
        }
        let copied = self
            .take_from_store(&mut fetch, |store, d, tmp| {
                store.copy_to_file(d, tmp).then(|| tmp.to_path_buf())
            })
            .await?;
        for (d, tmp) in copied {
            self.install_variants(&tmp, &d, &need[&d], &mut pin)?;
        }
        self.over_grpc
            .fetch_add(fetch.len() as u64, Ordering::Relaxed);
        let mut small = Vec::new();
        for d in &fetch {
            let variants = &need[d];
            if d.size <= BATCH_BLOB_LIMIT {
                small.push(*d);
            } else {
                let tmp = self.tmp_path();
                client.read_to_file(d, &tmp).await?;
                self.install_variants(&tmp, d, variants, &mut pin)?;
            }
        }
        for (d, data) in client.batch_read(&small).await? {
            let tmp = self.tmp_path();
            std::fs::write(&tmp, &data).map_err(io(format!("write {}", tmp.display())))?;
            self.install_variants(&tmp, &d, &need[&d], &mut pin)?;
        }
        self.evict();
        Ok(pin)
    }

    fn pin_if_present(&self, key: &(Digest, bool), pin: &mut Pin) -> bool {
        let mut e = self.lock();
        match e.map.get_mut(key) {
            Some(x) => {
                x.pins += 1;
                pin.keys.push(*key);
                true
            }
            None => false,
        }
    }

    /// Removes least recently used, unpinned files until the cache is within 90% of its
    /// bound (so eviction runs in batches, not on every fetch).
    fn evict(&self) {
        let mut e = self.lock();
        if self.max_bytes == 0 || e.bytes <= self.max_bytes {
            return;
        }
        let goal = self.max_bytes / 10 * 9;
        let mut victims: Vec<((Digest, bool), u64)> = e
            .map
            .iter()
            .filter(|(_, x)| x.pins == 0)
            .map(|(k, x)| (*k, x.used))
            .collect();
        victims.sort_unstable_by_key(|(_, used)| *used);
        let mut freed = 0u64;
        let mut removed = 0u64;
        for (k, _) in victims {
            if e.bytes <= goal {
                break;
            }
            let path = self.path(&k.0, k.1);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(error = %err, path = %path.display(), "cannot evict cached file");
                    continue;
                }
            }
            if let Some(x) = e.map.remove(&k) {
                e.bytes -= x.size;
                freed += x.size;
                removed += 1;
            }
        }
        tracing::debug!(removed, freed, left = e.bytes, "worker file cache evicted");
        if e.bytes > self.max_bytes {
            tracing::warn!(
                bytes = e.bytes,
                max = self.max_bytes,
                "worker file cache over its bound: the files of running stagings alone exceed it"
            );
        }
    }

    /// Blobs copied from the co-located store and fetched over gRPC so far.
    pub fn sources(&self) -> (u64, u64) {
        (
            self.from_store.load(Ordering::Relaxed),
            self.over_grpc.load(Ordering::Relaxed),
        )
    }

    fn tmp_path(&self) -> PathBuf {
        self.dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()))
    }

    /// Installs a complete file `tmp` as every wanted variant: renamed into the first, copied
    /// into the others.
    fn install_variants(
        &self,
        tmp: &Path,
        d: &Digest,
        variants: &[bool],
        pin: &mut Pin,
    ) -> Result<(), WorkerError> {
        let Some((first, rest)) = variants.split_first() else {
            let _ = std::fs::remove_file(tmp);
            return Ok(());
        };
        self.install(tmp, d, *first, pin)?;
        for want in rest {
            self.install_copy(&self.path(d, *first), d, *want, pin)?;
        }
        Ok(())
    }

    fn install_copy(
        &self,
        from: &Path,
        d: &Digest,
        executable: bool,
        pin: &mut Pin,
    ) -> Result<(), WorkerError> {
        let tmp = self.tmp_path();
        std::fs::copy(from, &tmp).map_err(io(format!("copy {}", from.display())))?;
        self.install(&tmp, d, executable, pin)
    }

    /// Sets the variant's mode, renames the complete file into place and pins it.
    fn install(
        &self,
        tmp: &Path,
        d: &Digest,
        executable: bool,
        pin: &mut Pin,
    ) -> Result<(), WorkerError> {
        let mode = if executable { 0o555 } else { 0o444 };
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {}", tmp.display())))?;
        let dest = self.path(d, executable);
        let key = (*d, executable);
        // Renamed and pinned under the lock: an eviction running meanwhile cannot remove the
        // file between the two.
        let mut e = self.lock();
        std::fs::rename(tmp, &dest).map_err(io(format!("rename to {}", dest.display())))?;
        let tick = e.tick;
        let added = !e.map.contains_key(&key);
        let x = e.map.entry(key).or_insert(Entry {
            size: d.size,
            used: tick,
            pins: 0,
        });
        x.pins += 1;
        x.used = tick;
        if added {
            e.bytes += d.size;
        }
        pin.keys.push(key);
        Ok(())
    }

    /// Takes what it can of `want` from the co-located store with `get` (on a blocking thread;
    /// `get` is handed a fresh temporary path it may fill), removes those from `want` and
    /// counts them; the rest goes over gRPC. Nothing when not co-located.
    async fn take_from_store<T: Send + 'static>(
        &self,
        want: &mut Vec<Digest>,
        get: impl Fn(&LocalReader, &Digest, &Path) -> Option<T> + Send + Sync + 'static,
    ) -> Result<Vec<(Digest, T)>, WorkerError> {
        let Some(store) = self.store.clone() else {
            return Ok(Vec::new());
        };
        let mut asks: Vec<(Digest, PathBuf)> = want.iter().map(|d| (*d, self.tmp_path())).collect();
        // Copies are hashed as they go (CPU) and make a file each (file system): a large batch
        // is shared by several threads, largest blobs first, each thread taking the next.
        asks.sort_by_key(|(d, _)| std::cmp::Reverse(d.size));
        let threads = copy_threads(&asks);
        let asks = Arc::new(Mutex::new(asks.into_iter()));
        let get = Arc::new(get);
        let mut tasks = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (asks, get, store) = (Arc::clone(&asks), Arc::clone(&get), Arc::clone(&store));
            tasks.push(tokio::task::spawn_blocking(move || {
                let mut got = Vec::new();
                loop {
                    let next = asks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .next();
                    let Some((d, tmp)) = next else { break };
                    if let Some(t) = get(&store, &d, &tmp) {
                        got.push((d, t));
                    }
                }
                got
            }));
        }
        let mut got = Vec::new();
        for task in tasks {
            got.extend(task.await.map_err(|e| WorkerError::Invalid {
                what: "store read task",
                reason: e.to_string(),
            })?);
        }
        let done: HashSet<Digest> = got.iter().map(|(d, _)| *d).collect();
        want.retain(|d| !done.contains(d));
        self.from_store
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        Ok(got)
    }

    /// Small blobs the worker decodes (Directory protos, an action's Command), verified: from
    /// the co-located store where it holds them, up to `LOCAL_DIR_MAX` bytes (no round trip to
    /// the server), the rest over gRPC.
    pub async fn messages(
        &self,
        client: &Client,
        digests: &[Digest],
    ) -> Result<HashMap<Digest, Bytes>, WorkerError> {
        let mut want = digests.to_vec();
        let mut got: HashMap<Digest, Bytes> = self
            .take_from_store(&mut want, |store, d, _| store.read(d, LOCAL_DIR_MAX))
            .await?
            .into_iter()
            .collect();
        if !want.is_empty() {
            got.extend(client.batch_read(&want).await?);
        }
        Ok(got)
    }

    /// The Directory protos of a whole tree, fetched level by level in batches; directories
    /// seen before come from memory, so repeated trees cost no round trip. A tree with more
    /// than `max_depth` levels below its root fails (INVALID_ARGUMENT) before the next fetch.
    pub async fn tree(
        &self,
        client: &Client,
        root: &Digest,
        max_depth: usize,
    ) -> Result<HashMap<Digest, Arc<Directory>>, WorkerError> {
        let mut out: HashMap<Digest, Arc<Directory>> = HashMap::new();
        let mut walk = TreeWalk::new(*root);
        loop {
            let (depth, level) = walk.next_level();
            if level.is_empty() {
                break;
            }
            if depth > max_depth {
                return Err(WorkerError::Invalid {
                    what: "input root",
                    reason: format!("the tree is deeper than the limit of {max_depth} levels"),
                });
            }
            let mut fetch = Vec::new();
            // This level's directories (each first seen here): only their children can be new.
            let mut added = Vec::new();
            {
                let dirs = self.dirs.lock().expect("dir cache lock");
                for d in level {
                    match dirs.get(&d) {
                        Some(dir) => {
                            out.insert(d, dir.clone());
                            added.push(dir.clone());
                        }
                        None => fetch.push(d),
                    }
                }
            }
            fetch.sort_unstable_by_key(|d| d.hash);
            let fetched = self.messages(client, &fetch).await?;
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
                out.insert(d, dir.clone());
                added.push(dir);
            }
            drop(dirs);
            // Next level: children of this level's directories not met before.
            for dir in &added {
                walk.visit(dir, depth)?;
            }
        }
        Ok(out)
    }
}

/// Batches with fewer blobs and fewer bytes than these are copied from the store by one
/// thread (no thread hand-off for an action's few inputs).
const PARALLEL_COPY_MIN_BLOBS: usize = 256;
const PARALLEL_COPY_MIN_BYTES: u64 = 16 << 20;
/// Most threads copying one batch from the store.
const MAX_COPY_THREADS: usize = 4;

/// Threads to copy `asks` from the co-located store with.
fn copy_threads(asks: &[(Digest, PathBuf)]) -> usize {
    let bytes: u64 = asks.iter().map(|(d, _)| d.size).sum();
    if asks.len() < 2 || (asks.len() < PARALLEL_COPY_MIN_BLOBS && bytes < PARALLEL_COPY_MIN_BYTES) {
        return 1;
    }
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().min(MAX_COPY_THREADS))
        .min(asks.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_keep_functions_apart() {
        for function in DigestFunction::ALL {
            let d = function.digest_of(b"cached");
            for x in [false, true] {
                let name = FileCache::file_name(&d, x);
                assert_eq!(FileCache::parse_name(&name), Some((d, x)), "{name}");
            }
        }
        let sha = DigestFunction::Sha256.digest_of(b"same");
        let b3 = Digest {
            function: DigestFunction::Blake3,
            ..sha
        };
        assert_ne!(
            FileCache::file_name(&sha, false),
            FileCache::file_name(&b3, false)
        );
        for junk in ["x", "md5-00-1", "blake3-zz-1", "-1", "blake3--1"] {
            assert_eq!(FileCache::parse_name(junk), None, "{junk}");
        }
    }

    /// A batch large enough to be copied by several threads: every blob the store holds is
    /// taken, with its exact bytes; one it lacks is left for gRPC.
    #[test]
    fn a_large_batch_is_copied_from_the_store_by_several_threads() {
        let data = tempfile::tempdir().unwrap();
        let cas = crate::cas::local::small_store(data.path());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let blobs: Vec<(Digest, Vec<u8>)> = (0..PARALLEL_COPY_MIN_BLOBS + 44)
            .map(|i| {
                let b = format!("input file {i}\n").repeat(i % 7 + 1).into_bytes();
                (DigestFunction::Sha256.digest_of(&b), b)
            })
            .collect();
        for (d, b) in &blobs {
            rt.block_on(cas.put(d, Bytes::from(b.clone()))).unwrap();
        }
        let reader = Arc::new(LocalReader::open(data.path()).unwrap());
        let cache = FileCache::open(data.path().join("cache"), 0, Some(reader)).unwrap();
        let absent = DigestFunction::Sha256.digest_of(b"not in the store");
        let mut want: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        want.push(absent);
        let asks: Vec<(Digest, PathBuf)> = want.iter().map(|d| (*d, PathBuf::new())).collect();
        if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) > 1 {
            assert!(copy_threads(&asks) > 1, "this batch is shared");
        }
        assert_eq!(copy_threads(&asks[..3]), 1, "a few small blobs are not");
        let got = rt
            .block_on(cache.take_from_store(&mut want, |store, d, tmp| {
                store.copy_to_file(d, tmp).then(|| tmp.to_path_buf())
            }))
            .unwrap();
        assert_eq!(want, vec![absent], "only the absent blob is left for gRPC");
        assert_eq!(got.len(), blobs.len());
        let expected: HashMap<Digest, &Vec<u8>> = blobs.iter().map(|(d, b)| (*d, b)).collect();
        for (d, path) in got {
            assert_eq!(&std::fs::read(&path).unwrap(), expected[&d], "{d}");
        }
        assert_eq!(cache.sources().0, blobs.len() as u64);
    }
}
