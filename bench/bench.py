#!/usr/bin/env python3
"""Side-by-side benchmark: wasmhttpd against its peers, in one run, on one machine.

Starts wasmhttpd (the default guest, a fresh instance per request), wasmhttpd
with --reuse, `wasmtime serve` (the same guest, -S cli --dir; a fresh instance
per request, and with --max-instance-reuse-count), nginx (the same
files, sendfile on) and, when it is installed, static-web-server; loads each
with wrk; prints a Markdown table of requests/s, p50 and p99 latency and
throughput, the server's CPU time per request, the ratio of wasmhttpd to each
peer, the resident memory of each server holding 10 000 idle keep-alive
connections, and how the figures stand against the project's targets.

With the WASIp3 test guest (tests/guests/p3), it loads wasmhttpd and
`wasmtime serve` side by side, each with its defaults for a WASIp3
component (both reuse an instance for several requests at once), on a
small answer (`/ok`) and on one that waits 1 ms in the guest (`/sleep`),
where serving requests concurrently in one instance is the point.

Over TLS it loads wasmhttpd (fresh and --reuse) and nginx (`listen ... ssl
http2`, the same files) with a certificate made for the run: h2load on
HTTP/2 with 10 streams per connection, and wrk with a new TLS connection per
request.

Beside the HTTP/2 and the WASIp3 cases it loads wasmhttpd with an empty
guest (tests/guests/fault's `/ok`: a 3-byte answer, no file, no header
read), reused, the cheapest request the host can serve through a guest:
what it reaches is the ceiling of any guest, and the report sets it
against the targets of those cases.

With the key-value test guest (tests/guests/kv), reused, it loads
wasmhttpd on a counter increment on one hot key and on reads of random
keys, with a SQLite store and, when redis-server is installed, a Redis
one, beside the empty guest: what a key-value operation adds to the
cheapest request.

    python3 bench/bench.py [--duration 10] [--rounds 3] [--connections 64] [--only CASE ...]

`--no-build --wasmhttpd PATH --guest PATH` runs given binaries instead (the
test suite runs a short pass of the script that way).

Needs wrk and nginx (apt-get install wrk nginx-light) and the wasmtime CLI
(cargo install wasmtime-cli --version 48.0.8 --locked); the TLS cases also
need openssl and h2load (apt-get install openssl nghttp2-client). Builds
wasmhttpd and the guest in release mode first.
"""

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "target/wasm32-wasip2/release/wasmhttpd_guest.wasm"
P3_GUEST = REPO / "target/wasm32-wasip2/release/wasmhttpd_p3_guest.wasm"
EMPTY_GUEST = REPO / "target/wasm32-wasip2/release/wasmhttpd_fault_guest.wasm"
KV_GUEST = REPO / "target/wasm32-wasip2/release/wasmhttpd_kv_guest.wasm"
WASMHTTPD = REPO / "target/release/wasmhttpd"
# Requests a reused instance serves: enough that instantiation is rare.
REUSE = 1000
IDLE_CONNECTIONS = 10_000
BIG_FILE = 1 << 20

# name, path, wrk connections (None: the --connections default), extra wrk args
CASES = [
    ("small", "/index.html", None, []),
    ("1mib", "/big.bin", 16, []),
    ("404", "/missing.html", None, []),
    ("new-conn", "/index.html", 16, ["-H", "Connection: close"]),
]
# Over TLS, against the TLS servers: name, path, connections, client.
TLS_CASES = [
    ("h2", "/index.html", 16, "h2load"),
    ("tls-new-conn", "/index.html", 16, "wrk"),
]
# With the WASIp3 test guest, against wasmtime serve: name, path,
# connections, extra wrk args.
P3_CASES = [
    ("p3", "/ok", None, []),
    ("p3-wait", "/sleep?ms=1", None, []),
]
# With the key-value test guest, beside the empty guest: name, path,
# connections, extra wrk args. The reads' keys are random, one of KV_KEYS
# set before the run (the wrk script KV_SCRIPT picks them).
KV_CASES = [
    ("kv-read", "/draft/get?store=&key=k1", None, ["-s", "KV_SCRIPT"]),
    ("kv-incr", "/draft/incr?store=&key=hot&by=1", None, []),
]
KV_KEYS = 1000
KV_SCRIPT = f"""
math.randomseed(os.time())
request = function()
  if string.find(wrk.path, "/draft/get", 1, true) then
    return wrk.format("GET", "/draft/get?store=&key=k" .. math.random(1, {KV_KEYS}))
  end
  return wrk.format("GET", wrk.path)
end
"""
KV_SUFFIX = " (kv guest)"
KV_SQLITE = f"wasmhttpd --reuse {REUSE}, SQLite{KV_SUFFIX}"
KV_REDIS = f"wasmhttpd --reuse {REUSE}, Redis{KV_SUFFIX}"
# The two other ways of running wasmhttpd that the event loop per core is
# measured against, on the small file with reuse.
WORK_STEALING = f"wasmhttpd --reuse {REUSE} --work-stealing"
PINNED = f"wasmhttpd --reuse {REUSE}, two processes pinned to a core each"
# The same with a rate limit on the route that the load never reaches:
# what the check costs a request.
RATE_LIMITED = f"wasmhttpd --reuse {REUSE} --rate 1000000/s"
# The same with OpenTelemetry traces exported to an OTLP receiver in this
# script, every request sampled, and one in a hundred: what tracing costs
# a request.
TRACED = f"wasmhttpd --reuse {REUSE}, traced (sampler 1.0)"
TRACED_RARELY = f"wasmhttpd --reuse {REUSE}, traced (sampler 0.01)"
# The names of the two servers that run the WASIp3 guest.
P3_SUFFIX = " (p3 guest)"
P3_OURS = "wasmhttpd" + P3_SUFFIX
P3_PEER = "wasmtime serve" + P3_SUFFIX
# HTTP/2 streams h2load keeps open per connection.
H2_STREAMS = 10
# The servers that run the empty guest (its `/ok`): on the HTTP/2 case,
# and, WASIp2 in the WASIp3 guest's run, on its `/ok` case.
EMPTY_SUFFIX = " (empty guest)"
EMPTY_H2 = f"wasmhttpd --reuse {REUSE}{EMPTY_SUFFIX}"
EMPTY_P2 = f"wasmhttpd --reuse {REUSE}, WASIp2{EMPTY_SUFFIX}"
EMPTY_KV = f"wasmhttpd --reuse {REUSE}, beside the stores{EMPTY_SUFFIX}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}: {process.args}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"server never listened on {port}: {process.args}")


class Server:
    def __init__(self, name, args, port, cwd=None, paths=None, env=None):
        # `paths`: the path each case loads on this server, and the only
        # cases it takes part in; None: every case, on the case's path.
        self.name, self.port, self.paths = name, port, paths
        self.log = tempfile.TemporaryFile()
        # Error backtraces cost every server that honours RUST_BACKTRACE;
        # request logs are off for all (nginx: access_log off).
        extra = env or {}
        env = {k: v for k, v in os.environ.items()
               if k not in ("RUST_BACKTRACE", "RUST_LOG") and not k.startswith("OTEL_")}
        env["RUST_LOG"] = "warn"
        env.update(extra)
        # Outside the repository, whose wasmhttpd.toml (the demo) a
        # wasmhttpd started there would read.
        self.process = subprocess.Popen(
            args, cwd=cwd or tempfile.gettempdir(), env=env, stdout=self.log, stderr=self.log,
            start_new_session=True
        )
        try:
            wait_for_port(port, self.process)
            # Warm up: caches, the first compile, lazily built state.
            warm = next(iter(paths.values())) if paths else "/index.html"
            for _ in range(20):
                fetch(port, warm)
        except BaseException:
            self.stop()
            raise

    def pids(self):
        """The server's processes (nginx has a master and workers)."""
        out = subprocess.run(
            ["pgrep", "-g", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def proc(self, name):
        """The text of /proc/PID/NAME for each of the server's processes."""
        for pid in self.pids():
            try:
                yield Path(f"/proc/{pid}/{name}").read_text()
            except FileNotFoundError:
                continue

    def cpu_seconds(self):
        """User and system CPU time of the server's processes so far."""
        ticks = 0
        for stat in self.proc("stat"):
            # Fields after the command name, which may hold spaces: utime
            # and stime are the 12th and 13th.
            fields = stat.rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_mib(self):
        kib = sum(int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
                  for status in self.proc("status"))
        return kib / 1024

    def stop(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def fetch(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def parse_duration(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_size(text):
    value, unit = re.fullmatch(r"([\d.]+)([KMGT]?B)", text).groups()
    return float(value) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[unit]


def wrk(port, path, connections, duration, extra, scheme="http"):
    args = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", *extra,
            f"{scheme}://127.0.0.1:{port}{path}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": parse_duration(latency["50"]),
        "p99": parse_duration(latency["99"]),
        "bytes": parse_size(re.search(r"Transfer/sec:\s+(\S+)", out).group(1)),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def h2load(port, path, connections, duration):
    """HTTP/2 over TLS, H2_STREAMS streams per connection. h2load gives no
    percentiles: p50 is its mean time per request, p99 is left out."""
    args = ["h2load", f"-c{connections}", f"-m{H2_STREAMS}", f"-D{duration}", "-t2",
            f"https://127.0.0.1:{port}{path}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    finished = re.search(r"finished in \S+, ([\d.]+) req/s, ([\d.]+)([KMG]?B)/s", out)
    requests = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                         r"(\d+) failed, (\d+) errored", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    return {
        "requests": int(requests.group(2)),
        "rps": float(finished.group(1)),
        "p50": parse_duration(mean.group(1)),
        "p99": None,
        "bytes": parse_size(finished.group(2) + finished.group(3)),
        "non2xx": int(requests.group(1)) - int(requests.group(2)),
        "socket_errors": f"{requests.group(3)} failed, {requests.group(4)} errored"
        if requests.group(3) != "0" or requests.group(4) != "0" else "",
    }


def certificate(workdir):
    """A self-signed certificate for 127.0.0.1, for the TLS servers."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def hold_idle(port, count):
    """Opens `count` keep-alive connections, each with one answered request.
    Returns them, and why it stopped short of `count` (or None)."""
    sockets = []
    request = b"GET /index.html HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(s)
            s.sendall(request)
        for s in sockets:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError("the server closed an idle connection")
                head += chunk
    except OSError as err:
        return sockets, f"{err or type(err).__name__} after {len(sockets)} connections"
    return sockets, None


def nginx_config(root, port, workdir, tls=None):
    listen = f"listen 127.0.0.1:{port} reuseport;"
    if tls:
        cert, key = tls
        listen = (f"listen 127.0.0.1:{port} ssl http2 reuseport;\n"
                  f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
                  f"        ssl_protocols TLSv1.2 TLSv1.3;\n        http2_max_concurrent_streams 128;")
    return f"""
worker_processes auto;
daemon off;
user root;
pid {workdir}/nginx{"-tls" if tls else ""}.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 20000; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        {listen}
        root {root};
        index index.html;
    }}
}}
"""


def build():
    subprocess.run(["cargo", "build", "--release", "-p", "wasmhttpd"], cwd=REPO, check=True)
    subprocess.run(
        ["cargo", "build", "--release", "-p", "wasmhttpd-guest", "-p", "wasmhttpd-p3-guest",
         "-p", "wasmhttpd-fault-guest", "-p", "wasmhttpd-kv-guest", "--target", "wasm32-wasip2"],
        cwd=REPO, check=True,
    )


class Receiver:
    """An OTLP/HTTP receiver for the traced servers: takes each export
    whole and answers 200 at once, counting the exports and their bytes
    (a collector's work, not the server's)."""

    def __init__(self):
        import http.server
        counts = self.counts = {"exports": 0, "bytes": 0}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                counts["bytes"] += len(self.rfile.read(length))
                counts["exports"] += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def start_servers(servers, root, workdir, keep_alive_secs, wasmhttpd, guest, receiver):
    """Starts each server, adding it to `servers` (for the caller to stop
    them all, whether or not every one started)."""
    common = ["--root", str(root), "--no-watch", "--no-cache",
              "--keep-alive-timeout", str(keep_alive_secs),
              "--max-requests-per-connection", "1000000"]
    port = free_port()
    servers.append(Server("wasmhttpd", [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common],
                          port))
    port = free_port()
    servers.append(Server(f"wasmhttpd --reuse {REUSE}",
                          [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common,
                           "--reuse", str(REUSE)], port))
    # The runtimes side by side, on the small file with reuse: tokio's
    # work-stealing runtime as wasmhttpd served before, and two processes
    # each pinned to a core of its own and sharing the port, the stand-in
    # the event loop per core must beat.
    port = free_port()
    servers.append(Server(WORK_STEALING,
                          [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common,
                           "--reuse", str(REUSE), "--work-stealing"], port,
                          paths={"small": "/index.html"}))
    port = free_port()
    servers.append(Server(RATE_LIMITED,
                          [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common,
                           "--reuse", str(REUSE), "--rate", "1000000/s"], port,
                          paths={"small": "/index.html"}))
    for name, ratio in ((TRACED, "1.0"), (TRACED_RARELY, "0.01")):
        port = free_port()
        servers.append(Server(name,
                              [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common,
                               "--reuse", str(REUSE)], port,
                              paths={"small": "/index.html"},
                              env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                   "OTEL_TRACES_SAMPLER": "traceidratio",
                                   "OTEL_TRACES_SAMPLER_ARG": ratio}))
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        port = free_port()
        one = [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common, "--reuse", str(REUSE),
               "--reuse-port", "--event-loops", "1"]
        pinned = " & ".join(f"taskset -c {cpu} {' '.join(one)}" for cpu in (0, 1))
        servers.append(Server(PINNED, ["sh", "-c", f"{pinned} & wait"], port,
                              paths={"small": "/index.html"}))
    port = free_port()
    servers.append(Server("wasmtime serve",
                          ["wasmtime", "serve", "-S", "cli", "--dir", f"{root}::/",
                           "--addr", f"127.0.0.1:{port}", str(guest)], port))
    port = free_port()
    servers.append(Server(f"wasmtime serve --max-instance-reuse-count {REUSE}",
                          ["wasmtime", "serve", "-S", "cli", "--dir", f"{root}::/",
                           "--max-instance-reuse-count", str(REUSE),
                           "--addr", f"127.0.0.1:{port}", str(guest)], port))
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(root, port, workdir))
    servers.append(Server("nginx", ["nginx", "-c", str(conf)], port))
    if shutil.which("static-web-server"):
        port = free_port()
        servers.append(Server("static-web-server",
                              ["static-web-server", "--host", "127.0.0.1", "--port", str(port),
                               "--root", str(root), "--log-level", "error",
                               "--compression", "false"], port))


def start_p3_servers(servers, root, wasmhttpd, guest, empty_guest):
    """wasmhttpd and wasmtime serve with the WASIp3 guest, each with its
    own defaults for it; and wasmhttpd with the empty WASIp2 guest,
    reused, on the `/ok` case."""
    common = ["--root", str(root), "--no-watch", "--no-cache", "--keep-alive-timeout", "60",
              "--max-requests-per-connection", "1000000"]
    port = free_port()
    servers.append(Server(P3_OURS,
                          [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common,
                           "--guest", str(guest)], port))
    port = free_port()
    servers.append(Server(P3_PEER,
                          ["wasmtime", "serve", "-S", "cli", "-S", "keyvalue",
                           "--dir", f"{root}::/", "--addr", f"127.0.0.1:{port}", str(guest)],
                          port))
    port = free_port()
    servers.append(Server(EMPTY_P2,
                          [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common,
                           "--guest", str(empty_guest), "--reuse", str(REUSE)], port,
                          paths={"p3": "/ok"}))


def start_kv_servers(servers, root, workdir, wasmhttpd, kv_guest, empty_guest, redis_port):
    """wasmhttpd with the key-value guest, reused, on a SQLite store and
    (with `redis_port`) a Redis one, each store filled with KV_KEYS keys;
    and the empty guest, reused, on both cases."""
    common = ["--root", str(root), "--no-watch", "--no-cache", "--keep-alive-timeout", "60",
              "--max-requests-per-connection", "1000000", "--reuse", str(REUSE)]
    stores = [(KV_SQLITE, ["--kv-store", "data=sqlite", "--data-dir", str(workdir / "kv")])]
    if redis_port:
        stores.append((KV_REDIS, ["--kv-store", f"data=redis://127.0.0.1:{redis_port}"]))
    for name, store in stores:
        port = free_port()
        servers.append(Server(name, [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common,
                                     "--guest", str(kv_guest), *store, "--allow-kv", "data"],
                              port, paths={"kv-read": KV_CASES[0][1], "kv-incr": KV_CASES[1][1]}))
        for i in range(1, KV_KEYS + 1):
            fetch(port, f"/draft/set?store=&key=k{i}&value=value-{i:06}")
    port = free_port()
    servers.append(Server(EMPTY_KV, [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common,
                                     "--guest", str(empty_guest)],
                          port, paths={"kv-read": "/ok", "kv-incr": "/ok"}))


def start_redis(workdir):
    """A redis-server of the run's own, without persistence: its process
    and port; None without redis-server."""
    if not shutil.which("redis-server"):
        print("bench: the Redis store needs redis-server (apt-get install redis-server); "
              "left out", file=sys.stderr)
        return None, None
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, port
        except OSError:
            time.sleep(0.05)
    sys.exit("redis-server never listened")


def start_tls_servers(servers, root, workdir, wasmhttpd, empty_guest):
    """wasmhttpd (fresh and --reuse) and nginx, each over TLS with one
    certificate; HTTP/2 by ALPN. And wasmhttpd with the empty guest,
    reused, on the HTTP/2 case."""
    cert, key = certificate(workdir)
    common = ["--root", str(root), "--no-watch", "--no-cache", "--keep-alive-timeout", "60",
              "--max-requests-per-connection", "1000000",
              "--tls-cert", str(cert), "--tls-key", str(key)]
    for name, extra in [("wasmhttpd", []), (f"wasmhttpd --reuse {REUSE}", ["--reuse", str(REUSE)])]:
        port = free_port()
        servers.append(Server(name, [str(wasmhttpd), "--listen", f"127.0.0.1:{port}",
                                     *common, *extra], port))
    port = free_port()
    servers.append(Server(EMPTY_H2, [str(wasmhttpd), "--listen", f"127.0.0.1:{port}", *common,
                                     "--guest", str(empty_guest), "--reuse", str(REUSE)],
                          port, paths={"h2": "/ok"}))
    port = free_port()
    conf = workdir / "nginx-tls.conf"
    conf.write_text(nginx_config(root, port, workdir, tls=(cert, key)))
    servers.append(Server("nginx", ["nginx", "-c", str(conf)], port))


def run_cases(cases, servers, args, load):
    """Runs each case on every server, rounds interleaved; the median run
    of each counts."""
    results = {}
    for name, path, connections, client in cases:
        if args.only and name not in args.only:
            continue
        # Rounds interleave the servers, each round starting with the next
        # one, so that a noisy minute on a shared machine lands on every
        # server rather than on one.
        taking = [server for server in servers if server.paths is None or name in server.paths]
        runs = {server.name: [] for server in taking}
        for round_ in range(args.rounds):
            first = round_ % len(taking)
            for server in taking[first:] + taking[:first]:
                cpu = server.cpu_seconds()
                r = load(server.port, (server.paths or {}).get(name, path),
                         connections or args.connections, client)
                # Server CPU per request: steadier than req/s on a shared
                # machine, and free of the client's own share.
                r["cpu_us"] = (server.cpu_seconds() - cpu) / max(r["requests"], 1) * 1e6
                runs[server.name].append(r)
                p99 = f"{r['p99']:7.2f}" if r["p99"] is not None else "      –"
                print(f"{name:12} {server.name:26} {r['rps']:10.0f} req/s  "
                      f"p50 {r['p50']:7.2f} ms  p99 {p99} ms  "
                      f"{r['bytes'] / (1 << 20):8.1f} MiB/s  "
                      f"{r['cpu_us']:7.1f} µs CPU/req  {r['socket_errors']}",
                      file=sys.stderr, flush=True)
        for server in taking:
            # The run with the median throughput, whole, so that its
            # latencies are the ones measured with that throughput.
            ranked = sorted(runs[server.name], key=lambda r: r["rps"])
            results[(name, server.name)] = ranked[len(ranked) // 2]
    return results


def machine():
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return f"{os.cpu_count()} × {cpu}, {mem / (1 << 20):.0f} GiB, {os.uname().release}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each case per server, interleaved; the median counts")
    parser.add_argument("--only", nargs="*",
                        help="cases to run (small 1mib 404 new-conn idle p3 p3-wait h2 "
                             "tls-new-conn kv-read kv-incr)")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--wasmhttpd", type=Path, default=WASMHTTPD,
                        help="the wasmhttpd binary (default: the release build)")
    parser.add_argument("--guest", type=Path, default=GUEST,
                        help="the default guest's component, for wasmtime serve "
                             "(default: the release build)")
    parser.add_argument("--p3-guest", type=Path, default=P3_GUEST,
                        help="the WASIp3 test guest's component (default: the release build)")
    parser.add_argument("--empty-guest", type=Path, default=EMPTY_GUEST,
                        help="the guest whose /ok is the cheapest request (default: the release "
                             "build of tests/guests/fault)")
    parser.add_argument("--kv-guest", type=Path, default=KV_GUEST,
                        help="the key-value test guest's component (default: the release build "
                             "of tests/guests/kv)")
    parser.add_argument("--idle-connections", type=int, default=IDLE_CONNECTIONS,
                        help="idle keep-alive connections held open on each server")
    args = parser.parse_args()
    for tool in ["wrk", "nginx", "wasmtime"]:
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not on PATH (see the top of {__file__})")
    if not args.no_build:
        build()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        root = tmp / "www"
        shutil.copytree(REPO / "www", root)
        (root / "big.bin").write_bytes(os.urandom(BIG_FILE))
        servers = []
        receiver = Receiver()
        try:
            start_servers(servers, root, tmp, keep_alive_secs=60, wasmhttpd=args.wasmhttpd,
                          guest=args.guest, receiver=receiver)
            results = run_cases(
                CASES, servers, args,
                lambda port, path, connections, extra: wrk(port, path, connections,
                                                           args.duration, extra))
            idle = {}
            if not args.only or "idle" in args.only:
                for server in servers:
                    before = server.rss_mib()
                    held, failed = hold_idle(server.port, args.idle_connections)
                    time.sleep(1)
                    idle[server.name] = (before, server.rss_mib(), failed)
                    for s in held:
                        s.close()
                    print(f"idle      {server.name:26} {idle[server.name][1]:8.1f} MiB "
                          f"(before: {before:.1f}) {failed or ''}", file=sys.stderr, flush=True)
                    time.sleep(2)
        finally:
            for server in servers:
                server.stop()
            receiver.stop()
        if not args.only or any(case[0] in args.only for case in P3_CASES):
            p3_servers = []
            try:
                start_p3_servers(p3_servers, root, args.wasmhttpd, args.p3_guest,
                                 args.empty_guest)
                results.update(run_cases(
                    P3_CASES, p3_servers, args,
                    lambda port, path, connections, extra: wrk(port, path, connections,
                                                               args.duration, extra)))
            finally:
                for server in p3_servers:
                    server.stop()
            servers += p3_servers
        kv_cases = [case for case in KV_CASES if not args.only or case[0] in args.only]
        if kv_cases:
            kv_servers = []
            script = tmp / "kv.lua"
            script.write_text(KV_SCRIPT)
            redis, redis_port = start_redis(tmp)
            try:
                start_kv_servers(kv_servers, root, tmp, args.wasmhttpd, args.kv_guest,
                                 args.empty_guest, redis_port)
                results.update(run_cases(
                    [(name, path, connections,
                      [str(script) if arg == "KV_SCRIPT" else arg for arg in extra])
                     for name, path, connections, extra in kv_cases],
                    kv_servers, args,
                    lambda port, path, connections, extra: wrk(port, path, connections,
                                                               args.duration, extra)))
            finally:
                for server in kv_servers:
                    server.stop()
                if redis:
                    os.killpg(redis.pid, signal.SIGKILL)
                    redis.wait()
            servers += kv_servers
        tls_cases = [case for case in TLS_CASES if not args.only or case[0] in args.only]
        missing = [tool for tool in ["openssl", "h2load"] if not shutil.which(tool)]
        if tls_cases and missing:
            print(f"bench: the TLS cases need {' and '.join(missing)} (apt-get install openssl "
                  "nghttp2-client); left out", file=sys.stderr)
        elif tls_cases:
            tls_servers = []
            try:
                start_tls_servers(tls_servers, root, tmp, args.wasmhttpd, args.empty_guest)
                results.update(run_cases(
                    tls_cases, tls_servers, args,
                    lambda port, path, connections, client:
                        h2load(port, path, connections, args.duration) if client == "h2load"
                        else wrk(port, path, connections, args.duration,
                                 ["-H", "Connection: close"], scheme="https")))
            finally:
                for server in tls_servers:
                    server.stop()
    report(results, idle, servers, args)


def report(results, idle, servers, args):
    names = [s.name for s in servers]
    # The WASIp3 guest's two servers have a ratio table of their own, and
    # the empty guest's servers one of ceilings.
    p3 = [n for n in names if n.endswith(P3_SUFFIX)]
    empty = [n for n in names if n.endswith(EMPTY_SUFFIX)]
    kv = [n for n in names if n.endswith(KV_SUFFIX)]
    runtimes = [WORK_STEALING, PINNED, RATE_LIMITED, TRACED, TRACED_RARELY]
    ours = [n for n in names if n.startswith("wasmhttpd") and n not in p3 + empty + kv + runtimes]
    peers = [n for n in names if not n.startswith("wasmhttpd") and n not in p3]
    print(f"\nMachine: {machine()}. wrk -t2, {args.duration} s a run, "
          f"{args.connections} connections unless the case says; all servers in one run; "
          f"each figure is the median of {args.rounds} interleaved runs.\n")
    print("| case | server | req/s | p50 ms | p99 ms | MiB/s | server CPU µs/req |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (case, server), r in results.items():
        label = {"small": f"small file ({args.connections} conns, keep-alive)",
                 "1mib": "1 MiB file (16 conns)", "404": f"404 ({args.connections} conns)",
                 "new-conn": "new connection per request (16 conns)",
                 "p3": f"WASIp3 guest, /ok ({args.connections} conns)",
                 "p3-wait": f"WASIp3 guest, 1 ms wait in the guest ({args.connections} conns)",
                 "h2": f"HTTP/2 over TLS, small file (16 conns × {H2_STREAMS} streams; "
                       "p50: mean)",
                 "tls-new-conn": "new TLS connection per request (16 conns)",
                 "kv-read": f"key-value read, random keys ({args.connections} conns)",
                 "kv-incr": f"key-value increment, one key ({args.connections} conns)"}[case]
        errors = f" ({r['non2xx']} non-2xx)" if r["non2xx"] and case != "404" else ""
        p99 = f"{r['p99']:.2f}" if r["p99"] is not None else "–"
        print(f"| {label} | {server}{errors} | {r['rps']:.0f} | {r['p50']:.2f} | "
              f"{p99} | {r['bytes'] / (1 << 20):.1f} | {r['cpu_us']:.0f} |")
    if idle:
        count = f"{args.idle_connections:,}".replace(",", " ")
        print(f"\n| {count} idle keep-alive connections | RSS before | RSS holding them |")
        print("|---|---:|---:|")
        for name, (before, holding, failed) in idle.items():
            note = f" (failed: {failed})" if failed else ""
            print(f"| {name} | {before:.1f} MiB | {holding:.1f} MiB{note} |")
    print("\nRatios (wasmhttpd ÷ peer; for p99, peer ÷ wasmhttpd, so above 1 is better "
          "for wasmhttpd everywhere):\n")
    order = [c[0] for c in CASES + P3_CASES + TLS_CASES + KV_CASES]
    cases = sorted({case for case, _ in results}, key=order.index)
    print("| case | ours | " + " | ".join(peers) + " |")
    print("|---|---|" + "---:|" * len(peers))
    for case in cases:
        for mine in ours:
            if (case, mine) not in results:
                continue
            cells = []
            for peer in peers:
                a, b = results.get((case, mine)), results.get((case, peer))
                if not a or not b:
                    cells.append("–")
                    continue
                metric = "bytes" if case == "1mib" else "rps"
                cell = f"{a[metric] / b[metric]:.2f}× {'B/s' if metric == 'bytes' else 'req/s'}"
                if a["p99"] is not None and b["p99"] is not None:
                    cell += f", p99 {b['p99'] / a['p99']:.2f}×"
                cells.append(cell)
            print(f"| {case} | {mine} | " + " | ".join(cells) + " |")
    p3_cases = [case for case in cases if (case, P3_OURS) in results]
    if p3_cases:
        print(f"\n| WASIp3 case | {P3_OURS} ÷ {P3_PEER} |")
        print("|---|---:|")
        for case in p3_cases:
            a, b = results[(case, P3_OURS)], results.get((case, P3_PEER))
            if b:
                print(f"| {case} | {a['rps'] / b['rps']:.2f}× req/s, "
                      f"p99 {b['p99'] / a['p99']:.2f}× |")
    report_runtimes(results)
    report_rate_limit(results)
    report_tracing(results)
    report_ceilings(results)
    report_kv(results)
    report_targets(results, idle, args.idle_connections)


def report_runtimes(results):
    """The event loop per core against the work-stealing runtime and the
    two pinned processes, on the small file with reuse."""
    default = f"wasmhttpd --reuse {REUSE}"
    rows = [(name, results[("small", name)]) for name in [default, WORK_STEALING, PINNED]
            if ("small", name) in results]
    if len(rows) < 2:
        return
    base = rows[0][1]
    print("\nRuntimes (small file, --reuse; the first row is the default, one event loop "
          "per core):\n")
    print("| runtime | req/s | CPU µs/req | CPU vs the default |")
    print("|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['rps']:.0f} | {r['cpu_us']:.1f} | "
              f"{r['cpu_us'] / base['cpu_us']:.2f}× |")


def report_rate_limit(results):
    """What a rate limit the load never reaches costs each request: the
    small file with reuse, with one and without."""
    base, limited = (results.get(("small", name)) for name in
                     (f"wasmhttpd --reuse {REUSE}", RATE_LIMITED))
    if not base or not limited:
        return
    print("\nRate limit (small file, --reuse; a limit of 1 000 000/s per client, which the "
          "load never reaches):\n")
    print("| server | req/s | CPU µs/req | CPU over none | wanted |")
    print("|---|---:|---:|---:|---|")
    print(f"| without | {base['rps']:.0f} | {base['cpu_us']:.1f} | – | – |")
    print(f"| with --rate | {limited['rps']:.0f} | {limited['cpu_us']:.1f} | "
          f"{limited['cpu_us'] - base['cpu_us']:+.1f} µs | ≤ +1 µs |")


def report_tracing(results):
    """What OpenTelemetry tracing costs each request: the small file with
    reuse, untraced, and traced at two sampler ratios."""
    base = results.get(("small", f"wasmhttpd --reuse {REUSE}"))
    rows = [(label, results.get(("small", name))) for label, name in
            (("sampler 1.0", TRACED), ("sampler 0.01", TRACED_RARELY))]
    if not base or not all(r for _, r in rows):
        return
    print("\nTracing (small file, --reuse; spans exported over OTLP/HTTP to a receiver "
          "in the benchmark script):\n")
    print("| traces | req/s | CPU µs/req | CPU over none |")
    print("|---|---:|---:|---:|")
    print(f"| off | {base['rps']:.0f} | {base['cpu_us']:.1f} | – |")
    for label, r in rows:
        print(f"| {label} | {r['rps']:.0f} | {r['cpu_us']:.1f} | "
              f"{r['cpu_us'] - base['cpu_us']:+.1f} µs |")


def report_kv(results):
    """Each store's requests against the empty guest's beside them: what a
    key-value operation adds to the cheapest request through a guest."""
    rows = [(case, server) for case, server in results if server.endswith(KV_SUFFIX)]
    if not rows:
        return
    print("\nKey-value (server CPU per request, against the empty guest's in the same run; "
          "Redis's own CPU is not counted):\n")
    print("| case | store | req/s | CPU µs/req | × the empty guest's CPU |")
    print("|---|---|---:|---:|---:|")
    for case, server in rows:
        r, empty = results[(case, server)], results.get((case, EMPTY_KV))
        times = f"{r['cpu_us'] / empty['cpu_us']:.2f}×" if empty else "–"
        store = server.removesuffix(KV_SUFFIX).split(", ")[-1]
        print(f"| {case} | {store} | {r['rps']:.0f} | {r['cpu_us']:.0f} | {times} |")


def report_ceilings(results):
    """The empty guest, reused, against the peer of each target it bounds:
    no guest that does any work can reach past this ratio in this run."""
    rows = [
        ("h2", "HTTP/2 over TLS, small file vs nginx", EMPTY_H2, "nginx", "≥ 0.5×",
         f"wasmhttpd --reuse {REUSE}"),
        ("p3", "WASIp3 guest, /ok vs wasmtime serve", EMPTY_P2, P3_PEER, "≥ 1.5×", P3_OURS),
    ]
    shown = [row for row in rows if (row[0], row[2]) in results and (row[0], row[3]) in results]
    if not shown:
        return
    print("\nCeilings (the empty guest, reused: the cheapest request through a guest):\n")
    print("| target | peer req/s | empty guest req/s, CPU µs | ceiling | wanted "
          "| ours req/s, CPU µs |")
    print("|---|---:|---:|---:|---|---:|")
    for case, target, floor, peer, wanted, ours in shown:
        a, b, o = results[(case, floor)], results[(case, peer)], results.get((case, ours))
        mine = f"{o['rps']:.0f}, {o['cpu_us']:.0f}" if o else "–"
        print(f"| {target} | {b['rps']:.0f} | {a['rps']:.0f}, {a['cpu_us']:.0f} "
              f"| {a['rps'] / b['rps']:.2f}× | {wanted} | {mine} |")


def report_targets(results, idle, idle_connections):
    """How this run stands against the targets the project has set itself."""
    fresh, reuse = "wasmhttpd", f"wasmhttpd --reuse {REUSE}"

    def ratio(case, ours, peer, metric="rps"):
        a, b = results.get((case, ours)), results.get((case, peer))
        return a[metric] / b[metric] if a and b else None

    checks = [
        ("small file, fresh instance: req/s vs wasmtime serve", "≥ 2.5×",
         ratio("small", fresh, "wasmtime serve"), lambda x: x >= 2.5),
        ("small file, --reuse: req/s vs wasmtime serve's reuse", "≥ 1.5×",
         ratio("small", reuse, f"wasmtime serve --max-instance-reuse-count {REUSE}"),
         lambda x: x >= 1.5),
        ("small file, fresh instance: req/s vs nginx", "≥ 0.3×",
         ratio("small", fresh, "nginx"), lambda x: x >= 0.3),
        ("small file, --reuse: req/s vs nginx", "≥ 0.35×",
         ratio("small", reuse, "nginx"), lambda x: x >= 0.35),
        ("1 MiB file: bytes/s vs nginx", "≥ 0.9×",
         ratio("1mib", fresh, "nginx", "bytes"), lambda x: x >= 0.9),
        ("WASIp3 guest, /ok: req/s vs wasmtime serve", "≥ 1.2×",
         ratio("p3", P3_OURS, P3_PEER), lambda x: x >= 1.2),
        ("WASIp3 guest, 1 ms wait: req/s vs wasmtime serve", "≥ 1.5×",
         ratio("p3-wait", P3_OURS, P3_PEER),
         lambda x: x >= 1.5),
        ("HTTP/2 over TLS, small file: req/s vs nginx", "≥ 0.5×",
         ratio("h2", fresh, "nginx"), lambda x: x >= 0.5),
        ("HTTP/2 over TLS, small file, --reuse: req/s vs nginx", "≥ 0.3×",
         ratio("h2", reuse, "nginx"), lambda x: x >= 0.3),
    ]
    # CPU per request: the empty guest (HTTP/1.1, 64 connections, beside
    # the stores) against nginx's small file, and the default guest's
    # small file against the empty guest: the plumbing any guest pays, and
    # what the default guest's own work adds to it.
    empty = results.get(("kv-read", EMPTY_KV))
    nginx_small, reuse_small = results.get(("small", "nginx")), results.get(("small", reuse))
    if empty and nginx_small:
        checks.append(("empty guest, --reuse: CPU per request vs nginx's small file", "≤ 2.0×",
                       empty["cpu_us"] / nginx_small["cpu_us"], lambda x: x <= 2.0))
    if empty and reuse_small:
        checks.append(("small file, --reuse: CPU per request vs the empty guest's", "≤ 1.4×",
                       reuse_small["cpu_us"] / empty["cpu_us"], lambda x: x <= 1.4))

    def cpu_ratio(case, server):
        a, b = results.get((case, server)), results.get((case, EMPTY_KV))
        return a["cpu_us"] / b["cpu_us"] if a and b else None

    checks += [
        ("key-value read, SQLite: CPU per request vs the empty guest's", "≤ 1.3×",
         cpu_ratio("kv-read", KV_SQLITE), lambda x: x <= 1.3),
        ("key-value increment, SQLite: CPU per request vs the empty guest's", "≤ 2×",
         cpu_ratio("kv-incr", KV_SQLITE), lambda x: x <= 2.0),
    ]
    # p99 at 64 connections: the better of the two ways of running.
    nginx = results.get(("small", "nginx"))
    p99s = [results[("small", ours)]["p99"] for ours in (fresh, reuse) if ("small", ours) in results]
    checks.append(("small file p99 vs nginx's (best of fresh, --reuse)", "≤ 1.3×",
                   min(p99s) / nginx["p99"] if nginx and p99s else None, lambda x: x <= 1.3))
    if fresh in idle and idle_connections == IDLE_CONNECTIONS:
        checks.append(("10 000 idle connections: RSS, MB", "< 100",
                       idle[fresh][1] * (1 << 20) / 1e6, lambda x: x < 100))
    print("\nTargets:\n")
    print("| target | wanted | this run | met |")
    print("|---|---|---:|---|")
    for name, wanted, value, met in checks:
        if value is None:
            continue
        shown = f"{value:.0f}" if wanted.startswith("<") else f"{value:.2f}×"
        print(f"| {name} | {wanted} | {shown} | {'yes' if met(value) else 'no'} |")


if __name__ == "__main__":
    main()
