//! A stored backup is called complete only if it restores: puts of one NAME at the same moment (every backend), a
//! store with damaged backups beside good ones, a pack forged together with its index (caught by `get` to STDOUT
//! and to pipes against the manifest), and what `delete` reports.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::support::*;

/// A small tree whose content depends on `seed`, so that every put of a round stores something else.
fn tree(root: &Path, seed: u64) {
    write_tree(
        root,
        &[
            ("ibdata1", pseudo_random_bytes((1 << 20) + seed as usize, seed)),
            ("db/t1.ibd", pseudo_random_bytes(200 << 10, seed + 100)),
            ("db/t1.frm", format!("frm {seed}").into_bytes()),
        ],
    );
}

/// Three puts of one NAME started together, each storing a different tree, `rounds` times: exactly one exits 0 and
/// the others exit 1 saying the name is taken; nothing of the losers is left in the store; the backup is listed
/// complete and proven, and restores the winner's tree.
fn one_of_concurrent_puts_wins(storage: &[String], rounds: usize) {
    let work = tempfile::tempdir().unwrap();
    let sources: Vec<PathBuf> = (0..3).map(|i| work.path().join(format!("src{i}"))).collect();
    let streams: Vec<PathBuf> = (0..3).map(|i| work.path().join(format!("stream{i}.xbs"))).collect();
    for (i, (src, stream)) in sources.iter().zip(&streams).enumerate() {
        tree(src, i as u64 + 1);
        fs::write(stream, produce(src, &["--read-buffer-size", "64K"])).unwrap();
    }
    for round in 0..rounds {
        let name = format!("n{round}");
        let mut puts: Vec<Running> = streams
            .iter()
            .map(|stream| {
                let mut command = consumer_with_storage(&["put", &name, "--object-size", "256K"], storage);
                spawn(command.stdin(fs::File::open(stream).unwrap()).stdout(Stdio::null()))
            })
            .collect();
        let outputs: Vec<_> = puts.drain(..).map(|put| put.wait_output(LONG)).collect();
        let winners: Vec<usize> = (0..3).filter(|&i| outputs[i].status.success()).collect();
        let report: Vec<String> =
            outputs.iter().map(|o| format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr))).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one put of {name} succeeds: {report:#?}");
        let winner = winners[0];
        for (i, output) in outputs.iter().enumerate().filter(|(i, _)| *i != winner) {
            let stderr = assert_failure(output, "a put of a name another put holds");
            assert!(
                stderr.contains(&format!("backup {name} already exists")) || stderr.contains("is being claimed"),
                "round {round}, put {i}: {stderr}"
            );
            assert!(stderr.contains("stopped before storing anything"), "{stderr}");
        }
        // Only the winner's objects: its claim, its packs and manifest under its put id, the index.
        let objects: Vec<String> =
            raw_objects(storage).into_iter().filter(|key| key.starts_with(&format!("{name}/"))).collect();
        let puts: std::collections::BTreeSet<&str> = objects
            .iter()
            .filter_map(|key| key.split('/').nth(1))
            .filter(|part| *part != "index.json")
            .map(|part| part.trim_start_matches("claim-").trim_end_matches(".json"))
            .collect();
        assert_eq!(puts.len(), 1, "round {round}: one put's objects: {objects:#?}");
        let list = list_json(storage);
        let backup = listed(&list, &name);
        assert!(backup["complete"] == true && backup["proven"] == true, "{backup}");
        let out = work.path().join(format!("out{round}"));
        let got = run_consumer(&["get", &name, "-C", out.to_str().unwrap()], storage, None);
        assert_success(&got, "get of the one stored backup");
        assert_same_tree(&sources[winner], &out);
    }
}

#[test]
fn concurrent_puts_of_one_name_on_a_directory_store_exactly_one_backup() {
    let work = tempfile::tempdir().unwrap();
    one_of_concurrent_puts_wins(&["--storage".into(), format!("file://{}", work.path().join("store").display())], 3);
}

#[test]
fn concurrent_puts_of_one_name_on_s3_store_exactly_one_backup() {
    let server = S3Server::start();
    one_of_concurrent_puts_wins(&server.storage_args("backups"), 3);
}

#[test]
fn concurrent_puts_of_one_name_on_google_store_exactly_one_backup() {
    let server = start_fake_gcs();
    one_of_concurrent_puts_wins(&gcs_storage(&server, &server.endpoint(), "backups"), 2);
}

#[test]
fn concurrent_puts_of_one_name_on_azure_store_exactly_one_backup() {
    let server = start_azurite();
    let key = store::azure::DEVELOPMENT_KEY;
    one_of_concurrent_puts_wins(&azure_storage(&server.endpoint(), "backups", key), 2);
}

/// What each backend does with a create-only put of a key that exists, as the README's table says: the directory
/// store, S3 (`s3s-fs`) and Azure (Azurite) refuse it and keep the first object; Google's emulator ignores the
/// condition and overwrites (asserted, so that a release that honours it is noticed) — there, as everywhere, the
/// claim is what keeps two puts of one NAME apart.
#[test]
fn create_only_puts_as_each_backend_does_them() {
    let check = |storage: &[String], refuses: bool| {
        let store = open_store(storage);
        store.ensure_container().unwrap();
        store.put_new("k/index.json", bytes::Bytes::from_static(b"first")).unwrap();
        let second = store.put_new("k/index.json", bytes::Bytes::from_static(b"second"));
        let stored = store::get_small(store.as_ref(), "k/index.json", 100).unwrap();
        match refuses {
            true => {
                assert!(second.unwrap_err().is_already_exists(), "{}", store.describe());
                assert_eq!(stored, b"first", "{}", store.describe());
            }
            false => {
                second.unwrap();
                assert_eq!(stored, b"second", "{}", store.describe());
            }
        }
    };
    let work = tempfile::tempdir().unwrap();
    check(&["--storage".into(), format!("file://{}", work.path().display())], true);
    let s3 = S3Server::start();
    check(&s3.storage_args("backups"), true);
    let azurite = start_azurite();
    check(&azure_storage(&azurite.endpoint(), "backups", store::azure::DEVELOPMENT_KEY), true);
    let gcs = start_fake_gcs();
    check(&gcs_storage(&gcs, &gcs.endpoint(), "backups"), false);
}

/// A put that got past the claim while another put of the name completed (a store whose listing lagged): its
/// create-only index is refused, it removes what it stored and fails; the stored backup is the other one, whole.
#[test]
fn a_put_that_loses_the_index_removes_its_own_objects() {
    use runtime::cancel::Cancel;
    use runtime::signals::Signals;
    use store::Store;

    let memory = store::memory::MemoryStore::new();
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    tree(&a, 1);
    tree(&b, 2);
    let (stream_a, stream_b) = (work.path().join("a.xbs"), work.path().join("b.xbs"));
    fs::write(&stream_a, produce(&a, &["--read-buffer-size", "64K"])).unwrap();
    fs::write(&stream_b, produce(&b, &["--read-buffer-size", "64K"])).unwrap();
    let input = |path: &Path| {
        vec![consumer::input::InputStream { name: "memory".into(), file: Box::new(fs::File::open(path).unwrap()) }]
    };
    let config = put_config("N", 256 << 10);
    // B claims N; its claim vanishes from view (as on a store whose listing lags); A claims and stores N.
    let late = consumer::claim::claim("N", &memory).unwrap();
    memory.delete(&format!("N/claim-{}.json", late.put_id)).unwrap();
    let claim_a = consumer::claim::claim("N", &memory).unwrap();
    consumer::put::put_streams(&config, &memory, &claim_a, input(&stream_a), &Signals::none(), &Cancel::new()).unwrap();
    let err = consumer::put::put_streams(&config, &memory, &late, input(&stream_b), &Signals::none(), &Cancel::new())
        .unwrap_err();
    assert!(format!("{err:#}").contains(&format!("another put (put {}) stored backup N first", claim_a.put_id)));
    assert!(memory.keys().iter().all(|key| !key.contains(&late.put_id)), "B left nothing: {:?}", memory.keys());
    let listed = consumer::catalog::list(&memory).unwrap();
    assert!(listed[0].complete && listed[0].damaged.is_none(), "{listed:?}");
}

/// Puts `src` as `name` into the directory store at `store` (one stream, 256K packs).
fn put_dir(src: &Path, store: &Path, name: &str) {
    let stream = produce(src, &["--read-buffer-size", "64K"]);
    let url = format!("file://{}", store.display());
    consumer().args(["put", name, "--storage", &url, "--object-size", "256K"]).write_stdin(stream).assert().success();
}

/// The index of backup `name` in the directory store `store`, as JSON, to damage it.
fn index_of(store: &Path, name: &str) -> (PathBuf, serde_json::Value) {
    let path = store.join(name).join("index.json");
    let index = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    (path, index)
}

/// One unreadable or mismatched index never hides the other backups: each damaged one is listed as such with its
/// reason (table and JSON), the good ones as complete, and `list` exits 1 naming the damaged; `get` of one whose
/// index gives a pack an absurd size says the backup is damaged (not that memory is short).
#[test]
fn list_shows_every_backup_and_names_the_damaged_ones() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 7);
    let store = work.path().join("store");
    for name in ["good1", "truncated", "negative", "missing", "huge", "good2"] {
        put_dir(&src, &store, name);
    }
    fs::write(store.join("truncated/index.json"), b"").unwrap();
    let (path, mut index) = index_of(&store, "negative");
    index["streams"][0]["packs"][0]["size"] = serde_json::json!(-1);
    fs::write(path, index.to_string()).unwrap();
    let (_, index) = index_of(&store, "missing");
    let gone = index["streams"][0]["packs"][1]["key"].as_str().unwrap().to_string();
    fs::remove_file(store.join(&gone)).unwrap();
    let (path, mut index) = index_of(&store, "huge");
    let huge_pack = index["streams"][0]["packs"][0]["key"].as_str().unwrap().to_string();
    index["streams"][0]["packs"][0]["size"] = serde_json::json!(1_000_000_000_000_000_000u64);
    fs::write(path, index.to_string()).unwrap();

    let url = format!("file://{}", store.display());
    let table = consumer().args(["list", "--storage", &url]).assert().code(1);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&table.get_output().stdout).into_owned(),
        String::from_utf8_lossy(&table.get_output().stderr).into_owned(),
    );
    let line = |name: &str| stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {stdout}"));
    for good in ["good1", "good2"] {
        assert!(line(good).ends_with("complete, proven"), "{stdout}");
    }
    assert!(line("truncated").contains("DAMAGED: truncated/index.json cannot be read: EOF"), "{stdout}");
    assert!(line("negative").contains("DAMAGED: negative/index.json cannot be read"), "{stdout}");
    assert!(line("missing").contains(&format!("DAMAGED: pack {gone} is missing")), "{stdout}");
    assert!(line("huge").contains("the index says 1000000000000000000"), "{stdout}");
    assert!(stderr.contains("4 of the 6 backups") && stderr.contains("huge, missing, negative, truncated"), "{stderr}");

    let json = consumer().args(["list", "--json", "--storage", &url]).assert().code(1);
    let json: Vec<serde_json::Value> = serde_json::from_slice(&json.get_output().stdout).unwrap();
    assert_eq!(json.len(), 6);
    assert_eq!(listed(&json, "good2")["complete"], true);
    assert_eq!(listed(&json, "missing")["complete"], false);
    assert!(listed(&json, "truncated")["damaged"].as_str().unwrap().contains("EOF while parsing"));

    let get = consumer().args(["get", "huge", "--storage", &url]).assert().code(1);
    let stderr = String::from_utf8_lossy(&get.get_output().stderr);
    assert!(
        stderr.contains(&format!("backup huge in {url} is damaged: pack {huge_pack} holds"))
            && !stderr.contains("--memory-limit"),
        "{stderr}"
    );
    assert!(get.get_output().stdout.is_empty(), "nothing sent");
}

/// Changes one payload byte of a file's chunk in a stored pack and makes every checksum above it agree (the
/// chunk's CRC-32, the index's CRC-32 of the pack), as someone with write access to the bucket could; returns the
/// file's path in the stream.
fn forge_a_chunk(store: &Path, name: &str) -> String {
    let (index_path, mut index) = index_of(store, name);
    for stream in index["streams"].as_array_mut().unwrap() {
        for pack in stream["packs"].as_array_mut().unwrap() {
            let file = store.join(pack["key"].as_str().unwrap());
            let mut bytes = fs::read(&file).unwrap();
            let mut reader = proto::ChunkReader::new(&bytes[..]);
            let mut payload = Vec::new();
            let mut target = None;
            while let Some(header) = reader.read_chunk(&mut payload).unwrap() {
                let path = header.display_path();
                if header.payload_len > 0 && (path.starts_with("db/") || path == "ibdata1") {
                    target = Some((header, path));
                    break;
                }
            }
            let Some((header, path)) = target else { continue };
            let fields = header.stream_offset as usize + proto::PREFIX_LEN + header.path.len();
            let start = fields + proto::PAYLOAD_FIELDS_LEN;
            bytes[start] ^= 0x5a;
            let crc = crc32fast::hash(&bytes[start..start + header.payload_len as usize]);
            bytes[fields + 16..fields + 20].copy_from_slice(&crc.to_le_bytes());
            pack["crc32"] = serde_json::json!(crc32fast::hash(&bytes));
            fs::write(&file, bytes).unwrap();
            fs::write(&index_path, index.to_string()).unwrap();
            return path;
        }
    }
    panic!("no chunk of a file to forge in {name}");
}

/// A pack forged together with its checksums passes every check below the manifest; `get` to STDOUT (one stored
/// stream, and four merged), into pipes, and with `-C` each fail naming the file, and STDOUT ends with the broken
/// chunk, so `mbstream -x` fails too.
#[test]
fn get_checks_every_file_against_the_manifest_whatever_the_output() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 3);
    let store = work.path().join("store");
    let url = format!("file://{}", store.display());
    put_dir(&src, &store, "one");
    let put = ["put", "four", "--storage", &url, "--object-size", "256K"];
    put_from_pipes(&src, &["--read-buffer-size", "64K"], &put, 4, &work.path().join("fifos-in"));
    for name in ["one", "four"] {
        let forged = forge_a_chunk(&store, name);
        let get = consumer().args(["get", name, "--storage", &url]).assert().code(1);
        let stderr = String::from_utf8_lossy(&get.get_output().stderr).into_owned();
        assert!(
            stderr.contains(&format!("{forged}: CRC-32")) && stderr.contains("does not match the manifest"),
            "{stderr}"
        );
        let mb = mbstream_x(&get.get_output().stdout, &work.path().join(format!("mb-{name}")));
        assert!(!mb.status.success(), "{name}: mbstream -x must fail on what get sent");
        let out = work.path().join(format!("out-{name}"));
        let direct = consumer().args(["get", name, "--storage", &url, "-C"]).arg(&out).assert().code(1);
        assert!(String::from_utf8_lossy(&direct.get_output().stderr).contains(&forged));
    }
    // Into four pipes, read by an extract: get fails naming the file, and so does the extract.
    let fifos = work.path().join("fifos-out");
    fs::create_dir_all(&fifos).unwrap();
    let mut extract = spawn(
        consumer_command()
            .args(["extract", "--fifo-streams", "4", "--fifo-dir"])
            .arg(&fifos)
            .arg("-C")
            .arg(work.path().join("out-pipes"))
            .stderr(Stdio::piped()),
    );
    let get = consumer()
        .args(["get", "four", "--storage", &url, "--fifo-streams", "4", "--fifo-dir"])
        .arg(&fifos)
        .timeout(LONG)
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&get.get_output().stderr).into_owned();
    assert!(stderr.contains("does not match the manifest"), "{stderr}");
    assert!(!extract.wait(LONG).success());
}

/// `delete` says how many objects it removed: a backup without an index (an interrupted put) too.
#[test]
fn delete_counts_exactly_the_objects_it_removes() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    for key in ["half/p1/0/0000000000.xbs", "half/p1/0/0000000001.xbs", "half/claim-p1.json"] {
        fs::create_dir_all(store.join(key).parent().unwrap()).unwrap();
        fs::write(store.join(key), b"x").unwrap();
    }
    let url = format!("file://{}", store.display());
    let deleted = consumer().args(["delete", "half", "--storage", &url]).assert().success();
    assert!(String::from_utf8_lossy(&deleted.get_output().stderr).contains("deleted half: 3 objects"));
    assert!(!store.join("half").exists());
}

/// A put that fails before it stores a pack (no producer came: an empty stream) takes its claim back, so that the
/// next try of the same NAME is not told the name is taken.
#[test]
fn a_put_that_stored_nothing_leaves_the_name_free() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let url = format!("file://{}", store.display());
    let empty = consumer().args(["put", "NIGHTLY", "--storage", &url]).write_stdin(Vec::new()).assert().code(1);
    let stderr = String::from_utf8_lossy(&empty.get_output().stderr).into_owned();
    assert!(stderr.contains("no data") && !stderr.contains("consumer delete"), "{stderr}");
    assert!(!store.join("NIGHTLY").exists(), "the claim went with the failed put");
    let src = work.path().join("src");
    tree(&src, 5);
    put_dir(&src, &store, "NIGHTLY");
}

/// Backups stored before put ids (index format 1: packs at `<NAME>/<stream>/<seq>.xbs`, the manifest at
/// `<NAME>/backup-manifest.json`) are still listed, checked and brought back every way.
#[test]
fn backups_stored_before_put_ids_are_still_read() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 6);
    let store = work.path().join("store");
    put_dir(&src, &store, "OLD");
    // Rewrite it as the previous layout had it.
    let (index_path, mut index) = index_of(&store, "OLD");
    let put = index["put_id"].as_str().unwrap().to_string();
    for stream in index["streams"].as_array_mut().unwrap() {
        for pack in stream["packs"].as_array_mut().unwrap() {
            let key = pack["key"].as_str().unwrap().to_string();
            let old_key = key.replace(&format!("OLD/{put}/"), "OLD/");
            fs::create_dir_all(store.join(&old_key).parent().unwrap()).unwrap();
            fs::rename(store.join(&key), store.join(&old_key)).unwrap();
            pack["key"] = serde_json::json!(old_key);
        }
    }
    fs::rename(store.join(format!("OLD/{put}/backup-manifest.json")), store.join("OLD/backup-manifest.json")).unwrap();
    fs::remove_file(store.join(format!("OLD/claim-{put}.json"))).unwrap();
    fs::remove_dir_all(store.join(format!("OLD/{put}"))).unwrap();
    index["format"] = serde_json::json!(1);
    index.as_object_mut().unwrap().remove("put_id");
    fs::write(&index_path, index.to_string()).unwrap();

    let url = format!("file://{}", store.display());
    let list = consumer().args(["list", "--json", "--storage", &url]).assert().success();
    let list: Vec<serde_json::Value> = serde_json::from_slice(&list.get_output().stdout).unwrap();
    assert_eq!(listed(&list, "OLD")["complete"], true);
    let got = consumer().args(["get", "OLD", "--storage", &url]).assert().success();
    let mb = work.path().join("mb");
    mbstream_extract(&got.get_output().stdout, &mb);
    assert_same_tree(&src, &mb);
    let out = work.path().join("out");
    consumer().args(["get", "OLD", "--storage", &url, "-C"]).arg(&out).assert().success();
    assert_same_tree(&src, &out);
}

/// `get --allow-partial` of a name holding a hostile key (a stream number no producer writes) is refused with a
/// message, never a room made for four billion streams.
#[test]
fn a_hostile_stream_number_in_a_partial_backup_is_not_a_stream() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let key = store.join("evil/p1/4000000000/0000000000.xbs");
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    fs::write(&key, b"XBSTCK01").unwrap();
    let url = format!("file://{}", store.display());
    let get = consumer().args(["get", "evil", "--allow-partial", "--storage", &url]).assert().code(1);
    let stderr = String::from_utf8_lossy(&get.get_output().stderr);
    assert!(stderr.contains("holds no stream"), "{stderr}");
}
