//! The HTTP/1.1 front end over real loopback sockets: keep-alive,
//! pipelining, HTTP/1.0, HEAD, request bodies, streamed responses, the
//! bad-input table, timeouts, and concurrency.

use crate::support;

use std::io::{BufReader, Read, Write};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use crate::support::{
    Response, TestServer, assert_closed, client, demo_root, read_response, test_limits,
};
use wasmhttpd::Limits;

/// The default guest on the demo site, shared by the tests in this file.
fn demo() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer::static_files(&demo_root()))
}

/// The fault guest (for `/echo` and `/stream`) with a 1 MiB body limit.
fn echo() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::faults(Limits {
            max_body: 1 << 20,
            ..test_limits()
        })
    })
}

fn index_html() -> Vec<u8> {
    std::fs::read(demo_root().join("index.html")).unwrap()
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = demo();
    let mut stream = server.connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let css = std::fs::read(demo_root().join("css/site.css")).unwrap();
    for i in 0..200 {
        let (path, expected) = if i % 2 == 0 {
            ("/", index_html())
        } else {
            ("/css/site.css", css.clone())
        };
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let response = read_response(&mut reader, false);
        assert_eq!(response.status, 200, "request {i}");
        assert_eq!(response.body, expected, "request {i}");
        assert_eq!(
            response.header("content-length"),
            Some(expected.len().to_string().as_str())
        );
        assert_eq!(response.header("connection"), None);
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = demo();
    let mut stream = server.connect();
    let requests = "GET /img/logo.svg HTTP/1.1\r\nHost: t\r\n\r\n\
                    GET /missing HTTP/1.1\r\nHost: t\r\n\r\n\
                    HEAD / HTTP/1.1\r\nHost: t\r\n\r\n\
                    GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    stream.write_all(requests.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let svg = read_response(&mut reader, false);
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert_eq!(
        svg.body,
        std::fs::read(demo_root().join("img/logo.svg")).unwrap()
    );
    let missing = read_response(&mut reader, false);
    assert_eq!(missing.status, 404);
    let head = read_response(&mut reader, true);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(index_html().len().to_string().as_str())
    );
    let last = read_response(&mut reader, false);
    assert_eq!(last.status, 200);
    assert_eq!(last.body, index_html());
    assert_eq!(last.header("connection"), Some("close"));
    assert_closed(&mut reader);
}

#[test]
fn head_sends_the_get_headers_and_no_body() {
    let server = demo();
    let mut stream = server.connect();
    // If HEAD leaked a body, the GET response would not parse after it.
    stream
        .write_all(b"HEAD /img/sandbox.png HTTP/1.1\r\nHost: t\r\n\r\nGET /img/sandbox.png HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let head = read_response(&mut reader, true);
    let get = read_response(&mut reader, false);
    assert_eq!(head.status, 200);
    assert_eq!(get.status, 200);
    for name in ["content-type", "content-length"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    assert_eq!(
        get.body,
        std::fs::read(demo_root().join("img/sandbox.png")).unwrap()
    );
}

#[test]
fn every_response_has_a_valid_date_header() {
    let response = demo().exchange(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let date = response.header("date").expect("Date header");
    let first = httpdate::parse_http_date(date).expect("IMF-fixdate");
    let response = demo().exchange(b"GET / HTTP/9.9\r\n\r\n");
    assert!(response.header("date").is_some());
    // The date is the time of the response, not of an earlier one: once
    // the clock has passed the first date's second, a later response has
    // a later date.
    let next_second = first + std::time::Duration::from_secs(1);
    while std::time::SystemTime::now() < next_second {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let response = demo().exchange(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let later = httpdate::parse_http_date(response.header("date").unwrap()).unwrap();
    assert!(later > first, "{later:?} after {first:?}");
    let now = std::time::SystemTime::now();
    assert!(now.duration_since(later).unwrap() < std::time::Duration::from_secs(2));
}

#[test]
fn http10_closes_by_default_and_needs_no_host() {
    let mut stream = demo().connect();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, index_html());
    assert_eq!(response.header("connection"), Some("close"));
    assert_closed(&mut reader);
}

#[test]
fn http10_keep_alive_when_asked() {
    let mut stream = demo().connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for _ in 0..3 {
        stream
            .write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let response = read_response(&mut reader, false);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), Some("keep-alive"));
        assert_eq!(response.body, index_html());
    }
}

#[test]
fn connection_close_is_honoured() {
    let mut stream = demo().connect();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert_closed(&mut reader);
}

#[test]
fn absolute_form_target_is_served() {
    let response =
        demo().exchange(b"GET http://example.com/index.html HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, index_html());
}

#[test]
fn content_length_request_body_reaches_the_guest() {
    let body = support::noise(100_000, 7);
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let response = echo().exchange(&request);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-method"), Some("POST"));
    assert_eq!(response.body, body);
}

#[test]
fn chunked_request_body_reaches_the_guest() {
    let mut stream = echo().connect();
    stream
        .write_all(b"PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    // Sent in pieces that split sizes, data and CRLFs across reads.
    for piece in [
        &b"5\r\nhel"[..],
        b"lo\r",
        b"\n7;ext=1\r\n, world\r\n",
        b"0\r\nX-T: 1\r\n",
        b"\r\n",
    ] {
        stream.write_all(piece).unwrap();
        stream.flush().unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    let response = read_response(&mut BufReader::new(stream), false);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello, world");
    assert_eq!(response.header("x-length"), Some("12"));
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let mut stream = echo().connect();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0; interim.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, interim);
    stream.write_all(b"ping").unwrap();
    let response = read_response(&mut BufReader::new(stream), false);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "ping");
}

#[test]
fn a_body_over_the_limit_is_refused_before_it_is_read() {
    let response = echo().exchange(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(response.status, 413);
    assert_eq!(response.header("connection"), Some("close"));
}

#[test]
fn a_chunked_body_over_the_limit_is_413() {
    let mut stream = echo().connect();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..32 {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend_from_slice(&chunk);
        piece.extend_from_slice(b"\r\n");
        if stream.write_all(&piece).is_err() {
            break;
        }
    }
    let response = read_response(&mut BufReader::new(stream), false);
    assert_eq!(response.status, 413);
    assert_eq!(response.header("connection"), Some("close"));
}

#[test]
fn a_streaming_guest_gets_chunked_encoding() {
    let response = echo().exchange(b"GET /stream?n=4&ms=10 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(response.status, 200);
    assert!(response.chunked, "headers: {:?}", response.headers);
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
}

#[test]
fn a_streaming_guest_is_close_delimited_for_http10() {
    let mut stream = echo().connect();
    stream
        .write_all(b"GET /stream?n=3&ms=10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let response = read_response(&mut BufReader::new(stream), false);
    assert_eq!(response.status, 200);
    assert!(!response.chunked);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(response.text(), "chunk 0\nchunk 1\nchunk 2\n");
}

/// Sends `request`, expects `status` with `Connection: close`, then EOF.
fn assert_refused(request: &[u8], status: u16) {
    let mut stream = demo().connect();
    let _ = stream.write_all(request);
    let mut reader = BufReader::new(stream);
    let response: Response = read_response(&mut reader, false);
    assert_eq!(
        response.status,
        status,
        "request {:?} got {}",
        String::from_utf8_lossy(&request[..request.len().min(80)]),
        response.text()
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert!(response.header("content-length").is_some());
    assert_closed(&mut reader);
}

/// Requests the front end refuses, each with the status it gets (and
/// `Connection: close`), over cleartext here and over TLS in `tls.rs`.
pub(crate) fn bad_inputs() -> Vec<(Vec<u8>, u16)> {
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(17 * 1024));
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(17 * 1024)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&[u8], u16)> = vec![
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: t\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\nX: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nExpect: something\r\n\r\n", 417),
        (long_uri.as_bytes(), 414),
        (long_header.as_bytes(), 431),
        (many_headers.as_bytes(), 431),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 9000000\r\n\r\n", 413),
    ];
    cases
        .into_iter()
        .map(|(request, status)| (request.to_vec(), status))
        .collect()
}

#[test]
fn bad_input_table() {
    for (request, status) in bad_inputs() {
        assert_refused(&request, status);
    }
}

#[test]
fn bad_input_never_takes_the_server_down() {
    for _ in 0..20 {
        assert_refused(b"GET / HTTP/1.1\nHost: t\n\n", 400);
    }
    let response = demo().exchange(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(response.status, 200);
}

fn timeouts_server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::start(wasmhttpd::Config {
            limits: Limits {
                header_timeout: Duration::from_millis(500),
                keep_alive_timeout: Duration::from_millis(500),
                body_timeout: Duration::from_millis(500),
                ..test_limits()
            },
            ..wasmhttpd::Config::new(demo_root())
        })
    })
}

#[test]
fn a_client_that_never_finishes_its_head_is_disconnected() {
    let mut stream = timeouts_server().connect();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    // No response is owed; the server closes. The client's own read timeout
    // (20 s) fails the test if the server never does.
    assert_closed(&mut stream);
}

#[test]
fn a_slowloris_trickle_is_cut_off_by_the_header_timeout() {
    let mut stream = timeouts_server().connect();
    // One byte every 20 ms for 2 s: each byte arrives well within any
    // per-read timeout, but the head as a whole takes four times the limit.
    let head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: "
        .iter()
        .chain([b'a'; 100].iter());
    for byte in head {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_closed(&mut stream);
}

#[test]
fn a_client_that_stalls_mid_body_gets_408_and_is_disconnected() {
    let mut stream = timeouts_server().connect();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false);
    assert_eq!(response.status, 408);
    assert_eq!(response.header("connection"), Some("close"));
    assert_closed(&mut reader);
}

#[test]
fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let root = tempfile::tempdir().unwrap();
    // Far more than the socket buffers on both ends hold, so the server's
    // writes block once the client stops reading.
    let big = support::noise(64 << 20, 7);
    std::fs::write(root.path().join("big.bin"), &big).unwrap();
    let server = TestServer::start(wasmhttpd::Config {
        limits: Limits {
            write_timeout: Duration::from_millis(500),
            ..test_limits()
        },
        ..wasmhttpd::Config::new(root.path())
    });
    let mut stream = server.connect();
    stream
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Not reading until the server has given up on the client.
    server.eventually("the server writes to the client", |monitor| {
        monitor.connections() == 1
    });
    server.eventually("the server drops the client", |monitor| {
        monitor.connections() == 0
    });
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
    assert!(
        received.len() < big.len(),
        "the server gave up on the client: {} bytes of {}",
        received.len(),
        big.len()
    );
    // Others are still served.
    let response =
        server.exchange(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(response.body == big, "a reading client gets the whole file");
}

#[test]
fn past_the_connection_cap_clients_wait_instead_of_being_refused() {
    let server = TestServer::start(wasmhttpd::Config {
        limits: Limits {
            max_connections: 1,
            keep_alive_timeout: Duration::from_secs(30),
            ..test_limits()
        },
        ..wasmhttpd::Config::new(demo_root())
    });
    let request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut first = server.connect();
    first.write_all(request).unwrap();
    let mut first = BufReader::new(first);
    assert_eq!(read_response(&mut first, false).status, 200);
    // The second client is not refused: its connection waits in the
    // kernel's backlog, unanswered while the first stays open.
    let mut second = server.connect();
    second.write_all(request).unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0; 1];
    let waiting = second.read(&mut byte).unwrap_err();
    assert!(
        matches!(
            waiting.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{waiting}"
    );
    assert_eq!(server.monitor.connections(), 1);
    drop(first);
    second
        .set_read_timeout(Some(support::CLIENT_TIMEOUT))
        .unwrap();
    let response = read_response(&mut BufReader::new(second), false);
    assert_eq!(response.status, 200, "served once the first client left");
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let mut stream = timeouts_server().connect();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), None);
    assert_closed(&mut reader);
}

#[test]
fn slow_clients_do_not_block_others() {
    let server = timeouts_server();
    // Clients that start a request and stall.
    let stalled: Vec<_> = (0..50)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
            s
        })
        .collect();
    // A client that asks for a large body and does not read it.
    let mut lazy = server.connect();
    lazy.write_all(
        b"GET /img/sandbox.png HTTP/1.1\r\nHost: t\r\n\r\n"
            .repeat(200)
            .as_slice(),
    )
    .unwrap();
    let agent = client();
    for _ in 0..20 {
        let (status, _, body) = support::get(&agent, &server.url("/"));
        assert_eq!(status, 200);
        assert_eq!(body, index_html());
    }
    drop(stalled);
    drop(lazy);
}

#[test]
fn many_concurrent_clients() {
    let server = demo();
    let expected = index_html();
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let url = server.url("/");
            let expected = expected.clone();
            thread::spawn(move || {
                let agent = client();
                for _ in 0..25 {
                    let (status, content_type, body) = support::get(&agent, &url);
                    assert_eq!(status, 200);
                    assert_eq!(content_type, "text/html; charset=utf-8");
                    assert_eq!(body, expected);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("client thread");
    }
}
