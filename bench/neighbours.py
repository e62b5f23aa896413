#!/usr/bin/env python3
"""What a bad guest costs its neighbours: light requests' latency while other
requests of the same server spin, block or exhaust their memory.

Each server runs the fault test guest (tests/guests/fault) on a web root
holding a FIFO, with a guest deadline of a few seconds. In each case a few
bad requests run (`/loop` spins; `/open?path=pipe` opens the FIFO, which
no writer ever opens; `/alloc` grows its memory past the cap, again and
again), and meanwhile light requests (`/ok`, a 2-byte answer) are sent one
after another, each on a new connection, from a few clients at once. The
report gives the light requests' p50 and p99, the share answered, and what
the bad requests got, for wasmhttpd (an event loop per core), wasmhttpd
--work-stealing and `wasmtime serve -W timeout=…`, in one run.

    python3 bench/neighbours.py [--timeout 3] [--clients 4] [--only CASE ...]

Needs the wasmtime CLI for its row (cargo install wasmtime-cli --version
48.0.8 --locked); builds wasmhttpd and the guests in release mode first,
unless --no-build.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the side-by-side benchmark's servers and build)

FAULT_GUEST = bench.EMPTY_GUEST
# Time a light request may take before it counts as unanswered.
LIGHT_TIMEOUT = 5.0

# name, bad path, how many at once, whether each is sent again as it ends
CASES = [
    ("none", None, 0, False),
    ("2 busy", "/loop", 2, False),
    ("8 busy", "/loop", 8, False),
    ("2 blocked in a FIFO open", "/open?path=pipe", 2, False),
    ("2 out of memory", "/alloc", 2, True),
]


def request(port, path, timeout):
    """Status and seconds of `GET path` on a new connection; status None
    when no answer came within `timeout`."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(max(0.01, timeout - (time.monotonic() - started)))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
            while s.recv(65536):
                pass
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else None
    except OSError:
        status = None
    return status, time.monotonic() - started


def release(fifo):
    """Opens `fifo` for writing, without waiting: an open of it for reading
    that still waits for a writer (a server that does not refuse FIFOs)
    ends, and the server can go on to the next case."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def run_case(port, bad_path, bad_count, again, window, clients, guest_timeout, release_fifo):
    """Starts the bad requests, then sends light ones for `window` seconds.
    Returns the light requests' latencies (answered ones) and count, and
    the bad requests' (status, seconds)."""
    bad = []
    stop = threading.Event()

    def send_bad():
        while True:
            bad.append(request(port, bad_path, guest_timeout * 3 + 5))
            if not again or stop.is_set():
                return

    bad_threads = [threading.Thread(target=send_bad) for _ in range(bad_count)]
    for thread in bad_threads:
        thread.start()
    if bad_count:
        # Let them reach their guests before the light requests start.
        time.sleep(0.3)
    light = []

    def send_light():
        until = time.monotonic() + window
        while time.monotonic() < until:
            light.append(request(port, "/ok", LIGHT_TIMEOUT))

    light_threads = [threading.Thread(target=send_light) for _ in range(clients)]
    for thread in light_threads:
        thread.start()
    for thread in light_threads:
        thread.join()
    stop.set()
    release(release_fifo)
    for thread in bad_threads:
        thread.join()
    answered = [secs for status, secs in light if status == 200]
    return answered, len(light), bad


def percentile(values, share):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def servers(wasmhttpd, guest, root, timeout):
    """name, command, for each server: wasmhttpd's two runtimes and wasmtime
    serve, each with the guest deadline `timeout`."""
    common = ["--root", str(root), "--guest", str(guest), "--no-watch", "--no-cache",
              "--guest-timeout", str(timeout)]
    yield "wasmhttpd", lambda port: [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common]
    yield "wasmhttpd --work-stealing", lambda port: [
        str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common, "--work-stealing"]
    if bench.shutil.which("wasmtime"):
        yield f"wasmtime serve -W timeout={timeout}s", lambda port: [
            "wasmtime", "serve", "-S", "cli", "-W", f"timeout={timeout}s", "--dir",
            f"{root}::/", "--addr", f"127.0.0.1:{port}", str(guest)]
    else:
        print("wasmtime not found: its row is left out", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=int, default=3, help="the guest deadline, seconds")
    parser.add_argument("--window", type=float, default=2.0,
                        help="seconds of light requests per case")
    parser.add_argument("--clients", type=int, default=4, help="light clients at once")
    parser.add_argument("--only", nargs="*", help="cases to run (by name)")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--wasmhttpd", type=Path, default=bench.WASMHTTPD)
    parser.add_argument("--guest", type=Path, default=FAULT_GUEST)
    args = parser.parse_args()
    if not args.no_build:
        bench.build()
    cases = [case for case in CASES if not args.only or case[0] in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        root = Path(workdir) / "root"
        root.mkdir()
        os.mkfifo(root / "pipe")
        for name, command in servers(args.wasmhttpd, args.guest, root, args.timeout):
            port = bench.free_port()
            server = bench.Server(name, command(port), port, paths={"light": "/ok"})
            try:
                for case, path, count, again in cases:
                    answered, sent, bad = run_case(port, path, count, again, args.window,
                                                   args.clients, args.timeout,
                                                   root / "pipe")
                    rows.append((name, case, answered, sent, bad))
                    print(f"{name}: {case}: {len(answered)}/{sent} answered", file=sys.stderr)
            finally:
                server.stop()
    print(f"Machine: {bench.machine()}; guest deadline {args.timeout} s; {args.clients} "
          f"light clients, each request on a new connection, for {args.window} s a case.\n")
    print("| server | bad requests | light answered | light p50 | light p99 | the bad ones got |")
    print("|---|---|---:|---:|---:|---|")
    for name, case, answered, sent, bad in rows:
        share = f"{100 * len(answered) / sent:.0f} % of {sent}" if sent else "-"
        p50, p99 = (percentile(answered, q) for q in (0.5, 0.99))
        ms = (lambda v: f"{v * 1e3:.1f} ms" if v is not None else "-")
        statuses = sorted({status for status, _ in bad}, key=str)
        got = ", ".join(
            f"{status or 'no answer'} in {statistics.median(s for st, s in bad if st == status):.1f} s"
            for status in statuses) or "-"
        print(f"| {name} | {case} | {share} | {ms(p50)} | {ms(p99)} | {got} |")


if __name__ == "__main__":
    main()
