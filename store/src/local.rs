//! `file://PATH`: a directory laid out like a bucket (a key `a/b/c` is the file `PATH/a/b/c`).
//!
//! An object is written to a temporary name beside its final one (`.tmp-<pid>-<n>-<name>`, never listed), synced,
//! renamed into place and its directory synced, so after a crash an object either exists whole or not at all.
//! Keys are checked (relative, no `.`/`..` components, no empty parts, never a temporary name) before they touch the
//! file system.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::{FailureKind, ObjectInfo, Result, Store, StoreError};

/// Prefix of the temporary names objects are written under before they are renamed into place.
const TEMP_PREFIX: &str = ".tmp-";

/// A directory used as an object store.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    next_temp: AtomicU64,
}

impl LocalStore {
    /// A store rooted at `root` (created by [`Store::ensure_container`] when missing).
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: root.into(), next_temp: AtomicU64::new(0) }
    }

    fn path(&self, op: &'static str, key: &str) -> Result<PathBuf> {
        let valid = key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.starts_with(TEMP_PREFIX));
        if !valid {
            return Err(StoreError::Failed {
                store: self.describe(),
                op,
                key: key.to_string(),
                message: "not a valid key".into(),
                kind: FailureKind::Permanent,
                cause: None,
            });
        }
        Ok(self.root.join(key))
    }

    /// A failure of the file system: the error's own words, classified by [`FailureKind::of_io`] (no space, no
    /// permission, a read-only file system are permanent), the error kept.
    /// Opens object `key` for reading; a missing one is [`StoreError::NotFound`].
    fn open_object(&self, key: &str) -> Result<File> {
        match File::open(self.path("get", key)?) {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound { store: self.describe(), key: key.to_string() })
            }
            Err(e) => Err(self.failed("get", key, e)),
        }
    }

    /// Hands bytes `range` of `file` (object `key`) to `consume`, up to the file's end if it comes first; returns
    /// how many.
    fn read_at(
        &self,
        key: &str,
        file: &File,
        range: std::ops::Range<u64>,
        consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut buffer = vec![0u8; range.end.saturating_sub(range.start).min(1 << 20) as usize];
        let mut at = range.start;
        while at < range.end {
            let want = ((range.end - at) as usize).min(buffer.len());
            let n = match file.read_at(&mut buffer[..want], at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.failed("get", key, e)),
            };
            consume(&buffer[..n]).map_err(|source| StoreError::Consumer {
                store: self.describe(),
                key: key.to_string(),
                source,
            })?;
            at += n as u64;
        }
        Ok(at - range.start)
    }

    fn failed(&self, op: &'static str, key: &str, error: std::io::Error) -> StoreError {
        StoreError::Failed {
            store: self.describe(),
            op,
            key: key.to_string(),
            message: error.to_string(),
            kind: FailureKind::of_io(&error),
            cause: Some(Arc::new(error)),
        }
    }

    /// A failure of a directory walk (a listing): as [`LocalStore::failed`] when it is the file system's, permanent
    /// otherwise (a symbolic-link loop).
    fn walk_failed(&self, prefix: &str, error: walkdir::Error) -> StoreError {
        let kind = error.io_error().map_or(FailureKind::Permanent, FailureKind::of_io);
        StoreError::Failed {
            store: self.describe(),
            op: "list",
            key: prefix.to_string(),
            message: error.to_string(),
            kind,
            cause: Some(Arc::new(error)),
        }
    }

    /// Writes `body` to a temporary name beside `key`'s file, syncs it, puts it in place as `place` says and syncs
    /// the directory. A create-only put links the temporary file to the final name (`link` refuses an existing
    /// name, atomically, on every POSIX file system, NFS included) and then removes the temporary name.
    fn store(&self, key: &str, body: &[u8], place: Place) -> Result<()> {
        let path = self.path("put", key)?;
        let failed = |e: std::io::Error| self.failed("put", key, e);
        let dir = path.parent().expect("a key has a parent: the root");
        fs::create_dir_all(dir).map_err(failed)?;
        let name = path.file_name().expect("a checked key has a name").to_string_lossy();
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!("{TEMP_PREFIX}{}-{n}-{name}", std::process::id()));
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
            file.write_all(body)?;
            file.sync_all()?;
            match place {
                Place::Replace => fs::rename(&temp, &path)?,
                Place::New => place_new(&temp, &path)?,
            }
            File::open(dir)?.sync_all()
        })();
        match written {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                match e.kind() {
                    std::io::ErrorKind::AlreadyExists => {
                        Err(StoreError::AlreadyExists { store: self.describe(), key: key.to_string() })
                    }
                    _ => Err(failed(e)),
                }
            }
        }
    }
}

/// A local object's version, as an ETag: its inode, modification time (to the nanosecond) and size, as
/// `object_store`'s own local store makes them. Every put writes a new file (a new inode) and puts it in place, so
/// any rewrite changes it, even within one tick of the file-system clock. A copy of the store's directory
/// elsewhere (`cp -a`, `rsync -a`) has other inodes, so its ETags differ from those recorded.
fn local_e_tag(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{:x}-{:x}.{:09}-{:x}", meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.size())
}

/// Puts the written temporary file `temp` in place as `path` only if nothing has that name: `link()` (POSIX, NFS
/// included), or where the file system refuses links (some FUSE and SMB mounts), a rename that refuses to replace
/// (`RENAME_NOREPLACE`). Either fails with `AlreadyExists` when the name is taken.
fn place_new(temp: &std::path::Path, path: &std::path::Path) -> std::io::Result<()> {
    use std::io::ErrorKind;
    match fs::hard_link(temp, path) {
        Ok(()) => fs::remove_file(temp),
        Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::Unsupported) => {
            let at = nix::fcntl::AT_FDCWD;
            nix::fcntl::renameat2(at, temp, at, path, nix::fcntl::RenameFlags::RENAME_NOREPLACE).map_err(|errno| {
                match errno {
                    nix::errno::Errno::EEXIST => std::io::Error::from(ErrorKind::AlreadyExists),
                    errno => std::io::Error::other(format!(
                        "this file system refuses hard links ({e}) and renames that do not replace ({errno}): an \
                         object cannot be created only if it does not exist here"
                    )),
                }
            })
        }
        Err(e) => Err(e),
    }
}

/// How [`LocalStore::store`] puts an object in place.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// Replacing whatever has the name (`rename`).
    Replace,
    /// Only if nothing has the name (`link`).
    New,
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn ensure_container(&self) -> Result<()> {
        fs::create_dir_all(&self.root).map_err(|e| self.failed("create", "", e))
    }

    fn put(&self, key: &str, body: Bytes) -> Result<()> {
        self.store(key, &body, Place::Replace)
    }

    fn put_new(&self, key: &str, body: Bytes) -> Result<()> {
        self.store(key, &body, Place::New)
    }

    fn get(&self, key: &str, consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>) -> Result<u64> {
        let file = self.open_object(key)?;
        self.read_at(key, &file, 0..u64::MAX, consume)
    }

    fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> Result<u64> {
        let file = self.open_object(key)?;
        let got = self.read_at(key, &file, range.clone(), consume)?;
        if got != range.end.saturating_sub(range.start) {
            return Err(crate::short_object(self.describe(), key, &range, got));
        }
        Ok(got)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = if prefix.is_empty() { self.root.clone() } else { self.path("list", prefix)? };
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        // Objects (and the directories `delete` empties) may go while the walk runs, as they may from a bucket
        // being listed: what vanished is simply not listed.
        let vanished = |e: &walkdir::Error| e.io_error().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        for entry in walkdir::WalkDir::new(&dir).follow_links(false).min_depth(1).sort_by_file_name() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(self.walk_failed(prefix, e)),
            };
            let name = entry.file_name().to_string_lossy();
            if !entry.file_type().is_file() || name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let relative = entry.path().strip_prefix(&self.root).expect("under the root");
            let key = relative.to_string_lossy().into_owned();
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(self.walk_failed(prefix, e)),
            };
            found.push(ObjectInfo { key, size: meta.len(), e_tag: Some(local_e_tag(&meta)) });
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = if prefix.is_empty() { self.root.clone() } else { self.path("list", prefix)? };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.failed("list", prefix, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.failed("list", prefix, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_dir()) && !name.starts_with(TEMP_PREFIX) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path("delete", key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.failed("delete", key, e)),
        }
        // Empty directories left behind go too (up to, not including, the root), as they would in a bucket.
        let mut dir = path.parent();
        while let Some(current) = dir {
            if current == self.root || fs::remove_dir(current).is_err() {
                break;
            }
            dir = current.parent();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_list_and_delete_like_a_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("bucket"));
        store.ensure_container().unwrap();
        store.put("b1/0/0001.xbs", Bytes::from_static(b"one")).unwrap();
        store.put("b1/index.json", Bytes::from_static(b"{}")).unwrap();
        store.put("b2/0/0001.xbs", Bytes::from_static(b"two!")).unwrap();
        assert_eq!(store.list_dirs("").unwrap(), ["b1", "b2"]);
        let listed = store.list("b1").unwrap();
        let listed: Vec<(&str, u64)> = listed.iter().map(ObjectInfo::key_size).collect();
        assert_eq!(listed, [("b1/0/0001.xbs", 3), ("b1/index.json", 2)]);
        assert_eq!(crate::get_small(&store, "b2/0/0001.xbs", 10).unwrap(), b"two!");
        assert!(crate::get_small(&store, "b2/0/0001.xbs", 3).is_err(), "larger than the caller takes");
        assert!(store.get("b2/missing", &mut |_| Ok(())).unwrap_err().is_not_found());
        store.delete("b1/0/0001.xbs").unwrap();
        store.delete("b1/0/0001.xbs").unwrap();
        assert!(!dir.path().join("bucket/b1/0").exists(), "empty directories go with their last object");
        assert_eq!(store.list("b1").unwrap().len(), 1);
    }

    /// A create-only put refuses an existing key, leaves it as it was and no temporary file behind; of many
    /// threads creating one key at once, exactly one succeeds.
    #[test]
    fn create_only_puts_refuse_a_taken_key_and_exactly_one_of_many_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store.put_new("b/index.json", Bytes::from_static(b"first")).unwrap();
        let err = store.put_new("b/index.json", Bytes::from_static(b"second")).unwrap_err();
        assert!(err.is_already_exists(), "{err}");
        assert_eq!(crate::get_small(&store, "b/index.json", 100).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path().join("b")).unwrap().count(), 1, "no temporary file left");
        for round in 0..20 {
            let key = format!("race/{round}");
            let wins: usize = std::thread::scope(|scope| {
                let tries: Vec<_> = (0..8u8)
                    .map(|i| {
                        let (store, key) = (&store, &key);
                        scope.spawn(move || store.put_new(key, Bytes::from(vec![i; 100])).is_ok())
                    })
                    .collect();
                tries.into_iter().map(|t| usize::from(t.join().unwrap())).sum()
            });
            assert_eq!(wins, 1, "round {round}");
        }
    }

    /// A failure of the file system is permanent (retrying the same run cannot make room or grant a permission),
    /// keeps the file system's error, and reads as before: the error's own words.
    #[test]
    fn file_system_failures_are_permanent_and_keep_their_error() {
        let dir = tempfile::tempdir().unwrap();
        // The root is a file: every put fails with ENOTDIR, whoever runs the test (root ignores permissions).
        let root = dir.path().join("not-a-directory");
        fs::write(&root, b"x").unwrap();
        let store = LocalStore::new(&root);
        let err = store.put("b/0/0001.xbs", Bytes::from_static(b"one")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("file://{}: put b/0/0001.xbs: Not a directory (os error 20)", root.display())
        );
        assert_eq!(err.kind(), Some(FailureKind::Permanent), "{err:?}");
        assert!(!err.is_retryable());
        let cause = err.cause().and_then(|c| c.downcast_ref::<std::io::Error>()).expect("the io::Error is kept");
        assert_eq!(cause.raw_os_error(), Some(nix::errno::Errno::ENOTDIR as i32));
        // A key refused before it touches the file system: permanent, without a cause.
        let err = store.get("../x", &mut |_| Ok(())).unwrap_err();
        assert_eq!(err.kind(), Some(FailureKind::Permanent), "{err:?}");
        assert!(err.cause().is_none());
        // Answers are not failures.
        let store = LocalStore::new(dir.path().join("bucket"));
        assert_eq!(store.get("b/missing", &mut |_| Ok(())).unwrap_err().kind(), None);
    }

    /// How file-system and socket errors are classified: a full disk, a denied permission, a read-only file system
    /// and an I/O error are permanent; a timeout, an interruption, a busy resource and a reset connection are not.
    #[test]
    fn io_errors_are_classified_by_kind() {
        use nix::errno::Errno;
        let kind = |errno: Errno| FailureKind::of_io(&std::io::Error::from_raw_os_error(errno as i32));
        for errno in
            [Errno::ENOSPC, Errno::EACCES, Errno::EPERM, Errno::EROFS, Errno::EIO, Errno::ENOTDIR, Errno::EDQUOT]
        {
            assert_eq!(kind(errno), FailureKind::Permanent, "{errno}");
        }
        for errno in
            [Errno::ETIMEDOUT, Errno::EINTR, Errno::EAGAIN, Errno::EBUSY, Errno::ECONNRESET, Errno::ECONNREFUSED]
        {
            assert_eq!(kind(errno), FailureKind::Retryable, "{errno}");
        }
        assert_eq!(FailureKind::of_io(&std::io::Error::other("anything else")), FailureKind::Permanent);
    }

    #[test]
    fn hostile_keys_are_refused_and_temporaries_are_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        for key in ["../x", "/etc/x", "a/../../x", "", "a//b", "a/./b", ".tmp-1-2-x"] {
            let err = store.put(key, Bytes::from_static(b"x")).unwrap_err();
            assert!(err.to_string().contains("not a valid key"), "{key}: {err}");
        }
        fs::create_dir_all(dir.path().join("b")).unwrap();
        fs::write(dir.path().join("b/.tmp-99-0-half"), b"partial").unwrap();
        assert!(store.list("b").unwrap().is_empty());
    }
}
