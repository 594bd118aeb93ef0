//! Checks a materialized tree against its Directory protos before the directory cache keeps
//! it (`dircache.rs`): the action that had it may have added, removed, renamed or replaced
//! anything in directories it owns. A tree passes only if it holds exactly the entries of its
//! protos, each of the right type: files are the very inodes of the file cache's entries
//! (which no action can write: the worker's, 0444/0555), symlinks point where the proto says,
//! directories belong to the expected owner with no xattrs (ACLs, `user.*`) and no inode
//! flags an owner can set (`chattr`). Directory modes are reset to 0755, and directories are
//! given to the worker's user while the tree is idle in the cache (`lend_to` gives them back
//! to the action user when the tree is lent). Everything goes
//! through `*at()` calls on handles opened with `O_NOFOLLOW`, without recursion; only one
//! handle per level is open at a time.

use super::cache::FileCache;
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use rustix::fs::{AtFlags, FileType, Mode, fchmod, fstat, openat, readlinkat, statat};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// Inode flags (`FS_*_FL`) an owner may set on a directory and that would change how later
/// actions' files behave: NOATIME, SYNC, DIRSYNC, NODUMP, SECRM, UNRM, COMPR, TOPDIR,
/// PROJINHERIT, NOCOW, JOURNAL_DATA, APPEND, IMMUTABLE, ENCRYPT, CASEFOLD.
const OWNER_FLAGS: u32 = 0x0000_0080
    | 0x0000_0008
    | 0x0001_0000
    | 0x0000_0040
    | 0x0000_0001
    | 0x0000_0002
    | 0x0000_0004
    | 0x0002_0000
    | 0x2000_0000
    | 0x0080_0000
    | 0x0000_4000
    | 0x0000_0020
    | 0x0000_0010
    | 0x0000_0800
    | 0x4000_0000;

/// Where the expected file inodes come from, and who must own the directories.
pub struct Expect<'a> {
    /// The file cache's directory, opened.
    pub cache_dir: BorrowedFd<'a>,
    /// uid every directory of the tree must have (the action user's).
    pub uid: u32,
    /// Owner the directories are given before they are checked (the worker's, when actions
    /// run as another user): a process of another action still running as the same user,
    /// with a handle inside the tree, can then change nothing in it once it is checked.
    pub keep_as: Option<(u32, u32)>,
    /// (device, inode) of cached files met so far (`None`: not in the cache now).
    pub inodes: &'a mut HashMap<(Digest, bool), Option<(u64, u64)>>,
}

impl Expect<'_> {
    fn inode(&mut self, key: (Digest, bool)) -> Option<(u64, u64)> {
        let cache_dir = self.cache_dir;
        *self.inodes.entry(key).or_insert_with(|| {
            statat(
                cache_dir,
                FileCache::file_name(&key.0, key.1).as_str(),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .ok()
            .map(|s| (s.st_dev, s.st_ino))
        })
    }
}

/// Verifies the tree open at `top` against `digest` (see the module doc); the reason when it
/// does not match.
pub fn verify(
    top: OwnedFd,
    digest: Digest,
    dirs: &HashMap<Digest, Arc<Directory>>,
    expect: &mut Expect<'_>,
) -> Result<(), String> {
    // The message is built only on an error (this runs for every file of a tree).
    fn e(what: &str) -> impl FnOnce(rustix::io::Errno) -> String + '_ {
        move |err| format!("{what}: {err}")
    }
    let flags = super::beneath::DIR;
    // A directory to check: its handle, or its parent's handle and its name.
    let mut stack: Vec<(Arc<OwnedFd>, Option<String>, Digest)> =
        vec![(Arc::new(top), None, digest)];
    while let Some((parent, name, d)) = stack.pop() {
        let fd = match &name {
            None => parent,
            Some(n) => Arc::new(openat(&*parent, n.as_str(), flags, Mode::empty()).map_err(e(n))?),
        };
        let label = name.as_deref().unwrap_or(".");
        let dir = dirs
            .get(&d)
            .ok_or_else(|| format!("{label}: no Directory {d}"))?;
        check_dir(fd.as_fd(), expect.uid, expect.keep_as).map_err(|r| format!("{label}: {r}"))?;
        let mut entries = 0usize;
        for ent in rustix::fs::Dir::read_from(&*fd).map_err(e("read dir"))? {
            let ent = ent.map_err(e("read dir"))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                entries += 1;
            }
        }
        if entries != dir.files.len() + dir.directories.len() + dir.symlinks.len() {
            return Err(format!("{label}: entries were added or removed"));
        }
        for f in &dir.files {
            let fd_digest = Digest::from_field(d.function, f.digest.as_ref(), "FileNode.digest")
                .map_err(|x| x.to_string())?;
            let st =
                statat(&*fd, f.name.as_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(e(&f.name))?;
            let want = expect.inode((fd_digest, f.is_executable));
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
                || want != Some((st.st_dev, st.st_ino))
            {
                return Err(format!("{}: not the cached file", f.name));
            }
        }
        for s in &dir.symlinks {
            let target = readlinkat(&*fd, s.name.as_str(), Vec::new()).map_err(e(&s.name))?;
            if target.as_bytes() != s.target.as_bytes() {
                return Err(format!("{}: symlink changed", s.name));
            }
        }
        for c in &dir.directories {
            let cd = Digest::from_field(d.function, c.digest.as_ref(), "DirectoryNode.digest")
                .map_err(|x| x.to_string())?;
            stack.push((fd.clone(), Some(c.name.clone()), cd));
        }
    }
    Ok(())
}

/// Owner (then given to `keep_as`), mode (reset to 0755), xattrs and inode flags of one
/// directory. The owner and mode change first: from then on the action user cannot change
/// the directory (nor its xattrs) while it is looked at.
fn check_dir(fd: BorrowedFd<'_>, uid: u32, keep_as: Option<(u32, u32)>) -> Result<(), String> {
    let st = fstat(fd).map_err(|e| format!("stat: {e}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err("not a directory".into());
    }
    if st.st_uid != uid {
        return Err(format!("owned by uid {} instead of {uid}", st.st_uid));
    }
    if let Some((u, g)) = keep_as {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(u)),
            Some(rustix::fs::Gid::from_raw(g)),
        )
        .map_err(|e| format!("chown: {e}"))?;
    }
    if st.st_mode & 0o7777 != 0o755 {
        fchmod(fd, Mode::from_raw_mode(0o755)).map_err(|e| format!("chmod: {e}"))?;
    }
    let mut buf = [0u8; 4096];
    match rustix::fs::flistxattr(fd, &mut buf[..]) {
        Ok(n) => {
            let added = buf[..n]
                .split(|b| *b == 0)
                .filter(|x| !x.is_empty())
                .any(|x| !x.starts_with(b"security."));
            if added {
                return Err("has extended attributes".into());
            }
        }
        Err(rustix::io::Errno::NOTSUP) => {}
        Err(e) => return Err(format!("list xattrs: {e}")),
    }
    match rustix::fs::ioctl_getflags(fd) {
        Ok(f) if f.bits() & OWNER_FLAGS != 0 => Err(format!(
            "inode flags {:#x} were set",
            f.bits() & OWNER_FLAGS
        )),
        Ok(_) | Err(rustix::io::Errno::NOTTY | rustix::io::Errno::NOTSUP) => Ok(()),
        Err(e) => Err(format!("inode flags: {e}")),
    }
}

/// Gives every directory of the tree `name` in `parent` (Directory `digest`) to `owner`: a
/// tree from the cache, just moved into an action's input root, becomes as writable for the
/// action as a freshly staged one.
pub fn lend_to(
    parent: &OwnedFd,
    name: &str,
    digest: Digest,
    dirs: &HashMap<Digest, Arc<Directory>>,
    owner: (u32, u32),
) -> Result<(), String> {
    let flags = super::beneath::DIR;
    let top =
        openat(parent, name, flags, Mode::empty()).map_err(|e| format!("open {name}: {e}"))?;
    let mut stack: Vec<(Arc<OwnedFd>, Option<String>, Digest)> =
        vec![(Arc::new(top), None, digest)];
    while let Some((p, n, d)) = stack.pop() {
        let fd = match &n {
            None => p,
            Some(n) => Arc::new(
                openat(&*p, n.as_str(), flags, Mode::empty())
                    .map_err(|e| format!("open {n}: {e}"))?,
            ),
        };
        rustix::fs::fchown(
            &*fd,
            Some(rustix::fs::Uid::from_raw(owner.0)),
            Some(rustix::fs::Gid::from_raw(owner.1)),
        )
        .map_err(|e| format!("chown: {e}"))?;
        let dir = dirs.get(&d).ok_or_else(|| format!("no Directory {d}"))?;
        for c in &dir.directories {
            let cd = Digest::from_field(d.function, c.digest.as_ref(), "DirectoryNode.digest")
                .map_err(|x| x.to_string())?;
            stack.push((fd.clone(), Some(c.name.clone()), cd));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_flags_are_the_documented_bits() {
        use rustix::fs::IFlags;
        let named = IFlags::NOATIME
            | IFlags::SYNC
            | IFlags::DIRSYNC
            | IFlags::NODUMP
            | IFlags::SECURE_REMOVAL
            | IFlags::UNRM
            | IFlags::COMPRESSED
            | IFlags::TOPDIR
            | IFlags::PROJECT_INHERIT
            | IFlags::NOCOW
            | IFlags::JOURNALING
            | IFlags::APPEND
            | IFlags::IMMUTABLE;
        // ENCRYPT (0x800) and CASEFOLD (0x40000000) have no rustix name.
        assert_eq!(named.bits() | 0x800 | 0x4000_0000, OWNER_FLAGS);
    }
}
