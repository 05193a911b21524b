//! Living with backups in object storage (issue #23): `consumer check` proves a stored backup in place and names
//! every missing, truncated or replaced object, on the directory store, S3 (s3s-fs), Google (fake-gcs-server) and
//! Azure (Azurite); `--read-data` finds what metadata cannot; `delete`'s retention rules keep exactly the right
//! backups; `get --include` restores one table, proven, reading only its bytes. (How `get` downloads, ranges and
//! resumes: `downloads`.)

use std::fs;
use std::path::Path;

use bytes::Bytes;

use crate::support::*;

/// A tree of a few packs at `--object-size 256K`: one file over several packs, small ones beside it.
fn tree(root: &Path) {
    write_tree(
        root,
        &[
            ("ibdata1", pseudo_random_bytes((1 << 20) + 333, 71)),
            ("db/t1.ibd", pseudo_random_bytes(300 << 10, 72)),
            ("db/t1.frm", b"frm".to_vec()),
        ],
    );
}

/// Stores `tree` as backup `name` in the store `storage` names, in packs of 256 KiB.
fn put(storage: &[String], work: &Path, name: &str) {
    let src = work.join(format!("src-{name}"));
    tree(&src);
    let stream = work.join(format!("{name}.xbs"));
    fs::write(&stream, produce(&src, &["--read-buffer-size", "64K"])).unwrap();
    let put = run_consumer(&["put", name, "--object-size", "256K"], storage, Some(&stream));
    assert_success(&put, "put");
}

/// `consumer check NAME ARGS`: its exit code, STDOUT and STDERR.
fn check(storage: &[String], name: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["check", name];
    all.extend_from_slice(args);
    let output = run_consumer(&all, storage, None);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// The whole check on one store: an intact backup passes by metadata and by reading every pack (every file proven
/// against the manifest). Then, behind the store's back: one pack replaced by other bytes of the same size — named
/// `CHANGED` by its ETag where the store lists ETags, and otherwise found by `--read-data` (its CRC-32); then one
/// pack deleted and one truncated: the metadata check fails and names each, and nothing else.
fn check_names_every_damaged_object(storage: &[String], lists_e_tags: bool) {
    let work = tempfile::tempdir().unwrap();
    put(storage, work.path(), "nightly");
    let packs = pack_keys(storage, "nightly");
    assert!(packs.len() >= 5, "several packs: {packs:?}");
    let recorded = index(storage, "nightly")["streams"][0]["packs"][0]["e_tag"].clone();
    assert_eq!(recorded.is_string(), lists_e_tags, "the index records each pack's ETag where listed: {recorded}");

    let (code, stdout, stderr) = check(storage, "nightly", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("is whole"), "{stderr}");
    let (code, stdout, stderr) = check(storage, "nightly", &["--read-data"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("{0} of {0} packs read", packs.len())), "{stderr}");
    assert!(stderr.contains("all 3 files proven against the manifest"), "{stderr}");

    let store = open_store(storage);
    let (gone, cut, replaced) = (&packs[1], &packs[2], &packs[3]);
    // The same number of bytes, every one of them different.
    let mut other = Vec::new();
    store
        .get(replaced, &mut |piece| {
            other.extend(piece.iter().map(|b| b ^ 0x55));
            Ok(())
        })
        .unwrap();
    store.put(replaced, Bytes::from(other)).unwrap();
    let (code, stdout, stderr) = check(storage, "nightly", &[]);
    match lists_e_tags {
        true => {
            assert_eq!(code, Some(1), "{stdout}{stderr}");
            assert!(stdout.contains(&format!("CHANGED {replaced}")), "{stdout}");
            // Reading the data reads a changed pack whatever the share, and proves what it holds now.
            let (code, stdout, stderr) = check(storage, "nightly", &["--read-data", "1%"]);
            assert_eq!(code, Some(1), "{stdout}{stderr}");
            assert!(stdout.contains("read and proven below"), "{stdout}");
            assert!(stdout.contains(&format!("DAMAGED {replaced}: CRC-32")), "{stdout}");
        }
        false => {
            assert_eq!(code, Some(0), "without ETags the listing cannot see it: {stdout}{stderr}");
            let (code, stdout, stderr) = check(storage, "nightly", &["--read-data"]);
            assert_eq!(code, Some(1), "{stdout}{stderr}");
            assert!(stdout.contains(&format!("DAMAGED {replaced}: CRC-32")), "{stdout}");
        }
    }

    store.delete(gone).unwrap();
    store.put(cut, Bytes::from(vec![7u8; 100])).unwrap();
    let (code, stdout, stderr) = check(storage, "nightly", &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("MISSING {gone}")), "{stdout}");
    assert!(stdout.contains(&format!("DAMAGED {cut}: 100 bytes stored")), "{stdout}");
    let named = 2 + usize::from(lists_e_tags);
    assert_eq!(stdout.lines().count(), named, "exactly the damaged objects are named: {stdout}");
    assert!(stderr.contains(&format!("{named} of the objects")) && stderr.contains("cannot be restored"), "{stderr}");
}

#[test]
fn check_on_a_directory_store_names_every_damaged_object() {
    let dir = tempfile::tempdir().unwrap();
    check_names_every_damaged_object(&[format!("--storage=file://{}", dir.path().display())], true);
}

#[test]
fn check_on_s3_names_every_damaged_object() {
    let server = S3Server::start();
    // s3s-fs lists no ETags (AWS S3 does): the replaced pack is found by reading it.
    check_names_every_damaged_object(&server.storage_args("backups"), false);
}

#[test]
fn check_on_google_cloud_storage_names_every_damaged_object() {
    let server = start_fake_gcs();
    check_names_every_damaged_object(&gcs_storage(&server, &server.endpoint(), "backups"), true);
}

#[test]
fn check_on_azure_names_every_damaged_object() {
    let server = start_azurite();
    check_names_every_damaged_object(
        &azure_storage(&server.endpoint(), "backups", store::azure::DEVELOPMENT_KEY),
        true,
    );
}

/// A byte changed inside a pack with its time put back (a bit flip on the disk below the store): the listing
/// cannot see it, reading the data does — a sample reads exactly its share, and reading every pack names the pack.
/// An incomplete backup fails the check, and so does a bad share.
#[test]
fn read_data_finds_what_metadata_cannot() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    let storage = vec![format!("--storage=file://{}", root.display())];
    put(&storage, work.path(), "nightly");
    let packs = pack_keys(&storage, "nightly");
    let (code, _, stderr) = check(&storage, "nightly", &["--read-data", "1%"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(&format!("1 of {} packs read", packs.len())), "{stderr}");
    assert!(stderr.contains("a sample"), "{stderr}");

    let flipped = root.join(&packs[2]);
    let before = fs::metadata(&flipped).unwrap().modified().unwrap();
    let mut bytes = fs::read(&flipped).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(&flipped, &bytes).unwrap();
    fs::File::options().write(true).open(&flipped).unwrap().set_modified(before).unwrap();
    let (code, stdout, stderr) = check(&storage, "nightly", &[]);
    assert_eq!(code, Some(0), "the listing cannot see a flipped byte: {stdout}{stderr}");
    let (code, stdout, stderr) = check(&storage, "nightly", &["--read-data", "100"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("DAMAGED {}: CRC-32", packs[2])), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    // A copy of the store elsewhere (`cp -a`): other inodes, so every ETag differs; reading proves the bytes.
    fs::write(&flipped, {
        bytes[middle] ^= 0x20;
        &bytes
    })
    .unwrap();
    let copy = work.path().join("copy");
    run_ok(std::process::Command::new("cp").arg("-a").arg(&root).arg(&copy), SHORT);
    let copied = vec![format!("--storage=file://{}", copy.display())];
    let (code, stdout, _) = check(&copied, "nightly", &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("CHANGED")).count(), packs.len() + 1, "{stdout}");
    let (code, stdout, stderr) = check(&copied, "nightly", &["--read-data", "1%"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("{0} of {0} packs read", packs.len())), "{stderr}");

    fs::remove_file(root.join("nightly/index.json")).unwrap();
    let (code, _, stderr) = check(&storage, "nightly", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("INCOMPLETE"), "{stderr}");
    let (code, _, stderr) = check(&storage, "nightly", &["--read-data", "0"]);
    assert_eq!(code, Some(2), "{stderr}");
}

/// Sets a backup's date in a directory store: its index's `created_unix`, `days` ago.
fn age_backup(root: &Path, name: &str, days: u64) {
    let path = root.join(name).join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    index["created_unix"] = serde_json::json!(now - days * 86_400);
    fs::write(&path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

/// An unfinished put of `name` that started `hours` ago: its claim and one pack, no index.
fn unfinished_put(root: &Path, name: &str, hours: u64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claim = serde_json::json!({
        "put_id": "p1", "host": "db1", "pid": 4242, "started_unix": now - hours * 3600, "tool": "consumer"
    });
    fs::create_dir_all(root.join(name).join("p1/0")).unwrap();
    fs::write(root.join(name).join("claim-p1.json"), claim.to_string()).unwrap();
    fs::write(root.join(name).join("p1/0/0000000000.xbs"), b"partial").unwrap();
}

/// The names `list --json` shows (it exits 1 while a damaged backup is there, after listing every backup).
fn names(storage: &[String]) -> Vec<String> {
    let output = run_consumer(&["list", "--json"], storage, None);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("list --json prints JSON");
    list.iter().map(|b| b["name"].as_str().unwrap().to_owned()).collect()
}

/// Retention on a directory store: five complete backups 1 to 80 days old, a damaged one, an unfinished put of
/// 20 days ago and one of an hour ago. `--keep-last 2 --older-than 15d --incomplete`, dry run first (nothing
/// goes, every backup is named with its fate), then for real: exactly the backups beyond the newest two *and* older
/// than 15 days go (20, 40, 80 days), and the stale unfinished put; the damaged backup and the young put stay.
#[test]
fn retention_keeps_exactly_the_right_backups() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    let storage = vec![format!("--storage=file://{}", root.display())];
    for (name, days) in [("d1", 1), ("d10", 10), ("d20", 20), ("d40", 40), ("d80", 80), ("broken", 90)] {
        put(&storage, work.path(), name);
        age_backup(&root, name, days);
    }
    let broken = pack_keys(&storage, "broken");
    fs::remove_file(root.join(&broken[0])).unwrap();
    unfinished_put(&root, "stale", 20 * 24);
    unfinished_put(&root, "running", 1);
    let before = names(&storage);
    assert_eq!(before.len(), 8, "{before:?}");

    let rules = ["delete", "--keep-last", "2", "--older-than", "15d", "--incomplete"];
    let mut dry = rules.to_vec();
    dry.push("--dry-run");
    let output = run_consumer(&dry, &storage, None);
    let stderr = assert_success(&output, "delete --dry-run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stderr.contains("4 of the 8 backups") && stderr.contains("nothing was deleted"), "{stdout}{stderr}");
    let would: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("would delete"))
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(would, ["d20", "d40", "d80", "stale"], "{stdout}");
    assert_eq!(names(&storage), before, "a dry run deletes nothing");

    let output = run_consumer(&rules, &storage, None);
    let stderr = assert_success(&output, "delete by the rules");
    assert!(stderr.contains("deleted 4 of the 8 backups"), "{stderr}");
    assert_eq!(names(&storage), ["broken", "d1", "d10", "running"]);

    // The newest complete backup is never deleted by a rule, however old.
    let output = run_consumer(&["delete", "--older-than", "1s"], &storage, None);
    assert_success(&output, "delete --older-than 1s");
    assert_eq!(names(&storage), ["broken", "d1", "running"]);
    let output = run_consumer(&["delete", "--keep-last", "0"], &storage, None);
    assert_eq!(output.status.code(), Some(2));
}

/// Retention on S3: of three backups stored one after another, `--keep-last 1` keeps the last one stored.
#[test]
fn retention_on_s3_keeps_the_newest() {
    let server = S3Server::start();
    let storage = server.storage_args("backups");
    let work = tempfile::tempdir().unwrap();
    for name in ["monday", "tuesday", "wednesday"] {
        put(&storage, work.path(), name);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let output = run_consumer(&["delete", "--keep-last", "1"], &storage, None);
    assert_success(&output, "delete --keep-last 1");
    assert_eq!(names(&storage), ["wednesday"]);
    assert!(raw_objects(&storage).iter().all(|key| key.starts_with("wednesday/")));
}

/// A tree with one table among bigger files: what a partial restore takes one table out of.
fn shop(root: &Path) {
    write_tree(
        root,
        &[
            ("ibdata1", pseudo_random_bytes(16 << 20, 91)),
            ("shop/orders.ibd", pseudo_random_bytes(512 << 10, 92)),
            ("shop/orders.frm", b"orders frm".to_vec()),
            ("shop/customers.ibd", pseudo_random_bytes(3 << 20, 93)),
            ("shop/customers.frm", b"customers frm".to_vec()),
            ("logs/big.ibd", pseudo_random_bytes(4 << 20, 94)),
        ],
    );
}

/// Every regular file below `root` (none if it does not exist), relative, sorted.
fn files_in(root: &Path) -> Vec<String> {
    if !root.exists() {
        return Vec::new();
    }
    list_tree(root).iter().map(|p| p.to_string_lossy().into_owned()).collect()
}

/// Partial restore on S3, behind a proxy that counts the bytes it sends back: one table (`shop/orders.*`) out of
/// a 24 MiB backup comes back byte for byte, alone (no other file, no manifest claiming the whole backup), and the
/// server sent under 5 % of what is stored; a glob across directories brings exactly its files; `--exclude` wins;
/// a pattern that matches nothing is an error.
#[test]
fn partial_restore_reads_only_the_chosen_files() {
    let server = S3Server::start();
    let proxy = FaultyProxy::start(&server.host_port(), u64::MAX);
    let storage = s3_storage_args(&proxy.endpoint(), "backups", server.access_key(), server.secret_key());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    shop(&src);
    let stream = work.path().join("stream.xbs");
    fs::write(&stream, produce(&src, &[])).unwrap();
    assert_success(&run_consumer(&["put", "nightly", "--object-size", "4M"], &storage, Some(&stream)), "put");
    let stored: u64 = open_store(&storage).list("nightly").unwrap().iter().map(|o| o.size).sum();

    let before = proxy.response_body_bytes();
    let out = work.path().join("one-table");
    let got =
        run_consumer(&["get", "nightly", "-C", out.to_str().unwrap(), "--include", "shop/orders.*"], &storage, None);
    let stderr = assert_success(&got, "get --include one table");
    let sent = proxy.response_body_bytes() - before;
    assert_eq!(files_in(&out), ["shop/orders.frm", "shop/orders.ibd"]);
    for file in ["shop/orders.frm", "shop/orders.ibd"] {
        assert!(fs::read(out.join(file)).unwrap() == fs::read(src.join(file)).unwrap(), "{file}");
    }
    assert!(sent * 20 <= stored, "{sent} bytes sent of {stored} stored: more than 5 %");
    assert!(sent >= 512 << 10, "at least the table itself: {sent}");
    assert!(stderr.contains("2 of 6 files chosen"), "{stderr}");

    let out = work.path().join("glob");
    let args = ["get", "nightly", "-C", out.to_str().unwrap(), "--include", "**/*.ibd", "--exclude", "logs/*"];
    assert_success(&run_consumer(&args, &storage, None), "get --include a glob --exclude");
    assert_eq!(files_in(&out), ["shop/customers.ibd", "shop/orders.ibd"]);
    assert!(fs::read(out.join("shop/customers.ibd")).unwrap() == fs::read(src.join("shop/customers.ibd")).unwrap());

    let out = work.path().join("none");
    let none = run_consumer(&["get", "nightly", "-C", out.to_str().unwrap(), "--include", "nothing/*"], &storage, None);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no file of backup nightly matches"));
    let to_stdout = run_consumer(&["get", "nightly", "--include", "shop/*"], &storage, None);
    assert_eq!(to_stdout.status.code(), Some(2), "--include needs -C");
}

/// A partial restore proves what it restores: a byte changed inside the chosen table's chunk (on the disk below a
/// directory store) fails the get naming the file, and nothing is placed in OUT; a file not chosen may be damaged
/// without harm to the partial restore.
#[test]
fn partial_restore_proves_the_chosen_files() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    let storage = vec![format!("--storage=file://{}", root.display())];
    let src = work.path().join("src");
    shop(&src);
    let stream = work.path().join("stream.xbs");
    fs::write(&stream, produce(&src, &[])).unwrap();
    assert_success(&run_consumer(&["put", "nightly", "--object-size", "4M"], &storage, Some(&stream)), "put");
    // Where each file's chunks lie, from the table of contents.
    let index = index(&storage, "nightly");
    let put_id = index["put_id"].as_str().unwrap();
    let toc = fs::read_to_string(root.join(format!("nightly/{put_id}/toc/0/0000000000.jsonl"))).unwrap();
    let run_of = |path: &str| -> (u64, u64, u64) {
        let line =
            toc.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|r| r["path"] == path);
        let run = line.unwrap_or_else(|| panic!("{path} in the table of contents: {toc}"));
        (run["pack"].as_u64().unwrap(), run["from"].as_u64().unwrap(), run["to"].as_u64().unwrap())
    };
    let flip = |path: &str| {
        let (pack, from, to) = run_of(path);
        let file = root.join(format!("nightly/{put_id}/0/{pack:010}.xbs"));
        let mut bytes = fs::read(&file).unwrap();
        bytes[((from + to) / 2) as usize] ^= 1;
        fs::write(&file, bytes).unwrap();
    };

    flip("logs/big.ibd");
    let out = work.path().join("out");
    let got =
        run_consumer(&["get", "nightly", "-C", out.to_str().unwrap(), "--include", "shop/orders.*"], &storage, None);
    assert_success(&got, "a damaged file not chosen does not matter");
    assert_eq!(files_in(&out), ["shop/orders.frm", "shop/orders.ibd"]);

    flip("shop/orders.ibd");
    let out = work.path().join("out-damaged");
    let got =
        run_consumer(&["get", "nightly", "-C", out.to_str().unwrap(), "--include", "shop/orders.*"], &storage, None);
    assert_eq!(got.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert!(stderr.contains("shop/orders.ibd"), "{stderr}");
    assert!(files_in(&out).is_empty(), "nothing unproven is placed: {:?}", files_in(&out));

    // A table of contents changed in the store (same size, a path bent to another file): the partial get refuses
    // it before reading a range, naming the part; `check --read-data` names it too.
    let part = format!("nightly/{put_id}/toc/0/0000000000.jsonl");
    fs::write(root.join(&part), toc.replacen("shop/orders.ibd", "shop/orders.frm", 1)).unwrap();
    let out = work.path().join("out-toc");
    let got =
        run_consumer(&["get", "nightly", "-C", out.to_str().unwrap(), "--include", "shop/orders.*"], &storage, None);
    assert_eq!(got.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert!(stderr.contains(&part) && stderr.contains("not as the index recorded it"), "{stderr}");
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));
    let (code, stdout, _) = check(&storage, "nightly", &["--read-data", "1%"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains(&format!("DAMAGED {part}")), "{stdout}");
}

/// A stream of a few packs for the storage-option tests.
fn small_stream(work: &Path) -> std::path::PathBuf {
    let src = work.join("src");
    tree(&src);
    let stream = work.join("stream.xbs");
    fs::write(&stream, produce(&src, &["--read-buffer-size", "64K"])).unwrap();
    stream
}

/// The start lines of the PUTs of packs a proxy saw, each with the value of header `name`.
fn pack_puts(proxy: &FaultyProxy, name: &str) -> Vec<(String, Option<String>)> {
    let puts: Vec<_> = proxy
        .requests_with_header(name)
        .into_iter()
        .filter(|(line, _)| line.starts_with("PUT ") && line.contains(".xbs"))
        .collect();
    assert!(puts.len() >= 3, "the packs were put: {puts:?}");
    puts
}

/// S3: `--storage-class` and `--s3-sse aws:kms --s3-sse-kms-key-id` go with every pack's PUT (seen by a proxy in
/// front of the server), and the backup stored so restores. (`s3s-fs` takes only the class `STANDARD`, and
/// refuses the others with `InvalidStorageClass`, which a put reports as a permanent error; AWS takes them all.)
#[test]
fn s3_storage_class_and_kms_encryption_go_with_every_put() {
    let server = S3Server::start();
    let proxy = FaultyProxy::start(&server.host_port(), u64::MAX);
    let mut storage = s3_storage_args(&proxy.endpoint(), "backups", server.access_key(), server.secret_key());
    let options = ["--storage-class", "STANDARD", "--s3-sse", "aws:kms", "--s3-sse-kms-key-id", "alias/backups"];
    storage.extend(options.map(str::to_owned));
    let work = tempfile::tempdir().unwrap();
    let stream = small_stream(work.path());
    let put = run_consumer(&["put", "classy", "--object-size", "256K"], &storage, Some(&stream));
    assert_success(&put, "put with a storage class and SSE-KMS");
    for (header, value) in [
        ("x-amz-storage-class", "STANDARD"),
        ("x-amz-server-side-encryption", "aws:kms"),
        ("x-amz-server-side-encryption-aws-kms-key-id", "alias/backups"),
    ] {
        for (line, got) in pack_puts(&proxy, header) {
            assert_eq!(got.as_deref(), Some(value), "{header} on {line}");
        }
    }
    let out = work.path().join("out");
    assert_success(&run_consumer(&["get", "classy", "-C", out.to_str().unwrap()], &storage, None), "get");
    assert_same_tree(&work.path().join("src"), &out);
    let refused = run_consumer(&["list", "--s3-sse", "aws:kms", "--storage", "file:///tmp/x"], &[], None);
    assert_eq!(refused.status.code(), Some(1), "--s3-sse is for s3:// only");
}

/// Azure: `--storage-class Cool` is the access tier of every blob put (the header, seen by a proxy); Azurite takes
/// it, and the backup restores.
#[test]
fn azure_storage_class_is_the_access_tier_of_every_blob() {
    let server = start_azurite();
    let proxy = FaultyProxy::start(&server.host_port(), u64::MAX);
    let mut storage = azure_storage(&proxy.endpoint(), "backups", store::azure::DEVELOPMENT_KEY);
    storage.extend(["--storage-class", "Cool"].map(str::to_owned));
    let work = tempfile::tempdir().unwrap();
    let stream = small_stream(work.path());
    let put = run_consumer(&["put", "cool", "--object-size", "256K"], &storage, Some(&stream));
    assert_success(&put, "put with an access tier");
    for (line, tier) in pack_puts(&proxy, "x-ms-access-tier") {
        assert_eq!(tier.as_deref(), Some("Cool"), "{line}");
    }
    let out = work.path().join("out");
    assert_success(&run_consumer(&["get", "cool", "-C", out.to_str().unwrap()], &storage, None), "get");
    assert_same_tree(&work.path().join("src"), &out);
}

/// Google: `--storage-class NEARLINE` is every object's storage class, as the service reports it in the object's
/// metadata (JSON API); the backup restores.
#[test]
fn google_storage_class_is_every_objects_class() {
    let server = start_fake_gcs();
    let mut storage = gcs_storage(&server, &server.endpoint(), "backups");
    storage.extend(["--storage-class", "NEARLINE"].map(str::to_owned));
    let work = tempfile::tempdir().unwrap();
    let stream = small_stream(work.path());
    let put = run_consumer(&["put", "near", "--object-size", "256K"], &storage, Some(&stream));
    assert_success(&put, "put with a storage class");
    let packs = pack_keys(&storage, "near");
    for key in &packs {
        let path = format!("/storage/v1/b/backups/o/{}", key.replace('/', "%2F"));
        let metadata = http_get_json(&server.host_port(), &path);
        assert_eq!(metadata["storageClass"], "NEARLINE", "{key}: {metadata}");
    }
    let out = work.path().join("out");
    assert_success(&run_consumer(&["get", "near", "-C", out.to_str().unwrap()], &storage, None), "get");
    assert_same_tree(&work.path().join("src"), &out);
}

/// A plain HTTP/1.0 GET of `path` from `host_port`; the body, parsed as JSON.
fn http_get_json(host_port: &str, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(host_port).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(socket, "GET {path} HTTP/1.0\r\nHost: {host_port}\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `--limit-rate`: a get of about 1.3 MiB held to 256K a second (a second's worth at once, the rest at the rate)
/// takes at least three seconds (a lower bound: the limit promises a run is never faster), and restores the same
/// tree.
#[test]
fn limit_rate_holds_a_get_back() {
    let work = tempfile::tempdir().unwrap();
    let storage = vec![format!("--storage=file://{}", work.path().join("store").display())];
    put(&storage, work.path(), "paced");
    let out = work.path().join("out");
    let started = std::time::Instant::now();
    let got = run_consumer(&["get", "paced", "-C", out.to_str().unwrap(), "--limit-rate", "256K"], &storage, None);
    assert_success(&got, "get --limit-rate");
    assert!(started.elapsed() >= std::time::Duration::from_secs(3), "{:?}", started.elapsed());
    assert_same_tree(&work.path().join("src-paced"), &out);
}

/// Partial restore of compressed and of encrypted backups: `--include` with `--decompress` brings the chosen
/// table back decompressed, and with `--decrypt` decrypted and authenticated (the patterns are on the paths the
/// files restore to, not on their `.zst` / `.age` names); without `--decrypt` the chosen files come as `.age`.
#[test]
fn partial_restore_decompresses_and_decrypts() {
    let work = tempfile::tempdir().unwrap();
    let storage = vec![format!("--storage=file://{}", work.path().join("store").display())];
    let src = work.path().join("src");
    shop(&src);
    let (key, recipient) = age_keygen(work.path(), "backup.key");
    for (name, producer_args) in [("zst", vec!["--compress"]), ("age", vec!["--encrypt-recipient", recipient.as_str()])]
    {
        let stream = work.path().join(format!("{name}.xbs"));
        fs::write(&stream, produce(&src, &producer_args)).unwrap();
        assert_success(&run_consumer(&["put", name, "--object-size", "4M"], &storage, Some(&stream)), "put");
    }
    let table = ["shop/orders.frm", "shop/orders.ibd"];
    let out = work.path().join("zst");
    let args = ["get", "zst", "-C", out.to_str().unwrap(), "--include", "shop/orders.*", "--decompress"];
    assert_success(&run_consumer(&args, &storage, None), "get --include --decompress");
    assert_eq!(files_in(&out), table);
    for file in table {
        assert!(fs::read(out.join(file)).unwrap() == fs::read(src.join(file)).unwrap(), "{file}");
    }
    let out = work.path().join("age");
    let key = key.to_str().unwrap();
    let args =
        ["get", "age", "-C", out.to_str().unwrap(), "--include", "shop/orders.*", "--decrypt", "--identity", key];
    let stderr = assert_success(&run_consumer(&args, &storage, None), "get --include --decrypt");
    assert!(stderr.contains("authenticated"), "{stderr}");
    assert_eq!(files_in(&out), table);
    for file in table {
        assert!(fs::read(out.join(file)).unwrap() == fs::read(src.join(file)).unwrap(), "{file}");
    }
    let out = work.path().join("sealed");
    let args = ["get", "age", "-C", out.to_str().unwrap(), "--include", "shop/orders.ibd"];
    assert_success(&run_consumer(&args, &storage, None), "get --include, kept encrypted");
    assert!(files_in(&out).contains(&"shop/orders.ibd.age".to_string()), "{:?}", files_in(&out));
}

/// A put whose claim a retention job removed (it looked like an interrupted put) stores no index: it finds its
/// claim gone when it lists what it stored, removes its own objects, and fails saying so.
#[test]
fn a_put_whose_claim_was_removed_does_not_commit() {
    use runtime::cancel::Cancel;
    use runtime::signals::Signals;
    use store::Store;

    let memory = store::memory::MemoryStore::new();
    let work = tempfile::tempdir().unwrap();
    let stream = small_stream(work.path());
    let config = put_config("N", 256 << 10);
    let claim = consumer::claim::claim("N", &memory).unwrap();
    consumer::catalog::delete_incomplete(&memory, "N").unwrap();
    let input =
        vec![consumer::input::InputStream { name: "file".into(), file: Box::new(fs::File::open(&stream).unwrap()) }];
    let err =
        consumer::put::put_streams(&config, &memory, &claim, input, &Signals::none(), &Cancel::new()).unwrap_err();
    assert!(format!("{err:#}").contains("claim") && format!("{err:#}").contains("is gone"), "{err:#}");
    assert!(memory.keys().is_empty(), "nothing left: {:?}", memory.keys());
    assert!(memory.list("N").unwrap().is_empty());
}
