//! Shared test harness: a real server on a loopback port, raw-socket
//! clients that parse responses byte for byte, and web-root fixtures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use wasmhttpd::{Config, GuestSource, Limits, Server};

/// The event loops of a test server: one per core of a CI machine.
pub const TEST_EVENT_LOOPS: usize = 2;

/// How long a test client waits on a socket before failing the test.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// The demo web root in the repository.
pub fn demo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../www")
}

/// The fault-injection guest built by `host/build.rs`.
pub fn fault_guest() -> PathBuf {
    PathBuf::from(env!("WASMHTTPD_FAULT_GUEST"))
}

/// Limits small enough that tests of the limits run quickly.
pub fn test_limits() -> Limits {
    Limits {
        max_instances: 64,
        max_websockets: 256,
        shutdown_grace: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// The demo's accounts guest (`guests/accounts`) built by `host/build.rs`.
pub fn accounts_guest() -> PathBuf {
    PathBuf::from(env!("WASMHTTPD_ACCOUNTS_GUEST"))
}

/// The example gateway guest (`guests/gateway`) built by `host/build.rs`.
pub fn gateway_guest() -> PathBuf {
    PathBuf::from(env!("WASMHTTPD_GATEWAY_GUEST"))
}

/// The plain guest (no WebSocket export) built by `host/build.rs`.
pub fn plain_guest() -> PathBuf {
    PathBuf::from(env!("WASMHTTPD_PLAIN_GUEST"))
}

/// The key-value test guest (`tests/guests/kv`) built by `host/build.rs`.
pub fn kv_guest() -> PathBuf {
    PathBuf::from(env!("WASMHTTPD_KV_GUEST"))
}

/// The WASIp3 test guest (`tests/guests/p3`) built by `host/build.rs`.
pub fn p3_guest() -> PathBuf {
    PathBuf::from(env!("WASMHTTPD_P3_GUEST"))
}

/// A server running on its own runtime thread; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where the server's metrics are served.
    pub metrics_addr: SocketAddr,
    pub monitor: wasmhttpd::Monitor,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// The compiled-component cache every test server of a run shares, in the
/// build tree: each guest is compiled once per engine configuration, not
/// once per server. (The cache's own tests use directories of their own.)
pub fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasmhttpd")
}

/// Replaces `path` the way a deploy does: write a temporary file beside
/// it, then rename it over.
pub fn deploy(component: &Path, path: &Path) {
    let temp = path.with_extension("tmp");
    std::fs::copy(component, &temp).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

impl TestServer {
    /// Starts a server with `config`; one without a cache directory gets
    /// the run's [`shared_cache`].
    pub fn start(mut config: Config) -> TestServer {
        // As the binary serves: an event loop per core (two here), each a
        // single-threaded runtime, this thread's the first.
        if config.event_loops == 1 {
            config.event_loops = TEST_EVENT_LOOPS;
        }
        TestServer::start_with_loops(config)
    }

    /// A server with `config.event_loops` as it is: 1 for a test of what
    /// one loop's requests share.
    pub fn start_with_loops(mut config: Config) -> TestServer {
        if config.cache_dir.is_none() {
            config.cache_dir = Some(shared_cache());
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_start(wasmhttpd::unpin_thread)
                .build()
                .expect("tokio runtime");
            runtime.block_on(async move {
                let server = Server::new(config).expect("server starts");
                let listener = wasmhttpd::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
                let metrics = wasmhttpd::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
                let addrs = (
                    listener.local_addr().unwrap(),
                    metrics.local_addr().unwrap(),
                );
                let monitor = server.monitor();
                tokio::spawn(wasmhttpd::proto::endpoint::serve_metrics(
                    metrics,
                    server.metrics(),
                    move || !monitor.shutting_down(),
                ));
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                ready_tx.send((addrs, server.monitor(), stop_tx)).unwrap();
                server
                    .run(listener, async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        let ((addr, metrics_addr), monitor, stop) = ready_rx.recv().expect("server thread started");
        TestServer {
            addr,
            metrics_addr,
            monitor,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The default guest on `root` with test limits.
    pub fn static_files(root: &Path) -> TestServer {
        TestServer::static_files_with(root, &[])
    }

    /// The default guest on `root`, configured by `env` (`--env` pairs).
    pub fn static_files_with(root: &Path, env: &[(&str, &str)]) -> TestServer {
        TestServer::start(Config {
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            limits: test_limits(),
            ..Config::new(root)
        })
    }

    /// The fault guest with the given limits.
    pub fn faults(limits: Limits) -> TestServer {
        TestServer::guest(fault_guest(), &demo_root(), limits)
    }

    /// The component `guest` on `root`.
    pub fn guest(guest: PathBuf, root: &Path, limits: Limits) -> TestServer {
        TestServer::start(Config {
            limits,
            ..Config::new(root).with_guest(GuestSource::File(guest))
        })
    }

    /// Waits until `condition` holds of the server's [`wasmhttpd::Monitor`]
    /// (see [`eventually`]).
    pub fn eventually(&self, what: &str, condition: impl Fn(&wasmhttpd::Monitor) -> bool) {
        eventually(what, || condition(&self.monitor));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream
    }

    /// Sends raw bytes on a new connection and reads one response.
    pub fn exchange(&self, request: &[u8]) -> Response {
        exchange_at(self.addr, request)
    }

    /// Starts the server's graceful shutdown, as SIGTERM does, without
    /// waiting for it to end.
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// The status of `GET path` on a connection of its own.
    pub fn status(&self, path: &str) -> u16 {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        self.exchange(request.as_bytes()).status
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Polls `condition` until it holds; fails the test, naming `what`, if it
/// still does not after [`CLIENT_TIMEOUT`]. For effects that follow a
/// client's action asynchronously, such as a guest being stopped, where
/// the server offers no event to wait on.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends raw bytes to `addr` on a new connection and reads one response.
pub fn exchange_at(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.write_all(request).expect("send");
    read_response(&mut BufReader::new(stream), false)
}

/// A response as it came off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Whether the body was chunked on the wire.
    pub chunked: bool,
    /// The trailer fields after a chunked body, names lowercased.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response. `head_only`: the request was HEAD, no body follows.
/// A body without length or chunking is read to EOF.
pub fn read_response(reader: &mut impl BufRead, head_only: bool) -> Response {
    let mut head = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut head).expect("read head");
        assert!(
            n > 0,
            "connection closed before a full head: {:?}",
            String::from_utf8_lossy(&head)
        );
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut fields);
    let status = parsed.parse(&head).expect("valid response head");
    assert!(status.is_complete());
    assert_eq!(parsed.version, Some(1), "server speaks HTTP/1.1");
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8(h.value.to_vec()).expect("ASCII header"),
            )
        })
        .collect();
    let mut response = Response {
        status: parsed.code.unwrap(),
        headers,
        body: Vec::new(),
        chunked: false,
        trailers: Vec::new(),
    };
    if head_only || matches!(response.status, 100..=199 | 204 | 304) {
        return response;
    }
    if let Some(length) = response.header("content-length") {
        let length: usize = length.parse().expect("numeric Content-Length");
        response.body = vec![0; length];
        reader.read_exact(&mut response.body).expect("read body");
    } else if response.header("transfer-encoding") == Some("chunked") {
        response.chunked = true;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("chunk size");
            let size = usize::from_str_radix(line.trim_end(), 16).expect("hex chunk size");
            if size == 0 {
                // The trailer section, up to its blank line.
                loop {
                    let mut field = String::new();
                    reader.read_line(&mut field).expect("trailer field");
                    if field == "\r\n" {
                        break;
                    }
                    let (name, value) = field.trim_end().split_once(':').expect("a field");
                    response
                        .trailers
                        .push((name.to_ascii_lowercase(), value.trim().to_owned()));
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).expect("chunk data");
            assert_eq!(&chunk[size..], b"\r\n");
            response.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut response.body).expect("body to EOF");
    }
    response
}

/// Reads a response head up to and including its blank line.
pub fn read_head(reader: &mut impl BufRead) -> String {
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(reader.read_line(&mut head).unwrap() > 0, "closed: {head}");
    }
    head
}

/// Sends `GET target` then `HEAD target`, each with `headers` (CRLF-ended
/// lines), on one connection; asserts the HEAD response has the GET
/// response's status and every one of its header fields but `Date`, and no
/// body (the GET after it would not parse if it leaked one). Returns the GET
/// response.
pub fn assert_head_matches_get(addr: SocketAddr, target: &str, headers: &str) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let request = |method: &str| format!("{method} {target} HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
    let pipeline = [request("GET"), request("HEAD"), request("GET")].concat();
    stream.write_all(pipeline.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream);
    let get = read_response(&mut reader, false);
    let head = read_response(&mut reader, true);
    let again = read_response(&mut reader, false);
    let without_date = |response: &Response| -> Vec<(String, String)> {
        let mut fields: Vec<_> = response
            .headers
            .iter()
            .filter(|(name, _)| name != "date")
            .cloned()
            .collect();
        fields.sort();
        fields
    };
    assert_eq!(head.status, get.status, "HEAD {target} status");
    assert_eq!(
        without_date(&head),
        without_date(&get),
        "HEAD {target} {headers:?}"
    );
    assert_eq!(again.status, get.status, "GET after HEAD {target}");
    assert!(
        again.body == get.body,
        "GET after HEAD {target}: body differs"
    );
    get
}

/// Asserts the server closed the connection (EOF, or a reset) without sending more.
pub fn assert_closed(reader: &mut impl Read) {
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "unexpected bytes after the response: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
}

/// A real HTTP client that reports every status instead of failing on 4xx/5xx.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(CLIENT_TIMEOUT))
        .build()
        .into()
}

/// GETs `url` with the real client; returns status, content type and body.
pub fn get(agent: &ureq::Agent, url: &str) -> (u16, String, Vec<u8>) {
    let mut response = agent.get(url).call().expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .expect("body");
    (status, content_type, body)
}

/// Deterministic pseudo-random bytes (xorshift), so a large file has no
/// repeating pattern that a framing bug could hide in.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// How to install the wasmtime CLI that matches the host's wasmtime.
pub const WASMTIME_INSTALL: &str = "cargo install wasmtime-cli --version 48.0.8 --locked";

/// Where `program` is installed: on `PATH`, else in cargo's bin directory.
pub fn installed(program: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    });
    let cargo_bin = || {
        std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
            .map(|home| home.join("bin").join(program))
            .filter(|candidate| candidate.is_file())
    };
    on_path.or_else(cargo_bin)
}

/// `program`, which a test needs from outside the project. Missing, the
/// test is skipped with a note on how to `install` it; in CI, whose
/// `.ci/run` installs it, its absence fails the test.
pub fn required_tool(program: &str, install: &str) -> Option<PathBuf> {
    let found = installed(program);
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is not installed ({install})"
        );
        eprintln!("skipped: `{program}` is not installed ({install})");
    }
    found
}
