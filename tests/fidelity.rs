//! What comes back is what was there: sparse files stay sparse (extract, `--decompress`, `consumer decompress`,
//! a real `PAGE_COMPRESSED` tablespace), a source given as a symlink, an empty source, names `sha1sum -c` must
//! read back, and the staging directory an interrupted extraction left behind.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

/// Bytes allocated to a file on disk.
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// A 64 MiB file holding 4 KiB of data comes back byte for byte and with holes: through `extract`, through
/// `extract --decompress`, and through `mbstream -x` then `consumer decompress` — never fully allocated.
#[test]
fn a_sparse_file_comes_back_sparse() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let sparse = src.join("sparse.ibd");
    let file = fs::File::create(&sparse).unwrap();
    file.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &pseudo_random_bytes(4096, 9), 40 << 20).unwrap();
    drop(file);
    fs::write(src.join("dense"), pseudo_random_bytes(300_000, 10)).unwrap();
    let original = fs::read(&sparse).unwrap();
    let check = |restored: &Path, how: &str| {
        assert!(fs::read(restored).unwrap() == original, "{how}: the content");
        assert_eq!(fs::metadata(restored).unwrap().len(), 64 << 20, "{how}: the length");
        assert!(allocated(restored) <= 256 << 10, "{how}: {} bytes allocated for 4 KiB of data", allocated(restored));
    };

    let out = work.path().join("plain");
    let extracted = consume(&["extract", "-C", out.to_str().unwrap()], &produce(&src, &[]));
    assert!(extracted.status.success(), "{}", String::from_utf8_lossy(&extracted.stderr));
    check(&out.join("sparse.ibd"), "extract");
    assert_eq!(fs::read(out.join("dense")).unwrap(), pseudo_random_bytes(300_000, 10));

    let compressed = produce(&src, &["--compress"]);
    let out = work.path().join("decompressed");
    let extracted = consume(&["extract", "--decompress", "-C", out.to_str().unwrap()], &compressed);
    assert!(extracted.status.success(), "{}", String::from_utf8_lossy(&extracted.stderr));
    check(&out.join("sparse.ibd"), "extract --decompress");

    let mb = work.path().join("mb");
    mbstream_extract(&compressed, &mb);
    consumer().arg("decompress").arg(&mb).arg("--remove-original").assert().success();
    check(&mb.join("sparse.ibd"), "consumer decompress");
}

/// A real `PAGE_COMPRESSED` tablespace (MariaDB punches a hole after every compressed page) takes no more disk
/// restored than it took in the datadir.
#[test]
fn a_page_compressed_tablespace_keeps_its_holes() {
    let original = mariadb_datadir().join("pages/pagecomp.ibd");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let copy = src.join("pagecomp.ibd");
    // `cp --sparse=always` keeps the holes the server punched.
    run_ok(Command::new("cp").arg("--sparse=always").arg(&original).arg(&copy), LONG);
    let (apparent, on_disk) = (fs::metadata(&copy).unwrap().len(), allocated(&copy));
    assert!(on_disk < apparent, "the server left holes: {on_disk} of {apparent} bytes allocated");
    let out = work.path().join("out");
    let extracted = consume(&["extract", "-C", out.to_str().unwrap()], &produce(&src, &[]));
    assert!(extracted.status.success(), "{}", String::from_utf8_lossy(&extracted.stderr));
    let restored = out.join("pagecomp.ibd");
    assert!(fs::read(&restored).unwrap() == fs::read(&copy).unwrap());
    // Within a few blocks of the file system's own bookkeeping (the file is 9 MiB; without holes all of it).
    assert!(
        allocated(&restored) <= on_disk + (16 << 10),
        "{} bytes allocated restored, {on_disk} in the datadir, {apparent} long",
        allocated(&restored)
    );
}

/// `--source` given as a symlink to the directory (`/var/lib/mysql` often is one) is backed up as that
/// directory; an empty source (an unmounted snapshot) is refused unless `--allow-empty`.
#[test]
fn a_symlinked_source_is_followed_and_an_empty_one_refused() {
    let work = tempfile::tempdir().unwrap();
    let real = work.path().join("real");
    write_tree(&real, &[("ibdata1", pseudo_random_bytes(100_000, 1)), ("db/t.frm", b"frm".to_vec())]);
    let link = work.path().join("mysql");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = work.path().join("out");
    let extracted = consume(&["extract", "-C", out.to_str().unwrap()], &produce(&link, &[]));
    assert!(extracted.status.success(), "{}", String::from_utf8_lossy(&extracted.stderr));
    assert_same_tree(&real, &out);

    let empty = work.path().join("empty");
    fs::create_dir_all(empty.join("an/empty/dir")).unwrap();
    let refused = producer().arg("--source").arg(&empty).arg("--stream=xbstream").assert().code(1);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr);
    assert!(stderr.contains("holds no file to back up") && stderr.contains("--allow-empty"), "{stderr}");
    assert!(refused.get_output().stdout.is_empty(), "nothing written");
    let allowed = producer().arg("--source").arg(&empty).args(["--stream=xbstream", "--allow-empty"]).assert();
    let stream = allowed.success().get_output().stdout.clone();
    let out = work.path().join("out-empty");
    let extracted = consume(&["extract", "-C", out.to_str().unwrap()], &stream);
    assert!(extracted.status.success(), "{}", String::from_utf8_lossy(&extracted.stderr));
    assert!(out.join("an/empty/dir").is_dir());
}

/// Names holding a newline or a backslash: `backup-manifest.sha1` escapes them as GNU `sha1sum` does, so the real
/// `sha1sum -c` passes on a correct restore (and fails on a damaged one).
#[test]
fn sha1sum_reads_back_names_with_newlines_and_backslashes() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(
        &src,
        &[
            ("plain", b"plain".to_vec()),
            ("new\nline", b"one".to_vec()),
            ("back\\slash", b"two".to_vec()),
            ("carriage\rreturn", b"three".to_vec()),
            ("db/both\\\n.ibd", pseudo_random_bytes(70_000, 3)),
        ],
    );
    let out = work.path().join("out");
    let extracted = consume(&["extract", "-C", out.to_str().unwrap()], &produce(&src, &["--digest", "sha1"]));
    assert!(extracted.status.success(), "{}", String::from_utf8_lossy(&extracted.stderr));
    let sha1sum = |dir: &Path| {
        spawn(
            Command::new("sha1sum")
                .args(["-c", "--quiet", proto::SHA1SUMS_NAME])
                .current_dir(dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .wait_output(LONG)
    };
    let checked = sha1sum(&out);
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    fs::write(out.join("new\nline"), b"changed").unwrap();
    assert!(!sha1sum(&out).status.success(), "a damaged file is found");
}

/// A staging directory left by an extraction that was killed is removed (with a warning) by the next extraction
/// into the same directory; one an extraction still running holds is left alone.
#[test]
fn an_interrupted_extractions_staging_directory_is_cleared_by_the_next() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(&src, &[("ibdata1", pseudo_random_bytes(100_000, 4))]);
    let out = work.path().join("out");
    // A run in progress: it waits for its stream on a pipe we hold open.
    let mut running =
        spawn(consumer_command().args(["extract", "-C"]).arg(&out).stdin(Stdio::piped()).stderr(Stdio::piped()));
    let running_stdin = running.stdin();
    let ours = out.join(format!(".xbkit-partial-{}", running.id()));
    wait_for_path(&ours, SHORT);
    // What a killed run leaves: its staging directory with part of a file (no process has that id, none locks it).
    let left = out.join(".xbkit-partial-4194304");
    write_tree(&left, &[("db/half.ibd", vec![1; 1000])]);
    // What a run killed before a reboot leaves: named after a process id now taken by a live process (this test),
    // not locked, unchanged for an hour.
    let reused = out.join(format!(".xbkit-partial-{}", std::process::id()));
    write_tree(&reused, &[("half.ibd", vec![2; 1000])]);
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::open(&reused).unwrap().set_modified(hour_ago).unwrap();

    let extracted = consume(&["extract", "-C", out.to_str().unwrap()], &produce(&src, &[]));
    let stderr = String::from_utf8_lossy(&extracted.stderr);
    assert!(extracted.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("removing {}: left by an extraction that was interrupted", left.display())));
    assert!(stderr.contains(&format!("{} belongs to an extraction still running", ours.display())), "{stderr}");
    assert!(stderr.contains(&format!("removing {}: left by", reused.display())), "{stderr}");
    assert!(!left.exists() && !reused.exists() && ours.is_dir());
    assert_eq!(fs::read(out.join("ibdata1")).unwrap(), pseudo_random_bytes(100_000, 4));
    drop(running_stdin);
    assert!(!running.wait(LONG).success(), "an empty stream is an error");
}
