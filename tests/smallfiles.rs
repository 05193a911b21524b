//! Many small files: batches on both sides, and per-file state that stays small.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

/// `count` files of 16 bytes in 100 directories.
fn tiny_files(root: &Path, count: usize) {
    for i in 0..count {
        let dir = root.join(format!("db{:02}", i % 100));
        if i < 100 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(dir.join(format!("t{i:06}.frm")), format!("{i:016}")).unwrap();
    }
}

fn stats_run(command: &mut Command, stats: &Path) -> (std::process::Output, serde_json::Value) {
    let output = spawn(command.arg("--stats-json").arg(stats).stderr(Stdio::piped())).wait_output(LONG);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (output, read_stats(stats))
}

/// 100,000 files through `producer | consumer extract`: restored exactly, and neither side's peak RSS grows by a
/// kilobyte a file. Before the consumer kept a compact record of each ended file it needed ~1.5 KiB a file
/// (176 MiB at 100,000 files, measured here); it now keeps ~100 bytes, and the manifest's records are moved, not
/// copied, into its lookup. Measured here (debug build): producer ~45 MiB, consumer ~70 MiB.
#[test]
fn a_hundred_thousand_files_round_trip_with_compact_per_file_state() {
    const FILES: usize = 100_000;
    const THRESHOLD: u64 = 120 << 20;
    let work = tempfile::tempdir().unwrap();
    let (src, out) = (work.path().join("src"), work.path().join("out"));
    tiny_files(&src, FILES);
    let stream = work.path().join("stream.xb");
    let (_, produced) = stats_run(
        producer_to_stdout(&src).stdout(fs::File::create(&stream).unwrap()),
        &work.path().join("producer.json"),
    );
    let (output, consumed) = stats_run(
        consumer_command().args(["extract", "--no-fsync", "-C"]).arg(&out).stdin(fs::File::open(&stream).unwrap()),
        &work.path().join("consumer.json"),
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("all verified against backup-manifest.json"));
    assert_eq!(produced["files"].as_u64(), Some(FILES as u64), "{produced}");
    assert_eq!(consumed["files"].as_u64(), Some(FILES as u64), "{consumed}");
    assert_same_tree(&src, &out);
    let rss = |stats: &serde_json::Value| stats["peak_rss_bytes"].as_u64().unwrap();
    assert!(rss(&produced) < THRESHOLD, "producer peak RSS {} at {FILES} files", rss(&produced));
    assert!(rss(&consumed) < THRESHOLD, "consumer peak RSS {} at {FILES} files", rss(&consumed));
}

/// The consumer's reader holds small chunks back in a batch, but never while it waits for more of the stream: a
/// producer that pauses after its first files (a slow disk, a long scan) must see them written, not held until
/// the batch fills or the stream ends. The test sends the first files' chunks, then waits for the consumer to have
/// created the first file before it sends the rest.
#[test]
fn small_files_are_written_before_the_consumer_waits_for_more_of_the_stream() {
    let work = tempfile::tempdir().unwrap();
    let (src, out) = (work.path().join("src"), work.path().join("out"));
    let files: Vec<(String, Vec<u8>)> =
        (0..50).map(|i| (format!("f{i:03}"), vec![b'a' + (i % 26) as u8; 100])).collect();
    write_tree(&src, &files);
    let stream = produce(&src, &[]);
    // The cut: after the marker (P, E) and the first three files (P, E each).
    let mut reader = proto::ChunkReader::new(&stream[..]);
    for _ in 0..8 {
        reader.next().expect("a chunk").expect("a valid chunk");
    }
    let cut = reader.position() as usize;

    let mut consumer = spawn(
        consumer_command().args(["extract", "--no-fsync", "-C"]).arg(&out).stdin(Stdio::piped()).stderr(Stdio::piped()),
    );
    let mut input = consumer.stdin();
    input.write_all(&stream[..cut]).unwrap();
    input.flush().unwrap();
    wait_until(SHORT, "a file written while the consumer waits for the rest of the stream", || has_staged_a_file(&out));
    input.write_all(&stream[cut..]).unwrap();
    drop(input);
    let output = consumer.wait_output(LONG);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_same_tree(&src, &out);
}

/// Small files read in one batch are checked like any file: one that vanishes, shrinks or grows between the scan
/// and its read is a warning naming it (the copy says exactly what was copied), and an error with `--strict`.
/// Three files of two chunks go first, read slowly (2 chunks a second, one reader), so the batch holding `moving`
/// is read about 2.5 s after the scan. `moving` changes 0.3 s after the stream's first bytes came out (so the
/// producer has started, and its scan of five names, which runs beside the reads, is over).
#[test]
fn a_small_file_that_changes_before_its_batch_is_read_is_named() {
    for (change, expected) in [("vanish", "vanished"), ("shrink", "shrank"), ("grow", "grew")] {
        for strict in [false, true] {
            let work = tempfile::tempdir().unwrap();
            let src = work.path().join("src");
            let mut files: Vec<(String, Vec<u8>)> =
                (0..3).map(|i| (format!("a{i}"), pseudo_random_bytes(70_000, i))).collect();
            files.push(("keep".into(), b"kept".to_vec()));
            files.push(("moving".into(), vec![7u8; 1000]));
            write_tree(&src, &files);
            let mut command = producer_command();
            command.arg("--source").arg(&src);
            command.args(["--stream=xbstream", "--read-buffer-size", "64K", "--throttle", "2", "--parallel", "1"]);
            if strict {
                command.arg("--strict");
            }
            let moving = src.join("moving");
            let (status, stream, message) = produce_with_change(&mut command, 4096, || {
                std::thread::sleep(std::time::Duration::from_millis(300));
                match change {
                    "vanish" => fs::remove_file(&moving).unwrap(),
                    "shrink" => fs::write(&moving, vec![7u8; 10]).unwrap(),
                    _ => fs::write(&moving, vec![7u8; 2000]).unwrap(),
                }
            });
            assert!(message.contains("moving") && message.contains(expected), "{change} strict={strict}: {message}");
            let out = work.path().join("out");
            let consumed = consume(&["extract", "-C", out.to_str().unwrap()], &stream);
            let consumer_message = String::from_utf8_lossy(&consumed.stderr).into_owned();
            if strict {
                assert_eq!(status.code(), Some(1), "{change}: {message}");
                assert_eq!(consumed.status.code(), Some(1), "{change}: {consumer_message}");
                continue;
            }
            assert!(status.success(), "{change}: {message}");
            assert!(consumed.status.success(), "{change}: {consumer_message}");
            assert_eq!(fs::read(out.join("keep")).unwrap(), b"kept");
            match change {
                "vanish" => assert!(!out.join("moving").exists()),
                "shrink" => assert_eq!(fs::read(out.join("moving")).unwrap(), vec![7u8; 10]),
                _ => assert_eq!(fs::read(out.join("moving")).unwrap(), vec![7u8; 1000], "the scanned size"),
            }
        }
    }
}

/// Batches of small files take longer to read than one chunk of a big file, but files still first appear on the
/// stream in scan order (a directory's files before its subdirectories'), which `mbstream -x` needs: it creates only
/// a file's immediate parent directory. Here `db/` holds 300 small files (one batch) and `db/sub/` a big file whose
/// first chunk, read by another thread, is ready long before the batch.
#[test]
fn files_first_appear_in_scan_order_so_mbstream_creates_every_directory() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let mut files: Vec<(String, Vec<u8>)> = (0..300).map(|i| (format!("db/t{i:03}.frm"), vec![b'x'; 2000])).collect();
    files.push(("db/sub/big.ibd".into(), pseudo_random_bytes(3 << 20, 5)));
    write_tree(&src, &files);
    for run in 0..5 {
        let stream = produce(&src, &["--read-buffer-size", "1M"]);
        let out = work.path().join(format!("out{run}"));
        fs::create_dir(&out).unwrap();
        mbstream_extract(&stream, &out);
        for (path, data) in &files {
            assert_eq!(&fs::read(out.join(path)).unwrap(), data, "run {run}: {path}");
        }
    }
}

/// Past its bound on ended files kept in memory (an eighth of `--memory-limit`, at least 1,024 files a writer: that at 2M), the
/// consumer forgets whole small files and checks each from disk when its manifest record comes: 10,000 files
/// restore exactly; a file missing from the stream is named; a file in the stream but not in the manifest is an
/// error — whether it was forgotten or not.
#[test]
fn files_beyond_the_memory_bound_are_checked_from_disk() {
    const FILES: usize = 10_000;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tiny_files(&src, FILES);
    // The manifest last, as producers before format 2 sent it: every ended file is held until its record comes.
    // (Ours send each record soon after its file, and the consumer checks the file then and lets it go.)
    let stream = manifest_last(&produce(&src, &["--digest", "sha1", "--read-buffer-size", "1M"]));
    let extract = |stream: &[u8], name: &str| {
        let out = work.path().join(name);
        let output = consume(
            &[
                "-v",
                "extract",
                "--no-fsync",
                "--memory-limit",
                "2M",
                "--max-chunk-size",
                "1M",
                "-C",
                out.to_str().unwrap(),
            ],
            stream,
        );
        (out, output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (out, ok, message) = extract(&stream, "whole");
    assert!(ok && message.contains("all verified against backup-manifest.json"), "{message}");
    assert!(message.contains("checked from disk"), "the bound was reached: {message}");
    assert_same_tree(&src, &out);

    // Without the chunks of two files: one early (kept in memory), one late (forgotten by then).
    let chunks = parse(&stream);
    let rebuild = |keep: &dyn Fn(&[u8]) -> bool, extra: bool| {
        let mut writer = proto::ChunkWriter::new(Vec::new());
        for (header, payload) in chunks.iter().filter(|(header, _)| keep(&header.path)) {
            let manifest_starts = header.kind == proto::ChunkKind::Payload && header.file_offset == 0;
            if header.path == proto::MANIFEST_NAME.as_bytes() && manifest_starts && extra {
                writer.write_payload(b"db00/zz-extra.frm", 0, b"not in the manifest").unwrap();
                writer.write_eof(b"db00/zz-extra.frm").unwrap();
            }
            match header.kind {
                proto::ChunkKind::Payload => writer.write_payload(&header.path, header.file_offset, payload).unwrap(),
                proto::ChunkKind::Eof => writer.write_eof(&header.path).unwrap(),
            }
        }
        writer.into_inner()
    };
    let (_, ok, message) = extract(&rebuild(&|p| p != b"db00/t000000.frm" && p != b"db99/t009999.frm", false), "cut");
    assert!(!ok, "{message}");
    assert!(message.contains("2 file(s) listed in the manifest never arrived"), "{message}");
    assert!(message.contains("db00/t000000.frm") && message.contains("db99/t009999.frm"), "{message}");
    let (out, ok, message) = extract(&rebuild(&|_| true, true), "extra");
    assert!(!ok, "{message}");
    assert!(message.contains("not in the manifest"), "{message}");
    assert!(!out.join("backup-manifest.json").exists());
}

/// Past the bound, over 4 pipes with chunks spread over them (the default binding, 4 KiB chunks): a forgotten file
/// may still get a chunk from another pipe after its `E`, and is then taken up again from disk; empty files (a lone
/// `E`) are forgotten too. Everything restores exactly.
///
/// Each of the consumer's two writers keeps at least 1,024 ended files; whether a file of several chunks is "ended"
/// depends on the order its chunks arrive in, so the bound is made certain by empty files alone (always ended at
/// once): 1,500 of them per writer (the CRC-32 of their paths splits them evenly).
#[test]
fn forgotten_files_taken_up_again_by_a_late_chunk_and_empty_ones_restore_exactly() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    for i in 0..6000 {
        let dir = src.join(format!("db{}", i % 10));
        fs::create_dir_all(&dir).unwrap();
        let data = if i % 2 == 0 { Vec::new() } else { pseudo_random_bytes(12 << 10, i) };
        fs::write(dir.join(format!("t{i:05}.frm")), data).unwrap();
    }
    let out = work.path().join("out");
    let mut streams = produce_pipes(&src, 4, &["--read-buffer-size", "4K"]);
    // The manifest last (as producers before format 2 sent it), so that every ended file is held until the end.
    streams[0] = manifest_last(&streams[0]);
    let consumer_args = ["--memory-limit", "2M", "--max-chunk-size", "64K", "--no-fsync", "-v"];
    let output = feed_pipes(&streams, Some(&out), &consumer_args);
    let message = assert_success(&output, "extract");
    assert!(message.contains("checked from disk"), "the bound was reached: {message}");
    assert_same_tree(&src, &out);
}

/// The producer keeps no manifest records: they leave as files complete (manifest format 2). It used to keep those
/// past 100,000 in a temporary file in TMPDIR, and failed with TMPDIR unwritable; now 100,001 files back up and
/// restore with TMPDIR unwritable on both sides (the consumer's records keep up with their files).
#[test]
fn a_big_backup_needs_no_tmpdir() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tiny_files(&src, 100_001);
    let output = spawn(
        producer_command()
            .arg("--source")
            .arg(&src)
            .args(["-q", "--stream=xbstream"])
            .env("TMPDIR", work.path().join("no-such-directory"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .wait_output(LONG);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let out = work.path().join("out");
    let mut command = consumer_command();
    command.args(["extract", "--no-fsync", "-C"]).arg(&out).env("TMPDIR", work.path().join("no-such-directory"));
    assert_success(&run_with_stdin(&mut command, &output.stdout), "extract with TMPDIR unwritable");
    assert_same_tree(&src, &out);
}

/// `extract --decompress` keeps compact per-file state too. Each decompressed file used to keep its whole slot
/// until the proof (about 1.2 KB: 137 MB peak RSS at 100,000 files, measured in a release build, whatever
/// `--memory-limit` said); it now ends as compactly as a plain file, its compressed form's size and CRC-32 kept for
/// the check, and past the bound (here `--memory-limit 8M`) is forgotten and checked from disk. 30,000 files: the
/// consumer's peak RSS stays under 40 MiB (measured here, debug build: 18 MiB at 40,000 files; the slots alone
/// would add 36 MB), and the tree comes back exact, through STDOUT and through three pipes, where decompressed
/// chunks also come after their file's end-of-file chunk.
#[test]
fn decompressing_many_small_files_keeps_compact_per_file_state() {
    const FILES: usize = 30_000;
    const THRESHOLD: u64 = 40 << 20;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tiny_files(&src, FILES);
    let stream = work.path().join("stream.xb");
    // The manifest last, as before format 2: every decompressed file is held until its record comes.
    let produced = run_ok(producer_to_stdout(&src).args(["--compress", "--read-buffer-size", "1M"]), LONG);
    fs::write(&stream, manifest_last(&produced)).unwrap();
    let out = work.path().join("out");
    let (output, consumed) = stats_run(
        consumer_command()
            .args(["-v", "extract", "--decompress", "--no-fsync", "--memory-limit", "8M", "--max-chunk-size", "1M"])
            .arg("-C")
            .arg(&out)
            .stdin(fs::File::open(&stream).unwrap()),
        &work.path().join("consumer.json"),
    );
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("all verified against backup-manifest.json"), "{message}");
    assert!(message.contains("checked from disk"), "the bound was reached: {message}");
    assert_same_tree(&src, &out);
    let rss = consumed["peak_rss_bytes"].as_u64().unwrap();
    assert!(rss < THRESHOLD, "consumer peak RSS {rss} decompressing {FILES} files");
    let piped = work.path().join("piped");
    round_trip(
        &src,
        &piped,
        3,
        &["--compress", "--read-buffer-size", "1M"],
        &["--decompress", "--no-fsync", "--memory-limit", "8M", "--max-chunk-size", "1M"],
    );
    assert_same_tree(&src, &piped);
}
