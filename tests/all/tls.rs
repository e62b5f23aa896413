//! HTTPS: the HTTP/1.1 front end over rustls, with certificates made in
//! the test (rcgen) and a real TLS client (rustls) trusting them: ALPN,
//! both TLS versions, the HTTP/1 behaviour over TLS (its timeouts and the
//! connection cap too), wss, the scheme the guest sees, a certificate
//! replaced on disk, and the files' errors.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::metrics::{scrape, value};
use crate::support::{
    CLIENT_TIMEOUT, TestServer, assert_closed, demo_root, eventually, fault_guest, noise,
    read_response, test_limits,
};
use wasmhttpd::tls::TlsFiles;
use wasmhttpd::{Config, GuestSource, Limits};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM
/// files in `dir`; returns the files and the certificate, for a client to
/// trust.
pub(crate) fn certificate(dir: &Path, name: &str) -> (TlsFiles, CertificateDer<'static>) {
    let key =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let files = TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, key.cert.pem()).unwrap();
    std::fs::write(&files.key, key.signing_key.serialize_pem()).unwrap();
    (files, key.cert.der().clone())
}

/// A client configuration that trusts `root` only, offering `alpn`, for
/// `versions` of TLS.
pub(crate) fn client_config(
    root: &CertificateDer<'static>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` as `localhost`, handshake done.
pub(crate) fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let server = ServerName::try_from("localhost").unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(config, server).unwrap(), tcp);
    tls.conn.complete_io(&mut tls.sock).unwrap();
    tls
}

/// The fault guest on the demo root, over TLS with a fresh certificate.
struct Https {
    server: TestServer,
    root: CertificateDer<'static>,
    files: TlsFiles,
    _dir: tempfile::TempDir,
}

impl Https {
    fn start() -> Https {
        Https::serving(Config {
            limits: test_limits(),
            watch: true,
            ..Config::new(demo_root()).with_guest(GuestSource::File(fault_guest()))
        })
    }

    /// `config`, over TLS with a fresh certificate.
    fn serving(config: Config) -> Https {
        let dir = tempfile::tempdir().unwrap();
        let (files, root) = certificate(dir.path(), "server");
        let server = TestServer::start(Config {
            tls: Some(files.clone()),
            ..config
        });
        Https {
            server,
            root,
            files,
            _dir: dir,
        }
    }

    /// An HTTP/1.1 client's connection (ALPN `http/1.1`).
    fn connect(&self) -> StreamOwned<ClientConnection, TcpStream> {
        connect(
            self.server.addr,
            client_config(&self.root, &[b"http/1.1"], rustls::DEFAULT_VERSIONS),
        )
    }
}

#[test]
fn alpn_picks_h2_then_http1_and_both_tls_versions_are_spoken() {
    let https = Https::start();
    let both = client_config(&https.root, &[b"h2", b"http/1.1"], rustls::DEFAULT_VERSIONS);
    let tls = connect(https.server.addr, both);
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    let tls = https.connect();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    // A client that offers no ALPN gets HTTP/1.1.
    let none = client_config(&https.root, &[], rustls::DEFAULT_VERSIONS);
    let mut tls = connect(https.server.addr, none);
    assert_eq!(tls.conn.alpn_protocol(), None);
    tls.write_all(b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut BufReader::new(tls), false).status, 200);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = client_config(&https.root, &[b"http/1.1"], &[version]);
        let mut tls = connect(https.server.addr, config);
        assert_eq!(tls.conn.protocol_version(), Some(version.version));
        tls.write_all(b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let response = read_response(&mut BufReader::new(tls), false);
        assert_eq!((response.status, response.text().as_str()), (200, "ok"));
    }
}

#[test]
fn http1_keeps_its_behaviour_over_tls() {
    let https = Https::start();
    let mut tls = https.connect();
    // Keep-alive and pipelining: three requests in one write, one
    // connection, answered in order.
    tls.write_all(
        b"GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello\
          GET /stream?n=3&ms=5 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    let mut reader = BufReader::new(tls);
    let ok = read_response(&mut reader, false);
    assert_eq!((ok.status, ok.text().as_str()), (200, "ok"));
    let echo = read_response(&mut reader, false);
    assert_eq!((echo.status, echo.text().as_str()), (200, "hello"));
    let streamed = read_response(&mut reader, false);
    assert!(streamed.chunked);
    assert_eq!(streamed.text(), "chunk 0\nchunk 1\nchunk 2\n");
    // The guest is told the request came over https.
    let mut tls = reader.into_inner();
    tls.write_all(b"GET /scheme HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(tls);
    let scheme = read_response(&mut reader, false);
    assert_eq!(scheme.text(), "Some(Scheme::Https)");
    // Bad input still gets its status.
    let mut tls = reader.into_inner();
    tls.write_all(b"GET /ok HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n")
        .unwrap();
    let bad = read_response(&mut BufReader::new(tls), false);
    assert_eq!(bad.status, 400);
}

#[test]
fn http10_chunked_uploads_and_100_continue_hold_over_tls() {
    let https = Https::start();
    // HTTP/1.0 without Host: answered, then closed with close_notify.
    let mut tls = https.connect();
    tls.write_all(b"GET /ok HTTP/1.0\r\n\r\n").unwrap();
    let mut reader = BufReader::new(tls);
    let response = read_response(&mut reader, false);
    assert_eq!((response.status, response.text().as_str()), (200, "ok"));
    assert_eq!(response.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0);

    // A chunked body, then one sent only after the interim 100, on one
    // connection.
    let mut tls = https.connect();
    tls.write_all(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .unwrap();
    let mut reader = BufReader::new(tls);
    let echo = read_response(&mut reader, false);
    assert_eq!((echo.status, echo.text().as_str()), (200, "abcde"));
    reader
        .get_mut()
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .unwrap();
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0; interim.len()];
    reader.read_exact(&mut got).unwrap();
    assert_eq!(got, interim);
    reader.get_mut().write_all(b"ping").unwrap();
    let echo = read_response(&mut reader, false);
    assert_eq!((echo.status, echo.text().as_str()), (200, "ping"));
}

#[test]
fn the_bad_input_table_holds_over_tls() {
    let https = Https::start();
    for (request, status) in crate::http1::bad_inputs() {
        let mut tls = https.connect();
        let _ = tls.write_all(&request);
        let mut reader = BufReader::new(tls);
        let response = read_response(&mut reader, false);
        let shown = String::from_utf8_lossy(&request[..request.len().min(80)]).into_owned();
        assert_eq!(response.status, status, "{shown}");
        assert_eq!(response.header("connection"), Some("close"), "{shown}");
        // The server ends the TLS session (close_notify), then the connection.
        let mut rest = Vec::new();
        assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0, "{shown}");
    }
}

/// Asserts the server has ended `tls` with nothing more to read: a
/// `close_notify`, or a connection closed or reset under it (a broken pipe
/// for a client whose last bytes could not be sent).
fn assert_ended(tls: &mut StreamOwned<ClientConnection, TcpStream>) {
    let mut rest = Vec::new();
    match tls.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest)),
        Err(err) => assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ),
            "{err}"
        ),
    }
}

#[test]
fn the_timeouts_hold_over_tls() {
    let root = tempfile::tempdir().unwrap();
    // Far more than the socket and TLS buffers hold, so the server's
    // writes block once the client stops reading.
    let big = noise(64 << 20, 11);
    std::fs::write(root.path().join("big.bin"), &big).unwrap();
    std::fs::write(root.path().join("index.html"), "home\n").unwrap();
    let half_second = Duration::from_millis(500);
    let https = Https::serving(Config {
        limits: Limits {
            header_timeout: half_second,
            body_timeout: half_second,
            keep_alive_timeout: half_second,
            write_timeout: half_second,
            ..test_limits()
        },
        ..Config::new(root.path())
    });

    // A handshake never begun gets the head's time, then the socket closes.
    let mut silent = TcpStream::connect(https.server.addr).unwrap();
    silent.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    assert_closed(&mut silent);

    // A head never finished, and one trickled a byte every 20 ms for four
    // times the limit.
    let mut tls = https.connect();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    assert_ended(&mut tls);
    let mut tls = https.connect();
    for byte in b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
        .iter()
        .chain(&[b'a'; 100])
    {
        if tls.write_all(&[*byte]).and_then(|()| tls.flush()).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ended(&mut tls);

    // A body that stalls gets 408 and the end of the connection.
    let mut tls = https.connect();
    tls.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let mut reader = BufReader::new(tls);
    let stalled = read_response(&mut reader, false);
    assert_eq!(stalled.status, 408);
    assert_eq!(stalled.header("connection"), Some("close"));
    assert_ended(reader.get_mut());

    // An idle keep-alive connection is ended past its timeout with a
    // close_notify: a clean end, not a cut one.
    let mut tls = https.connect();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(tls);
    let home = read_response(&mut reader, false);
    assert_eq!((home.status, home.text().as_str()), (200, "home\n"));
    assert_eq!(home.header("connection"), None);
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0);
    drop((silent, reader));
    // The connections above have all ended (the 408's lingers a moment),
    // so the one below is the only one.
    https
        .server
        .eventually("the earlier connections end", |monitor| {
            monitor.connections() == 0
        });

    // A client that stops reading is dropped after the write timeout.
    let mut lazy = https.connect();
    lazy.write_all(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    lazy.flush().unwrap();
    https
        .server
        .eventually("the server writes to the client", |monitor| {
            monitor.connections() == 1
        });
    https
        .server
        .eventually("the server drops the client", |monitor| {
            monitor.connections() == 0
        });
    let mut received = Vec::new();
    let _ = lazy.read_to_end(&mut received);
    assert!(
        received.len() < big.len(),
        "the server gave up on the client: {} bytes of {}",
        received.len(),
        big.len()
    );
    // A reading client gets the whole file.
    let mut tls = https.connect();
    tls.write_all(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let whole = read_response(&mut BufReader::new(tls), false);
    assert!(
        whole.body == big,
        "{} bytes of {}",
        whole.body.len(),
        big.len()
    );
}

#[test]
fn past_the_connection_cap_tls_clients_wait_for_their_handshake() {
    let https = Https::serving(Config {
        limits: Limits {
            max_connections: 1,
            keep_alive_timeout: Duration::from_secs(30),
            ..test_limits()
        },
        ..Config::new(demo_root())
    });
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut first = https.connect();
    first.write_all(request).unwrap();
    let mut first = BufReader::new(first);
    assert_eq!(read_response(&mut first, false).status, 200);
    // The second client's handshake waits in the kernel's backlog,
    // unanswered while the first stays open; it is not refused.
    let config = client_config(&https.root, &[b"http/1.1"], rustls::DEFAULT_VERSIONS);
    let tcp = TcpStream::connect(https.server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut second = StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp);
    let waiting = second.conn.complete_io(&mut second.sock).unwrap_err();
    assert!(
        matches!(
            waiting.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{waiting}"
    );
    assert!(second.conn.is_handshaking());
    assert_eq!(https.server.monitor.connections(), 1);
    drop(first);
    second.sock.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    second.conn.complete_io(&mut second.sock).unwrap();
    second.write_all(request).unwrap();
    let response = read_response(&mut BufReader::new(second), false);
    assert_eq!(response.status, 200, "served once the first client left");
}

#[test]
fn cleartext_and_broken_handshakes_leave_the_server_serving() {
    let https = Https::start();
    // Plain HTTP to the TLS port: no HTTP response, the connection ends.
    let mut plain = TcpStream::connect(https.server.addr).unwrap();
    plain.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // A client that trusts another certificate refuses this one.
    let other = tempfile::tempdir().unwrap();
    let (_, stranger) = certificate(other.path(), "other");
    let config = client_config(&stranger, &[b"http/1.1"], rustls::DEFAULT_VERSIONS);
    let tcp = TcpStream::connect(https.server.addr).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut refused = StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp);
    assert!(refused.conn.complete_io(&mut refused.sock).is_err());
    // And the server goes on.
    let mut tls = https.connect();
    tls.write_all(b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut BufReader::new(tls), false).status, 200);
}

#[test]
fn wss_echoes_through_the_guest() {
    let https = Https::start();
    let config = client_config(&https.root, &[b"http/1.1"], rustls::DEFAULT_VERSIONS);
    let tls = connect(https.server.addr, config);
    let url = format!("wss://localhost:{}/ws/echo", https.server.addr.port());
    let (mut socket, response) = tungstenite::client(url.as_str(), tls).unwrap();
    assert_eq!(response.status(), 101);
    socket.send(tungstenite::Message::text("over tls")).unwrap();
    assert_eq!(
        socket.read().unwrap(),
        tungstenite::Message::text("over tls")
    );
    socket.close(None).unwrap();
}

/// The certificate the server presents on a new handshake.
fn presented(https: &Https, trust: &CertificateDer<'static>) -> Option<CertificateDer<'static>> {
    let config = client_config(trust, &[b"http/1.1"], rustls::DEFAULT_VERSIONS);
    let tcp = TcpStream::connect(https.server.addr).unwrap();
    tcp.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp);
    tls.conn.complete_io(&mut tls.sock).ok()?;
    tls.conn
        .peer_certificates()
        .map(|chain| chain[0].clone().into_owned())
}

/// Writes `files`' pair over `target`'s, each by a rename, as a deploy
/// does (the key first, so the pair matches once the certificate lands).
fn replace(target: &TlsFiles, files: &TlsFiles) {
    for (from, to) in [(&files.key, &target.key), (&files.cert, &target.cert)] {
        let temp = PathBuf::from(format!("{}.new", to.display()));
        std::fs::copy(from, &temp).unwrap();
        std::fs::rename(&temp, to).unwrap();
    }
}

#[test]
fn a_certificate_replaced_on_disk_is_served_on_the_next_handshake() {
    let https = Https::start();
    assert_eq!(presented(&https, &https.root), Some(https.root.clone()));
    let staging = tempfile::tempdir().unwrap();
    let (renewed, renewed_cert) = certificate(staging.path(), "renewed");
    replace(&https.files, &renewed);
    eventually("the renewed certificate is presented", || {
        presented(&https, &renewed_cert) == Some(renewed_cert.clone())
    });

    // A broken certificate is reported and the running one kept.
    std::fs::write(staging.path().join("broken.crt"), "not a certificate\n").unwrap();
    let temp = staging.path().join("broken.crt");
    std::fs::copy(&temp, https.files.cert.with_extension("tmp")).unwrap();
    std::fs::rename(https.files.cert.with_extension("tmp"), &https.files.cert).unwrap();
    eventually("the broken certificate is refused", || {
        value(
            &scrape(&https.server),
            "wasmhttpd_tls_reloads_total{result=\"failed\"}",
        ) >= 1.0
    });
    assert_eq!(presented(&https, &renewed_cert), Some(renewed_cert));
    assert!(
        value(
            &scrape(&https.server),
            "wasmhttpd_tls_reloads_total{result=\"loaded\"}"
        ) >= 1.0
    );
}
