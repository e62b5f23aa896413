//! Time is part of the sandbox: a guest that spins gives its event loop
//! back at every epoch tick, a guest that opens a FIFO is refused rather
//! than left to block the loop, each route's CPU time is counted, and a
//! route's CPU budget ends a guest that runs past it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use wasmhttpd::{Config, GuestSource, Limits, Route, RouteLimits};

use crate::metrics::{scrape, value};
use crate::process::{start, wasmhttpd};
use crate::support::{
    TestServer, client, demo_root, exchange_at, fault_guest, get, p3_guest, test_limits,
};

#[test]
fn light_requests_are_answered_while_two_guests_spin_on_the_same_event_loop() {
    // One event loop holds both spinning guests and every light request.
    let server = TestServer::start_with_loops(Config {
        limits: Limits {
            guest_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_millis(100),
            ..test_limits()
        },
        ..Config::new(demo_root()).with_guest(GuestSource::File(fault_guest()))
    });
    let spun = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let (addr, spun) = (server.addr, spun.clone());
        thread::spawn(move || {
            let response = exchange_at(addr, b"GET /loop HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(response.status, 504);
            spun.fetch_add(1, Ordering::SeqCst);
        });
    }
    server.eventually("both guests spin", |monitor| {
        monitor.requests_running() == 2
    });
    // Each on a new connection: accepted, read and answered by the loop
    // the two guests share. A loop that looked at its sockets only every
    // few hundred milliseconds would still be at it when the spinning
    // guests reach their deadline.
    for round in 0..50 {
        assert_eq!(server.status("/ok"), 200, "light request {round}");
    }
    assert_eq!(
        spun.load(Ordering::SeqCst),
        0,
        "the spinning guests ended before the light requests were all answered"
    );
}

#[test]
fn a_guest_that_opens_a_fifo_is_refused_and_everyone_else_is_served() {
    let root = root_with_a_fifo();
    let server = TestServer::guest(fault_guest(), root.path(), test_limits());
    // Dropped first: should an open still wait for a writer, one comes, so
    // that the server can stop and the test fail rather than hang.
    let _writer = Writer(root.path().join("pipe"));
    let agent = client();
    // Three times: more than the two event loops a blocked open could
    // each freeze.
    for _ in 0..3 {
        let (status, _, body) = get(&agent, &server.url("/open?path=pipe"));
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"error PermissionDenied"[..])
        );
        assert_eq!(get(&agent, &server.url("/ok")).0, 200);
    }
    // Regular files and directories open as before.
    for name in ["file.txt", ""] {
        let (status, _, body) = get(&agent, &server.url(&format!("/open?path={name}")));
        assert_eq!((status, body.as_slice()), (200, &b"opened"[..]), "{name:?}");
    }
    let (status, _, body) = get(&agent, &server.url("/open?path=missing"));
    assert_eq!((status, body.as_slice()), (200, &b"error NotFound"[..]));
    let metrics = scrape(&server);
    assert_eq!(value(&metrics, "wasmhttpd_guest_opens_refused_total"), 3.0);
}

/// A web root holding a regular file, `file.txt`, and a FIFO, `pipe`.
fn root_with_a_fifo() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("file.txt"), "a file").unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(root.path().join("pipe"))
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo");
    root
}

/// Opens a FIFO for writing when dropped, which ends any open of it for
/// reading that is waiting.
struct Writer(std::path::PathBuf);

impl Drop for Writer {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0);
    }
}

#[test]
fn each_routes_cpu_time_is_counted_and_an_idle_route_counts_none() {
    let server = TestServer::start(Config {
        routes: vec![
            Route::new("/", GuestSource::File(fault_guest())).unwrap(),
            Route::new("/idle", GuestSource::File(fault_guest())).unwrap(),
        ],
        limits: Limits {
            guest_timeout: Duration::from_millis(300),
            ..test_limits()
        },
        ..Config::new(demo_root())
    });
    let busy = "wasmhttpd_guest_cpu_seconds_total{route=\"/\"}";
    let idle = "wasmhttpd_guest_cpu_seconds_total{route=\"/idle\"}";
    let before = scrape(&server);
    assert!(before.contains(idle), "{before}");
    assert_eq!(value(&before, busy), 0.0);
    assert_eq!(server.status("/ok"), 200);
    let answered = value(&scrape(&server), busy);
    assert!(answered > 0.0, "{answered}");
    assert_eq!(server.status("/loop"), 504);
    let spun = scrape(&server);
    assert!(value(&spun, busy) > answered, "{spun}");
    assert_eq!(value(&spun, idle), 0.0, "{spun}");
}

#[test]
fn a_cpu_budget_ends_a_spinning_guest_with_a_line_that_names_it() {
    let (root, guest) = (demo_root(), fault_guest());
    let server = start(
        wasmhttpd()
            .env("RUST_LOG", "warn,wasmhttpd::access=info")
            .args(["--listen", "127.0.0.1:0", "--guest-timeout", "30"])
            .args(["--guest-cpu-time", "50", "--root"])
            .arg(root)
            .arg("--guest")
            .arg(&guest),
        "listening on http://",
    );
    // Its deadline is 30 s away: only the CPU budget can end it now.
    assert_eq!(get(&client(), &server.url("/loop")).0, 504);
    let failed = server.wait_for_log("guest failed");
    assert!(failed.contains("target=/loop"), "{failed}");
    assert!(
        failed.contains("CPU time budget of 50 ms: raise --guest-cpu-time"),
        "{failed}"
    );
    // Waiting is not running: a guest that waits for longer than its
    // budget is answered whole.
    let (status, _, body) = get(&client(), &server.url("/linger?ms=200"));
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    // Each guest request's line says the CPU time it took.
    let line = server.wait_for_log("target=/linger");
    assert!(line.contains("cpu_us="), "{line}");
}

#[test]
fn a_routes_own_cpu_budget_holds_on_that_route_alone() {
    let tight = RouteLimits {
        guest_cpu_time: Some(Some(Duration::from_millis(50))),
        ..RouteLimits::default()
    };
    let server = TestServer::start(Config {
        routes: vec![
            Route::new("/", GuestSource::File(fault_guest())).unwrap(),
            Route::new("/tight", GuestSource::File(fault_guest()))
                .unwrap()
                .with_limits(tight),
        ],
        limits: Limits {
            guest_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_millis(100),
            ..test_limits()
        },
        ..Config::new(demo_root())
    });
    // Well before the 30 s deadline.
    assert_eq!(server.status("/tight/loop"), 504);
    let metrics = scrape(&server);
    assert_eq!(value(&metrics, "wasmhttpd_guest_cpu_exhausted_total"), 1.0);
    assert_eq!(value(&metrics, "wasmhttpd_guest_timeouts_total"), 0.0);
    assert_eq!(server.status("/ok"), 200);
}

#[test]
fn a_wasip3_guests_opens_and_cpu_time_are_held_as_a_wasip2_guests() {
    let root = root_with_a_fifo();
    let server = TestServer::start(Config {
        routes: vec![
            Route::new("/", GuestSource::File(p3_guest())).unwrap(),
            Route::new("/tight", GuestSource::File(p3_guest()))
                .unwrap()
                .with_limits(RouteLimits {
                    guest_cpu_time: Some(Some(Duration::from_millis(50))),
                    ..RouteLimits::default()
                }),
        ],
        limits: Limits {
            guest_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_millis(100),
            ..test_limits()
        },
        ..Config::new(root.path())
    });
    let _writer = Writer(root.path().join("pipe"));
    let agent = client();
    // Through WASIp3's wasi:filesystem, and through WASIp2's (Rust's std).
    let (status, _, body) = get(&agent, &server.url("/open?path=pipe"));
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("NotPermitted"), "{body}");
    assert_eq!(get(&agent, &server.url("/read?path=/pipe")).0, 404);
    let (status, _, body) = get(&agent, &server.url("/open?path=file.txt"));
    assert_eq!((status, body.as_slice()), (200, &b"opened\n"[..]));
    let metrics = scrape(&server);
    assert_eq!(value(&metrics, "wasmhttpd_guest_opens_refused_total"), 2.0);
    assert!(
        value(&metrics, "wasmhttpd_guest_cpu_seconds_total{route=\"/\"}") > 0.0,
        "{metrics}"
    );
    // The route's budget, long before its deadline; the instance's
    // neighbours on the other route are served.
    assert_eq!(server.status("/tight/loop"), 504);
    assert_eq!(server.status("/ok"), 200);
    let metrics = scrape(&server);
    assert_eq!(value(&metrics, "wasmhttpd_guest_cpu_exhausted_total"), 1.0);
}
