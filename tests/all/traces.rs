//! OpenTelemetry traces: the server, run as a process with the standard
//! `OTEL_*` variables, exports to an OTLP/HTTP receiver in this process,
//! which decodes what it is sent with the `opentelemetry-proto` types.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

use crate::outbound::{Listener, Upstream};
use crate::process::{Running, start, wasmhttpd};
use crate::support::{demo_root, eventually, exchange_at, fault_guest, kv_guest};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attributes: HashMap<String, String>,
    error: bool,
    /// The resource's `service.name`.
    service: String,
}

impl Span {
    fn attribute(&self, key: &str) -> &str {
        self.attributes
            .get(key)
            .unwrap_or_else(|| panic!("{} has no {key}: {:?}", self.name, self.attributes))
    }
}

/// An OTLP/HTTP receiver on loopback: decodes each export, keeps its
/// spans, answers 200; stopped, it closes its connections and listener.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Bodies it could not decode, or paths it does not serve.
    wrong: Arc<Mutex<Vec<String>>>,
    stopped: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn on(listener: TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver {
            addr,
            spans: Arc::default(),
            wrong: Arc::default(),
            stopped: Arc::default(),
            connections: Arc::default(),
        };
        let (spans, wrong, stopped, connections) = (
            receiver.spans.clone(),
            receiver.wrong.clone(),
            receiver.stopped.clone(),
            receiver.connections.clone(),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                connections
                    .lock()
                    .unwrap()
                    .push(stream.try_clone().unwrap());
                let (spans, wrong) = (spans.clone(), wrong.clone());
                thread::spawn(move || receive(stream, &spans, &wrong));
            }
        });
        receiver
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for it.
    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        let wrong = self.wrong.lock().unwrap();
        assert!(
            wrong.is_empty(),
            "the receiver got what it cannot read: {wrong:?}"
        );
        self.spans.lock().unwrap().clone()
    }

    /// Waits for a span that `matches`.
    fn span(&self, what: &str, matches: impl Fn(&Span) -> bool) -> Span {
        eventually(what, || self.spans().iter().any(&matches));
        self.spans().into_iter().find(matches).unwrap()
    }

    /// Waits for the SERVER span of the request for `path`.
    fn request(&self, path: &str) -> Span {
        self.span(&format!("the span of the request for {path}"), |span| {
            span.attributes.get("url.path").is_some_and(|p| p == path)
        })
    }

    /// Stops taking connections and closes those it has.
    fn stop(self) -> SocketAddr {
        self.stopped.store(true, Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wakes the accepting thread, which sees it is stopped and drops
        // the listener.
        let _ = TcpStream::connect(self.addr);
        eventually("the receiver's port is free", || {
            TcpListener::bind(self.addr).is_ok()
        });
        self.addr
    }
}

/// Serves one connection: each request a POST of an
/// `ExportTraceServiceRequest` in protobuf.
fn receive(stream: TcpStream, spans: &Mutex<Vec<Span>>, wrong: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let typed = head
            .to_ascii_lowercase()
            .contains("content-type: application/x-protobuf");
        match ExportTraceServiceRequest::decode(&body[..]) {
            Ok(request) if head.starts_with("POST /v1/traces ") && typed => {
                spans.lock().unwrap().extend(decoded(request));
            }
            Ok(_) => wrong.lock().unwrap().push(head.clone()),
            Err(err) => wrong.lock().unwrap().push(format!("{head}: {err}")),
        }
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The spans of an export, flattened.
fn decoded(request: ExportTraceServiceRequest) -> Vec<Span> {
    let text = |value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match value
        .as_ref()
        .and_then(|value| value.value.as_ref())
    {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    };
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Span {
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                    error: span
                        .status
                        .is_some_and(|status| status.code == StatusCode::Error as i32),
                    service: service.clone(),
                });
            }
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The binary with `args`, exporting to `endpoint` every few
/// milliseconds, with `env` besides; its access log on.
fn traced(endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> Running {
    let mut command = traced_command(endpoint, env, args);
    start(&mut command, "listening on http://")
}

fn traced_command(endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = wasmhttpd();
    command
        .env("RUST_LOG", "info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "20")
        .envs(env.iter().copied())
        .args(["--listen", "127.0.0.1:0", "--root"])
        .arg(demo_root())
        .args(args);
    command
}

fn get(server: &Running, target: &str, headers: &str) -> crate::support::Response {
    exchange_at(
        server.addr,
        format!("GET {target} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn a_request_yields_a_server_span_and_its_guests_run() {
    let receiver = Receiver::start();
    let server = traced(
        &receiver.endpoint(),
        &[("OTEL_SERVICE_NAME", "web-a")],
        &["--route", &format!("/trap={}", fault_guest().display())],
    );
    let response = get(
        &server,
        "/index.html?x=1&sig=secret",
        "User-Agent: probe/1\r\n",
    );
    assert_eq!(response.status, 200);

    let request = receiver.span("the request's span", |span| {
        span.kind == SpanKind::Server as i32
            && span
                .attributes
                .get("url.path")
                .is_some_and(|p| p == "/index.html")
    });
    assert_eq!(request.name, "GET /");
    assert_eq!(request.service, "web-a");
    assert_eq!(
        request.parent_id, "",
        "a request without traceparent begins a trace"
    );
    for (key, value) in [
        ("http.request.method", "GET"),
        // A signed URL's signature is not kept.
        ("url.query", "x=1&sig=REDACTED"),
        ("url.scheme", "http"),
        ("http.route", "/"),
        ("http.response.status_code", "200"),
        ("network.protocol.version", "1.1"),
        ("client.address", "127.0.0.1"),
        ("server.port", &server.addr.port().to_string()),
        ("user_agent.original", "probe/1"),
    ] {
        assert_eq!(request.attribute(key), value, "{key}");
    }
    assert!(!request.error);
    let id = request.attribute("wasmhttpd.request.id").to_owned();

    let guest = receiver.span("the guest's span", |span| span.parent_id == request.span_id);
    assert_eq!(guest.name, "guest");
    assert_eq!(guest.trace_id, request.trace_id);
    assert_eq!(guest.attribute("wasmhttpd.guest.outcome"), "answered");
    assert_eq!(guest.attribute("wasmhttpd.guest.instance"), "fresh");
    assert_eq!(guest.attribute("wasmhttpd.guest.wasi"), "p2");
    assert_eq!(guest.attribute("http.route"), "/");
    let digest = guest.attribute("wasmhttpd.guest.digest");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    // The access log line leads to the trace.
    let line = server.wait_for_log(&format!("id={id} "));
    assert!(
        line.contains(&format!("trace_id={}", request.trace_id)),
        "{line}"
    );

    // A guest that traps: a 500, an error on both spans.
    assert_eq!(get(&server, "/trap", "").status, 500);
    let failed = receiver.request("/trap");
    assert!(failed.error);
    assert_eq!(failed.attribute("http.route"), "/trap");
    assert_eq!(failed.attribute("http.response.status_code"), "500");
    let trapped = receiver.span("the trapped guest's span", |span| {
        span.parent_id == failed.span_id
    });
    assert!(trapped.error);
    assert_eq!(trapped.attribute("wasmhttpd.guest.outcome"), "trapped");
}

#[test]
fn a_wait_for_an_instance_has_its_span() {
    let receiver = Receiver::start();
    let server = traced(
        &receiver.endpoint(),
        &[],
        &[
            "--guest",
            fault_guest().to_str().unwrap(),
            "--max-instances",
            "1",
        ],
    );
    // The one instance is busy writing a body while the next request
    // comes.
    let mut first = TcpStream::connect(server.addr).unwrap();
    first
        .write_all(b"GET /stream?n=3&ms=200 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(first);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(get(&server, "/ok", "").status, 200);
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();

    let waited = receiver.request("/ok");
    let wait = receiver.span("the wait's span", |span| {
        span.name == "wait for an instance"
    });
    assert_eq!(wait.parent_id, waited.span_id);
    assert_eq!(wait.trace_id, waited.trace_id);
    // The first request waited for nothing, and has no such span.
    let streamed = receiver.request("/stream");
    assert!(
        receiver
            .spans()
            .iter()
            .all(|span| span.name != "wait for an instance" || span.parent_id != streamed.span_id)
    );
}

#[test]
fn a_wasip3_guests_run_is_traced() {
    let receiver = Receiver::start();
    let server = traced(
        &receiver.endpoint(),
        &[],
        &["--guest", crate::support::p3_guest().to_str().unwrap()],
    );
    assert_eq!(get(&server, "/ok", "").status, 200);
    assert_eq!(get(&server, "/trap", "").status, 500);
    // A WASIp3 request's trap ends the instance it shared: the request
    // hears of it as its instance lost (the trap is the instance's).
    for (path, outcome) in [("/ok", "answered"), ("/trap", "instance lost")] {
        let request = receiver.request(path);
        let guest = receiver.span("the guest's span", |span| span.parent_id == request.span_id);
        assert_eq!(guest.attribute("wasmhttpd.guest.wasi"), "p3", "{path}");
        assert_eq!(
            guest.attribute("wasmhttpd.guest.outcome"),
            outcome,
            "{path}"
        );
    }
}

#[test]
fn a_request_over_http2_is_traced_alike() {
    let receiver = Receiver::start();
    let server = traced(&receiver.endpoint(), &[], &[]);
    let addr = server.addr;
    let (status, _, _) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mut h2 = crate::h2::cleartext(addr).await;
            crate::h2::send(&mut h2, "GET", &format!("http://{addr}/index.html"), b"").await
        });
    assert_eq!(status, 200);
    let request = receiver.span("the request's span", |span| {
        span.kind == SpanKind::Server as i32
    });
    assert_eq!(request.attribute("network.protocol.version"), "2");
    assert_eq!(request.attribute("http.response.status_code"), "200");
}

#[test]
fn a_traceparent_joins_the_callers_trace_and_a_malformed_one_is_ignored() {
    let receiver = Receiver::start();
    let server = traced(&receiver.endpoint(), &[], &[]);
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let response = get(
        &server,
        "/index.html",
        &format!("traceparent: 00-{trace}-{caller}-01\r\ntracestate: vendor=x\r\n"),
    );
    assert_eq!(response.status, 200);
    let joined = receiver.span("the joined span", |span| {
        span.kind == SpanKind::Server as i32
    });
    assert_eq!(joined.trace_id, trace);
    assert_eq!(joined.parent_id, caller);

    for malformed in [
        "00-zzzz2f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "not a traceparent",
    ] {
        let response = get(
            &server,
            "/echo.html",
            &format!("traceparent: {malformed}\r\n"),
        );
        assert_ne!(response.status, 400, "{malformed}");
    }
    eventually("three more server spans", || {
        receiver
            .spans()
            .iter()
            .filter(|span| span.kind == SpanKind::Server as i32)
            .count()
            == 4
    });
    for span in receiver.spans() {
        if span.kind == SpanKind::Server as i32 && span.trace_id != trace {
            assert_eq!(span.parent_id, "", "{span:?}");
            assert_ne!(span.trace_id, "0".repeat(32));
        }
    }
}

#[test]
fn a_guests_outgoing_request_carries_the_trace_to_its_upstream() {
    let receiver = Receiver::start();
    let upstream = Listener::start(Upstream::Answer);
    let server = traced(
        &receiver.endpoint(),
        &[],
        &[
            "--guest",
            fault_guest().to_str().unwrap(),
            "--allow-outbound",
            &upstream.origin(),
        ],
    );
    let url = format!("{}/resource", upstream.origin());
    let response = get(&server, &format!("/fetch?url={url}"), "");
    assert_eq!(response.status, 200);
    assert!(
        response.text().starts_with("status 200"),
        "{}",
        response.text()
    );

    let request = receiver.span("the request's span", |span| {
        span.kind == SpanKind::Server as i32
    });
    let guest = receiver.span("the guest's span", |span| span.parent_id == request.span_id);
    let client = receiver.span("the outgoing request's span", |span| {
        span.kind == SpanKind::Client as i32
    });
    assert_eq!(client.trace_id, request.trace_id);
    assert_eq!(client.parent_id, guest.span_id);
    assert_eq!(client.attribute("http.request.method"), "GET");
    assert_eq!(client.attribute("url.full"), url);
    assert_eq!(client.attribute("http.response.status_code"), "200");
    assert_eq!(
        client.attribute("server.port"),
        upstream.addr.port().to_string()
    );
    assert!(!client.error);

    // The upstream joined the trace, under the client span.
    let heads = upstream.heads();
    let traceparent = heads[0]
        .lines()
        .find_map(|line| line.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent: {heads:?}"));
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", request.trace_id, client.span_id)
    );

    // A destination the list does not name: an error span, nothing sent.
    let denied_url = "http://192.0.2.1/";
    let answer = get(&server, &format!("/fetch?url={denied_url}"), "").text();
    assert!(answer.contains("HttpRequestDenied"), "{answer}");
    let denied = receiver.span("the denied request's span", |span| {
        span.kind == SpanKind::Client as i32
            && span
                .attributes
                .get("url.full")
                .is_some_and(|u| u == denied_url)
    });
    assert!(denied.error);
    assert_eq!(denied.attribute("error.type"), "denied");

    // A caller's trace it chose not to sample: no spans here, and the
    // upstream hears the decision in the same trace.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let response = get(
        &server,
        &format!("/fetch?url={url}"),
        &format!("traceparent: 00-{unsampled}-b7ad6b7169203331-00\r\n"),
    );
    assert_eq!(response.status, 200);
    let heads = upstream.heads();
    let traceparent = heads
        .last()
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent: {heads:?}"));
    assert!(
        traceparent.starts_with(&format!("00-{unsampled}-")) && traceparent.ends_with("-00"),
        "{traceparent}"
    );
    // What was queued is sent before the server exits.
    let mut server = server;
    server.signal("TERM");
    assert!(server.child.wait().unwrap().success());
    assert!(
        receiver
            .spans()
            .iter()
            .all(|span| span.trace_id != unsampled),
        "{:?}",
        receiver.spans()
    );
}

#[test]
fn a_key_value_operation_yields_its_span() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let server = traced(
        &receiver.endpoint(),
        &[],
        &[
            "--guest",
            kv_guest().to_str().unwrap(),
            "--allow-kv",
            "default",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    let response = get(&server, "/draft/set?store=&key=k&value=v", "");
    assert_eq!(response.text().trim(), "ok");
    let request = receiver.span("the request's span", |span| {
        span.kind == SpanKind::Server as i32
    });
    let guest = receiver.span("the guest's span", |span| span.parent_id == request.span_id);
    let set = receiver.span("the operation's span", |span| {
        span.attributes
            .get("db.operation.name")
            .is_some_and(|op| op == "set")
    });
    assert_eq!(set.trace_id, request.trace_id);
    assert_eq!(set.parent_id, guest.span_id);
    assert_eq!(set.kind, SpanKind::Client as i32);
    assert_eq!(set.attribute("db.system.name"), "sqlite");
    assert_eq!(set.attribute("db.namespace"), "default");
    assert_eq!(set.attribute("wasmhttpd.kv.result"), "ok");
    assert!(!set.error);

    // An operation past a limit: its span says so, as an error.
    let long_key = "k".repeat(300);
    let refused = get(&server, &format!("/draft/get?store=&key={long_key}"), "");
    assert!(refused.text().starts_with("error"), "{}", refused.text());
    let limited = receiver.span("the refused operation's span", |span| {
        span.attributes
            .get("wasmhttpd.kv.result")
            .is_some_and(|result| result == "limit")
    });
    assert!(limited.error);
}

#[test]
fn with_the_collector_down_requests_are_answered_and_the_spans_counted_dropped() {
    let receiver = Receiver::start();
    let server = traced(
        &receiver.endpoint(),
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "500")],
        &["--metrics", "127.0.0.1:0"],
    );
    assert_eq!(get(&server, "/index.html", "").status, 200);
    receiver.span("a span exported", |_| true);
    let addr = receiver.stop();

    for _ in 0..20 {
        assert_eq!(get(&server, "/index.html", "").status, 200);
    }
    server.wait_for_log("cannot export traces");
    let metrics = server.metrics_addr();
    let dropped = || {
        let text = exchange_at(
            metrics,
            b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        .text();
        crate::metrics::value(&text, "wasmhttpd_trace_spans_dropped_total")
    };
    eventually("spans counted dropped", || dropped() >= 20.0);

    // The collector back: exports resume, and the log says so once.
    let receiver = Receiver::on(TcpListener::bind(addr).unwrap());
    assert_eq!(get(&server, "/echo.html", "").status, 200);
    receiver.request("/echo.html");
    server.wait_for_log("traces are exported again");
}

#[test]
fn the_sampler_always_off_exports_nothing() {
    let receiver = Receiver::start();
    let mut server = traced(
        &receiver.endpoint(),
        &[("OTEL_TRACES_SAMPLER", "always_off")],
        &[],
    );
    for _ in 0..5 {
        assert_eq!(get(&server, "/index.html", "").status, 200);
    }
    // At its end, the server sends what it has queued before it exits.
    server.signal("TERM");
    assert!(server.child.wait().unwrap().success());
    assert_eq!(receiver.spans().len(), 0);

    // The same, sampled: the flush at the end delivers them.
    let mut sampled = traced(
        &receiver.endpoint(),
        &[("OTEL_BSP_SCHEDULE_DELAY", "60000")],
        &[],
    );
    assert_eq!(get(&sampled, "/index.html", "").status, 200);
    sampled.signal("TERM");
    assert!(sampled.child.wait().unwrap().success());
    assert!(!receiver.spans().is_empty());
}

#[test]
fn an_otel_setting_that_cannot_be_served_is_named() {
    let output = traced_command(
        "http://127.0.0.1:4318",
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc") && stderr.contains("http/protobuf"),
        "{stderr}"
    );
}
