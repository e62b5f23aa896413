//! Guest faults fail their own request and nothing else: loops and hangs
//! get 504 at the deadline, traps and memory exhaustion get 500, and a
//! guest that breaks its body after the head gets its connection closed.

use crate::support;

use std::io::{BufReader, Read, Write};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use crate::support::{
    TestServer, assert_closed, client, demo_root, fault_guest, get, read_response, test_limits,
};
use wasmhttpd::{Config, GuestSource, Limits};

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::faults(Limits {
            guest_timeout: Duration::from_secs(1),
            guest_memory: 16 << 20,
            ..test_limits()
        })
    })
}

fn status_of(path: &str) -> u16 {
    get(&client(), &server().url(path)).0
}

#[test]
fn a_looping_guest_gets_504_and_others_are_still_served() {
    let looping: Vec<_> = (0..4)
        .map(|_| thread::spawn(|| status_of("/loop")))
        .collect();
    // While four instances spin, other requests are answered.
    for _ in 0..10 {
        let (status, _, body) = get(&client(), &server().url("/ok"));
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    }
    for handle in looping {
        assert_eq!(handle.join().unwrap(), 504);
    }
    assert_eq!(status_of("/ok"), 200);
}

#[test]
fn a_guest_blocked_in_a_host_call_gets_504() {
    assert_eq!(status_of("/sleep"), 504);
    assert_eq!(status_of("/ok"), 200);
}

#[test]
fn a_trapping_guest_gets_500_and_the_connection_stays_usable() {
    let mut stream = server().connect();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for path in ["/trap", "/ok", "/trap", "/ok"] {
        write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let response = read_response(&mut reader, false);
        let expected = if path == "/trap" { 500 } else { 200 };
        assert_eq!(response.status, expected, "{path}");
    }
}

#[test]
fn a_guest_that_exhausts_its_memory_gets_500() {
    for _ in 0..3 {
        assert_eq!(status_of("/alloc"), 500);
        assert_eq!(status_of("/ok"), 200);
    }
}

#[test]
fn a_guest_that_never_sets_a_response_gets_500() {
    assert_eq!(status_of("/no-response"), 500);
    assert_eq!(status_of("/ok"), 200);
}

/// Sends `GET path` with a pipelined `GET /ok` behind it on one
/// connection; returns everything the server sent until it closed.
fn pipelined_until_closed(path: &str) -> Vec<u8> {
    let mut stream = server().connect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset),
    }
    raw
}

/// The head promised 100 bytes; 10 came. The client must see the
/// connection end rather than a keep-alive stream it cannot frame.
fn assert_truncated_then_closed(path: &str) {
    let raw = pipelined_until_closed(path);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 100\r\n"), "{text}");
    let body = &raw[raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(body, b"0123456789", "no bytes of the next response follow");
    assert_eq!(status_of("/ok"), 200);
}

#[test]
fn a_trap_after_the_head_closes_the_connection() {
    assert_truncated_then_closed("/trap-after-head");
}

#[test]
fn a_body_shorter_than_its_content_length_closes_the_connection() {
    assert_truncated_then_closed("/short-body");
}

#[test]
fn a_body_longer_than_its_content_length_closes_the_connection() {
    let raw = pipelined_until_closed("/long-body");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 10\r\n"), "{text}");
    let body = &raw[raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    // At most the promised bytes, and nothing after them: neither the
    // excess nor the pipelined request's response.
    assert!(body.len() <= 10, "{text}");
    assert!(body.iter().all(|&b| b == b'x'), "{text}");
    assert_eq!(status_of("/ok"), 200);
}

#[test]
fn a_status_outside_100_to_599_gets_500() {
    for code in [0, 99, 600, 999, 1000, 65535] {
        let response = server()
            .exchange(format!("GET /status?code={code} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(response.status, 500, "status {code}");
        assert_eq!(status_of("/ok"), 200);
    }
    // Informational statuses cannot end a response either.
    for code in [100, 101, 103] {
        let response = server()
            .exchange(format!("GET /status?code={code} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(response.status, 500, "status {code}");
    }
    // The edges of the range pass through.
    for code in [200, 418, 599] {
        let response = server()
            .exchange(format!("GET /status?code={code} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(
            (response.status, response.text().as_str()),
            (code, "status")
        );
    }
}

/// Runs `path` (a guest that tries to set `tried` forbidden or invalid
/// fields) then `/ok` on one connection: the response has none of them and
/// the connection carries the next response as usual.
fn assert_fields_kept_off_the_wire(path: &str, tried: usize) {
    let mut stream = server().connect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false);
    assert_eq!((response.status, response.text().as_str()), (200, "ok"));
    let refused = tried.to_string();
    assert_eq!(
        response.header("x-refused"),
        Some(refused.as_str()),
        "wasi:http refused them all"
    );
    let names: Vec<&str> = response
        .headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    for field in [
        "connection",
        "transfer-encoding",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "x-injected",
        "x-split",
        "x-newline",
        "x-nul",
    ] {
        assert!(!names.contains(&field), "{field} in {names:?}");
    }
    assert_eq!(response.header("content-length"), Some("2"));
    let next = read_response(&mut reader, false);
    assert_eq!((next.status, next.text().as_str()), (200, "ok"));
}

#[test]
fn hop_by_hop_headers_from_a_guest_never_reach_the_wire() {
    assert_fields_kept_off_the_wire("/hop-by-hop", 5);
}

#[test]
fn invalid_header_names_and_values_never_reach_the_wire() {
    assert_fields_kept_off_the_wire("/bad-header", 6);
}

#[test]
fn faults_under_concurrency_leave_healthy_requests_untouched() {
    let workers: Vec<_> = (0..8)
        .map(|i| {
            thread::spawn(move || {
                let agent = client();
                for _ in 0..10 {
                    let path = ["/trap", "/alloc", "/ok", "/no-response"][i % 4];
                    let (status, _, body) = get(&agent, &server().url(path));
                    if path == "/ok" {
                        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
                    } else {
                        assert_eq!(status, 500, "{path}");
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
}

#[test]
fn a_streamed_body_arrives_intact_after_faults() {
    assert_eq!(status_of("/trap"), 500);
    let mut stream = server().connect();
    stream
        .write_all(b"GET /stream?n=5&ms=5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, false);
    assert_eq!(
        response.text(),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n"
    );
    assert_closed(&mut reader);
}

/// The fault guest with instances reused for `reuse` requests.
/// The fault guest with `--reuse reuse`, on one event loop: each loop
/// reuses instances of its own, and these tests follow one instance
/// from request to request.
fn reusing(reuse: usize) -> TestServer {
    TestServer::start_with_loops(Config {
        limits: Limits {
            reuse,
            guest_timeout: Duration::from_secs(1),
            ..test_limits()
        },
        ..Config::new(demo_root()).with_guest(GuestSource::File(fault_guest()))
    })
}

fn count(server: &TestServer) -> u64 {
    let response = server.exchange(b"GET /count HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(response.status, 200);
    response.text().parse().unwrap()
}

#[test]
fn a_fresh_instance_per_request_by_default() {
    let server = TestServer::faults(test_limits());
    for _ in 0..5 {
        assert_eq!(count(&server), 1, "no state survives a request");
    }
}

#[test]
fn reuse_serves_several_requests_per_instance_and_no_more() {
    let server = reusing(3);
    let counts: Vec<u64> = (0..9).map(|_| count(&server)).collect();
    assert!(counts.iter().all(|&c| (1..=3).contains(&c)), "{counts:?}");
    assert!(
        counts.contains(&3),
        "an instance served three requests: {counts:?}"
    );
}

#[test]
fn a_guest_that_cannot_answer_twice_per_instance_is_no_longer_reused() {
    let server = reusing(4);
    let statuses: Vec<u16> = (0..6).map(|_| server.status("/first-only")).collect();
    // The second request found its reused instance broken; after it each
    // request gets a fresh instance, which answers.
    assert_eq!(statuses, [200, 500, 200, 200, 200, 200]);
}

#[test]
fn a_fault_in_a_reused_instance_ends_that_instance_only() {
    let server = reusing(100);
    assert_eq!(count(&server), 1);
    assert_eq!(count(&server), 2);
    for (fault, status) in [
        ("/trap", 500),
        ("/loop", 504),
        ("/sleep", 504),
        ("/no-response", 500),
    ] {
        let response = server.exchange(
            format!("GET {fault} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(response.status, status, "{fault}");
        // The next request runs in a new instance.
        assert_eq!(count(&server), 1, "after {fault}");
        assert_eq!(count(&server), 2, "after {fault}");
    }
}

#[test]
fn a_reused_instance_that_streamed_its_answer_serves_the_next_request() {
    let server = reusing(100);
    assert_eq!(count(&server), 1);
    let response =
        server.exchange(b"GET /stream?n=3&ms=20 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(response.text(), "chunk 0\nchunk 1\nchunk 2\n");
    // Its admission ends once it is back in the pool.
    server.eventually("the instance is back", |monitor| {
        monitor.requests_running() == 0
    });
    assert_eq!(count(&server), 2, "the same instance");
}

#[test]
fn when_every_instance_is_busy_requests_get_503_with_retry_after() {
    let server = TestServer::faults(Limits {
        max_instances: 1,
        queue_timeout: Duration::from_millis(200),
        guest_timeout: Duration::from_secs(2),
        ..test_limits()
    });
    // Hold the only instance: /sleep runs until its deadline (then 504).
    let addr = server.addr;
    let holder = thread::spawn(move || {
        support::exchange_at(
            addr,
            b"GET /sleep HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
    });
    server.eventually("the instance is taken", |monitor| {
        monitor.requests_running() == 1
    });
    let response = server.exchange(b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(holder.join().unwrap().status, 504);
    let response = server.exchange(b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(
        response.status, 200,
        "served again once the instance is free"
    );
}

#[test]
fn a_connection_carries_at_most_its_request_cap() {
    let server = TestServer::faults(Limits {
        max_requests_per_connection: 3,
        ..test_limits()
    });
    let mut stream = server.connect();
    stream
        .write_all(&b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n".repeat(4))
        .unwrap();
    let mut reader = BufReader::new(stream);
    for i in 1..=3 {
        let response = read_response(&mut reader, false);
        assert_eq!(response.text(), "ok");
        let expected = (i == 3).then_some("close");
        assert_eq!(response.header("connection"), expected, "response {i}");
    }
    assert_closed(&mut reader);
}
