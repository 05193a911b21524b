//! The source walk: regular files only, never following a symlink, in a stable order (each directory's files
//! before its subdirectories, names sorted). Streaming: nothing is kept per file.
//!
//! What is not a regular file is skipped with a warning: symlinks (xbstream cannot carry them, and following one
//! could leave the source), sockets, FIFOs and devices. Empty directories are not carried either (xbstream has no
//! directory entries). A top-level file named like the manifest or like a stream marker (`backup-stream-<i>.json`,
//! left by `mbstream -x`) is skipped with a warning: it is taken to be part of the backup this tree was restored
//! from, and the new backup writes its own.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use proto::manifest::{MANIFEST_NAME, SHA1SUMS_NAME};

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
}

/// What a walk found.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanTotals {
    /// Regular files visited.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Entries skipped (symlinks, special files, a stale manifest).
    pub skipped: u64,
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

/// Walks `root`, calling `visit` for each regular file. The producer walks twice — a checking pre-scan, so that
/// every path is validated before a byte is written, and the streaming scan. A path that cannot go on the wire
/// with `suffix` appended (`.zst` when compressing; over 511 bytes) or a directory that cannot be read is an error
/// naming it.
pub fn walk(
    root: &Path,
    pass: Pass,
    suffix: &str,
    mut visit: impl FnMut(ScannedFile) -> Result<()>,
) -> Result<ScanTotals> {
    let warn = matches!(pass, Pass::Check { .. });
    let stat = matches!(pass, Pass::Check { stat: true } | Pass::Stream { .. });
    let mut totals = ScanTotals::default();
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
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        let relative = entry.path().strip_prefix(root).expect("walkdir yields paths under its root");
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
        let wire = proto::path::wire_path(relative)
            .and_then(|wire| {
                let mut stored = wire.clone();
                stored.extend_from_slice(suffix.as_bytes());
                proto::safe_relative_path(&stored).map(|_| wire)
            })
            .with_context(|| format!("cannot back up {}", entry.path().display()))?;
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
        visit(ScannedFile { source: entry.path().to_path_buf(), wire, size, mode, mtime })?;
    }
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
        let totals =
            walk(root, Pass::Stream { strict: false, changed_since: std::time::SystemTime::UNIX_EPOCH }, "", |f| {
                seen.push((String::from_utf8(f.wire).unwrap(), f.size));
                Ok(())
            })
            .unwrap();
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["z", "b/backup-manifest.json", "b/y", "b/c/x"]);
        assert_eq!((totals.files, totals.bytes, totals.skipped), (4, 1 + 19 + 2 + 3, 4));
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
        let err = walk(dir.path(), Pass::Check { stat: false }, "", |_| Ok(())).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.starts_with("cannot back up "), "{message}");
        assert!(message.contains("is 604 bytes long (at most 511)"), "{message}");
    }
}
