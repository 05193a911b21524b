//! The services the store tests run against, each a real server started on 127.0.0.1 on a port picked at run time,
//! with its data in a temporary directory, killed and reaped when dropped: `s3s-fs` (S3, strict SigV4),
//! `fake-gcs-server` (Google Cloud Storage) and Azurite (Azure Blob Storage); and the consumer's `--storage`
//! arguments that reach each of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::fault_proxy::FaultyProxy;
use super::process::{has_exited, spawn, tool, Running};

/// A port nobody listens on right now (bound on 127.0.0.1 with port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A base port `p` such that `p ..= p + count` are all free on 127.0.0.1 right now (for a recipe that uses
/// consecutive ports). Drawn from 10000-32000, below Linux's ephemeral range (32768-60999), so that no connection
/// or port-0 bind of another test takes one of them between this check and the recipe's bind.
pub fn free_port_run(count: u16) -> u16 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut seed = std::process::id() as u64 ^ now.as_nanos() as u64;
    for _ in 0..200 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let base = 10000 + (seed >> 33) as u16 % 22000;
        let bound: Vec<_> =
            (0..=count).map_while(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if bound.len() == count as usize + 1 {
            return base;
        }
    }
    panic!("no {} consecutive free ports on 127.0.0.1", count + 1);
}

/// A server process on 127.0.0.1: a free port, a temporary directory (its data, and `server.log` with its output),
/// killed and reaped when dropped.
pub struct LocalServer {
    // Declared first so that it is dropped (killed) before its directory is removed.
    process: Running,
    /// The port it listens on.
    pub port: u16,
    /// Its directory.
    pub dir: tempfile::TempDir,
}

impl LocalServer {
    /// Starts `make(port, dir)` (with its output in `dir/server.log`) and waits (polling a connect, with a
    /// deadline) until it accepts connections. The port is picked by binding port 0 and releasing it; if another
    /// process takes it meanwhile the server exits, and it is started again on another port (a few times).
    pub fn start(name: &str, make: impl Fn(u16, &Path) -> Command) -> LocalServer {
        let mut failures = Vec::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let log_path = dir.path().join("server.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let port = free_port();
            let process =
                spawn(make(port, dir.path()).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log));
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(30);
            let ready = loop {
                if has_exited(process.id()) {
                    break false;
                }
                if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                    // Connected: to our server, unless it lost the port to someone else and is exiting.
                    break !has_exited(process.id());
                }
                assert!(Instant::now() < deadline, "{name} did not accept connections on {address} within 30 s");
                thread::sleep(Duration::from_millis(10));
            };
            if ready {
                return LocalServer { process, port, dir };
            }
            failures.push(format!("port {port}: {}", std::fs::read_to_string(&log_path).unwrap_or_default()));
        }
        panic!("{name} did not start:\n{}", failures.join("\n"));
    }

    /// Kills the server at once (SIGKILL), as a crash would; its directory stays until it is dropped.
    pub fn kill(&self) {
        let pid = nix::unistd::Pid::from_raw(self.process.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT` (what a [`FaultyProxy`] in front of it forwards to).
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// S3: s3s-fs.

/// The throwaway access key every [`S3Server`] accepts.
const S3_ACCESS_KEY: &str = "xbkit-test-access";

/// The throwaway secret key every [`S3Server`] accepts.
const S3_SECRET_KEY: &str = "xbkit-test-secret-0123456789";

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
            std::fs::create_dir_all(&root).unwrap();
            let mut command = Command::new(tool("s3s-fs"));
            command
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
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
        self.server.endpoint()
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        self.server.host_port()
    }

    /// The access key it accepts.
    pub fn access_key(&self) -> &'static str {
        S3_ACCESS_KEY
    }

    /// The secret key it accepts.
    pub fn secret_key(&self) -> &'static str {
        S3_SECRET_KEY
    }

    /// The directory it stores buckets in (bucket `B`'s object `K` is the file `root/B/K`).
    pub fn root(&self) -> PathBuf {
        self.server.dir.path().join("data")
    }

    /// The regular files the server holds for `bucket_prefix` (relative paths under it; none if it does not
    /// exist).
    pub fn stored_objects(&self, bucket_prefix: &str) -> Vec<PathBuf> {
        let dir = self.root().join(bucket_prefix);
        if !dir.exists() {
            return Vec::new();
        }
        super::tree::list_tree(&dir)
    }

    /// `--storage s3://BUCKET_PREFIX --s3-endpoint … --s3-access-key … --s3-secret-key …` for the consumer.
    pub fn storage_args(&self, bucket_prefix: &str) -> Vec<String> {
        s3_storage_args(&self.endpoint(), bucket_prefix, self.access_key(), self.secret_key())
    }
}

/// The consumer's S3 storage arguments for any endpoint (a server's, or a proxy's in front of it) and keys.
pub fn s3_storage_args(endpoint: &str, bucket_prefix: &str, access_key: &str, secret_key: &str) -> Vec<String> {
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
// Google Cloud Storage: fake-gcs-server.

/// `fake-gcs-server` on a free port, objects kept on disk in its directory (`DIR/data/BUCKET/…`). `-public-host`
/// makes it answer path-style XML requests (`GET /bucket/object`), which `object_store` sends for reads and
/// listings.
pub fn start_fake_gcs() -> LocalServer {
    LocalServer::start("fake-gcs-server", |port, dir| fake_gcs_command(port, &format!("127.0.0.1:{port}"), dir))
}

/// `fake-gcs-server` behind a [`FaultyProxy`] failing every `fault_every`-th request. The server's public host is
/// the proxy's address: the proxy forwards the client's `Host`, and the server routes XML requests by it.
pub fn start_fake_gcs_behind_a_proxy(fault_every: u64) -> (LocalServer, FaultyProxy) {
    let proxy = std::cell::RefCell::new(None);
    let server = LocalServer::start("fake-gcs-server", |port, dir| {
        let started = FaultyProxy::start(&format!("127.0.0.1:{port}"), fault_every);
        let public_host = started.endpoint().trim_start_matches("http://").to_string();
        *proxy.borrow_mut() = Some(started);
        fake_gcs_command(port, &public_host, dir)
    });
    (server, proxy.into_inner().expect("the proxy started with the server"))
}

fn fake_gcs_command(port: u16, public_host: &str, dir: &Path) -> Command {
    let mut command = Command::new(tool("fake-gcs-server"));
    command
        .args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string()])
        .args(["-public-host", public_host, "-backend", "filesystem", "-log-level", "warn"])
        .arg("-filesystem-root")
        .arg(dir.join("data"));
    command
}

/// A key file for the emulator at `endpoint`: no OAuth (`fake-gcs-server` checks no token), its URL.
fn fake_gcs_key(server: &LocalServer, endpoint: &str) -> PathBuf {
    let path = server.dir.path().join("key.json");
    let key = serde_json::json!({
        "private_key": "", "private_key_id": "", "client_email": "",
        "disable_oauth": true, "gcs_base_url": endpoint,
    });
    std::fs::write(&path, key.to_string()).unwrap();
    path
}

/// `--storage gs://… ` for the fake server, reached at `endpoint` (its own, or a proxy's).
pub fn gcs_storage(server: &LocalServer, endpoint: &str, bucket_prefix: &str) -> Vec<String> {
    let key = fake_gcs_key(server, endpoint);
    vec![
        "--storage".into(),
        format!("gs://{bucket_prefix}"),
        "--google-service-account".into(),
        key.display().to_string(),
        "--google-project".into(),
        "xbkit-test".into(),
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// Azure Blob Storage: Azurite.

/// Azurite's blob service on a free port, its data in its directory. `--skipApiVersionCheck`: `object_store`
/// may send a newer `x-ms-version` than this Azurite knows.
pub fn start_azurite() -> LocalServer {
    LocalServer::start("azurite-blob", |port, dir| {
        let mut command = Command::new(tool("azurite-blob"));
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(dir.join("data"))
            .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"]);
        command
    })
}

/// `--storage az://…` for Azurite: its well-known account and `key` (given explicitly), at `endpoint` (its own,
/// or a proxy's).
pub fn azure_storage(endpoint: &str, container_prefix: &str, key: &str) -> Vec<String> {
    vec![
        "--storage".into(),
        format!("az://{container_prefix}"),
        "--azure-storage-account".into(),
        store::azure::DEVELOPMENT_ACCOUNT.into(),
        "--azure-access-key".into(),
        key.into(),
        "--azure-endpoint".into(),
        format!("{endpoint}/{}", store::azure::DEVELOPMENT_ACCOUNT),
    ]
}
