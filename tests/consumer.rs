//! The consumer end to end: byte-exact round trips through STDOUT and 1–8 pipes, real mbstream streams, hostile
//! streams (each failing, writing nothing outside OUT and leaving nothing that looks complete), and verify.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proto::encode_payload_header;
use proto::{ChunkHeader, ChunkKind};

use crate::support::*;

const CHUNK: usize = 64 * 1024;

/// A source tree shared by the round-trip tests: the sample files (0 B, 1 B, chunk ± 1, …) plus a 300 MB file
/// (mostly holes, with pseudo-random 1 MiB blocks scattered through it, so it is cheap to make but not uniform).
fn big_source() -> &'static Path {
    static SOURCE: OnceLock<tempfile::TempDir> = OnceLock::new();
    SOURCE
        .get_or_init(|| {
            let src = temp_tree(&sample_files(CHUNK));
            let big = fs::File::create(src.path().join("db/huge.ibd")).unwrap();
            big.set_len(300_000_000).unwrap();
            for (i, offset) in [0u64, 7_340_033, 150_000_000, 298_951_424].into_iter().enumerate() {
                std::os::unix::fs::FileExt::write_all_at(&big, &pseudo_random_bytes(1 << 20, 100 + i as u64), offset)
                    .unwrap();
            }
            src
        })
        .path()
}

#[test]
fn round_trips_are_byte_exact_through_stdout_and_1_2_4_8_pipes() {
    let src = big_source();
    for pipes in [0, 1, 2, 4, 8] {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("out");
        let stderr =
            round_trip(src, &out, pipes, &["--read-buffer-size", "64K", "--parallel", "3"], &["--parallel", "3"]);
        assert!(stderr.contains("all verified against backup-manifest.json"), "{stderr}");
        assert_same_tree(src, &out);
        consumer().arg("verify").arg(&out).assert().success();
        // Nothing partial is left behind.
        assert!(fs::read_dir(&out).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".xbkit-partial")));
    }
}

#[test]
fn modes_and_mtimes_are_restored_and_sha1_is_checked() {
    let src = temp_tree(&sample_files(CHUNK));
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(src.path().join("one"), fs::Permissions::from_mode(0o604)).unwrap();
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options().write(true).open(src.path().join("one")).unwrap().set_modified(when).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    round_trip(src.path(), &out, 2, &["--digest", "sha1"], &[]);
    let meta = fs::metadata(out.join("one")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o604);
    assert_eq!(meta.modified().unwrap(), when);
    run_ok(Command::new("sha1sum").args(["-c", "--quiet", proto::SHA1SUMS_NAME]).current_dir(&out), SHORT);
}

/// The same stream hashed on both sides: the producer's and consumer's per-stream SHA-1s agree.
#[test]
fn stream_sha1s_match_between_producer_and_consumer() {
    let src = temp_tree(&sample_files(CHUNK));
    let work = tempfile::tempdir().unwrap();
    let (p_stats, c_stats) = (work.path().join("p.json"), work.path().join("c.json"));
    let p = p_stats.to_str().unwrap();
    let c = c_stats.to_str().unwrap();
    round_trip(
        src.path(),
        &work.path().join("out"),
        3,
        &["--digest", "sha1", "--stats-json", p],
        &["--digest", "sha1", "--stats-json", c],
    );
    let (p, c) = (read_stats(&p_stats), read_stats(&c_stats));
    for i in 0..3 {
        assert_eq!(p["streams"][i]["sha1"], c["streams"][i]["sha1"], "stream {i}");
        assert!(p["streams"][i]["sha1"].is_string());
    }
}

/// A real `mbstream -c` stream (no manifest) extracts exactly as `mbstream -x` extracts it, with a warning; with
/// --require-manifest it is refused.
#[test]
fn mbstream_stream_extracts_like_mbstream_with_an_unproven_warning() {
    let src = tempfile::tempdir().unwrap();
    let files =
        [("ibdata1", pseudo_random_bytes(25 << 20, 1)), ("backup-my.cnf", b"[mysqld]\n".to_vec()), ("empty", vec![])];
    for (name, data) in &files {
        fs::write(src.path().join(name), data).unwrap();
    }
    fs::create_dir(src.path().join("db")).unwrap();
    fs::write(src.path().join("db/t.ibd"), pseudo_random_bytes(100_000, 2)).unwrap();
    let stream = run_ok(
        Command::new(tool("mbstream"))
            .args(["-c", "ibdata1", "backup-my.cnf", "empty", "db/t.ibd"])
            .current_dir(src.path()),
        SHORT,
    );
    let work = tempfile::tempdir().unwrap();
    let (ours, theirs) = (work.path().join("ours"), work.path().join("theirs"));
    mbstream_extract(&stream, &theirs);
    let assert = consumer().arg("extract").arg("-C").arg(&ours).write_stdin(stream.clone()).assert().success();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("completeness is unproven"), "{stderr}");
    assert_eq!(read_tree(&ours), read_tree(&theirs));
    consumer()
        .args(["extract", "--require-manifest", "-C"])
        .arg(work.path().join("strict"))
        .write_stdin(stream)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("carries no backup-manifest.json (--require-manifest)"));
    assert!(read_tree(&work.path().join("strict")).is_empty(), "nothing is left looking complete");
}

/// A real `mariadb-backup --backup --stream=xbstream` of a running MariaDB extracts identically with the consumer
/// and with `mbstream -x`.
#[test]
fn mariadb_backup_stream_extracts_like_mbstream() {
    let work = tempfile::tempdir().unwrap();
    let stream_path = work.path().join("mariadb.xbstream");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/mariadb-backup-stream.sh");
    // Installing, starting and backing up a server: minutes at worst on a loaded machine.
    run_ok(
        Command::new("bash").arg(&script).arg(work.path().join("server")).arg(&stream_path),
        Duration::from_secs(300),
    );
    let stream = fs::read(&stream_path).unwrap();
    assert!(stream.len() > 1 << 20, "a real backup is several MB");
    let (ours, theirs) = (work.path().join("ours"), work.path().join("theirs"));
    mbstream_extract(&stream, &theirs);
    consumer().args(["extract", "--parallel", "3", "-C"]).arg(&ours).write_stdin(stream).assert().success();
    let (a, b) = (read_tree(&ours), read_tree(&theirs));
    assert!(a.iter().any(|(p, _)| p.ends_with("xtrabackup_checkpoints")), "a real backup");
    // The InnoDB table travels as vec/t1.ibd (or vec/t1.new when its creation is this recent).
    assert!(a.iter().any(|(p, d)| p.to_string_lossy().starts_with("vec/t1.") && d.len() >= 65536), "the test table");
    assert_eq!(a.len(), b.len());
    assert!(a == b, "every file identical to mbstream -x");
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile streams.

/// A real producer stream of the sample tree, 64 KiB chunks.
fn producer_stream() -> Vec<u8> {
    static STREAM: OnceLock<Vec<u8>> = OnceLock::new();
    STREAM
        .get_or_init(|| {
            let src = temp_tree(&sample_files(CHUNK));
            produce(src.path(), &["--read-buffer-size", "64K"])
        })
        .clone()
}

fn raw_chunk(path: &[u8], offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_payload_header(&mut out, path, offset, payload.len() as u64, crc32fast::hash(payload));
    out.extend_from_slice(payload);
    out
}

/// Extracts `stream` into `sandbox/out` and asserts: exit 1, the message, nothing outside `out`, and no file in
/// `out` that was not there before (no partial files either).
fn assert_hostile(stream: Vec<u8>, message: &str, prepare: impl FnOnce(&Path)) {
    let sandbox = tempfile::tempdir().unwrap();
    let out = sandbox.path().join("out");
    fs::create_dir(&out).unwrap();
    prepare(&out);
    let before = read_tree(sandbox.path());
    let assert = consumer().arg("extract").arg("-C").arg(&out).write_stdin(stream).assert().code(1);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains(message), "expected {message:?} in:\n{stderr}");
    assert_eq!(read_tree(sandbox.path()), before, "{message}: the sandbox changed");
    let entries: Vec<PathBuf> = fs::read_dir(sandbox.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries, vec![out], "nothing was created beside OUT");
}

#[test]
fn hostile_paths_are_refused_and_nothing_lands_outside() {
    for (path, message) in [
        (&b"../x"[..], "unsafe path in the chunk at stream offset 0x28"),
        (b"/etc/xbkit-hostile", "absolute path \"/etc/xbkit-hostile\" not allowed"),
        (b"a/../../x", "has a \"..\" component"),
    ] {
        let mut stream = raw_chunk(b"fine", 0, b"ok");
        stream.extend(raw_chunk(path, 0, b"evil"));
        assert_hostile(stream, message, |_| {});
    }
    assert!(!Path::new("/etc/xbkit-hostile").exists());

    // A symlink already inside OUT is never followed.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_path_buf();
    let mut stream = raw_chunk(b"link/x", 0, b"evil");
    proto::encode_eof(&mut stream, b"link/x");
    assert_hostile(stream, "link: it is a symlink or not a directory", |out| {
        std::os::unix::fs::symlink(&target, out.join("link")).unwrap();
    });
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn hostile_headers_fail_without_allocating_or_writing() {
    // A 512-byte path.
    let mut stream = b"XBSTCK01\0P".to_vec();
    stream.extend_from_slice(&512u32.to_le_bytes());
    stream.extend_from_slice(&[b'a'; 512]);
    assert_hostile(stream, "path length 512 is too large at stream offset 0x0", |_| {});
    // A declared length of 2^40.
    let mut stream = Vec::new();
    encode_payload_header(&mut stream, b"big", 0, 1 << 40, 0);
    assert_hostile(stream, "payload of 1099511627776 bytes declared for \"big\"", |_| {});
}

#[test]
fn damaged_streams_fail_naming_file_stream_and_offset() {
    let good = producer_stream();
    let chunks = parse(&good);

    // A flipped payload byte: CRC mismatch.
    let mut flipped = good.clone();
    let (first, _) = chunks.iter().find(|(h, _)| h.kind == ChunkKind::Payload).unwrap();
    let payload_at = first.stream_offset as usize + proto::encoded_header_len(ChunkKind::Payload, first.path.len());
    flipped[payload_at] ^= 0x20;
    assert_hostile(flipped, "stream 0 (STDIN): checksum mismatch in", |_| {});

    // Cut mid-chunk: inside the payload of the first chunk past the middle (a cut at a fixed byte could fall on a
    // chunk boundary: the manifest's pieces move from run to run).
    let (middle, _) = chunks
        .iter()
        .find(|(h, _)| h.kind == ChunkKind::Payload && h.payload_len >= 2 && h.stream_offset as usize >= good.len() / 2)
        .unwrap();
    let inside = middle.stream_offset as usize + proto::encoded_header_len(ChunkKind::Payload, middle.path.len()) + 1;
    let cut = good[..inside].to_vec();
    assert_hostile(cut, "stream 0 (STDIN): stream truncated inside", |_| {});

    // A file whose E chunk is missing.
    let mut no_eof = chunks.clone();
    no_eof.retain(|(h, _)| !(h.kind == ChunkKind::Eof && h.path == b"ibdata1"));
    assert_hostile(encode(&no_eof), "ibdata1: the stream ended without its end-of-file chunk", |_| {});

    // A duplicated chunk.
    let mut duplicated = chunks.clone();
    let index = duplicated.iter().position(|(h, _)| h.path == b"ibdata1" && h.kind == ChunkKind::Payload).unwrap();
    duplicated.insert(index + 1, duplicated[index].clone());
    assert_hostile(encode(&duplicated), "bytes 0..65536 overlap bytes already received", |_| {});

    // A manifest that lists a file the stream lacks.
    let mut missing = chunks.clone();
    missing.retain(|(h, _)| h.path != b"db/t1.frm");
    assert_hostile(encode(&missing), "1 file(s) listed in the manifest never arrived: db/t1.frm", |_| {});

    // A file the manifest does not list.
    let mut extra = chunks.clone();
    let position = extra.iter().position(|(h, _)| h.path == proto::MANIFEST_NAME.as_bytes()).unwrap();
    let header = |kind| ChunkHeader {
        kind,
        path: b"intruder".to_vec(),
        payload_len: 3,
        file_offset: 0,
        checksum: 0,
        stream_offset: 0,
    };
    extra.insert(position, (header(ChunkKind::Payload), b"abc".to_vec()));
    extra.insert(position + 1, (header(ChunkKind::Eof), Vec::new()));
    assert_hostile(encode(&extra), "intruder is in the stream but not in the manifest", |_| {});

    // A manifest cut short (its E missing): unproven, refused.
    let mut cut_manifest = chunks;
    cut_manifest.pop();
    assert_hostile(encode(&cut_manifest), "backup-manifest.json is incomplete", |_| {});
}

#[test]
fn existing_files_are_not_overwritten_without_overwrite() {
    let stream = producer_stream();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("one"), b"precious").unwrap();
    consumer()
        .arg("extract")
        .arg("-C")
        .arg(&out)
        .write_stdin(stream.clone())
        .assert()
        .code(1)
        .stderr(predicates::str::contains("one already exists (use --overwrite to replace it)"));
    assert_eq!(fs::read(out.join("one")).unwrap(), b"precious");
    assert_eq!(read_tree(&out).len(), 1, "nothing else was left");
    consumer().args(["extract", "--overwrite", "-C"]).arg(&out).write_stdin(stream).assert().success();
    assert_eq!(fs::read(out.join("one")).unwrap(), vec![42]);
}

#[test]
fn fifo_consumer_times_out_when_no_producer_comes() {
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    consumer()
        .args(["extract", "--fifo-streams", "2", "--fifo-timeout", "1", "-C"])
        .arg(work.path().join("out"))
        .arg("--fifo-dir")
        .arg(work.path().join("fifos"))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("within 1 s (--fifo-timeout); is the producer running"));
    // Well under the default 60 s: the 1 s asked for is what was waited, with room for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(fs::read_dir(work.path().join("fifos")).unwrap().count(), 0, "pipes are removed");
}

/// A failed run's last line says its kind: a producer that never opened its pipe, or one that stalled mid-stream,
/// may come on a later run (retryable); a damaged stream will fail the same way again (permanent).
#[test]
fn a_failure_says_whether_running_it_again_may_help() {
    let work = tempfile::tempdir().unwrap();
    let never = consumer()
        .args(["extract", "--fifo-timeout", "1", "-C"])
        .arg(work.path().join("out"))
        .arg("--fifo-dir")
        .arg(work.path().join("fifos"))
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&never.get_output().stderr).into_owned();
    assert!(stderr.ends_with("running it again may succeed\n") && stderr.contains("consumer: retryable:"), "{stderr}");

    // STDIN held open by a writer that never writes: the idle deadline, inside the stream reader's error.
    let mut stalled = spawn(
        consumer_command()
            .args(["extract", "--idle-timeout", "1", "-C"])
            .arg(work.path().join("out2"))
            .stdin(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let held = stalled.stdin();
    let output = stalled.wait_output(Duration::from_secs(30));
    drop(held);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("consumer: retryable:"), "a stalled producer: {stderr}");

    let damaged = consumer()
        .args(["extract", "-C"])
        .arg(work.path().join("out3"))
        .write_stdin(b"XBSTCK01 this is not a chunk".to_vec())
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&damaged.get_output().stderr).into_owned();
    assert!(stderr.contains("consumer: permanent:"), "a damaged stream: {stderr}");
}

/// A writer that dies mid-chunk: a truncation error naming the pipe.
#[test]
fn writer_dying_mid_chunk_is_a_truncation_error_naming_the_pipe() {
    let work = tempfile::tempdir().unwrap();
    let fifo_dir = work.path().join("fifos");
    let out = work.path().join("out");
    let consumer = spawn(
        consumer_command()
            .args(["extract", "--fifo-timeout", "20", "-C"])
            .arg(&out)
            .arg("--fifo-dir")
            .arg(&fifo_dir)
            .stderr(Stdio::piped()),
    );
    let pipe = fifo_dir.join("thread_0");
    let writer = spawn_named("dying writer", move || {
        wait_for_path(&pipe, SHORT);
        // Opening blocks until the consumer opens its end.
        let mut writer = fs::OpenOptions::new().write(true).open(&pipe).unwrap();
        let chunk = raw_chunk(b"file", 0, &[7u8; 1000]);
        writer.write_all(&chunk[..500]).unwrap();
    });
    join_within(writer, SHORT);
    let output = consumer.wait_output(SHORT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("thread_0): stream truncated inside the payload of \"file\""), "{stderr}");
    assert!(read_tree(&out).is_empty(), "the partial file is removed");
}

#[test]
fn verify_finds_a_damaged_file_and_list_shows_the_stream() {
    let stream = producer_stream();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    consumer().arg("extract").arg("-C").arg(&out).write_stdin(stream.clone()).assert().success();
    consumer().arg("verify").arg(&out).assert().success().stderr(predicates::str::contains("verified 8 files"));
    let mut data = fs::read(out.join("db/t1.ibd")).unwrap();
    data[1000] ^= 1;
    fs::write(out.join("db/t1.ibd"), data).unwrap();
    consumer().arg("verify").arg(&out).assert().code(1).stderr(predicates::str::contains("db/t1.ibd: CRC-32"));

    let listing =
        consumer().args(["extract", "--list"]).write_stdin(stream).assert().success().get_output().stdout.clone();
    let listing = String::from_utf8(listing).unwrap();
    assert!(
        listing.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["196625", "4", "ibdata1"]),
        "{listing}"
    );
    assert!(listing.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["0", "0", "empty"]), "{listing}");
}

/// One run of the consumer memory test: extracts `stream` (a file, so that the reader is never starved) into a
/// fresh directory with `--memory-limit memory_limit`, checks the result against `src`, and returns the stats.
fn extract_big_stream(stream: &Path, src: &Path, memory_limit: &str) -> serde_json::Value {
    let work = tempfile::tempdir().unwrap();
    let (stats_path, out) = (work.path().join("stats.json"), work.path().join("out"));
    let extracted = spawn(
        consumer_command()
            .args([
                "extract",
                "--max-chunk-size",
                "64M",
                "--parallel",
                "8",
                "--no-fsync",
                "--memory-limit",
                memory_limit,
            ])
            .arg("--stats-json")
            .arg(&stats_path)
            .arg("-C")
            .arg(&out)
            .stdin(fs::File::open(stream).unwrap())
            .stderr(Stdio::piped()),
    )
    .wait_output(LONG);
    let stderr = String::from_utf8_lossy(&extracted.stderr);
    assert!(extracted.status.success(), "{stderr}");
    assert!(stderr.contains("all verified against backup-manifest.json"), "{stderr}");
    assert_same_tree(src, &out);
    read_stats(&stats_path)
}

/// The memory cap is what bounds the consumer's peak RSS. The stream is one 768 MiB file in 64 MiB chunks, read
/// from a file: one reader copying from the page cache outruns the writers (on 2 cores the 8 writers of
/// `--parallel 8`, which share the file's chunks, share the cores with it), which have to allocate page-cache
/// pages for what they write, so the pool fills. With `--memory-limit 128M` it holds 2 buffers and peak
/// RSS stays under the threshold (128 MiB + 32 MiB for the binary, libraries, thread stacks, allocator); the same
/// run with a 4 GiB limit gets the thread rule's 2 × (2 × 1 stream + 8) = 20 buffers and goes over it. The pool
/// hands out the last-returned buffer first, so RSS follows the buffers actually in use (5 to 10 of the 20 here),
/// which is why the chunks are this large. Measured here (2 cores, /tmp on ext4): capped 2 buffers, both in use,
/// peak RSS 134.5 MiB; uncapped 20 buffers, 5–10 in use at once, peak RSS 263–455 MiB. Each run 0.5–2 s.
#[test]
fn consumer_memory_limit_bounds_peak_rss() {
    let src = tempfile::tempdir().unwrap();
    let big = fs::File::create(src.path().join("huge.ibd")).unwrap();
    big.set_len(768 << 20).unwrap();
    for (i, offset) in [0u64, 100 << 20, 500 << 20].into_iter().enumerate() {
        std::os::unix::fs::FileExt::write_all_at(&big, &pseudo_random_bytes(1 << 20, 200 + i as u64), offset).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let stream = work.path().join("stream.xb");
    let produced = spawn(
        producer_to_stdout(src.path())
            .args(["--read-buffer-size", "64M"])
            .stdout(fs::File::create(&stream).unwrap())
            .stderr(Stdio::piped()),
    )
    .wait_output(LONG);
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));

    let capped = extract_big_stream(&stream, src.path(), "128M");
    let uncapped = extract_big_stream(&stream, src.path(), "4G");
    let expected = MemoryCap {
        bytes: 768 << 20,
        buffer: ("buffer_size", 64 << 20),
        buffers: (2, 20),
        threshold: (128 + 32) << 20,
    };
    assert_the_memory_cap_binds(&capped, &uncapped, expected);
}

/// An empty stream is what a failed producer leaves in a pipeline without pipefail: never a successful restore.
#[test]
fn an_empty_stream_is_an_error_not_an_empty_restore() {
    let work = tempfile::tempdir().unwrap();
    for args in [vec!["extract", "-C", work.path().join("out").to_str().unwrap()], vec!["extract", "--list"]] {
        consumer()
            .args(&args)
            .write_stdin(Vec::new())
            .assert()
            .code(1)
            .stderr(predicates::str::contains("no data: every stream ended before its first chunk"));
    }
}

/// A producer that fails mid-run ends its stream with a broken chunk: the consumer (and mbstream) fail too, even in
/// a pipeline whose shell would only see the consumer's exit status.
#[test]
fn a_producer_failure_is_never_a_complete_stream() {
    let src = tempfile::tempdir().unwrap();
    let victim = src.path().join("shrinking");
    fs::write(&victim, pseudo_random_bytes(4 << 20, 3)).unwrap();
    fs::write(src.path().join("other"), b"fine").unwrap();
    let mut command = producer_to_stdout(src.path());
    command.args(["--strict", "--read-buffer-size", "4K"]);
    // Held back by the pipe (see `produce_with_change`): it cannot have read more than ~400 KiB before the cut.
    command.args(["--parallel", "1", "--pipe-buffer-size", "64K", "--memory-limit", "64K"]);
    let (status, stream, stderr) = produce_with_change(&mut command, 4096, || {
        fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(2 << 20).unwrap();
    });
    assert_eq!(status.code(), Some(1), "{stderr}");
    // What the producer wrote, whole, as a consumer downstream in the pipeline would read it.
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let assert = consumer().arg("extract").arg("-C").arg(&out).write_stdin(stream.clone()).assert().code(1);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("PRODUCER-FAILED: this stream is incomplete"), "{stderr}");
    assert!(read_tree(&out).is_empty());
    // mbstream fails on it too.
    assert!(!mbstream_x(&stream, work.path()).status.success(), "mbstream must reject a failed producer's stream");
}

/// `--list` over several pipes reads them all at once (the producer ends pipe 0 last).
#[test]
fn list_reads_several_pipes_at_once() {
    let src = temp_tree(&[("big", pseudo_random_bytes(40 << 20, 5)), ("small", b"x".to_vec())]);
    let work = tempfile::tempdir().unwrap();
    let fifo_dir = work.path().join("fifos");
    let consumer = spawn(
        consumer_command()
            .args(["extract", "--list", "--fifo-streams", "2", "--fifo-timeout", "20", "--fifo-dir"])
            .arg(&fifo_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let producer = spawn(
        producer_to_stdout(src.path())
            .args(["--fifo-streams", "2", "--fifo-timeout", "20", "--fifo-dir"])
            .arg(&fifo_dir)
            .stderr(Stdio::piped()),
    );
    let (p, c) = (producer.wait_output(SHORT), consumer.wait_output(SHORT));
    assert!(p.status.success() && c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let listing = String::from_utf8(c.stdout).unwrap();
    assert!(
        listing.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["41943040", "20", "big"]),
        "{listing}"
    );
}

/// Names that look like temporary names, and names of 250 bytes, restore exactly (files are staged under their
/// own names in a private directory, never renamed with a suffix).
#[test]
fn partial_looking_and_long_names_restore_exactly() {
    let src = tempfile::tempdir().unwrap();
    let long = "n".repeat(250);
    write_tree(
        src.path(),
        &[
            ("f1", b"one".to_vec()),
            ("f1.xbpartial", b"not the partial of f1".to_vec()),
            (".xbkit-partial-1", b"looks like staging".to_vec()),
            (long.as_str(), b"long name".to_vec()),
        ],
    );
    for overwrite in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("out");
        let args: &[&str] = if overwrite { &["--overwrite"] } else { &[] };
        round_trip(src.path(), &out, 0, &[], args);
        assert_same_tree(src.path(), &out);
    }
}

/// The manifest's SHA-1s are really checked, both when the consumer hashes files as they arrive (`--digest sha1`)
/// and when it re-reads them: a manifest whose SHA-1 for one file was altered (same length, CRCs fixed) fails.
#[test]
fn a_wrong_sha1_in_the_manifest_fails_both_ways() {
    let src = temp_tree(&sample_files(CHUNK));
    let stream = produce(src.path(), &["--read-buffer-size", "64K", "--digest", "sha1"]);
    let expected = {
        use sha1::Digest as _;
        sha1::Sha1::digest(pseudo_random_bytes(3 * CHUNK + 17, 1))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let forged = "0".repeat(40);
    let mut chunks = parse(&stream);
    let mut forgeries = 0;
    for (header, payload) in &mut chunks {
        if header.path == proto::MANIFEST_NAME.as_bytes() && header.kind == ChunkKind::Payload {
            // The manifest goes in pieces, each of whole records: one of them holds this file's.
            let text = String::from_utf8(payload.clone()).unwrap();
            forgeries += usize::from(text.contains(&expected));
            *payload = text.replace(&expected, &forged).into_bytes();
        }
    }
    assert_eq!(forgeries, 1, "one piece holds the record");
    let forged_stream = encode(&chunks);
    for args in [&["--digest", "sha1"][..], &[]] {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("out");
        consumer()
            .arg("extract")
            .args(args)
            .arg("-C")
            .arg(&out)
            .write_stdin(forged_stream.clone())
            .assert()
            .code(1)
            .stderr(predicates::str::contains(format!(
                "ibdata1: SHA-1 {expected} does not match the manifest's {forged}"
            )));
        assert!(read_tree(&out).is_empty());
    }
}
