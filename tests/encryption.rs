//! Encrypted backups (`producer --encrypt-recipient …`): what the real tools make of them. The real `mbstream -x`
//! extracts the stream; Debian's stock `age -d` decrypts every `.age` file it left (through `zstd -d` when
//! compressed) to the original bytes, with any of the recipients' keys, or the passphrase; the encrypted manifest
//! binds every path to its file's nonce; the clear one gives nothing of the content away; and our consumer without
//! a key proves every encrypted byte arrived, and catches one changed.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// `age -d -i KEY FILE`, through `zstd -d` when `compressed`: the plaintext, asserting both succeed.
fn stock_decrypt(key: &Path, file: &Path, compressed: bool) -> Vec<u8> {
    let decrypted = run_ok(Command::new(tool("age")).arg("-d").arg("-i").arg(key).arg(file), SHORT);
    if !compressed {
        return decrypted;
    }
    let output = run_with_stdin(Command::new(tool("zstd")).args(["-d", "-q", "-c"]), &decrypted);
    assert!(output.status.success(), "zstd -d {}: {}", file.display(), stderr(&output));
    output.stdout
}

/// A tree with every size that matters to 64 KiB segments and 128 KiB chunks, and one file of text a reader of
/// the stream must not find.
fn tree() -> Vec<(&'static str, Vec<u8>)> {
    let mut files = sample_files(128 << 10);
    files.push(("db/segment", pseudo_random_bytes(64 << 10, 9)));
    files.push(("db/secret.ibd", b"CUSTOMER-CARD-4111111111111111;".repeat(20_000)));
    files
}

/// [`tree`], and two different files of one size (to be swapped).
fn twin_tree() -> Vec<(&'static str, Vec<u8>)> {
    let mut files = tree();
    files.push(("a/twin", pseudo_random_bytes(200_000, 21)));
    files.push(("b/twin", pseudo_random_bytes(200_000, 22)));
    files
}

#[test]
fn mbstream_extracts_an_encrypted_stream_and_stock_age_decrypts_every_file() {
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = age_keygen(work.path(), "backup.key");
    let files = tree();
    let src = temp_tree(&files);
    for compressed in [false, true] {
        let mut args = vec!["--read-buffer-size", "128K", "--encrypt-recipient", &recipient];
        if compressed {
            args.push("--compress");
        }
        let stream = produce(src.path(), &args);
        assert!(
            !stream.windows(20).any(|w| w == b"CUSTOMER-CARD-411111"),
            "plaintext in the encrypted stream (compressed: {compressed})"
        );
        let out = work.path().join(format!("out-{compressed}"));
        mbstream_extract(&stream, &out);
        let suffix = if compressed { ".zst.age" } else { ".age" };
        for (path, contents) in &files {
            let sealed = out.join(format!("{path}{suffix}"));
            assert!(!out.join(path).exists(), "{path} in the clear");
            assert!(stock_decrypt(&key, &sealed, compressed) == *contents, "{path}{suffix} decrypts to the original");
        }

        // The encrypted manifest, which stock age decrypts too: the real records, each path bound to its `.age`
        // file's nonce (the 16 bytes after the shared header).
        let secret = stock_decrypt(&key, &out.join(proto::SECRET_MANIFEST_NAME), false);
        let manifest = proto::Manifest::from_json(&secret).unwrap();
        assert_eq!(manifest.encryption, Some(proto::Encryption::Age));
        assert_eq!(manifest.files.len(), files.len());
        let header_len = {
            let first = fs::read(out.join(format!("one{suffix}"))).unwrap();
            let mac = first.windows(4).position(|w| w == b"--- ").expect("the header's MAC line");
            mac + first[mac..].iter().position(|&b| b == b'\n').unwrap() + 1
        };
        for record in &manifest.files {
            let (_, contents) =
                files.iter().find(|(path, _)| path.as_bytes() == record.path.0).expect("a file of ours");
            assert_eq!(record.size, contents.len() as u64);
            assert_eq!(record.crc32, crc32fast::hash(contents));
            let stored = record.stored.as_ref().expect("the .age form");
            let sealed = fs::read(out.join(String::from_utf8(stored.path.0.clone()).unwrap())).unwrap();
            assert_eq!(stored.size, sealed.len() as u64);
            assert_eq!(stored.nonce.as_deref(), Some(hex::encode(&sealed[header_len..header_len + 16]).as_str()));
        }

        // The clear manifest lists the files as they travel and nothing of their content.
        let clear = fs::read(out.join(proto::MANIFEST_NAME)).unwrap();
        let listed = proto::Manifest::from_json(&clear).unwrap();
        assert_eq!(listed.encryption, Some(proto::Encryption::Age));
        assert_eq!(listed.compression, proto::Compression::None);
        assert_eq!(listed.files.len(), files.len() + 1, "every file and the encrypted manifest");
        for record in &listed.files {
            assert!(record.path.0.ends_with(b".age") && record.stored.is_none() && record.sha1.is_none());
            let sealed = fs::read(out.join(String::from_utf8(record.path.0.clone()).unwrap())).unwrap();
            assert_eq!((record.size, record.crc32), (sealed.len() as u64, crc32fast::hash(&sealed)));
        }
        for (_, contents) in &files {
            let crc = crc32fast::hash(contents).to_string();
            assert!(
                !String::from_utf8_lossy(&clear).contains(&format!("\"crc32\":{crc},")),
                "an original CRC-32 in the clear manifest"
            );
        }
    }
}

#[test]
fn any_of_several_recipients_decrypts_and_a_passphrase_backup_opens_with_the_passphrase() {
    let work = tempfile::tempdir().unwrap();
    let (key_a, recipient_a) = age_keygen(work.path(), "a.key");
    let (key_b, recipient_b) = age_keygen(work.path(), "b.key");
    let (stranger, _) = age_keygen(work.path(), "c.key");
    let list = work.path().join("recipients.txt");
    fs::write(&list, format!("# the second backup key\n{recipient_b}\n")).unwrap();
    let contents = pseudo_random_bytes(300_000, 4);
    let src = temp_tree(&[("ibdata1", contents.clone())]);
    let produced = produce_output(
        src.path(),
        &["--encrypt-recipient", &recipient_a, "--encrypt-recipients-file", list.to_str().unwrap()],
    );
    let stream = produced.stdout.clone();
    // The backup key's fingerprint, which every decryption reports (a forged backup has another).
    let fingerprint = stderr(&produced)
        .split("backup key ")
        .nth(1)
        .map(|rest| rest.trim().to_string())
        .expect("the producer names the backup key");
    let out = work.path().join("out");
    mbstream_extract(&stream, &out);
    let sealed = out.join("ibdata1.age");
    for key in [&key_a, &key_b] {
        assert!(stock_decrypt(key, &sealed, false) == contents, "{}", key.display());
    }
    // Our consumer restores with either key too.
    for (index, key) in [&key_a, &key_b].into_iter().enumerate() {
        let out = work.path().join(format!("restored-{index}"));
        let output = consume(
            &["extract", "-C", out.to_str().unwrap(), "--decrypt", "--identity", key.to_str().unwrap()],
            &stream,
        );
        let said = assert_success(&output, &format!("extract --decrypt with {}", key.display()));
        assert!(said.contains(&format!("(backup key {fingerprint})")), "{said}");
        assert!(fs::read(out.join("ibdata1")).unwrap() == contents);
    }
    let refused = run_with_stdin(Command::new(tool("age")).arg("-d").arg("-i").arg(&stranger).arg(&sealed), b"");
    assert!(!refused.status.success(), "a key the backup was not encrypted to");

    // A passphrase: stock age asks for it on a terminal only, so it gets one (`script` gives it a pty).
    let passphrase = work.path().join("passphrase");
    fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    let stream = produce(src.path(), &["--encrypt-passphrase-file", passphrase.to_str().unwrap()]);
    let out = work.path().join("out-passphrase");
    mbstream_extract(&stream, &out);
    let decrypted = work.path().join("decrypted");
    let command = format!("age -d -o '{}' '{}'", decrypted.display(), out.join("ibdata1.age").display());
    let typed = run_with_stdin(
        Command::new(tool("script")).args(["-qec", &command, "/dev/null"]),
        b"correct horse battery staple\n",
    );
    assert!(typed.status.success(), "age -d with the passphrase: {}", String::from_utf8_lossy(&typed.stdout));
    assert!(fs::read(&decrypted).unwrap() == contents, "the passphrase restores");
    let restored = work.path().join("restored-passphrase");
    let output = consume(
        &["extract", "-C", restored.to_str().unwrap(), "--decrypt", "--passphrase-file", passphrase.to_str().unwrap()],
        &stream,
    );
    assert_success(&output, "extract --decrypt --passphrase-file");
    assert!(fs::read(restored.join("ibdata1")).unwrap() == contents, "our consumer restores with the passphrase");
}

#[test]
fn the_consumer_without_a_key_proves_every_encrypted_byte_and_catches_one_changed() {
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keygen(work.path(), "backup.key");
    let files = tree();
    let src = temp_tree(&files);
    let out = work.path().join("out");
    let said = round_trip(src.path(), &out, 3, &["--read-buffer-size", "128K", "--encrypt-recipient", &recipient], &[]);
    assert!(said.contains("all verified") && said.contains("age-encrypted"), "{said}");
    for (path, _) in &files {
        assert!(out.join(format!("{path}.age")).is_file() && !out.join(path).exists(), "{path}");
    }

    // One ciphertext byte changed, its chunk's CRC-32 made to match: the clear manifest's CRC-32 of the file
    // catches it, naming the file.
    let stream = produce(src.path(), &["--read-buffer-size", "128K", "--encrypt-recipient", &recipient]);
    let mut chunks = parse(&stream);
    let (_, payload) = chunks
        .iter_mut()
        .find(|(header, payload)| header.path == b"db/t1.ibd.age" && payload.len() > 1000)
        .expect("a payload of db/t1.ibd.age");
    payload[500] ^= 0x40;
    let changed = encode(&chunks);
    let output = consume(&["extract", "-C", work.path().join("changed").to_str().unwrap()], &changed);
    let said = assert_failure(&output, "a changed ciphertext");
    assert!(said.contains("db/t1.ibd.age"), "{said}");
}

#[test]
fn bad_keys_and_settings_encryption_cannot_take_are_refused_before_a_byte_is_written() {
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keygen(work.path(), "backup.key");
    let src = temp_tree(&[("f", vec![1u8; 1000])]);
    let bad_list = work.path().join("bad.txt");
    fs::write(&bad_list, format!("{recipient}\nage1notarecipient\n")).unwrap();
    let empty_passphrase = work.path().join("empty");
    fs::write(&empty_passphrase, "\n").unwrap();
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["--encrypt-recipient", "age1nope"], "age1nope"),
        (vec!["--encrypt-recipients-file", bad_list.to_str().unwrap()], "bad.txt:2"),
        (vec!["--encrypt-passphrase-file", empty_passphrase.to_str().unwrap()], "no passphrase"),
        (vec!["--encrypt-recipient", &recipient, "--read-buffer-size", "100K"], "multiple of 64K"),
        (vec!["--encrypt-recipient", &recipient, "--digest", "sha1"], "--digest sha1"),
    ];
    for (args, expected) in cases {
        let output = run_with_stdin(producer_to_stdout(src.path()).args(&args).stdout(Stdio::piped()), b"");
        // Refused as bad arguments are (exit 2), before a stream is opened.
        let said = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains(expected), "{args:?}: {said}");
        assert!(output.stdout.is_empty(), "{args:?}: nothing written");
    }
}

/// A file that shrinks while it is read ends early, at a chunk boundary or inside a chunk: its `.age` file still
/// ends with a segment flagged last (the stage holds each payload back until the next says it was not), so stock
/// age decrypts exactly what was copied.
#[test]
fn a_file_that_shrinks_while_it_is_read_still_ends_as_a_valid_age_file() {
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = age_keygen(work.path(), "backup.key");
    let original = pseudo_random_bytes(4 << 20, 3);
    for shrunk in [2 << 20, (2 << 20) + 100] {
        let src = tempfile::tempdir().unwrap();
        let victim = src.path().join("shrinking");
        fs::write(&victim, &original).unwrap();
        let mut command = producer_command();
        // Held back after its first 4 KiB: one reader, 64 KiB chunks, three buffers, a 64 KiB pipe.
        command.arg("--source").arg(src.path()).args([
            "--stream=xbstream",
            "--read-buffer-size",
            "64K",
            "--parallel",
            "1",
            "--pipe-buffer-size",
            "64K",
            "--memory-limit",
            "256K",
            "--encrypt-recipient",
            &recipient,
        ]);
        let (status, stream, said) = produce_with_change(&mut command, 4096, || {
            fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(shrunk as u64).unwrap();
        });
        assert!(status.success() && said.contains("shrank while being copied"), "{said}");
        let out = work.path().join(format!("out-{shrunk}"));
        mbstream_extract(&stream, &out);
        let copied = stock_decrypt(&key, &out.join("shrinking.age"), false);
        assert!(copied == original[..shrunk], "{} bytes decrypted, {shrunk} expected", copied.len());
    }
}

#[test]
fn consumer_decrypt_restores_what_mbstream_extracted_and_refuses_every_forgery_leaving_nothing() {
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = age_keygen(work.path(), "backup.key");
    let (stranger, _) = age_keygen(work.path(), "stranger.key");
    let files = twin_tree();
    let src = temp_tree(&files);
    let args = ["--read-buffer-size", "128K", "--encrypt-recipient", &recipient];
    let extracted = work.path().join("extracted");
    mbstream_extract(&produce(src.path(), &args), &extracted);
    // Another backup of the same tree to the same key: its files must not pass for this one's.
    let other = work.path().join("other");
    mbstream_extract(&produce(src.path(), &args), &other);

    for compressed in [false, true] {
        let out = work.path().join(format!("restored-{compressed}"));
        let mut extra = vec!["--decompress"];
        if compressed {
            mbstream_extract(&produce(src.path(), &[&args[..], &["--compress"]].concat()), &out);
        } else {
            copy_tree(&extracted, &out);
            extra.clear();
        }
        let decrypt = run_with_stdin(
            consumer_command()
                .arg("decrypt")
                .arg(&out)
                .arg("--identity")
                .arg(&key)
                .args(&extra)
                .arg("--remove-original"),
            b"",
        );
        assert_success(&decrypt, "consumer decrypt");
        for (path, contents) in &files {
            assert!(fs::read(out.join(path)).unwrap() == *contents, "{path} (compressed: {compressed})");
            assert!(!out.join(format!("{path}.age")).exists(), "--remove-original");
        }
    }

    // Each forgery, made by someone who can write to the files but holds no key.
    let segment = (crypt::SEGMENT + crypt::TAG_LEN) as usize;
    type Forgery = Box<dyn Fn(&Path)>;
    let header_end = |file: &[u8]| {
        let mac = file.windows(4).position(|w| w == b"--- ").unwrap();
        mac + file[mac..].iter().position(|&b| b == b'\n').unwrap() + 1 + crypt::NONCE_LEN
    };
    let other_dir = other.clone();
    let forgeries: Vec<(&str, &str, Forgery)> = vec![
        (
            "a changed byte",
            "db/t1.ibd.age",
            Box::new(|out: &Path| {
                let path = out.join("db/t1.ibd.age");
                let mut file = fs::read(&path).unwrap();
                file[150_000] ^= 1;
                fs::write(path, file).unwrap();
            }),
        ),
        (
            "two segments swapped",
            "ibdata1.age",
            Box::new(move |out: &Path| {
                let path = out.join("ibdata1.age");
                let mut file = fs::read(&path).unwrap();
                let start = header_end(&file);
                let first = file[start..start + segment].to_vec();
                file.copy_within(start + segment..start + 2 * segment, start);
                file[start + segment..start + 2 * segment].copy_from_slice(&first);
                fs::write(path, file).unwrap();
            }),
        ),
        (
            "cut at a segment boundary",
            "ibdata1.age",
            Box::new(move |out: &Path| {
                let path = out.join("ibdata1.age");
                let file = fs::read(&path).unwrap();
                let start = header_end(&file);
                fs::write(path, &file[..start + 2 * segment]).unwrap();
            }),
        ),
        ("a file dropped", "more.age", Box::new(|out: &Path| fs::remove_file(out.join("more.age")).unwrap())),
        (
            "a plaintext file planted beside them",
            "db/planted.ibd",
            Box::new(|out: &Path| fs::write(out.join("db/planted.ibd"), b"not of the backup").unwrap()),
        ),
        (
            "two files of one size swapped",
            "twin.age",
            Box::new(|out: &Path| {
                let (a, b) = (out.join("a/twin.age"), out.join("b/twin.age"));
                let (first, second) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
                fs::write(&a, second).unwrap();
                fs::write(&b, first).unwrap();
            }),
        ),
        (
            "a file of another backup to the same key",
            "one.age",
            Box::new(move |out: &Path| fs::copy(other_dir.join("one.age"), out.join("one.age")).map(|_| ()).unwrap()),
        ),
        (
            "a changed encrypted manifest",
            proto::SECRET_MANIFEST_NAME,
            Box::new(|out: &Path| {
                let path = out.join(proto::SECRET_MANIFEST_NAME);
                let mut file = fs::read(&path).unwrap();
                let at = file.len() - 40;
                file[at] ^= 1;
                fs::write(path, file).unwrap();
            }),
        ),
    ];
    for (what, named, forge) in forgeries {
        let out = work.path().join(format!("forged-{}", what.replace(' ', "-")));
        copy_tree(&extracted, &out);
        forge(&out);
        let before = list_tree(&out);
        let output = run_with_stdin(consumer_command().arg("decrypt").arg(&out).arg("--identity").arg(&key), b"");
        let said = assert_failure(&output, what);
        assert!(said.contains(named), "{what}: {said}");
        assert_eq!(list_tree(&out), before, "{what}: nothing decrypted is left, nothing removed");
    }

    // The wrong key, or a passphrase for a backup made for a key: refused before anything is written.
    let passphrase = work.path().join("passphrase");
    fs::write(&passphrase, "not this one\n").unwrap();
    for keys in
        [vec!["--identity", stranger.to_str().unwrap()], vec!["--passphrase-file", passphrase.to_str().unwrap()]]
    {
        let out = work.path().join("wrong-key");
        let _ = fs::remove_dir_all(&out);
        copy_tree(&extracted, &out);
        let before = list_tree(&out);
        let output = run_with_stdin(consumer_command().arg("decrypt").arg(&out).args(&keys), b"");
        let said = assert_failure(&output, &format!("{keys:?}"));
        assert!(said.contains("no identity given can decrypt this backup"), "{keys:?}: {said}");
        assert_eq!(list_tree(&out), before);
    }
}

#[test]
fn extract_and_get_decrypt_on_the_fly_through_pipes_and_a_store() {
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = age_keygen(work.path(), "backup.key");
    let files = tree();
    let src = temp_tree(&files);
    let key_arg = key.to_str().unwrap();
    for (pipes, compress) in [(0, false), (3, false), (3, true)] {
        let out = work.path().join(format!("out-{pipes}-{compress}"));
        let mut producer_args = vec!["--read-buffer-size", "128K", "--encrypt-recipient", &recipient];
        let mut consumer_args = vec!["--decrypt", "--identity", key_arg];
        if compress {
            producer_args.push("--compress");
            consumer_args.push("--decompress");
        }
        let said = round_trip(src.path(), &out, pipes, &producer_args, &consumer_args);
        assert!(said.contains("every file decrypted and authenticated"), "{said}");
        for (path, contents) in &files {
            assert!(fs::read(out.join(path)).unwrap() == *contents, "{path} ({pipes} pipes, compress {compress})");
        }
        // The manifest left in OUT is the decrypted one: the tree's real records.
        let manifest = read_manifest(&out);
        assert_eq!(manifest.files.len(), files.len());
        assert!(manifest.files.iter().all(|record| !record.path.0.ends_with(b".age")));
    }

    // Stored as it travels (no key needed to store it), brought back decrypted with `get -C --decrypt`.
    let store = work.path().join("store");
    let storage = ["--storage".to_string(), format!("file://{}", store.display())];
    let stream = produce(src.path(), &["--encrypt-recipient", &recipient]);
    let put = run_with_stdin(&mut consumer_with_storage(&["put", "nightly"], &storage), &stream);
    assert_success(&put, "put of an encrypted stream");
    let out = work.path().join("got");
    let got = run_consumer(
        &["get", "nightly", "-C", out.to_str().unwrap(), "--decrypt", "--identity", key_arg],
        &storage,
        None,
    );
    assert_success(&got, "get -C --decrypt");
    for (path, contents) in &files {
        assert!(fs::read(out.join(path)).unwrap() == *contents, "got {path}");
    }
}

/// Every forgery of the stream by someone who holds no key, each chunk's CRC-32 made to match so that only the
/// cryptography can notice: `extract --decrypt` exits 1 naming the file, and leaves nothing in OUT.
#[test]
fn extract_decrypt_refuses_every_forged_stream_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = age_keygen(work.path(), "backup.key");
    let files = twin_tree();
    let src = temp_tree(&files);
    let args = ["--read-buffer-size", "128K", "--encrypt-recipient", &recipient];
    let stream = parse(&produce(src.path(), &args));
    let other = parse(&produce(src.path(), &args));
    let payloads_of = |chunks: &Chunks, path: &[u8]| -> Vec<usize> {
        (0..chunks.len())
            .filter(|&i| chunks[i].0.path == path && chunks[i].0.kind == proto::ChunkKind::Payload)
            .collect()
    };
    type Forgery = Box<dyn Fn(&mut Chunks)>;
    let forgeries: Vec<(&str, &str, Forgery)> = vec![
        (
            "a changed byte",
            "db/t1.ibd",
            Box::new(move |chunks: &mut Chunks| {
                let at = payloads_of(chunks, b"db/t1.ibd.age")[1];
                chunks[at].1[1000] ^= 1;
            }),
        ),
        (
            "two chunks' payloads swapped",
            "ibdata1",
            Box::new(move |chunks: &mut Chunks| {
                let at = payloads_of(chunks, b"ibdata1.age");
                let (first, second) = (chunks[at[1]].1.clone(), chunks[at[2]].1.clone());
                chunks[at[1]].1 = second;
                chunks[at[2]].1 = first;
            }),
        ),
        (
            "the last chunk dropped (cut at a segment boundary)",
            "ibdata1",
            Box::new(move |chunks: &mut Chunks| {
                let last = *payloads_of(chunks, b"ibdata1.age").last().unwrap();
                chunks.remove(last);
            }),
        ),
        (
            "two files of one size swapped",
            "twin",
            Box::new(|chunks: &mut Chunks| {
                for (header, _) in chunks.iter_mut() {
                    match header.path.as_slice() {
                        b"a/twin.age" => header.path = b"b/twin.age".to_vec(),
                        b"b/twin.age" => header.path = b"a/twin.age".to_vec(),
                        _ => {}
                    }
                }
            }),
        ),
        (
            "a file of another backup to the same key",
            "one",
            Box::new(move |chunks: &mut Chunks| {
                let at = payloads_of(chunks, b"one.age")[0];
                let theirs = payloads_of(&other, b"one.age")[0];
                chunks[at].1 = other[theirs].1.clone();
            }),
        ),
        (
            "a whole file dropped",
            "more",
            Box::new(|chunks: &mut Chunks| chunks.retain(|(header, _)| header.path != b"more.age")),
        ),
        (
            "an empty file's only payload dropped",
            "empty",
            Box::new(move |chunks: &mut Chunks| {
                let at = payloads_of(chunks, b"empty.age")[0];
                chunks.remove(at);
            }),
        ),
        (
            "a sealed segment added after a file's end",
            "exact",
            Box::new(move |chunks: &mut Chunks| {
                // `exact` is two whole segments; its last chunk, again, one segment further on.
                let last = *payloads_of(chunks, b"exact.age").last().unwrap();
                let (mut header, payload) = chunks[last].clone();
                // Its end is a segment boundary: the added segment lands right after the one flagged last.
                let whole = (crypt::SEGMENT + crypt::TAG_LEN) as usize;
                header.file_offset += payload.len() as u64;
                chunks.insert(last + 1, (header, payload[payload.len() - whole..].to_vec()));
            }),
        ),
        (
            "a file added (a copy of another under a new name)",
            "added",
            Box::new(move |chunks: &mut Chunks| {
                let copied: Vec<_> = chunks
                    .iter()
                    .filter(|(header, _)| header.path == b"one.age")
                    .map(|(header, payload)| {
                        let mut header = header.clone();
                        header.path = b"added.age".to_vec();
                        (header, payload.clone())
                    })
                    .collect();
                let at = chunks.len() - 4;
                chunks.splice(at..at, copied);
            }),
        ),
        (
            "a plaintext file added",
            "planted.cnf",
            Box::new(move |chunks: &mut Chunks| {
                let mut end = chunks.iter().find(|(header, _)| header.kind == proto::ChunkKind::Eof).unwrap().clone();
                end.0.path = b"planted.cnf".to_vec();
                let mut data = end.clone();
                data.0.kind = proto::ChunkKind::Payload;
                data.1 = b"[mysqld]\nskip-grant-tables\n".to_vec();
                chunks.splice(3..3, [data, end]);
            }),
        ),
        (
            "a changed encrypted manifest",
            proto::SECRET_MANIFEST_NAME,
            Box::new(move |chunks: &mut Chunks| {
                let at = payloads_of(chunks, proto::SECRET_MANIFEST_NAME.as_bytes())[0];
                let len = chunks[at].1.len();
                chunks[at].1[len - 30] ^= 1;
            }),
        ),
    ];
    for (what, named, forge) in forgeries {
        let mut chunks = stream.clone();
        forge(&mut chunks);
        let out = work.path().join("out");
        let output = consume(
            &["extract", "-C", out.to_str().unwrap(), "--decrypt", "--identity", key.to_str().unwrap()],
            &encode(&chunks),
        );
        let said = assert_failure(&output, what);
        assert!(said.contains(named), "{what}: {said}");
        assert!(list_tree(&out).is_empty(), "{what}: nothing left in OUT: {:?}", list_tree(&out));
    }
}

/// The wrong key, a damaged identity file, a passphrase for a backup made for a key, and `--decrypt` on a stream
/// that is not encrypted: `extract --decrypt` exits 1 before any file is written, and nothing is in OUT.
#[test]
fn extract_decrypt_refuses_the_wrong_key_and_a_plain_stream_before_writing_anything() {
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = age_keygen(work.path(), "backup.key");
    let (stranger, _) = age_keygen(work.path(), "stranger.key");
    let src = temp_tree(&tree());
    let stream = parse(&produce(src.path(), &["--encrypt-recipient", &recipient]));
    let passphrase = work.path().join("passphrase");
    fs::write(&passphrase, "not this one\n").unwrap();
    let plain = produce(src.path(), &[]);
    let damaged = work.path().join("damaged.key");
    fs::write(&damaged, "# created: today\nAGE-SECRET-KEY-1NOTAKEY\n").unwrap();
    let cases: [(&[u8], [&str; 2], &str); 4] = [
        (&encode(&stream), ["--identity", stranger.to_str().unwrap()], "no identity given can decrypt this backup"),
        (&encode(&stream), ["--identity", damaged.to_str().unwrap()], "damaged.key:2: not an age identity"),
        (
            &encode(&stream),
            ["--passphrase-file", passphrase.to_str().unwrap()],
            "no identity given can decrypt this backup",
        ),
        (&plain, ["--identity", key.to_str().unwrap()], "is not encrypted"),
    ];
    for (input, keys, expected) in cases {
        let out = work.path().join("out");
        let output = consume(&["extract", "-C", out.to_str().unwrap(), "--decrypt", keys[0], keys[1]], input);
        let said = assert_failure(&output, &format!("{keys:?}"));
        assert!(said.contains(expected), "{keys:?}: {said}");
        assert!(list_tree(&out).is_empty(), "{keys:?}");
    }
}

/// A foreign stream (`mbstream -c`, and a real `mariadb-backup --stream`) encrypted by `put --encrypt-recipient`
/// on its way to storage: nothing of it is stored in the clear; `get` gives back an encrypted stream whose files,
/// once `mbstream -x` extracted them, stock `age -d` decrypts; `get -C --decrypt` gives back exactly what
/// `mbstream -x` makes of the original stream.
#[test]
fn a_foreign_stream_put_encrypted_comes_back_decrypted_as_mbstream_extracts_it() {
    let work = tempfile::tempdir().unwrap();
    let (key, recipient) = age_keygen(work.path(), "backup.key");
    let src = temp_tree(&[
        ("ibdata1", pseudo_random_bytes((3 << 20) + 17, 1)),
        ("db/secret.ibd", b"CUSTOMER-CARD-4111111111111111;".repeat(20_000)),
        ("backup-my.cnf", b"[mysqld]\n".to_vec()),
        ("empty", Vec::new()),
    ]);
    let mbstream_c = run_ok(
        Command::new(tool("mbstream"))
            .args(["-c", "ibdata1", "db/secret.ibd", "backup-my.cnf", "empty"])
            .current_dir(src.path()),
        SHORT,
    );
    let real = work.path().join("mariadb.xbstream");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/mariadb-backup-stream.sh");
    // Installing, starting and backing up a server: minutes at worst on a loaded machine.
    run_ok(Command::new("bash").arg(&script).arg(work.path().join("server")).arg(&real), Duration::from_secs(300));
    let store = work.path().join("store");
    let storage = ["--storage".to_string(), format!("file://{}", store.display())];
    for (name, stream) in [("mbstream-c", mbstream_c), ("mariadb-backup", fs::read(&real).unwrap())] {
        let put = run_with_stdin(
            &mut consumer_with_storage(&["put", name, "--encrypt-recipient", &recipient], &storage),
            &stream,
        );
        assert_success(&put, &format!("put --encrypt-recipient of {name}"));
        for pack in list_tree(&store) {
            let bytes = fs::read(store.join(&pack)).unwrap();
            assert!(
                !bytes.windows(20).any(|w| w == b"CUSTOMER-CARD-411111"),
                "{name}: plaintext in {}",
                pack.display()
            );
        }
        let theirs = work.path().join(format!("{name}-mbstream"));
        mbstream_extract(&stream, &theirs);

        // As it was stored: an encrypted stream, each file of which stock age decrypts.
        let got = run_consumer(&["get", name], &storage, None);
        assert_success(&got, &format!("get {name}"));
        let sealed = work.path().join(format!("{name}-sealed"));
        mbstream_extract(&got.stdout, &sealed);
        for (path, contents) in read_tree(&theirs) {
            let age_file = sealed.join(format!("{}.age", path.display()));
            assert!(stock_decrypt(&key, &age_file, false) == contents, "{name}: {}", path.display());
        }

        // Decrypted on the fly: exactly what mbstream -x makes of the original, and the encrypted manifest.
        let out = work.path().join(format!("{name}-decrypted"));
        let got = run_consumer(
            &["get", name, "-C", out.to_str().unwrap(), "--decrypt", "--identity", key.to_str().unwrap()],
            &storage,
            None,
        );
        let said = assert_success(&got, &format!("get -C --decrypt {name}"));
        assert!(said.contains("every file decrypted and authenticated"), "{said}");
        let mut restored = read_tree(&out);
        restored.retain(|(path, _)| path != Path::new(proto::MANIFEST_NAME));
        assert!(restored == read_tree(&theirs), "{name}: the tree mbstream -x makes of the original");
    }
    // Our own stream is encrypted by the producer, not on its way.
    let ours = produce(src.path(), &[]);
    let put = run_with_stdin(
        &mut consumer_with_storage(&["put", "ours", "--encrypt-recipient", &recipient], &storage),
        &ours,
    );
    let said = assert_failure(&put, "put --encrypt-recipient of our own stream");
    assert!(said.contains("encrypt it there"), "{said}");
}

/// A foreign stream `put --encrypt-recipient` cannot encrypt faithfully — cut inside a file, a file's chunks out
/// of order, a file twice — fails naming the file, and nothing of it counts as a backup.
#[test]
fn a_broken_foreign_stream_is_refused_by_put_encrypt_and_never_stored_as_complete() {
    let work = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keygen(work.path(), "backup.key");
    let store = work.path().join("store");
    let storage = ["--storage".to_string(), format!("file://{}", store.display())];
    let (first, second) = (pseudo_random_bytes(100_000, 1), pseudo_random_bytes(50_000, 2));
    // Foreign streams (no marker), chunk by chunk: `(path, Some(offset, bytes))` a payload, `(path, None)` an end.
    type Piece<'a> = (&'a [u8], Option<(u64, &'a [u8])>);
    let stream = |pieces: &[Piece]| {
        let mut writer = proto::ChunkWriter::new(Vec::new());
        for (path, payload) in pieces {
            match payload {
                Some((offset, bytes)) => writer.write_payload(path, *offset, bytes).unwrap(),
                None => writer.write_eof(path).unwrap(),
            }
        }
        writer.into_inner()
    };
    let cases: [(&str, Vec<Piece>, &str); 3] = [
        ("cut inside a file", vec![(b"ibdata1", Some((0, &first[..])))], "ended inside ibdata1"),
        (
            "chunks out of order",
            vec![(b"ibdata1", Some((100_000, &second[..]))), (b"ibdata1", Some((0, &first[..]))), (b"ibdata1", None)],
            "ibdata1: a chunk at offset 100000, where 0 was expected",
        ),
        (
            "a file twice",
            vec![
                (b"t.frm", Some((0, &second[..]))),
                (b"t.frm", None),
                (b"t.frm", Some((0, &second[..]))),
                (b"t.frm", None),
            ],
            "t.frm appears twice",
        ),
    ];
    for (index, (what, pieces, expected)) in cases.into_iter().enumerate() {
        let name = format!("broken{index}");
        let put = run_with_stdin(
            &mut consumer_with_storage(&["put", &name, "--encrypt-recipient", &recipient], &storage),
            &stream(&pieces),
        );
        let said = assert_failure(&put, what);
        assert!(said.contains(expected), "{what}: {said}");
        let listed = list_json(&storage);
        assert!(listed.iter().all(|entry| entry["name"] != name.as_str() || entry["complete"] != true), "{what}");
        let got = run_consumer(&["get", &name, "-C", work.path().join("out").to_str().unwrap()], &storage, None);
        assert!(!got.status.success(), "{what}: get of a backup that was never stored whole");
    }
}
