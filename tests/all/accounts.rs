//! The demo's accounts guest (`builtin:accounts`, `guests/accounts`) on
//! `/account`, over real loopback connections: register, sign in, see who
//! is signed in, sign out; the pages for a taken name, a wrong password
//! and a missing field; the cookie's attributes over HTTP and HTTPS; the
//! password never stored in clear; a sign-in that tells nothing of which
//! names exist, and failed sign-ins that pause a name; and the same guest
//! under `wasmtime serve -S keyvalue`.

use std::path::Path;
use std::sync::Arc;
use std::thread;

use crate::support::{self, Response, TestServer, demo_root, exchange_at, test_limits};
use wasmhttpd::state::Grants;
use wasmhttpd::{Config, GuestSource, Route, RouteLimits};

const FORM: &str = "application/x-www-form-urlencoded";

/// The demo as `wasmhttpd.toml` mounts it: static files on `/`, the
/// accounts guest on `/account` with the store `default` (SQLite in
/// `dir`) granted to it alone.
fn demo(dir: &Path) -> Config {
    Config {
        routes: vec![
            Route::new("/", GuestSource::Default).unwrap(),
            Route::new("/account", GuestSource::Accounts)
                .unwrap()
                .with_limits(RouteLimits {
                    allow_kv: Some(Grants(vec!["default".to_owned()])),
                    ..RouteLimits::default()
                }),
        ],
        data_dir: Some(dir.to_owned()),
        limits: test_limits(),
        ..Config::new(demo_root())
    }
}

/// `POST target` with a form `body` (and `cookie`, if any).
fn post(addr: std::net::SocketAddr, target: &str, body: &str, cookie: Option<&str>) -> Response {
    exchange_at(addr, post_request(target, body, cookie).as_bytes())
}

fn post_request(target: &str, body: &str, cookie: Option<&str>) -> String {
    let cookie = cookie.map_or(String::new(), |cookie| format!("Cookie: {cookie}\r\n"));
    format!(
        "POST {target} HTTP/1.1\r\nHost: t\r\nContent-Type: {FORM}\r\n{cookie}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn get(addr: std::net::SocketAddr, target: &str, cookie: Option<&str>) -> Response {
    let cookie = cookie.map_or(String::new(), |cookie| format!("Cookie: {cookie}\r\n"));
    let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\n{cookie}Connection: close\r\n\r\n");
    exchange_at(addr, request.as_bytes())
}

/// The `session=…` pair of a response's `Set-Cookie`.
fn session(response: &Response) -> String {
    let set = response.header("set-cookie").expect("a cookie");
    set.split(';').next().unwrap().trim().to_owned()
}

#[test]
fn an_account_is_created_signed_in_shown_and_signed_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(demo(dir.path()));
    let addr = server.addr;

    let created = post(
        addr,
        "/account/register",
        "name=ada&email=ada%40example.org&password=correct+horse",
        None,
    );
    assert_eq!(created.status, 201, "{}", created.text());
    assert!(created.text().contains("Welcome, <strong>ada</strong>"));

    let taken = post(
        addr,
        "/account/register",
        "name=ada&email=other%40example.org&password=another+one",
        None,
    );
    assert_eq!(taken.status, 409);
    assert!(
        taken.text().contains("That name is taken"),
        "{}",
        taken.text()
    );

    let missing = post(
        addr,
        "/account/register",
        "name=bob&password=long+enough",
        None,
    );
    assert_eq!(missing.status, 400);
    assert!(
        missing.text().contains("Missing: email."),
        "{}",
        missing.text()
    );
    let short = post(
        addr,
        "/account/register",
        "name=bob&email=b%40x&password=short",
        None,
    );
    assert_eq!(short.status, 400);
    assert!(short.text().contains("8 characters at least"));

    let wrong = post(
        addr,
        "/account/signin",
        "name=ada&password=wrong+horse",
        None,
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.text().contains("Wrong name or password"));
    assert!(wrong.header("set-cookie").is_none());
    let nobody = post(
        addr,
        "/account/signin",
        "name=nobody&password=correct+horse",
        None,
    );
    assert_eq!(nobody.status, 401);
    let no_password = post(addr, "/account/signin", "name=ada", None);
    assert_eq!(no_password.status, 400);
    assert!(no_password.text().contains("Missing: password."));

    let signed_in = post(
        addr,
        "/account/signin",
        "name=ada&password=correct+horse",
        None,
    );
    assert_eq!(signed_in.status, 303, "{}", signed_in.text());
    assert_eq!(signed_in.header("location"), Some("/account/"));
    let set = signed_in.header("set-cookie").unwrap();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=86400"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "not over plain HTTP: {set}");
    let cookie = session(&signed_in);

    let page = get(addr, "/account/", Some(&cookie));
    assert_eq!(page.status, 200);
    assert!(
        page.text()
            .contains("Signed in as <strong id=\"who\">ada</strong>"),
        "{}",
        page.text()
    );
    let anonymous = get(addr, "/account/", None);
    assert!(anonymous.text().contains("action=\"/account/signin\""));
    assert!(!anonymous.text().contains("Signed in as"));
    assert_eq!(
        get(addr, "/account", None).header("location"),
        Some("/account/")
    );

    let signed_out = post(addr, "/account/signout", "", Some(&cookie));
    assert_eq!(signed_out.status, 303);
    let cleared = signed_out.header("set-cookie").unwrap();
    assert!(
        cleared.starts_with("session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    // The session is over on the server, not only in the browser.
    let after = get(addr, "/account/", Some(&cookie));
    assert!(!after.text().contains("Signed in as"), "{}", after.text());
}

#[test]
fn the_password_is_stored_as_an_argon2_hash_never_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(demo(dir.path()));
    let password = "a-rather-memorable-passphrase";
    let created = post(
        server.addr,
        "/account/register",
        &format!("name=grace&email=g%40example.org&password={password}"),
        None,
    );
    assert_eq!(created.status, 201);
    let mut stored = Vec::new();
    for file in std::fs::read_dir(dir.path()).unwrap() {
        stored.extend(std::fs::read(file.unwrap().path()).unwrap());
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(
        stored.contains("account:grace"),
        "the account is in the store"
    );
    assert!(stored.contains("$argon2id$"), "as an Argon2id hash");
    assert!(!stored.contains(password), "never in clear");
}

#[test]
fn of_two_registrations_of_one_name_at_once_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(TestServer::start(demo(dir.path())));
    let attempts: Vec<_> = (0..6)
        .map(|i| {
            let server = server.clone();
            thread::spawn(move || {
                post(
                    server.addr,
                    "/account/register",
                    &format!("name=race&email=r{i}%40x&password=password{i}"),
                    None,
                )
                .status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = attempts.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409]);
}

#[test]
fn over_https_the_session_cookie_is_secure() {
    use std::io::{BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let (files, root) = crate::tls::certificate(dir.path(), "accounts");
    let server = TestServer::start(Config {
        tls: Some(files),
        ..demo(dir.path())
    });
    let config = crate::tls::client_config(&root, &[b"http/1.1"], &[&rustls::version::TLS13]);
    let exchange = |request: String| {
        let mut tls = crate::tls::connect(server.addr, config.clone());
        tls.write_all(request.as_bytes()).unwrap();
        support::read_response(&mut BufReader::new(tls), false)
    };
    let body = "name=tls&email=t%40x&password=over+https";
    assert_eq!(
        exchange(post_request("/account/register", body, None)).status,
        201
    );
    let signed_in = exchange(post_request("/account/signin", body, None));
    assert_eq!(signed_in.status, 303);
    let set = signed_in.header("set-cookie").unwrap();
    assert!(set.ends_with("; Secure"), "{set}");
}

#[test]
fn what_is_not_a_good_form_is_refused_and_fields_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(demo(dir.path()));
    let addr = server.addr;
    let created = post(
        addr,
        "/account/register",
        "name=%3Cb%3EAda%3C%2Fb%3E&email=a%40x&password=long+enough",
        None,
    );
    assert_eq!(created.status, 201);
    assert_eq!(
        created.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let page = created.text();
    assert!(page.contains("&lt;b&gt;Ada&lt;/b&gt;"), "{page}");
    assert!(!page.contains("<b>Ada"), "never markup from the form");

    for body in ["name=%zz&email=x", "name=%ff&email=x", "=x"] {
        assert_eq!(
            post(addr, "/account/register", body, None).status,
            400,
            "{body}"
        );
    }
    let json = "POST /account/register HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                Content-Length: 2\r\nConnection: close\r\n\r\n{}";
    assert_eq!(exchange_at(addr, json.as_bytes()).status, 415);
    let large = format!("name=a&email=b&password={}", "x".repeat(20_000));
    assert_eq!(post(addr, "/account/register", &large, None).status, 413);

    let form = get(addr, "/account/register", None);
    assert_eq!(form.status, 405);
    assert_eq!(form.header("allow"), Some("POST"));
    let static_form = get(addr, "/register.html", None);
    assert!(static_form.text().contains("action=\"/account/register\""));
}

#[test]
fn without_a_granted_store_the_visitor_is_told_to_try_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Config {
        routes: vec![Route::new("/account", GuestSource::Accounts).unwrap()],
        ..demo(dir.path())
    });
    let refused = post(
        server.addr,
        "/account/register",
        "name=ada&email=a%40x&password=long+enough",
        None,
    );
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("5"));
}

#[test]
fn the_accounts_guest_runs_under_wasmtime_serve_with_its_in_memory_store() {
    let component = std::fs::read(support::accounts_guest()).unwrap();
    let Some((theirs, _dir)) =
        crate::cli::start_wasmtime_serve_with(&component, &demo_root(), &["-S", "keyvalue"], &[])
    else {
        return;
    };
    let page = get(theirs.addr, "/account/", None);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("action=\"/account/signin\""));
    let created = post(
        theirs.addr,
        "/account/register",
        "name=ada&email=a%40x&password=long+enough",
        None,
    );
    assert_eq!(created.status, 201, "{}", created.text());
    // Its store is the instance's memory: a fresh instance knows nobody.
    let nobody = post(
        theirs.addr,
        "/account/signin",
        "name=ada&password=long+enough",
        None,
    );
    assert_eq!(nobody.status, 401);
}

#[test]
fn replicas_behind_nginx_with_one_redis_share_one_signed_in_session() {
    let Some(nginx) = support::required_tool("nginx", "apt-get install nginx-light") else {
        return;
    };
    let Some(redis) = crate::kv::RedisServer::start() else {
        return;
    };
    let replica = || {
        crate::process::start_wasmhttpd(&[
            "--root",
            demo_root().to_str().unwrap(),
            "--kv-store",
            &format!("default={}", redis.url()),
            "--route",
            "/account=builtin:accounts,allow-kv=default",
        ])
    };
    let replicas: Vec<_> = (0..3).map(|_| replica()).collect();
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<_> = replicas.iter().map(|replica| replica.addr).collect();
    let front = crate::many::Nginx::in_front_of(&nginx, &addrs, dir.path());

    let body = "name=shared&email=s%40x&password=one+session";
    assert_eq!(
        post(front.addr, "/account/register", body, None).status,
        201
    );
    let signed_in = post(front.addr, "/account/signin", body, None);
    assert_eq!(signed_in.status, 303);
    let cookie = session(&signed_in);
    // Whichever replica a request reaches knows the session.
    for addr in addrs {
        let page = get(addr, "/account/", Some(&cookie));
        assert!(
            page.text()
                .contains("Signed in as <strong id=\"who\">shared</strong>"),
            "{addr}: {}",
            page.text()
        );
    }
}

#[test]
fn an_unknown_name_gets_the_answer_and_the_work_of_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::process::start(
        crate::process::wasmhttpd()
            .env("RUST_LOG", "warn,wasmhttpd::guest=info")
            .args(["--listen", "127.0.0.1:0", "--root"])
            .arg(demo_root())
            .args(["--route", "/account=builtin:accounts,allow-kv=default"])
            .arg("--data-dir")
            .arg(dir.path()),
        "listening on http://",
    );
    let created = post(
        server.addr,
        "/account/register",
        "name=ada&email=a%40x&password=correct+horse",
        None,
    );
    assert_eq!(created.status, 201);
    let wrong = post(
        server.addr,
        "/account/signin",
        "name=ada&password=wrong+horse",
        None,
    );
    let wrong_check = server.wait_for_log("sign-in: checked a password");
    let unknown = post(
        server.addr,
        "/account/signin",
        "name=nobody&password=wrong+horse",
        None,
    );
    // A name without an account is checked too: a line of its own.
    let unknown_check = server.wait_for_log("sign-in: checked a password");
    // The guest's line, without the request id the host adds after it.
    let work = |line: &str| {
        let said = line.split("sign-in: ").nth(1).unwrap();
        said.split(" id=").next().unwrap().to_owned()
    };
    assert_eq!(work(&wrong_check), work(&unknown_check));
    assert!(
        work(&wrong_check).contains("argon2id") && work(&wrong_check).contains("m=19456"),
        "{wrong_check}"
    );
    // The same status and the same page, but for the name typed back.
    assert_eq!((wrong.status, unknown.status), (401, 401));
    assert_eq!(
        wrong.text().replace("value=\"ada\"", "value=\"?\""),
        unknown.text().replace("value=\"nobody\"", "value=\"?\"")
    );
}

#[test]
fn failed_sign_ins_pause_a_name_and_a_good_one_starts_the_count_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(demo(dir.path()));
    let addr = server.addr;
    let created = post(
        addr,
        "/account/register",
        "name=lin&email=l%40x&password=correct+horse",
        None,
    );
    assert_eq!(created.status, 201);
    let sign_in = |name: &str, password: &str| {
        post(
            addr,
            "/account/signin",
            &format!("name={name}&password={password}"),
            None,
        )
    };
    // Four failures, then the right password: the count starts again.
    for _ in 0..4 {
        assert_eq!(sign_in("lin", "wrong").status, 401);
    }
    assert_eq!(sign_in("lin", "correct+horse").status, 303);
    // So four more do not pause the name; the fifth in a row does.
    for _ in 0..5 {
        assert_eq!(sign_in("lin", "wrong").status, 401);
    }
    let paused = sign_in("lin", "correct+horse");
    assert_eq!(paused.status, 429, "{}", paused.text());
    assert!(
        paused.text().contains("paused: try again in 30 seconds"),
        "{}",
        paused.text()
    );
    assert_eq!(paused.header("retry-after"), Some("30"));
    assert!(paused.header("set-cookie").is_none());
    // A name without an account is paused alike: a pause tells nothing.
    for _ in 0..5 {
        assert_eq!(sign_in("ghost", "wrong").status, 401);
    }
    let ghost = sign_in("ghost", "wrong");
    assert_eq!(ghost.status, 429);
    assert_eq!(
        ghost.text(),
        paused.text(),
        "the same page whether the name exists"
    );
    // Other names are not held up.
    assert_eq!(sign_in("ada", "wrong").status, 401);
}

#[test]
fn a_name_no_account_can_have_is_answered_as_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(demo(dir.path()));
    // Longer than any key the store takes, and than a name may be.
    let long = "n".repeat(1000);
    let answer = post(
        server.addr,
        "/account/signin",
        &format!("name={long}&password=whatever"),
        None,
    );
    assert_eq!(answer.status, 401, "{}", answer.text());
    assert!(answer.text().contains("Wrong name or password"));
}
