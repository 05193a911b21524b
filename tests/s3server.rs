//! `consumer put/get/list/delete` against a real S3 service: `s3s-fs` (strict SigV4) on 127.0.0.1, directly or
//! behind [`FaultyProxy`], a small HTTP/1.1 proxy that fails a fixed share of the requests (503 SlowDown, or a
//! connection reset) to prove that the retries work, and that counts requests to prove that a permanent error is
//! not retried.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::util::*;

/// The throwaway credentials every [`S3Server`] accepts.
const ACCESS_KEY: &str = "xbkit-test-access";
const SECRET_KEY: &str = "xbkit-test-secret-0123456789";

/// The bucket the tests use (created by the first `put`).
const BUCKET: &str = "backups";

// ---------------------------------------------------------------------------------------------------------------
// The server.

/// A running `s3s-fs` on 127.0.0.1 (a free port, a temporary root directory, fixed throwaway keys), killed and
/// reaped when dropped.
pub struct S3Server {
    server: LocalServer,
}

impl S3Server {
    /// Starts the server and waits until it accepts connections (see [`LocalServer::start`]).
    pub fn start() -> S3Server {
        let server = LocalServer::start("s3s-fs", |port, dir| {
            let root = dir.join("data");
            fs::create_dir_all(&root).unwrap();
            let mut command = Command::new(tool("s3s-fs"));
            command
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&root)
                .env_remove("RUST_LOG");
            command
        });
        S3Server { server }
    }

    /// Kills the server at once (SIGKILL), as a crash would; its directory stays until it is dropped.
    pub fn kill(&self) {
        self.server.kill();
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.host_port())
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    /// The access key it accepts.
    pub fn access_key(&self) -> &'static str {
        ACCESS_KEY
    }

    /// The secret key it accepts.
    pub fn secret_key(&self) -> &'static str {
        SECRET_KEY
    }

    /// The directory it stores buckets in (bucket `B`'s object `K` is the file `root/B/K`).
    pub fn root(&self) -> PathBuf {
        self.server.dir.path().join("data")
    }

    /// `--storage s3://BUCKET_PREFIX --s3-endpoint … --s3-access-key … --s3-secret-key …` for the consumer.
    pub fn storage_args(&self, bucket_prefix: &str) -> Vec<String> {
        storage_args(&self.endpoint(), bucket_prefix, self.access_key(), self.secret_key())
    }
}

/// The consumer's storage arguments for any endpoint and keys.
fn storage_args(endpoint: &str, bucket_prefix: &str, access_key: &str, secret_key: &str) -> Vec<String> {
    [
        "--storage",
        &format!("s3://{bucket_prefix}"),
        "--s3-endpoint",
        endpoint,
        "--s3-access-key",
        access_key,
        "--s3-secret-key",
        secret_key,
    ]
    .map(str::to_owned)
    .to_vec()
}

// ---------------------------------------------------------------------------------------------------------------
// The faulty proxy.

/// Every proxy socket's read and write timeout: nothing in the proxy waits longer.
const PROXY_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A small HTTP/1.1 proxy on 127.0.0.1 (std only, a thread per connection) in front of an S3 server. Every request
/// is counted; every `fault_every`-th one fails, alternately with `503 Service Unavailable` and an S3 `SlowDown`
/// error, or with a connection reset (after the whole request was read, before any answer). The others are
/// forwarded unchanged, but for `Connection: close` (one request per connection, both ways), and the upstream's
/// answer is streamed back until it closes. The `Host` header is forwarded as the client sent it: SigV4 signs it,
/// and the server checks the signature over the headers it receives, not against its own address.
/// Dropping the proxy stops its threads.
pub struct FaultyProxy {
    address: SocketAddr,
    shared: Arc<ProxyShared>,
    acceptor: Option<JoinHandle<()>>,
}

struct ProxyShared {
    upstream: SocketAddr,
    fault_every: u64,
    /// Milliseconds to wait before forwarding each request (a slow server).
    delay_ms: AtomicU64,
    stop: AtomicBool,
    requests: AtomicU64,
    faults: AtomicU64,
    chunked: AtomicU64,
    problems: Mutex<Vec<String>>,
}

impl ProxyShared {
    fn problem(&self, what: String) {
        self.problems.lock().unwrap().push(what);
    }
}

impl FaultyProxy {
    /// Starts a proxy to `upstream_host_port` (`127.0.0.1:PORT`) failing every `fault_every`-th request
    /// (`u64::MAX`: none).
    pub fn start(upstream_host_port: &str, fault_every: u64) -> FaultyProxy {
        let upstream = upstream_host_port.to_socket_addrs().unwrap().next().expect("an upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            upstream,
            fault_every: fault_every.max(1),
            delay_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            chunked: AtomicU64::new(0),
            problems: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            spawn_named("proxy acceptor", move || accept_loop(&listener, &shared))
        };
        FaultyProxy { address, shared, acceptor: Some(acceptor) }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// From now on, every request waits `delay` before it is forwarded: a slow (or, beyond the client's
    /// timeout, a stalled) server.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests received so far (faulted ones included).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests failed on purpose so far (503s and resets).
    pub fn faults(&self) -> u64 {
        self.shared.faults.load(Ordering::SeqCst)
    }

    /// Requests whose body came with `Transfer-Encoding: chunked`.
    pub fn chunked_requests(&self) -> u64 {
        self.shared.chunked.load(Ordering::SeqCst)
    }

    /// What the proxy could not do (a malformed request, an unreachable upstream…): empty in a sound run.
    pub fn problems(&self) -> Vec<String> {
        self.shared.problems.lock().unwrap().clone()
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Unblocks the accept; the acceptor sees the flag and serves nothing more.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(5));
        if let Some(acceptor) = self.acceptor.take() {
            // Bounded: the connection threads it joins are bounded by their socket timeouts. Never panic in drop.
            let deadline = Instant::now() + PROXY_IO_TIMEOUT * 3;
            while !acceptor.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if acceptor.is_finished() {
                let _ = acceptor.join();
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<ProxyShared>) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    for accepted in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        match accepted {
            Ok(client) => {
                let shared = Arc::clone(shared);
                connections.push(spawn_named("proxy connection", move || {
                    if let Err(e) = serve(client, &shared) {
                        shared.problem(e);
                    }
                }));
            }
            Err(e) => shared.problem(format!("accept: {e}")),
        }
        let (done, running): (Vec<_>, Vec<_>) = connections.into_iter().partition(|c| c.is_finished());
        for connection in done {
            if connection.join().is_err() {
                shared.problem("a connection thread panicked".into());
            }
        }
        connections = running;
    }
    for connection in connections {
        if connection.join().is_err() {
            shared.problem("a connection thread panicked".into());
        }
    }
}

/// How a request's body is delimited.
enum Body {
    None,
    Length(u64),
    Chunked,
}

/// One connection: one request, faulted or forwarded.
fn serve(client: TcpStream, shared: &ProxyShared) -> Result<(), String> {
    let context = |what: &'static str| move |e: io::Error| format!("{what}: {e}");
    client.set_read_timeout(Some(PROXY_IO_TIMEOUT)).map_err(context("client timeout"))?;
    client.set_write_timeout(Some(PROXY_IO_TIMEOUT)).map_err(context("client timeout"))?;
    let mut from_client = BufReader::new(client.try_clone().map_err(context("client clone"))?);
    let mut to_client = client;
    let Some(head) = read_head(&mut from_client).map_err(context("request head"))? else {
        return Ok(()); // A connection that sent nothing.
    };
    let number = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let body = body_of(&head)?;
    if matches!(body, Body::Chunked) {
        shared.chunked.fetch_add(1, Ordering::SeqCst);
    }
    let expects_continue = header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        to_client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(context("100 Continue"))?;
    }

    if number % shared.fault_every == 0 {
        let fault = shared.faults.fetch_add(1, Ordering::SeqCst) + 1;
        // The whole request first, so that the client's send has completed when the fault comes.
        copy_body(&mut from_client, &mut io::sink(), &body).map_err(context("request body"))?;
        if fault % 2 == 1 {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce \
                 your request rate (fault {fault} injected by the test proxy).</Message><RequestId>fault-{fault}\
                 </RequestId></Error>"
            );
            let response = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{xml}",
                xml.len()
            );
            to_client.write_all(response.as_bytes()).map_err(context("503 response"))?;
            let _ = to_client.shutdown(Shutdown::Write);
        } else {
            // SO_LINGER 0: closing sends a RST instead of a FIN.
            let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
            nix::sys::socket::setsockopt(&to_client, nix::sys::socket::sockopt::Linger, &linger)
                .map_err(|e| format!("SO_LINGER: {e}"))?;
            drop(from_client);
            drop(to_client);
        }
        return Ok(());
    }

    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        thread::sleep(Duration::from_millis(delay));
    }
    let upstream = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(10))
        .map_err(|e| format!("connect to {}: {e}", shared.upstream))?;
    upstream.set_read_timeout(Some(PROXY_IO_TIMEOUT)).map_err(context("upstream timeout"))?;
    upstream.set_write_timeout(Some(PROXY_IO_TIMEOUT)).map_err(context("upstream timeout"))?;
    let mut to_upstream = upstream.try_clone().map_err(context("upstream clone"))?;
    let request_head = close_after(&head, &["connection", "keep-alive", "proxy-connection", "expect"]);
    to_upstream.write_all(request_head.as_bytes()).map_err(context("forward request head"))?;
    copy_body(&mut from_client, &mut to_upstream, &body).map_err(context("forward request body"))?;
    to_upstream.flush().map_err(context("forward request"))?;

    let mut from_upstream = BufReader::new(upstream);
    let response = read_head(&mut from_upstream)
        .map_err(context("response head"))?
        .ok_or_else(|| format!("the upstream closed without answering request {number} ({})", head[0]))?;
    let response_head = close_after(&response, &["connection", "keep-alive"]);
    to_client.write_all(response_head.as_bytes()).map_err(context("response head to the client"))?;
    io::copy(&mut from_upstream, &mut to_client).map_err(context("response body to the client"))?;
    let _ = to_client.shutdown(Shutdown::Write);
    Ok(())
}

/// Reads a message head (start line and headers, up to the empty line) as lines without their CRLF; `None` if the
/// peer closed before sending a byte.
fn read_head(from: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = from.read_until(b'\n', &mut line)?;
        if n == 0 {
            if lines.is_empty() && total == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the head ended early"));
        }
        total += n;
        if total > 64 << 10 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a head over 64 KiB"));
        }
        let text = String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(text.to_owned());
    }
}

/// The value of header `name` (case-insensitive), if present.
fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head[1..]
        .iter()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}

/// How the request's body is delimited (RFC 9112 §6.3: chunked wins over a length).
fn body_of(head: &[String]) -> Result<Body, String> {
    if let Some(coding) = header(head, "transfer-encoding") {
        if coding.eq_ignore_ascii_case("chunked") {
            return Ok(Body::Chunked);
        }
        return Err(format!("unsupported Transfer-Encoding {coding:?} in {}", head[0]));
    }
    match header(head, "content-length") {
        Some(length) => {
            length.parse().map(Body::Length).map_err(|_| format!("bad Content-Length {length:?} in {}", head[0]))
        }
        None => Ok(Body::None),
    }
}

/// The head again, without the `drop` headers, with `Connection: close`, ending in the empty line.
fn close_after(head: &[String], drop: &[&str]) -> String {
    let mut out = format!("{}\r\n", head[0]);
    for line in &head[1..] {
        let name = line.split_once(':').map_or(line.as_str(), |(name, _)| name).trim();
        if !drop.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

/// Copies a request body as it came (chunked framing included) from `from` to `to`.
fn copy_body(from: &mut impl BufRead, to: &mut impl Write, body: &Body) -> io::Result<()> {
    let short = || io::Error::new(io::ErrorKind::UnexpectedEof, "the body ended early");
    match body {
        Body::None => Ok(()),
        Body::Length(length) => match io::copy(&mut from.take(*length), to)? {
            n if n == *length => Ok(()),
            _ => Err(short()),
        },
        Body::Chunked => loop {
            let mut line = Vec::new();
            if from.read_until(b'\n', &mut line)? == 0 {
                return Err(short());
            }
            to.write_all(&line)?;
            let text = String::from_utf8_lossy(&line);
            let size = text.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {size:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut trailer = Vec::new();
                    if from.read_until(b'\n', &mut trailer)? == 0 {
                        return Err(short());
                    }
                    to.write_all(&trailer)?;
                    if trailer == b"\r\n" || trailer == b"\n" {
                        return Ok(());
                    }
                }
            }
            // The chunk's data and its CRLF.
            if io::copy(&mut from.take(size + 2), to)? != size + 2 {
                return Err(short());
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers of the tests.

/// The regular files the server holds for `bucket_prefix` (relative paths under its root).
fn stored_objects(server: &S3Server, bucket_prefix: &str) -> Vec<PathBuf> {
    let dir = server.root().join(bucket_prefix);
    if !dir.exists() {
        return Vec::new();
    }
    list_tree(&dir)
}

/// Runs the producer on `src` to STDOUT (`extra` arguments) and returns its stream.
fn produce(src: &Path, extra: &[&str]) -> Vec<u8> {
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_producer")).arg("--source").arg(src).arg("--stream=xbstream").args(extra),
        LONG,
    )
}

/// Polls `condition` every 10 ms until it holds, failing the test after `limit`.
fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The tests.

/// The proxy itself, against a std echo server: a chunked body (extensions, trailer) and a sized one go through
/// verbatim with the client's Host and `Connection: close` both ways; requests 2 and 4 of `fault_every = 2` get a
/// 503 SlowDown and a reset.
#[test]
fn s3_the_faulty_proxy_forwards_verbatim_and_fails_every_nth_request() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_address = upstream.local_addr().unwrap().to_string();
    // Answers each request with what it received: the head's lines, an empty line, the body as framed.
    let echo = spawn_named("echo upstream", move || {
        for _ in 0..2 {
            let (mut connection, _) = upstream.accept().unwrap();
            connection.set_read_timeout(Some(SHORT)).unwrap();
            let mut reader = BufReader::new(connection.try_clone().unwrap());
            let head = read_head(&mut reader).unwrap().expect("a request");
            let mut echoed = format!("{}\n\n", head.join("\n")).into_bytes();
            copy_body(&mut reader, &mut echoed, &body_of(&head).unwrap()).unwrap();
            let answer =
                format!("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: {}\r\n\r\n", echoed.len());
            connection.write_all(answer.as_bytes()).unwrap();
            connection.write_all(&echoed).unwrap();
        }
    });
    let proxy = FaultyProxy::start(&upstream_address, 2);
    let send = |request: &[u8]| -> io::Result<String> {
        let mut stream = TcpStream::connect(proxy.address)?;
        stream.set_read_timeout(Some(SHORT))?;
        stream.write_all(request)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(String::from_utf8(response).unwrap())
    };

    let body = "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let request = format!(
        "PUT /b/k HTTP/1.1\r\nHost: s3.example:9000\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n{body}"
    );
    let response = send(request.as_bytes()).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n") && response.contains("\r\nConnection: close\r\n"),
        "{response}"
    );
    assert!(!response.to_ascii_lowercase().contains("keep-alive"), "hop-by-hop headers dropped both ways: {response}");
    let forwarded = "PUT /b/k HTTP/1.1\nHost: s3.example:9000\nTransfer-Encoding: chunked\nConnection: close\n\n";
    assert!(response.ends_with(&format!("{forwarded}{body}")), "{response}");

    let response = send(b"GET /b?list-type=2 HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert!(response.starts_with("HTTP/1.1 503 ") && response.contains("<Code>SlowDown</Code>"), "{response}");

    let response = send(b"PUT /b/k2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc").unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n")
            && response.ends_with("Content-Length: 3\nConnection: close\n\nabc"),
        "{response}"
    );

    let reset = send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").expect_err("request 4 is reset");
    assert_eq!(reset.kind(), io::ErrorKind::ConnectionReset, "{reset}");

    join_within(echo, SHORT);
    assert_eq!((proxy.requests(), proxy.faults(), proxy.chunked_requests()), (4, 2, 1));
    assert_eq!(proxy.problems(), Vec::<String>::new());
}

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
    assert_eq!(stored_objects(&server, &format!("{BUCKET}/nightly")), Vec::<PathBuf>::new(), "no object is left");
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
        Command::new(env!("CARGO_BIN_EXE_producer"))
            .arg("--source")
            .arg(&src)
            .args(["--stream=xbstream", "--read-buffer-size", "64K", "--throttle", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut put = spawn(
        consumer_command(&["put", "killed", "--object-size", "256K"], &storage)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    // A relay that keeps what the producer wrote, to compare with what the store holds.
    let (mut from_producer, mut to_put) = (producer.stdout(), put.stdin());
    let relay = spawn_named("relay", move || {
        let mut seen = Vec::new();
        let mut buffer = vec![0u8; 64 << 10];
        loop {
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

    // Mid-run: the first pack of stream 0 is stored (~4 of the 64 chunks the throttle lets out over ~3 s).
    let bucket = server.root().join(BUCKET);
    wait_until(SHORT, "the first stored pack", || stored_pack(&bucket, "killed", 0, 0).is_some());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(producer.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let killed = producer.wait(SHORT);
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
    let storage = storage_args(&proxy.endpoint(), BUCKET, server.access_key(), server.secret_key());
    crate::clouds::survives_a_fifth_of_requests_failing(&storage, &proxy);
    let packs = stored_packs(&server.root().join(BUCKET), "flaky", 0);
    assert!(packs.len() >= 18, "about 20 packs: {packs:?}");
}

/// A wrong secret key: the put fails at once with the service's own error, after a handful of requests (a 403 is
/// not retried).
#[test]
fn s3_a_wrong_secret_key_is_a_clear_error_without_a_retry_storm() {
    let server = S3Server::start();
    let proxy = FaultyProxy::start(&server.host_port(), u64::MAX);
    let storage = storage_args(&proxy.endpoint(), BUCKET, server.access_key(), "not-the-secret-key");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(&src, &[("f", b"data".to_vec())]);
    let stream_file = work.path().join("stream.xbs");
    fs::write(&stream_file, produce(&src, &[])).unwrap();

    let started = Instant::now();
    let put = run_consumer(&["put", "denied"], &storage, Some(&stream_file));
    let elapsed = started.elapsed();
    let stderr = assert_failure(&put, "a put with a wrong secret key");
    assert!(elapsed < Duration::from_secs(5), "failed after {elapsed:?}: {stderr}");
    assert!(
        stderr.contains("SignatureDoesNotMatch") || stderr.contains("AccessDenied") || stderr.contains("403"),
        "the service's error code: {stderr}"
    );
    assert!(proxy.requests() <= 3, "{} requests: a retry storm? {stderr}", proxy.requests());
    assert_eq!(proxy.faults(), 0);
    assert_eq!(proxy.problems(), Vec::<String>::new());
    assert_eq!(stored_objects(&server, BUCKET), Vec::<PathBuf>::new(), "nothing stored");
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
        consumer_command(&["put", "percona", "--fifo-streams", "2", "--fifo-timeout", "30"], &storage)
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
        env!("CARGO_BIN_EXE_producer"),
        src.display(),
        env!("CARGO_BIN_EXE_consumer")
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
    fs::write(
        &stream,
        run_ok(Command::new(env!("CARGO_BIN_EXE_producer")).arg("--source").arg(&src).arg("--stream=xbstream"), LONG),
    )
    .unwrap();
    let put = run_consumer(&["put", "big", "--object-size", "256K"], &storage, Some(&stream));
    assert_success(&put, "put big");

    // The get writes to a pipe this test reads slowly: after the first MiB, the server dies.
    let mut get = spawn(
        consumer_command(&["get", "big", "--parallel", "1", "--max-retries", "1", "--max-backoff", "100"], &storage)
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
    assert!(got.len() < fs::metadata(&stream).unwrap().len() as usize + 1024, "more bytes than were stored");
    // What it wrote is never a valid backup: our consumer refuses it.
    let out = work.path().join("out");
    let mut extract = spawn(
        Command::new(env!("CARGO_BIN_EXE_consumer"))
            .arg("extract")
            .arg("-C")
            .arg(&out)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let feeder = extract.feed_stdin(got);
    let extracted = extract.wait_output(LONG);
    let _ = join_within(feeder, SHORT);
    assert_eq!(extracted.status.code(), Some(1), "{}", String::from_utf8_lossy(&extracted.stderr));
}

#[test]
fn s3_slow_responses_are_waited_for_and_a_stalled_server_is_a_timeout_error() {
    let server = S3Server::start();
    let proxy = FaultyProxy::start(&server.host_port(), u64::MAX);
    let storage = storage_args(&proxy.endpoint(), BUCKET, server.access_key(), server.secret_key());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_tree(&src, &[("data", pseudo_random_bytes(1 << 20, 24)), ("small", b"z".to_vec())]);
    let stream = work.path().join("stream.xbs");
    let producer = run_ok(
        Command::new(env!("CARGO_BIN_EXE_producer")).arg("--source").arg(&src).args([
            "--stream=xbstream",
            "--read-buffer-size",
            "64K",
        ]),
        LONG,
    );
    fs::write(&stream, producer).unwrap();
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
    assert!(started.elapsed() < Duration::from_secs(30), "a stalled server held the get for {:?}", started.elapsed());
}
