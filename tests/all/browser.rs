//! The demo site as a user sees it: headless Chromium loads its pages from
//! the real binary, over HTTP/1.1 and over HTTPS, where the page must come
//! by HTTP/2 (its navigation timing's `nextHopProtocol`), its script run,
//! its logo load, and the WebSocket echo page get its messages back from
//! the guest over `wss`.

use std::path::Path;
use std::process::Command;

use crate::process::{start, start_wasmhttpd, wasmhttpd};
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
