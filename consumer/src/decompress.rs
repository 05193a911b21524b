//! `consumer decompress OUT`: turns every `<path>.zst` of an extracted tree back into `<path>`, like
//! `xtrabackup --decompress`, checking the result against the manifest when the tree has one.
//!
//! Any zstd file decodes (skippable frames included), so this also serves `.zst` files that were not written by our
//! producer. Outputs are staged and moved into place together, as `extract` does, only when every one decompressed
//! and checked out; `--remove-original` deletes the `.zst` files only after that.

use runtime::lock::Locked;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use proto::strip_zstd_suffix;
use proto::CrcPiece;
use proto::{FileRecord, Manifest, MANIFEST_NAME};
use sha1::{Digest as _, Sha1};

use crate::target::Target;

/// Decompresses every `.zst` under `root` with `threads` threads; returns a summary.
pub fn run(root: &Path, remove_original: bool, overwrite: bool, threads: usize) -> Result<String> {
    let manifest = match std::fs::read(root.join(MANIFEST_NAME)) {
        Ok(bytes) => Some(Manifest::from_json(&bytes).context("cannot read the tree's manifest")?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::warn!("{} has no {MANIFEST_NAME}: decompressed files cannot be checked", root.display());
            None
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.join(MANIFEST_NAME).display())),
    };
    let records: std::collections::HashMap<Vec<u8>, &FileRecord> = manifest
        .iter()
        .flat_map(|m| m.files.iter())
        .filter_map(|record| record.stored.as_ref().map(|stored| (stored.path.0.clone(), record)))
        .collect();
    let mut work: Vec<PathBuf> = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
        let entry = entry.with_context(|| format!("cannot walk {}", root.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry.path().strip_prefix(root).expect("under the root").to_path_buf();
        use std::os::unix::ffi::OsStrExt;
        if strip_zstd_suffix(relative.as_os_str().as_bytes()).is_some() {
            work.push(relative);
        }
    }
    work.sort();
    // Every compressed file the manifest lists must be here, compressed or already decompressed.
    let mut missing: Vec<String> = Vec::new();
    for record in manifest.iter().flat_map(|m| m.files.iter()) {
        let Some(stored) = &record.stored else { continue };
        let present = |wire: &[u8]| {
            proto::safe_relative_path(wire).is_ok_and(|relative| std::fs::symlink_metadata(root.join(relative)).is_ok())
        };
        if !present(&stored.path.0) && !present(&record.path.0) {
            missing.push(stored.path.display());
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} file(s) the manifest lists are missing from {}: {}{}",
            missing.len(),
            root.display(),
            missing.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
            if missing.len() > 10 { ", …" } else { "" }
        );
    }
    // Outputs are staged and moved into place together once all are proven (see `Target`).
    let target = Target::open(root, overwrite)?;

    let done =
        on_every_file(&work, threads, "decompressed", |relative| decompress_one(root, relative, &target, &records))?;
    target.commit(None, true)?;
    if remove_original {
        for relative in &work {
            let path = root.join(relative);
            std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let files = done.len();
    let compressed: u64 = done.iter().map(|(compressed, _, _)| compressed).sum();
    let original: u64 = done.iter().map(|(_, original, _)| original).sum();
    let checked = done.iter().filter(|(_, _, checked)| *checked).count();
    Ok(format!(
        "decompressed {files} files ({compressed} -> {original} bytes); {checked} checked against {MANIFEST_NAME}"
    ))
}

/// Returns (compressed bytes, original bytes, whether the manifest checked it).
fn decompress_one(
    root: &Path,
    relative: &Path,
    target: &Target,
    records: &std::collections::HashMap<Vec<u8>, &FileRecord>,
) -> Result<(u64, u64, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let wire = relative.as_os_str().as_bytes();
    let output = PathBuf::from(std::ffi::OsStr::from_bytes(strip_zstd_suffix(wire).expect("filtered")));
    let source_path = root.join(relative);
    let source = open_nofollow(&source_path)?;
    let compressed = source.metadata()?.len();
    let (partial, file) = target.create(&output)?;
    let record = records.get(wire).copied();
    let mut sink = CheckingWriter::new(file, target.sparse(), record.is_some_and(|r| r.sha1.is_some()));
    let result = zstd::stream::copy_decode(&source, &mut sink)
        .map_err(|e| anyhow!("{}: damaged zstd data: {e}", source_path.display()))
        .and_then(|()| check(&source_path, &sink, record))
        .and_then(|()| match record {
            Some(record) => Ok(sink.finish_like(record)?),
            None => {
                let meta = source.metadata()?;
                let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
                Ok(sink.finish_with(mode, meta.modified()?)?)
            }
        });
    drop(partial);
    result?;
    Ok((compressed, sink.crc.len, record.is_some()))
}

/// Runs `work` on every one of `items`, spread over `threads` threads; returns every result, or (when any item
/// failed) fails with how many and the first, every failure logged. For the commands that rewrite an extracted
/// tree file by file (`decompress`, `decrypt`), which place nothing unless every file passed.
pub(crate) fn on_every_file<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    what: &str,
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = Mutex::new(items.iter());
    let done = Mutex::new(Vec::with_capacity(items.len()));
    let problems = Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let Some(item) = next.locked().next() else { return };
                match work(item) {
                    Ok(result) => done.locked().push(result),
                    Err(e) => problems.locked().push(format!("{e:#}")),
                }
            });
        }
    });
    let problems = problems.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(first) = problems.first() {
        for problem in &problems {
            log::error!("{problem}");
        }
        bail!("{} of {} files could not be {what}; first: {first}", problems.len(), items.len());
    }
    Ok(done.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Opens `path` for reading, never through a symlink.
pub(crate) fn open_nofollow(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// What `sink` wrote must be `record`'s content: size, CRC-32 and (when both have one) SHA-1.
pub(crate) fn check(path: &Path, sink: &CheckingWriter, record: Option<&FileRecord>) -> Result<()> {
    let Some(record) = record else { return Ok(()) };
    let display = path.display();
    if sink.crc.len != record.size {
        bail!("{display}: decompressed to {} bytes; the manifest says {}", sink.crc.len, record.size);
    }
    if sink.crc.crc != record.crc32 {
        bail!("{display}: decompressed CRC-32 {:08x} does not match the manifest's {:08x}", sink.crc.crc, record.crc32);
    }
    if let (Some(expected), Some(sha1)) = (&record.sha1, &sink.sha1) {
        let actual = hex::encode(sha1.clone().finalize());
        if &actual != expected {
            bail!("{display}: decompressed SHA-1 {actual} does not match the manifest's {expected}");
        }
    }
    Ok(())
}

/// A file writer that keeps the CRC-32 (and optionally SHA-1) of what it wrote, leaving holes for zero blocks.
pub(crate) struct CheckingWriter {
    inner: File,
    sparse: crate::sparse::SparseWriter,
    /// Bytes written so far (the CRC's length).
    crc: CrcPiece,
    sha1: Option<Sha1>,
}

impl CheckingWriter {
    /// Writes to `inner` from its start; `sha1`: keep a SHA-1 too.
    pub(crate) fn new(inner: File, sparse: crate::sparse::SparseWriter, sha1: bool) -> CheckingWriter {
        CheckingWriter { inner, sparse, crc: CrcPiece::default(), sha1: sha1.then(Sha1::new) }
    }

    /// What was written so far.
    pub(crate) fn written(&self) -> CrcPiece {
        self.crc
    }

    /// Gives the file `record`'s modification time and permission bits.
    pub(crate) fn finish_like(&self, record: &FileRecord) -> io::Result<()> {
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(record.mtime.max(0) as u64);
        self.finish_with(record.mode, mtime)
    }

    fn finish_with(&self, mode: u32, mtime: std::time::SystemTime) -> io::Result<()> {
        self.inner.set_modified(mtime)?;
        // Permission bits only: a manifest never sets setuid, setgid or sticky.
        self.inner.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode & 0o777))
    }
}

impl Write for CheckingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sparse.write_at(&self.inner, buf, self.crc.len)?;
        self.crc = self.crc.append(CrcPiece::of(buf));
        if let Some(sha1) = &mut self.sha1 {
            sha1.update(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
