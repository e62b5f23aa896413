//! Content negotiation in the default guest: precompressed siblings chosen
//! by `Accept-Encoding`, gzip and brotli on the fly, `Vary`, and what is
//! never compressed. Every encoded body is decoded and compared byte for
//! byte with the file.

use crate::support;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::OnceLock;

use crate::support::{Response, TestServer, assert_head_matches_get, noise};

/// Above the size the guest compresses in memory, so it streams.
const STREAMED: usize = 3 * 1024 * 1024 + 77;

struct Fixture {
    dir: tempfile::TempDir,
    server: TestServer,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |name: &str, bytes: &[u8]| std::fs::write(root.join(name), bytes).unwrap();
        let app = text(20_000, 1);
        write("app.js", &app);
        // Siblings made the way a build step makes them: brotli at its best
        // quality, gzip with the file name in its header. The guest's own
        // encoders produce different bytes, so a test can tell them apart.
        write("app.js.br", &brotli_at(&app, 11));
        write("app.js.gz", &gzip_named(&app, "app.js"));
        write("page.html", &text(8_000, 2));
        write("big.txt", &text(STREAMED, 3));
        write("small.css", b"body { margin: 0 }");
        write("noise.bin", &noise(50_000, 4));
        write("noise.bin.gz", &gzip_named(&noise(50_000, 4), "noise.bin"));
        write(
            "photo.png",
            &std::fs::read(support::demo_root().join("img/sandbox.png")).unwrap(),
        );
        let server = TestServer::static_files(root);
        Fixture { dir, server }
    })
}

fn file(name: &str) -> Vec<u8> {
    file_at(fixture().dir.path(), name)
}

/// Text that compresses like real markup: words from a small vocabulary
/// in a pseudo-random order.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "<div>",
        "</div>",
        "function",
        "return",
        "const",
        "wasm",
        "sandbox",
        "{",
        "}",
        "\n",
        "class=\"x\"",
        "let",
    ];
    let picks = noise(len, seed);
    let mut out = Vec::with_capacity(len + 16);
    for pick in picks {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(WORDS[pick as usize % WORDS.len()].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn brotli_at(bytes: &[u8], quality: i32) -> Vec<u8> {
    let params = brotli::enc::BrotliEncoderParams {
        quality,
        ..Default::default()
    };
    let mut out = Vec::new();
    brotli::enc::BrotliCompress(&mut &bytes[..], &mut out, &params).unwrap();
    out
}

fn gzip_named(bytes: &[u8], name: &str) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .filename(name)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The body decoded per its `Content-Encoding`.
fn decoded(response: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    match response.header("content-encoding") {
        None => out.clone_from(&response.body),
        Some("br") => brotli::BrotliDecompress(&mut response.body.as_slice(), &mut out).unwrap(),
        Some("gzip") => {
            flate2::read::GzDecoder::new(response.body.as_slice())
                .read_to_end(&mut out)
                .unwrap();
        }
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    out
}

/// GET `target` with `Accept-Encoding: accept` (none when empty), checking
/// HEAD against it on the way.
fn fetch(target: &str, accept: &str) -> Response {
    let headers = if accept.is_empty() {
        String::new()
    } else {
        format!("Accept-Encoding: {accept}\r\n")
    };
    assert_head_matches_get(fixture().server.addr, target, &headers)
}

#[test]
fn precompressed_siblings_are_chosen_by_accept_encoding() {
    let app = file("app.js");
    let cases = [
        ("gzip, deflate, br, zstd", Some("br"), "app.js.br"),
        ("br", Some("br"), "app.js.br"),
        ("*", Some("br"), "app.js.br"),
        ("gzip", Some("gzip"), "app.js.gz"),
        ("br;q=0.5, gzip", Some("gzip"), "app.js.gz"),
        ("br;q=0, gzip;q=0.2", Some("gzip"), "app.js.gz"),
        ("", None, "app.js"),
        ("identity", None, "app.js"),
        ("br;q=0, gzip;q=0", None, "app.js"),
        ("identity, br;q=0.5", None, "app.js"),
        ("deflate, zstd", None, "app.js"),
    ];
    for (accept, coding, served) in cases {
        let response = fetch("/app.js", accept);
        assert_eq!(response.status, 200, "{accept}");
        assert_eq!(response.header("content-encoding"), coding, "{accept}");
        assert!(response.body == file(served), "{accept}: not {served}");
        assert!(decoded(&response) == app, "{accept}: decodes to app.js");
        assert_eq!(
            response.header("content-length"),
            Some(response.body.len().to_string().as_str()),
            "{accept}"
        );
        assert_eq!(
            response.header("content-type"),
            Some("text/javascript; charset=utf-8"),
            "{accept}"
        );
        assert_eq!(response.header("vary"), Some("accept-encoding"), "{accept}");
        let etag = response.header("etag").unwrap();
        assert!(!etag.starts_with("W/"), "a file's tag is strong: {etag}");
        match coding {
            Some(coding) => {
                assert!(etag.ends_with(&format!("-{coding}\"")), "{etag}");
                assert_eq!(response.header("accept-ranges"), None, "{accept}");
            }
            None => assert_eq!(response.header("accept-ranges"), Some("bytes")),
        }
    }
}

#[test]
fn a_sibling_is_served_for_a_type_never_compressed_on_the_fly() {
    let response = fetch("/noise.bin", "br, gzip");
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert!(response.body == file("noise.bin.gz"));
    assert!(decoded(&response) == file("noise.bin"));
}

#[test]
fn text_is_compressed_on_the_fly_with_an_exact_length() {
    let page = file("page.html");
    for (accept, coding) in [("gzip", "gzip"), ("br", "br"), ("gzip, br", "br")] {
        let response = fetch("/page.html", accept);
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-encoding"),
            Some(coding),
            "{accept}"
        );
        assert!(!response.chunked, "{accept}: a small file has a length");
        assert_eq!(
            response.header("content-length"),
            Some(response.body.len().to_string().as_str())
        );
        assert!(
            response.body.len() < page.len() / 2,
            "{accept}: {} of {} bytes",
            response.body.len(),
            page.len()
        );
        assert!(decoded(&response) == page, "{accept}: decodes to the file");
        assert_eq!(response.header("vary"), Some("accept-encoding"));
        assert_eq!(
            response.header("etag"),
            Some(format!("{}-{coding}\"", weak_of(&fetch("/page.html", ""))).as_str()),
            "generated bytes get a weak tag of their own"
        );
    }
}

/// `W/` plus the identity tag without its closing quote.
fn weak_of(identity: &Response) -> String {
    let tag = identity.header("etag").unwrap();
    format!("W/{}", tag.trim_end_matches('"'))
}

#[test]
fn large_files_are_compressed_while_they_stream() {
    let big = file("big.txt");
    for coding in ["br", "gzip"] {
        let response = fetch("/big.txt", coding);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-encoding"), Some(coding));
        assert!(response.chunked, "{coding}: length unknown up front");
        assert_eq!(response.header("content-length"), None);
        assert_eq!(response.header("transfer-encoding"), Some("chunked"));
        assert!(decoded(&response) == big, "{coding}: decodes to the file");
    }
}

#[test]
fn ranges_are_never_compressed() {
    for (path, name) in [("/app.js", "app.js"), ("/page.html", "page.html")] {
        let bytes = file(name);
        let response = assert_head_matches_get(
            fixture().server.addr,
            path,
            "Accept-Encoding: br, gzip\r\nRange: bytes=100-1099\r\n",
        );
        assert_eq!(response.status, 206, "{path}");
        assert_eq!(response.header("content-encoding"), None, "{path}");
        assert_eq!(response.body, bytes[100..1100], "{path}");
        assert_eq!(response.header("vary"), Some("accept-encoding"), "{path}");
    }
}

#[test]
fn small_files_and_compressed_types_are_sent_as_they_are() {
    for name in ["small.css", "photo.png", "noise.bin"] {
        let response = fetch(&format!("/{name}"), "br");
        assert_eq!(response.status, 200, "{name}");
        assert_eq!(response.header("content-encoding"), None, "{name}");
        assert!(response.body == file(name), "{name}");
    }
}

#[test]
fn each_representation_revalidates_with_its_own_tag() {
    let addr = fixture().server.addr;
    for (path, accept) in [
        ("/page.html", "gzip"),
        ("/app.js", "br"),
        ("/app.js", ""),
        ("/big.txt", "br"),
    ] {
        let accept_line = if accept.is_empty() {
            String::new()
        } else {
            format!("Accept-Encoding: {accept}\r\n")
        };
        let first = fetch(path, accept);
        let etag = first.header("etag").unwrap();
        let conditional = format!("{accept_line}If-None-Match: {etag}\r\n");
        let response = assert_head_matches_get(addr, path, &conditional);
        assert_eq!(response.status, 304, "{path} {accept}");
        assert!(response.body.is_empty());
        for name in ["etag", "vary", "cache-control", "last-modified"] {
            assert_eq!(
                response.header(name),
                first.header(name),
                "{path} {accept}: 304 {name}"
            );
        }
        assert_eq!(response.header("content-encoding"), None);
        // Another coding is another representation: the tag does not match it.
        let other = if accept == "gzip" { "identity" } else { "gzip" };
        let response = support::exchange_at(
            addr,
            format!(
                "GET {path} HTTP/1.1\r\nHost: t\r\nAccept-Encoding: {other}\r\n\
                 If-None-Match: {etag}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(response.status, 200, "{path} {accept} then {other}");
    }
}

#[test]
fn if_match_never_matches_a_generated_representation() {
    let tag = fetch("/page.html", "gzip")
        .header("etag")
        .unwrap()
        .to_owned();
    let response = support::exchange_at(
        fixture().server.addr,
        format!(
            "GET /page.html HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\
             If-Match: {tag}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(response.status, 412, "a weak tag fails strong comparison");
}

#[test]
fn compression_can_be_switched_off() {
    let root: &Path = fixture().dir.path();
    let server = TestServer::static_files_with(
        root,
        &[
            ("WASMHTTPD_COMPRESSION", "off"),
            ("WASMHTTPD_PRECOMPRESSED", "off"),
        ],
    );
    for path in ["/app.js", "/page.html", "/big.txt"] {
        let response = assert_head_matches_get(server.addr, path, "Accept-Encoding: br, gzip\r\n");
        assert_eq!(response.header("content-encoding"), None, "{path}");
        assert!(response.body == file(&path[1..]), "{path}");
    }
    let server = TestServer::static_files_with(root, &[("WASMHTTPD_COMPRESSION", "off")]);
    let response = assert_head_matches_get(server.addr, "/app.js", "Accept-Encoding: gzip\r\n");
    assert!(response.body == file("app.js.gz"), "siblings still served");
    let response = assert_head_matches_get(server.addr, "/page.html", "Accept-Encoding: gzip\r\n");
    assert_eq!(response.header("content-encoding"), None);
    assert_eq!(
        response.header("vary"),
        Some("accept-encoding"),
        "a sibling could still appear"
    );
}

#[test]
fn a_sibling_older_than_its_file_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let style = text(4_000, 9);
    std::fs::write(dir.path().join("style.css"), &style).unwrap();
    let stale = dir.path().join("style.css.gz");
    std::fs::write(
        &stale,
        gzip_named(b"an old version of the file", "style.css"),
    )
    .unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let server = TestServer::static_files(dir.path());
    let response = assert_head_matches_get(server.addr, "/style.css", "Accept-Encoding: gzip\r\n");
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert!(
        response.body != file_at(dir.path(), "style.css.gz"),
        "the stale sibling"
    );
    assert!(
        decoded(&response) == style,
        "compressed from the current file"
    );
}

fn file_at(root: &Path, name: &str) -> Vec<u8> {
    std::fs::read(root.join(name)).unwrap()
}
