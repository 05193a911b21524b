//! The transport recipes, end to end: `scripts/transport/stream-over-nc.sh` (both sides on 127.0.0.1, free ports) and
//! `scripts/transport/stream-over-ssh.sh` (against a real `sshd` the test starts on 127.0.0.1 with a throwaway host key and
//! user key). Each asserts the exit status of both sides, what they say, and what arrived.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/transport").join(name)
}

/// `bash scripts/transport/NAME ARGS…` with our binaries and STDOUT/STDERR piped.
fn recipe(name: &str, args: &[&str]) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(script(name))
        .args(args)
        .env("PRODUCER", PRODUCER)
        .env("CONSUMER", CONSUMER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A source tree of a few MiB spread over several files, so that 4 streams all carry data.
fn source_tree(root: &Path) {
    let chunk = 256 << 10;
    let mut files = sample_files(chunk);
    files.push(("big.ibd", pseudo_random_bytes(5 << 20, 9)));
    files.push(("db/t2.ibd", pseudo_random_bytes(3 << 20, 10)));
    write_tree(root, &files);
}

/// Waits until `pattern` (for `pgrep -f`) names a process, then returns its pids.
fn wait_for_process(pattern: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = Command::new("pgrep").args(["-f", pattern]).output().expect("pgrep");
        let pids: Vec<String> = String::from_utf8_lossy(&found.stdout).split_whitespace().map(String::from).collect();
        if !pids.is_empty() {
            return pids;
        }
        assert!(Instant::now() < deadline, "no process matching {pattern:?} within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until an extraction into `out` has staged a file: the transfer is under way.
fn wait_until_staged(out: &Path) {
    wait_until(SHORT, &format!("a file to arrive in {}", out.display()), || has_staged_a_file(out));
}

// ---------------------------------------------------------------------------------------------------------------
// nc

struct NcRun {
    receiver: Output,
    sender: Output,
}

/// `stream-over-nc.sh receive` on 127.0.0.1:`port` for `streams` connections, waiting up to `wait` seconds for
/// the sender, feeding `consumer CONSUMER_ARGS`.
fn nc_receive(port: &str, streams: &str, wait: &str, consumer_args: &[&str]) -> Command {
    let options = ["receive", "--listen", "127.0.0.1", "--port", port, "--streams", streams, "--wait", wait, "--"];
    recipe("stream-over-nc.sh", &[&options[..], consumer_args].concat())
}

/// `stream-over-nc.sh send` to 127.0.0.1:`port` over `streams` connections, waiting up to `wait` seconds for the
/// receiver, with `sender_options`, running `producer --source SRC`.
fn nc_send(port: &str, streams: &str, wait: &str, sender_options: &[&str], src: &Path) -> Command {
    let options = ["send", "--host", "127.0.0.1", "--port", port, "--streams", streams, "--wait", wait];
    recipe("stream-over-nc.sh", &[&options[..], sender_options, &["--", "--source", src.to_str().unwrap()]].concat())
}

/// Runs the receiver (`-- CONSUMER_ARGS`) and the sender (`SENDER_OPTIONS -- --source SRC`) on 127.0.0.1 with
/// `streams` connections; `during` runs once both are started (to break something), with the base port.
fn nc_run(
    streams: usize,
    consumer_args: &[&str],
    src: &Path,
    sender_options: &[&str],
    path_prefix: Option<&Path>,
    sender_first: bool,
    during: impl FnOnce(u16),
) -> NcRun {
    let port = free_port_run(streams as u16 + 1);
    let (port_s, streams_s) = (port.to_string(), streams.to_string());
    let mut receive = nc_receive(&port_s, &streams_s, "20", consumer_args);
    if let Some(prefix) = path_prefix {
        let path = std::env::var("PATH").unwrap_or_default();
        receive.env("PATH", format!("{}:{path}", prefix.display()));
    }
    let mut send = nc_send(&port_s, &streams_s, "20", sender_options, src);
    // Either side may start first: a sender that finds nobody listening retries until --wait.
    let (receiver, sender) = if sender_first {
        let sender = spawn(&mut send);
        thread::sleep(Duration::from_millis(700));
        (spawn(&mut receive), sender)
    } else {
        let receiver = spawn(&mut receive);
        (receiver, spawn(&mut send))
    };
    during(port);
    let sender = sender.wait_output(LONG);
    let receiver = receiver.wait_output(LONG);
    NcRun { receiver, sender }
}

#[test]
fn nc_four_connections_into_extract_arrive_whole_and_both_sides_check_every_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("src"), dir.path().join("out"));
    source_tree(&src);
    let out_s = out.to_str().unwrap().to_string();
    let run = nc_run(4, &["extract", "-C", &out_s], &src, &[], None, false, |_| {});
    assert!(run.receiver.status.success(), "receiver: {}", stderr(&run.receiver));
    assert!(run.sender.status.success(), "sender: {}", stderr(&run.sender));
    assert!(
        stderr(&run.receiver).contains("4 streams received; every stream's SHA-1 matches"),
        "{}",
        stderr(&run.receiver)
    );
    assert!(stderr(&run.sender).contains("the receiver matched every stream's SHA-1"), "{}", stderr(&run.sender));
    assert_same_tree(&src, &out);
}

#[test]
fn nc_into_put_stores_a_backup_that_get_restores_with_the_sender_started_first() {
    let dir = tempfile::tempdir().unwrap();
    let (src, store, out) = (dir.path().join("src"), dir.path().join("store"), dir.path().join("out"));
    source_tree(&src);
    let storage = format!("file://{}", store.display());
    let run = nc_run(2, &["put", "NIGHTLY", "--storage", &storage], &src, &[], None, true, |_| {});
    assert!(
        run.receiver.status.success() && run.sender.status.success(),
        "{}\n{}",
        stderr(&run.receiver),
        stderr(&run.sender)
    );
    run_ok(consumer_command().args(["get", "NIGHTLY", "--storage", &storage, "-C"]).arg(&out), LONG);
    assert_same_tree(&src, &out);
}

#[test]
fn nc_a_connection_cut_mid_stream_fails_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("src"), dir.path().join("out"));
    source_tree(&src);
    let out_s = out.to_str().unwrap().to_string();
    // 2 MB/s per stream: the transfer takes seconds, so the cut lands in the middle.
    let run = nc_run(2, &["extract", "-C", &out_s], &src, &["--rate", "2M"], None, false, |port| {
        let listener = format!("nc -d -l 127.0.0.1 {}", port + 2);
        let pids = wait_for_process(&listener, SHORT);
        wait_until_staged(&out);
        Command::new("kill").arg("-KILL").args(&pids).status().unwrap();
    });
    assert!(!run.receiver.status.success(), "receiver exited 0 after a cut: {}", stderr(&run.receiver));
    assert!(!run.sender.status.success(), "sender exited 0 after a cut: {}", stderr(&run.sender));
    assert!(stderr(&run.receiver).contains("error:"), "{}", stderr(&run.receiver));
    assert!(stderr(&run.sender).contains("error:"), "{}", stderr(&run.sender));
    assert!(!out.join("big.ibd").exists(), "a cut stream left files in place");
}

#[test]
fn nc_a_stream_whose_digest_differs_fails_both_sides_even_if_the_consumer_succeeded() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out, fake) = (dir.path().join("src"), dir.path().join("out"), dir.path().join("bin"));
    source_tree(&src);
    // The receiver's sha1sum lies: only the recipe's own comparison can notice.
    fs::create_dir_all(&fake).unwrap();
    fs::write(fake.join("sha1sum"), "#!/bin/sh\ncat > /dev/null\necho 0123456789012345678901234567890123456789  -\n")
        .unwrap();
    Command::new("chmod").arg("+x").arg(fake.join("sha1sum")).status().unwrap();
    // A put receiver hashes with tee | sha1sum (an extract receiver hashes in the consumer itself).
    let storage = format!("file://{}", out.display());
    let run = nc_run(2, &["put", "NIGHTLY", "--storage", &storage], &src, &[], Some(&fake), true, |_| {});
    assert!(!run.receiver.status.success(), "{}", stderr(&run.receiver));
    assert!(!run.sender.status.success(), "{}", stderr(&run.sender));
    assert!(stderr(&run.receiver).contains("SHA-1 mismatch"), "{}", stderr(&run.receiver));
    assert!(stderr(&run.sender).contains("the receiver says: SHA-1 mismatch"), "{}", stderr(&run.sender));
}

#[test]
fn nc_either_side_alone_gives_up_after_its_wait_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source_tree(&src);
    let port = free_port_run(3).to_string();
    let started = Instant::now();
    let sender = spawn(&mut nc_send(&port, "2", "2", &[], &src)).wait_output(SHORT);
    assert!(!sender.status.success());
    assert!(stderr(&sender).contains("no receiver answered on 127.0.0.1:"), "{}", stderr(&sender));
    let out = dir.path().join("out");
    let receiver =
        spawn(&mut nc_receive(&port, "2", "2", &["extract", "-C", out.to_str().unwrap()])).wait_output(SHORT);
    assert!(!receiver.status.success());
    assert!(stderr(&receiver).contains("no sender said hello"), "{}", stderr(&receiver));
    assert!(started.elapsed() < Duration::from_secs(25), "the waits took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------------------------
// ssh

/// A real `sshd` on 127.0.0.1 (a free port, through [`LocalServer`]: started again on another port should the one
/// picked be taken meanwhile) that accepts only a throwaway key, for the current user; killed when dropped.
struct Sshd {
    // Declared first so that it is dropped (killed) before the keys are removed.
    server: LocalServer,
    dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_key", "user_key"] {
            run_ok(
                Command::new(tool("ssh-keygen")).args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(d.join(key)),
                SHORT,
            );
        }
        fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd wants its privilege-separation directory (made by its package's service unit, which may not run).
        let _ = fs::create_dir_all("/run/sshd");
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"].into_iter().find(|p| Path::new(p).exists()).map(PathBuf::from);
        let sshd = sshd.unwrap_or_else(|| tool("sshd"));
        let server = LocalServer::start("sshd", |port, here| {
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PidFile {here}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n",
                d = d.display(),
                here = here.display()
            );
            fs::write(here.join("sshd_config"), config).unwrap();
            let mut command = Command::new(&sshd);
            command.args(["-D", "-e", "-f"]).arg(here.join("sshd_config"));
            command
        });
        Sshd { server, dir }
    }

    /// The `--ssh` command line that logs in with the throwaway key.
    fn ssh_command(&self) -> String {
        format!(
            "ssh -p {} -i {}/user_key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o LogLevel=ERROR",
            self.server.port,
            self.dir.path().display()
        )
    }

    fn destination(&self) -> String {
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        format!("{}@127.0.0.1", user.trim())
    }
}

/// An sshd, a scratch directory with a source tree in `src`, and `out` for the remote side.
fn ssh_fixture() -> (Sshd, tempfile::TempDir, PathBuf, PathBuf) {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("src"), dir.path().join("out"));
    source_tree(&src);
    (sshd, dir, src, out)
}

fn ssh_recipe(sshd: &Sshd, remote: &str, src: &Path, extra: &[&str]) -> Running {
    let (ssh, to) = (sshd.ssh_command(), sshd.destination());
    spawn(&mut recipe(
        "stream-over-ssh.sh",
        &[
            &["--to", &to, "--ssh", &ssh, "--streams", "4", "--wait", "20", "--remote", remote],
            extra,
            &["--", "--source", src.to_str().unwrap()],
        ]
        .concat(),
    ))
}

#[test]
fn ssh_four_connections_into_a_remote_extract_arrive_whole() {
    let (sshd, _dir, src, out) = ssh_fixture();
    let remote = format!("{CONSUMER} extract -C {}", out.display());
    let output = ssh_recipe(&sshd, &remote, &src, &[]).wait_output(LONG);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("4 streams over ssh"), "{}", stderr(&output));
    assert_same_tree(&src, &out);
}

#[test]
fn ssh_a_remote_consumer_that_dies_mid_stream_fails_the_recipe() {
    let (sshd, _dir, src, out) = ssh_fixture();
    // More than the connections, ssh and the pipes can hold (a few MiB each), so the kill lands mid-stream even
    // when the remote consumer starts late and finds what was buffered meanwhile.
    fs::File::create(src.join("huge.ibd")).unwrap().set_len(48 << 20).unwrap();
    let remote = format!("{CONSUMER} extract -C {}", out.display());
    let running = ssh_recipe(&sshd, &remote, &src, &["--rate", "8M"]);
    wait_until_staged(&out);
    let pids = wait_for_process(&format!("extract -C {} --fifo-dir", out.display()), SHORT);
    Command::new("kill").arg("-KILL").args(&pids).status().unwrap();
    let output = running.wait_output(LONG);
    assert!(!output.status.success(), "exited 0 although the remote consumer was killed: {}", stderr(&output));
    assert!(stderr(&output).contains("error:"), "{}", stderr(&output));
    assert!(!out.join("big.ibd").exists() && !out.join("huge.ibd").exists());
}

#[test]
fn ssh_a_remote_consumer_that_refuses_to_start_fails_the_recipe_quickly() {
    let (sshd, dir, src, _) = ssh_fixture();
    // The target is a regular file: extract refuses it at once.
    let target = dir.path().join("a-file");
    fs::write(&target, b"x").unwrap();
    let remote = format!("{CONSUMER} extract -C {}", target.display());
    let started = Instant::now();
    let output = ssh_recipe(&sshd, &remote, &src, &[]).wait_output(LONG);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("error:"), "{}", stderr(&output));
    assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
}
