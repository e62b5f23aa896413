//! The default guest serving a web root: index pages, redirects, types,
//! error pages, large and odd files, and traversal attempts.

use crate::support;

use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::OnceLock;

use crate::support::{TestServer, client, demo_root, get, noise, read_response};

/// Bytes outside the web root that no request may ever return.
const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";
/// Size of the large file: several MiB, so it cannot fit one buffer anywhere.
const LARGE: usize = 5 * 1024 * 1024 + 123;

/// A temporary tree: `secret.txt` beside `root/`, and `root/` full of cases.
struct Fixture {
    _dir: tempfile::TempDir,
    server: TestServer,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
        let root = dir.path().join("root");
        build_root(&root, dir.path());
        let server = TestServer::static_files(&root);
        Fixture { _dir: dir, server }
    })
}

fn build_root(root: &Path, outside: &Path) {
    let write = |path: &str, bytes: &[u8]| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    write("index.html", b"<h1>root index</h1>");
    write("docs/index.html", b"<h1>docs index</h1>");
    write("empty-dir/.keep", b"");
    write("large.bin", &noise(LARGE, 42));
    write("empty.txt", b"");
    write("café.txt", "crème brûlée".as_bytes());
    write("a b.txt", b"space");
    write("data.json", b"{\"ok\":true}");
    write("script.js", b"console.log(1)");
    write("style.css", b"body{}");
    write(
        "pic.png",
        &std::fs::read(demo_root().join("img/sandbox.png")).unwrap(),
    );
    write("%2e%2e", b"a file literally named %2e%2e");
    write(".env", SECRET.as_bytes());
    write(".git/config", SECRET.as_bytes());
    write("docs/.htpasswd", SECRET.as_bytes());
    write(
        ".well-known/security.txt",
        b"Contact: mailto:security@example.com",
    );
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(outside, root.join("outside")).unwrap();
    std::os::unix::fs::symlink("docs/index.html", root.join("inside-link.html")).unwrap();
    let fifo = root.join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo");
}

fn fetch(path: &str) -> (u16, String, Vec<u8>) {
    get(&client(), &fixture().server.url(path))
}

/// Sends a raw request line (the client crate would normalise the path).
fn raw(target: &str) -> support::Response {
    fixture().server.exchange(
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Sends a GET (or `method`) with extra header lines on a new connection.
fn request(method: &str, target: &str, headers: &str) -> support::Response {
    let raw =
        format!("{method} {target} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n");
    let mut stream = fixture().server.connect();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, method == "HEAD");
    support::assert_closed(&mut reader);
    response
}

#[test]
fn root_serves_index_html() {
    let (status, content_type, body) = fetch("/");
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert_eq!(body, b"<h1>root index</h1>");
}

#[test]
fn directory_with_slash_serves_its_index() {
    let (status, _, body) = fetch("/docs/");
    assert_eq!(status, 200);
    assert_eq!(body, b"<h1>docs index</h1>");
}

#[test]
fn directory_without_slash_redirects_to_the_slash_form() {
    let response = raw("/docs?x=1");
    assert_eq!(response.status, 301);
    assert_eq!(response.header("location"), Some("/docs/?x=1"));
    let response = raw("//docs");
    assert_eq!(
        response.header("location"),
        Some("/docs/"),
        "never protocol-relative"
    );
}

#[test]
fn directory_without_index_is_404() {
    assert_eq!(fetch("/empty-dir/").0, 404);
}

#[test]
fn content_types_for_common_files() {
    for (path, expected) in [
        ("/data.json", "application/json; charset=utf-8"),
        ("/script.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/pic.png", "image/png"),
        ("/large.bin", "application/octet-stream"),
        ("/empty.txt", "text/plain; charset=utf-8"),
    ] {
        let (status, content_type, _) = fetch(path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(content_type, expected, "{path}");
    }
}

#[test]
fn a_multi_mib_file_arrives_byte_for_byte() {
    let expected = noise(LARGE, 42);
    let (status, _, body) = fetch("/large.bin");
    assert_eq!(status, 200);
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "large body differs");
    // And over a raw keep-alive connection, twice, with exact framing.
    let mut stream = fixture().server.connect();
    stream
        .write_all(
            b"GET /large.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /large.bin HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    for _ in 0..2 {
        let response = read_response(&mut reader, false);
        assert_eq!(
            response.header("content-length"),
            Some(LARGE.to_string().as_str())
        );
        assert!(response.body == expected, "large body differs");
    }
}

#[test]
fn binary_and_empty_files() {
    let (status, _, body) = fetch("/pic.png");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        std::fs::read(demo_root().join("img/sandbox.png")).unwrap()
    );
    let response = raw("/empty.txt");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("0"));
    assert!(response.body.is_empty());
}

#[test]
fn utf8_and_encoded_file_names() {
    let (status, _, body) = fetch("/caf%C3%A9.txt");
    assert_eq!(status, 200);
    assert_eq!(body, "crème brûlée".as_bytes());
    assert_eq!(fetch("/a%20b.txt").2, b"space");
    assert_eq!(fetch("/data.json?cache=1#frag").0, 200);
}

#[test]
fn missing_files_get_a_404_page() {
    let response = raw("/no/such/page.html");
    assert_eq!(response.status, 404);
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(response.text().contains("404 Not Found"));
}

#[test]
fn a_custom_404_page_keeps_the_404_status() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("404.html"), "<p>custom not found</p>").unwrap();
    let server = TestServer::static_files(dir.path());
    let (status, content_type, body) = get(&client(), &server.url("/nothing"));
    assert_eq!(status, 404);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert_eq!(body, b"<p>custom not found</p>");
}

#[test]
fn methods_other_than_get_and_head_are_405() {
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let response = fixture().server.exchange(
            format!("{method} /index.html HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.header("allow"), Some("GET, HEAD"), "{method}");
    }
}

#[test]
fn fifos_are_not_served_and_do_not_hang() {
    let response = raw("/pipe");
    assert_eq!(response.status, 404);
    assert_eq!(fetch("/").0, 200, "the guest is still serving");
}

#[test]
fn symlinks_inside_the_root_are_followed() {
    let (status, _, body) = fetch("/inside-link.html");
    assert_eq!(status, 200);
    assert_eq!(body, b"<h1>docs index</h1>");
}

#[test]
fn traversal_never_reaches_outside_the_root() {
    let attempts = [
        "/../secret.txt",
        "/../../secret.txt",
        "/docs/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/docs/%2e%2e/%2e%2e/secret.txt",
        "/%252e%252e/secret.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/%5c..%5c..%5csecret.txt",
        "/leak.txt",
        "/outside/secret.txt",
        "/outside/",
        "/index.html%00.png",
        "/%00",
        "/%zz",
        "/%e0%80%ae%e0%80%ae/secret.txt",
        "/%c0%ae%c0%ae/secret.txt",
    ];
    for target in attempts {
        let response = raw(target);
        assert!(
            matches!(response.status, 400 | 404),
            "{target} answered {}",
            response.status
        );
        assert!(
            !response.text().contains(SECRET),
            "{target} leaked the secret"
        );
    }
    // Double encoding is decoded once: it names a file literally called %2e%2e.
    let response = raw("/%252e%252e");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "a file literally named %2e%2e");
}

#[test]
fn the_demo_site_is_complete() {
    let agent = client();
    let server = TestServer::static_files(&demo_root());
    let (status, _, index) = get(&agent, &server.url("/"));
    assert_eq!(status, 200);
    let index = String::from_utf8(index).unwrap();
    for asset in [
        "/css/site.css",
        "/js/site.js",
        "/img/logo.svg",
        "/img/sandbox.png",
        "/register.html",
    ] {
        assert!(index.contains(asset), "index.html links {asset}");
        let (status, _, body) = get(&agent, &server.url(asset));
        assert_eq!(status, 200, "{asset}");
        let on_disk = std::fs::read(demo_root().join(&asset[1..])).unwrap();
        assert_eq!(body, on_disk, "{asset}");
    }
    let (_, _, register) = get(&agent, &server.url("/register.html"));
    let register = String::from_utf8(register).unwrap();
    assert!(register.contains("<form") && register.contains("method=\"post\""));
}

#[test]
fn file_responses_carry_validators_and_nosniff() {
    let response = raw("/data.json");
    assert_eq!(response.status, 200);
    let etag = response.header("etag").expect("ETag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"),
        "{etag}"
    );
    let modified = response.header("last-modified").expect("Last-Modified");
    let modified = httpdate::parse_http_date(modified).unwrap();
    let on_disk = std::fs::metadata(fixture_root().join("data.json"))
        .unwrap()
        .modified()
        .unwrap();
    let skew = on_disk.duration_since(modified).unwrap();
    assert!(
        skew < std::time::Duration::from_secs(1),
        "Last-Modified is the file's mtime"
    );
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        raw("/missing").header("x-content-type-options"),
        Some("nosniff")
    );
}

fn fixture_root() -> std::path::PathBuf {
    fixture()._dir.path().join("root")
}

#[test]
fn if_none_match_gives_304_without_a_body() {
    let etag = raw("/data.json").header("etag").unwrap().to_owned();
    for method in ["GET", "HEAD"] {
        let response = request(method, "/data.json", &format!("If-None-Match: {etag}\r\n"));
        assert_eq!(response.status, 304, "{method}");
        assert_eq!(response.header("etag"), Some(etag.as_str()));
        assert!(response.header("last-modified").is_some());
        assert_eq!(response.header("content-length"), None);
    }
    let response = request("GET", "/data.json", "If-None-Match: *\r\n");
    assert_eq!(response.status, 304);
    let listed = format!("If-None-Match: \"other\", {etag}\r\n");
    assert_eq!(request("GET", "/data.json", &listed).status, 304);
    let response = request("GET", "/data.json", "If-None-Match: \"other\"\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"{\"ok\":true}");
}

#[test]
fn if_modified_since() {
    let modified = raw("/data.json")
        .header("last-modified")
        .unwrap()
        .to_owned();
    let response = request(
        "GET",
        "/data.json",
        &format!("If-Modified-Since: {modified}\r\n"),
    );
    assert_eq!(response.status, 304);
    let response = request(
        "GET",
        "/data.json",
        "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n",
    );
    assert_eq!(response.status, 200);
    let response = request("GET", "/data.json", "If-Modified-Since: not a date\r\n");
    assert_eq!(response.status, 200);
    // If-None-Match takes precedence: a mismatched tag means the file is sent.
    let response = request(
        "GET",
        "/data.json",
        &format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {modified}\r\n"),
    );
    assert_eq!(response.status, 200);
}

#[test]
fn failed_if_match_and_if_unmodified_since_are_412() {
    let etag = raw("/data.json").header("etag").unwrap().to_owned();
    assert_eq!(
        request("GET", "/data.json", "If-Match: \"other\"\r\n").status,
        412
    );
    assert_eq!(
        request("GET", "/data.json", &format!("If-Match: W/{etag}\r\n")).status,
        412
    );
    assert_eq!(
        request("GET", "/data.json", &format!("If-Match: {etag}\r\n")).status,
        200
    );
    assert_eq!(request("GET", "/data.json", "If-Match: *\r\n").status, 200);
    let old = "If-Unmodified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n";
    assert_eq!(request("GET", "/data.json", old).status, 412);
    assert_eq!(request("HEAD", "/data.json", old).status, 412);
}

#[test]
fn the_etag_changes_when_the_file_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("note.txt");
    std::fs::write(&file, "first").unwrap();
    let server = TestServer::static_files(dir.path());
    let fetch_etag = || {
        let response =
            support::exchange_at(server.addr, b"GET /note.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        (response.header("etag").unwrap().to_owned(), response.text())
    };
    let (before, body) = fetch_etag();
    assert_eq!(body, "first");
    std::fs::write(&file, "second version").unwrap();
    let (after, body) = fetch_etag();
    assert_eq!(body, "second version");
    assert_ne!(before, after);
    let stale = format!("GET /note.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {before}\r\n\r\n");
    let response = support::exchange_at(server.addr, stale.as_bytes());
    assert_eq!(response.status, 200);
}

#[test]
fn dotfiles_are_hidden_but_well_known_is_served() {
    for target in [
        "/.env",
        "/.git/config",
        "/.git/",
        "/docs/.htpasswd",
        "/%2eenv",
        "/docs/../.env",
    ] {
        let response = raw(target);
        assert_eq!(response.status, 404, "{target}");
        assert!(!response.text().contains(SECRET), "{target} leaked");
    }
    let (status, _, body) = fetch("/.well-known/security.txt");
    assert_eq!(status, 200);
    assert_eq!(body, b"Contact: mailto:security@example.com");
}

/// GET (or HEAD) of `/large.bin` with a `Range` header and optional extra lines.
fn ranged(method: &str, range: &str, extra: &str) -> support::Response {
    request(method, "/large.bin", &format!("Range: {range}\r\n{extra}"))
}

#[test]
fn single_ranges_are_206_with_the_exact_bytes() {
    let file = noise(LARGE, 42);
    let size = LARGE as u64;
    let cases = [
        ("bytes=0-9", 0, 9),
        ("bytes=1000-1000", 1000, 1000),
        ("bytes=5000000-", 5_000_000, size - 1),
        ("bytes=-4096", size - 4096, size - 1),
        ("bytes=100-99999999", 100, size - 1),
        ("bytes=1048570-3145730", 1_048_570, 3_145_730),
    ];
    for (range, start, end) in cases {
        let response = ranged("GET", range, "");
        assert_eq!(response.status, 206, "{range}");
        assert_eq!(
            response.header("content-range"),
            Some(format!("bytes {start}-{end}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(
            response.header("content-length"),
            Some((end - start + 1).to_string().as_str())
        );
        assert!(
            response.body == file[start as usize..=end as usize],
            "{range}: wrong bytes"
        );
        let head = ranged("HEAD", range, "");
        for name in ["content-range", "content-length", "etag", "accept-ranges"] {
            assert_eq!(
                head.header(name),
                response.header(name),
                "HEAD {range} {name}"
            );
        }
    }
}

#[test]
fn whole_files_advertise_ranges() {
    assert_eq!(raw("/large.bin").header("accept-ranges"), Some("bytes"));
}

#[test]
fn unsatisfiable_ranges_are_416() {
    let size = LARGE;
    for range in [
        format!("bytes={size}-"),
        "bytes=-0".to_owned(),
        format!("bytes={}-{}", size + 10, size + 20),
    ] {
        let response = ranged("GET", &range, "");
        assert_eq!(response.status, 416, "{range}");
        assert_eq!(
            response.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
    }
}

#[test]
fn several_ranges_or_invalid_ones_get_the_whole_file() {
    for range in ["bytes=0-1,5-6", "bytes=9-0", "items=0-5", "bytes=x-y"] {
        let response = ranged("GET", range, "");
        assert_eq!(response.status, 200, "{range}");
        assert_eq!(response.body.len(), LARGE, "{range}");
    }
}

#[test]
fn if_range_serves_the_range_only_while_the_file_is_unchanged() {
    let whole = raw("/large.bin");
    let etag = whole.header("etag").unwrap();
    let modified = whole.header("last-modified").unwrap();
    let cases = [
        (format!("If-Range: {etag}\r\n"), 206),
        (format!("If-Range: {modified}\r\n"), 206),
        ("If-Range: \"stale\"\r\n".to_owned(), 200),
        (format!("If-Range: W/{etag}\r\n"), 200),
        (
            "If-Range: Sat, 01 Jan 2000 00:00:00 GMT\r\n".to_owned(),
            200,
        ),
    ];
    for (if_range, status) in cases {
        let response = ranged("GET", "bytes=0-99", &if_range);
        assert_eq!(response.status, status, "{if_range}");
    }
}

#[test]
fn a_download_resumes_where_it_stopped() {
    // What `curl -C -` does: take the first part, then ask for the rest.
    let file = noise(LARGE, 42);
    let first = ranged("GET", "bytes=0-2097151", "");
    let etag = first.header("etag").unwrap().to_owned();
    let rest = ranged("GET", "bytes=2097152-", &format!("If-Range: {etag}\r\n"));
    assert_eq!(rest.status, 206);
    let mut joined = first.body;
    joined.extend_from_slice(&rest.body);
    assert!(joined == file, "resumed download differs");
}

#[test]
fn head_gives_the_get_headers_for_every_kind_of_answer() {
    let addr = fixture().server.addr;
    let etag = raw("/data.json").header("etag").unwrap().to_owned();
    let cases = [
        ("/data.json", String::new(), 200),
        ("/data.json", format!("If-None-Match: {etag}\r\n"), 304),
        ("/data.json", "If-Match: \"other\"\r\n".to_owned(), 412),
        ("/large.bin", "Range: bytes=10-19\r\n".to_owned(), 206),
        ("/large.bin", format!("Range: bytes={LARGE}-\r\n"), 416),
        ("/large.bin", "Range: bytes=0-1,5-6\r\n".to_owned(), 200),
        ("/docs", String::new(), 301),
        ("/docs/", String::new(), 200),
        ("/no/such/file", String::new(), 404),
        ("/.env", String::new(), 404),
        ("/%00", String::new(), 400),
    ];
    for (target, headers, status) in cases {
        let get = support::assert_head_matches_get(addr, target, &headers);
        assert_eq!(get.status, status, "{target} {headers:?}");
    }
}

#[test]
fn reused_instances_serve_the_same_bytes() {
    let server = TestServer::start(wasmhttpd::Config {
        limits: wasmhttpd::Limits {
            reuse: 4,
            ..support::test_limits()
        },
        ..wasmhttpd::Config::new(fixture_root())
    });
    let expected = noise(LARGE, 42);
    let mut stream = server.connect();
    let pipeline = "GET /large.bin HTTP/1.1\r\nHost: t\r\n\r\n\
                    HEAD /data.json HTTP/1.1\r\nHost: t\r\n\r\n\
                    GET /missing HTTP/1.1\r\nHost: t\r\n\r\n"
        .repeat(3);
    stream.write_all(pipeline.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    for _ in 0..3 {
        let large = read_response(&mut reader, false);
        assert!(large.body == expected, "large body differs");
        let head = read_response(&mut reader, true);
        assert_eq!(head.header("content-length"), Some("11"));
        let missing = read_response(&mut reader, false);
        assert_eq!(missing.status, 404);
    }
}
