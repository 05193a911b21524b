//! The extraction target: every file is created *inside* `-C OUT`, whatever the stream says, and nothing appears
//! under its real name before it is proven.
//!
//! Files are written into a private staging directory, `OUT/.xbkit-partial-<pid>/`, under their real relative
//! paths. Paths have already passed [`proto::safe_relative_path`] (no `..`, no absolute paths); on top of that every
//! directory is opened relative to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`, and files are created
//! with `O_EXCL | O_NOFOLLOW`. Nothing but this process creates entries in the staging directory, so no stream name
//! can collide with a temporary name, and names keep their full length.
//!
//! Once every file is proven, [`Target::commit`] moves the staged tree into OUT: first it plans every move and checks
//! every conflict (an existing file without `--overwrite`, a symlink or a file where a directory goes), and only then
//! renames — when OUT started empty, that is one rename per top-level entry. The manifest is moved last, after a
//! `syncfs`. Dropping an uncommitted target removes the staging directory, so a failure leaves nothing behind that
//! looks complete; a run killed outright leaves only `OUT/.xbkit-partial-<pid>/`.

use runtime::lock::Locked;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, AtFlags, Flock, FlockArg, OFlag, RenameFlags};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use proto::{DirectoryRecord, PLACEHOLDER_NAME};

use crate::sparse::SparseWriter;

/// Most staging directories kept open for the next file in them (each costs a descriptor): at most a quarter of
/// the open-file limit.
const DIRECTORY_CACHE_MAX: usize = 4096;

/// Prefix of the staging directory's name inside OUT.
pub const STAGING_PREFIX: &str = ".xbkit-partial-";

/// The directory files are extracted into, with its staging directory.
#[derive(Debug)]
pub struct Target {
    root: Arc<OwnedFd>,
    root_path: PathBuf,
    staging: Arc<OwnedFd>,
    staging_path: PathBuf,
    overwrite: bool,
    dirs: Mutex<HashMap<PathBuf, Arc<OwnedFd>>>,
    /// How many `dirs` may hold.
    dir_cache_max: usize,
    committed: AtomicBool,
    /// How file data is written: zero blocks of the staging directory's file system become holes.
    sparse: SparseWriter,
    /// The staging directory, locked while this run uses it.
    _lock: Option<Flock<OwnedFd>>,
}

/// A file being extracted, in the staging directory.
#[derive(Debug)]
pub struct PartialFile {
    dir: Arc<OwnedFd>,
    name: OsString,
    display: PathBuf,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

impl Target {
    /// Opens (creating it if needed) the target directory and creates a fresh staging directory in it.
    pub fn open(root: &Path, overwrite: bool) -> Result<Target> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create -C {}", root.display()))?;
        let fd = nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("cannot open -C {}", root.display()))?;
        let root_fd = Arc::new(fd);
        remove_leftovers(&root_fd, root);
        let mut attempt = 0u32;
        let (staging, staging_name, lock) = loop {
            let name = match attempt {
                0 => format!("{STAGING_PREFIX}{}", std::process::id()),
                n => format!("{STAGING_PREFIX}{}-{n}", std::process::id()),
            };
            match mkdirat(&*root_fd, name.as_str(), Mode::from_bits_truncate(0o700)) {
                Ok(()) => {
                    let fd = openat(&*root_fd, name.as_str(), DIR_FLAGS, Mode::empty())
                        .with_context(|| format!("cannot open {}", root.join(&name).display()))?;
                    // Held until the run ends, so that a later run knows this one is alive (on a file system
                    // without locks, the process id in the name still says so on this host).
                    let lock = fd.try_clone().ok().and_then(|fd| Flock::lock(fd, FlockArg::LockExclusiveNonblock).ok());
                    break (fd, name, lock);
                }
                Err(Errno::EEXIST) if attempt < 100 => attempt += 1,
                Err(e) => bail!("cannot create the staging directory {}: {e}", root.join(&name).display()),
            }
        };
        Ok(Target {
            root: root_fd,
            root_path: root.to_path_buf(),
            staging_path: root.join(staging_name),
            overwrite,
            dirs: Mutex::new(HashMap::new()),
            dir_cache_max: DIRECTORY_CACHE_MAX.min(runtime::limits::open_file_limit() as usize / 4).max(16),
            committed: AtomicBool::new(false),
            sparse: SparseWriter::for_directory(&staging),
            staging: Arc::new(staging),
            _lock: lock,
        })
    }

    /// Removes `name`, a file directly in the staging directory, so that the commit does not place it: what a
    /// partial restore does with the manifest, which would say OUT holds the whole backup.
    pub fn discard(&self, name: &OsStr) -> Result<()> {
        nix::unistd::unlinkat(&*self.staging, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .with_context(|| format!("cannot remove the staged {}", name.to_string_lossy()))
    }

    /// The target directory's path.
    pub fn path(&self) -> &Path {
        &self.root_path
    }

    /// How file data is written into this target (zero blocks become holes).
    pub fn sparse(&self) -> SparseWriter {
        self.sparse
    }

    /// Creates `relative` (a checked relative path) as a new, empty file in the staging directory and returns it
    /// opened for writing. A second file of the same name in one stream is an error.
    pub fn create(&self, relative: &Path) -> Result<(PartialFile, File)> {
        let dir = self.directory_of(relative)?;
        self.create_in(dir, relative)
    }

    /// The staging directory that `relative` (a checked relative path to a file) goes in, created as needed: for
    /// [`Target::create_in`], so that a caller creating many files in one directory looks it up once.
    pub fn directory_of(&self, relative: &Path) -> Result<Arc<OwnedFd>> {
        self.directory(relative.parent().unwrap_or(Path::new("")), relative)
    }

    /// [`Target::create`] in `dir`, the staging directory of `relative` ([`Target::directory_of`]).
    pub fn create_in(&self, dir: Arc<OwnedFd>, relative: &Path) -> Result<(PartialFile, File)> {
        match self.create_new_in(dir, relative)? {
            Ok(created) => Ok(created),
            Err(existing) => bail!("{} appears twice in the stream", existing.display().display()),
        }
    }

    /// [`Target::create_in`], or (`Err`) the file already staged under that name: a caller that forgot a file it
    /// wrote (see `extract`) takes it up again.
    pub fn create_new_in(
        &self,
        dir: Arc<OwnedFd>,
        relative: &Path,
    ) -> Result<Result<(PartialFile, File), PartialFile>> {
        let name = relative.file_name().context("a checked path has a file name")?.to_os_string();
        if relative.components().next().map(|c| c.as_os_str()) == self.staging_path.file_name() {
            bail!("refusing {}: it collides with this run's staging directory", relative.display());
        }
        let display = self.root_path.join(relative);
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(&*dir, name.as_os_str(), flags, Mode::from_bits_truncate(0o600)) {
            Err(Errno::EEXIST) => return Ok(Err(PartialFile { dir, name, display })),
            other => other.with_context(|| format!("cannot create {} (staged)", display.display()))?,
        };
        Ok(Ok((PartialFile { dir, name, display }, File::from(fd))))
    }

    /// A staged file again from its directory ([`Target::directory_of`]) and its relative path.
    pub fn partial(&self, dir: Arc<OwnedFd>, relative: &Path) -> Result<PartialFile> {
        let name = relative.file_name().context("a checked path has a file name")?.to_os_string();
        Ok(PartialFile { dir, name, display: self.root_path.join(relative) })
    }

    /// The staging descriptor of directory `relative_dir`, creating it and its parents as needed.
    fn directory(&self, relative_dir: &Path, file: &Path) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.dirs.locked().get(relative_dir) {
            return Ok(Arc::clone(fd));
        }
        let mut current = Arc::clone(&self.staging);
        let mut walked = PathBuf::new();
        for component in relative_dir.components() {
            let Component::Normal(part) = component else { bail!("unexpected component in {}", file.display()) };
            walked.push(part);
            let cached = self.dirs.locked().get(&walked).cloned();
            current = match cached {
                Some(fd) => fd,
                None => {
                    let fd = Arc::new(open_or_make_dir(&current, part).map_err(|e| {
                        let at = self.root_path.join(&walked);
                        match e {
                            Errno::ENOTDIR | Errno::ELOOP => anyhow::anyhow!(
                                "cannot extract {}: {} is also a file in the stream",
                                self.root_path.join(file).display(),
                                at.display()
                            ),
                            other => anyhow::anyhow!("cannot create directory {}: {other}", at.display()),
                        }
                    })?);
                    let mut dirs = self.dirs.locked();
                    // Bounded: one descriptor per cached directory, and a tree may have more directories than
                    // RLIMIT_NOFILE. Dropping the cache is safe (files being written hold their own directory).
                    if dirs.len() >= self.dir_cache_max {
                        dirs.clear();
                    }
                    dirs.insert(walked.clone(), Arc::clone(&fd));
                    fd
                }
            };
        }
        Ok(current)
    }

    /// Before the commit: every directory the manifest lists exists in the staging directory (an empty one is made
    /// there, so the commit checks its place like any other entry's), and the placeholders that `producer
    /// --dir-placeholders` put in the stream are gone. Paths pass the same checks as files'. Returns how many
    /// placeholders were removed.
    pub fn stage_directories(&self, directories: &[DirectoryRecord]) -> Result<u64> {
        let mut removed = 0;
        for record in directories {
            let relative = proto::safe_relative_path(&record.path.0)
                .with_context(|| format!("the manifest lists directory {}", record.path.display()))?;
            let dir = self.directory(&relative, &relative)?;
            if record.placeholder {
                let compressed = format!("{PLACEHOLDER_NAME}{}", proto::ZSTD_SUFFIX);
                for name in [PLACEHOLDER_NAME, compressed.as_str()] {
                    match nix::unistd::unlinkat(&*dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
                        Ok(()) => removed += 1,
                        Err(Errno::ENOENT) => {}
                        Err(e) => bail!("cannot remove {}: {e}", self.root_path.join(&relative).join(name).display()),
                    }
                }
            }
        }
        Ok(removed)
    }

    /// After the commit: each listed directory gets its permission bits (never setuid, setgid or sticky: the
    /// manifest may be hostile) and its mtime, last, once nothing more is created in it. Each is reached from OUT
    /// one component at a time, never following a symlink. With `sync`, the file system is synced after.
    pub fn restore_directories(&self, directories: &[DirectoryRecord], sync: bool) -> Result<()> {
        use nix::sys::stat::{fchmod, futimens};
        use nix::sys::time::TimeSpec;
        for record in directories.iter().filter(|record| record.mode != 0) {
            let relative = proto::safe_relative_path(&record.path.0)
                .with_context(|| format!("the manifest lists directory {}", record.path.display()))?;
            let display = self.root_path.join(&relative);
            let mut current: Option<OwnedFd> = None;
            for component in relative.components() {
                let parent: &OwnedFd = current.as_ref().unwrap_or(&self.root);
                let next = openat(parent, component.as_os_str(), DIR_FLAGS, Mode::empty())
                    .with_context(|| format!("cannot open directory {}", display.display()))?;
                current = Some(next);
            }
            let fd = current.with_context(|| format!("directory {} has an empty path", record.path.display()))?;
            fchmod(&fd, Mode::from_bits_truncate(record.mode & 0o777))
                .with_context(|| format!("cannot set the mode of {}", display.display()))?;
            futimens(&fd, &TimeSpec::UTIME_OMIT, &TimeSpec::new(record.mtime, 0))
                .with_context(|| format!("cannot set the mtime of {}", display.display()))?;
        }
        if sync && !directories.is_empty() {
            nix::unistd::syncfs(&*self.root).with_context(|| format!("cannot sync {}", self.root_path.display()))?;
        }
        Ok(())
    }

    /// Moves every staged entry but `last` into OUT (after checking every conflict first), syncs the file system
    /// when `sync`, then moves `last` (the manifest) with mode 0644, syncs OUT, and removes the staging directory.
    pub fn commit(&self, last: Option<&OsStr>, sync: bool) -> Result<()> {
        let mut moves = Vec::new();
        // The manifest's place is checked with every other conflict, before anything moves.
        let last_exists = match last {
            Some(last) => match fstatat(&*self.root, last, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(existing)
                    if !self.overwrite
                        || SFlag::from_bits_truncate(existing.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR =>
                {
                    bail!("{} already exists (use --overwrite to replace a file)", self.root_path.join(last).display())
                }
                Ok(_) => true,
                Err(Errno::ENOENT) => false,
                Err(e) => bail!("cannot check {}: {e}", self.root_path.join(last).display()),
            },
            None => false,
        };
        self.plan(&self.staging.clone(), &self.root.clone(), Path::new(""), last, &mut moves)?;
        for planned in &moves {
            let flags = if planned.replace { RenameFlags::empty() } else { RenameFlags::RENAME_NOREPLACE };
            renameat2(&*planned.from, planned.name.as_os_str(), &*planned.to, planned.name.as_os_str(), flags)
                .with_context(|| format!("cannot move {} into place", planned.display.display()))?;
        }
        if sync {
            nix::unistd::syncfs(&*self.root).with_context(|| format!("cannot sync {}", self.root_path.display()))?;
        }
        if let Some(last) = last {
            let file = File::from(
                openat(&*self.staging, last, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                    .with_context(|| format!("cannot open the staged {}", last.to_string_lossy()))?,
            );
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            if sync {
                file.sync_all()?;
            }
            let display = self.root_path.join(last);
            let flags = if last_exists { RenameFlags::empty() } else { RenameFlags::RENAME_NOREPLACE };
            renameat2(&*self.staging, last, &*self.root, last, flags)
                .with_context(|| format!("cannot move {} into place", display.display()))?;
            if sync {
                nix::unistd::fsync(&*self.root).context("cannot sync the target directory")?;
            }
        }
        self.committed.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_dir_all(&self.staging_path);
        Ok(())
    }

    /// Plans the moves of staged directory `from` (at `relative`) into `to`, checking every conflict.
    fn plan(
        &self,
        from: &Arc<OwnedFd>,
        to: &Arc<OwnedFd>,
        relative: &Path,
        skip: Option<&OsStr>,
        moves: &mut Vec<Move>,
    ) -> Result<()> {
        let staged_dir = self.staging_path.join(relative);
        let mut entries: Vec<(OsString, bool)> = std::fs::read_dir(&staged_dir)
            .with_context(|| format!("cannot read {}", staged_dir.display()))?
            .map(|entry| {
                let entry = entry?;
                Ok((entry.file_name(), entry.file_type()?.is_dir()))
            })
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read {}", staged_dir.display()))?;
        entries.sort();
        for (name, staged_is_dir) in entries {
            if relative.as_os_str().is_empty() && Some(name.as_os_str()) == skip {
                continue;
            }
            let display = self.root_path.join(relative).join(&name);
            match fstatat(&**to, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Err(Errno::ENOENT) => {
                    moves.push(Move { from: Arc::clone(from), to: Arc::clone(to), name, display, replace: false })
                }
                Err(e) => bail!("cannot check {}: {e}", display.display()),
                Ok(existing) => {
                    let kind = SFlag::from_bits_truncate(existing.st_mode) & SFlag::S_IFMT;
                    match (staged_is_dir, kind == SFlag::S_IFDIR) {
                        (true, true) => {
                            let from = Arc::new(openat(&**from, name.as_os_str(), DIR_FLAGS, Mode::empty())?);
                            let to = Arc::new(openat(&**to, name.as_os_str(), DIR_FLAGS, Mode::empty())?);
                            self.plan(&from, &to, &relative.join(&name), None, moves)?;
                        }
                        (true, false) => {
                            bail!("refusing to extract into {}: it is a symlink or not a directory", display.display())
                        }
                        (false, true) => bail!("cannot extract {}: a directory of that name exists", display.display()),
                        (false, false) if self.overwrite => moves.push(Move {
                            from: Arc::clone(from),
                            to: Arc::clone(to),
                            name,
                            display,
                            replace: true,
                        }),
                        (false, false) => {
                            bail!("{} already exists (use --overwrite to replace it)", display.display())
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Target {
    /// An uncommitted extraction leaves nothing: the staging directory goes.
    fn drop(&mut self) {
        if !self.committed.load(Ordering::SeqCst) {
            if let Err(e) = std::fs::remove_dir_all(&self.staging_path) {
                log::warn!("could not remove {}: {e}", self.staging_path.display());
            }
        }
    }
}

/// Removes the staging directories that interrupted runs (a killed `extract` or `get -C`) left in OUT, saying so;
/// one that a run still uses is left, with a warning. A run holds a lock on its staging directory (`flock`, which
/// NFS carries between hosts too): one that is locked is in use. One that is not locked is a leftover — unless a
/// process of its name's id is alive here and it changed in the last minute (a run between creating it and locking
/// it, or one of a version that did not lock). So a directory named after a process id that was reused since (after
/// a reboot, say) is still removed.
fn remove_leftovers(root_fd: &OwnedFd, root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|name| name.strip_prefix(STAGING_PREFIX)) else { continue };
        let path = root.join(&name);
        let Ok(dir) = openat(root_fd, name.as_os_str(), DIR_FLAGS, Mode::empty()) else {
            log::warn!("{} is not a directory left by an extraction: left as it is", path.display());
            continue;
        };
        let recent = nix::sys::stat::fstat(&dir).is_ok_and(|st| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            now.saturating_sub(st.st_mtime.max(0) as u64) < 60
        });
        let pid = rest.split('-').next().and_then(|pid| pid.parse::<i32>().ok());
        let alive =
            pid.is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) != Err(Errno::ESRCH));
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(_held) if !(alive && recent) => {
                log::warn!("removing {}: left by an extraction that was interrupted", path.display());
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    log::warn!("could not remove {}: {e}", path.display());
                }
            }
            _ => log::warn!("{} belongs to an extraction still running: left as it is", path.display()),
        }
    }
}

/// One rename of the commit.
struct Move {
    from: Arc<OwnedFd>,
    to: Arc<OwnedFd>,
    name: OsString,
    display: PathBuf,
    replace: bool,
}

fn open_or_make_dir(parent: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    match openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Err(Errno::ENOENT) => match mkdirat(parent, name, Mode::from_bits_truncate(0o750)) {
            Ok(()) | Err(Errno::EEXIST) => openat(parent, name, DIR_FLAGS, Mode::empty()),
            Err(e) => Err(e),
        },
        other => other,
    }
}

impl PartialFile {
    /// Reopens the file for writing (after it was closed at its `E` chunk but more chunks arrived on other
    /// streams).
    pub fn reopen_for_write(&self) -> Result<File> {
        self.reopen(OFlag::O_WRONLY)
    }

    /// Reopens the file for reading (verification).
    pub fn reopen_for_read(&self) -> Result<File> {
        self.reopen(OFlag::O_RDONLY)
    }

    /// Reopens the file for reading if it exists (`None`: no such file was staged).
    pub fn try_reopen_for_read(&self) -> Result<Option<File>> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(&*self.dir, self.name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot reopen {} (staged)", self.display.display())),
        }
    }

    fn reopen(&self, mode: OFlag) -> Result<File> {
        let fd = openat(&*self.dir, self.name.as_os_str(), mode | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("cannot reopen {} (staged)", self.display.display()))?;
        Ok(File::from(fd))
    }

    /// Sets the file's permission bits (`mode & 0o777`) and, if given, its modification time (seconds since the epoch), by name
    /// in its staging directory, without opening it.
    pub fn set_metadata(&self, mode: u32, mtime: Option<i64>) -> Result<()> {
        use nix::sys::stat::{fchmodat, utimensat, FchmodatFlags, UtimensatFlags};
        use nix::sys::time::TimeSpec;
        let name = self.name.as_os_str();
        if let Some(mtime) = mtime {
            let mtime = TimeSpec::new(mtime, 0);
            utimensat(&*self.dir, name, &TimeSpec::UTIME_OMIT, &mtime, UtimensatFlags::NoFollowSymlink)
                .with_context(|| format!("cannot set the mtime of {}", self.display.display()))?;
        }
        // Following is safe here: the staging directory (0700) holds only the regular files this run created, and
        // glibc's no-follow fchmodat costs three extra system calls per file.
        // Permission bits only: a manifest (which may be hostile) never sets setuid, setgid or sticky.
        fchmodat(&*self.dir, name, Mode::from_bits_truncate(mode & 0o777), FchmodatFlags::FollowSymlink)
            .with_context(|| format!("cannot set the mode of {}", self.display.display()))
    }

    /// Sets the permission bits (`mode & 0o777`) and modification time of the file open as `file`, then closes it:
    /// [`PartialFile::set_metadata`] without the two lookups by name (a tenth of the consumer's CPU with 100,000
    /// small files).
    pub fn set_metadata_and_close(&self, file: File, mode: u32, mtime: i64) -> Result<()> {
        use nix::sys::stat::{fchmod, futimens};
        use nix::sys::time::TimeSpec;
        futimens(&file, &TimeSpec::UTIME_OMIT, &TimeSpec::new(mtime, 0))
            .with_context(|| format!("cannot set the mtime of {}", self.display.display()))?;
        // Permission bits only, as by name.
        fchmod(&file, Mode::from_bits_truncate(mode & 0o777))
            .with_context(|| format!("cannot set the mode of {}", self.display.display()))?;
        self.close(file)
    }

    /// Closes the file open as `file` explicitly, so that a failed close (an I/O error the kernel reports only
    /// then, e.g. on NFS) is an error: a file whose close fails is not complete.
    pub fn close(&self, file: File) -> Result<()> {
        nix::unistd::close(file).with_context(|| format!("cannot close {} (staged)", self.display.display()))
    }

    /// The file's final path, for messages.
    pub fn display(&self) -> &Path {
        &self.display
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn stage(target: &Target, path: &str, data: &[u8]) {
        let (_, mut file) = target.create(Path::new(path)).unwrap();
        file.write_all(data).unwrap();
    }

    #[test]
    fn staged_files_appear_only_at_commit_and_the_staging_directory_goes() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path(), false).unwrap();
        stage(&target, "a/b/c/file", b"data");
        stage(&target, &format!("long{}", "n".repeat(240)), b"a 244-byte name");
        stage(&target, "m.json", b"{}");
        assert!(!dir.path().join("a").exists(), "nothing under its real name before the commit");
        target.commit(Some(OsStr::new("m.json")), false).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b/c/file")).unwrap(), b"data");
        assert_eq!(std::fs::read(dir.path().join("m.json")).unwrap(), b"{}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().all(|n| !n.to_string_lossy().starts_with(STAGING_PREFIX)));
    }

    #[test]
    fn conflicts_are_found_before_anything_moves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("db/t1"), b"precious").unwrap();
        let target = Target::open(dir.path(), false).unwrap();
        stage(&target, "aaa", b"would move first");
        stage(&target, "db/t1", b"new");
        let err = target.commit(None, false).unwrap_err();
        assert!(err.to_string().ends_with("db/t1 already exists (use --overwrite to replace it)"), "{err}");
        assert!(!dir.path().join("aaa").exists(), "nothing moved");
        drop(target);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("db")], "the staging directory is gone");
        assert_eq!(std::fs::read(dir.path().join("db/t1")).unwrap(), b"precious");
        // With --overwrite, files merge into existing directories.
        let target = Target::open(dir.path(), true).unwrap();
        stage(&target, "db/t1", b"new");
        stage(&target, "db/t2", b"two");
        target.commit(None, false).unwrap();
        assert_eq!(std::fs::read(dir.path().join("db/t1")).unwrap(), b"new");
        assert_eq!(std::fs::read(dir.path().join("db/t2")).unwrap(), b"two");
    }

    #[test]
    fn never_follows_a_symlink_inside_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let target = Target::open(dir.path(), true).unwrap();
        stage(&target, "link/x", b"evil");
        let err = target.commit(None, false).unwrap_err();
        assert!(err.to_string().contains("link: it is a symlink or not a directory"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // A symlink where a file goes is replaced (with --overwrite), never written through.
        std::os::unix::fs::symlink(outside.path().join("victim"), dir.path().join("f")).unwrap();
        let target = Target::open(dir.path(), true).unwrap();
        stage(&target, "f", b"x");
        target.commit(None, false).unwrap();
        assert!(!outside.path().join("victim").exists());
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"x");
    }

    #[test]
    fn a_name_twice_in_one_stream_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path(), false).unwrap();
        stage(&target, "x", b"1");
        let err = target.create(Path::new("x")).unwrap_err();
        assert!(err.to_string().ends_with("x appears twice in the stream"), "{err}");
    }
}
