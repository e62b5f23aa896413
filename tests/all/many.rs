//! Running many: a new process taking over a shared port, replicas behind
//! a real nginx restarted one by one, a listener passed by socket
//! activation, the compiled-component cache filled ahead of a start, and
//! the deployment files in `deploy/` checked against what they configure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crate::process::{Group, Running, live_in_group, start, test_env, wasmhttpd};
use crate::support::{
    self, CLIENT_TIMEOUT, demo_root, eventually, exchange_at, fault_guest, required_tool,
};

/// Clients sending `GET /` one after another, each on a keep-alive
/// connection it opens again only when a response says `Connection:
/// close`, pausing [`THINK`] between a response and the next request as
/// users do, so that at any moment most connections are idle with a
/// request about to come. A request fails if anything but a whole 200
/// with the demo page comes back: the clients never retry, so a failure
/// shows.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<JoinHandle<()>>,
}

/// A client's pause between a response and its next request.
const THINK: std::time::Duration = std::time::Duration::from_millis(5);

/// Clients of a [`Load`].
const CLIENTS: usize = 8;

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let load = Load {
            stop: Arc::default(),
            answered: Arc::default(),
            failures: Arc::default(),
            clients: Vec::new(),
        };
        let page: Arc<[u8]> = std::fs::read(demo_root().join("index.html"))
            .unwrap()
            .into();
        let clients = (0..CLIENTS)
            .map(|_| {
                let (stop, answered) = (load.stop.clone(), load.answered.clone());
                let (failures, page) = (load.failures.clone(), page.clone());
                thread::spawn(move || {
                    let mut conn = None;
                    while !stop.load(Ordering::Relaxed) {
                        match get_page(addr, &mut conn, &page) {
                            Ok(()) => answered.fetch_add(1, Ordering::Relaxed),
                            Err(why) => {
                                failures.lock().unwrap().push(why);
                                conn = None;
                                0
                            }
                        };
                        thread::sleep(THINK);
                    }
                })
            })
            .collect();
        Load { clients, ..load }
    }

    /// Waits until `more` requests beyond those answered so far have been.
    fn wait_for(&self, more: u64) {
        let target = self.answered.load(Ordering::Relaxed) + more;
        eventually(&format!("{more} more requests answered"), || {
            self.answered.load(Ordering::Relaxed) >= target
        });
    }

    /// Stops the clients; returns the requests answered and the failures.
    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().unwrap();
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (self.answered.load(Ordering::Relaxed), failures)
    }

    /// Stops the clients and fails the test if any request failed.
    fn assert_no_failures(self) {
        let (answered, failures) = self.stop();
        assert!(answered > 0, "no request was answered");
        assert!(
            failures.is_empty(),
            "{} of {} requests failed; the first: {:?}",
            failures.len(),
            answered + failures.len() as u64,
            &failures[..failures.len().min(5)]
        );
    }
}

/// One `GET /` on `conn` (connected first if it is not), expecting the
/// whole demo page; leaves `conn` empty when the server said it closes.
fn get_page(
    addr: SocketAddr,
    conn: &mut Option<BufReader<TcpStream>>,
    page: &[u8],
) -> Result<(), String> {
    let reader = match conn {
        Some(reader) => reader,
        None => {
            let stream = TcpStream::connect(addr).map_err(|err| format!("connect: {err}"))?;
            stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
            conn.insert(BufReader::new(stream))
        }
    };
    reader
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: replicas\r\n\r\n")
        .map_err(|err| format!("send: {err}"))?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match reader.read_until(b'\n', &mut head) {
            Ok(0) => return Err(format!("closed after {} bytes of a head", head.len())),
            Ok(_) => {}
            Err(err) => return Err(format!("read: {err}")),
        }
    }
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut fields);
    response
        .parse(&head)
        .map_err(|err| format!("head: {err}"))?;
    if response.code != Some(200) {
        return Err(format!("status {:?}", response.code));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|field| field.name.eq_ignore_ascii_case(name))
            .map(|field| String::from_utf8_lossy(field.value).into_owned())
    };
    let length: usize = header("content-length")
        .and_then(|length| length.parse().ok())
        .ok_or("no Content-Length")?;
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|err| format!("body: {err}"))?;
    if body != page {
        return Err("a body that is not the demo page".to_owned());
    }
    if header("connection").is_some_and(|value| value.eq_ignore_ascii_case("close")) {
        *conn = None;
    }
    Ok(())
}

/// The status of `path` on a metrics listener.
fn probe(metrics: SocketAddr, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    exchange_at(metrics, request.as_bytes()).status
}

/// The 2xx responses a process has counted, from its metrics.
fn answered_2xx(metrics: SocketAddr) -> u64 {
    let text = exchange_at(
        metrics,
        b"GET /metrics HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n",
    )
    .text();
    text.lines()
        .find_map(|line| line.strip_prefix("wasmhttpd_requests_total{class=\"2xx\"} "))
        .map_or(0, |count| count.trim().parse().expect("a count"))
}

/// The binary serving the demo root on `listen`, with metrics and probes
/// on a port of its own and `args`.
fn replica(listen: &str, args: &[&str]) -> Running {
    let root = demo_root();
    start(
        wasmhttpd()
            .env("RUST_LOG", "info")
            .args(["--listen", listen, "--metrics", "127.0.0.1:0"])
            .args(["--root", root.to_str().unwrap()])
            .args(args),
        "listening on http://",
    )
}

#[test]
fn a_new_process_takes_over_a_shared_port_without_a_failed_request() {
    let mut old = replica("127.0.0.1:0", &["--reuse-port"]);
    let old_metrics = old.metrics_addr();
    let port = old.addr.to_string();
    // A request whose head is half sent when the handover begins: the old
    // process finishes it, and stays up (draining) until it has.
    let mut held = TcpStream::connect(old.addr).unwrap();
    held.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    held.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let load = Load::start(old.addr);
    load.wait_for(200);

    let new = replica(&port, &["--reuse-port"]);
    let new_metrics = new.metrics_addr();
    assert_eq!(probe(new_metrics, "/readyz"), 200);
    old.signal("TERM");
    old.wait_for_log("shutting down");
    assert_eq!(probe(old_metrics, "/readyz"), 503, "the old one drains");
    assert_eq!(probe(old_metrics, "/healthz"), 200, "and is alive");
    // The clients moved to the new process, on new connections.
    eventually("the new process serves the clients", || {
        answered_2xx(new_metrics) >= 200
    });
    load.wait_for(200);

    held.write_all(b"Host: t\r\n\r\n").unwrap();
    let mut held = BufReader::new(held);
    let response = support::read_response(&mut held, false);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    support::assert_closed(&mut held);
    assert_eq!(old.child.wait().unwrap().code(), Some(0));
    old.wait_for_log("every connection finished");
    load.assert_no_failures();
}

/// nginx, run in the foreground on a configuration of the test's own.
pub(crate) struct Nginx {
    /// Its master process, whose group its workers share.
    process: Group,
    pub(crate) addr: SocketAddr,
}

impl Nginx {
    /// nginx with `deploy/nginx/wasmhttpd.conf` in its `http` block, its
    /// addresses replaced by `replicas` and a free port of its own.
    pub(crate) fn in_front_of(nginx: &Path, replicas: &[SocketAddr], dir: &Path) -> Nginx {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/wasmhttpd.conf");
        let mut site = std::fs::read_to_string(example).unwrap();
        for (i, replica) in replicas.iter().enumerate() {
            let placeholder = format!("server 127.0.0.1:{} ", 8081 + i);
            assert!(
                site.contains(&placeholder),
                "{placeholder:?} in the example"
            );
            site = site.replace(&placeholder, &format!("server {replica} "));
        }
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|free| free.local_addr())
            .unwrap();
        site = site.replace("listen 127.0.0.1:8080;", &format!("listen {addr};"));
        std::fs::write(dir.join("wasmhttpd.conf"), site).unwrap();
        let dir = dir.display();
        let conf = format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log {dir}/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n\
             proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
             uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
             include {dir}/wasmhttpd.conf;\n}}\n"
        );
        std::fs::write(format!("{dir}/nginx.conf"), conf).unwrap();
        let process = Group::spawn(
            Command::new(nginx)
                .args(["-p", &dir.to_string(), "-c", &format!("{dir}/nginx.conf")])
                .stdout(Stdio::null()),
        );
        let mut nginx = Nginx { process, addr };
        eventually("nginx accepts connections", || {
            assert!(
                nginx.process.child.try_wait().unwrap().is_none(),
                "nginx exited"
            );
            TcpStream::connect(addr).is_ok()
        });
        nginx
    }
}

#[test]
fn no_process_of_nginx_outlives_its_fixture() {
    let Some(binary) = required_tool("nginx", "apt-get install nginx-light") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = upstream.local_addr().unwrap();
    let nginx = Nginx::in_front_of(&binary, &[upstream; 3], dir.path());
    let (group, addr) = (nginx.process.child.id(), nginx.addr);
    // The master and its worker (the master listens, so a connection is
    // accepted before the worker runs).
    eventually("nginx's worker runs beside its master", || {
        live_in_group(group).len() >= 2
    });
    drop(nginx);
    assert_eq!(live_in_group(group), Vec::<u32>::new());
    assert!(
        TcpStream::connect(addr).is_err(),
        "nothing listens on {addr}"
    );
}

#[test]
fn replicas_behind_nginx_restart_one_by_one_without_a_failed_request() {
    let Some(nginx) = required_tool("nginx", "apt-get install nginx-light") else {
        return;
    };
    let mut replicas: Vec<Running> = (0..3).map(|_| replica("127.0.0.1:0", &[])).collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|replica| replica.addr).collect();
    let dir = tempfile::tempdir().unwrap();
    let front = Nginx::in_front_of(&nginx, &addrs, dir.path());
    let load = Load::start(front.addr);
    load.wait_for(200);
    for (replica, addr) in replicas.iter_mut().zip(&addrs) {
        replica.signal("TERM");
        assert_eq!(replica.child.wait().unwrap().code(), Some(0));
        *replica = self::replica(&addr.to_string(), &[]);
        let metrics = replica.metrics_addr();
        assert_eq!(probe(metrics, "/readyz"), 200);
        // nginx takes the replica back once its fail_timeout is over; the
        // next one stops only then, as the procedure says.
        eventually("nginx sends requests to the restarted replica", || {
            answered_2xx(metrics) > 0
        });
    }
    load.wait_for(200);
    load.assert_no_failures();
}

#[test]
#[allow(unsafe_code)]
fn a_listener_passed_by_socket_activation_is_served() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // --listen names a port in use: a server that bound it would not start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let root = demo_root();
    let mut command = Command::new("sh");
    test_env(&mut command);
    command
        .env("RUST_LOG", "info")
        // As systemd passes it: fd 3, and LISTEN_PID naming the process
        // that `exec` turns the shell into.
        .args(["-c", r#"LISTEN_FDS=1 LISTEN_PID=$$ exec "$0" "$@""#])
        .arg(env!("CARGO_BIN_EXE_wasmhttpd"))
        .args(["--listen", &taken, "--root", root.to_str().unwrap()]);
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec the closure calls only dup2 and fcntl,
    // which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let done = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = start(&mut command, "listening on http://");
    assert_eq!(server.addr, addr);
    server.wait_for_log("serving on the listener passed by LISTEN_FDS");
    drop(listener);
    let response = exchange_at(
        addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert!(response.text().contains("<html"), "{}", response.text());
}

/// `wasmhttpd compile` with `args`; returns its stdout lines.
fn compile(args: &[&str]) -> Vec<String> {
    let output = wasmhttpd().arg("compile").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn compile_fills_the_cache_so_a_server_starts_without_compiling() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let faults = fault_guest();
    let route = format!("/faults={},guest-memory=32", faults.display());
    let settings = ["--cache-dir", cache_dir, "--route", &route, "--reuse", "4"];
    // The web root is not needed to compile: an image builds before its
    // volumes are mounted.
    let compiled = compile(&[&settings[..], &["--root", "/nonexistent"]].concat());
    assert_eq!(compiled.len(), 3, "{compiled:?}");
    assert!(
        compiled[0].starts_with("/ default guest (sha256:"),
        "{compiled:?}"
    );
    assert!(compiled[0].ends_with("): compiled"), "{compiled:?}");
    let faults_line = format!("/faults {} (sha256:", faults.display());
    assert!(compiled[1].starts_with(&faults_line), "{compiled:?}");
    assert!(compiled[1].ends_with("): compiled"), "{compiled:?}");
    assert_eq!(compiled[2], format!("cache: {cache_dir}"));
    let again = compile(&settings);
    assert!(
        again[..2]
            .iter()
            .all(|line| line.ends_with("): already in the cache")),
        "{again:?}"
    );

    let server = replica("127.0.0.1:0", &settings);
    let loaded = server.wait_for_logs([
        "loaded guest guest=default guest",
        &format!("loaded guest guest={}", faults.display()),
    ]);
    for line in loaded {
        assert!(line.contains("code=\"cache\""), "{line}");
    }
    let request = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    assert_eq!(exchange_at(server.addr, request).status, 200);

    let output = wasmhttpd()
        .args(["compile", "--no-cache"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("give --cache-dir"), "{stderr}");
}

/// The deployment files, as the test reads them.
fn deploy_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// A Python environment with kubernetes-validate (and PyYAML) at the
/// versions `deploy/kubernetes/requirements.txt` pins, made once per build
/// tree; `None` (the test skipped) without python3's venv outside CI.
fn kubernetes_validate() -> Option<PathBuf> {
    let python = required_tool("python3", "apt-get install python3-venv")?;
    let requirements = deploy_file("kubernetes/requirements.txt");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubernetes-validate");
    let installed = venv.join("installed.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&installed).ok().as_deref() != Some(wanted.as_str()) {
        let status = Command::new(&python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "python3 -m venv (apt-get install python3-venv)"
        );
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--requirement"])
            .arg(&requirements)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "pip install -r {}",
            requirements.display()
        );
        std::fs::write(&installed, wanted).unwrap();
    }
    Some(venv.join("bin"))
}

#[test]
fn the_kubernetes_manifests_validate_and_probe_what_the_server_serves() {
    let Some(bin) = kubernetes_validate() else {
        return;
    };
    let manifest = deploy_file("kubernetes/wasmhttpd.yaml");
    let redis_manifest = deploy_file("kubernetes/redis.yaml");
    let collector_manifest = deploy_file("kubernetes/otel-collector.yaml");
    // The schema of the oldest Kubernetes release still supported and of
    // the newest, strictly: an unknown or misspelt field is an error.
    for version in ["1.32.0", "1.37.0"] {
        let output = Command::new(bin.join("kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .arg(&manifest)
            .arg(&redis_manifest)
            .arg(&collector_manifest)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{version}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let load = |manifest: &Path| -> Vec<serde_json::Value> {
        let documents = Command::new(bin.join("python"))
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            ])
            .arg(manifest)
            .output()
            .unwrap();
        assert!(documents.status.success());
        serde_json::from_slice(&documents.stdout).unwrap()
    };
    let documents = load(&manifest);
    let kind = |kind: &str| {
        documents
            .iter()
            .find(|document| document["kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind}"))
    };

    // The ConfigMap holds deploy/wasmhttpd.toml as it is, and the binary
    // takes that file.
    let config = std::fs::read_to_string(deploy_file("wasmhttpd.toml")).unwrap();
    assert_eq!(kind("ConfigMap")["data"]["wasmhttpd.toml"], config.as_str());
    let cache = tempfile::tempdir().unwrap();
    let compiled = compile(&[
        "--config",
        deploy_file("wasmhttpd.toml").to_str().unwrap(),
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ]);
    assert!(compiled[0].starts_with("/ default guest"), "{compiled:?}");
    let file: toml::Table = config.parse().unwrap();
    let port_of = |key: &str| -> u64 {
        let addr: SocketAddr = file[key].as_str().unwrap().parse().unwrap();
        u64::from(addr.port())
    };
    let grace = file["shutdown-grace"].as_integer().unwrap();

    let pod = &kind("Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port_named = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|port| port["name"] == name)
            .map(|port| port["containerPort"].as_u64().unwrap())
    };
    assert_eq!(port_named("http"), Some(port_of("listen")));
    assert_eq!(port_named("metrics"), Some(port_of("metrics")));
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|mount| mount["name"] == "config")
        .expect("the ConfigMap mounted");
    let config_path = format!("{}/wasmhttpd.toml", mount["mountPath"].as_str().unwrap());
    assert_eq!(container["args"][0], "--config");
    assert_eq!(container["args"][1], config_path.as_str());
    // The store `default` is the Redis of redis.yaml, by its Service's name
    // and port.
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    let store = args
        .windows(2)
        .find(|pair| pair[0] == "--kv-store")
        .map(|pair| pair[1])
        .expect("a --kv-store argument");
    let redis = load(&redis_manifest);
    let service = redis
        .iter()
        .find(|document| document["kind"] == "Service")
        .expect("a Redis Service");
    assert_eq!(
        store,
        format!(
            "default=redis://{}:{}",
            service["metadata"]["name"].as_str().unwrap(),
            service["spec"]["ports"][0]["port"]
        )
    );
    assert!(
        file["route"]
            .as_array()
            .unwrap()
            .iter()
            .any(|route| route.as_str().unwrap().contains("allow-kv=default")),
        "a route is granted the store"
    );
    // Traces go to the collector of otel-collector.yaml, by its Service's
    // name and OTLP/HTTP port, and the server takes the variables it is
    // given.
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .expect("the OTEL_* variables")
        .iter()
        .map(|var| {
            (
                var["name"].as_str().unwrap().to_owned(),
                var["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let collector = load(&collector_manifest);
    let collector = collector
        .iter()
        .find(|document| document["kind"] == "Service")
        .expect("a collector Service");
    let endpoint = env
        .iter()
        .find(|(name, _)| name == "OTEL_EXPORTER_OTLP_ENDPOINT")
        .map(|(_, value)| value.as_str());
    assert_eq!(
        endpoint,
        Some(
            format!(
                "http://{}:{}",
                collector["metadata"]["name"].as_str().unwrap(),
                collector["spec"]["ports"][0]["port"]
            )
            .as_str()
        )
    );
    let settings = wasmhttpd::telemetry::Settings::read(|name| {
        env.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    });
    assert!(matches!(settings, Ok(Some(_))), "{settings:?}");
    // The probes ask the endpoints the metrics listener serves.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    // The kubelet waits out the preStop pause and the shutdown grace
    // before it kills.
    let pause = &container["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(pause[0], "sleep");
    let pause: i64 = pause[1].as_str().unwrap().parse().unwrap();
    let termination = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        termination > pause + grace,
        "terminationGracePeriodSeconds {termination} must exceed the preStop pause {pause} \
         plus shutdown-grace {grace}"
    );
    assert_eq!(kind("Service")["spec"]["ports"][0]["targetPort"], "http");
    let deployment = kind("Deployment");
    let target = &kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(&kind("Service")["spec"]["selector"], labels);
    assert_eq!(
        &deployment["spec"]["template"]["metadata"]["labels"],
        labels
    );
}

/// The cores a `/proc/.../status` says its thread may run on
/// (`Cpus_allowed_list`, as `0-1` or `1`).
fn allowed_cores(status: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The name and allowed cores of each of `pid`'s threads.
fn thread_cores(pid: u32) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // the thread has ended
        };
        threads.push((name.trim().to_owned(), allowed_cores(&status)));
    }
    threads
}

#[test]
fn each_event_loop_runs_on_a_core_of_its_own_and_the_threads_they_start_on_any() {
    let all = allowed_cores(&std::fs::read_to_string("/proc/self/status").unwrap());
    if std::thread::available_parallelism().unwrap().get() < 2 {
        eprintln!("one core only ({all}): no loops to pin apart");
        return;
    }
    let guest = fault_guest();
    let server = replica(
        "127.0.0.1:0",
        &["--event-loops", "2", "--guest", guest.to_str().unwrap()],
    );
    // A reload compiles on a thread of the first loop's blocking pool.
    server.signal("HUP");
    let pid = server.child.id();
    eventually("the loops pinned and a blocking thread started", || {
        let threads = thread_cores(pid);
        let core = |name: &str| {
            threads
                .iter()
                .find(|(thread, _)| thread == name)
                .map(|(_, cores)| cores.clone())
        };
        let (Some(first), Some(second)) = (core("wasmhttpd"), core("wasmhttpd-1")) else {
            return false;
        };
        let blocking: Vec<&String> = threads
            .iter()
            .filter(|(name, _)| name.starts_with("tokio-rt"))
            .map(|(_, cores)| cores)
            .collect();
        // One core each, not the same one; the blocking pool's threads on
        // every core the process may use, as the test's own thread is.
        let pinned = |cores: &str| cores.parse::<usize>().is_ok();
        pinned(&first)
            && pinned(&second)
            && first != second
            && !blocking.is_empty()
            && blocking.iter().all(|cores| **cores == all)
    });
    let response = exchange_at(
        server.addr,
        b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 200);
}

/// Listening sockets bound to `port` on IPv4, from the kernel's table.
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is IP:PORT in hex; state 0A is LISTEN.
            fields.len() > 3 && fields[3] == "0A" && fields[1].ends_with(&format!(":{port:04X}"))
        })
        .count()
}

#[test]
fn with_a_shared_port_each_event_loop_listens_on_a_socket_of_its_own() {
    // --reuse-port: the kernel spreads connections among the loops' sockets.
    let shared = replica("127.0.0.1:0", &["--reuse-port", "--event-loops", "2"]);
    eventually("each loop listens", || {
        listening_sockets(shared.addr.port()) == 2
    });
    // Without it the port is not shared: one socket, which both loops
    // accept from.
    let single = replica("127.0.0.1:0", &["--event-loops", "2"]);
    assert_eq!(listening_sockets(single.addr.port()), 1);
    for server in [&shared, &single] {
        for _ in 0..8 {
            let response = exchange_at(
                server.addr,
                b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            );
            assert_eq!(response.status, 200);
        }
    }
}
