//! A wasi:http guest for the integration tests that misbehaves on request.
//!
//! | path                | behaviour                                                  |
//! |---------------------|------------------------------------------------------------|
//! | `/ok`               | 200 `ok`                                                   |
//! | `/echo`             | 200, the request body back, with `x-method` and `x-length` |
//! | `/stream?n=N&ms=D`  | N chunks `chunk i\n`, D ms apart, without Content-Length   |
//! | `/loop`             | spins forever before answering; under any route prefix     |
//! | `/sleep`            | blocks in a host call forever before answering             |
//! | `/trap`             | panics (a wasm trap) before answering                      |
//! | `/alloc`            | allocates until memory runs out                            |
//! | `/no-response`      | returns without setting a response                         |
//! | `/trap-after-head`  | sends a head promising 100 bytes, writes 10, then panics   |
//! | `/short-body`       | promises 100 bytes, writes 10, finishes                    |
//! | `/long-body`        | promises 10 bytes, tries to write 100, finishes            |
//! | `/status?code=N`    | answers with status N (traps if wasi:http refuses it)      |
//! | `/hop-by-hop`       | tries to set `Connection`, `Transfer-Encoding`, `Upgrade`, |
//! |                     | `Keep-Alive`, `Proxy-Connection`; answers `ok` with the    |
//! |                     | number of refused fields in `x-refused`                    |
//! | `/bad-header`       | tries invalid names and values (CR LF, NUL, spaces);       |
//! |                     | answers `ok` with the number refused in `x-refused`        |
//! | `/print`            | writes lines to stdout and stderr, then answers `ok`       |
//! | `/alloc-mib?n=N`    | allocates N MiB, then answers 200 with the byte count      |
//! | `/linger?ms=D`      | writes all of a 2-byte body, waits D ms, then ends it      |
//! | `/scheme`           | the request's scheme, as wasi:http gives it                |
//! | `/first-only`       | `first` on an instance's first request to it; after that   |
//! |                     | returns without a response                                 |
//! | `/count`            | how many requests this instance has handled, this one included |
//! | `/stream-gated?n=N` | `chunk 0\n`, then `chunk i\n` once the file `gate-i`     |
//! |                     | appears in the root, for i < N                             |
//! | `/fetch?…&url=URL`  | sends `GET URL` (the rest of the query, unencoded) with    |
//! |                     | `connect-ms`, `first-byte-ms`, `between-ms` as its         |
//! |                     | request-options if given; answers 200 `status N\n` and    |
//! |                     | the body, then `body-error CODE` if it broke, or           |
//! |                     | `error CODE` when no response came; under any route prefix |
//! | `/socket?addr=A`    | opens a TCP connection to A (`ip:port`) through wasi:sockets, |
//! |                     | then looks up `localhost`; answers a line for each:        |
//! |                     | `connected` or `refused ERROR`, `resolved` or `refused ERROR` |
//! | `/fetch-many?n=N&url=URL` | sends N requests at once, then answers a line per request: |
//! |                     | `status N` or `error CODE`                                 |
//! | `/open?path=P`      | opens the file P of its root for reading; answers `opened` |
//! |                     | or `error KIND` (the `std::io::ErrorKind`)                 |
//!
//! WebSocket sessions (the `wasmhttpd:guest/websocket` export), by path:
//!
//! | path             | behaviour                                                     |
//! |------------------|---------------------------------------------------------------|
//! | `/ws/echo`       | echoes; `trap` panics, `loop` spins, `sleep` blocks forever,  |
//! |                  | `alloc` exhausts memory, `many N` answers with N messages,    |
//! |                  | `spin MS` computes for MS ms, then answers `spun`,            |
//! |                  | `count` answers with how many messages this session has seen  |
//! | `/ws/protocol`   | accepts with the last subprotocol the client offered          |
//! | `/ws/bad-protocol` | accepts with a subprotocol nobody offered                   |
//! | `/ws/open-trap`  | panics in `open`                                              |
//! | anything else    | refused                                                       |
//!
//! `on-close` prints `on-close CODE REASON` on stderr.

#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "static-files",
        generate_all,
        features: ["clocks-timezone"],
    });
}

use std::sync::atomic::{AtomicU64, Ordering};

use bindings::exports::wasi::http::incoming_handler::Guest;
use bindings::exports::wasmhttpd::guest::websocket::{self, Decision, Message, Upgrade};
use bindings::wasi::clocks::monotonic_clock;
use bindings::wasi::filesystem::preopens;
use bindings::wasi::http::outgoing_handler;
use bindings::wasi::http::types::{
    self as http_types, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, RequestOptions, ResponseOutparam, Scheme,
};
use bindings::wasi::io::streams::StreamError;

struct Component;

// The generated export glue is `unsafe` FFI; the handler itself is safe code.
#[allow(unsafe_code)]
mod export {
    use super::{Component, bindings};
    bindings::export!(Component with_types_in bindings);
}

impl Guest for Component {
    fn handle(request: IncomingRequest, outparam: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        match path {
            "/ok" => respond(outparam, 200, &[], b"ok"),
            "/echo" => echo(request, outparam),
            "/stream" => stream(outparam, param(query, "n", 3), param(query, "ms", 100)),
            // Under any route prefix, like `/fetch`.
            path if path.ends_with("/loop") => loop {
                std::hint::spin_loop();
            },
            "/sleep" => loop {
                monotonic_clock::subscribe_duration(u64::MAX).block();
            },
            "/trap" => panic!("trap requested"),
            "/alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                }
            }
            "/no-response" => drop(outparam),
            "/trap-after-head" => {
                let body = send_head(outparam, 200, &[("content-length", b"100")]);
                let stream = body.write().unwrap();
                stream.blocking_write_and_flush(b"0123456789").unwrap();
                panic!("trap after the head was sent");
            }
            "/short-body" => {
                let body = send_head(outparam, 200, &[("content-length", b"100")]);
                let stream = body.write().unwrap();
                stream.blocking_write_and_flush(b"0123456789").unwrap();
                drop(stream);
                let _ = OutgoingBody::finish(body, None);
            }
            "/long-body" => {
                let body = send_head(outparam, 200, &[("content-length", b"10")]);
                let stream = body.write().unwrap();
                // wasi:http may refuse the bytes past the length; go on anyway.
                let _ = write_all(&stream, &[b'x'; 100]);
                drop(stream);
                let _ = OutgoingBody::finish(body, None);
            }
            "/status" => {
                let code = u16::try_from(param(query, "code", 200)).unwrap_or(u16::MAX);
                respond(outparam, code, &[], b"status");
            }
            "/hop-by-hop" => try_fields(
                outparam,
                &[
                    ("connection", b"close"),
                    ("transfer-encoding", b"chunked"),
                    ("upgrade", b"websocket"),
                    ("keep-alive", b"timeout=99"),
                    ("proxy-connection", b"close"),
                ],
            ),
            "/bad-header" => try_fields(
                outparam,
                &[
                    ("x-split", b"a\r\nx-injected: 1"),
                    ("x-newline", b"a\nx-injected: 1"),
                    ("x-nul", b"a\0b"),
                    ("bad name", b"v"),
                    ("x-injected: 1\r\nx-b", b"v"),
                    ("", b"v"),
                ],
            ),
            "/print" => {
                println!("guest line on stdout");
                eprintln!("guest line on stderr");
                print!("guest line without a newline");
                // Out of the guest's own buffer; the host holds the line
                // until it ends or the instance does.
                std::io::Write::flush(&mut std::io::stdout()).unwrap();
                respond(outparam, 200, &[], b"ok");
            }
            "/stream-gated" => stream_gated(outparam, param(query, "n", 3)),
            "/alloc-mib" => {
                let block = vec![1_u8; (param(query, "n", 1) as usize) << 20];
                respond(outparam, 200, &[], block.len().to_string().as_bytes());
            }
            "/linger" => {
                let body = send_head(outparam, 200, &[("content-length", b"2")]);
                let stream = body.write().unwrap();
                stream.blocking_write_and_flush(b"ok").unwrap();
                monotonic_clock::subscribe_duration(param(query, "ms", 500) * 1_000_000).block();
                drop(stream);
                OutgoingBody::finish(body, None).unwrap();
            }
            path if path.ends_with("/fetch") => fetch(query, outparam),
            path if path.ends_with("/fetch-many") => fetch_many(query, outparam),
            "/socket" => {
                let addr = query.split_once("addr=").map_or("", |(_, addr)| addr);
                let connect = match std::net::TcpStream::connect(addr) {
                    Ok(_) => "connected".to_owned(),
                    Err(err) => format!("refused {err}"),
                };
                let lookup = match std::net::ToSocketAddrs::to_socket_addrs("localhost:80") {
                    Ok(_) => "resolved".to_owned(),
                    Err(err) => format!("refused {err}"),
                };
                respond(
                    outparam,
                    200,
                    &[],
                    format!("{connect}\n{lookup}").as_bytes(),
                );
            }
            "/open" => {
                let name = query.split_once("path=").map_or("", |(_, name)| name);
                let answer = match std::fs::File::open(format!("/{name}")) {
                    Ok(_) => "opened".to_owned(),
                    Err(err) => format!("error {:?}", err.kind()),
                };
                respond(outparam, 200, &[], answer.as_bytes());
            }
            "/scheme" => {
                let scheme = format!("{:?}", request.scheme());
                respond(outparam, 200, &[], scheme.as_bytes());
            }
            "/first-only" => {
                if ANSWERED.fetch_add(1, Ordering::Relaxed) == 0 {
                    respond(outparam, 200, &[], b"first");
                }
            }
            "/count" => {
                let count = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
                respond(outparam, 200, &[], count.to_string().as_bytes());
            }
            _ => respond(outparam, 404, &[], b"no such fault"),
        }
    }
}

/// A `GET` of the URL at the end of `query`, with the request-options
/// the query gives.
fn get_request(query: &str) -> (OutgoingRequest, RequestOptions) {
    let url = query.split_once("url=").map_or("", |(_, url)| url);
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    request.set_scheme(Some(&scheme)).unwrap();
    request.set_authority(Some(authority)).unwrap();
    request.set_path_with_query(Some(path)).unwrap();
    let options = RequestOptions::new();
    let ms = |name| Some(param(query, name, u64::MAX)).filter(|ms| *ms != u64::MAX);
    if let Some(ms) = ms("connect-ms") {
        options.set_connect_timeout(Some(ms * 1_000_000)).unwrap();
    }
    if let Some(ms) = ms("first-byte-ms") {
        options
            .set_first_byte_timeout(Some(ms * 1_000_000))
            .unwrap();
    }
    if let Some(ms) = ms("between-ms") {
        options
            .set_between_bytes_timeout(Some(ms * 1_000_000))
            .unwrap();
    }
    (request, options)
}

/// Sends `GET` to the URL at the end of `query` and answers with what
/// came back, or the error code.
fn fetch(query: &str, outparam: ResponseOutparam) {
    let (request, options) = get_request(query);
    let future = match outgoing_handler::handle(request, Some(options)) {
        Ok(future) => future,
        Err(code) => return respond(outparam, 200, &[], format!("error {code:?}").as_bytes()),
    };
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => {
            return respond(outparam, 200, &[], format!("error {code:?}").as_bytes());
        }
        other => panic!("the response future is ready: {other:?}"),
    };
    let mut out = format!("status {}\n", response.status()).into_bytes();
    let body = response.consume().unwrap();
    let input = body.stream().unwrap();
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(err)) => {
                let error = match http_types::http_error_code(&err) {
                    Some(code) => format!("{code:?}"),
                    None => err.to_debug_string(),
                };
                out.extend_from_slice(format!("\nbody-error {error}").as_bytes());
                break;
            }
        }
    }
    respond(outparam, 200, &[], &out);
}

/// Sends `n` requests before waiting for any; answers a line for each.
fn fetch_many(query: &str, outparam: ResponseOutparam) {
    let futures: Vec<_> = (0..param(query, "n", 2))
        .map(|_| {
            let (request, options) = get_request(query);
            outgoing_handler::handle(request, Some(options))
        })
        .collect();
    let mut lines = String::new();
    let mut responses = Vec::new();
    for future in futures {
        let outcome = future.map(|future| {
            future.subscribe().block();
            future.get()
        });
        match outcome {
            Ok(Some(Ok(Ok(response)))) => {
                lines.push_str(&format!("status {}\n", response.status()));
                // Kept, so each request stays open until all are answered.
                responses.push(response);
            }
            Ok(Some(Ok(Err(code)))) | Err(code) => lines.push_str(&format!("error {code:?}\n")),
            other => panic!("the response future is ready: {other:?}"),
        }
    }
    drop(responses);
    respond(outparam, 200, &[], lines.as_bytes());
}

fn param(query: &str, name: &str, default: u64) -> u64 {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(default)
}

fn send_head(outparam: ResponseOutparam, status: u16, headers: &[(&str, &[u8])]) -> OutgoingBody {
    let fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.to_vec()))
        .collect();
    let response = OutgoingResponse::new(Fields::from_list(&fields).unwrap());
    response.set_status_code(status).unwrap();
    let body = response.body().unwrap();
    ResponseOutparam::set(outparam, Ok(response));
    body
}

/// Tries to add each field to a response; answers `ok` with how many
/// wasi:http refused in `x-refused`.
fn try_fields(outparam: ResponseOutparam, fields: &[(&str, &[u8])]) {
    let headers = Fields::new();
    let refused = fields
        .iter()
        .filter(|(name, value)| headers.append(name, value).is_err())
        .count();
    headers
        .append("x-refused", refused.to_string().as_bytes())
        .unwrap();
    headers.append("content-length", b"2").unwrap();
    let response = OutgoingResponse::new(headers);
    let body = response.body().unwrap();
    ResponseOutparam::set(outparam, Ok(response));
    let stream = body.write().unwrap();
    write_all(&stream, b"ok").unwrap();
    drop(stream);
    OutgoingBody::finish(body, None).unwrap();
}

fn respond(outparam: ResponseOutparam, status: u16, headers: &[(&str, &[u8])], body: &[u8]) {
    let length = body.len().to_string();
    let mut all = headers.to_vec();
    all.push(("content-length", length.as_bytes()));
    let out = send_head(outparam, status, &all);
    let stream = out.write().unwrap();
    write_all(&stream, body).unwrap();
    drop(stream);
    OutgoingBody::finish(out, None).unwrap();
}

fn write_all(
    stream: &bindings::wasi::io::streams::OutputStream,
    bytes: &[u8],
) -> Result<(), StreamError> {
    for chunk in bytes.chunks(4096) {
        stream.blocking_write_and_flush(chunk)?;
    }
    Ok(())
}

fn echo(request: IncomingRequest, outparam: ResponseOutparam) {
    let method = match request.method() {
        Method::Get => "GET".to_owned(),
        Method::Head => "HEAD".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Other(other) => other,
        other => format!("{other:?}").to_uppercase(),
    };
    let incoming = request.consume().unwrap();
    let input = incoming.stream().unwrap();
    let mut body = Vec::new();
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(StreamError::Closed) => break,
            Err(err) => panic!("reading the request body: {err:?}"),
        }
    }
    let length = body.len().to_string();
    respond(
        outparam,
        200,
        &[
            ("x-method", method.as_bytes()),
            ("x-length", length.as_bytes()),
        ],
        &body,
    );
}

fn stream(outparam: ResponseOutparam, chunks: u64, delay_ms: u64) {
    let body = send_head(outparam, 200, &[("content-type", b"text/plain")]);
    let stream = body.write().unwrap();
    for i in 0..chunks {
        if i > 0 {
            monotonic_clock::subscribe_duration(delay_ms * 1_000_000).block();
        }
        if write_all(&stream, format!("chunk {i}\n").as_bytes()).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

/// Streams `chunk 0`, then each next chunk only once the test has created
/// its gate file: proof that a chunk reached the client before the next
/// one was written.
fn stream_gated(outparam: ResponseOutparam, chunks: u64) {
    let body = send_head(outparam, 200, &[("content-type", b"text/plain")]);
    let stream = body.write().unwrap();
    let (root, _) = preopens::get_directories().into_iter().next().unwrap();
    for i in 0..chunks {
        if i > 0 {
            let gate = format!("gate-{i}");
            while root
                .stat_at(bindings::wasi::filesystem::types::PathFlags::empty(), &gate)
                .is_err()
            {
                monotonic_clock::subscribe_duration(5_000_000).block();
            }
        }
        if write_all(&stream, format!("chunk {i}\n").as_bytes()).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

/// Requests to `/count` this instance has handled.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Requests `/first-only` has seen in this instance.
static ANSWERED: AtomicU64 = AtomicU64::new(0);

/// Messages seen by this instance: one session's, since each session has
/// an instance of its own.
static SEEN: AtomicU64 = AtomicU64::new(0);

impl websocket::Guest for Component {
    fn open(upgrade: Upgrade) -> Decision {
        match upgrade.path_with_query.as_str() {
            "/ws/echo" => Decision::Accept(None),
            "/ws/protocol" => Decision::Accept(upgrade.protocols.last().cloned()),
            "/ws/bad-protocol" => Decision::Accept(Some("never-offered".to_owned())),
            "/ws/open-trap" => panic!("trap in open"),
            _ => Decision::Refuse,
        }
    }

    fn on_message(message: Message) -> Vec<Message> {
        let seen = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
        let Message::Text(text) = &message else {
            return vec![message];
        };
        match text.split_once(' ').unwrap_or((text, "")) {
            ("trap", _) => panic!("trap requested"),
            ("loop", _) => loop {
                std::hint::spin_loop();
            },
            ("sleep", _) => loop {
                monotonic_clock::subscribe_duration(u64::MAX).block();
            },
            ("alloc", _) => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                }
            }
            ("many", n) => (0..n.parse().unwrap_or(0))
                .map(|i| Message::Text(format!("reply {i}")))
                .collect(),
            ("count", _) => vec![Message::Text(seen.to_string())],
            ("spin", ms) => {
                // Computes for `ms` milliseconds of the clock, then answers.
                let until = monotonic_clock::now() + ms.parse().unwrap_or(0) * 1_000_000;
                while monotonic_clock::now() < until {
                    std::hint::spin_loop();
                }
                vec![Message::Text("spun".to_owned())]
            }
            _ => vec![message],
        }
    }

    fn on_close(code: u16, reason: String) {
        eprintln!("on-close {code} {reason}");
    }
}
