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
async fn cleartext(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    client(tokio::net::TcpStream::connect(addr).await.unwrap()).await
}

/// Sends `method path` with `body`; returns the status, the response's
/// header fields and its body.
async fn send(
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
