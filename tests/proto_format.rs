//! The `proto` crate against crafted bytes: round trips through short reads and interleavings, every read error
//! with its message, and no panic on arbitrary input.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proto::{encode_eof, encode_payload_header};
use proto::{ChunkKind, ChunkReader, ChunkWriter, ReadError, WriteError, MAX_PATH_LEN};

use crate::support::ShortReader;

/// Per path: the reassembled contents and whether its `E` chunk was seen.
type Reassembled = BTreeMap<Vec<u8>, (Vec<u8>, bool)>;

/// Per file: its path, its remaining (offset, bytes) chunks, and whether its `E` was written.
type Queue = (Vec<u8>, Vec<(u64, Vec<u8>)>, bool);

/// Reads a whole stream back into per-path contents, asserting offsets are contiguous per path.
fn reassemble(reader: impl Read) -> Result<Reassembled, ReadError> {
    let mut files: BTreeMap<Vec<u8>, (Vec<u8>, bool)> = BTreeMap::new();
    for chunk in ChunkReader::new(reader) {
        let (header, payload) = chunk?;
        let entry = files.entry(header.path.clone()).or_default();
        match header.kind {
            ChunkKind::Payload => {
                assert_eq!(header.file_offset, entry.0.len() as u64, "offset of {:?}", header.display_path());
                entry.0.extend_from_slice(&payload);
            }
            ChunkKind::Eof => entry.1 = true,
        }
    }
    Ok(files)
}

fn payload_chunk(path: &[u8], offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_payload_header(&mut out, path, offset, payload.len() as u64, crc32fast::hash(payload));
    out.extend_from_slice(payload);
    out
}

fn read_error(bytes: &[u8]) -> ReadError {
    let mut reader = ChunkReader::new(ShortReader::new(bytes, 3, 7));
    let mut payload = Vec::new();
    loop {
        match reader.read_chunk(&mut payload) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream read cleanly; expected an error"),
            Err(e) => return e,
        }
    }
}

fn path_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec("[a-z0-9_.-]{1,12}", 1..4)
        .prop_map(|parts| parts.join("/").into_bytes())
        .prop_filter("no dot components", |p| proto::safe_relative_path(p).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random files cut into random chunks, interleaved in random order (per-file order kept), written by
    /// ChunkWriter, read back through 1..n-byte reads: identical contents, every file ended.
    #[test]
    fn random_interleavings_round_trip_through_short_reads(
        files in proptest::collection::btree_map(path_strategy(), proptest::collection::vec(any::<u8>(), 0..3000), 1..6),
        cut in 1usize..700,
        order_seed in any::<u64>(),
        read_max in 1usize..64,
    ) {
        // Per-file queues of chunks, then a seeded interleaving.
        let mut queues: Vec<Queue> = files
            .iter()
            .map(|(path, data)| {
                let chunks = data.chunks(cut).enumerate().map(|(i, c)| ((i * cut) as u64, c.to_vec())).collect();
                (path.clone(), chunks, false)
            })
            .collect();
        let mut writer = ChunkWriter::new(Vec::new());
        let mut state = order_seed | 1;
        while queues.iter().any(|(_, chunks, ended)| !chunks.is_empty() || !ended) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].2).collect();
            let pick = live[(state % live.len() as u64) as usize];
            let (path, chunks, ended) = &mut queues[pick];
            if chunks.is_empty() {
                writer.write_eof(path).unwrap();
                *ended = true;
            } else {
                let (offset, data) = chunks.remove(0);
                writer.write_payload(path, offset, &data).unwrap();
            }
        }
        let stream = writer.into_inner();
        let got = reassemble(ShortReader::new(&stream[..], read_max, order_seed)).unwrap();
        prop_assert_eq!(got.len(), files.len());
        for (path, data) in &files {
            let (content, ended) = &got[path];
            prop_assert_eq!(content, data);
            prop_assert!(*ended);
        }
    }

    /// Arbitrary bytes, and valid streams with one byte changed or cut short, never make the reader panic; a
    /// damaged stream either fails or still yields chunks whose CRCs hold.
    #[test]
    fn arbitrary_and_damaged_input_never_panics(
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
        data in proptest::collection::vec(any::<u8>(), 1..500),
        flip_at in any::<prop::sample::Index>(),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let _ = ChunkReader::new(&garbage[..]).count();
        let mut stream = payload_chunk(b"f", 0, &data);
        let first_len = stream.len();
        encode_eof(&mut stream, b"f");
        let mut flipped = stream.clone();
        let i = flip_at.index(flipped.len());
        flipped[i] ^= 0x40;
        for (header, payload) in ChunkReader::new(&flipped[..]).map_while(Result::ok) {
            prop_assert!(header.verify_checksum(&payload).is_ok());
        }
        let cut = &stream[..1 + cut_at.index(first_len - 1)];
        let results: Vec<_> = ChunkReader::new(cut).collect();
        prop_assert!(results.iter().any(|r| r.is_err()), "a stream cut inside its first chunk must fail");
        // Reading in place (payloads borrowed, as `get` checks packs) sees exactly what reading by copy sees.
        for input in [&garbage[..], &flipped[..], cut, &stream[..]] {
            let mut copied: Vec<_> = ChunkReader::new(input).map(|r| r.map_err(|e| e.to_string())).collect();
            if let Some(first_error) = copied.iter().position(Result::is_err) {
                copied.truncate(first_error + 1);
            }
            let mut reader = ChunkReader::new(input);
            let mut borrowed = Vec::new();
            loop {
                match reader.read_borrowed() {
                    Ok(Some((header, payload))) => borrowed.push(Ok((header, payload.to_vec()))),
                    Ok(None) => break,
                    Err(e) => {
                        borrowed.push(Err(e.to_string()));
                        break;
                    }
                }
            }
            prop_assert_eq!(copied, borrowed);
        }
    }
}

#[test]
fn every_read_error_is_produced_and_named() {
    let good = payload_chunk(b"db/t.ibd", 0, b"hello");
    let good_len = good.len();

    // Bad magic, at the second chunk: the offset is the second chunk's.
    let mut bytes = good.clone();
    bytes.extend_from_slice(b"XBSTCK02\0P\x01\0\0\0x");
    assert_eq!(
        read_error(&bytes).to_string(),
        format!("wrong chunk magic at stream offset {good_len:#x}: found \"XBSTCK02\", expected \"XBSTCK01\"")
    );
    // An error message leaked into the stream (the classic "wrong chunk magic at offset 0x0").
    let err = read_error(b"xtrabackup: error: something");
    assert!(matches!(err, ReadError::BadMagic { stream_offset: 0, .. }), "{err}");

    // Truncated inside the fixed header, the path, and the payload fields.
    assert_eq!(
        read_error(&good[..5]).to_string(),
        "stream truncated inside the chunk header at stream offset 0x0: needed 14 more bytes, got 5"
    );
    assert_eq!(
        read_error(&good[..16]).to_string(),
        "stream truncated inside the chunk header at stream offset 0x0: needed 8 more bytes, got 2"
    );
    assert_eq!(
        read_error(&good[..30]).to_string(),
        "stream truncated inside the chunk header at stream offset 0x0: needed 20 more bytes, got 8"
    );
    // Truncated payload.
    assert_eq!(
        read_error(&good[..good_len - 2]).to_string(),
        "stream truncated inside the payload of \"db/t.ibd\" (chunk at stream offset 0x0): expected 5 bytes, got 3"
    );

    // CRC mismatch: flip one payload byte.
    let mut bytes = good.clone();
    *bytes.last_mut().unwrap() ^= 1;
    let expected = crc32fast::hash(b"hello");
    let actual = crc32fast::hash(b"helln");
    assert_eq!(
        read_error(&bytes).to_string(),
        format!(
            "checksum mismatch in \"db/t.ibd\" at file offset 0 (chunk at stream offset 0x0): header says {expected:#010x}, payload has {actual:#010x}"
        )
    );

    // Path of 512 bytes (the real readers' limit), rejected before it is read.
    let mut bytes = b"XBSTCK01\0P".to_vec();
    bytes.extend_from_slice(&512u32.to_le_bytes());
    bytes.extend_from_slice(&[b'a'; 512]);
    assert_eq!(read_error(&bytes).to_string(), "path length 512 is too large at stream offset 0x0 (at most 511 bytes)");

    // Unknown types: Percona sparse / MariaDB seek 'S', rename 'R', delete 'D', NUL.
    for (type_byte, shown) in
        [(b'S', "0x53 ('S')"), (b'R', "0x52 ('R')"), (b'D', "0x44 ('D')"), (0, "0x00 (non-printable)")]
    {
        let mut bytes = b"XBSTCK01\0".to_vec();
        bytes.push(type_byte);
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.push(b'x');
        assert_eq!(
            read_error(&bytes).to_string(),
            format!("unknown chunk type {shown} at stream offset 0x0; only 'P' and 'E' are supported")
        );
    }

    // The ignorable flag, even on a P chunk.
    let mut bytes = good.clone();
    bytes[8] = 0x01;
    assert_eq!(
        read_error(&bytes).to_string(),
        "chunk with the 'ignorable' flag (flags 0x01, type 0x50) at stream offset 0x0 is not supported"
    );
    // Other flag bits are accepted, as the real readers do.
    let mut bytes = good.clone();
    bytes[8] = 0x80;
    assert_eq!(ChunkReader::new(&bytes[..]).count(), 1);
    assert!(ChunkReader::new(&bytes[..]).all(|c| c.is_ok()));

    // A declared length of 2^40: rejected before any allocation (allocating would abort the test).
    let mut bytes = Vec::new();
    encode_payload_header(&mut bytes, b"big", 0, 1 << 40, 0);
    assert_eq!(
        read_error(&bytes).to_string(),
        "payload of 1099511627776 bytes declared for \"big\" at stream offset 0x0 exceeds the maximum of 67108864 bytes"
    );
    // The maximum is configurable.
    let mut reader = ChunkReader::new(&good[..]).with_max_payload(4);
    let err = reader.read_chunk(&mut Vec::new()).unwrap_err();
    assert!(matches!(err, ReadError::PayloadTooLarge { len: 5, max: 4, .. }), "{err}");

    // An I/O error from the source names the offset it happened at.
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer went away"));
            }
            let n = self.0.min(buf.len());
            buf[..n].copy_from_slice(&b"XBSTCK01\0P"[..n]);
            self.0 -= n;
            Ok(n)
        }
    }
    assert_eq!(read_error_from(Failing(4)).to_string(), "read error at stream offset 0x4: peer went away");
}

fn read_error_from(reader: impl Read) -> ReadError {
    ChunkReader::new(reader).read_chunk(&mut Vec::new()).unwrap_err()
}

#[test]
fn clean_end_only_at_a_chunk_boundary_and_position_is_exact() {
    let mut stream = payload_chunk(b"a", 0, b"xyz");
    encode_eof(&mut stream, b"a");
    let mut reader = ChunkReader::new(ShortReader::new(&stream[..], 2, 3));
    let mut payload = Vec::with_capacity(16);
    let first = reader.read_chunk(&mut payload).unwrap().unwrap();
    assert_eq!((first.kind, first.stream_offset, &payload[..]), (ChunkKind::Payload, 0, &b"xyz"[..]));
    assert_eq!(reader.position(), first.encoded_len());
    let second = reader.read_chunk(&mut payload).unwrap().unwrap();
    assert_eq!((second.kind, second.stream_offset, payload.len()), (ChunkKind::Eof, first.encoded_len(), 0));
    assert!(reader.read_chunk(&mut payload).unwrap().is_none());
    assert_eq!(reader.position(), stream.len() as u64);
    // Empty input is an empty stream.
    assert!(ChunkReader::new(&b""[..]).read_chunk(&mut payload).unwrap().is_none());
}

#[test]
fn writer_rejects_unreadable_paths_before_writing() {
    let mut writer = ChunkWriter::new(Vec::new());
    let long = vec![b'p'; MAX_PATH_LEN + 1];
    let err = writer.write_payload(&long, 0, b"x").unwrap_err();
    assert!(matches!(err, WriteError::PathTooLong { len: 512, .. }), "{err}");
    assert!(err.to_string().ends_with("is 512 bytes long; xbstream readers accept at most 511"), "{err}");
    assert!(matches!(writer.write_eof(b"").unwrap_err(), WriteError::EmptyPath));
    assert!(writer.get_ref().is_empty());
    // 511 bytes is the longest path that round-trips.
    let longest = vec![b'p'; MAX_PATH_LEN];
    writer.write_payload(&longest, 0, b"x").unwrap();
    let chunks: Vec<_> = ChunkReader::new(&writer.get_ref()[..]).collect::<Result<_, _>>().unwrap();
    assert_eq!(chunks[0].0.path, longest);
}

#[test]
fn writer_reports_a_broken_sink_with_path_and_offset() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let err = ChunkWriter::new(Broken).write_payload(b"db/x", 0, b"data").unwrap_err();
    assert_eq!(err.to_string(), "write of \"db/x\" failed at stream offset 0: broken pipe");
}

/// Small files written whole in one vectored write come out byte for byte as chunk-by-chunk writes would make
/// them (an empty file gets only its `E`), through a sink that takes a few bytes per call; a sink that fails part
/// way names the file being written and the stream offset where it failed.
#[test]
fn whole_files_are_written_as_their_chunks_would_be() {
    struct Trickle(Vec<u8>, usize, Option<usize>);
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.2.is_some_and(|fail_at| self.0.len() >= fail_at) {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            self.1 = self.1 % 97 + 1;
            let n = self.1.min(buf.len());
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let contents: Vec<(Vec<u8>, Vec<u8>)> = (0..40)
        .map(|i| {
            (format!("db{}/t{i}.frm", i % 3).into_bytes(), crate::support::pseudo_random_bytes(i * 37 % 500, i as u64))
        })
        .collect();
    let files: Vec<proto::WholeFile> = contents
        .iter()
        .map(|(path, payload)| proto::WholeFile { path, payload, checksum: crc32fast::hash(payload) })
        .collect();
    let mut one_by_one = ChunkWriter::new(Vec::new());
    one_by_one.write_payload(b"before", 0, b"x").unwrap();
    for (path, payload) in &contents {
        if !payload.is_empty() {
            one_by_one.write_payload(path, 0, payload).unwrap();
        }
        one_by_one.write_eof(path).unwrap();
    }
    let mut whole = ChunkWriter::new(Trickle(Vec::new(), 0, None));
    whole.write_payload(b"before", 0, b"x").unwrap();
    let chunks = whole.write_whole_files(&files).unwrap();
    let empty = contents.iter().filter(|(_, payload)| payload.is_empty()).count();
    assert!(empty > 0, "the sample has an empty file");
    assert_eq!(chunks as usize, 2 * contents.len() - empty);
    assert_eq!(whole.position(), one_by_one.position());
    assert_eq!(whole.into_inner().0, one_by_one.into_inner());

    // The sink breaks inside the 11th file's chunks: that file is named, at the offset where the sink stopped.
    let mut before = ChunkWriter::new(Vec::new());
    for (path, payload) in &contents[..10] {
        if !payload.is_empty() {
            before.write_payload(path, 0, payload).unwrap();
        }
        before.write_eof(path).unwrap();
    }
    let fail_at = before.position() as usize + 30;
    let err = ChunkWriter::new(Trickle(Vec::new(), 0, Some(fail_at))).write_whole_files(&files).unwrap_err();
    let WriteError::Io { path, stream_offset, .. } = &err else { panic!("{err}") };
    assert_eq!(path.as_bytes(), &contents[10].0[..]);
    assert!((fail_at as u64..fail_at as u64 + 97).contains(stream_offset), "{err}");
}

/// Many threads share one writer through a mutex, over a sink that accepts a few bytes per call: chunks never tear.
#[test]
fn shared_writer_never_tears_chunks_even_with_short_writes() {
    struct Trickle(Vec<u8>, usize);
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.1 = self.1 % 7 + 1;
            let n = self.1.min(buf.len());
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let shared = Arc::new(Mutex::new(ChunkWriter::new(Trickle(Vec::new(), 0))));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let path = format!("file{t}").into_bytes();
                let data = crate::support::pseudo_random_bytes(4000, t);
                for (i, piece) in data.chunks(100).enumerate() {
                    shared.lock().unwrap().write_payload(&path, (i * 100) as u64, piece).unwrap();
                }
                shared.lock().unwrap().write_eof(&path).unwrap();
            })
        })
        .collect();
    for thread in threads {
        crate::support::join_within(thread, crate::support::SHORT);
    }
    let writer = Arc::try_unwrap(shared).ok().unwrap().into_inner().unwrap();
    let position = writer.position();
    let stream = writer.into_inner().0;
    assert_eq!(position, stream.len() as u64);
    let files = reassemble(&stream[..]).unwrap();
    for t in 0..4u64 {
        let (content, ended) = &files[format!("file{t}").as_bytes()];
        assert_eq!(content, &crate::support::pseudo_random_bytes(4000, t));
        assert!(ended);
    }
}
