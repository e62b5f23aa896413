//! The default guest configured through its environment (`--env`):
//! `Cache-Control`, dotfiles, directory listings, and a bad value.

use crate::support::{Response, TestServer, assert_head_matches_get};

/// Bytes no response may contain unless dotfiles are enabled.
const PRIVATE: &str = "PRIVATE-DOTFILE-CONTENT";

/// A web root with a directory that has no index page.
fn web_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write = |path: &str, bytes: &[u8]| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    write("index.html", b"<h1>home</h1>");
    write("files/<script>.txt", b"not a script");
    write("files/a & b.txt", b"ampersand");
    write("files/report.pdf", &[7; 2048]);
    write("files/sub/inner.txt", b"inner");
    write("files/.env", PRIVATE.as_bytes());
    write(".env", PRIVATE.as_bytes());
    write(".git/config", PRIVATE.as_bytes());
    std::os::unix::fs::symlink("/etc", root.join("files/escape")).unwrap();
    dir
}

/// GETs `target`, checking that HEAD answers alike.
fn fetch(server: &TestServer, target: &str) -> Response {
    assert_head_matches_get(server.addr, target, "")
}

#[test]
fn cache_control_defaults_to_revalidation() {
    let dir = web_root();
    let server = TestServer::static_files(dir.path());
    let response = fetch(&server, "/index.html");
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    let etag = response.header("etag").unwrap();
    let not_modified = assert_head_matches_get(
        server.addr,
        "/index.html",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("cache-control"), Some("no-cache"));
    let partial = assert_head_matches_get(server.addr, "/index.html", "Range: bytes=0-3\r\n");
    assert_eq!(partial.status, 206);
    assert_eq!(partial.header("cache-control"), Some("no-cache"));
}

#[test]
fn cache_control_is_configurable_or_off() {
    let dir = web_root();
    let value = "public, max-age=31536000, immutable";
    let server = TestServer::static_files_with(dir.path(), &[("WASMHTTPD_CACHE_CONTROL", value)]);
    let response = fetch(&server, "/files/report.pdf");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("cache-control"), Some(value));
    let etag = response.header("etag").unwrap();
    let not_modified = assert_head_matches_get(
        server.addr,
        "/files/report.pdf",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(not_modified.header("cache-control"), Some(value));

    let server = TestServer::static_files_with(dir.path(), &[("WASMHTTPD_CACHE_CONTROL", "")]);
    let response = fetch(&server, "/files/report.pdf");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("cache-control"), None);
}

#[test]
fn dotfiles_are_served_only_when_enabled() {
    let dir = web_root();
    let hidden = TestServer::static_files(dir.path());
    let shown = TestServer::static_files_with(dir.path(), &[("WASMHTTPD_DOTFILES", "on")]);
    for target in ["/.env", "/.git/config", "/files/.env"] {
        let response = fetch(&hidden, target);
        assert_eq!(response.status, 404, "{target}");
        assert!(!response.text().contains(PRIVATE), "{target}");
        let response = fetch(&shown, target);
        assert_eq!(response.status, 200, "{target}");
        assert_eq!(response.text(), PRIVATE, "{target}");
    }
}

#[test]
fn directories_are_not_listed_by_default() {
    let dir = web_root();
    let server = TestServer::static_files(dir.path());
    let response = fetch(&server, "/files/");
    assert_eq!(response.status, 404);
    assert!(!response.text().contains("script"));
}

#[test]
fn a_listing_escapes_names_and_shows_sizes_and_dates() {
    let dir = web_root();
    let server =
        TestServer::static_files_with(dir.path(), &[("WASMHTTPD_DIRECTORY_LISTING", "on")]);
    let response = fetch(&server, "/files/");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    let page = response.text();
    let modified = |name: &str| {
        let time = std::fs::metadata(dir.path().join("files").join(name))
            .unwrap()
            .modified()
            .unwrap();
        httpdate::fmt_http_date(time)
    };
    let row = format!(
        "<tr><td><a href=\"./%3Cscript%3E.txt\">&lt;script&gt;.txt</a></td>\
         <td>12</td><td>{}</td></tr>",
        modified("<script>.txt")
    );
    assert!(page.contains(&row), "{page}");
    assert!(!page.contains("<script>"), "a name never becomes markup");
    assert!(page.contains("<a href=\"./a%20&amp;%20b.txt\">a &amp; b.txt</a></td><td>9</td>"));
    assert!(page.contains("<a href=\"./report.pdf\">report.pdf</a></td><td>2048</td>"));
    assert!(page.contains("<a href=\"./sub/\">sub/</a></td><td>-</td>"));
    assert!(page.contains("<a href=\"../\">../</a>"));
    assert!(page.contains("<title>Index of /files/</title>"));
    assert!(
        page.find("./sub/") < page.find("./%3Cscript%3E.txt"),
        "directories first"
    );
    assert!(!page.contains(".env"), "dotfiles are not listed");
    assert!(
        !page.contains("escape"),
        "a link out of the root is not listed"
    );

    // The links lead to the files.
    let file = fetch(&server, "/files/%3Cscript%3E.txt");
    assert_eq!(file.status, 200);
    assert_eq!(file.body, b"not a script");
    // A directory with an index page still serves it.
    assert_eq!(fetch(&server, "/").body, b"<h1>home</h1>");
    assert_eq!(fetch(&server, "/files").status, 301);
}

#[test]
fn a_listing_shows_dotfiles_when_they_are_enabled() {
    let dir = web_root();
    let server = TestServer::static_files_with(
        dir.path(),
        &[
            ("WASMHTTPD_DIRECTORY_LISTING", "true"),
            ("WASMHTTPD_DOTFILES", "true"),
        ],
    );
    let page = fetch(&server, "/files/").text();
    assert!(page.contains("<a href=\"./.env\">.env</a>"), "{page}");
}

#[test]
fn an_invalid_setting_fails_every_request_loudly() {
    let dir = web_root();
    let server = TestServer::static_files_with(dir.path(), &[("WASMHTTPD_DOTFILES", "maybe")]);
    for target in ["/", "/.env", "/files/report.pdf"] {
        let response = fetch(&server, target);
        assert_eq!(response.status, 500, "{target}");
        assert!(response.text().contains("misconfigured"), "{target}");
        assert!(!response.text().contains(PRIVATE), "{target}");
    }
}

#[test]
fn other_variables_are_ignored() {
    let dir = web_root();
    let server = TestServer::static_files_with(
        dir.path(),
        &[("HOME", "/root"), ("WASMHTTPD_SOMETHING_ELSE", "x")],
    );
    assert_eq!(fetch(&server, "/").status, 200);
    assert_eq!(fetch(&server, "/.env").status, 404);
}
