//! `consumer put / get / list / delete` on the local-directory store, and the put and get logic against the
//! in-memory store with injected faults (the S3 backend against a real server is in `s3server`).

use std::fs;
use std::io::Cursor;
use std::path::Path;

use consumer::input::InputStream;
use runtime::cancel::Cancel;
use runtime::signals::Signals;
use store::memory::{Faults, MemoryStore};

use crate::support::*;

/// A tree `mbstream -x` can restore (every directory holds a file of its own), a few packs big at 256K objects.
fn source() -> tempfile::TempDir {
    temp_tree(&[
        ("ibdata1", pseudo_random_bytes(3 << 20, 1)),
        ("db/t1.ibd", pseudo_random_bytes(700 << 10, 2)),
        ("db/t1.frm", b"frm".to_vec()),
        ("empty", Vec::new()),
        ("one", vec![1]),
    ])
}

fn storage(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// put from STDOUT, then get back: the same bytes on STDOUT, and the same tree through -C and through mbstream.
#[test]
fn put_then_get_is_byte_identical_on_the_local_store() {
    let src = source();
    let stream = produce(src.path(), &["--read-buffer-size", "64K"]);
    let work = tempfile::tempdir().unwrap();
    let url = storage(&work.path().join("store"));
    let put = consumer()
        .args(["put", "NIGHTLY", "--storage", &url, "--object-size", "256K"])
        .write_stdin(stream.clone())
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&put.get_output().stderr).into_owned();
    assert!(stderr.contains("proven against its manifest"), "{stderr}");
    let stream_dir = stored_pack(&work.path().join("store"), "NIGHTLY", 0, 0).unwrap().parent().unwrap().to_owned();
    let packs = fs::read_dir(stream_dir).unwrap().count();
    assert!(packs >= 10, "objects of about 256K: {packs}");

    let got = consumer().args(["get", "NIGHTLY", "--storage", &url]).assert().success();
    assert!(got.get_output().stdout == stream, "get returns the stream byte for byte");
    let out = work.path().join("out");
    consumer().args(["get", "NIGHTLY", "--storage", &url, "-C"]).arg(&out).assert().success();
    assert_same_tree(src.path(), &out);
    let mb = work.path().join("mb");
    mbstream_extract(&got.get_output().stdout, &mb);
    assert_same_tree(src.path(), &mb);

    // A second put under the same name is refused; list and delete.
    let again = consumer().args(["put", "NIGHTLY", "--storage", &url]).write_stdin(stream).assert().code(1);
    assert!(String::from_utf8_lossy(&again.get_output().stderr).contains("backup NIGHTLY already exists"));
    let listed = consumer().args(["list", "--json", "--storage", &url]).assert().success();
    let listed: serde_json::Value = serde_json::from_slice(&listed.get_output().stdout).unwrap();
    assert_eq!(listed[0]["name"], "NIGHTLY");
    assert_eq!(listed[0]["complete"], true);
    assert_eq!(listed[0]["proven"], true);
    assert_eq!(listed[0]["files"], 5);
    consumer().args(["delete", "NIGHTLY", "--storage", &url]).assert().success();
    let listed = consumer().args(["list", "--json", "--storage", &url]).assert().success();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&listed.get_output().stdout).unwrap(),
        serde_json::json!([])
    );
    assert!(!work.path().join("store/NIGHTLY").exists(), "every object is gone");
}

/// 4 pipes into put; get merges them into one stream mbstream extracts (each file's chunks in order), feeds 4 pipes
/// to an extract byte-identically, and extracts with proof.
#[test]
fn four_pipes_put_and_get_every_way() {
    let src = source();
    let work = tempfile::tempdir().unwrap();
    let url = storage(&work.path().join("store"));
    let put = ["put", "P4", "--storage", &url, "--object-size", "256K"];
    put_from_pipes(src.path(), &["--read-buffer-size", "64K"], &put, 4, &work.path().join("put-fifos"));
    for stream in 0..4 {
        assert!(stored_pack(&work.path().join("store"), "P4", stream, 0).is_some(), "stream {stream} stored");
    }

    // Merged on STDOUT: one valid stream, extracted by mbstream and by our extract (proof with the new counts).
    let merged = consumer().args(["get", "P4", "--storage", &url]).assert().success().get_output().stdout.clone();
    let mb = work.path().join("mb");
    mbstream_extract(&merged, &mb);
    assert_same_tree(src.path(), &mb);
    let ours = work.path().join("ours");
    consumer().arg("extract").arg("-C").arg(&ours).write_stdin(merged).assert().success();
    assert_same_tree(src.path(), &ours);

    // Into 4 pipes, read by an extract.
    let out = work.path().join("out");
    get_into_pipes_and_extract(&["get", "P4", "--storage", &url], 4, &work.path().join("get-fifos"), &out);
    assert_same_tree(src.path(), &out);

    // -C, and the wrong number of pipes.
    let direct = work.path().join("direct");
    consumer().args(["get", "P4", "--storage", &url, "-C"]).arg(&direct).assert().success();
    assert_same_tree(src.path(), &direct);
    let wrong = consumer()
        .args(["get", "P4", "--storage", &url, "--fifo-streams", "2", "--fifo-dir"])
        .arg(work.path().join("x"))
        .assert()
        .code(1);
    assert!(String::from_utf8_lossy(&wrong.get_output().stderr).contains("get it with --fifo-streams 4"));
}

/// A backup stored from 4 pipes, merged by `get` to STDOUT, is restored whole by the real `mbstream -x`, which
/// creates only a file's immediate parent directory: the merge puts a file out only once its directory can be
/// created, while another stream has a chunk due. The tree is 6 levels deep, every level with a file of its own,
/// the deeper ones small (batched, so they travel early), the shallower ones big (chunks spread over the pipes).
#[test]
fn get_merged_to_stdout_puts_out_no_file_before_mbstream_can_create_its_directory() {
    let src = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for branch in 0..3 {
        let mut dir = format!("b{branch}");
        for level in 0..6 {
            let size = if level < 2 { (600 << 10) + level * 7 } else { 100 + level };
            files.push((format!("{dir}/f{level}"), pseudo_random_bytes(size, (branch * 10 + level) as u64)));
            dir = format!("{dir}/d{level}");
        }
    }
    write_tree(src.path(), &files);
    let work = tempfile::tempdir().unwrap();
    let url = storage(&work.path().join("store"));
    let put = ["put", "deep", "--storage", &url, "--object-size", "256K"];
    put_from_pipes(src.path(), &["--read-buffer-size", "64K"], &put, 4, &work.path().join("put-fifos"));

    let merged = consumer().args(["get", "deep", "--storage", &url]).assert().success().get_output().stdout.clone();
    let mb = work.path().join("mb");
    mbstream_extract(&merged, &mb);
    assert_same_tree(src.path(), &mb);
}

/// A stream of ours cut short is never stored as complete: the put fails saying how to clean up, list says
/// incomplete, get refuses; --allow-partial gives back what is there, which extract refuses in turn.
#[test]
fn a_cut_stream_is_never_stored_as_complete() {
    let src = source();
    let stream = produce(src.path(), &["--read-buffer-size", "64K"]);
    let work = tempfile::tempdir().unwrap();
    let url = storage(&work.path().join("store"));
    let cut = stream[..stream.len() * 2 / 3].to_vec();
    let put = consumer().args(["put", "CUT", "--storage", &url, "--object-size", "256K"]).write_stdin(cut).assert();
    let stderr = String::from_utf8_lossy(&put.code(1).get_output().stderr).into_owned();
    assert!(stderr.contains("did not complete") && stderr.contains("consumer delete CUT"), "{stderr}");
    assert!(!work.path().join("store/CUT/index.json").exists());
    let listed = consumer().args(["list", "--json", "--storage", &url]).assert().success();
    let listed: serde_json::Value = serde_json::from_slice(&listed.get_output().stdout).unwrap();
    assert_eq!(listed[0]["complete"], false, "{listed}");
    let get = consumer().args(["get", "CUT", "--storage", &url]).assert().code(1);
    assert!(String::from_utf8_lossy(&get.get_output().stderr).contains("is incomplete"));
    let partial = consumer().args(["get", "CUT", "--storage", &url, "--allow-partial"]).assert().success();
    let partial = partial.get_output().stdout.clone();
    assert!(!partial.is_empty());
    let out = work.path().join("out");
    let extract = consumer().arg("extract").arg("-C").arg(&out).write_stdin(partial).assert().code(1);
    // The manifest's first pieces came early (format 2): what came of it is cut short; or none of it came.
    let stderr = String::from_utf8_lossy(&extract.get_output().stderr).into_owned();
    assert!(
        stderr.contains("without the backup's backup-manifest.json")
            || stderr.contains("backup-manifest.json is incomplete"),
        "{stderr}"
    );
}

fn input(stream: &[u8]) -> Vec<InputStream> {
    vec![InputStream { name: "memory".into(), file: Box::new(Cursor::new(stream.to_vec())) }]
}

/// A whole put of `stream` as `name` into `store`: the claim, then the stream.
fn put_memory(name: &str, store: &dyn store::Store, stream: &[u8], cancel: &Cancel) -> anyhow::Result<String> {
    let claim = consumer::claim::claim(name, store)?;
    consumer::put::put_streams(&put_config(name, 1 << 20), store, &claim, input(stream), &Signals::none(), cancel)
}

/// A service that dies mid-put, or refuses the index: the put fails and nothing is complete; with a healthy
/// service the same put completes and get brings the stream back.
#[test]
fn a_failing_store_never_leaves_a_complete_backup() {
    let src = source();
    let stream = produce(src.path(), &["--read-buffer-size", "64K"]);
    for faults in [
        // Past the claim (4 requests) and the first pack.
        Faults { fail_after: Some(6), ..Faults::default() },
        Faults { fail_puts_matching: Some("index.json".into()), ..Faults::default() },
        Faults { fail_puts_matching: Some("/0/0000000002".into()), ..Faults::default() },
    ] {
        let memory = MemoryStore::new();
        memory.set_faults(faults.clone());
        let cancel = Cancel::new();
        let result = put_memory("F", &memory, &stream, &cancel);
        let err = result.expect_err("the put must fail");
        assert!(format!("{err:#}").contains("injected fault"), "{faults:?}: {err:#}");
        // The store's failure comes through the put's threads as itself: its kind is there for the advice.
        let kind = consumer::storage::store_failure_kind(&err);
        assert_eq!(kind, Some(store::FailureKind::Retryable), "{faults:?}: {err:#}");
        assert!(!memory.keys().iter().any(|k| k.ends_with("index.json")), "{faults:?}: no index");
    }
    let memory = MemoryStore::new();
    put_memory("OK", &memory, &stream, &Cancel::new()).unwrap();
    // Requests: one per object of about --object-size, not one per chunk as xbcloud makes.
    let put_requests = memory.requests();
    let chunks = proto::ChunkReader::new(&stream[..]).count() as u64;
    // Besides the packs: the bucket, the claim (a listing, a put, a listing), the table of contents, the manifest,
    // the listing that records the packs' ETags, the index and its read.
    assert!(put_requests <= stream.len() as u64 / (1 << 20) + 10, "{put_requests} requests");
    assert!(put_requests * 2 < chunks, "{put_requests} requests for {chunks} chunks");
    let keys = memory.keys();
    assert_eq!(keys.last().map(String::as_str), Some("OK/index.json"), "{keys:?}");
    let listed = consumer::catalog::list(&memory).unwrap();
    assert!(listed[0].complete && listed[0].proven);
    // The index is written last and deleted first.
    consumer::catalog::delete(&memory, "OK").unwrap();
    assert!(memory.keys().is_empty());
}

/// get verifies every pack against the index: a pack changed in the store is an error naming it.
#[test]
fn a_damaged_pack_is_found_by_get() {
    let src = source();
    let stream = produce(src.path(), &["--read-buffer-size", "64K"]);
    let work = tempfile::tempdir().unwrap();
    let url = storage(&work.path().join("store"));
    consumer().args(["put", "D", "--storage", &url, "--object-size", "256K"]).write_stdin(stream).assert().success();
    let victim = stored_pack(&work.path().join("store"), "D", 0, 2).unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&victim, bytes).unwrap();
    let got = consumer().args(["get", "D", "--storage", &url, "-C"]).arg(work.path().join("out")).assert().code(1);
    let stderr = String::from_utf8_lossy(&got.get_output().stderr);
    assert!(stderr.contains("/0/0000000002.xbs") && stderr.contains("does not match the index"), "{stderr}");
    assert!(!work.path().join("out").join("ibdata1").exists());
}

/// The memory the store sees is bounded: `put --memory-limit` too small for its streams is refused up front.
#[test]
fn put_refuses_a_budget_that_cannot_hold_its_packs() {
    let assert = consumer()
        .args(["put", "X", "--storage", "file:///tmp/never-used", "--memory-limit", "16M", "--object-size", "8M"])
        .write_stdin(Vec::new())
        .assert()
        .code(2);
    assert!(String::from_utf8_lossy(&assert.get_output().stderr).contains("are needed"));
}
