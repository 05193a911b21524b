//! `--compress` and `--decompress`: zstd frames per chunk that stock tools read, on-the-fly parallel
//! decompression through any number of pipes, damage detection, `consumer decompress`, and the memory cap.

use std::fs;
use std::path::Path;
use std::process::Command;

use proto::encode_payload_header;
use proto::ChunkKind;

use crate::support::*;

const CHUNK: usize = 64 * 1024;

/// Compressible and incompressible files, an empty one, and one of several chunks.
fn compressible_source() -> tempfile::TempDir {
    let text: Vec<u8> = (0..5 * CHUNK + 123).map(|i| b"innodb page of text "[i % 20]).collect();
    let src = temp_tree(&sample_files(CHUNK));
    write_tree(src.path(), &[("db/text.ibd", text), ("db/log.txt", b"a short log line\n".repeat(100))]);
    src
}

fn compressed_stream(src: &Path) -> Vec<u8> {
    produce(src, &["--compress", "--read-buffer-size", "64K", "--digest", "sha1"])
}

/// Runs producer --compress → consumer extract --decompress through STDOUT (pipes = 0) or N pipes.
fn compressed_round_trip(src: &Path, out: &Path, pipes: usize) {
    let producer_args = ["--compress", "--compress-level", "3", "--read-buffer-size", "64K"];
    let stderr = round_trip(src, out, pipes, &producer_args, &["--decompress", "--decompress-threads", "3"]);
    assert!(stderr.contains("all verified against"), "consumer: {stderr}");
}

#[test]
fn compressed_round_trips_through_stdout_and_four_pipes() {
    let src = compressible_source();
    for pipes in [0, 4] {
        let work = tempfile::tempdir().unwrap();
        let out = work.path().join("out");
        compressed_round_trip(src.path(), &out, pipes);
        assert_same_tree(src.path(), &out);
        assert!(read_tree(&out).iter().all(|(p, _)| p.extension().is_none_or(|e| e != "zst")), "no .zst written");
        let manifest = read_manifest(&out);
        assert_eq!(manifest.compression, proto::Compression::Zstd { level: 3 });
        let text = manifest.files.iter().find(|f| f.path.0 == b"db/text.ibd").unwrap();
        let stored = text.stored.as_ref().expect("compressed files record their stored form");
        assert_eq!(stored.path.0, b"db/text.ibd.zst");
        assert!(stored.size < text.size / 10, "text compresses: {} of {}", stored.size, text.size);
        let empty = manifest.files.iter().find(|f| f.path.0 == b"empty").unwrap();
        assert_eq!(empty.stored.as_ref().map(|s| s.path.0.as_slice()), Some(&b"empty.zst"[..]), "empty files too");
        consumer().arg("verify").arg(&out).assert().success();
    }
}

/// `mbstream -x` extracts the compressed stream, and stock `zstd -d` restores every `.zst` byte for byte.
#[test]
fn mbstream_then_zstd_restores_the_original() {
    let src = compressible_source();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    mbstream_extract(&compressed_stream(src.path()), &out);
    let zstd = tool("zstd");
    let mut count = 0;
    for (path, _) in read_tree(&out) {
        if path.extension().is_some_and(|e| e == "zst") {
            run_ok(Command::new(&zstd).args(["-d", "-q", "--rm"]).arg(out.join(&path)), SHORT);
            count += 1;
        }
    }
    assert_eq!(count, sample_files(CHUNK).len() + 2, "every file travelled as .zst, empty ones included");
    assert_same_tree(src.path(), &out);
}

/// Without --decompress the `.zst` files are kept and proven against the manifest's stored form; then
/// `consumer decompress` restores the originals, checked against the manifest.
#[test]
fn consumer_decompress_restores_an_extracted_tree() {
    let src = compressible_source();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    consumer().arg("extract").arg("-C").arg(&out).write_stdin(compressed_stream(src.path())).assert().success();
    assert!(out.join("db/text.ibd.zst").exists() && !out.join("db/text.ibd").exists());
    consumer()
        .args(["decompress", "--remove-original"])
        .arg(&out)
        .assert()
        .success()
        .stderr(predicates::str::contains("checked against backup-manifest.json"));
    assert_same_tree(src.path(), &out);
    consumer().arg("verify").arg(&out).assert().success();
}

fn assert_extract_fails(stream: Vec<u8>, message: &str) {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let assert = consumer().args(["extract", "--decompress", "-C"]).arg(&out).write_stdin(stream).assert().code(1);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains(message), "expected {message:?} in:\n{stderr}");
    assert!(read_tree(&out).is_empty(), "nothing is left looking complete: {:?}", read_tree(&out));
}

#[test]
fn a_damaged_frame_fails_naming_the_file_and_offset() {
    let src = compressible_source();
    let stream = compressed_stream(src.path());
    let chunks = parse(&stream);
    let (index, (header, _)) = chunks
        .iter()
        .enumerate()
        .filter(|(_, (h, _))| h.path == b"db/text.ibd.zst" && h.kind == ChunkKind::Payload)
        .nth(1)
        .unwrap();
    let payload_at = header.stream_offset as usize + proto::encoded_header_len(ChunkKind::Payload, header.path.len());

    // A flipped byte inside the frame: the chunk CRC catches it first.
    let mut flipped = stream.clone();
    flipped[payload_at + header.payload_len as usize - 10] ^= 0x01;
    assert_extract_fails(
        flipped,
        &format!("checksum mismatch in \"db/text.ibd.zst\" at file offset {}", header.file_offset),
    );

    // The same flip with the chunk CRC recomputed: zstd's own content checksum catches it.
    let mut forged = chunks.clone();
    let payload = &mut forged[index].1;
    let n = payload.len();
    payload[n - 10] ^= 0x01;
    assert_extract_fails(
        encode(&forged),
        &format!(
            "db/text.ibd.zst at offset {} (chunk at stream 0, offset {:#x}): damaged zstd frame",
            header.file_offset, header.stream_offset
        ),
    );
}

/// A `.zst` whose chunks lack our offset frame (as xtrabackup --compress writes them) is refused by --decompress
/// with a way out, not misplaced.
#[test]
fn foreign_zst_without_offset_frames_is_refused_with_a_hint() {
    let mut stream = Vec::new();
    let frame = zstd::bulk::compress(b"hello", 1).unwrap();
    encode_payload_header(&mut stream, b"foreign.zst", 0, frame.len() as u64, crc32fast::hash(&frame));
    stream.extend_from_slice(&frame);
    assert_extract_fails(stream, "was not compressed by our producer (no offset frame)");
}

/// Compression buffers come from the same budget: 256 MiB of compressible data through a 32 MiB limit.
#[test]
fn compression_stays_within_the_memory_limit() {
    let src = tempfile::tempdir().unwrap();
    let text: Vec<u8> = (0..(64usize << 20)).map(|i| b"0123456789abcdefghij"[(i * 7) % 20]).collect();
    for i in 0..4 {
        fs::write(src.path().join(format!("f{i}")), &text).unwrap();
    }
    // Beside the source, in a directory of its own: a fixed name in /tmp is shared with every other run.
    let work = tempfile::tempdir().unwrap();
    let stats = work.path().join("stats-compress.json");
    let streamed = run_to_null(
        producer_to_stdout(src.path()).args(["--compress", "--memory-limit", "32M"]).arg("--stats-json").arg(&stats),
    );
    let stats = read_stats(&stats);
    let rss = stats["peak_rss_bytes"].as_u64().unwrap();
    assert!(rss > 0 && rss < (32 + 24) << 20, "peak RSS {rss}");
    assert!(streamed < (256 << 20) / 20, "compressible data shrank: {streamed} bytes");
}

/// The smallest budgets the checks allow, with more threads than buffers to spare: compression and decompression
/// still finish (their scratch buffers are taken before any reader can exhaust the pool).
#[test]
fn tiny_memory_budgets_never_deadlock_with_compression() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..6u64 {
        fs::write(src.path().join(format!("f{i}")), pseudo_random_bytes(700_000 + i as usize * 1000, i)).unwrap();
    }
    let stream = producer()
        .arg("--source")
        .arg(src.path())
        .args(["--stream=xbstream", "--compress", "--read-buffer-size", "64K", "--memory-limit", "400K"])
        .args(["--parallel", "4", "--compress-threads", "2"])
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    consumer()
        .args(["extract", "--decompress", "--decompress-threads", "2", "--max-chunk-size", "128K"])
        .args(["--memory-limit", "640K", "--no-fsync", "-C"])
        .arg(&out)
        .write_stdin(stream)
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .success();
    assert_same_tree(src.path(), &out);
}
