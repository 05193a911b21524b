//! The source walk: regular files and directories, never following a symlink, in a stable order (each directory's
//! files before its subdirectories, names sorted). Streaming: nothing is kept per file, and one entry per directory
//! on the path being walked.
//!
//! What is neither is skipped with a warning: symlinks (xbstream cannot carry them, and following one could leave
//! the source), sockets, FIFOs and devices. A top-level file named like the manifest or like a stream marker
//! (`backup-stream-<i>.json`, left by `mbstream -x`) is skipped with a warning: it is taken to be part of the
//! backup this tree was restored from, and the new backup writes its own.
//!
//! Directories are handed over once the walk has left them (children before parents), for the manifest: xbstream
//! has no directory entries, and `mbstream -x` creates a directory only for a file in it, and only if its parent
//! exists. So a directory without a file of its own (an empty one, or one that holds only directories) cannot be
//! restored by the real tools, and the files below it are lost. The walk counts such directories; with
//! placeholders it also hands over, for each, an empty file ([`PLACEHOLDER_NAME`]) in it, in scan order (before
//! anything in its subdirectories), so that `mbstream -x` creates it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, Mode};
use proto::{MANIFEST_NAME, PLACEHOLDER_NAME, SHA1SUMS_NAME};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The source directory, held open for the whole walk and every read of it. Read threads open each file relative
/// to it by the file's relative path, so the kernel resolves that path's two or three components rather than the
/// whole path from `/` (opening by full path was a quarter of the read threads' time with 100,000 small files).
/// Where the kernel has `openat2` (Linux 5.6), the open also refuses every symlink on the way and any step out of
/// the source: a directory swapped for a symlink after the scan cannot lead a read elsewhere.
#[derive(Debug)]
pub struct SourceRoot {
    path: PathBuf,
    fd: OwnedFd,
}

/// Set once `openat2` turns out to be missing (an old kernel, or a seccomp filter that answers `ENOSYS`), so it is
/// not tried again for every file.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

impl SourceRoot {
    /// Opens the source directory `path` (`O_PATH`: it is only looked up from).
    pub fn open(path: &Path) -> Result<SourceRoot> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd =
            nix::fcntl::open(path, flags, Mode::empty()).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(SourceRoot { path: path.to_path_buf(), fd })
    }

    /// The source directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file at `relative` for reading, following no symlink at its end (and, with `openat2`,
    /// none on the way).
    pub fn open_file(&self, relative: &[u8]) -> std::io::Result<std::fs::File> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let relative = OsStr::from_bytes(relative);
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how =
                OpenHow::new().flags(flags).resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            match openat2(&self.fd, relative, how) {
                Ok(fd) => return Ok(fd.into()),
                Err(Errno::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(nix::fcntl::openat(&self.fd, relative, flags, Mode::empty())?.into())
    }
}

/// One regular file found by the walk.
#[derive(Debug, Clone)]
pub struct ScannedFile {
    /// The source directory it is in (below).
    pub root: Arc<SourceRoot>,
    /// The relative path as it goes on the wire (validated), and as it is opened in `root`.
    pub wire: Vec<u8>,
    /// Size when scanned.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// A `--dir-placeholders` file: not in the source, empty, read from `/dev/null`.
    pub placeholder: bool,
    /// What the scan's `stat` said of it (none without `stat`, and for placeholders), for telling whether it changed
    /// before or while it was read.
    pub stamp: Option<Stamp>,
}

impl ScannedFile {
    /// The path it was found at, for messages.
    pub fn source(&self) -> PathBuf {
        self.root.path.join(OsStr::from_bytes(&self.wire))
    }

    /// Opens it for reading (a placeholder: `/dev/null`).
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        match self.placeholder {
            true => std::fs::File::open("/dev/null"),
            false => self.root.open_file(&self.wire),
        }
    }
}

/// What `stat` says of a file that any write changes: its size, its modification time and its change time (the
/// kernel sets the change time on every write, and no call can set it back). Two equal stamps taken before and
/// after a read mean nothing was written in between — except a write within the same tick of the file system's
/// clock as the first stamp, which kernels before 6.13 (without fine-grained change times once a time was read)
/// can stamp with the same time, when it also keeps the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of an open file (`fstat`).
    pub fn of(file: &std::fs::File) -> std::io::Result<Stamp> {
        Ok(Stamp::of_stat(&fstat(file)?))
    }

    /// The stamp in a `stat` result.
    pub fn of_stat(st: &nix::sys::stat::FileStat) -> Stamp {
        Stamp {
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// One directory below the root, handed over once the walk has left it.
#[derive(Debug, Clone)]
pub struct ScannedDirectory {
    /// The relative path as it goes in the manifest (validated).
    pub wire: Vec<u8>,
    /// Permission bits (0 without `stat`).
    pub mode: u32,
    /// Modification time, seconds since the epoch (0 without `stat`).
    pub mtime: i64,
    /// Whether it holds a regular file of its own.
    pub has_files: bool,
    /// Whether a placeholder file was handed over for it.
    pub placeholder: bool,
}

/// What a walk hands over, in scan order.
#[derive(Debug, Clone)]
pub enum Found {
    /// A regular file (or a placeholder).
    File(ScannedFile),
    /// A directory the walk has left.
    Directory(ScannedDirectory),
}

/// What a walk found.
#[derive(Debug, Clone, Default)]
pub struct ScanTotals {
    /// Regular files visited (placeholders not counted).
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Entries skipped (symlinks, special files, a stale manifest).
    pub skipped: u64,
    /// Directories below the root.
    pub directories: u64,
    /// Of those, directories without a regular file of their own (which `mbstream -x` cannot create).
    pub fileless: u64,
    /// The first of them, for messages.
    pub fileless_example: Option<PathBuf>,
}

/// How a walk is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The checking pre-scan: warns about skipped entries; `stat` says whether sizes are wanted (for a progress
    /// total) — without it, `size`, `mode` and `mtime` are 0 and no `stat` call is made.
    Check {
        /// Whether to stat each file.
        stat: bool,
    },
    /// The streaming scan: every field filled, no warnings about entries the pre-scan already warned about. A
    /// file that vanished since it was listed, or an entry that became a symlink or special file after
    /// `changed_since` (the pre-scan's start: it was a file the pre-scan counted), is a warning naming it, or an
    /// error with `strict`.
    Stream {
        /// `--strict`.
        strict: bool,
        /// When the pre-scan started.
        changed_since: std::time::SystemTime,
    },
}

/// What a directory entry is, from `d_type` (or an `fstatat` where the file system does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    File,
    Symlink,
    Other,
}

impl Kind {
    fn of_mode(mode: u32) -> Kind {
        match mode & nix::libc::S_IFMT {
            nix::libc::S_IFDIR => Kind::Directory,
            nix::libc::S_IFREG => Kind::File,
            nix::libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// A directory being walked: its descriptor (every entry is looked at relative to it: no path is resolved twice),
/// its entries in walk order, and what is known of it.
struct Level {
    dir: Dir,
    /// Relative to the root (empty for the root).
    relative: PathBuf,
    entries: std::vec::IntoIter<(OsString, Kind)>,
    /// `None` for the root, which is not a directory of the backup.
    found: Option<ScannedDirectory>,
}

impl Level {
    /// Reads every entry of `dir` and sorts them: files (and whatever is not a directory) first, then
    /// directories, each by name.
    fn read(mut dir: Dir, relative: PathBuf, found: Option<ScannedDirectory>, full: &Path) -> Result<Level> {
        let mut listed = Vec::new();
        for entry in dir.iter() {
            let entry = entry.with_context(|| format!("cannot read {}", full.display()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                listed.push((OsStr::from_bytes(name).to_os_string(), entry.file_type()));
            }
        }
        let entries: Vec<(OsString, Kind)> = listed
            .into_iter()
            .map(|(name, kind)| {
                let kind = match kind {
                    Some(Type::Directory) => Kind::Directory,
                    Some(Type::File) => Kind::File,
                    Some(Type::Symlink) => Kind::Symlink,
                    Some(_) => Kind::Other,
                    // The file system does not say (some network ones): ask. Gone meanwhile: a file that
                    // vanished, which the stat of the streaming scan reports.
                    None => match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(st) => Kind::of_mode(st.st_mode),
                        Err(_) => Kind::File,
                    },
                };
                (name, kind)
            })
            .collect();
        let mut entries = entries;
        entries.sort_by(|a, b| (a.1 == Kind::Directory, &a.0).cmp(&(b.1 == Kind::Directory, &b.0)));
        Ok(Level { dir, relative, entries: entries.into_iter(), found })
    }
}

/// Walks `root`, calling `visit` for each regular file and directory (and, with `placeholders`, a placeholder
/// file for each directory without a file of its own). The producer walks twice — a checking pre-scan, so that
/// every path is validated before a byte is written, and the streaming scan. Every entry is opened or looked at
/// relative to its directory's descriptor, never by a path from the root (a lookup per component for each of a
/// million files was a third of the scan), and never through a symlink. A path that cannot go on the wire with
/// `suffix` appended (`.zst` when compressing; over 511 bytes) or a directory that cannot be read is an error
/// naming it.
pub fn walk(
    root: &Path,
    pass: Pass,
    suffix: &str,
    placeholders: bool,
    mut visit: impl FnMut(Found) -> Result<()>,
) -> Result<ScanTotals> {
    let warn = matches!(pass, Pass::Check { .. });
    let stat = matches!(pass, Pass::Check { stat: true } | Pass::Stream { .. });
    let mut totals = ScanTotals::default();
    let source_root = Arc::new(SourceRoot::open(root)?);
    let wire_of = |relative: &Path| -> Result<Vec<u8>> {
        proto::wire_path(relative)
            .and_then(|wire| {
                // The name it is stored under must pass too (only its length can differ: the suffix has no `/`).
                if !suffix.is_empty() {
                    let mut stored = wire.clone();
                    stored.extend_from_slice(suffix.as_bytes());
                    proto::checked_relative_path(&stored)?;
                }
                Ok(wire)
            })
            .with_context(|| format!("cannot back up {}", root.join(relative).display()))
    };
    // Hands over the placeholder of the directory `found` at `relative` (once).
    let placeholder = |relative: &Path, found: &mut ScannedDirectory, visit: &mut dyn FnMut(Found) -> Result<()>| {
        if !placeholders || found.placeholder {
            return Ok(());
        }
        found.placeholder = true;
        let wire = wire_of(&relative.join(PLACEHOLDER_NAME))?;
        let (mode, mtime) = (0o644, found.mtime);
        let root = Arc::clone(&source_root);
        visit(Found::File(ScannedFile { root, wire, size: 0, mode, mtime, placeholder: true, stamp: None }))
    };
    // An entry gone (or changed) since its directory was listed: a warning, or an error with --strict, in the
    // streaming scan (the pre-scan says nothing: the streaming scan will).
    let vanished = |totals: &mut ScanTotals, what: String| -> Result<()> {
        totals.skipped += 1;
        match pass {
            Pass::Stream { strict: true, .. } => bail!("{what} (--strict)"),
            Pass::Stream { strict: false, .. } => log::warn!("{what}; it is not in the backup"),
            Pass::Check { .. } => {}
        }
        Ok(())
    };
    let root_dir =
        Dir::open(root, DIR_FLAGS, Mode::empty()).with_context(|| format!("cannot read {}", root.display()))?;
    let mut stack = vec![Level::read(root_dir, PathBuf::new(), None, root)?];
    while let Some(level) = stack.last_mut() {
        let Some((name, kind)) = level.entries.next() else {
            // Every entry seen: the directory is finished.
            let level = stack.pop().expect("a level");
            if let Some(mut found) = level.found {
                totals.directories += 1;
                if !found.has_files {
                    totals.fileless += 1;
                    totals.fileless_example.get_or_insert_with(|| level.relative.clone());
                    placeholder(&level.relative, &mut found, &mut visit)?;
                }
                visit(Found::Directory(found))?;
            }
            continue;
        };
        let relative = level.relative.join(&name);
        let top_level = level.found.is_none();
        if kind == Kind::Directory {
            // Its parent's files are all behind: a parent without one gets its placeholder before anything below.
            if let Some(parent) = level.found.as_mut().filter(|parent| !parent.has_files) {
                placeholder(&level.relative, parent, &mut visit)?;
            }
            let wire = wire_of(&relative)?;
            let full = root.join(&relative);
            let dir = match Dir::openat(&level.dir, name.as_os_str(), DIR_FLAGS, Mode::empty()) {
                Ok(dir) => dir,
                // Dropped while the walk ran (DROP DATABASE on a live datadir).
                Err(Errno::ENOENT) => {
                    vanished(&mut totals, format!("{} vanished before it could be read", full.display()))?;
                    continue;
                }
                // Replaced by a file or a symlink since it was listed (never followed).
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    let what = format!("{} is no longer a directory (it changed since the scan)", full.display());
                    vanished(&mut totals, what)?;
                    continue;
                }
                Err(e) => bail!("cannot read {}: {e}", full.display()),
            };
            let (mode, mtime) = match stat.then(|| fstat(&dir)) {
                Some(Ok(st)) => (st.st_mode & 0o7777, st.st_mtime),
                Some(Err(e)) => bail!("cannot stat {}: {e}", full.display()),
                None => (0, 0),
            };
            let found = ScannedDirectory { wire, mode, mtime, has_files: false, placeholder: false };
            stack.push(Level::read(dir, relative, Some(found), &full)?);
            continue;
        }
        if kind != Kind::File {
            totals.skipped += 1;
            report_not_a_file(&level.dir, &name, &relative, kind, pass)?;
            continue;
        }
        if top_level && is_taken_name(name.as_bytes(), &relative, warn) {
            totals.skipped += 1;
            continue;
        }
        let wire = wire_of(&relative)?;
        let (size, mode, mtime, stamp) = if stat {
            match fstatat(&level.dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                // Replaced since it was listed: the pre-scan's ctime check above does not see it (its listing said
                // "file"); it is the same case as a file that vanishes before it is opened (see `file`).
                Ok(st) if Kind::of_mode(st.st_mode) != Kind::File => {
                    let what =
                        format!("{} is no longer a regular file (it changed since the scan)", relative.display());
                    vanished(&mut totals, what)?;
                    continue;
                }
                Ok(st) => (st.st_size as u64, st.st_mode & 0o7777, st.st_mtime, Some(Stamp::of_stat(&st))),
                // Deleted since the directory was listed: the same case as a file that vanishes before it is
                // opened (see `file`), reported the same way.
                Err(Errno::ENOENT) => {
                    let full = root.join(&relative);
                    vanished(&mut totals, format!("{} vanished before it could be read", full.display()))?;
                    continue;
                }
                Err(e) => bail!("cannot stat {}: {e}", root.join(&relative).display()),
            }
        } else {
            (0, 0, 0, None)
        };
        totals.files += 1;
        totals.bytes += size;
        if let Some(parent) = level.found.as_mut() {
            parent.has_files = true;
        }
        let root = Arc::clone(&source_root);
        visit(Found::File(ScannedFile { root, wire, size, mode, mtime, placeholder: false, stamp }))?;
    }
    Ok(totals)
}

/// An entry that is not a regular file is left out: the pre-scan says so (naming a symlink's target); the
/// streaming scan says so only of one that changed (ctime) since the pre-scan began, which the pre-scan counted as
/// a regular file (an error with `--strict`).
fn report_not_a_file(dir: &Dir, name: &OsStr, relative: &Path, kind: Kind, pass: Pass) -> Result<()> {
    if let Pass::Stream { strict, changed_since } = pass {
        let ctime = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok().map(|st| {
            std::time::UNIX_EPOCH
                + std::time::Duration::new(st.st_ctime.max(0) as u64, st.st_ctime_nsec.clamp(0, 999_999_999) as u32)
        });
        if ctime.is_some_and(|t| t >= changed_since) {
            let message = format!(
                "{} is no longer a regular file (it changed since the scan): it is not in the backup",
                relative.display()
            );
            if strict {
                bail!("{message} (--strict)");
            }
            log::warn!("{message}");
        }
    }
    if matches!(pass, Pass::Check { .. }) {
        let what = if kind == Kind::Symlink {
            match nix::fcntl::readlinkat(dir, name) {
                Ok(target) => format!("symlink -> {}", Path::new(&target).display()),
                Err(_) => "symlink".to_string(),
            }
        } else {
            "special file".to_string()
        };
        log::warn!("skipping {} ({what}): only regular files are backed up", relative.display());
    }
    Ok(())
}

/// Whether a file at the top of the source has a name this backup writes itself (the manifest, the SHA-1 list, a
/// stream marker): an earlier backup's, left out (said once, by the pre-scan: `warn`).
fn is_taken_name(name: &[u8], relative: &Path, warn: bool) -> bool {
    let what = if name == MANIFEST_NAME.as_bytes() || name == SHA1SUMS_NAME.as_bytes() {
        "manifest"
    } else if proto::is_marker_name(name) {
        "stream marker"
    } else {
        return false;
    };
    if warn {
        log::warn!("skipping {}: taken for an earlier backup's {what}; this backup writes its own", relative.display());
    }
    true
}

/// How the walk opens directories: never through a symlink.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn visits_regular_files_in_stable_order_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::write(root.join("z"), b"1").unwrap();
        fs::write(root.join("b/y"), b"22").unwrap();
        fs::write(root.join("b/c/x"), b"333").unwrap();
        fs::write(root.join(MANIFEST_NAME), b"{}").unwrap();
        fs::write(root.join("b").join(MANIFEST_NAME), b"kept: not top level").unwrap();
        fs::write(root.join("backup-stream-3.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        nix::unistd::mkfifo(&root.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut seen = Vec::new();
        let totals = walk(root, stream_pass(), "", false, |found| {
            if let Found::File(f) = found {
                seen.push((String::from_utf8(f.wire).unwrap(), f.size));
            }
            Ok(())
        })
        .unwrap();
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["z", "b/backup-manifest.json", "b/y", "b/c/x"]);
        assert_eq!((totals.files, totals.bytes, totals.skipped), (4, 1 + 19 + 2 + 3, 4));
        assert_eq!((totals.directories, totals.fileless), (2, 0));
    }

    fn stream_pass() -> Pass {
        Pass::Stream { strict: false, changed_since: std::time::SystemTime::UNIX_EPOCH }
    }

    /// Directories come once the walk has left them, with their modes; those without a file of their own are
    /// counted, and with placeholders each gets one, in scan order: before anything below it.
    #[test]
    fn directories_are_handed_over_and_fileless_ones_get_a_placeholder_before_their_children() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::create_dir_all(root.join("e")).unwrap();
        fs::create_dir_all(root.join("f/g")).unwrap();
        fs::write(root.join("a/b/c/x"), b"x").unwrap();
        fs::write(root.join("f/y"), b"y").unwrap();
        fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(root.join("e"), fs::Permissions::from_mode(0o750)).unwrap();
        for placeholders in [false, true] {
            let mut seen = Vec::new();
            let totals = walk(root, stream_pass(), "", placeholders, |found| {
                seen.push(match found {
                    Found::File(f) => format!(
                        "file {}{}",
                        String::from_utf8(f.wire).unwrap(),
                        if f.placeholder { " (placeholder)" } else { "" }
                    ),
                    Found::Directory(d) => format!(
                        "dir {} {:o}{}",
                        String::from_utf8(d.wire).unwrap(),
                        d.mode,
                        if d.has_files { "" } else { " fileless" }
                    ),
                });
                Ok(())
            })
            .unwrap();
            let p = |dir: &str| format!("file {dir}/{PLACEHOLDER_NAME} (placeholder)");
            let mut expected = vec![
                p("a"),
                p("a/b"),
                "file a/b/c/x".into(),
                "dir a/b/c 755".into(),
                "dir a/b 755 fileless".into(),
                "dir a 700 fileless".into(),
                p("e"),
                "dir e 750 fileless".into(),
                "file f/y".into(),
                p("f/g"),
                "dir f/g 755 fileless".into(),
                "dir f 755".into(),
            ];
            if !placeholders {
                expected.retain(|line| !line.ends_with("(placeholder)"));
            }
            assert_eq!(seen, expected);
            assert_eq!((totals.files, totals.directories, totals.fileless), (2, 6, 4));
            assert_eq!(totals.fileless_example.as_deref(), Some(Path::new("a/b")));
        }
    }

    /// Files are opened below the source root by their relative path, never through a symlink: not one at the end
    /// (a file swapped for a link after the scan), nor, where the kernel has `openat2`, one on the way (a
    /// directory swapped for a link to elsewhere).
    #[test]
    fn files_open_below_the_root_and_never_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"not ours").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("db")).unwrap();
        fs::write(root.join("db/t.frm"), b"ours").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("db/link.frm")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("swapped")).unwrap();
        let source = SourceRoot::open(root).unwrap();
        let mut read = String::new();
        std::io::Read::read_to_string(&mut source.open_file(b"db/t.frm").unwrap(), &mut read).unwrap();
        assert_eq!(read, "ours");
        let err = source.open_file(b"db/link.frm").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ELOOP), "{err}");
        assert_eq!(source.open_file(b"db/gone").unwrap_err().kind(), std::io::ErrorKind::NotFound);
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let err = source.open_file(b"swapped/secret").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(nix::libc::ELOOP), "{err}");
        }
    }

    #[test]
    fn a_path_too_long_for_the_wire_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        for _ in 0..3 {
            deep.push("d".repeat(200));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), b"x").unwrap();
        let err = walk(dir.path(), Pass::Check { stat: false }, "", false, |_| Ok(())).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.starts_with("cannot back up "), "{message}");
        // The deepest directory is already too long for the manifest.
        assert!(message.contains("is 602 bytes long (at most 511)"), "{message}");
    }
}
