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

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use proto::manifest::{MANIFEST_NAME, PLACEHOLDER_NAME, SHA1SUMS_NAME};

/// One regular file found by the walk.
#[derive(Debug, Clone)]
pub struct ScannedFile {
    /// Path to open (source root joined with the relative path).
    pub source: PathBuf,
    /// The relative path as it goes on the wire (validated).
    pub wire: Vec<u8>,
    /// Size when scanned.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// A `--dir-placeholders` file: not in the source, empty, read from `/dev/null`.
    pub placeholder: bool,
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

/// A directory on the path being walked.
struct OpenDirectory {
    depth: usize,
    relative: PathBuf,
    found: ScannedDirectory,
    /// Gone while the walk read it (it is not recorded).
    vanished: bool,
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

/// Walks `root`, calling `visit` for each regular file and directory (and, with `placeholders`, a placeholder
/// file for each directory without a file of its own). The producer walks twice — a checking pre-scan, so that
/// every path is validated before a byte is written, and the streaming scan. A path that cannot go on the wire
/// with `suffix` appended (`.zst` when compressing; over 511 bytes) or a directory that cannot be read is an error
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
    let mut open: Vec<OpenDirectory> = Vec::new();
    let wire_of = |relative: &Path, full: &Path| -> Result<Vec<u8>> {
        proto::path::wire_path(relative)
            .and_then(|wire| {
                let mut stored = wire.clone();
                stored.extend_from_slice(suffix.as_bytes());
                proto::safe_relative_path(&stored).map(|_| wire)
            })
            .with_context(|| format!("cannot back up {}", full.display()))
    };
    // Hands over the placeholder of `directory` (once).
    let placeholder = |directory: &mut OpenDirectory, visit: &mut dyn FnMut(Found) -> Result<()>| -> Result<()> {
        if !placeholders || directory.found.placeholder {
            return Ok(());
        }
        directory.found.placeholder = true;
        let relative = directory.relative.join(PLACEHOLDER_NAME);
        let wire = wire_of(&relative, &root.join(&relative))?;
        let (mode, mtime) = (0o644, directory.found.mtime);
        visit(Found::File(ScannedFile { source: "/dev/null".into(), wire, size: 0, mode, mtime, placeholder: true }))
    };
    // Finishes the directories the walk has left (deeper than `depth`).
    let leave = |open: &mut Vec<OpenDirectory>,
                 depth: usize,
                 totals: &mut ScanTotals,
                 visit: &mut dyn FnMut(Found) -> Result<()>|
     -> Result<()> {
        while open.last().is_some_and(|directory| directory.depth >= depth) {
            let mut directory = open.pop().expect("checked");
            if directory.vanished {
                continue;
            }
            totals.directories += 1;
            if !directory.found.has_files {
                totals.fileless += 1;
                totals.fileless_example.get_or_insert_with(|| directory.relative.clone());
                placeholder(&mut directory, visit)?;
            }
            visit(Found::Directory(directory.found))?;
        }
        Ok(())
    };
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .sort_by(|a, b| (a.file_type().is_dir(), a.file_name()).cmp(&(b.file_type().is_dir(), b.file_name())));
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let path = e.path().map(|p| p.display().to_string()).unwrap_or_default();
                if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) && e.depth() > 0 {
                    // A directory dropped while the walk ran (DROP DATABASE on a live datadir).
                    totals.skipped += 1;
                    if let Some(gone) =
                        open.iter_mut().find(|directory| Some(root.join(&directory.relative).as_path()) == e.path())
                    {
                        gone.vanished = true;
                    }
                    match pass {
                        Pass::Stream { strict: true, .. } => {
                            bail!("{path} vanished before it could be read (--strict)")
                        }
                        Pass::Stream { strict: false, .. } => {
                            log::warn!("{path} vanished before it could be read; it is not in the backup")
                        }
                        Pass::Check { .. } => {}
                    }
                    continue;
                }
                bail!("cannot read {path}: {}", e.io_error().map_or(e.to_string(), |io| io.to_string()));
            }
        };
        leave(&mut open, entry.depth(), &mut totals, &mut visit)?;
        let kind = entry.file_type();
        let relative = entry.path().strip_prefix(root).expect("walkdir yields paths under its root");
        if kind.is_dir() {
            // Its parent's files are all behind: a parent without one gets its placeholder before anything below.
            if let Some(parent) = open.last_mut().filter(|parent| !parent.found.has_files) {
                placeholder(parent, &mut visit)?;
            }
            let wire = wire_of(relative, entry.path())?;
            let (mode, mtime) = match stat.then(|| entry.metadata()) {
                Some(Ok(meta)) => (meta.mode() & 0o7777, meta.mtime()),
                // Gone since it was listed: reading it will say so.
                Some(Err(_)) | None => (0, 0),
            };
            let found = ScannedDirectory { wire, mode, mtime, has_files: false, placeholder: false };
            open.push(OpenDirectory { depth: entry.depth(), relative: relative.to_path_buf(), found, vanished: false });
            continue;
        }
        if !kind.is_file() {
            totals.skipped += 1;
            // In the streaming scan: an entry that changed (ctime) since the pre-scan began was a regular file the
            // pre-scan counted, and is now left out: say so, naming it.
            if let Pass::Stream { strict, changed_since } = pass {
                let ctime = entry.path().symlink_metadata().ok().map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    std::time::UNIX_EPOCH
                        + std::time::Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().clamp(0, 999_999_999) as u32)
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
            if warn {
                let what = if kind.is_symlink() {
                    match std::fs::read_link(entry.path()) {
                        Ok(target) => format!("symlink -> {}", target.display()),
                        Err(_) => "symlink".to_string(),
                    }
                } else {
                    "special file".to_string()
                };
                log::warn!("skipping {} ({what}): only regular files are backed up", relative.display());
            }
            continue;
        }
        let name = entry.file_name().as_encoded_bytes();
        if entry.depth() == 1 && (name == MANIFEST_NAME.as_bytes() || name == SHA1SUMS_NAME.as_bytes()) {
            totals.skipped += 1;
            if warn {
                log::warn!(
                    "skipping {}: taken for an earlier backup's manifest; this backup writes its own",
                    relative.display()
                );
            }
            continue;
        }
        if entry.depth() == 1 && proto::marker::is_marker_name(name) {
            totals.skipped += 1;
            if warn {
                log::warn!(
                    "skipping {}: taken for an earlier backup's stream marker; this backup writes its own",
                    relative.display()
                );
            }
            continue;
        }
        let wire = wire_of(relative, entry.path())?;
        let (size, mode, mtime) = if stat {
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => {
                    // Deleted since the directory was listed: the same case as a file that vanishes before it is
                    // opened (see `file`), reported the same way.
                    totals.skipped += 1;
                    match pass {
                        Pass::Stream { strict: true, .. } => {
                            bail!("{} vanished before it could be read (--strict)", entry.path().display())
                        }
                        Pass::Stream { strict: false, .. } => log::warn!(
                            "{} vanished before it could be read; it is not in the backup",
                            entry.path().display()
                        ),
                        Pass::Check { .. } => {}
                    }
                    continue;
                }
                Err(e) => bail!(
                    "cannot stat {}: {}",
                    entry.path().display(),
                    e.io_error().map_or(e.to_string(), |io| io.to_string())
                ),
            };
            (meta.len(), meta.mode() & 0o7777, meta.mtime())
        } else {
            (0, 0, 0)
        };
        totals.files += 1;
        totals.bytes += size;
        if let Some(parent) = open.last_mut() {
            parent.found.has_files = true;
        }
        let source = entry.path().to_path_buf();
        visit(Found::File(ScannedFile { source, wire, size, mode, mtime, placeholder: false }))?;
    }
    leave(&mut open, 0, &mut totals, &mut visit)?;
    Ok(totals)
}

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
