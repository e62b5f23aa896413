//! The `wasmhttpd` binary as a child process: started with the cache in
//! the build tree, its address read from the line it prints, its log
//! lines awaited, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::support;

/// A child process killed when dropped.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    /// Where it serves metrics, when it said so before its address.
    metrics: Option<SocketAddr>,
    /// Its stderr lines before the one that gave the address, not yet
    /// looked at.
    early: std::cell::RefCell<Vec<String>>,
    /// Its stderr lines after that one.
    log: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// An outside program a test runs (nginx, `wasmtime serve`), started in a
/// process group of its own and killed with the whole group when dropped,
/// so that nothing it started outlives the test: nginx's workers do not
/// die with their master.
pub struct Group {
    pub child: Child,
}

impl Group {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(command: &mut Command) -> Group {
        Group {
            child: spawn_leader(command),
        }
    }
}

/// Spawns `command` as the leader of a new process group, for
/// [`kill_group`] to end.
fn spawn_leader(command: &mut Command) -> Child {
    command
        .process_group(0)
        .spawn()
        .unwrap_or_else(|err| panic!("start {command:?}: {err}"))
}

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// SIGKILL to the process group `child` leads; returns once `child` is
/// reaped and the rest of the group has died.
fn kill_group(child: &mut Child) {
    let group = child.id();
    // `kill -KILL -- -PGID` signals every process in the group; it fails
    // harmlessly when the group is already gone.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    // The others die as the signal reaches them. No panic here: this runs
    // in `Drop`, perhaps while a failed test unwinds.
    let deadline = Instant::now() + support::CLIENT_TIMEOUT;
    while !live_in_group(group).is_empty() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The processes still running (zombies aside) in the process group
/// `pgid`, from `/proc`.
pub fn live_in_group(pgid: u32) -> Vec<u32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name, which may hold spaces: state, ppid, pgrp.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        if fields[2] == pgid.to_string() && fields[0] != "Z" {
            live.push(pid);
        }
    }
    live
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Where it serves its metrics and probes, from the line it prints
    /// when started with `--metrics`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.expect("started with --metrics")
    }

    /// Sends it a signal: `"TERM"` (a graceful shutdown), `"HUP"` (reload).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status();
        assert!(status.unwrap().success(), "kill -{signal} {pid}");
    }

    /// Waits for stderr lines containing each of `texts`, in any order,
    /// and returns them in the order of `texts`; other lines are passed over.
    pub fn wait_for_logs<const N: usize>(&self, texts: [&str; N]) -> [String; N] {
        let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
        let deadline = Instant::now() + support::CLIENT_TIMEOUT;
        let mut early = std::mem::take(&mut *self.early.borrow_mut()).into_iter();
        while found.iter().any(Option::is_none) {
            let line = match early.next() {
                Some(line) => line,
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.log
                        .recv_timeout(left)
                        .unwrap_or_else(|_| panic!("no log lines with all of {texts:?}: {found:?}"))
                }
            };
            if let Some(at) = (0..N).find(|&i| found[i].is_none() && line.contains(texts[i])) {
                found[at] = Some(line);
            }
        }
        found.map(Option::unwrap)
    }

    /// Waits for a stderr line containing `text` and returns it; lines
    /// before it are passed over.
    pub fn wait_for_log(&self, text: &str) -> String {
        let mut early = self.early.borrow_mut();
        if let Some(at) = early.iter().position(|line| line.contains(text)) {
            return early.drain(..=at).next_back().unwrap();
        }
        early.clear();
        let deadline = Instant::now() + support::CLIENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no log line with {text:?}"),
            }
        }
    }

    /// Waits for a stderr line containing `text`; returns it and every
    /// line before it that was not looked at yet.
    pub fn logs_until(&self, text: &str) -> Vec<String> {
        let mut lines = std::mem::take(&mut *self.early.borrow_mut());
        let deadline = Instant::now() + support::CLIENT_TIMEOUT;
        while !lines.last().is_some_and(|line| line.contains(text)) {
            if let Some(at) = lines.iter().position(|line| line.contains(text)) {
                let rest = lines.split_off(at + 1);
                self.early.borrow_mut().extend(rest);
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => panic!("no log line with {text:?}: {lines:?}"),
            }
        }
        lines
    }
}

/// The binary, logging warnings, with its cache in the build tree.
pub fn wasmhttpd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmhttpd"));
    test_env(&mut command);
    command
}

/// The environment the binary runs in under test, for a `command` that
/// runs it (itself, or a shell that `exec`s it).
pub fn test_env(command: &mut Command) {
    command
        .env("RUST_LOG", "warn")
        .env_remove("WASMHTTPD_LISTEN")
        .env_remove("WASMHTTPD_CACHE_DIR")
        // The default cache directory, kept inside the build tree.
        .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"));
}

/// Starts a server process and waits for the `listening on http://ADDR/` line.
pub fn start(command: &mut Command, marker: &str) -> Running {
    let mut child = spawn_leader(command.stdout(Stdio::null()).stderr(Stdio::piped()));
    let stderr = child.stderr.take().unwrap();
    // Keep draining stderr so the child never blocks on a full pipe.
    let (sender, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let mut early = Vec::new();
    let addr = loop {
        let line = log
            .recv_timeout(support::CLIENT_TIMEOUT)
            .unwrap_or_else(|_| panic!("server exited before printing {marker:?}: {early:?}"));
        if let Some(rest) = line.split(marker).nth(1) {
            let addr = rest.trim().trim_end_matches('/');
            break addr
                .replace("0.0.0.0", "127.0.0.1")
                .parse()
                .expect("address");
        }
        early.push(line);
    };
    let metrics = early
        .iter()
        .find_map(|line| line.split("metrics on http://").nth(1))
        .map(|rest| {
            rest.trim_end_matches("/metrics")
                .parse()
                .expect("metrics address")
        });
    Running {
        child,
        addr,
        metrics,
        early: std::cell::RefCell::new(early),
        log,
    }
}

pub fn start_wasmhttpd(args: &[&str]) -> Running {
    start(
        wasmhttpd().args(["--listen", "127.0.0.1:0"]).args(args),
        "listening on http://",
    )
}
