//! The producer end to end: every sink, horizontal reads, the memory cap, FIFO deadlines, a consumer that dies,
//! and the edges users hit.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::{Digest, SHA1SUMS_NAME};

use crate::support::*;

const CHUNK: usize = 64 * 1024;

fn sample_source() -> tempfile::TempDir {
    temp_tree(&sample_files(CHUNK))
}

#[test]
fn stdout_stream_extracts_with_mbstream_and_the_manifest_proves_it() {
    let src = sample_source();
    let out = tempfile::tempdir().unwrap();
    let stream = producer()
        .arg("--source")
        .arg(src.path())
        .args(["--stream=xbstream", "--read-buffer-size", "64K", "--parallel", "3"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    mbstream_extract(&stream, out.path());
    assert_same_tree(src.path(), out.path());

    let manifest = read_manifest(out.path());
    assert_eq!(manifest.chunk_size, CHUNK as u64);
    assert_eq!(manifest.digest, Digest::Crc32);
    let files = sample_files(CHUNK);
    assert_eq!(manifest.files.len(), files.len());
    for (path, data) in &files {
        let record = manifest.files.iter().find(|r| r.path.0 == path.as_bytes()).expect("listed");
        assert_eq!(record.size, data.len() as u64, "{path}");
        assert_eq!(record.crc32, crc32fast::hash(data), "{path}");
        assert_eq!(record.chunks, data.len().div_ceil(CHUNK) as u64, "{path}");
        assert_eq!(record.sha1, None);
    }
    // The stream totals count every chunk but the manifest's own (its pieces, sent as the backup goes, and its end).
    let manifest_chunk_bytes: u64 = parse(&stream)
        .iter()
        .filter(|(header, _)| header.path == proto::MANIFEST_NAME.as_bytes())
        .map(|(header, _)| header.encoded_len())
        .sum();
    assert_eq!(manifest.streams.len(), 1);
    assert_eq!(manifest.streams[0].bytes + manifest_chunk_bytes, stream.len() as u64);
}

#[test]
fn directory_copy_round_trips_with_modes() {
    let src = sample_source();
    fs::set_permissions(src.path().join("one"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("copy");
    producer().arg("--source").arg(src.path()).arg("--target-dir").arg(&target).assert().success();
    assert_same_tree(src.path(), &target);
    assert_eq!(fs::metadata(target.join("one")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(read_manifest(&target).files.len(), sample_files(CHUNK).len());
    // A second run into the same, now non-empty, directory is refused.
    producer()
        .arg("--source")
        .arg(src.path())
        .arg("--target-dir")
        .arg(&target)
        .assert()
        .failure()
        .stderr(predicates::str::contains("is not empty"));
}

/// N pipes with --fifo-binding=file: every pipe alone is a valid xbstream for `mbstream -x`; the union is the tree,
/// the manifest and the SHA-1 list travel last on pipe 0, `sha1sum -c` passes, and the pipes are removed.
#[test]
fn fifo_streams_with_file_binding_each_extract_with_mbstream() {
    let src = sample_source();
    let work = tempfile::tempdir().unwrap();
    let fifo_dir = work.path().join("fifos");
    let stats = work.path().join("stats.json");
    let streams = 3;
    let child = spawn(
        producer_to_stdout(src.path())
            .args(["--fifo-streams", "3", "--fifo-binding", "file", "--digest", "sha1"])
            .args(["--read-buffer-size", "64K", "--fifo-timeout", "20"])
            .arg("--fifo-dir")
            .arg(&fifo_dir)
            .arg("--stats-json")
            .arg(&stats)
            .stderr(Stdio::piped()),
    );
    let readers: Vec<_> = (0..streams)
        .map(|i| {
            let path = fifo_dir.join(format!("thread_{i}"));
            spawn_named(&format!("pipe {i} reader"), move || {
                // The producer makes every pipe before it opens any: the pipe appearing is the event to wait for.
                wait_for_path(&path, SHORT);
                let mut bytes = Vec::new();
                fs::File::open(&path).unwrap().read_to_end(&mut bytes).unwrap();
                bytes
            })
        })
        .collect();
    let pipes: Vec<Vec<u8>> = readers.into_iter().map(|r| join_within(r, SHORT)).collect();
    let output = child.wait_output(SHORT);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let all = work.path().join("all");
    for (i, bytes) in pipes.iter().enumerate() {
        let out = work.path().join(format!("pipe{i}"));
        mbstream_extract(bytes, &out);
        for (path, data) in read_tree(&out) {
            write_tree(&all, &[(path.to_str().unwrap(), data)]);
        }
    }
    assert_same_tree(src.path(), &all);
    assert!(work.path().join("pipe0").join(proto::MANIFEST_NAME).exists(), "the manifest travels on pipe 0");
    run_ok(Command::new("sha1sum").args(["-c", "--quiet", SHA1SUMS_NAME]).current_dir(&all), SHORT);
    assert_eq!(fs::read_dir(&fifo_dir).unwrap().count(), 0, "pipes are removed");

    // The stats' per-stream SHA-1 is the SHA-1 of what each pipe carried.
    let stats = read_stats(&stats);
    for (i, bytes) in pipes.iter().enumerate() {
        let expected = {
            use sha1::Digest as _;
            hex_lower(&sha1::Sha1::digest(bytes))
        };
        assert_eq!(stats["streams"][i]["sha1"], expected.as_str(), "stream {i}");
        assert_eq!(stats["streams"][i]["bytes"], bytes.len() as u64, "stream {i}");
    }
    let manifest = read_manifest(&all);
    assert!(manifest.files.iter().all(|f| f.sha1.is_some()));
    assert_eq!(manifest.streams.len(), 3);
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One 200 MB file, --parallel 4: the stats show all four read threads took chunks of it.
#[test]
fn one_big_file_is_read_by_every_thread() {
    let src = tempfile::tempdir().unwrap();
    let file = fs::File::create(src.path().join("huge.ibd")).unwrap();
    file.set_len(200_000_000).unwrap();
    // Beside the source, in a directory of its own: a fixed name in /tmp is shared with every other run.
    let work = tempfile::tempdir().unwrap();
    let stats = work.path().join("stats-big.json");
    run_to_null(
        producer_to_stdout(src.path())
            .args(["--parallel", "4", "--read-buffer-size", "1M"])
            .arg("--stats-json")
            .arg(&stats),
    );
    let stats = read_stats(&stats);
    let per_thread: Vec<u64> =
        stats["chunks_read_per_thread"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(per_thread.len(), 4);
    assert_eq!(per_thread.iter().sum::<u64>(), 191, "200,000,000 bytes in 1 MiB chunks");
    assert!(per_thread.iter().all(|&n| n > 0), "every thread read part of the one file: {per_thread:?}");
}

/// One run of the memory test: the producer streams `src` in 16 MiB chunks to a reader slower than itself (this
/// test, at 250 MB/s in 256 KiB reads), which passes the stream on to `mbstream -x`; the extracted tree must equal
/// the source. Returns the producer's stats.
fn produce_through_a_slow_reader(src: &std::path::Path, memory_limit: &str) -> serde_json::Value {
    let work = tempfile::tempdir().unwrap();
    let (stats_path, out) = (work.path().join("stats.json"), work.path().join("out"));
    fs::create_dir(&out).unwrap();
    let mut producer = spawn(
        producer_to_stdout(src)
            .args(["--read-buffer-size", "16M", "--memory-limit", memory_limit])
            .arg("--stats-json")
            .arg(&stats_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut mbstream =
        spawn(Command::new(tool("mbstream")).args(["-x", "-C"]).arg(&out).stdin(Stdio::piped()).stderr(Stdio::piped()));
    let (from, to) = (producer.stdout(), mbstream.stdin());
    let copier = spawn_named("slow reader", move || copy_at_rate(from, to, 250e6));
    let produced = producer.wait_output(LONG);
    let extracted = mbstream.wait_output(LONG);
    let copied = join_within(copier, SHORT);
    assert!(produced.status.success(), "producer: {}", String::from_utf8_lossy(&produced.stderr));
    assert!(extracted.status.success(), "mbstream -x: {}", String::from_utf8_lossy(&extracted.stderr));
    copied.expect("copy the stream to mbstream");
    assert_same_tree(src, &out);
    read_stats(&stats_path)
}

/// The memory cap is what bounds the producer's peak RSS. Its downstream (this test) reads slower than the producer
/// reads its source, so the buffer pool fills: with `--memory-limit 64M` and 16 MiB chunks it holds 4 buffers and
/// peak RSS stays under the threshold (64 MiB + 32 MiB for the binary, libraries, thread stacks, allocator); the same
/// run with a 4 GiB limit gets the pool of the thread rule (2 × (4 read + 2 process + 1 write + 4) = 22 buffers,
/// 352 MiB), fills it, and goes far over the threshold. Measured here: capped 4 buffers, all in use, peak RSS
/// 73.4 MB (70 MiB); uncapped 22 buffers, all in use, peak RSS 375 MB (358 MiB); each run ~2.1 s.
///
/// The source is 512 MiB: four sparse 128 MiB files (holes read as zeros, free to make), each with a pseudo-random
/// 1 MiB block so that the comparison of the extracted tree means something.
#[test]
fn memory_limit_bounds_peak_rss() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..4u64 {
        let file = fs::File::create(src.path().join(format!("f{i}"))).unwrap();
        file.set_len(128 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &pseudo_random_bytes(1 << 20, 40 + i), (i * 37 + 5) << 20)
            .unwrap();
    }
    let capped = produce_through_a_slow_reader(src.path(), "64M");
    let uncapped = produce_through_a_slow_reader(src.path(), "4G");
    let expected =
        MemoryCap { bytes: 512 << 20, buffer: ("chunk_size", 16 << 20), buffers: (4, 22), threshold: (64 + 32) << 20 };
    assert_the_memory_cap_binds(&capped, &uncapped, expected);
}

#[test]
fn fifo_nobody_opens_fails_in_time_naming_the_pipe_and_removes_pipes() {
    let src = sample_source();
    let work = tempfile::tempdir().unwrap();
    let fifo_dir = work.path().join("fifos");
    let started = Instant::now();
    producer()
        .arg("--source")
        .arg(src.path())
        .args(["--stream=xbstream", "--fifo-streams", "2", "--fifo-timeout", "1"])
        .arg("--fifo-dir")
        .arg(&fifo_dir)
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("thread_0 within 1 s (--fifo-timeout)"));
    // Well under the default 60 s: the 1 s asked for is what was waited, with room for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(fs::read_dir(&fifo_dir).unwrap().count(), 0, "pipes are removed on failure");
}

/// The consumer reads a little and dies: the producer exits non-zero soon after (well before it could have read its
/// 64 MiB on a loaded machine), naming the stream and how far it got.
#[test]
fn consumer_that_dies_is_a_broken_pipe_error_not_a_hang() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("data"), pseudo_random_bytes(64 << 20, 9)).unwrap();
    let mut child = spawn(producer_to_stdout(src.path()).stdout(Stdio::piped()).stderr(Stdio::piped()));
    let mut stdout = child.stdout();
    // Reads the first 100,000 bytes, then dies (drops its end of the pipe).
    let reader = spawn_named("short-lived consumer", move || {
        let mut first = vec![0u8; 100_000];
        stdout.read_exact(&mut first).unwrap();
    });
    join_within(reader, SHORT);
    let died = Instant::now();
    let output = child.wait_output(SHORT);
    assert!(died.elapsed() < Duration::from_secs(10), "{:?}", died.elapsed());
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stream 0 (STDOUT)") && stderr.contains("failed at stream offset"), "{stderr}");
    assert!(stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn path_over_511_bytes_fails_before_anything_is_written() {
    let src = sample_source();
    let deep = src.path().join("d".repeat(250)).join("e".repeat(250)).join("f".repeat(20));
    fs::create_dir_all(deep.parent().unwrap()).unwrap();
    fs::write(&deep, b"x").unwrap();
    let output = producer().arg("--source").arg(src.path()).arg("--stream=xbstream").assert().code(1);
    let output = output.get_output();
    assert!(output.stdout.is_empty(), "nothing was written");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot back up") && stderr.contains("is 522 bytes long (at most 511)"), "{stderr}");
}

#[test]
fn symlinks_special_files_and_a_stale_manifest_are_skipped_with_warnings() {
    let src = sample_source();
    std::os::unix::fs::symlink("/etc", src.path().join("escape")).unwrap();
    nix::unistd::mkfifo(&src.path().join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    fs::write(src.path().join(proto::MANIFEST_NAME), b"{\"old\": true}").unwrap();
    let assert = producer().arg("--source").arg(src.path()).arg("--stream=xbstream").assert().success();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("skipping escape (symlink -> /etc)"), "{stderr}");
    assert!(stderr.contains("skipping pipe (special file)"), "{stderr}");
    assert!(stderr.contains("skipping backup-manifest.json: taken for an earlier backup's manifest"), "{stderr}");
    let out = tempfile::tempdir().unwrap();
    mbstream_extract(&assert.get_output().stdout, out.path());
    assert!(!out.path().join("escape").exists() && !out.path().join("pipe").exists());
    assert_eq!(read_manifest(out.path()).files.len(), sample_files(CHUNK).len());
}

/// Producer flags for the tests that change a file during the copy (see [`produce_with_change`]): one reader,
/// 4 KiB chunks, a 64 KiB pipe and a 64 KiB pool, so that while the test holds the stream after its first 4096 bytes
/// the producer cannot have read more than ~400 KiB of the source. The files are changed 2 MiB or more in.
const HELD_BACK: [&str; 9] = [
    "--stream=xbstream",
    "--read-buffer-size",
    "4K",
    "--parallel",
    "1",
    "--pipe-buffer-size",
    "64K",
    "--memory-limit",
    "64K",
];

/// The size of a file changed during the copy, and what it shrinks to.
const BIG_VICTIM: usize = 4 << 20;
const SHRUNK: u64 = (2 << 20) + 100;

/// A file that shrinks while it is read: a warning, and the manifest records exactly what was streamed; with
/// --strict the run fails.
#[test]
fn file_that_shrinks_during_the_copy_is_recorded_or_fails_with_strict() {
    for strict in [false, true] {
        let src = tempfile::tempdir().unwrap();
        let victim = src.path().join("shrinking");
        fs::write(&victim, pseudo_random_bytes(BIG_VICTIM, 3)).unwrap();
        let mut command = producer_command();
        command.arg("--source").arg(src.path()).args(HELD_BACK);
        if strict {
            command.arg("--strict");
        }
        let (status, stream, stderr) = produce_with_change(&mut command, 4096, || {
            fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(SHRUNK).unwrap();
        });
        assert!(stderr.contains("shrank while being copied"), "{stderr}");
        if strict {
            assert_eq!(status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("(--strict)"), "{stderr}");
            continue;
        }
        assert!(status.success(), "{stderr}");
        let out = tempfile::tempdir().unwrap();
        mbstream_extract(&stream, out.path());
        let copied = fs::read(out.path().join("shrinking")).unwrap();
        let record = read_manifest(out.path()).files.into_iter().find(|f| f.path.0 == b"shrinking").unwrap();
        assert_eq!(record.size, copied.len() as u64);
        assert_eq!(record.crc32, crc32fast::hash(&copied));
        // The producer was held back far before the cut, so it copied exactly what was left.
        assert_eq!(copied.len() as u64, SHRUNK);
        assert_eq!(&copied[..], &pseudo_random_bytes(BIG_VICTIM, 3)[..copied.len()]);
    }
}

/// An unreadable file is an error naming it (run as an unprivileged user, since root reads anything).
#[test]
fn unreadable_file_is_an_error_naming_it() {
    let src = sample_source();
    fs::set_permissions(src.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.path().join("db"), fs::Permissions::from_mode(0o755)).unwrap();
    for (path, _) in sample_files(CHUNK) {
        fs::set_permissions(src.path().join(path), fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::set_permissions(src.path().join("db/t1.ibd"), fs::Permissions::from_mode(0o000)).unwrap();
    let mut command = if nix::unistd::geteuid().is_root() {
        let mut c = assert_cmd::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", PRODUCER]);
        c
    } else {
        producer()
    };
    let output = command.arg("--source").arg(src.path()).arg("--stream=xbstream").assert().code(1);
    let stderr = String::from_utf8_lossy(&output.get_output().stderr).into_owned();
    assert!(stderr.contains("cannot open") && stderr.contains("db/t1.ibd: Permission denied"), "{stderr}");
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    let src = sample_source();
    for (args, reason) in [
        (vec!["--stream=xbstream", "--fifo-streams", "4"], "--fifo-streams 4 needs --fifo-dir"),
        (vec!["--stream=xbstream", "--read-buffer-size", "1K"], "--read-buffer-size must be between 4K"),
        (vec!["--stream=xbstream", "--memory-limit", "1M"], "holds fewer than 2 buffers"),
        (vec![], "say where the backup goes"),
    ] {
        producer()
            .arg("--source")
            .arg(src.path())
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(reason));
    }
    producer()
        .args(["--source", "/nonexistent"])
        .arg("--stream=xbstream")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("cannot read --source /nonexistent"));
    producer().arg("--version").assert().success().stdout(predicates::str::starts_with("producer 0.1.0"));
}

/// A file that grows while it is read: a warning, the scanned size is copied; both when the last chunk can probe
/// for the extra byte and when it fills its buffer (then the file is stat'ed).
#[test]
fn file_that_grows_during_the_copy_is_copied_up_to_its_scanned_size() {
    for size in [BIG_VICTIM - 100, BIG_VICTIM] {
        let src = tempfile::tempdir().unwrap();
        let victim = src.path().join("growing");
        let original = pseudo_random_bytes(size, 4);
        fs::write(&victim, &original).unwrap();
        let mut command = producer_command();
        command.arg("--source").arg(src.path()).args(HELD_BACK);
        let (status, stream, stderr) = produce_with_change(&mut command, 4096, || {
            fs::OpenOptions::new().append(true).open(&victim).unwrap().write_all(&[1u8; 5000]).unwrap();
        });
        assert!(status.success(), "{stderr}");
        assert!(stderr.contains(&format!("grew while being copied; the first {size} bytes were copied")), "{stderr}");
        let out = tempfile::tempdir().unwrap();
        mbstream_extract(&stream, out.path());
        assert_eq!(fs::read(out.path().join("growing")).unwrap(), original);
    }
}

/// A file written in place while it is read (its size unchanged): the part copied before the write is old, the part
/// copied after it new — content that never existed. The producer checks the copy against the file once it sees
/// (by `fstat`) that the file changed: here it does not match, so the run fails naming the file, `--strict` or
/// not, and the stream ends broken, so the consumer fails too. A write only to the part not yet copied leaves a copy
/// that is the file as it now is: checked, and delivered.
#[test]
fn a_file_rewritten_in_place_while_it_is_read_is_never_delivered_torn() {
    for (case, regions) in [("torn", vec![0usize, 3 << 20]), ("ahead", vec![3 << 20])] {
        let src = tempfile::tempdir().unwrap();
        let victim = src.path().join("rewritten");
        fs::write(&victim, vec![b'A'; BIG_VICTIM]).unwrap();
        let mut command = producer_command();
        command.arg("--source").arg(src.path()).args(HELD_BACK);
        // Held back after 4 KiB of stream: the first ~400 KiB are read, the rest is not.
        let (status, stream, stderr) = produce_with_change(&mut command, 4096, || {
            let file = fs::OpenOptions::new().write(true).open(&victim).unwrap();
            for &start in &regions {
                std::os::unix::fs::FileExt::write_all_at(&file, &[b'B'; 1 << 20], start as u64).unwrap();
            }
        });
        let out = tempfile::tempdir().unwrap();
        let consumed = consume(&["extract", "-C", out.path().to_str().unwrap()], &stream);
        if case == "torn" {
            assert_eq!(status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains("rewritten changed while it was read") && stderr.contains("the copy may be torn"),
                "{stderr}"
            );
            assert_eq!(consumed.status.code(), Some(1), "the consumer must not take the broken stream");
            assert!(!out.path().join("rewritten").exists());
        } else {
            assert!(status.success(), "{stderr}");
            assert!(consumed.status.success(), "{}", String::from_utf8_lossy(&consumed.stderr));
            assert_eq!(fs::read(out.path().join("rewritten")).unwrap(), fs::read(&victim).unwrap());
        }
    }
}

/// A file deleted after the scan but before it is opened: a warning, and it is left out of the manifest (so the
/// consumer's proof does not expect it); --strict fails instead.
#[test]
fn file_that_vanishes_before_it_is_read_is_left_out_or_fails_with_strict() {
    for strict in [false, true] {
        let src = tempfile::tempdir().unwrap();
        // 19 files of 128 KiB (2.4 MiB, read in name order) before the victim: the producer is held back well before it.
        for i in 0..19 {
            fs::write(src.path().join(format!("f{i:02}")), pseudo_random_bytes(128 << 10, i)).unwrap();
        }
        fs::write(src.path().join("f19"), pseudo_random_bytes(4096, 19)).unwrap();
        let mut command = producer_command();
        command.arg("--source").arg(src.path()).args(HELD_BACK);
        if strict {
            command.arg("--strict");
        }
        let victim = src.path().join("f19");
        let (status, stream, stderr) = produce_with_change(&mut command, 4096, || fs::remove_file(&victim).unwrap());
        assert!(stderr.contains("f19 vanished before it could be read"), "{stderr}");
        if strict {
            assert_eq!(status.code(), Some(1), "{stderr}");
            continue;
        }
        assert!(status.success(), "{stderr}");
        let out = tempfile::tempdir().unwrap();
        mbstream_extract(&stream, out.path());
        assert!(!out.path().join("f19").exists());
        let manifest = read_manifest(out.path());
        assert_eq!(manifest.files.len(), 19);
        assert!(manifest.files.iter().all(|f| f.path.0 != b"f19"));
    }
}

/// Thread counts default to the machine's cores (never below the 2-core defaults), and `--help` says what each
/// resolves to here; `XBKIT_CORES` stands for the cores (so this checks a 16- and a 32-core machine on any).
#[test]
fn thread_defaults_follow_the_machines_cores_and_help_says_what_they_are() {
    let default_of = |help: &str, option: &str| -> String {
        let after = &help[help.find(option).unwrap_or_else(|| panic!("{option} in --help"))..];
        let start = after.find("[default: ").expect("a default") + "[default: ".len();
        after[start..start + after[start..].find(']').unwrap()].to_string()
    };
    let here = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (cores, variable) in [(here, None), (1, Some("1")), (16, Some("16")), (32, Some("32"))] {
        let help_of = |command: &mut Command| {
            if let Some(variable) = variable {
                command.env("XBKIT_CORES", variable);
            }
            String::from_utf8(run_ok(command, SHORT)).unwrap()
        };
        let help = help_of(producer_command().arg("--help"));
        assert_eq!(default_of(&help, "--parallel <N>"), cores.max(4).to_string(), "{cores} cores");
        assert_eq!(default_of(&help, "--compress-threads <N>"), cores.max(2).to_string(), "{cores} cores");
        assert_eq!(default_of(&help, "--memory-limit <SIZE>"), format!("{}M", (16 * cores).max(256)), "{cores} cores");
        let help = help_of(consumer_command().args(["extract", "--help"]));
        assert_eq!(default_of(&help, "--parallel <N>"), cores.max(2).to_string(), "{cores} cores");
        assert_eq!(default_of(&help, "--memory-limit <SIZE>"), format!("{}M", (32 * cores).max(256)), "{cores} cores");
        assert_eq!(default_of(&help, "--decompress-threads <N>"), cores.max(2).to_string(), "{cores} cores");
    }
}
