//! An API gateway guest: forwards requests under a path prefix to one
//! upstream service that the operator names in the guest's environment,
//! and streams the answer back.
//!
//! ```text
//! wasmhttpd --route /api=wasmhttpd_gateway_guest.wasm \
//!     --env UPSTREAM=https://api.example.com \
//!     --allow-outbound https://api.example.com
//! ```
//!
//! `GET /api/users?page=2` goes to `https://api.example.com/users?page=2`
//! with the client's method, header fields (less the hop-by-hop ones) and
//! body; the upstream's status, fields and body come back as they arrive.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `UPSTREAM` | the service's base URL, `http[s]://host[:port][/base]` | none: every request gets 500 |
//! | `PREFIX` | the path prefix taken off before forwarding | `/api` |
//!
//! The host sends the request only if its `--allow-outbound` list takes
//! the upstream; a refused or failed request is answered 502 (504 for a
//! timeout) with the `wasi:http` error code in `x-gateway-error`, and the
//! code is printed to stderr, which the host logs with the request's id.

#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wasmhttpd:guest/handler",
        generate_all,
        features: ["clocks-timezone"],
    });
}

use bindings::exports::wasi::http::incoming_handler::Guest;
use bindings::wasi::cli::environment;
use bindings::wasi::http::outgoing_handler;
use bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};
use wasmhttpd_pages::{CONTENT_TYPE, SECURITY_HEADERS, error_page};

/// Header fields that belong to one connection, not to the request or
/// response they travel with: never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "http2-settings",
];

/// Bytes moved from one stream to the other at a time.
const PIECE: u64 = 64 * 1024;

struct Component;

// The generated export glue is `unsafe` FFI; the handler itself is safe code.
#[allow(unsafe_code)]
mod export {
    use super::{Component, bindings};
    bindings::export!(Component with_types_in bindings);
}

impl Guest for Component {
    fn handle(request: IncomingRequest, outparam: ResponseOutparam) {
        let vars = environment::get_environment();
        let var = |name: &str| {
            vars.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let prefix = var("PREFIX").unwrap_or_else(|| "/api".to_owned());
        let Some(upstream) = var("UPSTREAM").as_deref().and_then(Upstream::parse) else {
            eprintln!("no upstream: start the server with --env UPSTREAM=http[s]://host[:port]");
            return page(
                outparam,
                500,
                "Internal Server Error",
                "The gateway has no upstream.",
            );
        };
        let target = request.path_with_query().unwrap_or_default();
        let Some(rest) = strip_prefix(&target, &prefix) else {
            return page(
                outparam,
                404,
                "Not Found",
                "No service is mounted at this path.",
            );
        };
        forward(request, outparam, &upstream, rest);
    }
}

/// Where requests go.
struct Upstream {
    scheme: Scheme,
    authority: String,
    /// A path the forwarded path is appended to, without a trailing `/`.
    base: String,
}

impl Upstream {
    fn parse(url: &str) -> Option<Upstream> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        };
        let (authority, base) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        (!authority.is_empty()).then(|| Upstream {
            scheme,
            authority: authority.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
        })
    }
}

/// The part of `target` under `prefix` (whole path segments), as a path.
fn strip_prefix<'a>(target: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = target.strip_prefix(prefix)?;
    match rest.as_bytes().first() {
        None => Some("/"),
        Some(b'/' | b'?') => Some(rest),
        Some(_) => None,
    }
}

/// Sends `request` on to `upstream` at `path` and streams its answer back.
fn forward(request: IncomingRequest, outparam: ResponseOutparam, upstream: &Upstream, path: &str) {
    let headers = Fields::new();
    for (name, value) in request.headers().entries() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            // wasi:http refuses what it forbids; the rest goes on.
            let _ = headers.append(&name, &value);
        }
    }
    let outgoing = OutgoingRequest::new(headers);
    let path = if path.starts_with('?') {
        format!("{}/{path}", upstream.base)
    } else {
        format!("{}{path}", upstream.base)
    };
    let set = outgoing
        .set_method(&request.method())
        .and(outgoing.set_scheme(Some(&upstream.scheme)))
        .and(outgoing.set_authority(Some(&upstream.authority)))
        .and(outgoing.set_path_with_query(Some(&path)));
    if set.is_err() {
        return page(
            outparam,
            400,
            "Bad Request",
            "The request cannot be forwarded.",
        );
    }
    let body = outgoing.body().expect("a new request's body");
    let future = match outgoing_handler::handle(outgoing, None) {
        Ok(future) => future,
        Err(code) => return failed(outparam, &code),
    };

    // The client's body goes up as it arrives.
    let sent = request.consume().ok().map_or(Ok(()), |incoming| {
        let copied = match (incoming.stream(), body.write()) {
            (Ok(input), Ok(output)) => copy(&input, &output),
            _ => Ok(()),
        };
        drop(incoming);
        copied
    });
    let finished = OutgoingBody::finish(body, None);

    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return failed(outparam, &code),
        _ => return failed(outparam, &ErrorCode::InternalError(None)),
    };
    if let Err(code) = sent.and(finished) {
        return failed(outparam, &code);
    }

    let headers = Fields::new();
    for (name, value) in response.headers().entries() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            let _ = headers.append(&name, &value);
        }
    }
    let answer = OutgoingResponse::new(headers);
    let _ = answer.set_status_code(response.status());
    let out = answer.body().expect("a new response's body");
    ResponseOutparam::set(outparam, Ok(answer));
    let Ok(incoming) = response.consume() else {
        return;
    };
    if let (Ok(input), Ok(output)) = (incoming.stream(), out.write())
        && let Err(code) = copy(&input, &output)
    {
        // The head is out: the client sees the body cut short.
        eprintln!("upstream body failed: {code:?}");
        return;
    }
    let _ = OutgoingBody::finish(out, None);
}

/// Moves every byte of `input` to `output`, piece by piece.
fn copy(input: &InputStream, output: &OutputStream) -> Result<(), ErrorCode> {
    loop {
        match output.blocking_splice(input, PIECE) {
            Ok(_) => {}
            Err(StreamError::Closed) => return Ok(()),
            Err(StreamError::LastOperationFailed(err)) => {
                return Err(bindings::wasi::http::types::http_error_code(&err)
                    .unwrap_or(ErrorCode::InternalError(Some(err.to_debug_string()))));
            }
        }
    }
}

/// Answers a request the upstream could not: 504 for a timeout, 502
/// otherwise, with the code for the operator.
fn failed(outparam: ResponseOutparam, code: &ErrorCode) {
    eprintln!("upstream request failed: {code:?}");
    let name = format!("{code:?}");
    let name = name.trim_start_matches("ErrorCode::");
    let name = name.split(['(', ' ']).next().unwrap_or_default().to_owned();
    let (status, title) = match code {
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout
        | ErrorCode::DnsTimeout => (504, "Gateway Timeout"),
        _ => (502, "Bad Gateway"),
    };
    send(
        outparam,
        status,
        &[("x-gateway-error", &name)],
        &error_page(
            status,
            title,
            "The gateway could not get an answer from its upstream.",
        ),
    );
}

/// An error page of the gateway's own.
fn page(outparam: ResponseOutparam, status: u16, title: &str, detail: &str) {
    send(outparam, status, &[], &error_page(status, title, detail));
}

fn send(outparam: ResponseOutparam, status: u16, extra: &[(&str, &str)], page: &str) {
    let length = page.len().to_string();
    let mut fields: Vec<(String, Vec<u8>)> = vec![
        ("content-type".to_owned(), CONTENT_TYPE.into()),
        ("content-length".to_owned(), length.into_bytes()),
    ];
    for (name, value) in SECURITY_HEADERS.iter().chain(extra) {
        fields.push(((*name).to_owned(), value.as_bytes().to_vec()));
    }
    let response = OutgoingResponse::new(Fields::from_list(&fields).expect("valid fields"));
    let _ = response.set_status_code(status);
    let body = response.body().expect("a new response's body");
    ResponseOutparam::set(outparam, Ok(response));
    if let Ok(stream) = body.write() {
        for piece in page.as_bytes().chunks(4096) {
            if stream.blocking_write_and_flush(piece).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}
