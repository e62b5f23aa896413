//! HTTP/2: hyper's HTTP/2 client against the server, over TLS (ALPN `h2`)
//! and in cleartext by prior knowledge, through the same dispatch as
//! HTTP/1.1: the default guest's files byte for byte, 404 and 405, bodies
//! both ways, streamed responses, many streams on one connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::support::{TestServer, demo_root, fault_guest, test_limits};
use wasmhttpd::tls::TlsFiles;
use wasmhttpd::{Config, GuestSource};

/// Runs `test` on a runtime of its own.
fn run<F: Future<Output = ()>>(test: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// An HTTP/2 client on `io`.
async fn client<S>(io: S) -> SendRequest<Full<Bytes>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// A server with TLS on (a fresh certificate) and `guest` on `/`, and a
/// client configuration trusting it that offers `h2` and `http/1.1`.
struct Secure {
    server: TestServer,
    config: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

impl Secure {
    fn start(guest: GuestSource) -> Secure {
        let dir = tempfile::tempdir().unwrap();
        let (files, root): (TlsFiles, _) = crate::tls::certificate(dir.path(), "server");
        let server = TestServer::start(Config {
            limits: test_limits(),
            tls: Some(files),
            ..Config::new(demo_root()).with_guest(guest)
        });
        let config =
            crate::tls::client_config(&root, &[b"h2", b"http/1.1"], rustls::DEFAULT_VERSIONS);
        Secure {
            server,
            config,
            _dir: dir,
        }
    }

    /// An HTTP/2 client over a new TLS connection.
    async fn client(&self) -> SendRequest<Full<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(self.server.addr)
            .await
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        client(tls).await
    }
}

/// An HTTP/2 client over a new cleartext connection (prior knowledge).
pub(crate) async fn cleartext(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    client(tokio::net::TcpStream::connect(addr).await.unwrap()).await
}

/// Sends `method path` with `body`; returns the status, the response's
/// header fields and its body.
pub(crate) async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    uri: &str,
    body: &[u8],
) -> (u16, http::HeaderMap, Vec<u8>) {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, body.to_vec())
}

#[test]
fn the_default_guests_files_over_h2_and_tls() {
    let secure = Secure::start(GuestSource::Default);
    let base = format!("https://localhost:{}", secure.server.addr.port());
    run(async {
        let mut h2 = secure.client().await;
        let root = demo_root();
        for (path, file) in [("/", "index.html"), ("/img/sandbox.png", "img/sandbox.png")] {
            let (status, headers, body) = send(&mut h2, "GET", &format!("{base}{path}"), b"").await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(
                body,
                std::fs::read(root.join(file)).unwrap(),
                "{path} byte for byte"
            );
            assert!(headers.contains_key("etag"), "{path}");
        }
        let (status, headers, body) =
            send(&mut h2, "HEAD", &format!("{base}/index.html"), b"").await;
        assert_eq!(status, 200);
        assert!(body.is_empty(), "HEAD has no body");
        assert!(headers.contains_key("content-length"));
        let (status, _, body) = send(&mut h2, "GET", &format!("{base}/missing.html"), b"").await;
        assert_eq!(status, 404);
        assert!(String::from_utf8_lossy(&body).contains("404"));
        let (status, headers, _) = send(&mut h2, "POST", &format!("{base}/index.html"), b"x").await;
        assert_eq!(status, 405);
        assert_eq!(headers["allow"], "GET, HEAD");
    });
}

#[test]
fn bodies_both_ways_and_streamed_responses_over_h2() {
    let secure = Secure::start(GuestSource::File(fault_guest()));
    let base = format!("https://localhost:{}", secure.server.addr.port());
    run(async {
        let mut h2 = secure.client().await;
        let upload = crate::support::noise(300_000, 7);
        let (status, headers, body) = send(&mut h2, "POST", &format!("{base}/echo"), &upload).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-length"], "300000");
        assert!(body == upload, "the echo is the upload");
        let (status, _, body) = send(&mut h2, "GET", &format!("{base}/stream?n=4&ms=5"), b"").await;
        assert_eq!(status, 200);
        assert_eq!(body, b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
        let (_, _, scheme) = send(&mut h2, "GET", &format!("{base}/scheme"), b"").await;
        assert_eq!(scheme, b"Some(Scheme::Https)");
        // A body past the limit is refused.
        let big = vec![b'x'; (test_limits().max_body + 1) as usize];
        let (status, _, _) = send(&mut h2, "POST", &format!("{base}/echo"), &big).await;
        assert_eq!(status, 413);
    });
}

#[test]
fn many_streams_share_one_connection() {
    let secure = Secure::start(GuestSource::File(fault_guest()));
    let base = format!("https://localhost:{}", secure.server.addr.port());
    run(async {
        let h2 = secure.client().await;
        let streams: Vec<_> = (0..50)
            .map(|_| {
                let mut h2 = h2.clone();
                let url = format!("{base}/stream?n=2&ms=20");
                tokio::spawn(async move { send(&mut h2, "GET", &url, b"").await })
            })
            .collect();
        for stream in streams {
            let (status, _, body) = stream.await.unwrap();
            assert_eq!((status, body.as_slice()), (200, &b"chunk 0\nchunk 1\n"[..]));
        }
    });
}

#[test]
fn h2c_by_prior_knowledge_beside_http1_on_one_port() {
    let server = TestServer::static_files(&demo_root());
    let base = format!("http://{}", server.addr);
    run(async {
        let mut h2 = cleartext(server.addr).await;
        let (status, _, body) = send(&mut h2, "GET", &format!("{base}/"), b"").await;
        assert_eq!(status, 200);
        assert_eq!(body, std::fs::read(demo_root().join("index.html")).unwrap());
    });
    // HTTP/1.1 on the same port, as before.
    assert_eq!(server.status("/index.html"), 200);
}

/// Frame types (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
/// Flags.
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
/// Error codes.
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;

/// HTTP/2 frames written and read by hand on a cleartext connection,
/// for what a well-behaved client never sends.
struct Raw {
    stream: std::net::TcpStream,
}

/// One frame as read: its type, flags, stream and payload.
type RawFrame = (u8, u8, u32, Vec<u8>);

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(crate::support::CLIENT_TIMEOUT))
            .unwrap();
        let mut raw = Raw { stream };
        raw.write(wasmhttpd::proto::h2::PREFACE);
        raw.frame(SETTINGS, 0, 0, &[]);
        raw
    }

    fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        // The server may have closed the connection: what it sent is read.
        let _ = self.stream.write_all(bytes);
    }

    fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.write(&Raw::encode(kind, flags, stream, payload));
    }

    /// The next frame, or `None` once the server closed the connection.
    fn read(&mut self) -> Option<RawFrame> {
        use std::io::Read;
        let mut head = [0_u8; 9];
        self.stream.read_exact(&mut head).ok()?;
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; length];
        self.stream.read_exact(&mut payload).ok()?;
        Some((head[3], head[4], stream, payload))
    }

    /// Reads frames until one matches `wanted`, or the connection ends;
    /// acknowledges the server's SETTINGS and PINGs on the way, as a
    /// client must.
    fn read_until(&mut self, wanted: impl Fn(&RawFrame) -> bool) -> Option<RawFrame> {
        while let Some(frame) = self.read() {
            match &frame {
                (SETTINGS, 0, _, _) => self.frame(SETTINGS, ACK, 0, &[]),
                (PING, 0, _, payload) => {
                    let payload = payload.clone();
                    self.frame(PING, ACK, 0, &payload);
                }
                _ => {}
            }
            if wanted(&frame) {
                return Some(frame);
            }
        }
        None
    }
}

/// An HPACK integer with an `n`-bit prefix, its first byte or-ed with
/// `first` (RFC 7541 §5.1).
fn hpack_int(first: u8, n: u32, value: usize, out: &mut Vec<u8>) {
    let max = (1_usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block for `GET path` (no Huffman, nothing indexed), with
/// `extra` fields after the pseudo-headers.
fn request_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    // :method GET and :scheme http from the static table.
    let mut block = vec![0x82, 0x86];
    // :path and :authority: literal values of static-table names.
    for (index, value) in [(4, path), (1, "t")] {
        hpack_int(0x00, 4, index, &mut block);
        hpack_int(0x00, 7, value.len(), &mut block);
        block.extend(value.as_bytes());
    }
    for (name, value) in extra {
        block.push(0x00);
        hpack_int(0x00, 7, name.len(), &mut block);
        block.extend(name.as_bytes());
        hpack_int(0x00, 7, value.len(), &mut block);
        block.extend(value.as_bytes());
    }
    block
}

#[test]
fn thousands_of_streams_opened_and_reset_do_not_stop_other_clients() {
    let server = TestServer::faults(test_limits());
    let mut attacker = Raw::connect(server.addr);
    let block = request_block("/ok", &[]);
    let mut burst = Vec::new();
    for i in 0..5_000_u32 {
        let stream = 2 * i + 1;
        burst.extend(Raw::encode(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &block,
        ));
        burst.extend(Raw::encode(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    attacker.write(&burst);
    // The server ends the attacker's connection with GOAWAY
    // (ENHANCE_YOUR_CALM) rather than working through every stream.
    let goaway = attacker.read_until(|(kind, ..)| *kind == GOAWAY);
    let (_, _, _, payload) = goaway.expect("GOAWAY for a rapid reset");
    let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
    // Meanwhile other clients are served.
    assert_eq!(server.status("/ok"), 200);
    run(async {
        let mut h2 = cleartext(server.addr).await;
        let (status, _, _) = send(&mut h2, "GET", &format!("http://{}/ok", server.addr), b"").await;
        assert_eq!(status, 200);
    });
}

#[test]
fn a_header_list_past_the_head_limit_is_refused() {
    let server = TestServer::faults(test_limits());
    let mut raw = Raw::connect(server.addr);
    let big = "x".repeat(test_limits().max_head + 1024);
    let block = request_block("/ok", &[("x-big", &big)]);
    // In frames no bigger than the default 16 KiB: HEADERS, then
    // CONTINUATION.
    let mut pieces = block.chunks(8 * 1024).peekable();
    let mut kind = HEADERS;
    let mut flags = END_STREAM;
    while let Some(piece) = pieces.next() {
        let last = if pieces.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        raw.frame(kind, flags | last, 1, piece);
        (kind, flags) = (CONTINUATION, 0);
    }
    // Stream 1 is answered 431, without the guest.
    let answer = raw.read_until(|(kind, _, stream, _)| *stream == 1 || *kind == GOAWAY);
    let (kind, _, _, payload) = answer.expect("an answer on stream 1");
    assert_eq!(kind, HEADERS, "{payload:?}");
    // `:status: 431`, its value plain or Huffman-coded (RFC 7541 B).
    let huffman_431 = [0x69, 0x90, 0xff];
    assert!(
        payload.windows(3).any(|w| w == b"431" || w == huffman_431),
        "{payload:?}"
    );
    assert_eq!(server.status("/ok"), 200, "the server goes on");
}

#[test]
fn streams_past_the_concurrency_limit_are_refused() {
    let server = TestServer::faults(wasmhttpd::Limits {
        h2_max_streams: 2,
        guest_timeout: std::time::Duration::from_secs(5),
        ..test_limits()
    });
    let mut raw = Raw::connect(server.addr);
    let block = request_block("/sleep", &[]);
    for stream in [1, 3, 5] {
        raw.frame(HEADERS, END_HEADERS | END_STREAM, stream, &block);
    }
    let refused = raw.read_until(|(kind, _, stream, _)| *kind == RST_STREAM && *stream == 5);
    let (_, _, _, payload) = refused.expect("stream 5 is reset");
    assert_eq!(
        u32::from_be_bytes(payload[..4].try_into().unwrap()),
        REFUSED_STREAM
    );
}

#[test]
fn shutdown_sends_goaway_and_lets_streams_in_flight_finish() {
    let mut server = TestServer::faults(test_limits());
    let base = format!("http://{}", server.addr);
    run(async {
        let mut h2 = cleartext(server.addr).await;
        let request = http::Request::get(format!("{base}/stream?n=5&ms=100"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        h2.ready().await.unwrap();
        let response = h2.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        server.shut_down();
        // The stream in flight ends whole...
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
        // ...and the connection takes no new one.
        let again = http::Request::get(format!("{base}/ok"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let refused = async {
            h2.ready().await?;
            h2.send_request(again).await
        };
        assert!(refused.await.is_err(), "a stream after GOAWAY");
    });
}

/// Opens the WebSocket echo on a new stream of `h2` (an extended CONNECT)
/// and sends `text` through it; returns what came back.
async fn echo_over_h2(h2: &mut SendRequest<Full<Bytes>>, base: &str, text: &str) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, protocol::Role};
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("{base}/ws/echo"))
        .header("sec-websocket-version", "13")
        .body(Full::new(Bytes::new()))
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    h2.ready().await.unwrap();
    let response = h2.send_request(request).await.expect("CONNECT answered");
    assert_eq!(response.status(), 200);
    let stream = hyper::upgrade::on(response)
        .await
        .expect("the stream opens");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(stream),
        Role::Client,
        None,
    )
    .await;
    ws.send(Message::text(text)).await.unwrap();
    let echoed = ws.next().await.expect("a reply").unwrap();
    ws.close(None).await.unwrap();
    echoed.into_text().unwrap().to_string()
}

#[test]
fn websocket_over_h2_echoes_through_the_guest() {
    let secure = Secure::start(GuestSource::Default);
    let base = format!("https://localhost:{}", secure.server.addr.port());
    run(async {
        let mut h2 = secure.client().await;
        // A request first: the server's SETTINGS, which allow extended
        // CONNECT, have arrived by its answer.
        assert_eq!(send(&mut h2, "GET", &format!("{base}/"), b"").await.0, 200);
        assert_eq!(echo_over_h2(&mut h2, &base, "over h2").await, "over h2");
        // The connection goes on serving beside the session.
        assert_eq!(
            send(&mut h2, "GET", &format!("{base}/index.html"), b"")
                .await
                .0,
            200
        );
        assert_eq!(echo_over_h2(&mut h2, &base, "again").await, "again");
        // A version other than 13 is refused as over HTTP/1.1.
        let mut request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("{base}/ws/echo"))
            .header("sec-websocket-version", "8")
            .body(Full::new(Bytes::new()))
            .unwrap();
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let response = h2.send_request(request).await.unwrap();
        assert_eq!(response.status(), 426);
        assert_eq!(response.headers()["sec-websocket-version"], "13");
    });
    // Each session is counted, once it ends, with the 200 that opened it.
    let counted = |class: &str| {
        let metrics = crate::metrics::scrape(&secure.server);
        crate::metrics::value(
            &metrics,
            &format!("wasmhttpd_requests_total{{class=\"{class}\"}}"),
        )
    };
    crate::support::eventually("both sessions are counted", || counted("2xx") == 4.0);
    assert_eq!(counted("1xx"), 0.0);
}

#[test]
fn an_idle_connection_is_closed_with_goaway() {
    let server = TestServer::faults(wasmhttpd::Limits {
        keep_alive_timeout: std::time::Duration::from_millis(300),
        ..test_limits()
    });
    let mut raw = Raw::connect(server.addr);
    raw.frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/ok", &[]),
    );
    let answered = raw.read_until(|(kind, _, stream, _)| *kind == HEADERS && *stream == 1);
    assert!(answered.is_some(), "stream 1 answered");
    // Then nothing: the server says GOAWAY (NO_ERROR) and closes.
    let (_, _, _, payload) = raw
        .read_until(|(kind, ..)| *kind == GOAWAY)
        .expect("GOAWAY on an idle connection");
    assert_eq!(u32::from_be_bytes(payload[4..8].try_into().unwrap()), 0);
    assert!(raw.read_until(|_| false).is_none(), "the connection closes");
}
