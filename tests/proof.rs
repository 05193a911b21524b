//! No false success: a stream of ours that ends early never extracts (or lists) as complete, whatever the cut,
//! however the producer dies; stop signals, stalled peers and panicked threads are failures; a hostile manifest
//! cannot grant privileges or memory.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::{is_marker_name, StreamMarker};
use proto::{ChunkReader, ChunkWriter};

use crate::support::*;

/// A small backup: a few dozen files in nested directories, some empty, some a few chunks long (4 KiB chunks).
fn small_source() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..30 {
        let len = match i % 5 {
            0 => 0,
            1 => 1,
            2 => 4096 * 2 + 7,
            _ => 100 + i * 31,
        };
        files.push((format!("db{}/t{i}.ibd", i % 3), pseudo_random_bytes(len, i as u64)));
    }
    write_tree(src.path(), &files);
    src
}

const SMALL_CHUNKS: [&str; 2] = ["--read-buffer-size", "4K"];

/// Stream offsets at which a chunk ends (every place a stream can be cut between two chunks), the last excluded.
fn chunk_boundaries(stream: &[u8]) -> Vec<usize> {
    let mut reader = ChunkReader::new(stream);
    let mut ends = vec![0];
    let mut payload = Vec::new();
    while reader.read_chunk(&mut payload).unwrap().is_some() {
        ends.push(reader.position() as usize);
    }
    assert_eq!(ends.pop(), Some(stream.len()));
    ends
}

/// The whole small backup on STDOUT, cut at every chunk boundary: every cut fails, for extract and for --list.
#[test]
fn a_stream_cut_at_any_chunk_boundary_never_extracts_or_lists_as_complete() {
    let src = small_source();
    let stream = produce(src.path(), &SMALL_CHUNKS);
    let boundaries = chunk_boundaries(&stream);
    assert!(boundaries.len() > 60, "a few dozen files make many chunks: {}", boundaries.len());
    let work = tempfile::tempdir().unwrap();
    for (n, &cut) in boundaries.iter().enumerate() {
        let out = work.path().join(format!("out{n}"));
        let extract = consumer().arg("extract").arg("-C").arg(&out).write_stdin(stream[..cut].to_vec()).assert();
        let stderr = String::from_utf8_lossy(&extract.get_output().stderr).into_owned();
        assert_eq!(extract.get_output().status.code(), Some(1), "cut at {cut}: {stderr}");
        if cut > 0 {
            assert!(stderr.contains("stream 0"), "cut at {cut} names the stream: {stderr}");
        }
        assert_nothing_complete(&out, &format!("cut at {cut}"));
        let list = consumer().args(["extract", "--list"]).write_stdin(stream[..cut].to_vec()).assert();
        assert_eq!(list.get_output().status.code(), Some(1), "--list of the cut at {cut} must fail");
    }
    // The uncut stream extracts and lists.
    let out = work.path().join("whole");
    consumer().arg("extract").arg("-C").arg(&out).write_stdin(stream.clone()).assert().success();
    assert_same_tree(src.path(), &out);
    consumer().args(["extract", "--list"]).write_stdin(stream).assert().success();
}

/// The same backup over 4 pipes: each pipe cut at each of its chunk boundaries, the other pipes whole.
#[test]
fn any_pipe_cut_at_any_chunk_boundary_never_extracts_as_complete() {
    let src = small_source();
    let streams = produce_pipes(src.path(), 4, &SMALL_CHUNKS);
    let work = tempfile::tempdir().unwrap();
    let mut runs = 0;
    for (pipe, stream) in streams.iter().enumerate() {
        for cut in chunk_boundaries(stream) {
            let mut cut_streams = streams.clone();
            cut_streams[pipe].truncate(cut);
            let out = work.path().join(format!("out-{pipe}-{cut}"));
            let output = feed_pipes(&cut_streams, Some(&out), &[]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "pipe {pipe} cut at {cut}: {stderr}");
            assert_nothing_complete(&out, &format!("pipe {pipe} cut at {cut}"));
            runs += 1;
        }
    }
    assert!(runs > 60, "{runs} cuts");
    let out = work.path().join("whole");
    let output = feed_pipes(&streams, Some(&out), &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_same_tree(src.path(), &out);
}

/// Every stream starts with its marker; mbstream -x extracts it as a plain file.
#[test]
fn every_stream_starts_with_a_marker_that_mbstream_extracts() {
    let src = small_source();
    let streams = produce_pipes(src.path(), 3, &["--fifo-binding", "file", "--digest", "sha1"]);
    let mut ids = Vec::new();
    for (index, stream) in streams.iter().enumerate() {
        let (header, payload) = ChunkReader::new(&stream[..]).next().unwrap().unwrap();
        assert_eq!(header.path, format!("backup-stream-{index}.json").into_bytes());
        let marker = StreamMarker::from_json(&payload).unwrap();
        assert_eq!((marker.stream, marker.streams), (index as u32, 3));
        assert_eq!(marker.digest, proto::Digest::Sha1);
        assert_eq!(marker.binding, proto::MarkerBinding::File);
        ids.push(marker.backup_id);
        let out = tempfile::tempdir().unwrap();
        mbstream_extract(stream, out.path());
        let extracted = fs::read(out.path().join(format!("backup-stream-{index}.json"))).unwrap();
        assert_eq!(extracted, payload);
    }
    assert!(ids.iter().all(|id| id == &ids[0]), "one backup id: {ids:?}");
    let out = tempfile::tempdir().unwrap();
    let output = feed_pipes(&streams, Some(out.path()), &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(read_manifest(out.path()).backup_id.as_ref(), Some(&ids[0]));
    assert!(
        !fs::read_dir(out.path()).unwrap().any(|e| is_marker_name(e.unwrap().file_name().as_encoded_bytes())),
        "our consumer does not write the markers out"
    );
}

/// Pipes read as the wrong count, swapped, or from two backups are refused, naming the stream.
#[test]
fn pipes_that_do_not_belong_together_are_refused() {
    let src = small_source();
    let a = produce_pipes(src.path(), 2, &[]);
    let b = produce_pipes(src.path(), 2, &[]);
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (vec![a[1].clone(), a[0].clone()], "of 2 of backup"),
        (vec![a[0].clone(), b[1].clone()], "the pipes of two backups are mixed up"),
        (vec![a[0].clone(), a[1].clone(), b[0].clone()], "of 2 of backup"),
    ];
    for (streams, message) in cases {
        let out = tempfile::tempdir().unwrap();
        let output = feed_pipes(&streams, Some(&out.path().join("out")), &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(message) && stderr.contains("stream "), "expected {message:?} in {stderr}");
    }
    // A marked stream without any marker on another pipe.
    let foreign = {
        let mut writer = ChunkWriter::new(Vec::new());
        writer.write_payload(b"x", 0, b"foreign").unwrap();
        writer.write_eof(b"x").unwrap();
        writer.into_inner()
    };
    let mut stream1 = foreign;
    stream1.truncate(stream1.len());
    let output = feed_pipes(&[a[0].clone(), stream1], Some(&tempfile::tempdir().unwrap().path().join("o")), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stream 1") && stderr.contains("has no start marker"), "{stderr}");
}

/// A producer killed (SIGKILL) or stopped (SIGTERM, SIGINT, SIGHUP, SIGPIPE) mid-run, on STDOUT: the consumer
/// downstream never exits 0; a stopped producer exits non-zero and ends the stream with the broken chunk.
#[test]
fn a_producer_killed_or_stopped_mid_stream_never_leaves_a_complete_stream() {
    let src = temp_tree(&[("big", pseudo_random_bytes(4 << 20, 9)), ("small", b"x".to_vec())]);
    for signal in ["KILL", "TERM", "INT", "HUP", "PIPE"] {
        let mut producer = spawn(
            producer_to_stdout(src.path())
                .args(["--read-buffer-size", "64K", "--throttle", "20"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let mut stdout = producer.stdout();
        // Mid-run: the marker and the first payload chunk have arrived.
        let mut stream = vec![0u8; 64 << 10];
        stdout.read_exact(&mut stream).unwrap();
        send_signal(&producer, signal);
        stdout.read_to_end(&mut stream).unwrap();
        let output = producer.wait_output(Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "SIG{signal}: the producer must not exit 0: {stderr}");
        if signal != "KILL" {
            assert_eq!(output.status.code(), Some(1), "SIG{signal}: {stderr}");
            assert!(stderr.contains(&format!("stopped by SIG{signal}")), "SIG{signal}: {stderr}");
            let poison = proto::POISON_PATH;
            assert!(stream.windows(poison.len()).any(|w| w == poison), "SIG{signal}: the stream ends broken");
        }
        let out = tempfile::tempdir().unwrap();
        let extract = consumer().arg("extract").arg("-C").arg(out.path()).write_stdin(stream).assert().code(1);
        let stderr = String::from_utf8_lossy(&extract.get_output().stderr);
        assert!(stderr.contains("stream 0 (STDIN)"), "SIG{signal}: {stderr}");
        assert_nothing_complete(out.path(), &format!("SIG{signal}"));
    }
}

/// The same over 4 pipes, producer and consumer running together: SIGKILL and SIGTERM mid-run both end in a
/// failed consumer, no manifest and no pipes left.
#[test]
fn a_producer_killed_mid_run_on_four_pipes_fails_the_consumer() {
    let src = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..8).map(|i| (format!("f{i}"), pseudo_random_bytes(1 << 20, i))).collect();
    write_tree(src.path(), &files);
    for signal in ["KILL", "TERM"] {
        let work = tempfile::tempdir().unwrap();
        let (out, fifo_dir) = (work.path().join("out"), work.path().join("fifos"));
        let consumer = consumer_on_pipes(&["extract".as_ref(), "-C".as_ref(), out.as_os_str()], 4, &fifo_dir);
        let producer = producer_on_pipes(src.path(), 4, &fifo_dir, &["--read-buffer-size", "64K", "--throttle", "20"]);
        // Mid-run: the consumer has staged its first file.
        wait_until(SHORT, "the first staged file", || has_staged_a_file(&out));
        send_signal(&producer, signal);
        let produced = producer.wait_output(Duration::from_secs(30));
        let consumed = consumer.wait_output(Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&consumed.stderr);
        assert!(!produced.status.success());
        assert_eq!(consumed.status.code(), Some(1), "SIG{signal}: {stderr}");
        assert!(stderr.contains("stream "), "SIG{signal}: names a stream: {stderr}");
        assert_nothing_complete(&out, &format!("SIG{signal}"));
        assert!(!fifo_dir.exists() || fs::read_dir(&fifo_dir).unwrap().count() == 0, "SIG{signal}: pipes removed");
    }
}

/// A consumer stopped by SIGTERM mid-run exits 1 and removes its staging directory and pipes.
#[test]
fn a_consumer_stopped_mid_run_cleans_up_and_fails() {
    let src = temp_tree(&[("big", pseudo_random_bytes(4 << 20, 3))]);
    let work = tempfile::tempdir().unwrap();
    let (out, fifo_dir) = (work.path().join("out"), work.path().join("fifos"));
    let consumer = consumer_on_pipes(&["extract".as_ref(), "-C".as_ref(), out.as_os_str()], 2, &fifo_dir);
    let producer = producer_on_pipes(src.path(), 2, &fifo_dir, &["--read-buffer-size", "64K", "--throttle", "20"]);
    wait_until(SHORT, "the staged file", || has_staged_a_file(&out));
    send_signal(&consumer, "TERM");
    let consumed = consumer.wait_output(Duration::from_secs(30));
    let produced = producer.wait_output(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&consumed.stderr);
    assert_eq!(consumed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert!(!produced.status.success(), "the producer notices its consumer went away");
    assert_nothing_complete(&out, "SIGTERM");
    assert!(!fifo_dir.exists() || fs::read_dir(&fifo_dir).unwrap().count() == 0, "pipes removed");
}

/// A stalled peer (SIGSTOP) is not a hang: --idle-timeout ends the other side naming the stream, both ways.
#[test]
fn a_stalled_peer_hits_the_idle_timeout_on_both_sides() {
    let src = temp_tree(&[("big", pseudo_random_bytes(16 << 20, 4))]);
    // The consumer stalls: the producer's writes stop making progress.
    let mut stalled = spawn(Command::new("sleep").arg("60").stdin(Stdio::piped()));
    let started = Instant::now();
    let producer = spawn(
        producer_to_stdout(src.path())
            .args(["--idle-timeout", "2"])
            .stdout(Stdio::from(stalled.stdin()))
            .stderr(Stdio::piped()),
    );
    let output = producer.wait_output(Duration::from_secs(30));
    let elapsed = started.elapsed();
    drop(stalled);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stream 0 (STDOUT)") && stderr.contains("no progress for 2 s (--idle-timeout)"),
        "{stderr}"
    );
    assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(20), "{elapsed:?}");

    // The producer stalls (stopped by SIGSTOP after its first bytes): the consumer's reads stop making progress.
    let mut producer = spawn(
        producer_to_stdout(src.path())
            .args(["--read-buffer-size", "64K", "--throttle", "10"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut stdout = producer.stdout();
    let mut first = vec![0u8; 4096];
    stdout.read_exact(&mut first).unwrap();
    send_signal(&producer, "STOP");
    let out = tempfile::tempdir().unwrap();
    // Before the consumer exists, so that its last progress cannot come before this.
    let started = Instant::now();
    let mut consumer = spawn(
        consumer_command()
            .arg("extract")
            .arg("-C")
            .arg(out.path())
            .args(["--idle-timeout", "2"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = consumer.stdin();
    stdin.write_all(&first).unwrap();
    // Forward whatever the stopped producer had already written, then keep our end open (the producer's is).
    let forward = spawn_named("pipe", move || {
        let _ = std::io::copy(&mut stdout, &mut stdin);
    });
    let output = consumer.wait_output(Duration::from_secs(30));
    let elapsed = started.elapsed();
    drop(producer);
    join_within(forward, SHORT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stream 0 (STDIN)") && stderr.contains("no progress for 2 s (--idle-timeout)"), "{stderr}");
    assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(20), "{elapsed:?}");
    assert_nothing_complete(out.path(), "stalled producer");
}

/// A thread that panics is a failure, never an empty report: the producer exits 1 with a broken stream, the
/// consumer exits 1 with nothing committed (fault injection through XBKIT_FAILPOINT).
#[test]
fn a_panicked_thread_is_a_failure_on_both_sides() {
    let src = small_source();
    for stage in ["scanner", "reader-0", "process-1", "writer-0"] {
        let assert = producer()
            .env(runtime::failure::FAILPOINT_VARIABLE, format!("panic:{stage}"))
            .arg("--source")
            .arg(src.path())
            .arg("--stream=xbstream")
            .assert()
            .code(1);
        let output = assert.get_output();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("the {stage} thread panicked")), "{stage}: {stderr}");
        let poison = proto::POISON_PATH;
        assert!(output.stdout.windows(poison.len()).any(|w| w == poison), "{stage}: the stream ends broken");
    }
    let stream = produce(src.path(), &["--compress"]);
    for stage in ["reader-0", "writer-1", "decompress-0"] {
        let out = tempfile::tempdir().unwrap();
        let assert = consumer()
            .env(runtime::failure::FAILPOINT_VARIABLE, format!("panic:{stage}"))
            .arg("extract")
            .arg("-C")
            .arg(out.path())
            .arg("--decompress")
            .write_stdin(stream.clone())
            .assert()
            .code(1);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
        assert!(stderr.contains(&format!("the {stage} thread panicked")), "{stage}: {stderr}");
        assert_nothing_complete(out.path(), stage);
    }
}

/// A hostile manifest cannot set setuid/setgid/sticky bits, nor make the consumer hold a huge piece of it.
#[test]
fn a_hostile_manifest_cannot_grant_privileges_or_memory() {
    let src = small_source();
    let stream = produce(src.path(), &[]);
    let hostile = with_manifest(&stream, |manifest| {
        for file in &mut manifest.files {
            file.mode = 0o7755;
        }
    });
    let out = tempfile::tempdir().unwrap();
    consumer().arg("extract").arg("-C").arg(out.path()).write_stdin(hostile).assert().success();
    let mode = fs::metadata(out.path().join("db0/t0.ibd")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755, "no setuid, setgid or sticky bit: {mode:o}");

    // The manifest is read a record at a time, never held whole (so its size does not count against
    // --memory-limit), and no piece of it may be large: one whose head is padded past 1 MiB is refused.
    let small = produce(src.path(), &SMALL_CHUNKS);
    let padded = with_manifest(&small, |manifest| manifest.tool = "x".repeat((1 << 20) + 1));
    let out = tempfile::tempdir().unwrap();
    let assert = consumer()
        .arg("extract")
        .arg("-C")
        .arg(out.path())
        .args(["--max-chunk-size", "4K", "--memory-limit", "48K"])
        .write_stdin(padded)
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    assert!(stderr.contains("cannot read the stream's manifest"), "{stderr}");
    assert!(stderr.contains("larger than 1048576 bytes"), "{stderr}");
    assert_nothing_complete(out.path(), "oversized manifest");
}

/// A hostile manifest's directory records cannot grant privileges (permission bits only), lead outside OUT, or
/// turn a file into a directory: the last two fail the extraction before anything moves in.
#[test]
fn a_hostile_directory_record_cannot_escape_or_grant_privileges() {
    let src = small_source();
    let stream = produce(src.path(), &[]);
    let privileged = with_manifest(&stream, |manifest| {
        assert!(!manifest.directories.is_empty(), "the producer lists directories");
        for directory in &mut manifest.directories {
            directory.mode = 0o7755;
        }
    });
    let out = tempfile::tempdir().unwrap();
    consumer().arg("extract").arg("-C").arg(out.path()).write_stdin(privileged).assert().success();
    let mode = fs::metadata(out.path().join("db0")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755, "no setuid, setgid or sticky bit on a directory: {mode:o}");

    let cases: [(&str, &[u8], &str); 3] = [
        ("outside", b"../outside", "the manifest lists directory ../outside"),
        ("absolute", b"/tmp/xbkit-hostile-directory", "the manifest lists directory /tmp/xbkit-hostile-directory"),
        ("a file", b"db0/t0.ibd", "is also a file in the stream"),
    ];
    for (what, path, expected) in cases {
        let hostile = with_manifest(&stream, |manifest| {
            manifest.directories.push(proto::DirectoryRecord {
                path: proto::WirePath(path.to_vec()),
                mode: 0o755,
                mtime: 0,
                placeholder: false,
            });
        });
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        let assert = consumer().arg("extract").arg("-C").arg(&out).write_stdin(hostile).assert().code(1);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(!parent.path().join("outside").exists(), "{what}: nothing outside OUT");
        assert!(!Path::new("/tmp/xbkit-hostile-directory").exists(), "{what}: nothing at an absolute path");
        assert_nothing_complete(&out, what);
    }
}

/// An existing manifest in OUT is a conflict found before anything moves in.
#[test]
fn an_existing_manifest_in_out_is_refused_before_anything_moves() {
    let src = small_source();
    let stream = produce(src.path(), &[]);
    let out = tempfile::tempdir().unwrap();
    fs::write(out.path().join(proto::MANIFEST_NAME), b"an older backup's").unwrap();
    let assert = consumer().arg("extract").arg("-C").arg(out.path()).write_stdin(stream).assert().code(1);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    assert!(stderr.contains("backup-manifest.json already exists"), "{stderr}");
    let names: Vec<_> = fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [proto::MANIFEST_NAME], "nothing moved in");
    assert_eq!(fs::read(out.path().join(proto::MANIFEST_NAME)).unwrap(), b"an older backup's");
}

/// `consumer decompress` fails when a compressed file the manifest lists is missing.
#[test]
fn decompress_fails_when_a_listed_file_is_missing() {
    let src = small_source();
    let stream = produce(src.path(), &["--compress"]);
    let out = tempfile::tempdir().unwrap();
    consumer().arg("extract").arg("-C").arg(out.path()).write_stdin(stream).assert().success();
    fs::remove_file(out.path().join("db1/t1.ibd.zst")).unwrap();
    let assert = consumer().arg("decompress").arg(out.path()).assert().code(1);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    assert!(stderr.contains("missing") && stderr.contains("db1/t1.ibd.zst"), "{stderr}");
    assert!(!out.path().join("db0/t0.ibd").exists(), "nothing decompressed into place");
}

/// With `--fifo-binding file` a pipe whose files are all done stays quiet until the manifest ends the backup on
/// another: that is not a stalled peer. The idle clock is shared by the run's pipes, so only a backup where no pipe
/// moves times out.
#[test]
fn a_quiet_pipe_is_not_idle_while_another_works() {
    let src = temp_tree(&[("a", pseudo_random_bytes(4096, 1)), ("b", pseudo_random_bytes(600 << 10, 2))]);
    let work = tempfile::tempdir().unwrap();
    let (out, fifo_dir) = (work.path().join("out"), work.path().join("fifos"));
    let consumer = consumer_on_pipes(
        &["extract".as_ref(), "-C".as_ref(), out.as_os_str(), "--idle-timeout".as_ref(), "3".as_ref()],
        2,
        &fifo_dir,
    );
    // 150 chunks of `b` at 20 a second: 7.5 s on pipe 1 while pipe 0 has nothing after `a`, over twice the idle
    // timeout (3 s, so that a loaded machine's pause of a second or two between chunks is not a stall).
    let producer_args =
        ["--fifo-binding", "file", "--read-buffer-size", "4K", "--throttle", "20", "--idle-timeout", "3"];
    let producer = producer_on_pipes(src.path(), 2, &fifo_dir, &producer_args);
    let produced = producer.wait_output(SHORT);
    let consumed = consumer.wait_output(SHORT);
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    assert!(consumed.status.success(), "{}", String::from_utf8_lossy(&consumed.stderr));
    assert_same_tree(src.path(), &out);
}

/// A stop signal while waiting for the peer to open the pipes ends the wait at once, as a stop.
#[test]
fn a_stop_signal_ends_the_wait_for_the_peer() {
    for program in [CONSUMER, PRODUCER] {
        let work = tempfile::tempdir().unwrap();
        let src = small_source();
        let fifo_dir = work.path().join("fifos");
        let mut command = Command::new(program);
        if program.ends_with("consumer") {
            command.arg("extract").arg("-C").arg(work.path().join("out"));
        } else {
            command.arg("--source").arg(src.path()).arg("--stream=xbstream");
        }
        let waiting = spawn(
            command
                .args(["--fifo-streams", "2", "--fifo-timeout", "60", "--fifo-dir"])
                .arg(&fifo_dir)
                .stderr(Stdio::piped()),
        );
        wait_for_path(&fifo_dir.join("thread_1"), SHORT);
        let started = Instant::now();
        send_signal(&waiting, "TERM");
        let output = waiting.wait_output(SHORT);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{program}: {stderr}");
        assert!(stderr.contains("stopped by SIGTERM"), "{program}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(5), "{program}: {:?}", started.elapsed());
        assert_eq!(fs::read_dir(&fifo_dir).unwrap().count(), 0, "{program}: pipes removed");
    }
}
