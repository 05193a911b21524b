//! `proto` against the real MariaDB `mbstream`: what we write, it extracts; what it writes, we read.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use proto::{ChunkKind, ChunkReader, ChunkWriter};

use crate::support::{mbstream_extract, pseudo_random_bytes, read_tree, run_ok, tool, ShortReader, SHORT};

/// A stream written by `proto`, with interleaved chunks of several files (one empty, one 3 MiB, one 1 byte,
/// a nested one, a non-UTF-8 name), extracts with `mbstream -x` to identical bytes.
#[test]
fn mbstream_extracts_what_proto_writes() {
    let files: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"ibdata1".to_vec(), pseudo_random_bytes(3 << 20, 1)),
        (b"empty".to_vec(), Vec::new()),
        (b"one".to_vec(), vec![7]),
        (b"db".to_vec(), Vec::new()),
        (b"mysql/user.MAD".to_vec(), pseudo_random_bytes(70_000, 2)),
        (b"caf\xe9".to_vec(), pseudo_random_bytes(10, 3)),
    ];
    // Round-robin interleave 64 KiB chunks of every file; mysql/ gets its directory from its own first chunk.
    let mut writer = ChunkWriter::new(Vec::new());
    let mut offsets = vec![0usize; files.len()];
    let mut done = vec![false; files.len()];
    while done.iter().any(|d| !d) {
        for (i, (path, data)) in files.iter().enumerate() {
            if done[i] {
                continue;
            }
            let end = (offsets[i] + 65536).min(data.len());
            if offsets[i] < end {
                writer.write_payload(path, offsets[i] as u64, &data[offsets[i]..end]).unwrap();
                offsets[i] = end;
            } else {
                writer.write_eof(path).unwrap();
                done[i] = true;
            }
        }
    }
    let stream = writer.into_inner();
    let out = tempfile::tempdir().unwrap();
    mbstream_extract(&stream, out.path());

    let extracted: BTreeMap<PathBuf, Vec<u8>> = read_tree(out.path()).into_iter().collect();
    assert_eq!(extracted.len(), files.len());
    for (path, data) in &files {
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(path));
        assert_eq!(extracted.get(&path), Some(data), "{}", path.display());
    }
}

use std::os::unix::ffi::OsStrExt;

/// A stream written by `mbstream -c` (a 25 MiB file, an empty file, small files) is read by `proto` with
/// identical content, valid CRCs, 10 MiB chunks, and one E chunk per file.
#[test]
fn proto_reads_what_mbstream_writes() {
    let mbstream = tool("mbstream");
    let src = tempfile::tempdir().unwrap();
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("big.ibd", pseudo_random_bytes(25 << 20, 11)),
        ("empty.frm", Vec::new()),
        ("small.txt", b"hello mbstream\n".to_vec()),
        ("odd", pseudo_random_bytes(10 * 1024 * 1024 + 1, 12)),
    ];
    for (name, data) in &inputs {
        fs::write(src.path().join(name), data).unwrap();
    }
    let stream = run_ok(
        Command::new(&mbstream)
            .arg("-c")
            .args(inputs.iter().map(|(name, _)| *name))
            .current_dir(src.path())
            .stderr(Stdio::piped()),
        SHORT,
    );

    let mut files: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut chunk_sizes: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    let mut eofs: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    // Through 1..4096-byte reads, with CRC verification on (the default).
    for chunk in ChunkReader::new(ShortReader::new(&stream[..], 4096, 5)) {
        let (header, payload) = chunk.expect("mbstream output reads cleanly");
        match header.kind {
            ChunkKind::Payload => {
                let content = files.entry(header.path.clone()).or_default();
                assert_eq!(header.file_offset, content.len() as u64);
                content.extend_from_slice(&payload);
                chunk_sizes.entry(header.path.clone()).or_default().push(header.payload_len);
            }
            ChunkKind::Eof => *eofs.entry(header.path.clone()).or_default() += 1,
        }
    }
    for (name, data) in &inputs {
        assert_eq!(files.get(name.as_bytes()).unwrap_or(&Vec::new()), data, "{name}");
        assert_eq!(eofs.get(name.as_bytes()), Some(&1), "{name} has one E chunk");
    }
    assert_eq!(chunk_sizes[&b"big.ibd"[..]], vec![10 << 20, 10 << 20, 5 << 20]);
    assert!(!chunk_sizes.contains_key(&b"empty.frm"[..]), "an empty file is a lone E chunk");
}
