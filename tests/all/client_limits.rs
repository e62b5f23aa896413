//! Limits per client: a route's rate limit answers a client past it with
//! 429 while other clients and other routes are served; a listed proxy
//! names its clients and an unlisted peer cannot; a flood of addresses
//! keeps the table of clients to its bound; and one client cannot hold
//! more connections than its share.

use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};

use wasmhttpd::clients::{Rate, TrustedProxies};
use wasmhttpd::{Config, GuestSource, Limits, Route, RouteLimits};

use crate::metrics::{scrape, value};
use crate::process::{start, wasmhttpd};
use crate::support::{
    self, CLIENT_TIMEOUT, TestServer, demo_root, fault_guest, plain_guest, read_response,
    test_limits,
};

/// A connection to `addr` from the loopback address `source` (any of
/// 127.0.0.0/8 is this machine's), as another client would make.
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: IpAddr = source.parse().unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream
}

/// The status (and `Retry-After`) of `GET path` from `source`, on a
/// connection of its own, with `headers` (whole lines) besides `Host`.
fn get_from(source: &str, addr: SocketAddr, path: &str, headers: &str) -> (u16, Option<String>) {
    let mut stream = connect_from(source, addr);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let response = read_response(&mut BufReader::new(stream), false);
    let retry = response.header("retry-after").map(str::to_owned);
    (response.status, retry)
}

/// The fault guest on `/` under `route`'s limits, and the plain guest,
/// which answers any path, on `/free` with none, behind `limits`.
fn server(route: RouteLimits, limits: Limits) -> TestServer {
    TestServer::start(Config {
        routes: vec![
            Route::new("/", GuestSource::File(fault_guest()))
                .unwrap()
                .with_limits(route),
            Route::new("/free", GuestSource::File(plain_guest())).unwrap(),
        ],
        limits,
        ..Config::new(demo_root())
    })
}

/// Ten requests a minute and a burst of ten: the eleventh within the
/// minute is refused however slowly the ten before it were served.
fn ten_a_minute() -> RouteLimits {
    RouteLimits {
        rate: Some(Some(Rate::parse("10/m").unwrap())),
        burst: Some(Some(10)),
        ..RouteLimits::default()
    }
}

#[test]
fn the_eleventh_request_gets_429_while_other_clients_and_routes_are_served() {
    let server = start(
        wasmhttpd()
            .env("RUST_LOG", "warn")
            .args(["--listen", "127.0.0.1:0", "--root"])
            .arg(demo_root())
            .arg("--route")
            .arg(format!("/={},rate=10/m,burst=10", fault_guest().display()))
            .arg("--route")
            .arg(format!("/free={}", plain_guest().display())),
        "listening on http://",
    );
    for i in 0..10 {
        assert_eq!(
            get_from("127.0.0.1", server.addr, "/ok", ""),
            (200, None),
            "request {i}"
        );
    }
    let (status, retry) = get_from("127.0.0.1", server.addr, "/ok", "");
    assert_eq!(status, 429);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    // One request comes back every six seconds.
    assert!((1..=6).contains(&retry), "Retry-After: {retry}");
    let line = server.wait_for_log("passed its rate limit");
    for field in ["client=127.0.0.1", "route=/", "rate=10/m", "--rate"] {
        assert!(line.contains(field), "{field} in {line}");
    }
    // Another client, and another route, are served meanwhile.
    assert_eq!(get_from("127.0.0.2", server.addr, "/ok", "").0, 200);
    assert_eq!(get_from("127.0.0.1", server.addr, "/free/ok", "").0, 200);
}

#[test]
fn a_listed_proxy_names_its_clients_and_an_unlisted_peer_cannot() {
    let server = server(
        ten_a_minute(),
        Limits {
            trusted_proxy: TrustedProxies(vec![TrustedProxies::parse("127.0.0.1").unwrap()]),
            ..test_limits()
        },
    );
    let forwarded = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    // Through the proxy, each client has its own budget.
    for _ in 0..10 {
        assert_eq!(
            get_from("127.0.0.1", server.addr, "/ok", &forwarded("203.0.113.1")).0,
            200
        );
    }
    assert_eq!(
        get_from("127.0.0.1", server.addr, "/ok", &forwarded("203.0.113.1")).0,
        429
    );
    assert_eq!(
        get_from("127.0.0.1", server.addr, "/ok", &forwarded("203.0.113.2")).0,
        200
    );
    let rfc = "Forwarded: for=\"[2001:db8::1]:4711\"\r\n";
    assert_eq!(get_from("127.0.0.1", server.addr, "/ok", rfc).0, 200);
    // From a peer that is not listed, the header changes nothing: it is
    // one client, whatever it claims.
    for i in 0..10 {
        let claimed = forwarded(&format!("198.51.100.{i}"));
        assert_eq!(get_from("127.0.0.2", server.addr, "/ok", &claimed).0, 200);
    }
    let claimed = forwarded("198.51.100.200");
    assert_eq!(get_from("127.0.0.2", server.addr, "/ok", &claimed).0, 429);
    let metrics = scrape(&server);
    assert_eq!(
        value(&metrics, "wasmhttpd_rate_limited_total{route=\"/\"}"),
        2.0
    );
}

#[test]
fn the_table_of_clients_stays_bounded_under_a_hundred_thousand_addresses() {
    const ADDRESSES: u32 = 100_000;
    const BOUND: usize = 1000;
    let server = server(
        ten_a_minute(),
        Limits {
            trusted_proxy: TrustedProxies(vec![TrustedProxies::parse("127.0.0.1").unwrap()]),
            rate_clients: BOUND,
            max_requests_per_connection: u64::from(ADDRESSES),
            reuse: 1000,
            ..test_limits()
        },
    );
    // Requests spoofed through the listed proxy, each from an address of
    // its own, pipelined on a few connections.
    let senders: Vec<_> = (0..4)
        .map(|part| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut statuses = [0u32; 2];
                let mut batch = Vec::new();
                for chunk in (part..ADDRESSES).step_by(4).collect::<Vec<_>>().chunks(500) {
                    batch.clear();
                    for i in chunk {
                        let client = std::net::Ipv4Addr::from(0x0a00_0000 + i);
                        write!(
                            batch,
                            "GET /ok HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client}\r\n\r\n"
                        )
                        .unwrap();
                    }
                    stream.write_all(&batch).unwrap();
                    for _ in chunk {
                        match read_response(&mut reader, false).status {
                            200 => statuses[0] += 1,
                            429 => statuses[1] += 1,
                            other => panic!("status {other}"),
                        }
                    }
                }
                statuses
            })
        })
        .collect();
    let mut statuses = [0u32; 2];
    for sender in senders {
        let [passed, refused] = sender.join().unwrap();
        statuses[0] += passed;
        statuses[1] += refused;
    }
    let tracked = "wasmhttpd_rate_limit_clients{route=\"/\"}";
    // The sweep reads the table's size each second.
    support::eventually("the sweep counts the table", || {
        value(&scrape(&server), tracked) > 0.0
    });
    let clients = value(&scrape(&server), tracked);
    // The bound, and the one entry the clients past it share.
    assert!(clients <= (BOUND + 1) as f64, "{clients} clients tracked");
    // The clients with a place got their requests; those past the bound
    // shared one budget.
    let [passed, refused] = statuses;
    assert!(
        passed <= (BOUND + 10) as u32,
        "{passed} passed, {refused} refused"
    );
    assert_eq!(passed + refused, ADDRESSES);
}

#[test]
fn one_client_holds_no_more_connections_than_its_share() {
    let server = server(
        RouteLimits::default(),
        Limits {
            max_client_connections: 2,
            ..test_limits()
        },
    );
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = connect_from("127.0.0.1", server.addr);
            // Served, and kept open.
            stream
                .write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            assert_eq!(read_response(&mut reader, false).status, 200);
            stream
        })
        .collect();
    // A third from the same client is told 503 and closed, its request
    // unread.
    let mut third = connect_from("127.0.0.1", server.addr);
    third
        .write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    third.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
    // Another client is served meanwhile.
    assert_eq!(get_from("127.0.0.2", server.addr, "/ok", "").0, 200);
    assert_eq!(
        value(
            &scrape(&server),
            "wasmhttpd_client_connections_refused_total"
        ),
        1.0
    );
    // Once one of the two closes, the client may open another.
    drop(held);
    support::eventually("the client's connections close", || {
        server.monitor.connections() == 0
    });
    assert_eq!(get_from("127.0.0.1", server.addr, "/ok", "").0, 200);
}
