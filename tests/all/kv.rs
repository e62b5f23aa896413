//! Guests' state: `wasi:keyvalue` in both versions over SQLite and memory
//! stores, granted by route, under the limits, counted; and `wasi:config`
//! values. The guest is `tests/guests/kv`; every request is one operation
//! over a real loopback connection.

use std::path::Path;
use std::sync::Arc;
use std::thread;

use crate::metrics::{scrape, value};
use crate::support::{TestServer, demo_root, exchange_at, kv_guest, test_limits};
use wasmhttpd::state::{ConfigValues, Grants, StoreSpec};
use wasmhttpd::{Config, GuestSource, Limits, Route, RouteLimits};

/// The kv guest on `/`, with `stores` declared (`NAME=BACKEND`) in a data
/// directory `dir`, `grants` granted to the server, and `limits`.
fn server(dir: &Path, stores: &[&str], grants: &[&str], limits: Limits) -> TestServer {
    TestServer::start(config(dir, stores, grants, limits))
}

fn config(dir: &Path, stores: &[&str], grants: &[&str], limits: Limits) -> Config {
    Config {
        stores: stores.iter().map(|spec| spec.parse().unwrap()).collect(),
        data_dir: Some(dir.to_owned()),
        limits: Limits {
            allow_kv: Grants(grants.iter().map(|name| (*name).to_owned()).collect()),
            ..limits
        },
        ..Config::new(demo_root()).with_guest(GuestSource::File(kv_guest()))
    }
}

/// What the guest answers to `target`.
fn ask(server: &TestServer, target: &str) -> String {
    ask_at(server.addr, target)
}

fn ask_at(addr: std::net::SocketAddr, target: &str) -> String {
    let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let response = exchange_at(addr, request.as_bytes());
    assert_eq!(response.status, 200, "{target}: {}", response.text());
    response.text()
}

/// A backend of a test: what `--kv-store NAME=` takes, and the Redis
/// server it runs on, if any.
struct Backend {
    spec: String,
    _redis: Option<RedisServer>,
}

impl Backend {
    /// The declaration of the store `name` on this backend.
    fn store(&self, name: &str) -> String {
        format!("{name}={}", self.spec)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec)
    }
}

/// Every backend: SQLite (in the test's data directory), memory, and a
/// Redis server of the test's own (outside CI, only where
/// `redis-server` is installed).
fn backends() -> Vec<Backend> {
    let mut all: Vec<Backend> = ["sqlite", "memory"]
        .into_iter()
        .map(|spec| Backend {
            spec: spec.to_owned(),
            _redis: None,
        })
        .collect();
    if let Some(redis) = RedisServer::start() {
        all.push(Backend {
            spec: redis.url(),
            _redis: Some(redis),
        });
    }
    all
}

/// A real `redis-server` on a free loopback port, without persistence,
/// stopped when dropped.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    process: Option<crate::process::Group>,
}

impl RedisServer {
    /// A new server, or `None` (the test skipped) without `redis-server`
    /// outside CI.
    pub(crate) fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = RedisServer {
            port,
            process: None,
        };
        redis.restart()?;
        Some(redis)
    }

    /// Starts it again on its port (after [`RedisServer::stop`]).
    pub(crate) fn restart(&mut self) -> Option<()> {
        let binary = crate::support::required_tool("redis-server", "apt-get install redis-server")?;
        let process = crate::process::Group::spawn(
            std::process::Command::new(binary)
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null()),
        );
        let port = self.port;
        crate::support::eventually("redis-server accepts connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        self.process = Some(process);
        Some(())
    }

    /// Kills it, as a crash would.
    pub(crate) fn stop(&mut self) {
        self.process = None;
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

#[test]
fn every_operation_round_trips_through_both_versions_on_every_backend() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let spec = backend.store("data");
        let server = server(
            dir.path(),
            &[&spec],
            &["data"],
            Limits {
                kv_page: 10,
                ..test_limits()
            },
        );
        for version in ["draft", "draft2"] {
            let op = |op: &str, query: &str| {
                ask(&server, &format!("/{version}/{op}?store=data&{query}"))
            };
            let key = format!("{version}-greeting");
            assert_eq!(op("get", &format!("key={key}")), "none", "{backend}");
            assert_eq!(op("exists", &format!("key={key}")), "false");
            assert_eq!(op("set", &format!("key={key}&value=hello")), "ok");
            assert_eq!(op("get", &format!("key={key}")), "value hello");
            assert_eq!(op("set", &format!("key={key}&value=again")), "ok");
            assert_eq!(op("get", &format!("key={key}")), "value again");
            assert_eq!(op("exists", &format!("key={key}")), "true");
            assert_eq!(op("delete", &format!("key={key}")), "ok");
            assert_eq!(op("get", &format!("key={key}")), "none");
            assert_eq!(op("delete", &format!("key={key}")), "ok", "deleting twice");

            assert_eq!(
                op("set-many", &format!("pairs={version}a:1,{version}b:2")),
                "ok"
            );
            assert_eq!(
                op(
                    "get-many",
                    &format!("keys={version}a,{version}zz,{version}b")
                ),
                format!("{version}a=1 {version}zz=- {version}b=2")
            );
            assert_eq!(
                op("delete-many", &format!("keys={version}a,{version}b")),
                "ok"
            );
            assert_eq!(
                op("get-many", &format!("keys={version}a,{version}b")),
                format!("{version}a=- {version}b=-")
            );
        }
        // Compare-and-swap (draft2): a swap from the value read holds, one
        // from a stale value does not and says what the value is now.
        let cas = |query: &str| ask(&server, &format!("/draft2/cas?store=data&key=c&{query}"));
        assert_eq!(cas("expect=-&value=one"), "swapped", "{backend}");
        assert_eq!(cas("expect=-&value=two"), "cas-failed one");
        assert_eq!(cas("expect=one&value=two"), "swapped");
        assert_eq!(ask(&server, "/draft/get?store=data&key=c"), "value two");
    }
}

/// Lists every key of the store `data` a page at a time through
/// `version`, checking that no key comes twice and, where the backend
/// can hold it (`exact`; Redis's `SCAN` takes the page as a hint), that
/// no page holds more than `--kv-page` keys.
fn list_all(server: &TestServer, version: &str, exact: bool) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let answer = ask(
            server,
            &format!("/{version}/list?store=data&cursor={cursor}"),
        );
        let (listed, next) = answer
            .strip_prefix("keys ")
            .and_then(|rest| rest.rsplit_once(" cursor "))
            .unwrap_or_else(|| panic!("{answer}"));
        let page: Vec<String> = listed
            .split(',')
            .filter(|key| !key.is_empty())
            .map(str::to_owned)
            .collect();
        assert!(
            !exact || page.len() <= 10,
            "a page holds --kv-page keys at most: {answer}"
        );
        for key in page {
            assert!(!keys.contains(&key), "{key} listed twice");
            keys.push(key);
        }
        if next == "-" {
            keys.sort();
            return keys;
        }
        cursor = next.to_owned();
    }
    panic!("the listing never ended");
}

#[test]
fn list_keys_pages_through_every_key_once_with_either_cursor() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let spec = backend.store("data");
        let server = server(
            dir.path(),
            &[&spec],
            &["data"],
            Limits {
                kv_page: 10,
                ..test_limits()
            },
        );
        let mut wanted: Vec<String> = (0..25).map(|i| format!("key{i:02}")).collect();
        for key in &wanted {
            assert_eq!(
                ask(&server, &format!("/draft/set?store=data&key={key}&value=v")),
                "ok"
            );
        }
        wanted.sort();
        let exact = backend._redis.is_none();
        assert_eq!(list_all(&server, "draft", exact), wanted, "{backend}");
        assert_eq!(list_all(&server, "draft2", exact), wanted, "{backend}");
        let answer = ask(&server, "/draft2/list?store=data&cursor=not-a-cursor");
        assert!(answer.starts_with("error Error::Other"), "{answer}");
    }
}

#[test]
fn a_counter_written_through_one_version_reads_back_through_the_other() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let spec = backend.store("data");
        let server = server(dir.path(), &[&spec], &["data"], test_limits());
        let at = |target: &str| ask(&server, &format!("{target}&store=data&key=n"));
        assert_eq!(at("/draft/incr?by=5"), "value 5", "{backend}");
        assert_eq!(at("/draft2/incr?by=-2"), "value 3");
        assert_eq!(at("/draft/get?"), "value 3", "the decimal text");
        assert_eq!(at("/draft2/incr?by=-4"), "value -1");
        // The draft version's increment is unsigned: a counter it would
        // leave below 0 is its error, and nothing is written.
        let answer = at("/draft/incr?by=0");
        assert!(
            answer.starts_with("error Error::Other") && answer.contains("u64"),
            "{answer}"
        );
        assert_eq!(at("/draft2/get?"), "value -1");
        assert_eq!(at("/draft/incr?by=3"), "value 2");
        // A value that is not a counter is an error, not a reset.
        assert_eq!(at("/draft/set?value=abc"), "ok");
        let answer = at("/draft2/incr?by=1");
        assert!(answer.contains("not a counter"), "{answer}");
        assert_eq!(at("/draft/get?"), "value abc");
    }
}

#[test]
fn increments_from_many_connections_add_up_exactly() {
    const CLIENTS: usize = 8;
    const EACH: usize = 25;
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let spec = backend.store("data");
        let server = Arc::new(server(dir.path(), &[&spec], &["data"], test_limits()));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let server = server.clone();
                thread::spawn(move || {
                    for i in 0..EACH {
                        // Both versions' increments, and compare-and-swap.
                        let version = if (client + i) % 2 == 0 {
                            "draft"
                        } else {
                            "draft2"
                        };
                        let answer = ask(
                            &server,
                            &format!("/{version}/incr?store=data&key=hits&by=1"),
                        );
                        assert!(answer.starts_with("value "), "{answer}");
                        let answer = ask(&server, "/draft2/cas-incr?store=data&key=swaps");
                        assert!(answer.starts_with("value "), "{answer}");
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        let total = CLIENTS * EACH;
        assert_eq!(
            ask(&server, "/draft/get?store=data&key=hits"),
            format!("value {total}"),
            "{backend}"
        );
        assert_eq!(
            ask(&server, "/draft/get?store=data&key=swaps"),
            format!("value {total}"),
            "{backend}"
        );
    }
}

#[test]
fn stores_are_granted_by_name_and_every_other_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        routes: vec![
            Route::new("/", GuestSource::File(kv_guest())).unwrap(),
            // A route of its own grants a store of its own, and only it.
            Route::new("/draft2", GuestSource::File(kv_guest()))
                .unwrap()
                .with_limits(RouteLimits {
                    allow_kv: Some(Grants(vec!["other".to_owned()])),
                    ..RouteLimits::default()
                }),
        ],
        ..config(
            dir.path(),
            &["data=memory", "other=memory"],
            &["data"],
            test_limits(),
        )
    };
    let server = TestServer::start(config);
    // The server's grant: "" opens its first store, its name opens it.
    assert_eq!(ask(&server, "/draft/set?store=&key=k&value=1"), "ok");
    assert_eq!(ask(&server, "/draft/get?store=data&key=k"), "value 1");
    assert_eq!(
        ask(&server, "/draft/get?store=other&key=k"),
        "error Error::AccessDenied"
    );
    assert_eq!(
        ask(&server, "/draft/get?store=nothing&key=k"),
        "error Error::NoSuchStore"
    );
    // The route's own: "" is its store, the server's is refused.
    assert_eq!(ask(&server, "/draft2/get?store=&key=k"), "none");
    assert_eq!(
        ask(&server, "/draft2/get?store=data&key=k"),
        "error Error::AccessDenied"
    );
    assert_eq!(ask(&server, "/draft2/set?store=other&key=k&value=2"), "ok");
    assert_eq!(ask(&server, "/draft2/get?store=other&key=k"), "value 2");
    let metrics = scrape(&server);
    let count = |store: &str, result: &str| {
        value(
            &metrics,
            &format!(
                "wasmhttpd_kv_operations_total{{store=\"{store}\",op=\"open\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(count("other", "denied"), 1.0, "{metrics}");
    assert_eq!(count("data", "denied"), 1.0, "{metrics}");
    assert_eq!(count("", "no-such-store"), 1.0, "{metrics}");
    assert_eq!(
        value(
            &metrics,
            "wasmhttpd_kv_operations_total{store=\"data\",op=\"set\",result=\"ok\"}"
        ),
        1.0
    );
    let set_count = value(
        &metrics,
        "wasmhttpd_kv_operation_duration_seconds_count{store=\"other\",op=\"set\"}",
    );
    assert_eq!(set_count, 1.0, "{metrics}");

    // Nothing granted: even "" is refused.
    let none = server_with_no_grant(dir.path());
    assert_eq!(
        ask(&none, "/draft/get?store=&key=k"),
        "error Error::AccessDenied"
    );
    assert_eq!(
        ask(&none, "/draft2/get?store=default&key=k"),
        "error Error::AccessDenied"
    );
}

fn server_with_no_grant(dir: &Path) -> TestServer {
    server(dir, &[], &[], test_limits())
}

#[test]
fn two_stores_never_see_each_others_keys() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (backend.store("one"), backend.store("two"));
        let server = server(dir.path(), &[&one, &two], &["one", "two"], test_limits());
        assert_eq!(ask(&server, "/draft/set?store=one&key=k&value=first"), "ok");
        assert_eq!(
            ask(&server, "/draft/set?store=two&key=k&value=second"),
            "ok"
        );
        assert_eq!(
            ask(&server, "/draft/get?store=one&key=k"),
            "value first",
            "{backend}"
        );
        assert_eq!(ask(&server, "/draft/get?store=two&key=k"), "value second");
        assert_eq!(
            ask(&server, "/draft/set?store=one&key=only-one&value=x"),
            "ok"
        );
        assert_eq!(
            ask(&server, "/draft2/exists?store=two&key=only-one"),
            "false"
        );
        assert_eq!(ask(&server, "/draft/list?store=two"), "keys k cursor -");
    }
}

#[test]
fn each_limit_is_the_guests_error_and_the_server_keeps_serving() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let spec = backend.store("data");
        let server = server(
            dir.path(),
            &[&spec],
            &["data"],
            Limits {
                kv_max_key: 8,
                kv_max_value: 16,
                kv_max_keys: 3,
                kv_page: 2,
                ..test_limits()
            },
        );
        let refused = |target: &str, flag: &str| {
            let answer = ask(&server, target);
            assert!(
                answer.starts_with("error Error::Other") && answer.contains(flag),
                "{backend} {target}: {answer}"
            );
        };
        refused(
            "/draft/set?store=data&key=much-too-long&value=v",
            "--kv-max-key 8",
        );
        refused("/draft2/get?store=data&key=much-too-long", "--kv-max-key 8");
        refused(
            "/draft/set?store=data&key=k&value=0123456789abcdefg",
            "--kv-max-value 16",
        );
        refused("/draft/get-many?store=data&keys=a,b,c", "--kv-page 2");
        for key in ["a", "b", "c"] {
            assert_eq!(
                ask(&server, &format!("/draft/set?store=data&key={key}&value=v")),
                "ok"
            );
        }
        refused("/draft/set?store=data&key=d&value=v", "--kv-max-keys 3");
        refused("/draft2/incr?store=data&key=d&by=1", "--kv-max-keys 3");
        // An existing key may change, a deleted one makes room.
        assert_eq!(ask(&server, "/draft/set?store=data&key=a&value=w"), "ok");
        assert_eq!(ask(&server, "/draft/delete?store=data&key=b"), "ok");
        assert_eq!(ask(&server, "/draft/set?store=data&key=d&value=v"), "ok");
        assert_eq!(ask(&server, "/draft/get?store=data&key=a"), "value w");
        let metrics = scrape(&server);
        let limited = value(
            &metrics,
            "wasmhttpd_kv_operations_total{store=\"data\",op=\"set\",result=\"limit\"}",
        );
        assert_eq!(limited, 3.0, "{metrics}");
    }
}

#[test]
fn config_values_reach_the_guest_and_a_routes_own_replace_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        routes: vec![
            Route::new("/", GuestSource::File(kv_guest())).unwrap(),
            Route::new("/config", GuestSource::File(kv_guest()))
                .unwrap()
                .with_limits(RouteLimits {
                    config_var: Some(ConfigValues(vec![("greeting".into(), "hi".into())])),
                    ..RouteLimits::default()
                }),
        ],
        ..config(
            dir.path(),
            &[],
            &[],
            Limits {
                config_var: ConfigValues(vec![
                    ("greeting".into(), "hello".into()),
                    ("colour".into(), "blue".into()),
                ]),
                ..test_limits()
            },
        )
    };
    let server = TestServer::start(config);
    assert_eq!(ask(&server, "/config?key=greeting"), "config hi");
    assert_eq!(ask(&server, "/config?key=colour"), "config none");
    // The host's own environment is never a config value.
    assert_eq!(ask(&server, "/config?key=PATH"), "config none");
    assert_eq!(ask(&server, "/config?key=HOME"), "config none");
}

#[test]
fn a_store_spec_says_what_it_takes() {
    for good in ["default=sqlite", "a.b-c_d=memory", "x=sqlite:/tmp/x.db"] {
        assert!(good.parse::<StoreSpec>().is_ok(), "{good}");
    }
    for bad in [
        "default",
        "=memory",
        "a b=memory",
        "x=postgres",
        "x=sqlite:",
    ] {
        let err = bad.parse::<StoreSpec>().unwrap_err();
        assert!(
            err.contains("sqlite") || err.contains("store name"),
            "{bad}: {err}"
        );
    }
}

/// The binary serving the kv guest with its SQLite stores in `dir`, the
/// store `default` granted.
fn kv_process(dir: &Path) -> crate::process::Running {
    crate::process::start_wasmhttpd(&[
        "--root",
        demo_root().to_str().unwrap(),
        "--guest",
        kv_guest().to_str().unwrap(),
        "--allow-kv",
        "default",
        "--data-dir",
        dir.to_str().unwrap(),
    ])
}

#[test]
fn nothing_acknowledged_is_lost_to_a_kill_9() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let mut server = kv_process(dir.path());
    let addr = server.addr;
    // Clients write until the server dies under them; each keeps what it
    // was told was stored.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new((0i64, Vec::<String>::new())));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
            thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let key = format!("c{client}-{i}");
                    let Some(set) =
                        try_ask(addr, &format!("/draft/set?store=&key={key}&value={i}"))
                    else {
                        return;
                    };
                    assert_eq!(set, "ok");
                    acknowledged.lock().unwrap().1.push(key);
                    let Some(incr) = try_ask(addr, "/draft2/incr?store=default&key=hits&by=1")
                    else {
                        return;
                    };
                    let value: i64 = incr.strip_prefix("value ").unwrap().parse().unwrap();
                    let mut acked = acknowledged.lock().unwrap();
                    acked.0 = acked.0.max(value);
                }
            })
        })
        .collect();
    crate::support::eventually("the clients have written 200 keys", || {
        acknowledged.lock().unwrap().1.len() >= 200
    });
    server.child.kill().unwrap(); // SIGKILL, mid-write
    server.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    let (hits, keys) = acknowledged.lock().unwrap().clone();

    let again = kv_process(dir.path());
    let counted: i64 = ask_at(again.addr, "/draft2/get?store=default&key=hits")
        .strip_prefix("value ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(counted >= hits, "{counted} after {hits} acknowledged");
    for key in &keys {
        let (_, i) = key.split_once('-').unwrap();
        assert_eq!(
            ask_at(again.addr, &format!("/draft/get?store=default&key={key}")),
            format!("value {i}")
        );
    }
}

/// What the guest answers to `target`, or `None` once the server is gone.
fn try_ask(addr: std::net::SocketAddr, target: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(crate::support::CLIENT_TIMEOUT))
        .unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

#[test]
fn a_data_directory_that_cannot_be_made_is_a_start_up_error_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let inside = file.join("data");
    let output = crate::process::wasmhttpd()
        .args(["--listen", "127.0.0.1:0", "--root"])
        .arg(demo_root())
        .arg("--guest")
        .arg(kv_guest())
        .args(["--allow-kv", "default", "--data-dir"])
        .arg(&inside)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(stderr.contains(&inside.display().to_string()), "{stderr}");

    // A grant of a store nobody declared says so, before serving.
    let output = crate::process::wasmhttpd()
        .args(["--listen", "127.0.0.1:0", "--root"])
        .arg(demo_root())
        .args(["--allow-kv", "sessions", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--allow-kv grants store \"sessions\", which no --kv-store declares"),
        "{stderr}"
    );
}

/// The binary serving the kv guest with the store `shared` on `redis`,
/// granted, logging at `info`.
fn redis_replica(redis: &RedisServer) -> crate::process::Running {
    crate::process::start(
        crate::process::wasmhttpd()
            .env("RUST_LOG", "info")
            .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .arg("--root")
            .arg(demo_root())
            .arg("--guest")
            .arg(kv_guest())
            .arg("--kv-store")
            .arg(format!("shared={}", redis.url()))
            .args(["--allow-kv", "shared"]),
        "listening on http://",
    )
}

#[test]
fn a_redis_outage_is_the_guests_error_logged_once_and_service_resumes_after() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = redis_replica(&redis);
    let incr = "/draft2/incr?store=shared&key=n&by=1";
    assert_eq!(ask_at(server.addr, incr), "value 1");

    redis.stop();
    for _ in 0..3 {
        let answer = ask_at(server.addr, incr);
        assert!(
            answer.starts_with("error Error::Other(\"the store is unavailable"),
            "{answer}"
        );
    }
    // Everything else is served as before.
    assert_eq!(ask_at(server.addr, "/config?key=any"), "config none");

    redis.restart().unwrap();
    crate::support::eventually("the store answers again", || {
        try_ask(server.addr, incr).is_some_and(|answer| answer.starts_with("value "))
    });
    let lines = server.logs_until("key-value store answers again");
    let outages = lines
        .iter()
        .filter(|line| line.contains("key-value store unavailable"))
        .count();
    assert_eq!(outages, 1, "one log line for the outage: {lines:#?}");
}

#[test]
fn an_unreachable_redis_at_start_is_a_start_up_error_naming_the_store() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = crate::process::wasmhttpd()
        .args(["--listen", "127.0.0.1:0", "--root"])
        .arg(demo_root())
        .arg("--kv-store")
        .arg(format!("shared=redis://127.0.0.1:{port}"))
        .args(["--allow-kv", "shared"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach Redis at redis://127.0.0.1:{port} for key-value store shared"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--kv-store shared=redis://"), "{stderr}");
}

#[test]
fn replicas_behind_nginx_with_one_redis_share_one_counter() {
    let Some(nginx) = crate::support::required_tool("nginx", "apt-get install nginx-light") else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let replicas: Vec<_> = (0..3).map(|_| redis_replica(&redis)).collect();
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<_> = replicas.iter().map(|replica| replica.addr).collect();
    let front = crate::many::Nginx::in_front_of(&nginx, &addrs, dir.path());
    const TIMES: usize = 60;
    for i in 1..=TIMES {
        assert_eq!(
            ask_at(front.addr, "/draft/incr?store=&key=visits&by=1"),
            format!("value {i}")
        );
    }
    // Every replica took part, and they counted as one.
    for replica in &replicas {
        let metrics = exchange_at(
            replica.metrics_addr(),
            b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        .text();
        let served = value(
            &metrics,
            "wasmhttpd_kv_operations_total{store=\"shared\",op=\"increment\",result=\"ok\"}",
        );
        assert!(served > 0.0, "{metrics}");
    }
    assert_eq!(
        ask_at(replicas[0].addr, "/draft2/get?store=shared&key=visits"),
        format!("value {TIMES}")
    );
}

#[test]
fn a_configuration_file_declares_grants_and_gives_values_and_a_refusal_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wasmhttpd.toml");
    std::fs::write(
        &file,
        r#"
kv-store = ["notes=sqlite:notes.db", "secret=memory"]
allow-kv = ["notes"]
config-var = { greeting = "from the file", colour = "green" }
"#,
    )
    .unwrap();
    let server = crate::process::start(
        crate::process::wasmhttpd()
            .env("RUST_LOG", "warn")
            .args(["--listen", "127.0.0.1:0", "--root"])
            .arg(demo_root())
            .arg("--guest")
            .arg(kv_guest())
            .arg("--config")
            .arg(&file),
        "listening on http://",
    );
    assert_eq!(
        ask_at(server.addr, "/config?key=greeting"),
        "config from the file"
    );
    assert_eq!(ask_at(server.addr, "/config?key=colour"), "config green");
    assert_eq!(ask_at(server.addr, "/draft/set?store=&key=k&value=1"), "ok");
    // sqlite:FILE is relative to the configuration file.
    assert!(dir.path().join("notes.db").is_file());
    assert_eq!(
        ask_at(server.addr, "/draft/get?store=secret&key=k"),
        "error Error::AccessDenied"
    );
    let refused = server.wait_for_log("key-value store refused");
    assert!(
        refused.contains("store=\"secret\"") || refused.contains("store=secret"),
        "{refused}"
    );
    assert!(refused.contains("--allow-kv"), "{refused}");
}
