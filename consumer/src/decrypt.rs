//! `consumer decrypt OUT`: turns every `<path>.age` of an encrypted backup's extracted tree (by `mbstream -x`, or
//! by `consumer extract` without a key) back into `<path>`, as `consumer decompress` does for `.zst`.
//!
//! The backup's key is unwrapped once, from the encrypted manifest ([`proto::SECRET_MANIFEST_NAME`]), whose own
//! segments authenticate it; its records then say which files the backup has and bind each path to its `.age`
//! file's payload nonce. Each file must start with the backup's header (a file of another backup, even to the same
//! key, fails) and the nonce its path is bound to (a file swapped for another fails); every segment authenticates,
//! the last one flagged (a cut or reordered file fails); and the plaintext's size and CRC-32 must be the manifest's.
//! Outputs are staged and moved into place together only when every file passed, so nothing unauthenticated ever
//! lands in OUT. With `--decompress`, `.zst.age` files are decrypted and decompressed in one pass.

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use crypt::args::DecryptArgs;
use crypt::{BackupKey, FileReader, NONCE_LEN};
use proto::{FileRecord, Manifest, AGE_SUFFIX, SECRET_MANIFEST_NAME, ZSTD_SUFFIX};

use crate::decompress::{check, on_every_file, open_nofollow, CheckingWriter};
use crate::target::Target;

/// The largest encrypted manifest read (it is held in memory whole).
const MAX_MANIFEST: u64 = 1 << 30;

/// What `consumer decrypt` is asked to do.
#[derive(Debug)]
pub struct DecryptJob<'a> {
    /// The extracted tree.
    pub root: &'a Path,
    /// The keys.
    pub keys: &'a DecryptArgs,
    /// Decompress `.zst.age` files too.
    pub decompress: bool,
    /// Delete each `.age` once everything is in place.
    pub remove_original: bool,
    /// Replace outputs that already exist.
    pub overwrite: bool,
    /// Threads (files are spread over them).
    pub threads: usize,
}

/// Decrypts every file of the encrypted backup extracted in `job.root`; returns a summary.
pub fn run(job: &DecryptJob) -> Result<String> {
    let root = job.root;
    let identities = job.keys.identities()?;
    let identities: Vec<&dyn age::Identity> =
        identities.iter().map(|identity| identity.as_ref() as &dyn age::Identity).collect();
    let (key, manifest) = open_manifest(root, &identities)?;

    // Every file the manifest lists must be here, as the `.age` form it names.
    let mut missing = Vec::new();
    let mut work = Vec::new();
    for record in &manifest.files {
        let stored = record
            .stored
            .as_ref()
            .filter(|stored| stored.nonce.is_some())
            .ok_or_else(|| anyhow!("the encrypted manifest gives {} no encrypted form", record.path.display()))?;
        let relative = proto::safe_relative_path(&stored.path.0)
            .with_context(|| format!("the encrypted manifest names {}", stored.path.display()))?;
        if std::fs::symlink_metadata(root.join(&relative)).is_err() {
            missing.push(stored.path.display());
        }
        work.push((record, relative));
    }
    if !missing.is_empty() {
        bail!(
            "{} file(s) of the backup are missing from {}: {}{}",
            missing.len(),
            root.display(),
            missing.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
            if missing.len() > 10 { ", …" } else { "" }
        );
    }
    refuse_strangers(root, &work)?;

    let target = Target::open(root, job.overwrite)?;
    let done = on_every_file(&work, job.threads, "decrypted (so none was)", |(record, relative)| {
        decrypt_one(root, relative, record, &key, &target, job.decompress)
    })?;
    target.commit(None, true)?;
    if job.remove_original {
        for (_, relative) in &work {
            let path = root.join(relative);
            std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let files = done.len();
    let sealed: u64 = done.iter().map(|(sealed, _)| sealed).sum();
    let plain: u64 = done.iter().map(|(_, plain)| plain).sum();
    Ok(format!(
        "decrypted {files} files ({sealed} -> {plain} bytes), every one authenticated and checked against \
         {SECRET_MANIFEST_NAME} (backup key {})",
        key.fingerprint()
    ))
}

/// The backup's key, unwrapped from the encrypted manifest's header, and the manifest, every segment of it
/// authenticated.
fn open_manifest(root: &Path, identities: &[&dyn age::Identity]) -> Result<(BackupKey, Manifest)> {
    let path = root.join(SECRET_MANIFEST_NAME);
    let sealed = match open_nofollow(&path).and_then(|file| {
        let mut sealed = Vec::new();
        file.take(MAX_MANIFEST).read_to_end(&mut sealed)?;
        Ok(sealed)
    }) {
        Ok(sealed) => sealed,
        Err(e) if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::NotFound) => bail!(
            "{} has no {SECRET_MANIFEST_NAME}: not an encrypted backup of ours, or not extracted whole",
            root.display()
        ),
        Err(e) => return Err(e.context(format!("cannot read {}", path.display()))),
    };
    let key = BackupKey::unwrap(&sealed, identities).with_context(|| format!("{}", path.display()))?;
    let mut plain = Vec::new();
    FileReader::new(&key, &sealed[..], None)
        .map_err(io::Error::other)
        .and_then(|mut reader| reader.read_to_end(&mut plain))
        .with_context(|| format!("{} does not authenticate", path.display()))?;
    let manifest = Manifest::from_json(&plain).with_context(|| format!("cannot read {}", path.display()))?;
    if manifest.encryption.is_none() {
        bail!("{} does not describe an encrypted backup", path.display());
    }
    Ok((key, manifest))
}

/// Every file in the tree must be of the backup: a listed `.age` file (or, decrypted before, its original), a
/// manifest, a start marker. Anything else (a file added to the stream or the bucket, which no key vouches for) is
/// refused before anything is decrypted, so a tree that decrypts holds nothing unauthenticated.
fn refuse_strangers(root: &Path, work: &[(&FileRecord, PathBuf)]) -> Result<()> {
    let mut ours: std::collections::HashSet<PathBuf> = work.iter().map(|(_, relative)| relative.clone()).collect();
    for (record, _) in work {
        use std::os::unix::ffi::OsStrExt;
        let original = Path::new(std::ffi::OsStr::from_bytes(&record.path.0));
        ours.insert(original.to_path_buf());
        ours.insert(PathBuf::from(format!("{}{ZSTD_SUFFIX}", original.display())));
    }
    let mut strangers = Vec::new();
    let walk = walkdir::WalkDir::new(root).follow_links(false).min_depth(1).into_iter();
    // A staging directory (of a run that was killed, or that runs) is the target's to handle.
    let walk = walk.filter_entry(|entry| {
        !entry.file_name().to_string_lossy().starts_with(crate::target::STAGING_PREFIX) || entry.depth() > 1
    });
    for entry in walk {
        let entry = entry.with_context(|| format!("cannot walk {}", root.display()))?;
        if entry.file_type().is_dir() {
            continue;
        }
        let relative = entry.path().strip_prefix(root).expect("under the root");
        use std::os::unix::ffi::OsStrExt;
        let name = relative.as_os_str().as_bytes();
        let known = ours.contains(relative)
            || name == SECRET_MANIFEST_NAME.as_bytes()
            || name == proto::MANIFEST_NAME.as_bytes()
            || proto::is_marker_name(name);
        if !known {
            strangers.push(relative.display().to_string());
        }
    }
    if !strangers.is_empty() {
        bail!(
            "{} file(s) in {} are not of the encrypted backup (nothing vouches for them; remove them, or decrypt \
             into a tree that holds only what was extracted): {}{}",
            strangers.len(),
            root.display(),
            strangers.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
            if strangers.len() > 10 { ", …" } else { "" }
        );
    }
    Ok(())
}

/// Decrypts one file into the staging directory, checked; returns (sealed bytes, plaintext bytes written).
fn decrypt_one(
    root: &Path,
    relative: &Path,
    record: &FileRecord,
    key: &BackupKey,
    target: &Target,
    decompress: bool,
) -> Result<(u64, u64)> {
    let stored = record.stored.as_ref().expect("checked: an encrypted form");
    let source_path = root.join(relative);
    let shown = source_path.display();
    let nonce: [u8; NONCE_LEN] = stored
        .nonce
        .as_deref()
        .and_then(|nonce| hex::decode(nonce).ok())
        .and_then(|nonce| nonce.try_into().ok())
        .ok_or_else(|| anyhow!("the encrypted manifest gives {} a damaged nonce", record.path.display()))?;
    let source = open_nofollow(&source_path)?;
    let sealed_len = source.metadata()?.len();
    if sealed_len != stored.size {
        bail!("{shown} is {sealed_len} bytes; the backup's manifest says {}", stored.size);
    }
    // Compressed then encrypted: `.zst.age`, decompressed too with --decompress, else kept as `.zst`.
    let compressed = stored.path.0.ends_with(format!("{ZSTD_SUFFIX}{AGE_SUFFIX}").as_bytes());
    let mut output = record.path.0.clone();
    if compressed && !decompress {
        output.extend_from_slice(ZSTD_SUFFIX.as_bytes());
    }
    let output = proto::safe_relative_path(&output)?;
    let (partial, file) = target.create(&output)?;
    let mut sink = CheckingWriter::new(file, target.sparse(), record.sha1.is_some() && (decompress || !compressed));
    let reader = FileReader::new(key, BufReader::with_capacity(1 << 20, source), Some(&nonce))
        .map_err(|e| anyhow!("{shown}: {e}"))?;
    let copied = if compressed && decompress {
        zstd::stream::copy_decode(reader, &mut sink)
    } else {
        io::copy(&mut { reader }, &mut sink).map(|_| ())
    };
    let result = copied
        .map_err(|e| anyhow!("{shown}: {e}"))
        .and_then(|()| match compressed && !decompress {
            // Kept compressed: authenticated by its segments (and zstd's own checksums when it is decompressed);
            // its original size and CRC-32 are checked only with --decompress.
            true => Ok(()),
            false => check(&source_path, &sink, Some(record)),
        })
        .and_then(|()| Ok(sink.finish_like(record)?));
    drop(partial);
    result?;
    Ok((sealed_len, sink.written().len))
}
