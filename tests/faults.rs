//! The fault suite: a full disk (a small tmpfs, and RLIMIT_FSIZE) under extract, the producer's `--target-dir`
//! and the `file://` store; an unreadable source directory; a source file replaced by a symlink after the scan;
//! and a few hundred seeded kinds of damage to a stream. Each asserts the exit status, the message, and that
//! nothing on disk claims to be complete.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped: a disk that fills up. Needs root (CI
/// runs as root; never skipped).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        assert!(nix::unistd::geteuid().is_root(), "the disk-full tests mount a tmpfs: run them as root (.ci/run does)");
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()),
            SHORT,
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A 12 MiB source tree: too big for a 4 MiB disk.
fn disk_filling_source() -> tempfile::TempDir {
    temp_tree(&[
        ("ibdata1", pseudo_random_bytes(6 << 20, 31)),
        ("db/t1.ibd", pseudo_random_bytes(5 << 20, 32)),
        ("db/t1.frm", b"frm".to_vec()),
        ("small", pseudo_random_bytes(1000, 33)),
    ])
}

#[test]
fn extract_onto_a_full_disk_fails_and_leaves_nothing_that_looks_complete() {
    let src = disk_filling_source();
    let stream = produce(src.path(), &[]);
    let disk = SmallDisk::new("4m");
    let out = disk.path().join("out");
    let output = consume(&["extract", "-C", out.to_str().unwrap()], &stream);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("No space left on device"), "{}", stderr(&output));
    // The staging directory is removed: no file, and no manifest, in OUT.
    assert!(list_tree(&out).is_empty(), "left behind: {:?}", list_tree(&out));
}

#[test]
fn the_producers_target_dir_on_a_full_disk_fails_without_a_manifest() {
    let src = disk_filling_source();
    let disk = SmallDisk::new("4m");
    let target = disk.path().join("copy");
    let output = spawn(producer_to_dir(src.path(), &target).stderr(Stdio::piped())).wait_output(LONG);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("No space left on device"), "{}", stderr(&output));
    assert!(!target.join(proto::MANIFEST_NAME).exists(), "a manifest claims a copy that did not fit");
}

#[test]
fn put_onto_a_full_file_store_fails_and_get_refuses_the_backup() {
    let src = disk_filling_source();
    let stream = produce(src.path(), &[]);
    // Room for the first pack (8M objects), not the second.
    let disk = SmallDisk::new("10m");
    let storage = format!("file://{}", disk.path().join("store").display());
    let output = consume(&["put", "NIGHTLY", "--storage", &storage], &stream);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("No space left on device") && message.contains("consumer delete NIGHTLY"), "{message}");
    // A full disk is not something a retry mends, and the error says so.
    assert!(message.contains("consumer: permanent: running it again fails the same way"), "{message}");
    assert!(!disk.path().join("store/NIGHTLY/index.json").exists(), "an index marks a backup that did not fit");
    let out = tempfile::tempdir().unwrap();
    let get = spawn(
        consumer_command()
            .args(["get", "NIGHTLY", "--storage", &storage, "-C"])
            .arg(out.path().join("restore"))
            .stderr(Stdio::piped()),
    )
    .wait_output(LONG);
    assert_eq!(get.status.code(), Some(1));
    assert!(stderr(&get).contains("is incomplete"), "{}", stderr(&get));
}

#[test]
fn a_file_size_limit_is_a_clear_error_not_a_signal() {
    // RLIMIT_FSIZE: a write past it raises SIGXFSZ, which would kill the process without a word; the consumer
    // blocks it, so the write fails with EFBIG and the run says which file.
    let src = disk_filling_source();
    let stream = produce(src.path(), &[]);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("restore");
    let output = run_with_stdin(
        Command::new("prlimit").arg("--fsize=2000000").arg(CONSUMER).args(["extract", "-C"]).arg(&target),
        &stream,
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr(&output).contains("File too large"), "{}", stderr(&output));
    assert!(list_tree(&target).is_empty(), "left behind: {:?}", list_tree(&target));
}

#[test]
fn an_unreadable_source_directory_is_an_error_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    let src = disk_filling_source();
    fs::set_permissions(src.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.path().join("db"), fs::Permissions::from_mode(0o000)).unwrap();
    let mut command = producer_command();
    if nix::unistd::geteuid().is_root() {
        // Root reads anything: run as nobody, for whom the directory is closed.
        command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", PRODUCER]);
    }
    let output = spawn(
        command.arg("--source").arg(src.path()).arg("--stream=xbstream").stdout(Stdio::null()).stderr(Stdio::piped()),
    )
    .wait_output(LONG);
    fs::set_permissions(src.path().join("db"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("db") && message.contains("Permission denied"), "{message}");
}

#[test]
fn a_source_file_replaced_by_a_symlink_after_the_scan_is_never_followed() {
    let src = tempfile::tempdir().unwrap();
    // Four files of two chunks first, read slowly (5 chunks a second, one reader): `z-last` is scanned (its job
    // queued behind theirs) at once, and opened only after about 1.6 s. It is replaced 0.3 s after the stream's
    // first bytes came out (the producer has started, and its scan of five names, beside the reads, is over).
    let mut files: Vec<(String, Vec<u8>)> =
        (0..4).map(|i| (format!("a{i:03}"), pseudo_random_bytes(70_000, i))).collect();
    files.push(("z-last".into(), b"the real content".to_vec()));
    write_tree(src.path(), &files);
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = elsewhere.path().join("secret");
    fs::write(&secret, b"must never be in the backup").unwrap();
    let mut command = producer_to_stdout(src.path());
    command.args(["--read-buffer-size", "64K", "--throttle", "5", "--parallel", "1"]);
    let (status, stream, message) = produce_with_change(&mut command, 4096, || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        fs::remove_file(src.path().join("z-last")).unwrap();
        std::os::unix::fs::symlink(&secret, src.path().join("z-last")).unwrap();
    });
    assert!(!stream.windows(11).any(|w| w == b"must never "), "the symlink's target was streamed");
    assert!(message.contains("z-last"), "{message}");
    match status.code() {
        // Scanned as a file, refused by O_NOFOLLOW when opened: an error naming it.
        Some(1) => assert!(message.contains("cannot open"), "{message}"),
        // Should the scan be held up past the replacement: skipped as no longer a file, with a warning, and absent
        // from the stream.
        Some(0) => {
            assert!(message.contains("is no longer a regular file"), "{message}");
            assert!(!stream.windows(16).any(|w| w == b"the real content"), "{message}");
        }
        other => panic!("exit {other:?}: {message}"),
    }
}

/// Seeded damage to a stream: (what, damaged bytes).
fn damage(stream: &[u8], seed: u64) -> (String, Vec<u8>) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |bound: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % bound.max(1) as u64) as usize
    };
    let mut bytes = stream.to_vec();
    let n = bytes.len();
    match seed % 6 {
        0 | 1 => {
            // Bit flips: in the first 2 KiB (marker and headers) or anywhere.
            let at = if seed % 6 == 0 { next(2048.min(n)) } else { next(n) };
            bytes[at] ^= 1 << next(8);
            (format!("bit flip at {at}"), bytes)
        }
        2 => {
            let (a, len) = (next(n), 1 + next(70_000));
            let b = (a + len).min(n);
            let copy = bytes[a..b].to_vec();
            bytes.splice(b..b, copy);
            (format!("bytes {a}..{b} duplicated"), bytes)
        }
        3 => {
            let (a, len) = (next(n), 1 + next(70_000));
            let b = (a + len).min(n);
            bytes.drain(a..b);
            (format!("bytes {a}..{b} dropped"), bytes)
        }
        4 => {
            let at = next(n);
            bytes.truncate(at);
            (format!("cut at {at}"), bytes)
        }
        _ => {
            // A run of bytes overwritten with garbage.
            let (a, len) = (next(n), 1 + next(300));
            let b = (a + len).min(n);
            for byte in &mut bytes[a..b] {
                *byte = next(256) as u8;
            }
            (format!("bytes {a}..{b} overwritten"), bytes)
        }
    }
}

#[test]
fn three_hundred_kinds_of_damage_never_extract_wrong_or_missing_bytes_with_success() {
    let src = temp_tree(&sample_files(64 << 10));
    let stream = produce(src.path(), &["--read-buffer-size", "64K"]);
    let work = tempfile::tempdir().unwrap();
    let mut refused = 0;
    for seed in 0..300u64 {
        let (what, damaged) = damage(&stream, seed);
        let out = work.path().join(format!("out{seed}"));
        let output = consume(&["extract", "-C", out.to_str().unwrap()], &damaged);
        match output.status.code() {
            // Success is allowed only when every byte still arrived intact (a flip in a bit the format ignores).
            Some(0) => assert_same_tree(src.path(), &out),
            Some(1) => {
                refused += 1;
                assert!(stderr(&output).contains("error:"), "seed {seed} ({what}): {}", stderr(&output));
                let left: Vec<_> =
                    list_tree(&out).into_iter().filter(|p| p.as_os_str() == proto::MANIFEST_NAME).collect();
                assert!(left.is_empty(), "seed {seed} ({what}): a manifest was left in OUT");
            }
            other => panic!("seed {seed} ({what}): exit {other:?} (a crash?): {}", stderr(&output)),
        }
        let _ = fs::remove_dir_all(&out);
    }
    // Nearly every kind of damage is refused; the test is not vacuous.
    assert!(refused >= 280, "only {refused} of 300 damaged streams were refused");
}

/// A file whose reads fail with EIO from `fail_at` on, as a dying disk's would: a qcow2 image behind qemu's
/// `blkdebug` error injection, exported as a regular file over FUSE by `qemu-storage-daemon` (no device-mapper
/// needed). Unmounted and stopped when dropped.
struct FailingFile {
    _daemon: Running,
    path: PathBuf,
}

impl FailingFile {
    fn new(dir: &Path, path: PathBuf, contents: &[u8], fail_at: u64) -> FailingFile {
        let (raw, image) = (dir.join("disk.raw"), dir.join("disk.qcow2"));
        fs::write(&raw, contents).unwrap();
        run_ok(
            Command::new(tool("qemu-img")).args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&image),
            SHORT,
        );
        // Where the image keeps the file's data: the sector that holds offset `fail_at`.
        let map = run_ok(Command::new(tool("qemu-img")).args(["map", "--output=json"]).arg(&image), SHORT);
        let map: serde_json::Value = serde_json::from_slice(&map).unwrap();
        let data_offset = map[0]["offset"].as_u64().expect("the image maps its data");
        let sector = (data_offset + fail_at) / 512;
        fs::write(&path, b"").unwrap(); // the FUSE mount point: a regular file
        let file = serde_json::json!({"driver": "file", "node-name": "f", "filename": image});
        let faulty = serde_json::json!({"driver": "blkdebug", "node-name": "bad", "image": "f",
            "inject-error": [{"event": "read_aio", "errno": 5, "sector": sector, "once": false, "immediately": true}]});
        let qcow2 = serde_json::json!({"driver": "qcow2", "node-name": "q", "file": "bad"});
        let export =
            serde_json::json!({"type": "fuse", "id": "e", "node-name": "q", "mountpoint": path, "writable": false});
        let daemon = spawn(
            Command::new(tool("qemu-storage-daemon"))
                .args(["--blockdev", &file.to_string(), "--blockdev", &faulty.to_string()])
                .args(["--blockdev", &qcow2.to_string(), "--export", &export.to_string()])
                .stderr(Stdio::piped()),
        );
        let deadline = std::time::Instant::now() + SHORT;
        while fs::metadata(&path).map(|m| m.len()).unwrap_or(0) != contents.len() as u64 {
            assert!(std::time::Instant::now() < deadline, "qemu-storage-daemon did not export {}", path.display());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        FailingFile { _daemon: daemon, path }
    }
}

impl Drop for FailingFile {
    fn drop(&mut self) {
        // The daemon unmounts on SIGTERM (Running's drop); a lazy unmount covers a daemon that could not.
        let _ = Command::new("umount").arg("-l").arg(&self.path).stderr(Stdio::null()).status();
    }
}

#[test]
fn an_io_error_in_the_middle_of_a_read_fails_naming_file_and_offset() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a-small"), b"fine").unwrap();
    let contents = pseudo_random_bytes(4 << 20, 41);
    let failing = FailingFile::new(work.path(), src.join("ibdata1"), &contents, 2 << 20);
    // Reading it: the first 2 MiB, then EIO.
    let mut head = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut fs::File::open(&failing.path).unwrap(), &mut head).unwrap();
    assert_eq!(head, contents[..1 << 20]);
    let output = spawn(
        producer_to_stdout(&src).args(["--read-buffer-size", "1M"]).stdout(Stdio::piped()).stderr(Stdio::piped()),
    )
    .wait_output(LONG);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("cannot read") && message.contains("ibdata1") && message.contains("Input/output error"),
        "{message}"
    );
    assert!(message.contains("offset 2097152"), "the offset of the failed read: {message}");
    // The stream it wrote is never taken for complete.
    let extract = consume(&["extract", "-C", work.path().join("out").to_str().unwrap()], &output.stdout);
    assert_eq!(extract.status.code(), Some(1), "{}", stderr(&extract));
}

#[test]
fn a_file_that_becomes_a_symlink_between_the_two_scans_is_named_never_silently_dropped() {
    // The producer scans, then waits for the consumer to open its pipes: the file changes in that gap, and the
    // streaming scan meets a symlink where the pre-scan counted a file.
    for strict in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        write_tree(&src, &[("keep", b"kept".to_vec()), ("swapped", b"was a file".to_vec())]);
        let fifo = work.path().join("fifo");
        let args: &[&str] = if strict { &["--strict"] } else { &[] };
        let producer = producer_on_pipes(&src, 1, &fifo, args);
        wait_for_path(&fifo.join("thread_0"), SHORT);
        fs::remove_file(src.join("swapped")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", src.join("swapped")).unwrap();
        let out = work.path().join("out");
        let consumer = consumer_on_pipes(&["extract", "-C", out.to_str().unwrap()], 1, &fifo);
        let (produced, consumed) = (producer.wait_output(LONG), consumer.wait_output(LONG));
        let message = stderr(&produced);
        assert!(message.contains("swapped is no longer a regular file"), "strict={strict}: {message}");
        if strict {
            assert_eq!(produced.status.code(), Some(1), "{message}");
            assert_eq!(consumed.status.code(), Some(1), "{}", stderr(&consumed));
        } else {
            assert!(produced.status.success(), "{message}");
            assert!(consumed.status.success(), "{}", stderr(&consumed));
            assert_eq!(fs::read(out.join("keep")).unwrap(), b"kept");
            assert!(!out.join("swapped").exists(), "the symlink's target was restored");
        }
    }
}
