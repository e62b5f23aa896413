//! The default wasmhttpd guest: serves static files from the web root.
//!
//! The host (or `wasmtime serve --dir www::/`) preopens the web root at `/`,
//! read-only. Each request is resolved by [`path::resolve`] and answered
//! with the file, a redirect to a directory's slash form, or an error page.
//! File bodies are spliced from the file's input stream into the response
//! body, so a large file never sits whole in guest memory.
//!
//! Layout:
//! - [`path`]: request target → path below the root (decoding, `..`, NUL).
//! - [`conditional`]: ETag / Last-Modified and conditional requests.
//! - [`range`]: byte ranges.
//! - this file: the `wasi:http/incoming-handler` export and the responses.

pub mod conditional;
pub mod path;
pub mod range;

#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "static-files",
        generate_all,
        features: ["clocks-timezone"],
    });
}

use bindings::exports::wasi::http::incoming_handler::Guest;
use bindings::wasi::filesystem::preopens;
use bindings::wasi::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, OpenFlags, PathFlags,
};
use bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use bindings::wasi::io::streams::{OutputStream, StreamError};
use conditional::{Conditions, Outcome, Validators};

/// The most a single `blocking-write-and-flush` call may carry (wasi:io).
const MAX_WRITE: usize = 4096;
/// Bytes moved per `splice` call when streaming a file.
const SPLICE_CHUNK: u64 = 256 * 1024;
/// The page that names a directory's index.
const INDEX: &str = "index.html";
/// The root's optional custom not-found page.
const NOT_FOUND_PAGE: &str = "404.html";
/// The one dot-directory that is served: RFC 8615 well-known URIs.
const WELL_KNOWN: &str = ".well-known";

struct Component;

// The generated export glue is `unsafe` FFI; the handler itself is safe code.
#[allow(unsafe_code)]
mod export {
    use super::{Component, bindings};
    bindings::export!(Component with_types_in bindings);
}

impl Guest for Component {
    fn handle(request: IncomingRequest, outparam: ResponseOutparam) {
        let head_only = matches!(request.method(), Method::Head);
        let reply = respond(&request);
        drop(request);
        reply.send(outparam, head_only);
    }
}

/// What a request is answered with.
enum Reply {
    /// A regular file, streamed from the root.
    File {
        status: u16,
        file: Descriptor,
        size: u64,
        content_type: String,
        validators: Validators,
        /// The bytes to send, `start..=end`, for a 206.
        range: Option<(u64, u64)>,
    },
    /// A small generated body.
    Page {
        status: u16,
        headers: Vec<(&'static str, String)>,
        content_type: String,
        body: Vec<u8>,
    },
}

/// The content type of generated pages.
const HTML: &str = "text/html; charset=utf-8";

fn respond(request: &IncomingRequest) -> Reply {
    if !matches!(request.method(), Method::Get | Method::Head) {
        return Reply::Page {
            status: 405,
            headers: vec![("allow", "GET, HEAD".to_owned())],
            content_type: HTML.to_owned(),
            body: error_page(405, "Method Not Allowed", "This resource can only be read."),
        };
    }
    let Some(root) = web_root() else {
        return error_reply(500, "Internal Server Error", "No web root is mounted.");
    };
    let target = request.path_with_query().unwrap_or_else(|| "/".to_owned());
    let resolved = match path::resolve(&target) {
        Ok(resolved) => resolved,
        Err(err) => return error_reply(400, "Bad Request", &err.to_string()),
    };
    // Dotfiles (.git/, .env, .htpasswd) are private to the site.
    let hidden = |segment: &String| segment.starts_with('.') && segment != WELL_KNOWN;
    if resolved.segments.iter().any(hidden) {
        return not_found(&root);
    }
    let reply = match stat(&root, &resolved.relative()) {
        Some(DescriptorType::Directory) if !resolved.trailing_slash => {
            let mut location = resolved.directory_url();
            if let Some((_, query)) = target.split_once('?') {
                location.push('?');
                location.push_str(query);
            }
            Reply::Page {
                status: 301,
                headers: vec![("location", location)],
                content_type: HTML.to_owned(),
                body: error_page(301, "Moved Permanently", "This directory has moved."),
            }
        }
        Some(DescriptorType::Directory) => {
            let index = format!("{}/{INDEX}", resolved.relative());
            open_file(&root, &index, 200).unwrap_or_else(|| not_found(&root))
        }
        Some(DescriptorType::RegularFile) => {
            open_file(&root, &resolved.relative(), 200).unwrap_or_else(|| not_found(&root))
        }
        // Missing, a symlink that leaves the root, a FIFO, a device: none is served.
        _ => not_found(&root),
    };
    match reply {
        Reply::File {
            status: 200,
            ref validators,
            ref content_type,
            ..
        } => {
            let safe = matches!(request.method(), Method::Get | Method::Head);
            match conditions(request).evaluate(validators, safe) {
                Outcome::Proceed => with_range(reply, request),
                Outcome::NotModified => Reply::Page {
                    status: 304,
                    headers: validator_headers(validators),
                    content_type: content_type.clone(),
                    body: Vec::new(),
                },
                Outcome::PreconditionFailed => error_reply(
                    412,
                    "Precondition Failed",
                    "The resource does not match the request's preconditions.",
                ),
            }
        }
        reply => reply,
    }
}

/// Narrows a whole-file reply to the request's `Range`, if it has one that
/// applies (and its `If-Range` still matches the file).
fn with_range(mut reply: Reply, request: &IncomingRequest) -> Reply {
    let Reply::File {
        status,
        size,
        validators,
        range,
        ..
    } = &mut reply
    else {
        return reply;
    };
    let Some(header_value) = header(request, "range") else {
        return reply;
    };
    if header(request, "if-range").is_some_and(|value| !validators.matches_if_range(&value)) {
        return reply;
    }
    match range::evaluate(&header_value, *size) {
        range::Ranged::Full => reply,
        range::Ranged::Partial { start, end } => {
            *status = 206;
            *range = Some((start, end));
            reply
        }
        range::Ranged::Unsatisfiable => Reply::Page {
            status: 416,
            headers: vec![("content-range", format!("bytes */{size}"))],
            content_type: HTML.to_owned(),
            body: error_page(
                416,
                "Range Not Satisfiable",
                "The requested range is outside the file.",
            ),
        },
    }
}

/// All field lines named `name`, joined with commas.
fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    (!values.is_empty()).then(|| {
        values
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The request's conditional headers.
fn conditions(request: &IncomingRequest) -> Conditions {
    let field = |name: &str| header(request, name);
    Conditions {
        if_match: field("if-match"),
        if_none_match: field("if-none-match"),
        if_modified_since: field("if-modified-since"),
        if_unmodified_since: field("if-unmodified-since"),
    }
}

fn validator_headers(validators: &Validators) -> Vec<(&'static str, String)> {
    let mut headers = vec![("etag", validators.etag.clone())];
    if let Some(date) = validators.last_modified() {
        headers.push(("last-modified", date));
    }
    headers
}

/// The preopened web root: the directory mounted at `/`, else the first one.
fn web_root() -> Option<Descriptor> {
    let mut dirs = preopens::get_directories();
    let at_root = dirs.iter().position(|(_, name)| name == "/").unwrap_or(0);
    (!dirs.is_empty()).then(|| dirs.swap_remove(at_root).0)
}

fn stat(root: &Descriptor, relative: &str) -> Option<DescriptorType> {
    root.stat_at(PathFlags::SYMLINK_FOLLOW, relative)
        .ok()
        .map(|stat| stat.type_)
}

/// Opens `relative` if it is a regular file. Checked before opening: opening
/// a FIFO for reading would block the guest until a writer appears.
fn open_file(root: &Descriptor, relative: &str, status: u16) -> Option<Reply> {
    if stat(root, relative)? != DescriptorType::RegularFile {
        return None;
    }
    let file = root
        .open_at(
            PathFlags::SYMLINK_FOLLOW,
            relative,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        )
        .ok()?;
    let meta = file.stat().ok()?;
    if meta.type_ != DescriptorType::RegularFile {
        return None;
    }
    let modified = meta
        .data_modification_timestamp
        .map(|t| (t.seconds, t.nanoseconds));
    Some(Reply::File {
        status,
        file,
        size: meta.size,
        content_type: content_type(relative),
        validators: Validators::new(meta.size, modified),
        range: None,
    })
}

fn not_found(root: &Descriptor) -> Reply {
    open_file(root, NOT_FOUND_PAGE, 404).unwrap_or_else(|| {
        error_reply(
            404,
            "Not Found",
            "The requested page does not exist on this server.",
        )
    })
}

fn content_type(name: &str) -> String {
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(mime.subtype().as_str(), "javascript" | "json" | "xml");
    if textual {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

fn error_reply(status: u16, title: &str, detail: &str) -> Reply {
    Reply::Page {
        status,
        headers: Vec::new(),
        content_type: HTML.to_owned(),
        body: error_page(status, title, detail),
    }
}

fn error_page(status: u16, title: &str, detail: &str) -> Vec<u8> {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <title>{status} {title}</title></head>\n<body>\n<h1>{status} {title}</h1>\n\
         <p>{}</p>\n<hr><p>wasmhttpd</p>\n</body>\n</html>\n",
        escape_html(detail)
    )
    .into_bytes()
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Reply {
    /// Sends the head, then (unless `head_only`) the body.
    fn send(self, outparam: ResponseOutparam, head_only: bool) {
        let (status, mut headers, length) = match &self {
            Reply::File {
                status,
                size,
                content_type,
                validators,
                range,
                ..
            } => {
                let mut all = validator_headers(validators);
                all.push(("content-type", content_type.clone()));
                all.push(("accept-ranges", "bytes".to_owned()));
                let length = match range {
                    Some((start, end)) => {
                        all.push(("content-range", format!("bytes {start}-{end}/{size}")));
                        end - start + 1
                    }
                    None => *size,
                };
                (*status, all, length)
            }
            Reply::Page {
                status,
                headers,
                content_type,
                body,
            } => {
                let mut all = headers.clone();
                all.push(("content-type", content_type.clone()));
                (*status, all, body.len() as u64)
            }
        };
        headers.push(("content-length", length.to_string()));
        headers.push(("x-content-type-options", "nosniff".to_owned()));
        let fields: Vec<(String, Vec<u8>)> = headers
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.into_bytes()))
            .collect();
        let fields = Fields::from_list(&fields).expect("response headers are valid");
        let response = OutgoingResponse::new(fields);
        response
            .set_status_code(status)
            .expect("status code is valid");
        let body = response.body().expect("response body is taken once");
        ResponseOutparam::set(outparam, Ok(response));
        if head_only {
            // A HEAD response has the GET response's headers and no body.
            drop(body);
            return;
        }
        let stream = body.write().expect("body stream is taken once");
        let complete = match &self {
            Reply::File {
                file, size, range, ..
            } => {
                let (offset, length) =
                    range.map_or((0, *size), |(start, end)| (start, end - start + 1));
                splice_file(&stream, file, offset, length)
            }
            Reply::Page { body, .. } => write_all(&stream, body),
        };
        drop(stream);
        if complete.is_ok() {
            // Fails only when the length written differs from Content-Length;
            // the host then closes the connection.
            let _ = OutgoingBody::finish(body, None);
        }
    }
}

fn write_all(stream: &OutputStream, mut bytes: &[u8]) -> Result<(), StreamError> {
    while !bytes.is_empty() {
        let (chunk, rest) = bytes.split_at(bytes.len().min(MAX_WRITE));
        stream.blocking_write_and_flush(chunk)?;
        bytes = rest;
    }
    Ok(())
}

/// Streams `length` bytes of `file` from `offset` into the body without
/// buffering them whole.
fn splice_file(
    stream: &OutputStream,
    file: &Descriptor,
    offset: u64,
    length: u64,
) -> Result<(), StreamError> {
    let input = file
        .read_via_stream(offset)
        .map_err(|_| StreamError::Closed)?;
    let mut left = length;
    while left > 0 {
        left -= stream.blocking_splice(&input, left.min(SPLICE_CHUNK))?;
    }
    stream.blocking_flush()
}
