//! A wasi:http guest for the integration tests that misbehaves on request.
//!
//! | path                | behaviour                                                  |
//! |---------------------|------------------------------------------------------------|
//! | `/ok`               | 200 `ok`                                                   |
//! | `/echo`             | 200, the request body back, with `x-method` and `x-length` |
//! | `/stream?n=N&ms=D`  | N chunks `chunk i\n`, D ms apart, without Content-Length   |
//! | `/loop`             | spins forever before answering                             |
//! | `/sleep`            | blocks in a host call forever before answering             |
//! | `/trap`             | panics (a wasm trap) before answering                      |
//! | `/alloc`            | allocates until memory runs out                            |
//! | `/no-response`      | returns without setting a response                         |
//! | `/trap-after-head`  | sends a head promising 100 bytes, writes 10, then panics   |
//! | `/short-body`       | promises 100 bytes, writes 10, finishes                    |

#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "static-files",
        generate_all,
        features: ["clocks-timezone"],
    });
}

use bindings::exports::wasi::http::incoming_handler::Guest;
use bindings::wasi::clocks::monotonic_clock;
use bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
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
            "/loop" => loop {
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
            _ => respond(outparam, 404, &[], b"no such fault"),
        }
    }
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
