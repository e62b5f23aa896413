//! The demo site as a user sees it: headless Chromium loads its pages from
//! the real binary, over HTTP/1.1 and over HTTPS, where the page must come
//! by HTTP/2 (its navigation timing's `nextHopProtocol`), its script run,
//! its logo load, and the WebSocket echo page get its messages back from
//! the guest over `wss`. And the demo's accounts, as a user goes through
//! them: Chromium driven over its DevTools protocol, the server started as
//! `cargo run --release` starts it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::process::{Group, start, start_wasmhttpd, wasmhttpd};
use crate::support::{demo_root, eventually, required_tool};

/// The page `url` as Chromium has it once its scripts have run.
fn rendered(chromium: &Path, profile: &Path, url: &str) -> String {
    let output = Command::new(chromium)
        .args([
            "--headless",
            // As root (CI), Chromium runs only without its sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // The certificate is the test's own.
            "--ignore-certificate-errors",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_demo_pages_work_in_chromium_over_http_and_over_https_with_h2_and_wss() {
    let Some(chromium) = required_tool("chromium", "apt-get install chromium") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = crate::tls::certificate(dir.path(), "browser");
    let root = demo_root();
    let root = root.to_str().unwrap();
    let plain = start_wasmhttpd(&["--root", root]);
    let https = start(
        wasmhttpd()
            .args(["--listen", "127.0.0.1:0", "--root", root])
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key),
        "listening on https://",
    );
    let profile = dir.path().join("profile");
    let sites = [
        (plain.url("/"), "http/1.1"),
        (format!("https://{}/", https.addr), "h2"),
    ];
    for (site, protocol) in sites {
        let home = rendered(&chromium, &profile, &site);
        for marker in [
            "data-script-ran=\"yes\"".to_owned(),
            "data-logo=\"loaded\"".to_owned(),
            format!("data-protocol=\"{protocol}\""),
        ] {
            assert!(home.contains(&marker), "{site}: no {marker} in\n{home}");
        }
        // Chromium dumps the page when its virtual time runs out, which
        // does not wait for WebSocket messages: on a loaded machine it may
        // dump before the echo is back, so the page is loaded again until
        // it shows the echo (or the client timeout passes).
        let echo_page = format!("{site}echo.html?demo");
        eventually(&format!("the guest's echo in {echo_page}"), || {
            let echo = rendered(&chromium, &profile, &echo_page);
            assert!(
                !echo.contains("data-echo=\"mismatch\""),
                "{echo_page}: the echo differs from what was sent:\n{echo}"
            );
            echo.contains("data-echo=\"ok\"")
        });
    }
}

/// Headless Chromium driven over the DevTools protocol (a WebSocket), as
/// a user drives it: load a page, fill a form, submit it, read what the
/// page shows.
struct Browser {
    _process: Group,
    page: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next: u64,
    /// Events that came while a command's result was awaited.
    events: std::collections::VecDeque<serde_json::Value>,
}

impl Browser {
    fn launch(chromium: &Path, profile: &Path) -> Browser {
        let mut process = Group::spawn(
            Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("about:blank")
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        let stderr = BufReader::new(process.child.stderr.take().unwrap());
        let port: u16 = stderr
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                let rest = line.split("DevTools listening on ws://127.0.0.1:").nth(1)?;
                rest.split('/').next()?.parse().ok()
            })
            .expect("chromium's DevTools address");
        // Chromium names the page's socket after the Host it was asked by.
        let list = format!(
            "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        );
        let targets = crate::support::exchange_at(([127, 0, 0, 1], port).into(), list.as_bytes());
        let targets: serde_json::Value = serde_json::from_slice(&targets.body).unwrap();
        let url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|target| target["type"] == "page")
            .and_then(|target| target["webSocketDebuggerUrl"].as_str())
            .expect("a page to drive")
            .to_owned();
        let (page, _) = tungstenite::connect(url).expect("the page's DevTools socket");
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = page.get_ref() {
            stream
                .set_read_timeout(Some(crate::support::CLIENT_TIMEOUT))
                .unwrap();
        }
        let mut browser = Browser {
            _process: process,
            page,
            next: 0,
            events: std::collections::VecDeque::new(),
        };
        browser.call("Page.enable", serde_json::json!({}));
        browser
    }

    fn receive(&mut self) -> serde_json::Value {
        let message = self.page.read().expect("a DevTools message");
        serde_json::from_str(message.to_text().unwrap()).unwrap()
    }

    /// Sends a command; returns its result, keeping the events that come
    /// before it.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let id = self.next;
        let command = serde_json::json!({ "id": id, "method": method, "params": params });
        self.page.send(command.to_string().into()).unwrap();
        loop {
            let message = self.receive();
            if message["id"] == id {
                assert!(message["error"].is_null(), "{method}: {message}");
                return message["result"].clone();
            }
            if message["method"].is_string() {
                self.events.push_back(message);
            }
        }
    }

    /// Waits for the page's next `load` event.
    fn loaded(&mut self) {
        loop {
            let event = match self.events.pop_front() {
                Some(event) => event,
                None => self.receive(),
            };
            if event["method"] == "Page.loadEventFired" {
                return;
            }
        }
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({ "url": url }));
        self.loaded();
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"].clone()
    }

    /// Fills the page's form and submits it with its button, as a user
    /// would; waits for the page that answers.
    fn submit(&mut self, fields: &[(&str, &str)]) {
        let fills: String = fields
            .iter()
            .map(|(name, value)| {
                format!(
                    "document.querySelector('form [name={name}]').value = {};",
                    serde_json::Value::from(*value)
                )
            })
            .collect();
        self.eval(&format!(
            "{fills} document.querySelector('form button[type=submit]').click(); true"
        ));
        self.loaded();
    }

    fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[test]
fn the_demo_keeps_accounts_in_chromium_as_cargo_run_starts_it() {
    let Some(chromium) = required_tool("chromium", "apt-get install chromium") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // As `cargo run --release` starts it: in the repository, reading its
    // wasmhttpd.toml; only the port and the data directory are the test's.
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let server = start(
        wasmhttpd()
            .current_dir(repository)
            .env("WASMHTTPD_DATA_DIR", dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"]),
        "listening on http://",
    );
    let site = server.url("/");
    let mut browser = Browser::launch(&chromium, &dir.path().join("profile"));

    // Home, "Create an account", the form.
    browser.open(&site);
    browser.eval("document.querySelector('a.button[href=\"/register.html\"]').click(); true");
    browser.loaded();
    let fields = [
        ("name", "ada"),
        ("email", "ada@example.org"),
        ("password", "analytical engine"),
    ];
    browser.submit(&fields);
    let created = browser.text();
    assert!(created.contains("Account created"), "{created}");

    // The page that answers has the sign-in form, the name filled in.
    browser.submit(&[("password", "analytical engine")]);
    let signed_in = browser.text();
    assert!(signed_in.contains("Signed in as ada"), "{signed_in}");
    assert_eq!(browser.eval("location.pathname"), "/account/");
    // The cookie is the server's: scripts cannot read it.
    assert_eq!(browser.eval("document.cookie"), "");
    let cookies = browser.call("Network.getCookies", serde_json::json!({ "urls": [site] }));
    let session = cookies["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cookie| cookie["name"] == "session")
        .expect("a session cookie")
        .clone();
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Lax", "{session}");

    // Still signed in on the next visit; then signed out.
    browser.open(&server.url("/account/"));
    assert!(browser.text().contains("Signed in as ada"));
    browser.submit(&[]);
    let signed_out = browser.text();
    assert!(
        signed_out.contains("Sign in") && !signed_out.contains("Signed in as"),
        "{signed_out}"
    );

    // A taken name, then a wrong password, each say so.
    browser.open(&server.url("/register.html"));
    browser.submit(&fields);
    assert!(browser.text().contains("That name is taken"));
    browser.open(&server.url("/account/"));
    browser.submit(&[("name", "ada"), ("password", "difference engine")]);
    assert!(browser.text().contains("Wrong name or password"));
}
