//! The extraction target: every file is created *inside* `-C OUT`, whatever the stream says.
//!
//! Paths have already passed [`proto::safe_relative_path`] (no `..`, no absolute paths). On top of that every
//! directory is opened relative to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`, so a symlink already
//! inside OUT (`OUT/link -> /`) is never followed; missing directories are created (mode 0750), recursively.
//!
//! Files are written under a partial name, `<name>.xbpartial`, and renamed to their real name only once they are
//! proven complete ([`PartialFile::commit`]). On failure every partial file is removed, and a run killed outright
//! leaves only `*.xbpartial` files: nothing unproven ever looks complete.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::{fstatat, mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Suffix of files not yet proven complete.
pub const PARTIAL_SUFFIX: &str = ".xbpartial";

/// The directory files are extracted into.
#[derive(Debug)]
pub struct Target {
    root: Arc<OwnedFd>,
    root_path: PathBuf,
    overwrite: bool,
    /// OUT was empty when the run began: no file can pre-exist, so the per-file existence check is skipped (the
    /// final rename refuses to replace anything all the same).
    started_empty: bool,
    dirs: Mutex<HashMap<PathBuf, Arc<OwnedFd>>>,
}

/// A file being extracted: where it lives, under its partial name until committed.
#[derive(Debug)]
pub struct PartialFile {
    dir: Arc<OwnedFd>,
    name: OsString,
    partial_name: OsString,
    display: PathBuf,
}

impl Target {
    /// Opens (creating it if needed) the target directory.
    pub fn open(root: &Path, overwrite: bool) -> Result<Target> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create -C {}", root.display()))?;
        let fd = nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("cannot open -C {}", root.display()))?;
        let started_empty =
            std::fs::read_dir(root).with_context(|| format!("cannot read -C {}", root.display()))?.next().is_none();
        Ok(Target {
            root: Arc::new(fd),
            root_path: root.to_path_buf(),
            overwrite,
            started_empty,
            dirs: Mutex::new(HashMap::new()),
        })
    }

    /// The target directory's path.
    pub fn path(&self) -> &Path {
        &self.root_path
    }

    /// The target directory's descriptor.
    pub fn root_fd(&self) -> &OwnedFd {
        &self.root
    }

    /// Creates `relative` (a checked relative path) as a new, empty partial file and returns it opened for writing.
    /// Fails if the real name already exists (unless `--overwrite`), or a component is a symlink or not a directory.
    pub fn create(&self, relative: &Path) -> Result<(PartialFile, File)> {
        let name = relative.file_name().context("a checked path has a file name")?.to_os_string();
        let dir = self.directory(relative.parent().unwrap_or(Path::new("")), relative)?;
        let display = self.root_path.join(relative);
        if !self.started_empty {
            match fstatat(&*dir, name.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(_) if !self.overwrite => {
                    bail!("{} already exists (use --overwrite to replace it)", display.display())
                }
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => bail!("cannot check {}: {e}", display.display()),
            }
        }
        let mut partial_name = name.clone();
        partial_name.push(PARTIAL_SUFFIX);
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(&*dir, partial_name.as_os_str(), flags, Mode::from_bits_truncate(0o600)) {
            Err(Errno::EEXIST) if self.overwrite => {
                let _ = unlinkat(&*dir, partial_name.as_os_str(), UnlinkatFlags::NoRemoveDir);
                openat(&*dir, partial_name.as_os_str(), flags, Mode::from_bits_truncate(0o600))
            }
            Err(Errno::EEXIST) => bail!(
                "{}{PARTIAL_SUFFIX} exists: left by an interrupted extraction or another one running (remove it, or use --overwrite)",
                display.display()
            ),
            other => other,
        }
        .with_context(|| format!("cannot create {}{PARTIAL_SUFFIX}", display.display()))?;
        Ok((PartialFile { dir, name, partial_name, display }, File::from(fd)))
    }

    /// The descriptor of directory `relative_dir`, creating it and its parents as needed, never following a
    /// symlink. `file` is only for messages.
    fn directory(&self, relative_dir: &Path, file: &Path) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.dirs.lock().unwrap_or_else(|e| e.into_inner()).get(relative_dir) {
            return Ok(Arc::clone(fd));
        }
        let mut current = Arc::clone(&self.root);
        let mut walked = PathBuf::new();
        for component in relative_dir.components() {
            let Component::Normal(part) = component else { bail!("unexpected component in {}", file.display()) };
            walked.push(part);
            let cached = self.dirs.lock().unwrap_or_else(|e| e.into_inner()).get(&walked).cloned();
            current = match cached {
                Some(fd) => fd,
                None => {
                    let fd = Arc::new(open_or_make_dir(&current, part).map_err(|e| {
                        let at = self.root_path.join(&walked);
                        match e {
                            Errno::ELOOP | Errno::ENOTDIR => anyhow::anyhow!(
                                "refusing to extract {}: {} is a symlink or not a directory",
                                self.root_path.join(file).display(),
                                at.display()
                            ),
                            other => anyhow::anyhow!("cannot create directory {}: {other}", at.display()),
                        }
                    })?);
                    self.dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(walked.clone(), Arc::clone(&fd));
                    fd
                }
            };
        }
        Ok(current)
    }
}

fn open_or_make_dir(parent: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(parent, name, flags, Mode::empty()) {
        Err(Errno::ENOENT) => match mkdirat(parent, name, Mode::from_bits_truncate(0o750)) {
            Ok(()) | Err(Errno::EEXIST) => openat(parent, name, flags, Mode::empty()),
            Err(e) => Err(e),
        },
        other => other,
    }
}

impl PartialFile {
    /// Reopens the partial file for writing (after it was closed at its `E` chunk but more chunks arrived on other
    /// streams).
    pub fn reopen_for_write(&self) -> Result<File> {
        self.reopen(OFlag::O_WRONLY)
    }

    /// Reopens the partial file for reading (verification).
    pub fn reopen_for_read(&self) -> Result<File> {
        self.reopen(OFlag::O_RDONLY)
    }

    fn reopen(&self, mode: OFlag) -> Result<File> {
        let fd = openat(
            &*self.dir,
            self.partial_name.as_os_str(),
            mode | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot reopen {}{PARTIAL_SUFFIX}", self.display.display()))?;
        Ok(File::from(fd))
    }

    /// Renames the proven file to its real name (never replacing an existing file unless `overwrite`).
    pub fn commit(&self, overwrite: bool) -> Result<()> {
        let flags = if overwrite { RenameFlags::empty() } else { RenameFlags::RENAME_NOREPLACE };
        renameat2(&*self.dir, self.partial_name.as_os_str(), &*self.dir, self.name.as_os_str(), flags).map_err(|e| {
            if e == Errno::EEXIST {
                anyhow::anyhow!("{} already exists (use --overwrite to replace it)", self.display.display())
            } else {
                anyhow::anyhow!("cannot rename {}{PARTIAL_SUFFIX} into place: {e}", self.display.display())
            }
        })
    }

    /// Removes the partial file (best effort: used while failing).
    pub fn discard(&self) {
        if let Err(e) = unlinkat(&*self.dir, self.partial_name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            if e != Errno::ENOENT {
                log::warn!("could not remove {}{PARTIAL_SUFFIX}: {e}", self.display.display());
            }
        }
    }

    /// The file's final path, for messages.
    pub fn display(&self) -> &Path {
        &self.display
    }

    /// The final name's bytes.
    pub fn name_bytes(&self) -> &[u8] {
        self.name.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn creates_nested_partial_files_and_commits_them() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path(), false).unwrap();
        let (partial, mut file) = target.create(Path::new("a/b/c/file")).unwrap();
        file.write_all(b"data").unwrap();
        assert!(dir.path().join("a/b/c/file.xbpartial").exists());
        assert!(!dir.path().join("a/b/c/file").exists());
        partial.commit(false).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b/c/file")).unwrap(), b"data");
        // Into a non-empty target, an existing name is refused up front.
        let target = Target::open(dir.path(), false).unwrap();
        let err = target.create(Path::new("a/b/c/file")).unwrap_err();
        assert!(err.to_string().ends_with("a/b/c/file already exists (use --overwrite to replace it)"), "{err}");
    }

    #[test]
    fn never_follows_a_symlink_inside_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let target = Target::open(dir.path(), true).unwrap();
        let err = target.create(Path::new("link/x")).unwrap_err();
        assert!(err.to_string().contains("link is a symlink or not a directory"), "{err}");
        // A symlink as the file itself: the partial name is separate, and the commit replaces the link itself
        // (rename never follows), so nothing is written through it.
        std::os::unix::fs::symlink(outside.path().join("victim"), dir.path().join("f")).unwrap();
        let (partial, mut file) = target.create(Path::new("f")).unwrap();
        file.write_all(b"x").unwrap();
        partial.commit(true).unwrap();
        assert!(!outside.path().join("victim").exists());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn discard_removes_the_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path(), false).unwrap();
        let (partial, _file) = target.create(Path::new("x")).unwrap();
        partial.discard();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
