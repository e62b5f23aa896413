//! The Python and JavaScript examples (`examples/`), built from source
//! once per run by `examples/build` with their pinned toolchains, served
//! by wasmhttpd over loopback: every route, keep-alive, the memory cap
//! they need, reuse, and the same files under `wasmtime serve`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::process::Group;
use crate::support::{self, TestServer, read_response, required_tool, test_limits};
use wasmhttpd::{Config, GuestSource, Limits, Route, RouteLimits};

/// A language of the examples.
#[derive(Clone, Copy, Debug)]
enum Language {
    Python,
    JavaScript,
}

impl Language {
    fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
        }
    }

    /// What its `/` says.
    fn hello(self) -> &'static str {
        match self {
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
        }
    }

    /// The example's component, built once per run; `None` (the test
    /// skipped) where its toolchain's runtime is missing outside CI.
    fn component(self) -> Option<PathBuf> {
        static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
        static JAVASCRIPT: OnceLock<Option<PathBuf>> = OnceLock::new();
        let (cell, needs, install) = match self {
            Language::Python => (&PYTHON, "python3", "apt-get install python3 python3-venv"),
            Language::JavaScript => (&JAVASCRIPT, "npm", "apt-get install nodejs npm"),
        };
        cell.get_or_init(|| {
            required_tool(needs, install)?;
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("examples");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/build");
            let built = Command::new("bash")
                .arg(script)
                .arg("--out")
                .arg(&out)
                .arg(self.name())
                .output()
                .expect("run examples/build");
            assert!(
                built.status.success(),
                "examples/build {}: {}",
                self.name(),
                String::from_utf8_lossy(&built.stderr)
            );
            Some(out.join(self.name()).join("app.wasm"))
        })
        .clone()
    }
}

/// The example in `language` on `/`, with `GREETING=hi` and a store of
/// its own in memory.
fn serve(language: Language, limits: Limits) -> Option<TestServer> {
    example_config(language, limits).map(TestServer::start)
}

/// The configuration [`serve`] starts, for a test that sets its event
/// loops itself.
fn example_config(language: Language, limits: Limits) -> Option<Config> {
    let component = language.component()?;
    Some(Config {
        env: vec![("GREETING".to_owned(), "hi".to_owned())],
        stores: vec!["visits=memory".parse().unwrap()],
        limits: Limits {
            allow_kv: wasmhttpd::state::Grants(vec!["visits".to_owned()]),
            ..limits
        },
        ..Config::new(support::demo_root()).with_guest(GuestSource::File(component))
    })
}

/// Every route of the example, the first three on one keep-alive
/// connection.
fn assert_every_route(server: &TestServer, language: Language) {
    let mut stream = server.connect();
    let body = "a body of 23 bytes, 1/2";
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: t\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}\
         GET /env?name=GREETING HTTP/1.1\r\nHost: t\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let hello = read_response(&mut reader, false);
    assert_eq!(hello.status, 200);
    assert_eq!(hello.text(), format!("hi from {}\n", language.hello()));
    assert_eq!(
        hello.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let echo = read_response(&mut reader, false);
    assert_eq!((echo.status, echo.text().as_str()), (200, body));
    let env = read_response(&mut reader, false);
    assert_eq!(env.text(), "GREETING=hi\n");

    let stream =
        server.exchange(b"GET /stream?n=4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(stream.status, 200);
    assert!(stream.chunked, "streamed without a length");
    assert_eq!(stream.text(), "piece 0\npiece 1\npiece 2\npiece 3\n");
    assert_eq!(server.status("/missing"), 404);
    // The count outlives each request's instance: it is the store's.
    for visit in 1..=3 {
        let counted =
            server.exchange(b"GET /visits HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(
            counted.text(),
            format!("visit {visit}\n"),
            "{}",
            language.name()
        );
    }
}

#[test]
fn the_python_example_serves_every_route() {
    let Some(server) = serve(Language::Python, test_limits()) else {
        return;
    };
    assert_every_route(&server, Language::Python);
}

#[test]
fn the_javascript_example_serves_every_route() {
    let Some(server) = serve(Language::JavaScript, test_limits()) else {
        return;
    };
    assert_every_route(&server, Language::JavaScript);
}

#[test]
fn the_python_example_serves_reused_instances() {
    let Some(server) = serve(
        Language::Python,
        Limits {
            reuse: 8,
            ..test_limits()
        },
    ) else {
        return;
    };
    for _ in 0..12 {
        assert_eq!(server.status("/"), 200);
    }
}

#[test]
fn the_javascript_example_under_reuse_falls_back_to_fresh_instances() {
    let Some(config) = example_config(
        Language::JavaScript,
        Limits {
            reuse: 8,
            ..test_limits()
        },
    ) else {
        return;
    };
    // One event loop: each loop reuses instances of its own.
    let server = TestServer::start_with_loops(config);
    // A fetch-event guest answers one request per instance: its second
    // fails once, and from then on each request gets a fresh instance.
    let statuses: Vec<u16> = (0..6).map(|_| server.status("/")).collect();
    assert_eq!(statuses, [200, 500, 200, 200, 200, 200]);
}

/// The MiB the startup error says `language`'s example needs under a cap
/// of 1 MiB.
fn needed_mib(language: Language) -> Option<usize> {
    let component = language.component()?;
    // The route's own cap: the engine, sized by the server's 64 MiB, is
    // the other tests', so the component compiled for them is reused.
    let config = |memory| Config {
        routes: vec![
            Route::new("/", GuestSource::File(component.clone()))
                .unwrap()
                .with_limits(RouteLimits {
                    guest_memory: Some(memory),
                    ..RouteLimits::default()
                }),
        ],
        limits: test_limits(),
        cache_dir: Some(support::shared_cache()),
        ..Config::new(support::demo_root())
    };
    let error = match wasmhttpd::Server::new(config(1 << 20)) {
        Ok(_) => panic!("{} fits in 1 MiB", language.name()),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        error.contains("of linear memory at start, more than --guest-memory 1 MiB allows"),
        "{error}"
    );
    let (_, rest) = error
        .split_once("start with --guest-memory ")
        .expect(&error);
    let mib: usize = rest.split(' ').next().unwrap().parse().expect(&error);
    // The size it names is enough to load it.
    wasmhttpd::Server::new(config(mib << 20)).unwrap_or_else(|err| panic!("at {mib} MiB: {err:#}"));
    Some(mib)
}

#[test]
fn each_example_says_what_memory_cap_it_needs() {
    for language in [Language::Python, Language::JavaScript] {
        if let Some(mib) = needed_mib(language) {
            assert!((2..64).contains(&mib), "{language:?} needs {mib} MiB");
        }
    }
}

#[test]
fn the_examples_run_under_wasmtime_serve() {
    let Some(wasmtime) = required_tool("wasmtime", support::WASMTIME_INSTALL) else {
        return;
    };
    for language in [Language::Python, Language::JavaScript] {
        let Some(component) = language.component() else {
            continue;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Group::spawn(
            Command::new(&wasmtime)
                .args([
                    "serve",
                    "-S",
                    "cli",
                    "-S",
                    "keyvalue",
                    "--env",
                    "GREETING=hi",
                ])
                .args(["--addr", &format!("127.0.0.1:{port}")])
                .arg(&component)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped()),
        );
        // It compiles the component before it listens: on a loaded
        // machine, well past a client's timeout.
        let stderr = BufReader::new(server.child.stderr.take().unwrap());
        let listening = stderr
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("Serving HTTP on"));
        assert!(listening, "wasmtime serve exited before listening");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let hello = support::exchange_at(
            addr,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        let visits = support::exchange_at(
            addr,
            b"GET /visits HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        drop(server);
        assert_eq!(hello.status, 200, "{language:?}");
        assert_eq!(hello.text(), format!("hi from {}\n", language.hello()));
        // wasmtime serve's store is the instance's own.
        assert_eq!(visits.text(), "visit 1\n", "{language:?}");
    }
}
