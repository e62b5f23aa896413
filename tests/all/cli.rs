//! The `wasmhttpd` binary as users run it, and the default guest under the
//! real `wasmtime serve`.

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;

use crate::process::{Running, start, start_wasmhttpd, wasmhttpd};
use crate::support::{WASMTIME_INSTALL, client, demo_root, fault_guest, get, required_tool};

/// Runs `command` expecting it to refuse its settings (exit 2), with
/// `RUST_BACKTRACE=1` as many users have it; returns its stderr.
fn usage_error(command: &mut Command) -> String {
    let output = command
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run wasmhttpd");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_a_message(&stderr);
    stderr
}

/// Runs the binary expecting it to refuse to start (exit 1), with
/// `RUST_BACKTRACE=1` as many users have it; returns its stderr.
fn startup_failure(args: &[&str]) -> String {
    startup_failure_of(wasmhttpd().args(args))
}

/// [`startup_failure`] for a command of the caller's.
fn startup_failure_of(command: &mut Command) -> String {
    let output = command
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run wasmhttpd");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "an error exit, not a crash: {stderr}"
    );
    assert_a_message(&stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// An error for a user: a message and its causes, one line each, never a
/// panic or a backtrace.
fn assert_a_message(stderr: &str) {
    let lower = stderr.to_lowercase();
    for trace in [
        "panicked",
        "backtrace",
        "stack",
        "caused by:\n",
        " at ./",
        "src/main.rs",
    ] {
        assert!(!lower.contains(trace), "{trace:?} in {stderr}");
    }
}

#[test]
fn serves_the_demo_site_on_the_port_it_prints() {
    let root = demo_root();
    let server = start_wasmhttpd(&["--root", root.to_str().unwrap()]);
    assert_ne!(server.addr.port(), 0);
    let (status, content_type, body) = get(&client(), &server.url("/"));
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert_eq!(body, std::fs::read(root.join("index.html")).unwrap());
}

#[test]
fn a_missing_root_is_a_startup_error() {
    let stderr = startup_failure(&["--listen", "127.0.0.1:0", "--root", "/no/such/web/root"]);
    assert!(stderr.contains("/no/such/web/root"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // Run where there is no ./www: the message says where it looked and
    // which flag sets the root.
    let dir = tempfile::tempdir().unwrap();
    let stderr = startup_failure_of(
        wasmhttpd()
            .current_dir(dir.path())
            .args(["--listen", "127.0.0.1:0"]),
    );
    let looked = dir.path().join("www");
    assert!(
        stderr.contains(&format!("web root www ({})", looked.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("--root DIR (default ./www, relative to the current directory)"),
        "{stderr}"
    );
}

/// Runs with `--guest guest` on the demo root, expecting a startup error.
fn guest_startup_failure(guest: &Path) -> String {
    let root = demo_root();
    let (root, guest) = (root.to_str().unwrap(), guest.to_str().unwrap());
    startup_failure(&["--listen", "127.0.0.1:0", "--root", root, "--guest", guest])
}

#[test]
fn unreadable_and_invalid_components_are_startup_errors() {
    let stderr = guest_startup_failure(Path::new("/no/such/guest.wasm"));
    assert!(
        stderr.contains("cannot read guest component /no/such/guest.wasm"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm this is not a component").unwrap();
    let stderr = guest_startup_failure(&garbage);
    assert!(stderr.contains("invalid guest component"), "{stderr}");

    // Files that are not components say what they are instead, and what
    // to give.
    for (file, bytes, says) in [
        (
            "empty.wasm",
            &b""[..],
            "the file is empty, not a WebAssembly component",
        ),
        (
            "module.wasm",
            b"\0asm\x01\0\0\0",
            "a core WebAssembly module, not a component: build it for wasm32-wasip2",
        ),
        (
            "notes.txt",
            b"these are notes\n",
            "the file is not WebAssembly",
        ),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let stderr = guest_startup_failure(&path);
        assert!(stderr.contains("invalid guest component"), "{stderr}");
        assert!(stderr.contains(says), "{file}: {stderr}");
        assert!(
            !stderr.contains("expected at least one module field"),
            "{stderr}"
        );
    }
}

#[test]
fn a_component_needing_more_memory_than_the_cap_is_refused_before_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // 300 pages of 64 KiB at start: 18.75 MiB.
    let big = dir.path().join("big.wasm");
    std::fs::write(
        &big,
        wat::parse_str("(component (core module (memory 300)))").unwrap(),
    )
    .unwrap();
    let root = demo_root();
    let args = |memory: &'static str| {
        vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--root".to_owned(),
            root.display().to_string(),
            "--cache-dir".to_owned(),
            cache.display().to_string(),
            "--guest".to_owned(),
            big.display().to_string(),
            "--guest-memory".to_owned(),
            memory.to_owned(),
        ]
    };
    let run = |memory| {
        let args = args(memory);
        startup_failure(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Under a cap that holds it, it compiles (and is cached), then fails
    // for what it does not export.
    let roomy = run("64");
    assert!(roomy.contains("invalid guest component"), "{roomy}");
    assert!(!roomy.contains("linear memory at start"), "{roomy}");

    let tight = run("16");
    assert!(
        tight.contains(
            "needs 19 MiB of linear memory at start, more than --guest-memory 16 MiB allows"
        ),
        "{tight}"
    );
    assert!(
        tight.contains("start with --guest-memory 19 or more"),
        "{tight}"
    );
    assert!(tight.contains("guest-memory=19"), "{tight}");
    // The cache entry from the first run is good, and is not called bad.
    assert!(!tight.contains("bad cache entry"), "{tight}");
}

#[test]
fn a_guest_out_of_memory_is_logged_with_the_cap_to_raise() {
    let (root, guest) = (demo_root(), fault_guest());
    let server = start(
        wasmhttpd()
            .env("RUST_LOG", "warn")
            .args(["--listen", "127.0.0.1:0", "--guest-memory", "16", "--root"])
            .arg(root)
            .arg("--guest")
            .arg(guest),
        "listening on http://",
    );
    assert_eq!(get(&client(), &server.url("/alloc")).0, 500);
    let failed = server.wait_for_log("guest failed");
    assert!(failed.contains("the guest ran out of memory"), "{failed}");
    assert!(
        failed.contains("past --guest-memory 16 MiB; raise --guest-memory"),
        "{failed}"
    );
    // A guest that fits answers as before.
    assert_eq!(get(&client(), &server.url("/alloc-mib?n=4")).0, 200);
}

#[test]
fn a_port_in_use_is_a_startup_error_with_its_cause_on_a_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let root = demo_root();
    let stderr = startup_failure(&["--listen", &addr, "--root", root.to_str().unwrap()]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&format!("error: cannot listen on {addr}").as_str()),
        "{stderr}"
    );
    assert!(
        lines[1..]
            .iter()
            .all(|line| line.starts_with("  caused by: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains("  caused by: Address already in use"),
        "{stderr}"
    );
}

#[test]
fn restarts_on_the_same_port_at_once() {
    let root = demo_root();
    let root = root.to_str().unwrap();
    let first = start_wasmhttpd(&["--root", root]);
    let addr = first.addr;
    // Requests that the server closes leave its side of the connections in
    // TIME_WAIT, which blocks a plain bind of the port.
    for _ in 0..5 {
        let response = support::exchange_at(
            addr,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(response.status, 200);
    }
    drop(first);
    let second = start_wasmhttpd_at(&addr.to_string(), root);
    assert_eq!(second.addr, addr);
    assert_eq!(get(&client(), &second.url("/")).0, 200);
}

fn start_wasmhttpd_at(listen: &str, root: &str) -> Running {
    start(
        wasmhttpd().args(["--listen", listen, "--root", root]),
        "listening on http://",
    )
}

/// The binary with the fault guest on the demo root, logging warnings,
/// the guest's output and the access log.
fn start_fault_guest() -> Running {
    start_fault_guest_logging("warn,wasmhttpd::guest=info,wasmhttpd::access=info")
}

/// The fault guest on the demo root, with `RUST_LOG` set to `filter`.
fn start_fault_guest_logging(filter: &str) -> Running {
    start_guest_logging(&fault_guest(), filter)
}

/// The component `guest` on the demo root, with `RUST_LOG` set to `filter`.
fn start_guest_logging(guest: &Path, filter: &str) -> Running {
    let root = demo_root();
    start(
        wasmhttpd()
            .env("RUST_LOG", filter)
            .args(["--listen", "127.0.0.1:0", "--root"])
            .arg(root)
            .arg("--guest")
            .arg(guest),
        "listening on http://",
    )
}

/// The number after `id=` in a log line.
fn request_id(line: &str) -> u64 {
    let (_, rest) = line
        .split_once(" id=")
        .unwrap_or_else(|| panic!("no id in {line}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("no id in {line}"))
}

#[test]
fn guest_output_is_logged_with_the_request_id() {
    let server = start_fault_guest();
    for _ in 0..2 {
        assert_eq!(get(&client(), &server.url("/print")).0, 200);
        // The last line, without its newline, is logged when the instance
        // ends, which may be after the access log line.
        let [stdout, stderr, unfinished, access] = server.wait_for_logs([
            "guest line on stdout",
            "guest line on stderr",
            "guest line without a newline",
            "wasmhttpd::access",
        ]);
        assert!(stdout.contains("wasmhttpd::guest"), "{stdout}");
        assert!(stdout.contains("stream=\"stdout\""), "{stdout}");
        assert!(stderr.contains("stream=\"stderr\""), "{stderr}");
        assert!(access.contains("target=/print"), "{access}");
        assert!(access.contains("wasi=p2"), "{access}");
        let id = request_id(&access);
        for line in [&stdout, &stderr, &unfinished] {
            assert_eq!(request_id(line), id, "{line} belongs to {access}");
        }
    }
}

#[test]
fn a_p3_guests_output_and_its_kind_are_logged() {
    let server = start_guest_logging(
        &support::p3_guest(),
        "warn,wasmhttpd::guest=info,wasmhttpd::access=info",
    );
    assert_eq!(get(&client(), &server.url("/print")).0, 200);
    let [stdout, stderr, access] = server.wait_for_logs([
        "p3 guest line on stdout",
        "p3 guest line on stderr",
        "wasmhttpd::access",
    ]);
    assert!(stdout.contains("stream=\"stdout\""), "{stdout}");
    assert!(stderr.contains("stream=\"stderr\""), "{stderr}");
    assert!(access.contains("target=/print"), "{access}");
    assert!(access.contains("wasi=p3"), "{access}");
    assert_eq!(
        request_id(&stdout),
        request_id(&access),
        "{stdout} belongs to {access}"
    );
}

#[test]
fn a_response_the_client_has_whole_is_logged_when_it_leaves_before_the_guest_ends() {
    let server = start_fault_guest();
    // The guest has written all of its 2-byte body but takes 300 ms to end
    // it; the client reads the 2 bytes and closes at once.
    let response = support::exchange_at(
        server.addr,
        b"GET /linger?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(
        (response.status, response.body.as_slice()),
        (200, &b"ok"[..])
    );
    let access = server.wait_for_log("target=/linger");
    assert!(access.contains("wasmhttpd::access"), "{access}");
    assert!(access.contains("status=200"), "{access}");
}

#[test]
fn runs_another_component_with_guest() {
    let server = start_fault_guest();
    let (status, _, body) = get(&client(), &server.url("/ok"));
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    // The static-file guest is not in play: the demo page is not served.
    assert_eq!(get(&client(), &server.url("/index.html")).0, 404);
}

/// Starts `wasmtime serve -S cli` with the default guest on `root` (plus
/// `args`), or returns `None` when wasmtime is not installed outside CI.
fn start_wasmtime_serve(
    root: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Option<(Running, tempfile::TempDir)> {
    start_wasmtime_serve_with(wasmhttpd::DEFAULT_GUEST, root, args, env)
}

/// Starts `wasmtime serve -S cli` with the component `component` on `root`
/// (plus `args`), or returns `None` when wasmtime is not installed outside
/// CI.
pub(crate) fn start_wasmtime_serve_with(
    component: &[u8],
    root: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Option<(Running, tempfile::TempDir)> {
    let wasmtime = required_tool("wasmtime", WASMTIME_INSTALL)?;
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.wasm");
    std::fs::write(&guest, component).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = start(
        Command::new(wasmtime)
            .envs(env.iter().copied())
            .arg("serve")
            .args(["-S", "cli", "--addr", &format!("127.0.0.1:{port}")])
            .arg("--dir")
            .arg(format!("{}::/", root.display()))
            .args(args)
            .arg(&guest),
        "Serving HTTP on http://",
    );
    Some((server, dir))
}

#[test]
fn the_default_guest_runs_under_wasmtime_serve() {
    let root = demo_root();
    let Some((server, _guest_dir)) = start_wasmtime_serve(&root, &[], &[]) else {
        return;
    };
    let agent = client();
    for path in [
        "/",
        "/index.html",
        "/register.html",
        "/img/sandbox.png",
        "/css/site.css",
    ] {
        let (status, _, body) = get(&agent, &server.url(path));
        assert_eq!(status, 200, "{path}");
        let file = if path == "/" {
            "index.html"
        } else {
            &path[1..]
        };
        assert_eq!(body, std::fs::read(root.join(file)).unwrap(), "{path}");
    }
    let (status, content_type, _) = get(&agent, &server.url("/missing.html"));
    assert_eq!(
        (status, content_type.as_str()),
        (404, "text/html; charset=utf-8")
    );
    let redirect = support::exchange_at(
        server.addr,
        b"GET /img HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), Some("/img/"));
    // Validators and conditional requests behave as in wasmhttpd.
    let first = support::exchange_at(
        server.addr,
        b"GET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let etag = first.header("etag").expect("ETag under wasmtime serve");
    let conditional = format!(
        "GET /index.html HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    );
    let response = support::exchange_at(server.addr, conditional.as_bytes());
    assert_eq!(response.status, 304);
    assert!(response.body.is_empty());
    let response = support::exchange_at(
        server.addr,
        b"GET /index.html HTTP/1.1\r\nHost: t\r\nRange: bytes=0-14\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 206);
    assert_eq!(response.body, b"<!DOCTYPE html>");
    let response = support::exchange_at(
        server.addr,
        b"GET /../Cargo.toml HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(matches!(response.status, 400 | 404), "{}", response.status);
    // Targets that are not origin-form, which wasmtime serve passes on:
    // the guest refuses them itself rather than serving the root's index.
    for target in ["..", "index.html", "*"] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let response = support::exchange_at(server.addr, request.as_bytes());
        assert_eq!(response.status, 400, "{target}: {}", response.text());
    }
}

#[test]
fn help_names_each_setting_with_its_variable_and_default() {
    let output = wasmhttpd().arg("--help").output().expect("run wasmhttpd");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for text in [
        "--guest-timeout <SECS>",
        "WASMHTTPD_GUEST_TIMEOUT",
        "--guest-memory <MIB>",
        "[default: 64]",
        "--max-requests-per-connection <N>",
        "WASMHTTPD_MAX_REQUESTS_PER_CONNECTION",
        "--listen <ADDR>",
        "[default: 127.0.0.1:8080]",
        "WASMHTTPD_NO_WATCH",
        "guest-timeout, guest-cpu-time, guest-memory, max-instances, reuse",
        "--guest-cpu-time <MS>",
    ] {
        assert!(help.contains(text), "{text} in\n{help}");
    }
}

#[test]
fn a_value_is_checked_alike_as_a_flag_a_variable_and_a_route_option() {
    let flag = usage_error(wasmhttpd().args(["--guest-memory", "1.5"]));
    assert!(
        flag.contains("--guest-memory") && flag.contains("takes MiB"),
        "{flag}"
    );
    let variable = usage_error(wasmhttpd().env("WASMHTTPD_GUEST_MEMORY", "1.5"));
    assert!(variable.contains("takes MiB"), "{variable}");
    let route = usage_error(wasmhttpd().args(["--route", "/a=a.wasm,guest-memory=1.5"]));
    assert!(
        route.contains("guest-memory") && route.contains("takes MiB"),
        "{route}"
    );
}

#[test]
fn a_guest_variable_that_is_not_set_is_a_usage_error() {
    let stderr = usage_error(
        wasmhttpd()
            .env_remove("WASMHTTPD_NOT_SET_ANYWHERE")
            .args(["--env", "WASMHTTPD_NOT_SET_ANYWHERE"]),
    );
    assert!(
        stderr.contains("WASMHTTPD_NOT_SET_ANYWHERE is not set"),
        "{stderr}"
    );
}

/// A web root exercising every setting of the default guest.
fn configured_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let page = "<p>Sandboxed handlers serve this page.</p>\n".repeat(100);
    std::fs::write(root.join("index.html"), &page).unwrap();
    std::fs::write(root.join("app.js"), "console.log('hello');\n".repeat(100)).unwrap();
    // Not a real brotli stream: proof that the sibling, not a compressor, answered.
    std::fs::write(root.join("app.js.br"), b"precompressed sibling").unwrap();
    std::fs::create_dir(root.join("files")).unwrap();
    std::fs::write(root.join("files/<script>.txt"), b"x").unwrap();
    std::fs::write(root.join(".env"), b"hidden").unwrap();
    dir
}

/// Guest settings as both hosts take them: one given a value, one
/// inherited from the host process's environment.
const GUEST_ENV: [&str; 4] = [
    "--env",
    "WASMHTTPD_CACHE_CONTROL=public, max-age=60",
    "--env",
    "WASMHTTPD_DIRECTORY_LISTING",
];
const INHERITED: [(&str, &str); 1] = [("WASMHTTPD_DIRECTORY_LISTING", "on")];

/// Requests whose answers depend on the settings, with extra header lines.
const CONFIGURED_REQUESTS: [(&str, &str); 6] = [
    ("/", "Accept-Encoding: gzip\r\n"),
    ("/", ""),
    ("/app.js", "Accept-Encoding: br\r\n"),
    ("/app.js", "Accept-Encoding: br\r\nRange: bytes=0-6\r\n"),
    ("/files/", ""),
    ("/.env", ""),
];

fn configured_request(addr: SocketAddr, (target, headers): (&str, &str)) -> support::Response {
    support::exchange_at(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn env_configures_the_guest_in_wasmhttpd_and_wasmtime_serve_alike() {
    let dir = configured_root();
    let root = dir.path();
    let ours = start(
        wasmhttpd()
            .envs(INHERITED)
            .args(["--listen", "127.0.0.1:0", "--root", root.to_str().unwrap()])
            .args(GUEST_ENV),
        "listening on http://",
    );
    let answers: Vec<_> = CONFIGURED_REQUESTS
        .iter()
        .map(|request| configured_request(ours.addr, *request))
        .collect();
    let [gzip, identity, sibling, range, listing, dotfile] = &answers[..] else {
        unreachable!()
    };
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    let mut page = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(gzip.body.as_slice()),
        &mut page,
    )
    .unwrap();
    assert_eq!(page, std::fs::read(root.join("index.html")).unwrap());
    assert_eq!(identity.header("content-encoding"), None);
    assert_eq!(identity.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(sibling.body, b"precompressed sibling");
    assert_eq!(
        (range.status, range.body.as_slice()),
        (206, &b"console"[..])
    );
    assert_eq!(listing.status, 200);
    assert!(listing.text().contains("&lt;script&gt;.txt"));
    assert_eq!(dotfile.status, 404);

    let Some((theirs, _guest_dir)) = start_wasmtime_serve(root, &GUEST_ENV, &INHERITED) else {
        return;
    };
    for (request, ours) in CONFIGURED_REQUESTS.iter().zip(&answers) {
        let theirs = configured_request(theirs.addr, *request);
        assert_eq!(theirs.status, ours.status, "{request:?}");
        for name in [
            "content-type",
            "content-encoding",
            "content-length",
            "content-range",
            "cache-control",
            "etag",
            "last-modified",
            "vary",
            "accept-ranges",
        ] {
            assert_eq!(theirs.header(name), ours.header(name), "{request:?} {name}");
        }
        assert!(theirs.body == ours.body, "{request:?}: bodies differ");
    }
}

#[test]
fn the_guest_is_told_how_each_session_ended() {
    let server = start_fault_guest();
    let url = format!("ws://{}/ws/echo", server.addr);
    let (mut socket, _) = tungstenite::connect(&url).unwrap();
    socket
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Library(4000),
            reason: "bye now".into(),
        }))
        .unwrap();
    server.wait_for_log("on-close 4000 bye now");
    // The session's access log line comes when it has ended.
    let access = server.wait_for_log("close_code=4000");
    for field in [
        "wasmhttpd::access",
        "status=101",
        "target=/ws/echo",
        "messages=0",
    ] {
        assert!(access.contains(field), "{field} in {access}");
    }
    // A client that just goes away: 1006.
    let (socket, _) = tungstenite::connect(&url).unwrap();
    drop(socket);
    server.wait_for_log("on-close 1006");
}

/// Starts the binary with info logs, `--cache-dir cache`, and `args`.
fn start_logged(cache: &Path, args: &[&str]) -> Running {
    start(
        wasmhttpd()
            .env("RUST_LOG", "info")
            .args(["--listen", "127.0.0.1:0", "--cache-dir"])
            .arg(cache)
            .args(args),
        "listening on http://",
    )
}

#[test]
fn a_warm_cache_skips_compilation_and_a_corrupt_entry_is_rebuilt() {
    let cache = tempfile::tempdir().unwrap();
    let root = demo_root();
    let args = ["--root", root.to_str().unwrap()];
    let cold = start_logged(cache.path(), &args);
    let loaded = cold.wait_for_log("loaded guest");
    assert!(loaded.contains("code=\"compiled\""), "{loaded}");
    drop(cold);
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "one compiled component: {entries:?}");

    let warm = start_logged(cache.path(), &args);
    let loaded = warm.wait_for_log("loaded guest");
    assert!(loaded.contains("code=\"cache\""), "{loaded}");
    assert_eq!(get(&client(), &warm.url("/")).0, 200);
    drop(warm);
    // Reused instances run the same compiled code: no second compile.
    let reusing = start_logged(cache.path(), &[args[0], args[1], "--reuse", "8"]);
    let loaded = reusing.wait_for_log("loaded guest");
    assert!(loaded.contains("code=\"cache\""), "--reuse: {loaded}");
    drop(reusing);

    // Flip one byte in the middle of the compiled code.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entries[0], &bytes).unwrap();
    let rebuilt = start_logged(cache.path(), &args);
    let ignored = rebuilt.wait_for_log("ignoring a bad cache entry");
    assert!(ignored.contains("checksum mismatch"), "{ignored}");
    let loaded = rebuilt.wait_for_log("loaded guest");
    assert!(loaded.contains("code=\"compiled\""), "{loaded}");
    assert_eq!(get(&client(), &rebuilt.url("/")).0, 200);
    drop(rebuilt);
    // The entry was written again, whole.
    let warm = start_logged(cache.path(), &args);
    assert!(warm.wait_for_log("loaded guest").contains("code=\"cache\""));
}

#[test]
fn a_p3_guest_is_compiled_once_into_the_cache_and_logged_as_p3() {
    let cache = tempfile::tempdir().unwrap();
    let root = demo_root();
    let guest = support::p3_guest();
    let args = [
        "--root",
        root.to_str().unwrap(),
        "--guest",
        guest.to_str().unwrap(),
    ];
    let cold = start_logged(cache.path(), &args);
    let loaded = cold.wait_for_log("loaded guest");
    assert!(loaded.contains("code=\"compiled\""), "{loaded}");
    assert!(
        loaded.contains("wasi=\"p3\"") || loaded.contains("wasi=p3"),
        "{loaded}"
    );
    drop(cold);
    let warm = start_logged(cache.path(), &args);
    let loaded = warm.wait_for_log("loaded guest");
    assert!(loaded.contains("code=\"cache\""), "{loaded}");
    assert_eq!(get(&client(), &warm.url("/ok")).2, b"ok\n");
}

#[test]
fn sighup_reloads_and_a_bad_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.wasm");
    std::fs::copy(support::plain_guest(), &guest).unwrap();
    let root = demo_root();
    let server = start_logged(
        dir.path(),
        &[
            "--root",
            root.to_str().unwrap(),
            "--guest",
            guest.to_str().unwrap(),
            "--no-watch",
        ],
    );
    let ok = || get(&client(), &server.url("/ok")).2;
    assert_eq!(ok(), b"plain GET /ok version=\n");
    let hangup = || server.signal("HUP");

    std::fs::write(&guest, b"\0asm not a component").unwrap();
    hangup();
    let kept = server.wait_for_log("kept the running guest");
    assert!(kept.contains("invalid guest component"), "{kept}");
    assert_eq!(ok(), b"plain GET /ok version=\n");

    std::fs::copy(fault_guest(), &guest).unwrap();
    hangup();
    let swapped = server.wait_for_log("swapped in a new guest");
    assert!(swapped.contains("digest=sha256:"), "{swapped}");
    assert!(swapped.contains(&guest.display().to_string()), "{swapped}");
    assert_eq!(ok(), b"ok");
}

#[test]
fn a_configuration_file_takes_the_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "from the file's root").unwrap();
    std::fs::copy(support::accounts_guest(), dir.path().join("accounts.wasm")).unwrap();
    let file = dir.path().join("wasmhttpd.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:1"
root = "site"
route = ["/register=accounts.wasm"]
env = ["WASMHTTPD_CACHE_CONTROL=max-age=5"]
no-cache = true
max-requests-per-connection = 2
max-body = 4
"#,
    )
    .unwrap();
    // The command line's --listen wins over the environment's and the
    // file's unusable port; the environment's body limit over the file's.
    let server = start(
        wasmhttpd()
            .env("WASMHTTPD_LISTEN", "127.0.0.1:1")
            .env("WASMHTTPD_MAX_BODY", "8")
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&file),
        "listening on http://",
    );
    let post = |body: &str| {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        support::exchange_at(server.addr, request.as_bytes()).status
    };
    assert_eq!(post("sixsix"), 405, "within the environment's limit");
    assert_eq!(post("ten bytes!"), 413, "past the environment's limit");
    let page = support::exchange_at(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(page.text(), "from the file's root");
    assert_eq!(page.header("cache-control"), Some("max-age=5"));
    let form = support::exchange_at(
        server.addr,
        b"GET /register HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(form.header("allow"), Some("POST"), "the file's route");
    // The file's request cap: the second response on a connection is its last.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(support::CLIENT_TIMEOUT))
        .unwrap();
    std::io::Write::write_all(&mut stream, &b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(2))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let first = support::read_response(&mut reader, false);
    assert_eq!(first.header("connection"), None);
    let second = support::read_response(&mut reader, false);
    assert_eq!(second.header("connection"), Some("close"));

    std::fs::write(&file, "guest-timeut = 3\n").unwrap();
    let stderr = usage_error(wasmhttpd().args(["--config", file.to_str().unwrap()]));
    assert!(stderr.contains("guest-timeut"), "{stderr}");
}

#[test]
fn sigterm_lets_responses_finish_then_exits_zero() {
    let mut server = start_fault_guest_logging("info");
    let connect = || {
        let stream = std::net::TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(support::CLIENT_TIMEOUT))
            .unwrap();
        stream
    };
    // A response that takes about a second, and an idle keep-alive connection.
    let mut busy = connect();
    std::io::Write::write_all(
        &mut busy,
        b"GET /stream?n=10&ms=100 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut busy = BufReader::new(busy);
    // The head is out before the signal: the guest is streaming.
    assert!(busy.fill_buf().unwrap().starts_with(b"HTTP/1.1 200 OK\r\n"));
    let idle_connection = || {
        let mut idle = BufReader::new(connect());
        std::io::Write::write_all(idle.get_mut(), b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(support::read_response(&mut idle, false).text(), "ok");
        idle
    };
    let (mut idle, mut next) = (idle_connection(), idle_connection());

    server.signal("TERM");
    server.wait_for_log("shutting down");
    // New connections are refused...
    assert!(std::net::TcpStream::connect(server.addr).is_err());
    // ...a request on an idle connection is answered, as the last on it...
    std::io::Write::write_all(next.get_mut(), b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let last = support::read_response(&mut next, false);
    assert_eq!(last.text(), "ok");
    assert_eq!(last.header("connection"), Some("close"));
    support::assert_closed(&mut next);
    // ...an idle connection that sends nothing is closed...
    support::assert_closed(&mut idle);
    // ...and the response in progress completes, as the last on its connection.
    let rest = support::read_response(&mut busy, false);
    let expected: String = (0..10).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(rest.text(), expected);
    assert_eq!(server.child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = start_fault_guest_logging("info");
    // A response that would run for minutes.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(support::CLIENT_TIMEOUT))
        .unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /stream?n=100000&ms=100 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    // The head is out before the signal: the guest is streaming.
    let mut stream = BufReader::new(stream);
    assert!(
        stream
            .fill_buf()
            .unwrap()
            .starts_with(b"HTTP/1.1 200 OK\r\n")
    );
    let term = || server.signal("TERM");
    term();
    server.wait_for_log("shutting down");
    term();
    assert_eq!(server.child.wait().unwrap().code(), Some(130));
}

#[test]
fn access_log_lines_name_the_client_route_and_outcome_in_json() {
    let root = demo_root();
    let server = start(
        wasmhttpd()
            .env("RUST_LOG", "wasmhttpd::access=info")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--no-cache",
                "--log-format",
                "json",
            ])
            .args(["--root", root.to_str().unwrap()]),
        "listening on http://",
    );
    assert_eq!(get(&client(), &server.url("/css/site.css")).0, 200);
    let line = server.wait_for_log("wasmhttpd::access");
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    for field in [
        "\"method\":\"GET\"",
        "\"target\":\"/css/site.css\"",
        "\"route\":\"/\"",
        "\"status\":200",
        "\"peer\":\"127.0.0.1:",
        "\"protocol\":\"HTTP/1.1\"",
        "\"tls\":false",
        "\"bytes\":",
        "\"ms\":",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    // A request refused before its head was whole has its line too.
    let refused = support::exchange_at(server.addr, b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n");
    assert_eq!(refused.status, 400);
    let line = server.wait_for_log("\"status\":400");
    for field in ["\"method\":\"-\"", "\"target\":\"-\"", "\"route\":\"-\""] {
        assert!(line.contains(field), "{field} in {line}");
    }
}

#[test]
fn outgoing_requests_are_logged_with_the_request_that_sent_them() {
    use crate::outbound::{Listener, Upstream};
    let upstream = Listener::start(Upstream::Answer);
    let origin = upstream.origin();
    let (root, guest) = (demo_root(), fault_guest());
    let server = start(
        wasmhttpd()
            .env(
                "RUST_LOG",
                "warn,wasmhttpd::access=info,wasmhttpd::outbound=info",
            )
            .args(["--listen", "127.0.0.1:0", "--root"])
            .arg(root)
            .arg("--guest")
            .arg(guest)
            .args(["--allow-outbound", &origin]),
        "listening on http://",
    );
    let url = format!("{origin}/x");
    let (status, _, body) = get(&client(), &server.url(&format!("/fetch?url={url}")));
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"status 200\nhello from upstream"[..])
    );
    let [sent, access] = server.wait_for_logs(["outgoing request id=", "wasmhttpd::access"]);
    for field in [
        "wasmhttpd::outbound",
        "method=GET",
        &format!("url={url}"),
        "status=200",
        "bytes=19",
        " ms=",
        &format!("allowed={origin}"),
    ] {
        assert!(sent.contains(field), "{field} in {sent}");
    }
    assert_eq!(
        request_id(&sent),
        request_id(&access),
        "{sent} belongs to {access}"
    );

    let refused = "http://169.254.169.254/latest/meta-data/";
    let (status, _, body) = get(&client(), &server.url(&format!("/fetch?url={refused}")));
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("HttpRequestDenied"));
    let [denied, access] = server.wait_for_logs(["outgoing request denied", "wasmhttpd::access"]);
    assert!(denied.contains(&format!("url={refused}")), "{denied}");
    assert!(
        denied.contains("no --allow-outbound entry takes"),
        "{denied}"
    );
    assert_eq!(
        request_id(&denied),
        request_id(&access),
        "{denied} belongs to {access}"
    );
}

#[test]
fn a_bad_outbound_pattern_is_a_startup_error_naming_it() {
    let flag = usage_error(wasmhttpd().args(["--allow-outbound", "api.example.com"]));
    assert!(flag.contains("--allow-outbound"), "{flag}");
    assert!(flag.contains("\"api.example.com\" has no scheme"), "{flag}");
    assert!(flag.contains("SCHEME://HOST[:PORT]"), "{flag}");
    let variable = usage_error(wasmhttpd().env(
        "WASMHTTPD_ALLOW_OUTBOUND",
        "https://ok.example.com ftp://files.example.com",
    ));
    assert!(
        variable.contains("\"ftp://files.example.com\""),
        "{variable}"
    );
    let route =
        usage_error(wasmhttpd().args(["--route", "/a=a.wasm,allow-outbound=http://x:99999"]));
    assert!(
        route.contains("allow-outbound") && route.contains("http://x:99999"),
        "{route}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wasmhttpd.toml");
    std::fs::write(
        &file,
        "allow-outbound = [\"https://ok.example.com\", \"http://10.0.0.0/40\"]\n",
    )
    .unwrap();
    let stderr = usage_error(wasmhttpd().args(["--config", file.to_str().unwrap()]));
    assert!(
        stderr.contains("allow-outbound") && stderr.contains("http://10.0.0.0/40"),
        "{stderr}"
    );
}

#[test]
fn tls_files_that_cannot_serve_are_startup_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = crate::tls::certificate(dir.path(), "good");
    let (other, _) = crate::tls::certificate(dir.path(), "other");
    let root = demo_root();
    let root = root.to_str().unwrap();
    let fails = |cert: &Path, key: &Path| {
        startup_failure(&[
            "--listen",
            "127.0.0.1:0",
            "--root",
            root,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
    };
    let missing = fails(Path::new("/no/such.crt"), &good.key);
    assert!(
        missing.contains("cannot read --tls-cert /no/such.crt"),
        "{missing}"
    );
    let no_cert = fails(&good.key, &good.key);
    assert!(no_cert.contains("holds no PEM certificate"), "{no_cert}");
    let no_key = fails(&good.cert, &good.cert);
    assert!(no_key.contains("holds no PEM private key"), "{no_key}");
    let mismatched = fails(&good.cert, &other.key);
    assert!(
        mismatched.contains("is not the one the certificate was issued for"),
        "{mismatched}"
    );
    assert!(
        mismatched.contains(other.key.to_str().unwrap()),
        "{mismatched}"
    );
    let alone = usage_error(wasmhttpd().args([
        "--listen",
        "127.0.0.1:0",
        "--root",
        root,
        "--tls-cert",
        good.cert.to_str().unwrap(),
    ]));
    assert!(alone.contains("--tls-cert needs --tls-key"), "{alone}");

    // The pair that fits serves, and the address printed says https.
    let server = start(
        wasmhttpd()
            .args(["--listen", "127.0.0.1:0", "--root", root, "--tls-cert"])
            .arg(&good.cert)
            .arg("--tls-key")
            .arg(&good.key),
        "listening on https://",
    );
    drop(server);
}

#[test]
fn the_redirect_listener_sends_every_request_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = crate::tls::certificate(dir.path(), "server");
    let root = demo_root();
    let server = start(
        wasmhttpd()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-redirect",
                "127.0.0.1:0",
                "--root",
            ])
            .arg(&root)
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key),
        "redirecting to https: http://",
    );
    let https_port = server.wait_for_log("listening on https://");
    let https_port = https_port
        .trim()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    for (request, location) in [
        (
            "GET /a/b?q=1 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n",
            format!("https://example.com:{https_port}/a/b?q=1"),
        ),
        (
            "POST /form HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            format!("https://localhost:{https_port}/form"),
        ),
        (
            "HEAD / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
            format!("https://[::1]:{https_port}/"),
        ),
    ] {
        let response = support::exchange_at(server.addr, request.as_bytes());
        assert_eq!(response.status, 308, "{request}");
        assert_eq!(
            response.header("location"),
            Some(location.as_str()),
            "{request}"
        );
    }
    let stderr = usage_error(wasmhttpd().args([
        "--listen",
        "127.0.0.1:0",
        "--root",
        root.to_str().unwrap(),
        "--http-redirect",
        "127.0.0.1:0",
    ]));
    assert!(
        stderr.contains("--http-redirect sends clients to https"),
        "{stderr}"
    );
}

#[test]
fn sighup_reloads_the_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = crate::tls::certificate(dir.path(), "server");
    let root = demo_root();
    let server = start(
        wasmhttpd()
            .env("RUST_LOG", "info")
            .args(["--listen", "127.0.0.1:0", "--no-watch", "--root"])
            .arg(&root)
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key),
        "listening on https://",
    );
    let hangup = || server.signal("HUP");
    let (renewed, _) = crate::tls::certificate(dir.path(), "renewed");
    std::fs::copy(&renewed.key, &tls.key).unwrap();
    std::fs::copy(&renewed.cert, &tls.cert).unwrap();
    hangup();
    let loaded = server.wait_for_log("loaded a new TLS certificate");
    assert!(loaded.contains(tls.cert.to_str().unwrap()), "{loaded}");
    // A key that is not the certificate's: reported, the running pair kept.
    let (other, _) = crate::tls::certificate(dir.path(), "other");
    std::fs::copy(&other.key, &tls.key).unwrap();
    hangup();
    let kept = server.wait_for_log("kept the running TLS certificate");
    assert!(
        kept.contains("is not the one the certificate was issued for"),
        "{kept}"
    );
}
