//! WASIp3 guests (`wasi:http/handler@0.3.0`): served beside WASIp2 ones,
//! several requests at once per instance, with bodies streamed both ways;
//! faults, deadlines and swaps as for WASIp2; and the same guest under
//! `wasmtime serve`.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::channel::Channel;
use hyper_util::rt::{TokioExecutor, TokioIo};
use wasmhttpd::outbound::policy::AllowList;
use wasmhttpd::wasm::inspect::Wasi;
use wasmhttpd::{Config, GuestSource, Limits};

use crate::metrics::{scrape, value};
use crate::outbound::{Listener, Upstream};
use crate::support::{
    CLIENT_TIMEOUT, TestServer, client, demo_root, deploy, eventually, exchange_at, fault_guest,
    noise, p3_guest, test_limits,
};

/// The p3 test guest on the demo root with `limits`, and `env`.
fn p3_server(limits: Limits, env: &[(&str, &str)]) -> TestServer {
    TestServer::start(Config {
        limits,
        env: env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect(),
        ..Config::new(demo_root()).with_guest(GuestSource::File(p3_guest()))
    })
}

/// `GET target` on a connection of its own.
fn get(addr: SocketAddr, target: &str) -> crate::support::Response {
    exchange_at(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// `GET target` on a thread of its own, for requests that wait in the
/// guest while the test goes on.
fn in_background(
    addr: SocketAddr,
    target: &'static str,
) -> thread::JoinHandle<crate::support::Response> {
    thread::spawn(move || get(addr, target))
}

/// The bytes of a whole exchange, as they came off the wire, up to the
/// server's close.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Runs `test` on a runtime of its own.
fn run(test: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// The numbers the guest's `/count` gives: requests its instance has
/// taken, those in it now, and the most it has had at once.
fn count(addr: SocketAddr) -> [u64; 3] {
    let text = get(addr, "/count").text();
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["served", served, "running", running, "peak", peak] => {
            [served, running, peak].map(|n| n.parse().unwrap())
        }
        _ => panic!("unexpected /count answer {text:?}"),
    }
}

#[test]
fn a_p3_guest_answers_streams_and_echoes() {
    let server = p3_server(test_limits(), &[("GREETING", "hello from --env")]);
    assert_eq!(server.monitor.guest_wasi("/"), Some(Wasi::P3));
    let ok = get(server.addr, "/ok");
    assert_eq!((ok.status, ok.text().as_str()), (200, "ok\n"));
    assert_eq!(get(server.addr, "/missing").status, 404);

    // A streamed body ends with the guest's trailers, for a client that
    // takes them; without `TE: trailers`, without.
    let streamed = raw_exchange(
        server.addr,
        b"GET /stream?n=3&ms=10 HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\
          Connection: close\r\n\r\n",
    );
    assert!(
        streamed.contains("transfer-encoding: chunked\r\n"),
        "{streamed}"
    );
    assert!(
        streamed.ends_with("8\r\nchunk 2\n\r\n0\r\nx-chunks: 3\r\n\r\n"),
        "{streamed}"
    );
    let plain = raw_exchange(
        server.addr,
        b"GET /stream?n=3&ms=10 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(plain.ends_with("8\r\nchunk 2\n\r\n0\r\n\r\n"), "{plain}");

    // The guest reads the request body as it arrives (over HTTP/2, whose
    // front end streams request bodies): the first piece comes back
    // before the client has sent the second, and the trailers count both.
    let addr = server.addr;
    run(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake::<_, Channel<Bytes, Infallible>>(TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        let (mut upload, body) = Channel::new(1);
        let request = http::Request::post(format!("http://{addr}/echo"))
            .body(body)
            .unwrap();
        let response = tokio::spawn(sender.send_request(request));
        upload
            .send_data(Bytes::from_static(b"first"))
            .await
            .unwrap();
        let response = response.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-method"], "POST");
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first");
        upload
            .send_data(Bytes::from_static(b"second"))
            .await
            .unwrap();
        drop(upload);
        let rest = body.collect().await.unwrap();
        let trailers = rest.trailers().cloned().expect("the echo's trailers");
        assert_eq!(rest.to_bytes(), "second");
        assert_eq!(trailers["x-echoed"], "11");
    });

    // Over HTTP/1.1 too, a body that has not arrived yet streams to the
    // guest: it reads the first part, and its request to the upstream is
    // the sign it did, before the client sends the rest.
    let upstream = Listener::start(Upstream::Answer);
    let allowed = p3_server(
        Limits {
            allow_outbound: AllowList::new(vec![upstream.origin().parse().unwrap()]),
            ..test_limits()
        },
        &[],
    );
    let mut stream = TcpStream::connect(allowed.addr).unwrap();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let head = format!(
        "POST /first-part?url={}/ HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\
         Connection: close\r\n\r\nfirst",
        upstream.origin()
    );
    stream.write_all(head.as_bytes()).unwrap();
    eventually("the guest has the first part", || {
        upstream.connections() == 1
    });
    stream.write_all(b" secnd").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("\r\n\r\nfirst 5 total 11\n"), "{answer}");

    // A large body, both ways, byte for byte, with a real client.
    let upload = noise(3 << 20, 18);
    let mut response = client()
        .post(&server.url("/echo"))
        .send(&upload[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    assert!(body == upload, "the echo differs from the upload");

    // Past --max-body the request is refused, the guest never sees it.
    let limit = test_limits().max_body;
    let oversized = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        limit + 1
    );
    assert_eq!(exchange_at(server.addr, oversized.as_bytes()).status, 413);

    // What it may reach: its --env, its root read-only.
    let env = get(server.addr, "/env?name=GREETING");
    assert_eq!(env.text(), "hello from --env\n");
    assert_eq!(get(server.addr, "/env?name=HOME").status, 404);
    let page = get(server.addr, "/read?path=/index.html");
    assert_eq!(
        page.body,
        std::fs::read(demo_root().join("index.html")).unwrap()
    );
    assert_eq!(get(server.addr, "/read?path=/../Cargo.toml").status, 404);
    let write = get(server.addr, "/write").text();
    assert!(write.starts_with("refused"), "{write}");
    assert!(!demo_root().join("p3-written").exists());

    // Its outgoing requests go through the same allow-list: none by
    // default.
    let upstream = Listener::start(Upstream::Answer);
    let denied = get(server.addr, &format!("/fetch?url={}/", upstream.origin())).text();
    assert!(denied.contains("HttpRequestDenied"), "{denied}");
    assert_eq!(upstream.connections(), 0);

    // The metrics say which kind served the requests.
    let metrics = scrape(&server);
    assert!(
        metrics.lines().any(|line| line
            .strip_prefix("wasmhttpd_guest_requests_total{wasi=\"p3\"} ")
            .is_some_and(|n| n.parse::<u64>().unwrap() >= 10)),
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "wasmhttpd_guest_requests_total{wasi=\"p2\"}"),
        0.0,
        "{metrics}"
    );
}

#[test]
fn a_p3_guest_reaches_what_the_allow_list_names() {
    let upstream = Listener::start(Upstream::Answer);
    let server = p3_server(
        Limits {
            allow_outbound: AllowList::new(vec![upstream.origin().parse().unwrap()]),
            ..test_limits()
        },
        &[],
    );
    let answer = get(
        server.addr,
        &format!("/fetch?url={}/hello", upstream.origin()),
    )
    .text();
    assert_eq!(answer, "status 200\nhello from upstream\n");
    assert_eq!(upstream.connections(), 1);
    let elsewhere = get(server.addr, "/fetch?url=http://127.0.0.2:9/").text();
    assert!(elsewhere.contains("HttpRequestDenied"), "{elsewhere}");
}

#[test]
fn concurrent_requests_share_one_instance() {
    // One event loop: each loop has instances of its own, and a request's
    // loop is the kernel's choice.
    let server = Arc::new(TestServer::start_with_loops(Config {
        limits: test_limits(),
        event_loops: 1,
        ..Config::new(demo_root()).with_guest(GuestSource::File(p3_guest()))
    }));
    // One request makes the instance; those after it join it while the
    // first waits.
    let sleepers: Vec<_> = (0..8)
        .map(|i| {
            if i == 1 {
                server.eventually("the first instance is up", |monitor| {
                    monitor.guest_instances() == 1
                });
            }
            let server = server.clone();
            thread::spawn(move || get(server.addr, "/sleep?ms=1500").status)
        })
        .collect();
    server.eventually("every request is in", |monitor| {
        monitor.requests_running() >= 1
    });
    // The count's instance holds several of the sleepers (and the count).
    // How many instances the others took is the handler's choice: it
    // starts one for a request that finds every instance busy.
    eventually("the requests share an instance", || {
        let [_, running, _] = count(server.addr);
        running >= 3
    });
    for sleeper in sleepers {
        assert_eq!(sleeper.join().unwrap(), 200);
    }
}

#[test]
fn an_instance_under_backpressure_takes_no_new_request() {
    let server = p3_server(test_limits(), &[]);
    let holder = in_background(server.addr, "/hold?ms=1500");
    server.eventually("the holder is in", |monitor| monitor.guest_instances() == 1);
    // Give the holder's instance time to take the request and turn its
    // backpressure on: a request it would take joins it.
    eventually("a second instance serves while the first holds", || {
        let [_, running, _] = count(server.addr);
        running == 1 && server.monitor.guest_instances() >= 2
    });
    for _ in 0..5 {
        assert_eq!(
            count(server.addr)[1],
            1,
            "a request joined the held instance"
        );
    }
    assert_eq!(holder.join().unwrap().text(), "held\n");
}

#[test]
fn p3_concurrency_and_reuse_bound_an_instance() {
    // One request at a time per instance: a second request at once gets an
    // instance of its own.
    let server = p3_server(
        Limits {
            p3_concurrency: 1,
            p3_reuse: 3,
            ..test_limits()
        },
        &[],
    );
    let sleeper = in_background(server.addr, "/sleep?ms=1000");
    server.eventually("the sleeper is in", |monitor| {
        monitor.guest_instances() == 1
    });
    let [_, running, peak] = count(server.addr);
    assert_eq!((running, peak), (1, 1));
    assert_eq!(sleeper.join().unwrap().status, 200);

    // Three requests in an instance's life, then a new one. (The two
    // instances above have one request each.)
    let served: Vec<u64> = (0..9).map(|_| count(server.addr)[0]).collect();
    assert!(served.iter().all(|&n| (1..=3).contains(&n)), "{served:?}");
    assert!(served.contains(&1), "no fresh instance: {served:?}");
}

#[test]
fn faults_end_only_their_instance() {
    let server = Arc::new(p3_server(
        Limits {
            guest_timeout: Duration::from_millis(1500),
            guest_memory: 16 << 20,
            ..test_limits()
        },
        &[],
    ));
    // Each fault maps as for WASIp2.
    for (target, status) in [
        ("/trap", 500),
        ("/alloc", 500),
        ("/loop", 504),
        ("/sleep", 504),
    ] {
        assert_eq!(get(server.addr, target).status, status, "{target}");
        assert_eq!(get(server.addr, "/ok").status, 200, "after {target}");
    }
    assert_eq!(get(server.addr, "/error").status, 500);

    // A trap ends its instance, and the requests in it that had no answer
    // yet; an instance of its own (one request at a time) is spared.
    let isolated = p3_server(
        Limits {
            p3_concurrency: 1,
            ..test_limits()
        },
        &[],
    );
    let neighbour = in_background(isolated.addr, "/sleep?ms=800");
    isolated.eventually("the neighbour is in", |monitor| {
        monitor.guest_instances() == 1
    });
    assert_eq!(get(isolated.addr, "/trap").status, 500);
    assert_eq!(neighbour.join().unwrap().status, 200);

    // Requests share an instance when a server has only the one: each
    // check below waits for that before the next request. (An event loop
    // has instances of its own: one loop, so that every request can go to
    // the one instance.)
    let shared = TestServer::start_with_loops(Config {
        limits: Limits {
            guest_timeout: Duration::from_secs(4),
            ..test_limits()
        },
        event_loops: 1,
        ..Config::new(demo_root()).with_guest(GuestSource::File(p3_guest()))
    });
    // A request that arrives while an instance is just taking another
    // may start an instance of its own, which lives a second once idle:
    // the next request goes to the first one only when it is the only one,
    // and free (as it is once `/count` has answered from it).
    let alone_with = |others: u64| {
        eventually("one instance, with the requests in it", || {
            if shared.monitor.guest_instances() > 1 {
                return false;
            }
            count(shared.addr)[1] > others && shared.monitor.guest_instances() == 1
        });
    };
    let sharer = in_background(shared.addr, "/sleep?ms=20000");
    alone_with(1);
    assert_eq!(get(shared.addr, "/trap").status, 500);
    assert_eq!(
        sharer.join().unwrap().status,
        500,
        "the trap ended its instance"
    );

    // A request past its deadline gets 504; its neighbour in the same
    // instance answers.
    let stuck = in_background(shared.addr, "/sleep");
    alone_with(1);
    let quick = get(shared.addr, "/sleep?ms=300");
    assert_eq!(quick.status, 200);
    assert_eq!(stuck.join().unwrap().status, 504);

    let metrics = scrape(&server);
    // Each fault counted once: /trap and /alloc trapped, /loop and /sleep
    // timed out.
    for (metric, expected) in [
        ("wasmhttpd_guest_traps_total ", 2),
        ("wasmhttpd_guest_timeouts_total ", 2),
    ] {
        let value: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(metric))
            .unwrap_or_else(|| panic!("{metric} missing: {metrics}"))
            .parse()
            .unwrap();
        assert_eq!(value, expected, "{metric}");
    }
    assert_eq!(get(server.addr, "/ok").status, 200);
}

#[test]
fn a_live_swap_between_p2_and_p3_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.wasm");
    deploy(&fault_guest(), &guest);
    let server = Arc::new(TestServer::start(Config {
        watch: true,
        limits: test_limits(),
        ..Config::new(demo_root()).with_guest(GuestSource::File(guest.clone()))
    }));
    assert_eq!(server.monitor.guest_wasi("/ok"), Some(Wasi::P2));

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop, served) = (server.clone(), stop.clone(), served.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let response = get(server.addr, "/ok");
                    assert_eq!(response.status, 200, "{response:?}");
                    // "ok" from the WASIp2 guest, "ok\n" from the WASIp3 one.
                    assert_eq!(response.text().trim_end(), "ok", "{response:?}");
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for (component, wasi) in [(p3_guest(), Wasi::P3), (fault_guest(), Wasi::P2)] {
        let before = served.load(Ordering::Relaxed);
        deploy(&component, &guest);
        server.eventually("the new guest is swapped in", |monitor| {
            monitor.guest_wasi("/ok") == Some(wasi)
        });
        let after_swap = served.load(Ordering::Relaxed);
        eventually("the clients keep going", || {
            served.load(Ordering::Relaxed) > after_swap
        });
        assert!(served.load(Ordering::Relaxed) > before);
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("no client saw a failed response");
    }
    assert_eq!(server.monitor.reloads("/ok"), Some((2, 0)));
    let metrics = scrape(&server);
    for wasi in ["p2", "p3"] {
        let name = format!("wasmhttpd_guest_requests_total{{wasi=\"{wasi}\"}}");
        assert!(value(&metrics, &name) > 0.0, "{metrics}");
    }
}

#[test]
fn the_p3_guest_gives_the_same_responses_under_wasmtime_serve() {
    let root = demo_root();
    let component = std::fs::read(p3_guest()).unwrap();
    let Some((theirs, _dir)) =
        crate::cli::start_wasmtime_serve_with(&component, &root, &["-S", "keyvalue"], &[])
    else {
        return;
    };
    let ours = p3_server(test_limits(), &[]);
    let upload = noise(200_000, 3);
    for addr in [ours.addr, theirs.addr] {
        for (target, status, body) in [
            ("/ok", 200, &b"ok\n"[..]),
            (
                "/stream?n=4&ms=5",
                200,
                b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n",
            ),
            ("/sleep?ms=10", 200, b"slept\n"),
            ("/missing", 404, b"not found\n"),
        ] {
            let response = get(addr, target);
            assert_eq!(
                (response.status, &response.body[..]),
                (status, body),
                "{addr}{target}"
            );
        }
        let page = get(addr, "/read?path=/index.html");
        assert_eq!(
            page.body,
            std::fs::read(root.join("index.html")).unwrap(),
            "{addr}"
        );
        let mut echoed = client()
            .post(&format!("http://{addr}/echo"))
            .send(&upload[..])
            .unwrap();
        let body = echoed.body_mut().read_to_vec().unwrap();
        assert!(body == upload, "{addr}: the echo differs");
        assert_eq!(get(addr, "/trap").status, 500, "{addr}");
    }
}

#[test]
fn a_p3_guest_keeps_state_in_a_granted_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Config {
        limits: Limits {
            allow_kv: wasmhttpd::state::Grants(vec!["default".to_owned()]),
            ..test_limits()
        },
        data_dir: Some(dir.path().to_owned()),
        ..Config::new(demo_root()).with_guest(GuestSource::File(p3_guest()))
    });
    for expected in 1..=3 {
        let response = get(server.addr, "/kv-incr?key=visits");
        assert_eq!(response.text(), format!("value {expected}\n"));
    }
    // Without a grant the same guest is refused.
    let denied = p3_server(test_limits(), &[]);
    let response = get(denied.addr, "/kv-incr?key=visits");
    assert_eq!(response.text(), "error Error::AccessDenied\n");
}
