//! Wide writes (issue #22): the chunks of one file written by several writers at once, files that end while their
//! bytes are still being written, and chunks that come after their file's end.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use crate::support::*;

/// Any writer writes any chunk (issue #22): the chunks of one large file are written by writers other than the
/// one that owns it, through one pipe and through three, and the file comes back byte for byte, its zero blocks
/// holes and its length kept though its last chunk is all zeros (the length is set once no write is in flight).
/// With one writer, nobody else writes.
#[test]
fn one_large_file_is_written_by_every_writer() {
    let src = tempfile::tempdir().unwrap();
    let mut data = pseudo_random_bytes(24 << 20, 22);
    data[8 << 20..12 << 20].fill(0);
    data[(24 << 20) - (1 << 20)..].fill(0);
    fs::write(src.path().join("ibdata1"), &data).unwrap();
    let work = tempfile::tempdir().unwrap();
    let written_by_others = |pipes: usize, writers: &str| {
        let out = work.path().join(format!("out-{pipes}-{writers}"));
        let stats = work.path().join(format!("stats-{pipes}-{writers}.json"));
        let stats_arg = stats.to_str().unwrap();
        round_trip(
            src.path(),
            &out,
            pipes,
            &["--read-buffer-size", "256K"],
            &["--parallel", writers, "--no-fsync", "--stats-json", stats_arg],
        );
        assert_same_tree(src.path(), &out);
        let restored = fs::metadata(out.join("ibdata1")).unwrap();
        assert_eq!(restored.len(), 24 << 20);
        assert!(
            restored.blocks() * 512 <= (19 << 20) + (512 << 10),
            "{} blocks of 512 B: the zeros are not holes",
            restored.blocks()
        );
        read_stats(&stats)["chunks_written_by_other_writers"].as_u64().unwrap()
    };
    // 96 chunks of 256 KiB: that four idle writers leave every one to the owner does not happen.
    assert!(written_by_others(0, "4") > 0, "one pipe: only the owner wrote");
    assert!(written_by_others(3, "4") > 0, "three pipes: only the owner wrote");
    assert_eq!(written_by_others(0, "1"), 0);
}

/// Many files of one or two large chunks, a third of them ending in zero blocks: each file's end-of-file chunk
/// reaches its owner while another writer may still be writing its bytes, so the owner sets it aside until that
/// write is done, then gives it its length. Through STDOUT and two pipes, every file comes back whole.
#[test]
fn files_ending_while_their_bytes_are_still_being_written_come_back_whole() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..300usize {
        let mut data = pseudo_random_bytes(65 * 1024 + i * 977, 500 + i as u64);
        if i % 3 == 0 {
            let len = data.len();
            data[len - 12 * 1024..].fill(0);
        }
        fs::write(src.path().join(format!("t{i:03}.ibd")), &data).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    for pipes in [0, 2] {
        let out = work.path().join(format!("out-{pipes}"));
        round_trip(src.path(), &out, pipes, &["--read-buffer-size", "128K"], &["--parallel", "3", "--no-fsync"]);
        assert_same_tree(src.path(), &out);
    }
}

/// Chunks that come after their file's end keep no descriptor open. Two streams made by hand: the first carries each
/// of 600 files' first half and its end-of-file chunk, the second their second halves, and the first is delivered
/// whole before the second. Every file has ended (closed) when its second half comes; that late chunk's descriptor
/// is closed once it is written, so the extraction runs under a limit of 128 open files (it failed with EMFILE
/// when each such file was kept open until the proof).
#[test]
fn chunks_after_their_files_end_keep_no_descriptor_open() {
    const HALF: usize = 40_000;
    let files: Vec<(String, Vec<u8>)> =
        (0..600u64).map(|i| (format!("db{}/t{i:03}.ibd", i % 7), pseudo_random_bytes(2 * HALF, 700 + i))).collect();
    let (mut first, mut second) = (proto::ChunkWriter::new(Vec::new()), proto::ChunkWriter::new(Vec::new()));
    for (path, data) in &files {
        first.write_payload(path.as_bytes(), 0, &data[..HALF]).unwrap();
        first.write_eof(path.as_bytes()).unwrap();
        second.write_payload(path.as_bytes(), HALF as u64, &data[HALF..]).unwrap();
    }
    let streams = [first.into_inner(), second.into_inner()];
    let work = tempfile::tempdir().unwrap();
    let (fifo_dir, out) = (work.path().join("fifos"), work.path().join("out"));
    let consumer = spawn(
        Command::new(tool("prlimit"))
            .args(["--nofile=128:128", "--"])
            .arg(CONSUMER)
            .args(["extract", "--no-fsync", "--fifo-streams", "2", "--fifo-timeout", "30", "--fifo-dir"])
            .arg(&fifo_dir)
            .arg("-C")
            .arg(&out)
            .stderr(Stdio::piped()),
    );
    // The consumer opens its pipes in order; then the first stream goes whole, then the second.
    let mut pipes: Vec<fs::File> = (0..2)
        .map(|i| {
            let path = fifo_dir.join(format!("thread_{i}"));
            wait_for_path(&path, SHORT);
            open_pipe_for_writing(&path, SHORT)
        })
        .collect();
    let delivered: Vec<std::io::Result<()>> = pipes
        .iter_mut()
        .zip(&streams)
        .map(|(pipe, stream)| {
            let written = pipe.write_all(stream);
            drop(std::mem::replace(pipe, fs::File::open("/dev/null").unwrap()));
            written
        })
        .collect();
    let output = consumer.wait_output(LONG);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    assert!(delivered.iter().all(Result::is_ok), "{delivered:?}");
    assert!(stderr.contains("completeness is unproven"), "{stderr}");
    for (path, data) in &files {
        assert_eq!(&fs::read(out.join(path)).unwrap(), data, "{path}");
    }
}
