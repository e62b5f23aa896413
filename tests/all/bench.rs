//! The side-by-side benchmark, `bench/bench.py`, in a short pass: every
//! server starts, takes wrk's load (and h2load's, over TLS; and the WASIp3
//! guest's, beside `wasmtime serve`; and the empty guest's, for the
//! ceilings; and the key-value guest's, on SQLite and Redis; and with a
//! rate limit the load never reaches; and traced) without
//! errors and lands in each table the script prints.
//! The figures themselves are not checked here: they are the script's to
//! report, on a machine that is not also running tests. So with the
//! neighbour benchmark, `bench/neighbours.py`: each case runs on each
//! server and has its row.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{WASMTIME_INSTALL, fault_guest, kv_guest, p3_guest, required_tool};

/// The servers every run of the script compares (static-web-server joins
/// them when it is installed).
const SERVERS: [&str; 5] = [
    "wasmhttpd",
    "wasmhttpd --reuse 1000",
    "wasmtime serve",
    "wasmtime serve --max-instance-reuse-count 1000",
    "nginx",
];

/// Each of `tools` (a program and how to install it), the first one's
/// path, and a `PATH` that finds them all: the scripts find their tools
/// on `PATH`, and cargo's bin directory may not be on it. `None` when one
/// is missing (and the test is skipped, as `required_tool` says).
fn tools_on_path(tools: &[(&str, &str)]) -> Option<(PathBuf, OsString)> {
    let mut found = Vec::new();
    for (tool, install) in tools {
        found.push(required_tool(tool, install)?);
    }
    let dirs = found
        .iter()
        .map(|tool| tool.parent().unwrap().to_path_buf());
    let path = std::env::join_paths(dirs.chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    Some((found.swap_remove(0), path))
}

#[test]
fn the_benchmark_loads_every_server_and_prints_its_tables() {
    let tools = [
        ("python3", "apt-get install python3"),
        ("wrk", "apt-get install wrk"),
        ("nginx", "apt-get install nginx-light"),
        ("wasmtime", WASMTIME_INSTALL),
        ("openssl", "apt-get install openssl"),
        ("h2load", "apt-get install nghttp2-client"),
        ("redis-server", "apt-get install redis-server"),
    ];
    let Some((python, path)) = tools_on_path(&tools) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.wasm");
    std::fs::write(&guest, wasmhttpd::DEFAULT_GUEST).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/bench.py");

    let output = Command::new(&python)
        .env("PATH", path)
        .arg(script)
        .args([
            "--no-build",
            "--duration",
            "1",
            "--rounds",
            "1",
            "--connections",
            "4",
        ])
        .args([
            "--only",
            "small",
            "idle",
            "p3",
            "h2",
            "kv-read",
            "kv-incr",
            "--idle-connections",
            "200",
        ])
        .arg("--wasmhttpd")
        .arg(env!("CARGO_BIN_EXE_wasmhttpd"))
        .arg("--guest")
        .arg(&guest)
        .arg("--p3-guest")
        .arg(p3_guest())
        .arg("--empty-guest")
        .arg(fault_guest())
        .arg("--kv-guest")
        .arg(kv_guest())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");

    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let row = |first: &str, second: &str| {
        rows.iter()
            .find(|row| row[0] == first && row.get(1) == Some(&second))
            .unwrap_or_else(|| panic!("no row `{first} | {second}` in\n{stdout}"))
    };
    for server in SERVERS {
        // A server that answered with errors is named with their count.
        let requests: f64 = row("small file (4 conns, keep-alive)", server)[2]
            .parse()
            .unwrap();
        assert!(requests > 0.0, "{server}: {requests} req/s\n{stdout}");
        let idle = &rows
            .iter()
            .find(|row| row[0] == server && row.len() == 3)
            .unwrap_or_else(|| panic!("no idle-connections row for {server} in\n{stdout}"));
        assert!(
            idle[2].ends_with("MiB") && !idle[2].contains("failed"),
            "{server} holding 200 idle connections: {}\n{stdout}",
            idle[2]
        );
    }
    // The ratio table has a column for each peer that ran: wasmtime serve
    // (both ways) and nginx always, static-web-server where it is installed.
    let peers = &rows
        .iter()
        .find(|row| row[0] == "case" && row.get(1) == Some(&"ours"))
        .unwrap_or_else(|| panic!("no ratio table in\n{stdout}"))[2..];
    for peer in &SERVERS[2..] {
        assert!(
            peers.contains(peer),
            "no ratio column for {peer}: {peers:?}"
        );
    }
    for ours in ["wasmhttpd", "wasmhttpd --reuse 1000"] {
        let ratios = row("small", ours);
        assert_eq!(
            ratios.len(),
            2 + peers.len(),
            "a ratio to each peer: {ratios:?}"
        );
        assert!(
            ratios[2..].iter().all(|cell| cell.contains("× req/s")),
            "{ratios:?}"
        );
    }
    // HTTP/2 over TLS, for wasmhttpd both ways and nginx.
    for server in ["wasmhttpd", "wasmhttpd --reuse 1000", "nginx"] {
        let label = "HTTP/2 over TLS, small file (16 conns × 10 streams; p50: mean)";
        let requests: f64 = row(label, server)[2].parse().unwrap();
        assert!(
            requests > 0.0,
            "{server}: {requests} req/s over HTTP/2\n{stdout}"
        );
    }
    // The WASIp3 guest, in wasmhttpd and in wasmtime serve.
    for server in ["wasmhttpd (p3 guest)", "wasmtime serve (p3 guest)"] {
        let requests: f64 = row("WASIp3 guest, /ok (4 conns)", server)[2]
            .parse()
            .unwrap();
        assert!(requests > 0.0, "{server}: {requests} req/s\n{stdout}");
    }
    // The empty guest's ceilings, each beside the peer and the target it
    // bounds: a ratio from requests it answered, and ours beside it.
    let titled = |title: &str| {
        rows.iter()
            .find(|row| row[0] == title)
            .unwrap_or_else(|| panic!("no row `{title}` in\n{stdout}"))
    };
    for (ceiling, case, server) in [
        (
            "HTTP/2 over TLS, small file vs nginx",
            "HTTP/2 over TLS, small file (16 conns × 10 streams; p50: mean)",
            "wasmhttpd --reuse 1000 (empty guest)",
        ),
        (
            "WASIp3 guest, /ok vs wasmtime serve",
            "WASIp3 guest, /ok (4 conns)",
            "wasmhttpd --reuse 1000, WASIp2 (empty guest)",
        ),
    ] {
        let line = titled(ceiling);
        // target | peer req/s | empty guest req/s, CPU µs | ceiling | wanted | ours
        assert!(
            line.len() == 6 && line[3].ends_with('×') && line[4].starts_with('≥') && line[5] != "–",
            "{line:?}"
        );
        // Named with a count of errors if it had any.
        let requests: f64 = row(case, server)[2].parse().unwrap();
        assert!(requests > 0.0, "{server}: {requests} req/s\n{stdout}");
    }
    // The key-value cases: each store, and the empty guest beside them;
    // the table of what an operation adds.
    for case in [
        "key-value read, random keys (4 conns)",
        "key-value increment, one key (4 conns)",
    ] {
        for server in [
            "wasmhttpd --reuse 1000, SQLite (kv guest)",
            "wasmhttpd --reuse 1000, Redis (kv guest)",
            "wasmhttpd --reuse 1000, beside the stores (empty guest)",
        ] {
            let requests: f64 = row(case, server)[2].parse().unwrap();
            assert!(requests > 0.0, "{server}: {requests} req/s\n{stdout}");
        }
    }
    for (case, store) in [
        ("kv-read", "SQLite"),
        ("kv-read", "Redis"),
        ("kv-incr", "SQLite"),
        ("kv-incr", "Redis"),
    ] {
        let line = row(case, store);
        // case | store | req/s | CPU µs/req | × the empty guest's CPU
        assert!(line.len() == 5 && line[4].ends_with('×'), "{line:?}");
    }
    for target in [
        "key-value read, SQLite: CPU per request vs the empty guest's",
        "key-value increment, SQLite: CPU per request vs the empty guest's",
        "WASIp3 guest, /ok: req/s vs wasmtime serve",
        "HTTP/2 over TLS, small file: req/s vs nginx",
        "small file, fresh instance: req/s vs wasmtime serve",
        "small file, --reuse: req/s vs wasmtime serve's reuse",
        "small file, fresh instance: req/s vs nginx",
        "small file, --reuse: req/s vs nginx",
        "HTTP/2 over TLS, small file, --reuse: req/s vs nginx",
        "small file p99 vs nginx's (best of fresh, --reuse)",
    ] {
        let line = titled(target);
        // target | wanted | this run | met
        assert!(
            line.len() == 4 && line[2].ends_with('×') && ["yes", "no"].contains(&line[3]),
            "{line:?}"
        );
    }
    // What a rate limit the load never reaches costs: the same case with
    // and without one, and the difference.
    let limited = titled("with --rate");
    assert!(
        limited.len() == 5 && limited[3].ends_with("µs") && limited[4] == "≤ +1 µs",
        "{limited:?}"
    );
    let requests: f64 = row(
        "small file (4 conns, keep-alive)",
        "wasmhttpd --reuse 1000 --rate 1000000/s",
    )[2]
    .parse()
    .unwrap();
    assert!(
        requests > 0.0,
        "{requests} req/s with a rate limit\n{stdout}"
    );
    // What tracing costs: the same case traced at two sampler ratios, and
    // the difference from untraced.
    for sampler in ["sampler 1.0", "sampler 0.01"] {
        let traced = titled(sampler);
        assert!(
            traced.len() == 4
                && traced[1].parse::<f64>().unwrap() > 0.0
                && traced[3].ends_with("µs"),
            "{traced:?}"
        );
    }
}

#[test]
fn the_neighbour_benchmark_runs_each_case_on_each_server() {
    let tools = [
        ("python3", "apt-get install python3"),
        ("wasmtime", WASMTIME_INSTALL),
    ];
    let Some((python, path)) = tools_on_path(&tools) else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/neighbours.py");
    let output = Command::new(&python)
        .env("PATH", path)
        .arg(script)
        .args(["--no-build", "--timeout", "1", "--window", "0.3"])
        .args(["--clients", "2", "--wasmhttpd"])
        .arg(env!("CARGO_BIN_EXE_wasmhttpd"))
        .arg("--guest")
        .arg(fault_guest())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    for server in [
        "wasmhttpd",
        "wasmhttpd --work-stealing",
        "wasmtime serve -W timeout=1s",
    ] {
        for case in [
            "none",
            "2 busy",
            "8 busy",
            "2 blocked in a FIFO open",
            "2 out of memory",
        ] {
            let row = rows
                .iter()
                .find(|row| row[0] == server && row[1] == case)
                .unwrap_or_else(|| panic!("no row `{server} | {case}` in\n{stdout}"));
            // Each case sent light requests, and says what share was answered.
            assert!(row[2].contains("% of"), "{row:?}");
        }
    }
}
