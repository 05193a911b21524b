//! A small HTTP/1.1 proxy that fails a fixed share of the requests it forwards (503 SlowDown, or a connection
//! reset), to prove that the store clients retry what is retryable, and counts requests, to prove that a permanent
//! error is not retried; on demand it cuts GET answers halfway (a download that breaks mid-object), and it counts
//! the body bytes it sends back (what a client downloaded). It stands in front of any of the servers in `servers` (S3, Google, Azure), on 127.0.0.1.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::process::{join_within, spawn_named, SHORT};

/// Every proxy socket's read and write timeout: nothing in the proxy waits longer.
const PROXY_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A small HTTP/1.1 proxy on 127.0.0.1 (std only, a thread per connection) in front of a store's server. Every
/// request is counted; every `fault_every`-th one fails, alternately with `503 Service Unavailable` and an S3
/// `SlowDown` error, or with a connection reset (after the whole request was read, before any answer). The others are
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
    /// GET responses still to cut halfway through their body.
    cut_gets: AtomicU64,
    /// How they are cut.
    cut_how: Mutex<Cut>,
    /// GET responses cut so far.
    cuts: AtomicU64,
    /// Bytes of response bodies sent on to clients.
    response_bytes: AtomicU64,
    /// Every request's head (start line and headers), in the order they came.
    heads: Mutex<Vec<Vec<String>>>,
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
            cut_gets: AtomicU64::new(0),
            cut_how: Mutex::new(Cut::Close),
            cuts: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            heads: Mutex::new(Vec::new()),
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

    /// The requests forwarded or faulted so far, each as its start line (`PUT /bucket/key HTTP/1.1`) and the
    /// value of header `name` on it (case-insensitive), if it had one.
    pub fn requests_with_header(&self, name: &str) -> Vec<(String, Option<String>)> {
        let heads = self.shared.heads.lock().unwrap();
        heads.iter().map(|head| (head[0].clone(), header(head, name).map(str::to_owned))).collect()
    }

    /// Cuts the next `count` answers to a GET whose body is at least 64 KiB, as `how` says: half the body is
    /// sent on, and then the answer breaks or ends.
    pub fn cut_next_get_responses(&self, count: u64, how: Cut) {
        *self.shared.cut_how.lock().unwrap() = how;
        self.shared.cut_gets.store(count, Ordering::SeqCst);
    }

    /// GET answers cut so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Bytes of response bodies sent on to clients so far (what a client downloaded, cut answers included).
    pub fn response_body_bytes(&self) -> u64 {
        self.shared.response_bytes.load(Ordering::SeqCst)
    }
}

/// How the proxy cuts a GET answer ([`FaultyProxy::cut_next_get_responses`]) after half its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The connection is closed cleanly (a FIN): the client gets exactly the half, then an early end of body.
    Close,
    /// The connection is reset: the client's kernel may drop some of what it had received, so where the client
    /// resumes depends on timing.
    Reset,
    /// The answer says it is half as long (`Content-Length`) and ends whole there: a server that sent less than was
    /// asked, with nothing at the HTTP level to show it.
    Short,
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
    shared.heads.lock().unwrap().push(head.clone());
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
            reset(to_client)?;
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
    let length: Option<u64> = header(&response, "content-length").and_then(|l| l.parse().ok());
    let cut = head[0].starts_with("GET ")
        && length.is_some_and(|length| length >= 64 << 10)
        && shared.cut_gets.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok();
    let how = cut.then(|| *shared.cut_how.lock().unwrap());
    let half = length.unwrap_or(0) / 2;
    let response_head = match how {
        Some(Cut::Short) => {
            let mut shorter = close_after(&response, &["connection", "keep-alive", "content-length"]);
            shorter.insert_str(shorter.len() - 2, &format!("Content-Length: {half}\r\n"));
            shorter
        }
        _ => close_after(&response, &["connection", "keep-alive"]),
    };
    to_client.write_all(response_head.as_bytes()).map_err(context("response head to the client"))?;
    if let Some(how) = how {
        let sent = io::copy(&mut (&mut from_upstream).take(half), &mut to_client).map_err(context("half a body"))?;
        shared.response_bytes.fetch_add(sent, Ordering::SeqCst);
        shared.cuts.fetch_add(1, Ordering::SeqCst);
        if how == Cut::Reset {
            return reset(to_client);
        }
        // A FIN, not a reset: a reset may discard what the client has not read yet, so how much of the half it
        // got would depend on timing; closed cleanly, it gets exactly the half.
        to_client.flush().map_err(context("half a body"))?;
        let _ = to_client.shutdown(Shutdown::Write);
        return Ok(());
    }
    let sent = io::copy(&mut from_upstream, &mut to_client).map_err(context("response body to the client"))?;
    shared.response_bytes.fetch_add(sent, Ordering::SeqCst);
    let _ = to_client.shutdown(Shutdown::Write);
    Ok(())
}

/// Closes the client's connection with a reset (SO_LINGER 0 sends a RST instead of a FIN), whatever was sent.
fn reset(client: TcpStream) -> Result<(), String> {
    let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
    nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &linger)
        .map_err(|e| format!("SO_LINGER: {e}"))?;
    drop(client);
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
// The proxy itself.

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
