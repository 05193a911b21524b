//! `consumer verify OUT`: re-reads an extracted tree and checks every file against its manifest: size, CRC-32, and
//! SHA-1 where the manifest has one. Files are opened beneath OUT without following any symlink.

use runtime::lock::Locked;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use proto::CrcPiece;
use proto::{FileRecord, Manifest, MANIFEST_NAME};
use sha1::{Digest as _, Sha1};

/// Checks `root` against `root/backup-manifest.json` with `threads` readers; returns a summary.
pub fn run(root: &Path, threads: usize) -> Result<String> {
    let bytes = std::fs::read(root.join(MANIFEST_NAME))
        .with_context(|| format!("cannot read {}: is this an extracted backup?", root.join(MANIFEST_NAME).display()))?;
    let manifest = Manifest::from_json(&bytes)?;
    report_corrupt_pages(&manifest);
    let root_fd = nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .with_context(|| format!("cannot open {}", root.display()))?;
    // Placeholders are not part of the tree (our extract removes them; mbstream -x leaves them): not checked.
    let placeholders = manifest.placeholder_paths();
    let (sender, receiver) = crossbeam_channel::bounded::<&FileRecord>(64);
    let problems = Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (receiver, problems, root_fd) = (receiver.clone(), &problems, &root_fd);
            scope.spawn(move || {
                for record in receiver {
                    if let Err(e) = check(root_fd, record) {
                        problems.locked().push(format!("{e:#}"));
                    }
                }
            });
        }
        for record in manifest.files.iter().filter(|record| !placeholders.contains(&record.path.0)) {
            if sender.send(record).is_err() {
                break;
            }
        }
        drop(sender);
    });
    let problems = problems.into_inner().unwrap_or_else(|e| e.into_inner());
    if !problems.is_empty() {
        for problem in &problems {
            log::error!("{problem}");
        }
        bail!("{} of {} files do not match the manifest; first: {}", problems.len(), manifest.files.len(), problems[0]);
    }
    // Every listed directory is there (an empty one included).
    for directory in &manifest.directories {
        let relative = proto::safe_relative_path(&directory.path.0)
            .with_context(|| format!("the manifest lists directory {}", directory.path.display()))?;
        let path = root.join(relative);
        if !std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir()) {
            bail!("directory {} of the manifest is missing (or not a directory)", path.display());
        }
    }
    let files = manifest.files.len() - placeholders.len().min(manifest.files.len());
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    Ok(format!(
        "verified {files} files, {bytes} bytes, and {} directories against {MANIFEST_NAME}",
        manifest.directories.len()
    ))
}

/// Warns about every file the producer copied with InnoDB pages that were corrupt at the source
/// (`--validate-pages --log-page-corruption`): the restore is faithful, and so are those pages.
pub fn report_corrupt_pages(manifest: &Manifest) {
    manifest.files.iter().for_each(report_corrupt_record);
}

/// [`report_corrupt_pages`] for one record: a warning if the producer recorded corrupt pages in it.
pub fn report_corrupt_record(record: &FileRecord) {
    if record.corrupt_pages.is_empty() && record.corrupt_pages_total == 0 {
        return;
    }
    {
        let pages = &record.corrupt_pages;
        let total = record.corrupt_pages_total.max(pages.len() as u64);
        let shown: Vec<String> = pages.iter().take(20).map(u64::to_string).collect();
        log::warn!(
            "{}: {total} page(s) were corrupt at the source and are copied as they were (the producer's \
             --log-page-corruption): {}{}",
            record.path.display(),
            shown.join(", "),
            if total > shown.len() as u64 { ", …" } else { "" }
        );
    }
}

fn check(root: &impl std::os::fd::AsFd, record: &FileRecord) -> Result<()> {
    let path = record.path.display();
    let relative = proto::safe_relative_path(&record.path.0)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let file = File::from(openat2(root, &relative, how).with_context(|| format!("{path}: cannot open"))?);
    let mut crc = CrcPiece::default();
    let mut sha1 = record.sha1.as_ref().map(|_| Sha1::new());
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buffer, offset).with_context(|| format!("{path}: read failed"))?;
        if n == 0 {
            break;
        }
        crc = crc.append(CrcPiece::of(&buffer[..n]));
        if let Some(sha1) = &mut sha1 {
            sha1.update(&buffer[..n]);
        }
        offset += n as u64;
    }
    if crc.len != record.size {
        bail!("{path}: size {} but the manifest says {}", crc.len, record.size);
    }
    if crc.crc != record.crc32 {
        bail!("{path}: CRC-32 {:08x} but the manifest says {:08x}", crc.crc, record.crc32);
    }
    if let (Some(expected), Some(sha1)) = (&record.sha1, sha1) {
        let actual = hex::encode(sha1.finalize());
        if &actual != expected {
            bail!("{path}: SHA-1 {actual} but the manifest says {expected}");
        }
    }
    Ok(())
}
