//! `consumer put/get/list/delete` against a real S3 service: `s3s-fs` (strict SigV4) on 127.0.0.1, directly or
//! behind the `FaultyProxy` of `support`, which fails a fixed share of the requests (503 SlowDown, or a connection
//! reset) to prove that the retries work, and counts requests to prove that a permanent error is not retried.

use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// The bucket the tests use (created by the first `put`).
const BUCKET: &str = "backups";

/// Byte-exact through S3: one stream stored and fetched back is the producer's stream; four pipes stored, fetched
/// into four pipes, merged to STDOUT (for `mbstream -x`), or extracted with `-C` all restore the tree; `list`
/// shows both complete and proven; `delete` removes every object.
#[test]
fn s3_put_get_round_trip_is_byte_identical_through_stdout_and_four_pipes() {
    let server = S3Server::start();
    let storage = server.storage_args(&format!("{BUCKET}/nightly"));
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    // Every directory level holds a file: mbstream creates directories only for files.
    write_tree(
        &src,
        &[
            ("db/t1.ibd", pseudo_random_bytes(3 << 20, 11)),
            ("db/t1.frm", b"frm".to_vec()),
            ("db/sub/t2.ibd", pseudo_random_bytes((300 << 10) + 5, 12)),
            ("f", vec![7]),
            ("empty", Vec::new()),
        ],
    );
    let chunks = ["--read-buffer-size", "256K"];

    // One stream: captured first (the backup id makes every run's stream different), stored, fetched back.
    let stream_file = work.path().join("stream.xbs");
    fs::write(&stream_file, produce(&src, &chunks)).unwrap();
    let put = run_consumer(&["put", "single", "--object-size", "1M"], &storage, Some(&stream_file));
    let stderr = assert_success(&put, "put single");
    assert!(stderr.contains("stored single") && stderr.contains("proven against its manifest"), "{stderr}");
    let packs: Vec<_> = stored_packs(&server.root().join(BUCKET).join("nightly"), "single", 0);
    assert!(packs.len() >= 4, "3.3 MiB in 1M packs: {packs:?}");
    let got = run_consumer(&["get", "single"], &storage, None);
    assert_success(&got, "get single");
    assert!(got.stdout == fs::read(&stream_file).unwrap(), "get returns the producer's stream byte for byte");

    // Four pipes: producer and put running together.
    let with = |args: &[&str]| args.iter().map(|a| a.to_string()).chain(storage.iter().cloned()).collect::<Vec<_>>();
    let put = with(&["put", "four", "--object-size", "1M"]);
    let stderr = put_from_pipes(&src, &chunks, &put, 4, &work.path().join("fifos-in"));
    assert!(stderr.contains("proven against its manifest"), "{stderr}");
    for stream in 0..4 {
        let packs = stored_packs(&server.root().join(BUCKET).join("nightly"), "four", stream);
        assert!(!packs.is_empty(), "stream {stream} has packs");
    }

    // Fetched into four pipes, extracted from them.
    let out = work.path().join("out-pipes");
    get_into_pipes_and_extract(&with(&["get", "four"]), 4, &work.path().join("fifos-out"), &out);
    assert_same_tree(&src, &out);

    // Merged to STDOUT: one valid xbstream for the real mbstream.
    let merged = run_consumer(&["get", "four"], &storage, None);
    assert_success(&merged, "get four to STDOUT");
    let out = work.path().join("out-mbstream");
    mbstream_extract(&merged.stdout, &out);
    assert_same_tree(&src, &out);

    // Extracted and proven by get itself.
    let out = work.path().join("out-get");
    let extracted = run_consumer(&["get", "four", "-C", out.to_str().unwrap()], &storage, None);
    assert_success(&extracted, "get four -C");
    assert_same_tree(&src, &out);

    let list = list_json(&storage);
    assert_eq!(list.len(), 2, "{list:?}");
    for name in ["single", "four"] {
        let backup = listed(&list, name);
        assert_eq!(backup["complete"], true, "{backup}");
        assert_eq!(backup["proven"], true, "{backup}");
        assert_eq!(backup["files"], 5, "{backup}");
    }

    for name in ["single", "four"] {
        let deleted = run_consumer(&["delete", name], &storage, None);
        let stderr = assert_success(&deleted, &format!("delete {name}"));
        assert!(stderr.contains(&format!("deleted {name}")), "{stderr}");
    }
    assert_eq!(list_json(&storage), Vec::<serde_json::Value>::new(), "nothing is listed after the deletes");
    assert_eq!(server.stored_objects(&format!("{BUCKET}/nightly")), Vec::<PathBuf>::new(), "no object is left");
}

/// A producer killed (SIGKILL) while `put` stores its stream: the put fails saying how to clean up, the backup
/// lists as incomplete, `get` refuses it, and what `get --allow-partial` returns is a prefix of the producer's
/// stream that `extract` refuses (ours, without its manifest).
#[test]
fn s3_a_producer_killed_mid_put_is_never_complete() {
    let server = S3Server::start();
    let storage = server.storage_args(BUCKET);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(&src, &[("big", pseudo_random_bytes(4 << 20, 21)), ("small", b"x".to_vec())]);

    let mut producer = spawn(
        producer_to_stdout(&src).args(["--read-buffer-size", "64K"]).stdout(Stdio::piped()).stderr(Stdio::piped()),
    );
    let mut put = spawn(
        consumer_with_storage(&["put", "killed", "--object-size", "256K"], &storage)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    // A relay that keeps what the producer wrote, to compare with what the store holds. It stops reading after
    // 1 MiB (four packs' worth) until the producer is killed, so the producer, held back by its pipe, cannot have
    // finished by then however the machine schedules it.
    let (mut from_producer, mut to_put) = (producer.stdout(), put.stdin());
    let (killed_tx, killed_rx) = std::sync::mpsc::channel::<()>();
    let relay = spawn_named("relay", move || {
        let mut seen = Vec::new();
        let mut buffer = vec![0u8; 64 << 10];
        let mut held = false;
        loop {
            if !held && seen.len() >= 1 << 20 {
                held = true;
                let _ = killed_rx.recv();
            }
            match from_producer.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buffer[..n]);
                    if to_put.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        seen
    });

    // Mid-run: the first pack of stream 0 is stored.
    let bucket = server.root().join(BUCKET);
    wait_until(SHORT, "the first stored pack", || stored_pack(&bucket, "killed", 0, 0).is_some());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(producer.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let killed = producer.wait(SHORT);
    drop(killed_tx);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed), Some(9), "{killed}");
    let streamed = join_within(relay, SHORT);

    let stderr = assert_failure(&put.wait_output(SHORT), "a put whose producer was killed");
    let cleanup = format!("consumer delete killed --storage s3://{BUCKET}");
    assert!(stderr.contains("did not complete") && stderr.contains(&cleanup), "{stderr}");

    let list = list_json(&storage);
    let backup = listed(&list, "killed");
    assert_eq!(backup["complete"], false, "{backup}");
    assert!(backup["objects"].as_u64().unwrap() >= 1, "{backup}");

    let stderr = assert_failure(&run_consumer(&["get", "killed"], &storage, None), "get of an incomplete backup");
    assert!(stderr.contains("incomplete") && stderr.contains("--allow-partial"), "{stderr}");

    let partial = run_consumer(&["get", "killed", "--allow-partial"], &storage, None);
    assert_success(&partial, "get --allow-partial");
    assert!(!partial.stdout.is_empty(), "the stored packs come back");
    assert!(
        streamed.starts_with(&partial.stdout),
        "what is stored is a prefix of the producer's stream ({} of {} bytes)",
        partial.stdout.len(),
        streamed.len()
    );
    let out = work.path().join("out");
    let extract = consumer().arg("extract").arg("-C").arg(&out).write_stdin(partial.stdout).assert().code(1);
    let stderr = String::from_utf8_lossy(&extract.get_output().stderr);
    assert!(stderr.contains("is from our producer") && stderr.contains("without the backup's"), "{stderr}");
    assert!(!out.join(proto::MANIFEST_NAME).exists(), "nothing extracted as complete");
}

/// A fifth of the requests fail (alternately 503 SlowDown and a connection reset): put and get retry them and
/// succeed, and the tree comes back identical.
#[test]
fn s3_put_and_get_survive_a_fifth_of_requests_failing() {
    let server = S3Server::start();
    let proxy = FaultyProxy::start(&server.host_port(), 5);
    let storage = s3_storage_args(&proxy.endpoint(), BUCKET, server.access_key(), server.secret_key());
    survives_a_fifth_of_requests_failing(&storage, &proxy);
    let packs = stored_packs(&server.root().join(BUCKET), "flaky", 0);
    assert!(packs.len() >= 18, "about 20 packs: {packs:?}");
}

/// A wrong secret key: the put fails at once with the service's own error, after a handful of requests (a 403 is
/// not retried).
#[test]
fn s3_a_wrong_secret_key_is_a_clear_error_without_a_retry_storm() {
    let server = S3Server::start();
    let proxy = FaultyProxy::start(&server.host_port(), u64::MAX);
    let storage = s3_storage_args(&proxy.endpoint(), BUCKET, server.access_key(), "not-the-secret-key");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(&src, &[("f", b"data".to_vec())]);
    let stream_file = work.path().join("stream.xbs");
    fs::write(&stream_file, produce(&src, &[])).unwrap();

    let started = Instant::now();
    let put = run_consumer(&["put", "denied"], &storage, Some(&stream_file));
    let elapsed = started.elapsed();
    let stderr = assert_failure(&put, "a put with a wrong secret key");
    // Ten retries of a retryable error would back off for well over a minute; the bound leaves a loaded machine room.
    assert!(elapsed < Duration::from_secs(20), "failed after {elapsed:?}: {stderr}");
    assert!(
        stderr.contains("SignatureDoesNotMatch") || stderr.contains("AccessDenied") || stderr.contains("403"),
        "the service's error code: {stderr}"
    );
    assert!(stderr.contains("consumer: permanent: running it again fails the same way"), "{stderr}");
    assert!(proxy.requests() <= 3, "{} requests: a retry storm? {stderr}", proxy.requests());
    assert_eq!(proxy.faults(), 0);
    assert_eq!(proxy.problems(), Vec::<String>::new());
    assert_eq!(server.stored_objects(BUCKET), Vec::<PathBuf>::new(), "nothing stored");
}

/// Pipes the way Percona's xtrabackup writes them (one control byte before each xbstream) are stored like ours
/// and restore the identical tree.
#[test]
fn s3_percona_control_byte_pipes_are_accepted() {
    let server = S3Server::start();
    let storage = server.storage_args(BUCKET);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(
        &src,
        &[
            ("ibdata1", pseudo_random_bytes(700 << 10, 41)),
            ("db/t1.ibd", pseudo_random_bytes(300 << 10, 42)),
            ("db/t1.frm", b"frm".to_vec()),
        ],
    );
    let streams = produce_pipes(&src, 2, &["--read-buffer-size", "64K"]);
    assert!(streams.iter().all(|s| s.starts_with(proto::MAGIC)), "each pipe starts with the xbstream magic");

    let fifo_dir = work.path().join("fifos");
    let put = spawn(
        consumer_with_storage(&["put", "percona", "--fifo-streams", "2", "--fifo-timeout", "30"], &storage)
            .arg("--fifo-dir")
            .arg(&fifo_dir),
    );
    let writers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let path = fifo_dir.join(format!("thread_{i}"));
            spawn_named("percona pipe writer", move || -> io::Result<()> {
                // Never longer than the put's own --fifo-timeout; an error (not a panic) if the put made no pipes.
                let deadline = Instant::now() + SHORT;
                while !path.exists() {
                    if Instant::now() > deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no {}", path.display())));
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                let mut pipe = fs::OpenOptions::new().write(true).open(&path)?;
                pipe.write_all(&[0x01])?;
                pipe.write_all(&stream)
            })
        })
        .collect();
    let put = put.wait_output(LONG);
    let stderr = assert_success(&put, "put of Percona-style pipes");
    let written: Vec<io::Result<()>> = writers.into_iter().map(|w| join_within(w, SHORT)).collect();
    assert!(written.iter().all(Result::is_ok), "the pipes were written whole: {written:?}");
    assert!(stderr.contains("proven against its manifest"), "{stderr}");

    let out = work.path().join("out");
    let got = run_consumer(&["get", "percona", "-C", out.to_str().unwrap()], &storage, None);
    assert_success(&got, "get -C");
    assert_same_tree(&src, &out);
    let list = list_json(&storage);
    assert_eq!(listed(&list, "percona")["complete"], true, "{list:?}");
}

#[test]
fn s3_a_server_that_dies_mid_put_fails_the_put_and_leaves_no_index() {
    let server = S3Server::start();
    let storage = server.storage_args(BUCKET).join(" ");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(&src, &[("big", pseudo_random_bytes(4 << 20, 22))]);
    let pipeline = format!(
        "{} --source {} --stream=xbstream --read-buffer-size 64K --throttle 20 | {} put dies --object-size 256K \
         --max-retries 2 --max-backoff 200 {storage}",
        PRODUCER,
        src.display(),
        CONSUMER
    );
    let mut put = spawn(Command::new("bash").args(["-o", "pipefail", "-c", &pipeline]).stderr(Stdio::piped()));
    let bucket = server.root().join(BUCKET);
    wait_until(SHORT, "the first stored pack", || stored_pack(&bucket, "dies", 0, 0).is_some());
    let first_pack = stored_pack(&bucket, "dies", 0, 0).unwrap();
    server.kill();
    let started = Instant::now();
    let status = put.wait(LONG);
    let output = put.wait_output(SHORT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("did not complete") && stderr.contains("consumer delete dies"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "a dead server took {:?} to give up on", started.elapsed());
    let index = server.root().join(BUCKET).join("dies/index.json");
    assert!(first_pack.is_file() && !index.exists(), "no index may mark the backup complete");
}

#[test]
fn s3_a_server_that_dies_mid_get_fails_the_get_and_poisons_the_stream_it_wrote() {
    let server = S3Server::start();
    let storage = server.storage_args(BUCKET);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(&src, &[("big", pseudo_random_bytes(24 << 20, 23)), ("small", b"y".to_vec())]);
    let stream = work.path().join("stream.xbs");
    fs::write(&stream, produce(&src, &[])).unwrap();
    let put = run_consumer(&["put", "big", "--object-size", "256K"], &storage, Some(&stream));
    assert_success(&put, "put big");

    // The get writes to a pipe this test reads slowly: after the first MiB, the server dies.
    let mut get = spawn(
        consumer_with_storage(
            &["get", "big", "--parallel", "1", "--max-retries", "1", "--max-backoff", "100"],
            &storage,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped()),
    );
    let mut from_get = get.stdout();
    let mut got = vec![0u8; 1 << 20];
    from_get.read_exact(&mut got).unwrap();
    server.kill();
    let reader = spawn_named("rest of the get", move || {
        let mut rest = Vec::new();
        let _ = from_get.read_to_end(&mut rest);
        rest
    });
    let status = get.wait(LONG);
    got.extend(join_within(reader, SHORT));
    let output = get.wait_output(SHORT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "get exited 0 with its server dead: {stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    // A server that went away may come back: the error says a later get may succeed.
    assert!(stderr.contains("consumer: retryable: something outside was unavailable or too slow"), "{stderr}");
    assert!(got.len() < fs::metadata(&stream).unwrap().len() as usize + 1024, "more bytes than were stored");
    // What it wrote is never a valid backup: our consumer refuses it.
    let out = work.path().join("out");
    let extracted = run_with_stdin(consumer_command().arg("extract").arg("-C").arg(&out), &got);
    assert_eq!(extracted.status.code(), Some(1), "{}", String::from_utf8_lossy(&extracted.stderr));
}

#[test]
fn s3_slow_responses_are_waited_for_and_a_stalled_server_is_a_timeout_error() {
    let server = S3Server::start();
    let proxy = FaultyProxy::start(&server.host_port(), u64::MAX);
    let storage = s3_storage_args(&proxy.endpoint(), BUCKET, server.access_key(), server.secret_key());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(&src, &[("data", pseudo_random_bytes(1 << 20, 24)), ("small", b"z".to_vec())]);
    let stream = work.path().join("stream.xbs");
    fs::write(&stream, produce(&src, &["--read-buffer-size", "64K"])).unwrap();
    // Slow: every request waits 300 ms. Everything still arrives.
    proxy.set_delay(Duration::from_millis(300));
    assert_success(&run_consumer(&["put", "slow", "--object-size", "256K"], &storage, Some(&stream)), "slow put");
    let out = work.path().join("out");
    assert_success(&run_consumer(&["get", "slow", "-C", out.to_str().unwrap()], &storage, None), "slow get");
    assert_same_tree(&src, &out);
    // Stalled: 5 s per request against a 1 s request timeout: a clear error, after a bounded number of tries.
    proxy.set_delay(Duration::from_secs(5));
    let started = Instant::now();
    let out = work.path().join("out-stalled");
    let args =
        ["get", "slow", "-C", out.to_str().unwrap(), "--timeout", "1", "--max-retries", "1", "--max-backoff", "100"];
    let stalled = run_consumer(&args, &storage, None);
    let stderr = String::from_utf8_lossy(&stalled.stderr).to_lowercase();
    assert_eq!(stalled.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("timed out") || stderr.contains("timeout"), "{stderr}");
    assert!(stderr.contains("consumer: retryable: something outside was unavailable or too slow"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "a stalled server held the get for {:?}", started.elapsed());
}
