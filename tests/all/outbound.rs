//! What a guest's outgoing requests reach: nothing by default, exactly
//! what `--allow-outbound` lists, never loopback or the metadata service
//! through a wildcard or a name, within the host's timeouts, logged and
//! counted. The guest is the fault guest's `/fetch`; the upstreams are
//! real listeners on loopback.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::metrics::{scrape, value};
use crate::support::{TestServer, demo_root, fault_guest, gateway_guest, test_limits};
use rustls::pki_types::pem::PemObject;
use wasmhttpd::outbound::policy::AllowList;
use wasmhttpd::{Config, GuestSource, Limits, Route, RouteLimits};

/// What an upstream does with each request.
#[derive(Clone, Copy)]
pub(crate) enum Upstream {
    /// Answers 200 `hello from upstream`.
    Answer,
    /// Reads the request and never answers.
    Silent,
    /// Sends a head promising 20 bytes, then 5 of them, then nothing.
    Stall,
}

/// A listener on loopback that records what reaches it.
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections the other side closed while the upstream held them.
    closed: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    pub(crate) fn start(behaviour: Upstream) -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, seen, ends) = (connections.clone(), heads.clone(), closed.clone());
        // Serves until the test binary exits.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (seen, ends) = (seen.clone(), ends.clone());
                thread::spawn(move || serve(stream, behaviour, &seen, &ends));
            }
        });
        Listener {
            addr,
            connections,
            closed,
            heads,
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(
    mut stream: TcpStream,
    behaviour: Upstream,
    seen: &Mutex<Vec<String>>,
    closed: &AtomicUsize,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            match reader.read_line(&mut head) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        seen.lock().unwrap().push(head);
        match behaviour {
            Upstream::Answer => {
                let body = "hello from upstream";
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Upstream: yes\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
            Upstream::Silent | Upstream::Stall => {
                if let Upstream::Stall = behaviour {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nhello");
                }
                // Holds the connection until the other side closes it.
                let mut rest = Vec::new();
                let _ = std::io::Read::read_to_end(&mut reader, &mut rest);
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

fn allow(patterns: &[&str]) -> AllowList {
    AllowList::new(patterns.iter().map(|p| p.parse().unwrap()).collect())
}

/// The fault guest on `/`, allowed to reach `patterns`.
fn server_allowing(patterns: &[&str], limits: Limits) -> TestServer {
    TestServer::faults(Limits {
        allow_outbound: allow(patterns),
        ..limits
    })
}

/// What the guest's `/fetch` of `url` (with `options`, `k=v&` pairs) says.
fn fetch(server: &TestServer, options: &str, url: &str) -> String {
    let request =
        format!("GET /fetch?{options}url={url} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let response = server.exchange(request.as_bytes());
    assert_eq!(response.status, 200, "{url}: {}", response.text());
    response.text()
}

fn assert_denied(answer: &str, url: &str) {
    assert!(
        answer.starts_with("error") && answer.contains("HttpRequestDenied"),
        "{url}: {answer}"
    );
}

#[test]
fn every_outgoing_request_is_denied_by_default() {
    let upstream = Listener::start(Upstream::Answer);
    let server = TestServer::faults(test_limits());
    for url in [
        format!("{}/", upstream.origin()),
        format!("http://localhost:{}/", upstream.addr.port()),
        "https://example.com/".to_owned(),
    ] {
        assert_denied(&fetch(&server, "", &url), &url);
    }
    assert_eq!(upstream.connections(), 0, "nothing reached the upstream");
    let metrics = scrape(&server);
    assert_eq!(
        value(
            &metrics,
            "wasmhttpd_outgoing_requests_total{result=\"denied\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &metrics,
            "wasmhttpd_outgoing_requests_total{result=\"sent\"}"
        ),
        0.0
    );
}

#[test]
fn an_exact_entry_allows_exactly_its_scheme_host_and_port() {
    let upstream = Listener::start(Upstream::Answer);
    let other = Listener::start(Upstream::Answer);
    let server = server_allowing(&[&upstream.origin()], test_limits());

    let answer = fetch(&server, "", &format!("{}/path?q=1", upstream.origin()));
    assert_eq!(answer, "status 200\nhello from upstream");
    let heads = upstream.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /path?q=1 HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains(&format!("host: {}\r\n", upstream.addr)),
        "{}",
        heads[0]
    );

    for url in [
        format!("{}/", other.origin()),
        format!("https://{}/", upstream.addr),
        format!("http://127.0.0.2:{}/", upstream.addr.port()),
    ] {
        assert_denied(&fetch(&server, "", &url), &url);
    }
    assert_eq!(other.connections(), 0);
    assert_eq!(
        upstream.connections(),
        1,
        "only the allowed request connected"
    );
    let metrics = scrape(&server);
    assert_eq!(
        value(
            &metrics,
            "wasmhttpd_outgoing_requests_total{result=\"sent\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &metrics,
            "wasmhttpd_outgoing_requests_total{result=\"denied\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &metrics,
            "wasmhttpd_outgoing_request_duration_seconds_count"
        ),
        4.0
    );
}

#[test]
fn wildcards_reach_neither_loopback_nor_the_metadata_service() {
    let upstream = Listener::start(Upstream::Answer);
    let port = upstream.addr.port();
    let server = server_allowing(&["http://*:*", "https://*:*"], test_limits());
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://127.1.2.3:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://192.168.0.1/".to_owned(),
    ] {
        assert_denied(&fetch(&server, "", &url), &url);
    }
    assert_eq!(upstream.connections(), 0);
}

#[test]
fn a_name_that_resolves_to_loopback_needs_an_entry_by_address() {
    let upstream = Listener::start(Upstream::Answer);
    let port = upstream.addr.port();
    let url = format!("http://localhost:{port}/");
    let by_name = server_allowing(&[&format!("http://localhost:{port}")], test_limits());
    assert_denied(&fetch(&by_name, "", &url), &url);
    assert_eq!(upstream.connections(), 0);

    // localhost may resolve to ::1 as well as 127.0.0.1: every address
    // it gives must be allowed.
    let by_address = server_allowing(
        &[
            &format!("http://127.0.0.1:{port}"),
            &format!("http://[::1]:{port}"),
        ],
        test_limits(),
    );
    assert_eq!(
        fetch(&by_address, "", &url),
        "status 200\nhello from upstream"
    );
    assert_eq!(upstream.connections(), 1);
}

#[test]
fn a_routes_list_replaces_the_servers() {
    let global = Listener::start(Upstream::Answer);
    let own = Listener::start(Upstream::Answer);
    let route = |prefix: &str, allow_outbound: Option<AllowList>| {
        Route::new(prefix, GuestSource::File(fault_guest()))
            .unwrap()
            .with_limits(RouteLimits {
                allow_outbound,
                ..RouteLimits::default()
            })
    };
    let server = TestServer::start(Config {
        routes: vec![
            route("/", None),
            route("/own", Some(allow(&[&own.origin()]))),
            route("/none", Some(AllowList::default())),
        ],
        limits: Limits {
            allow_outbound: allow(&[&global.origin()]),
            ..test_limits()
        },
        ..Config::new(demo_root())
    });
    let fetch_at = |prefix: &str, url: &str| {
        let request = format!(
            "GET {prefix}/fetch?url={url} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        );
        server.exchange(request.as_bytes()).text()
    };
    let hello = "status 200\nhello from upstream";
    assert_eq!(fetch_at("", &global.origin()), hello);
    assert_denied(&fetch_at("", &own.origin()), "own from /");
    assert_eq!(fetch_at("/own", &own.origin()), hello);
    assert_denied(&fetch_at("/own", &global.origin()), "global from /own");
    assert_denied(&fetch_at("/none", &global.origin()), "global from /none");
    assert_denied(&fetch_at("/none", &own.origin()), "own from /none");
    assert_eq!(global.connections(), 1);
    assert_eq!(own.connections(), 1);
}

/// A listener whose accept queue is full, so a new connection to it
/// hangs in the handshake: the kernel drops its SYNs.
struct Unanswered {
    addr: SocketAddr,
    _listener: std::net::TcpListener,
    _queued: Vec<TcpStream>,
}

fn unanswered() -> Unanswered {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap().into_std().unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    // Fill the queue until a connection no longer completes.
    while let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        queued.push(stream);
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    Unanswered {
        addr,
        _listener: listener,
        _queued: queued,
    }
}

/// Three upstreams that each hold a request at another stage (the TCP
/// handshake, the response head, the body after 5 bytes), and the fault
/// guest allowed to reach them, with 8 s for itself and `cap` for each of
/// the server's outbound timeouts.
struct SlowUpstreams {
    hung: Unanswered,
    silent: Listener,
    stalled: Listener,
    server: TestServer,
}

impl SlowUpstreams {
    fn start(cap: Duration) -> SlowUpstreams {
        let hung = unanswered();
        let silent = Listener::start(Upstream::Silent);
        let stalled = Listener::start(Upstream::Stall);
        let server = server_allowing(
            &[
                &format!("http://{}", hung.addr),
                &silent.origin(),
                &stalled.origin(),
            ],
            Limits {
                outbound_connect_timeout: cap,
                outbound_first_byte_timeout: cap,
                outbound_between_bytes_timeout: cap,
                guest_timeout: Duration::from_secs(8),
                ..test_limits()
            },
        );
        SlowUpstreams {
            hung,
            silent,
            stalled,
            server,
        }
    }

    /// Fetches from each upstream with the request-options `options` (for
    /// the connect, the first byte, the body) and asserts each request
    /// failed at that timeout: a 200 from the guest saying so, where the
    /// guest's own deadline would have been a 504.
    fn assert_each_times_out(&self, options: [&str; 3]) {
        let connect = fetch(
            &self.server,
            options[0],
            &format!("http://{}/", self.hung.addr),
        );
        assert!(
            connect.contains("error ErrorCode::ConnectionTimeout"),
            "connect: {connect}"
        );
        let head = fetch(
            &self.server,
            options[1],
            &format!("{}/", self.silent.origin()),
        );
        assert!(
            head.contains("error ErrorCode::ConnectionReadTimeout"),
            "first byte: {head}"
        );
        // The 5 bytes sent reach the guest before the body breaks.
        let body = fetch(
            &self.server,
            options[2],
            &format!("{}/", self.stalled.origin()),
        );
        assert_eq!(
            body, "status 200\nhello\nbody-error ErrorCode::ConnectionReadTimeout",
            "between bytes"
        );
    }
}

#[test]
fn a_slow_upstream_hits_each_timeout_the_server_caps() {
    let slow = SlowUpstreams::start(Duration::from_millis(300));
    // The guest asks for a minute each time: the server's caps win.
    slow.assert_each_times_out([
        "connect-ms=60000&",
        "first-byte-ms=60000&",
        "between-ms=60000&",
    ]);
    let metrics = scrape(&slow.server);
    let failed = value(
        &metrics,
        "wasmhttpd_outgoing_requests_total{result=\"failed\"}",
    );
    assert_eq!(failed, 3.0);
}

#[test]
fn a_guest_may_shorten_each_timeout() {
    // The server's caps are longer than the guest's own deadline: only
    // the guest's request-options can end these requests before it.
    let slow = SlowUpstreams::start(Duration::from_secs(600));
    slow.assert_each_times_out(["connect-ms=300&", "first-byte-ms=300&", "between-ms=300&"]);
}

#[test]
fn a_request_outlived_by_its_guests_deadline_is_dropped_with_the_instance() {
    let silent = Listener::start(Upstream::Silent);
    let server = server_allowing(
        &[&silent.origin()],
        Limits {
            guest_timeout: Duration::from_millis(500),
            ..test_limits()
        },
    );
    let request = format!(
        "GET /fetch?url={}/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        silent.origin()
    );
    assert_eq!(server.exchange(request.as_bytes()).status, 504);
    crate::support::eventually("the upstream connection is closed", || {
        silent.closed.load(Ordering::SeqCst) == 1
    });
    crate::support::eventually("the abandoned request is counted", || {
        value(
            &scrape(&server),
            "wasmhttpd_outgoing_requests_total{result=\"failed\"}",
        ) == 1.0
    });
}

#[test]
fn one_instance_has_at_most_max_outbound_requests_open() {
    let upstream = Listener::start(Upstream::Answer);
    let server = server_allowing(
        &[&upstream.origin()],
        Limits {
            max_outbound: 2,
            ..test_limits()
        },
    );
    let request = format!(
        "GET /fetch-many?n=3&url={}/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        upstream.origin()
    );
    let answer = server.exchange(request.as_bytes()).text();
    let sent = answer.lines().filter(|line| *line == "status 200").count();
    let limited = answer
        .lines()
        .filter(|line| line.contains("ConnectionLimitReached"))
        .count();
    assert_eq!((sent, limited), (2, 1), "{answer}");
    // Each request's share comes back when it is over.
    let again = server.exchange(request.as_bytes()).text();
    assert_eq!(
        again.lines().filter(|line| *line == "status 200").count(),
        2,
        "{again}"
    );
}

/// The example gateway on `/api`, forwarding to `upstream`, allowed to
/// reach `patterns`.
fn gateway(upstream: &Listener, patterns: &[&str]) -> TestServer {
    TestServer::start(Config {
        routes: vec![Route::new("/api", GuestSource::File(gateway_guest())).unwrap()],
        env: vec![("UPSTREAM".to_owned(), upstream.origin())],
        limits: Limits {
            allow_outbound: allow(patterns),
            ..test_limits()
        },
        ..Config::new(demo_root())
    })
}

#[test]
fn the_gateway_example_forwards_what_the_policy_allows() {
    let upstream = Listener::start(Upstream::Answer);
    let allowed = gateway(&upstream, &[&upstream.origin()]);
    let response = allowed.exchange(
        b"GET /api/users?page=2 HTTP/1.1\r\nHost: t\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello from upstream");
    assert_eq!(response.header("x-upstream"), Some("yes"));
    let heads = upstream.heads();
    assert!(
        heads[0].starts_with("GET /users?page=2 HTTP/1.1\r\n"),
        "{heads:?}"
    );
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("accept: text/plain\r\n"),
        "{heads:?}"
    );

    let denied = gateway(&upstream, &[]);
    let response =
        denied.exchange(b"GET /api/users HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(response.status, 502);
    assert_eq!(
        response.header("x-gateway-error"),
        Some("HttpRequestDenied")
    );
    assert_eq!(
        upstream.connections(),
        1,
        "the denied request never connected"
    );
}

/// A TLS listener with a self-signed certificate, which no webpki root
/// vouches for; sends on `errors` how each handshake ended.
fn self_signed_tls() -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let chain = vec![key.cert.der().clone()];
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (sender, errors) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut tls = rustls::ServerConnection::new(config.clone()).unwrap();
            let ended = loop {
                match tls.complete_io(&mut stream) {
                    Ok(_) if tls.is_handshaking() => continue,
                    Ok(_) => break "handshake done".to_owned(),
                    Err(err) => break err.to_string(),
                }
            };
            let _ = sender.send(ended);
        }
    });
    (addr, errors)
}

#[test]
fn https_is_verified_against_the_webpki_roots() {
    let (addr, handshakes) = self_signed_tls();
    let server = server_allowing(&[&format!("https://{addr}")], test_limits());
    let answer = fetch(&server, "", &format!("https://{addr}/"));
    assert!(
        answer.contains("error ErrorCode::TlsCertificateError"),
        "{answer}"
    );
    let ended = handshakes
        .recv_timeout(crate::support::CLIENT_TIMEOUT)
        .unwrap();
    // The host, as a TLS client, refused the certificate.
    assert!(
        ended.contains("UnknownCA") || ended.contains("BadCertificate"),
        "{ended}"
    );
}

#[test]
fn a_guest_opens_no_socket_and_resolves_no_name_of_its_own() {
    let upstream = Listener::start(Upstream::Answer);
    // Even with every outgoing HTTP request allowed.
    let server = server_allowing(&["http://*:*", &upstream.origin()], test_limits());
    let request = format!(
        "GET /socket?addr={} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        upstream.addr
    );
    let answer = server.exchange(request.as_bytes()).text();
    let lines: Vec<&str> = answer.lines().collect();
    assert_eq!(lines.len(), 2, "{answer}");
    assert!(lines[0].starts_with("refused"), "{answer}");
    assert!(lines[1].starts_with("refused"), "{answer}");
    assert_eq!(upstream.connections(), 0);
}

/// How a raw upstream ends each response; every kind writes its whole
/// response in one write and, where it closes, closes at once after it.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// `Content-Length`, then the next request on the same connection.
    KeepAlive,
    /// `Content-Length` and `Connection: close`, then a close.
    LengthThenClose,
    /// An HTTP/1.0 response with `Content-Length`, then a close.
    Http10ThenClose,
    /// No length: the body is what comes before the close.
    ReadToClose,
    /// A chunked body, then a close.
    ChunkedThenClose,
    /// A close before any response byte.
    CloseBeforeHead,
    /// A head promising more body than comes before the close.
    CloseMidBody,
}

/// The body every [`Ending`] upstream sends: no two neighbouring
/// stretches alike, so a byte lost or repeated shows.
fn long_body() -> String {
    (0..3000u32)
        .map(|i| char::from(b'a' + ((i * 7 + i / 26) % 26) as u8))
        .collect()
}

impl Ending {
    /// The response bytes, and whether the connection closes after them.
    fn response(self, body: &str) -> (String, bool) {
        let length = body.len();
        match self {
            Ending::KeepAlive => (
                format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n{body}"),
                false,
            ),
            Ending::LengthThenClose => (
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}"
                ),
                true,
            ),
            Ending::Http10ThenClose => (
                format!("HTTP/1.0 200 OK\r\nContent-Length: {length}\r\n\r\n{body}"),
                true,
            ),
            Ending::ReadToClose => (
                format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{body}"),
                true,
            ),
            Ending::ChunkedThenClose => {
                let (first, second) = body.split_at(length / 3);
                (
                    format!(
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                         {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
                        first.len(),
                        second.len()
                    ),
                    true,
                )
            }
            Ending::CloseBeforeHead => (String::new(), true),
            Ending::CloseMidBody => (
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n{}",
                    &body[..length / 2]
                ),
                true,
            ),
        }
    }

    /// A listener on loopback answering every request this way.
    fn start(self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (response, close) = self.response(&long_body());
        // Serves until the test binary exits.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let response = response.clone();
                thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    while read_head(&mut reader).is_some() {
                        if stream.write_all(response.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }
}

/// One request head off `reader`, or `None` at the end of the connection.
fn read_head(reader: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        match reader.read_line(&mut head) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    Some(head)
}

/// How many times each upstream is fetched: the end of a connection and
/// the arrival of the response race, so one fetch proves little.
const FETCHES: usize = 40;

/// Fetches `url` [`FETCHES`] times, expecting `status 200` and `body`
/// whole each time.
fn assert_fetched_whole(server: &TestServer, url: &str, body: &str, what: &str) {
    let expected = format!("status 200\n{body}");
    for attempt in 0..FETCHES {
        let answer = fetch(server, "", url);
        assert!(
            answer == expected,
            "{what}, fetch {attempt}: {} bytes, starting {:?}",
            answer.len(),
            &answer[..answer.len().min(120)]
        );
    }
}

#[test]
fn a_response_is_whole_however_its_upstream_ends_it() {
    let body = long_body();
    let endings = [
        Ending::KeepAlive,
        Ending::LengthThenClose,
        Ending::Http10ThenClose,
        Ending::ReadToClose,
        Ending::ChunkedThenClose,
    ];
    let upstreams: Vec<(Ending, SocketAddr)> = endings
        .iter()
        .map(|ending| (*ending, ending.start()))
        .collect();
    let origins: Vec<String> = upstreams
        .iter()
        .map(|(_, addr)| format!("http://{addr}"))
        .collect();
    let server = server_allowing(
        &origins.iter().map(String::as_str).collect::<Vec<_>>(),
        test_limits(),
    );
    for (ending, addr) in &upstreams {
        assert_fetched_whole(
            &server,
            &format!("http://{addr}/"),
            &body,
            &format!("{ending:?}"),
        );
    }
    let metrics = scrape(&server);
    assert_eq!(
        value(
            &metrics,
            "wasmhttpd_outgoing_requests_total{result=\"failed\"}"
        ),
        0.0
    );
}

#[test]
fn an_upstream_that_closes_before_its_response_is_whole_fails_the_guests_request() {
    let before_head = Ending::CloseBeforeHead.start();
    let mid_body = Ending::CloseMidBody.start();
    let server = server_allowing(
        &[
            &format!("http://{before_head}"),
            &format!("http://{mid_body}"),
        ],
        test_limits(),
    );
    for _ in 0..FETCHES / 4 {
        let answer = fetch(&server, "", &format!("http://{before_head}/"));
        assert_eq!(answer, "error ErrorCode::HttpResponseIncomplete");
        let answer = fetch(&server, "", &format!("http://{mid_body}/"));
        let half = &long_body()[..long_body().len() / 2];
        assert_eq!(
            answer,
            format!("status 200\n{half}\nbody-error ErrorCode::HttpResponseIncomplete")
        );
    }
}

#[test]
fn a_response_from_python_http_server_is_whole() {
    let Some(python) = crate::support::required_tool("python3", "apt-get install python3") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let body = long_body();
    std::fs::write(dir.path().join("page.txt"), &body).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // As it ships: HTTP/1.0 responses, each connection closed after one.
    let _upstream = crate::process::Group::spawn(
        std::process::Command::new(python)
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    crate::support::eventually("python's http.server accepts connections", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let origin = format!("http://127.0.0.1:{port}");
    let server = server_allowing(&[&origin], test_limits());
    assert_fetched_whole(&server, &format!("{origin}/page.txt"), &body, "http.server");
}

#[test]
fn a_tls_upstream_that_sends_close_notify_after_its_body_gives_the_whole_body() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = crate::tls::certificate(dir.path(), "upstream");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            rustls::pki_types::CertificateDer::pem_file_iter(&files.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key).unwrap(),
        )
        .unwrap(),
    );
    let body = long_body();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let response = Ending::LengthThenClose.response(&body).0;
    let unframed = Ending::ReadToClose.response(&body).0;
    // Even connections get a length, odd ones a body read to the close.
    thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let config = config.clone();
            let response = if n % 2 == 0 { &response } else { &unframed }.clone();
            thread::spawn(move || {
                let connection = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, stream);
                if read_head(&mut BufReader::new(&mut tls)).is_none() {
                    return;
                }
                let _ = tls.write_all(response.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.conn.complete_io(&mut tls.sock);
            });
        }
    });
    let origin = format!("https://{addr}");
    let server = TestServer::faults(Limits {
        allow_outbound: allow(&[&origin]),
        outbound_ca: Some(files.cert.clone()),
        ..test_limits()
    });
    assert_fetched_whole(
        &server,
        &format!("{origin}/"),
        &body,
        "TLS with close_notify",
    );
}
