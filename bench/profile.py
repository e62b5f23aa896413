#!/usr/bin/env python3
"""Where a request's CPU goes: one wasmhttpd under one load, profiled.

Starts wasmhttpd (the release build) with a guest, loads it with wrk on one
path, samples it with `perf record` meanwhile, and prints, as a Markdown
table, the server's CPU per request split by who spends it: the kernel
waking and switching threads, the kernel's network and other syscalls,
the allocator, libc, tokio, the front end (HTTP/1.1, HTTP/2, TLS), the
dispatch (routes, metrics, logs), the host's guest glue (instances, pools,
deadlines), wasmtime's component ABI and resources, the host calls by
interface (wasi:http, the rest of WASI, key-value), and the guest's own
compiled code. Each sample goes to the class of the function it was in.

    python3 bench/profile.py --guest empty            # tests/guests/fault's /ok
    python3 bench/profile.py --guest default          # the built-in guest, /index.html
    python3 bench/profile.py --guest default --fresh  # a fresh instance per request

Needs wrk and perf (apt-get install wrk linux-perf); builds nothing: run
`python3 bench/bench.py` (which builds) or `cargo build --release` first.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

# The classes, in the order the table lists them; a sample goes to the
# first whose test takes its (dso, symbol).
SCHEDULING = re.compile(
    r"finish_task_switch|__schedule|^schedule|try_to_wake_up|ttwu|_raw_spin_unlock_irq|"
    r"irqentry_exit|reschedule|futex|sched_|enqueue|dequeue|pick_next|select_task_rq|"
    r"update_curr|update_load|psi_|exit_to_user_mode_loop|__switch_to|switch_mm|"
    r"native_sched_clock|resched|idle")
ALLOCATOR = re.compile(
    r"^(_int_malloc|malloc|_int_free|cfree|free|realloc|_int_realloc|malloc_consolidate|"
    r"unlink_chunk|tcache|__libc_malloc|__libc_free|alloc::alloc)|__rdl_|__rust_alloc|"
    r"__rust_dealloc|__rust_realloc")
CLASSES = [
    ("guest code (compiled wasm)", lambda dso, sym: dso.startswith("[JIT]")),
    ("kernel: waking and switching threads",
     lambda dso, sym: dso == "[kernel.kallsyms]" and SCHEDULING.search(sym)),
    ("kernel: network and other syscalls", lambda dso, sym: dso == "[kernel.kallsyms]"),
    ("allocator", lambda dso, sym: ALLOCATOR.search(sym)),
    ("libc and the vDSO: copies, locks, clocks, syscall wrappers",
     lambda dso, sym: dso.startswith("libc") or dso == "[vdso]"),
    ("host calls: key-value", lambda dso, sym: re.search(r"wasmhttpd::state|sqlite3|rusqlite|redis", sym)),
    ("host calls: wasi:http", lambda dso, sym: "wasmtime_wasi_http" in sym),
    ("host calls: the rest of WASI (io, filesystem, cli)",
     lambda dso, sym: re.search(r"wasmtime_wasi|cap_std|cap_primitives|rustix", sym)),
    ("wasmtime: component ABI, resources, fibers, instances",
     lambda dso, sym: re.search(r"wasmtime|cranelift|pulley", sym)),
    ("tokio", lambda dso, sym: re.search(r"tokio|mio::", sym)),
    ("front end: HTTP/1.1, HTTP/2, TLS",
     lambda dso, sym: re.search(r"wasmhttpd::proto|wasmhttpd_h1|hyper|h2::|rustls|httparse|"
                                r"ring::|tungstenite|^http::|^<http::|bytes::", sym)),
    ("dispatch: routes, metrics, logs",
     lambda dso, sym: re.search(r"wasmhttpd::dispatch|wasmhttpd::metrics|wasmhttpd::routes|"
                                r"prometheus|tracing|httpdate", sym)),
    ("the host's guest glue: instances, pools, deadlines",
     lambda dso, sym: re.search(r"wasmhttpd::wasm|wasmhttpd::outbound|wasmhttpd::server", sym)),
    ("other", lambda dso, sym: True),
]

GUESTS = {
    "empty": (bench.EMPTY_GUEST, "/ok"),
    "default": (None, "/index.html"),
}


def classify(report):
    """The share of samples of each class, from `perf report --stdio`, and
    the largest functions that fell to "other"."""
    shares = {name: 0.0 for name, _ in CLASSES}
    others = []
    for line in report.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s+\[[.k]\]\s+(.*)$", line)
        if not match:
            continue
        share, dso, sym = float(match.group(1)), match.group(2).strip(), match.group(3).strip()
        for name, test in CLASSES:
            if test(dso, sym):
                shares[name] += share
                if name == "other":
                    others.append((share, dso, sym))
                break
    return shares, sorted(others, reverse=True)[:8]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guest", choices=sorted(GUESTS), default="default")
    parser.add_argument("--path", help="the path wrk loads (default: the guest's)")
    parser.add_argument("--fresh", action="store_true",
                        help="a fresh instance per request (default: --reuse 1000)")
    parser.add_argument("--duration", type=int, default=8, help="seconds of sampling")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--frequency", type=int, default=2999, help="samples a second")
    parser.add_argument("--wasmhttpd", type=Path, default=bench.WASMHTTPD)
    parser.add_argument("--empty-guest", type=Path, default=bench.EMPTY_GUEST)
    args = parser.parse_args()
    guest, path = GUESTS[args.guest]
    if args.guest == "empty":
        guest = args.empty_guest
    path = args.path or path
    for tool in ["wrk", "perf"]:
        if not bench.shutil.which(tool):
            sys.exit(f"profile: {tool} is not on PATH (apt-get install wrk linux-perf)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        root = tmp / "www"
        bench.shutil.copytree(bench.REPO / "www", root)
        port = bench.free_port()
        command = [str(args.wasmhttpd), "--listen", f"127.0.0.1:{port}", "--root", str(root),
                   "--no-watch", "--no-cache", "--keep-alive-timeout", "60",
                   "--max-requests-per-connection", "1000000"]
        if guest:
            command += ["--guest", str(guest)]
        if not args.fresh:
            command += ["--reuse", str(bench.REUSE)]
        server = bench.Server("wasmhttpd", command, port, paths={"profile": path})
        try:
            data = tmp / "perf.data"
            load = subprocess.Popen(
                ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration + 2}s",
                 f"http://127.0.0.1:{port}{path}"],
                stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            cpu = server.cpu_seconds()
            subprocess.run(
                ["perf", "record", "-F", str(args.frequency), "-p", str(server.process.pid),
                 "-o", str(data), "--", "sleep", str(args.duration)],
                check=True, capture_output=True)
            cpu = server.cpu_seconds() - cpu
            out = load.communicate()[0]
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        finally:
            server.stop()
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym",
             "--stdio", "-g", "none"],
            check=True, capture_output=True, text=True).stdout
    shares, others = classify(report)
    per_request = cpu / (rps * args.duration) * 1e6
    instance = "a fresh instance per request" if args.fresh else f"--reuse {bench.REUSE}"
    print(f"\n{args.guest} guest, {path}, {instance}: {rps:.0f} req/s, "
          f"{per_request:.1f} µs of server CPU per request ({bench.machine()}; "
          f"wrk -t2 -c{args.connections}, {args.duration} s sampled at {args.frequency} Hz)\n")
    print("| where | share | µs per request |")
    print("|---|---:|---:|")
    total = sum(shares.values()) or 1.0
    for name, _ in CLASSES:
        share = shares[name] / total
        if share >= 0.005:
            print(f"| {name} | {share * 100:.0f}% | {share * per_request:.1f} |")
    if others:
        print("\nThe largest of \"other\": " + ", ".join(
            f"{sym} ({dso}, {share:.1f}%)" for share, dso, sym in others))


if __name__ == "__main__":
    main()
