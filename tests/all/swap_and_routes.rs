//! Guests swapped while the server runs, and several guests mounted by
//! path prefix.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use crate::support::{
    TestServer, demo_root, deploy, exchange_at, fault_guest, plain_guest, test_limits,
};
use wasmhttpd::{Config, GuestSource, Route};

/// What `/ok` answers with under each of the two guests swapped below.
const PLAIN_OK: &str = "plain GET /ok version=\n";
const FAULT_OK: &str = "ok";

fn get_ok(server: &TestServer) -> support::Response {
    exchange_at(
        server.addr,
        b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
}

/// A server with the component at `guest` on `/`, watching it.
fn watching(guest: &Path, root: &Path) -> TestServer {
    TestServer::start(Config {
        watch: true,
        limits: test_limits(),
        ..Config::new(root).with_guest(GuestSource::File(guest.to_owned()))
    })
}

#[test]
fn swapping_under_load_drops_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.wasm");
    deploy(&plain_guest(), &guest);
    let server = Arc::new(watching(&guest, &demo_root()));
    assert_eq!(get_ok(&server).text(), PLAIN_OK);

    let stop = Arc::new(AtomicBool::new(false));
    let [plain, fault] = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop) = (server.clone(), stop.clone());
            let (plain, fault) = (plain.clone(), fault.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Raw exchanges: a malformed response fails to parse here.
                    let response = get_ok(&server);
                    assert_eq!(response.status, 200, "{response:?}");
                    match response.text().as_str() {
                        PLAIN_OK => plain.fetch_add(1, Ordering::Relaxed),
                        FAULT_OK => fault.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected body {other:?}"),
                    };
                }
            })
        })
        .collect();

    for (component, body) in [(fault_guest(), FAULT_OK), (plain_guest(), PLAIN_OK)] {
        let before = [plain.load(Ordering::Relaxed), fault.load(Ordering::Relaxed)];
        let digest = server.monitor.guest_digest("/ok").unwrap();
        deploy(&component, &guest);
        server.eventually("the new guest is swapped in", |monitor| {
            monitor.guest_digest("/ok") != Some(digest)
        });
        assert_eq!(get_ok(&server).text(), body);
        // The clients kept going through the swap.
        let after = [plain.load(Ordering::Relaxed), fault.load(Ordering::Relaxed)];
        assert!(after.iter().sum::<u64>() > before.iter().sum::<u64>());
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client
            .join()
            .expect("no client saw a failed or malformed response");
    }
    assert!(
        fault.load(Ordering::Relaxed) > 0,
        "the clients saw the second version"
    );
    assert_eq!(server.monitor.reloads("/ok"), Some((2, 0)));
}

#[test]
fn a_bad_file_is_not_swapped_in() {
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.wasm");
    deploy(&plain_guest(), &guest);
    let server = watching(&guest, &demo_root());
    let digest = server.monitor.guest_digest("/").unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"\0asm this is not a component").unwrap();
    // A valid component that does not export wasi:http/incoming-handler.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "(component)").unwrap();
    for (failures, bad) in [(1, &garbage), (2, &empty)] {
        deploy(bad, &guest);
        server.eventually("the reload is attempted", |monitor| {
            monitor.reloads("/") == Some((0, failures))
        });
        assert_eq!(
            get_ok(&server).text(),
            PLAIN_OK,
            "the old guest still serves"
        );
        assert_eq!(server.monitor.guest_digest("/"), Some(digest));
    }
}

#[test]
fn a_symlink_switch_is_a_swap() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("v1.wasm"), dir.path().join("v2.wasm"));
    std::fs::copy(plain_guest(), &v1).unwrap();
    std::fs::copy(fault_guest(), &v2).unwrap();
    let link = dir.path().join("current.wasm");
    std::os::unix::fs::symlink(&v1, &link).unwrap();
    let server = watching(&link, &demo_root());
    assert_eq!(get_ok(&server).text(), PLAIN_OK);
    // `ln -sfn v2.wasm current.wasm`: a new link renamed over the old one.
    let next = dir.path().join("next.wasm");
    std::os::unix::fs::symlink(&v2, &next).unwrap();
    std::fs::rename(&next, &link).unwrap();
    server.eventually("the link's new target is swapped in", |monitor| {
        monitor.reloads("/") == Some((1, 0))
    });
    assert_eq!(get_ok(&server).text(), FAULT_OK);
}

#[test]
fn a_request_in_flight_finishes_on_the_old_guest() {
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.wasm");
    deploy(&fault_guest(), &guest);
    let server = watching(&guest, dir.path());
    // A response the old guest streams over a few hundred milliseconds.
    let mut stream = server.connect();
    std::io::Write::write_all(
        &mut stream,
        b"GET /stream?n=5&ms=100 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    server.eventually("the old guest runs the request", |monitor| {
        monitor.requests_running() == 1
    });
    deploy(&plain_guest(), &guest);
    let mut reader = std::io::BufReader::new(stream);
    let response = support::read_response(&mut reader, false);
    assert_eq!(
        response.text(),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n"
    );
    server.eventually("the new guest is swapped in", |monitor| {
        monitor.reloads("/") == Some((1, 0))
    });
    assert_eq!(get_ok(&server).text(), PLAIN_OK);
}

#[test]
fn the_longest_prefix_wins_and_the_guest_sees_the_whole_path() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("index.html"), "static index").unwrap();
    let server = TestServer::start(Config {
        routes: vec![
            Route::new("/", GuestSource::Default).unwrap(),
            Route::new("/api", GuestSource::File(fault_guest())).unwrap(),
            Route::new("/api/plain/", GuestSource::File(plain_guest())).unwrap(),
        ],
        limits: test_limits(),
        ..Config::new(root.path())
    });
    let get = |target: &str| {
        exchange_at(
            server.addr,
            format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    assert_eq!(get("/").text(), "static index");
    assert_eq!(get("/index.html").text(), "static index");
    // /api/ok: the fault guest's /ok would be a 404 there, since it sees the
    // whole path; its /echo answers whatever path it is under.
    assert_eq!(get("/api/ok").status, 404);
    assert_eq!(get("/api").text(), "no such fault");
    assert_eq!(get("/api/plain").text(), "plain GET /api/plain version=\n");
    assert_eq!(
        get("/api/plain/deeper?q=1").text(),
        "plain GET /api/plain/deeper?q=1 version=\n"
    );
    // Whole segments only: /apix is not under /api.
    let response = get("/apix");
    assert_eq!(response.status, 404);
    assert!(
        response.text().contains("<h1>404 Not Found</h1>"),
        "the static guest's page"
    );
}

#[test]
fn paths_outside_every_route_are_404() {
    let server = TestServer::start(Config {
        routes: vec![Route::new("/api", GuestSource::File(plain_guest())).unwrap()],
        limits: test_limits(),
        ..Config::new(demo_root())
    });
    let response = exchange_at(server.addr, b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(response.status, 404);
    // The host's 404 is the page the default guest writes for a missing
    // file (in a root without a 404.html of its own), with its headers.
    let root = tempfile::tempdir().unwrap();
    let guest = TestServer::static_files(root.path());
    let guests = exchange_at(guest.addr, b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(guests.status, 404);
    assert_eq!(response.text(), guests.text());
    assert!(
        response.text().contains("<h1>404 Not Found</h1>"),
        "{}",
        response.text()
    );
    for name in ["content-type", "x-content-type-options", "content-length"] {
        assert_eq!(response.header(name), guests.header(name), "{name}");
    }
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    let response = exchange_at(
        server.addr,
        b"GET /api/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.text(), "plain GET /api/x version=\n");
}

#[test]
fn duplicate_or_malformed_prefixes_are_refused() {
    let config = Config {
        routes: vec![
            Route::new("/api", GuestSource::Default).unwrap(),
            Route::new("/api/", GuestSource::Default).unwrap(),
        ],
        ..Config::new(demo_root())
    };
    assert!(matches!(
        wasmhttpd::Server::new(config),
        Err(wasmhttpd::StartError::DuplicateRoute(prefix)) if prefix == "/api"
    ));
    for bad in ["api", "/a?b", "/a b", "//a", ""] {
        assert!(Route::new(bad, GuestSource::Default).is_err(), "{bad}");
    }
}

#[test]
fn a_route_has_its_own_limits() {
    use wasmhttpd::RouteLimits;
    let route = |prefix: &str, settings: &[&str]| {
        Route::new(prefix, GuestSource::File(fault_guest()))
            .unwrap()
            .with_limits(RouteLimits::parse(settings.iter().copied()).unwrap())
    };
    let server = TestServer::start(Config {
        routes: vec![
            route("/", &[]),
            route("/alloc-mib", &["guest-memory=8"]),
            route("/loop", &["guest-timeout=0.5"]),
            route("/count", &["reuse=3", "max-instances=2"]),
        ],
        limits: test_limits(),
        ..Config::new(demo_root())
    });
    let get = |target: &str| {
        exchange_at(
            server.addr,
            format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    // 20 MiB fits the server's 64 MiB cap, not the route's 8 MiB.
    assert_eq!(get("/alloc-mib?n=2").status, 200);
    assert_eq!(get("/alloc-mib?n=20").status, 500);
    // The server's guest timeout is 30 s; the client would give up long
    // before it, so a 504 here is the route's own half second.
    assert_eq!(get("/loop").status, 504);
    // Reused instances on /count only.
    let counts: Vec<String> = (0..6).map(|_| get("/count").text()).collect();
    assert!(counts.iter().any(|count| count != "1"), "{counts:?}");
    assert_eq!(server.monitor.requests_running(), 0);
}

#[test]
fn a_websocket_session_keeps_its_guest_across_a_swap() {
    use tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.wasm");
    deploy(&fault_guest(), &guest);
    let server = watching(&guest, &demo_root());
    let url = format!("ws://{}/ws/echo", server.addr);
    let (mut old, _) = tungstenite::connect(&url).unwrap();
    old.send(Message::text("count")).unwrap();
    assert_eq!(old.read().unwrap(), Message::text("1"));

    // The default guest echoes "count" back instead of counting.
    let default_guest = dir.path().join("default.wasm");
    std::fs::write(&default_guest, wasmhttpd::DEFAULT_GUEST).unwrap();
    deploy(&default_guest, &guest);
    server.eventually("the new guest is swapped in", |monitor| {
        monitor.reloads("/") == Some((1, 0))
    });
    let (mut new, _) = tungstenite::connect(&url).unwrap();
    new.send(Message::text("count")).unwrap();
    assert_eq!(new.read().unwrap(), Message::text("count"));
    // The session opened before the swap still runs the old guest.
    old.send(Message::text("count")).unwrap();
    assert_eq!(old.read().unwrap(), Message::text("2"));
}
