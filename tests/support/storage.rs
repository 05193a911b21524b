//! The consumer's store commands (`put`, `get`, `list`, `delete` with `--storage …` arguments) and what they leave
//! in a store: its catalog as `list --json` shows it, its raw objects, and the packs of a store kept on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use super::commands::{consumer_command, produce};
use super::fault_proxy::FaultyProxy;
use super::process::{assert_success, spawn, LONG};
use super::tree::{assert_same_tree, list_tree, pseudo_random_bytes, write_tree};

/// `consumer ARGS STORAGE` (std, for running beside another process) with its STDERR piped; `storage` is the
/// store's arguments (`--storage URL` and its credentials, as the servers' helpers make them).
pub fn consumer_with_storage(args: &[&str], storage: &[String]) -> Command {
    let mut command = consumer_command();
    command.args(args).args(storage).stderr(Stdio::piped());
    command
}

/// Runs `consumer ARGS STORAGE` with STDIN from `stdin` (or nothing) to completion; returns its output.
pub fn run_consumer(args: &[&str], storage: &[String], stdin: Option<&Path>) -> Output {
    let mut command = consumer_with_storage(args, storage);
    command.stdout(Stdio::piped());
    match stdin {
        Some(path) => command.stdin(std::fs::File::open(path).unwrap()),
        None => command.stdin(Stdio::null()),
    };
    spawn(&mut command).wait_output(LONG)
}

/// `consumer list --json`: the backups in the store.
pub fn list_json(storage: &[String]) -> Vec<serde_json::Value> {
    let output = run_consumer(&["list", "--json"], storage, None);
    assert_success(&output, "consumer list --json");
    serde_json::from_slice::<serde_json::Value>(&output.stdout)
        .unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
        .as_array()
        .expect("list --json is an array")
        .clone()
}

/// The entry for backup `name` in a `list --json`.
pub fn listed<'a>(list: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    list.iter().find(|b| b["name"] == name).unwrap_or_else(|| panic!("{name} is not listed: {list:?}"))
}

/// The settings of a put run in the test process (`consumer::put::put_streams`): backup `name`, packs of
/// `object_size`, 6 pack buffers, 4 uploads in flight, chunks up to 1 MiB.
pub fn put_config(name: &str, object_size: usize) -> consumer::put::PutConfig {
    consumer::put::PutConfig {
        name: name.into(),
        input: transport::Endpoint::Stdio,
        idle_timeout: None,
        max_chunk: 1 << 20,
        object_size,
        packs: 6,
        parallel: 4,
        manifest_limit: 16 << 20,
        progress: runtime::progress::ProgressMode::Quiet,
        encrypt: None,
    }
}

/// The store the arguments name, opened as the consumer opens it (to look at it, or damage it, from below the
/// backup catalog).
pub fn open_store(storage: &[String]) -> Box<dyn store::Store> {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        storage: consumer::storage::StorageArgs,
    }
    let args = Args::parse_from(std::iter::once("test".to_string()).chain(storage.iter().cloned()));
    args.storage.open().unwrap()
}

/// Every object key in the store the arguments name, listed straight through the store (not the backup catalog).
pub fn raw_objects(storage: &[String]) -> Vec<String> {
    open_store(storage).list("").unwrap().into_iter().map(|object| object.key).collect()
}

/// Pack `seq` of stream `stream` of backup `name` in a store kept in directory `root` (a `file://` store, or an S3
/// server's bucket directory), whichever put stored it: `root/<name>/<put>/<stream>/<seq>.xbs`.
pub fn stored_pack(root: &Path, name: &str, stream: usize, seq: u64) -> Option<PathBuf> {
    let puts = std::fs::read_dir(root.join(name)).ok()?;
    puts.filter_map(Result::ok)
        .map(|put| put.path().join(stream.to_string()).join(format!("{seq:010}.xbs")))
        .find(|pack| pack.is_file())
}

/// Every pack of stream `stream` of backup `name` in a store kept in directory `root` (see [`stored_pack`]).
pub fn stored_packs(root: &Path, name: &str, stream: usize) -> Vec<PathBuf> {
    match stored_pack(root, name, stream, 0) {
        Some(first) => list_tree(first.parent().expect("a pack has a directory")),
        None => Vec::new(),
    }
}

/// Retries, on every cloud (S3 too): a put and a get through a proxy that fails every fifth request (alternately a
/// 503 and a connection reset) succeed, proven, and both kinds of fault happened in each.
pub fn survives_a_fifth_of_requests_failing(storage: &[String], proxy: &FaultyProxy) {
    let mut storage = storage.to_vec();
    storage.extend(["--max-backoff", "200"].map(str::to_owned));
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let names: Vec<String> = (0..4).map(|i| format!("db/t{i}.ibd")).collect();
    let mut files: Vec<(&str, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), pseudo_random_bytes((5 << 20) / 4 + i * 999, 40 + i as u64)))
        .collect();
    files.push(("ibdata1", b"ib".to_vec()));
    write_tree(&src, &files);
    let stream = work.path().join("stream.xbs");
    std::fs::write(&stream, produce(&src, &["--read-buffer-size", "64K"])).unwrap();

    let started = Instant::now();
    let put = run_consumer(&["put", "flaky", "--object-size", "256K"], &storage, Some(&stream));
    let stderr = assert_success(&put, "put through the faulty proxy");
    assert!(stderr.contains("proven against its manifest"), "{stderr}");
    let put_faults = proxy.faults();
    let out = work.path().join("out");
    let got = run_consumer(&["get", "flaky", "-C", out.to_str().unwrap()], &storage, None);
    assert_success(&got, "get -C through the faulty proxy");
    assert_same_tree(&src, &out);
    eprintln!(
        "{} requests ({} with chunked bodies), {} faulted ({put_faults} during the put), in {:.1} s",
        proxy.requests(),
        proxy.chunked_requests(),
        proxy.faults(),
        started.elapsed().as_secs_f64()
    );
    // Faults 1, 3, … are 503s and 2, 4, … resets: both kinds happened, in the put and in the get.
    assert!(put_faults >= 2 && proxy.faults() > put_faults + 1, "faults: {put_faults}, then {}", proxy.faults());
    assert_eq!(proxy.faults(), proxy.requests() / 5);
    assert_eq!(proxy.problems(), Vec::<String>::new());
}

/// The index of backup `name`, read through the store.
pub fn index(storage: &[String], name: &str) -> serde_json::Value {
    let store = open_store(storage);
    let bytes = store::get_small(store.as_ref(), &format!("{name}/index.json"), 1 << 20).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The keys of every pack of backup `name`, in index order.
pub fn pack_keys(storage: &[String], name: &str) -> Vec<String> {
    let index = index(storage, name);
    let streams = index["streams"].as_array().unwrap();
    streams
        .iter()
        .flat_map(|s| s["packs"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap().to_owned()))
        .collect()
}
