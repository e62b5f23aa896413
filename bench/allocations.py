#!/usr/bin/env python3
"""Allocations per request: the host's, counted, for a guest and a protocol.

Builds wasmhttpd with `--features count-allocations` (a counting global
allocator; the metrics endpoint then serves `wasmhttpd_allocations_total`)
into its own file, serves the empty guest (tests/guests/fault's `/ok`) and
the default guest (`/index.html`), each with `--reuse 1000`, loads each
over HTTP/1.1 (wrk) and HTTP/2 (h2load, cleartext, 10 streams per
connection), and prints, as a Markdown table, the allocations the server
made per request served. A guest's own allocations, in its linear memory,
are not counted; the host's for it are.

    python3 bench/allocations.py [--requests 20000] [--wasmhttpd PATH]

Needs wrk and h2load (apt-get install wrk nghttp2-client). Without
`--wasmhttpd` it builds the counting binary (the host crate only, once the
release build exists) as target/release/wasmhttpd-count-allocations and
builds the ordinary one back.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

COUNTING = bench.REPO / "target/release/wasmhttpd-count-allocations"
GUESTS = [
    ("empty guest", bench.EMPTY_GUEST, "/ok"),
    ("default guest, small file", None, "/index.html"),
]


def build():
    """The counting binary, beside the ordinary one, which is built back."""
    cargo = ["cargo", "build", "--release", "-p", "wasmhttpd"]
    subprocess.run(cargo + ["--features", "count-allocations"], cwd=bench.REPO, check=True)
    shutil.copy2(bench.WASMHTTPD, COUNTING)
    subprocess.run(cargo, cwd=bench.REPO, check=True)
    return COUNTING


def counters(port):
    """The allocations so far, and the responses sent."""
    text = bench.fetch(port, "/metrics").decode()
    allocations = int(re.search(r"^wasmhttpd_allocations_total (\d+)", text, re.M).group(1))
    responses = sum(int(n) for n in re.findall(r"^wasmhttpd_requests_total\{[^}]*\} (\d+)", text, re.M))
    return allocations, responses


def load(protocol, port, path, requests):
    url = f"http://127.0.0.1:{port}{path}"
    if protocol == "HTTP/1.1":
        seconds = max(1, requests // 10000)
        command = ["wrk", "-t2", "-c8", f"-d{seconds}s", url]
    else:
        command = ["h2load", "-n", str(requests), "-c", "8", "-m", "10", url]
    subprocess.run(command, check=True, capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000,
                        help="requests per row (wrk runs a second per 10 000)")
    parser.add_argument("--wasmhttpd", type=Path, help="a build with count-allocations")
    parser.add_argument("--empty-guest", type=Path, default=bench.EMPTY_GUEST)
    args = parser.parse_args()
    for tool in ["wrk", "h2load"]:
        if not shutil.which(tool):
            sys.exit(f"allocations: {tool} is not on PATH (apt-get install wrk nghttp2-client)")
    binary = args.wasmhttpd or build()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "www"
        shutil.copytree(bench.REPO / "www", root)
        for name, guest, path in GUESTS:
            if guest is not None and guest == bench.EMPTY_GUEST:
                guest = args.empty_guest
            port, metrics = bench.free_port(), bench.free_port()
            command = [str(binary), "--listen", f"127.0.0.1:{port}", "--root", str(root),
                       "--metrics", f"127.0.0.1:{metrics}", "--no-watch", "--no-cache",
                       "--reuse", str(bench.REUSE)]
            if guest:
                command += ["--guest", str(guest)]
            server = bench.Server("wasmhttpd", command, port, paths={"allocations": path})
            try:
                for protocol in ["HTTP/1.1", "HTTP/2"]:
                    # A first pass makes the instances and the connections'
                    # buffers; the second is counted.
                    load(protocol, port, path, args.requests // 4)
                    time.sleep(0.2)
                    before = counters(metrics)
                    load(protocol, port, path, args.requests)
                    time.sleep(0.2)
                    after = counters(metrics)
                    # The scrape's own response is one of those counted.
                    served = after[1] - before[1] - 1
                    rows.append((name, protocol, (after[0] - before[0]) / served, served))
            finally:
                server.stop()
    print(f"\nAllocations per request, --reuse {bench.REUSE} ({bench.machine()})\n")
    print("| guest | protocol | allocations per request | requests |")
    print("|---|---|---:|---:|")
    for name, protocol, per_request, served in rows:
        print(f"| {name} | {protocol} | {per_request:.1f} | {served} |")


if __name__ == "__main__":
    main()
