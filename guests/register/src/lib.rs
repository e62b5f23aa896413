//! A form-handling guest for the demo site: `POST /register` with the
//! fields of `www/register.html`, answered with a page that echoes them.
//!
//! It shows a dynamic route beside the static files: mount it with
//! `wasmhttpd --route /register=wasmhttpd_register_guest.wasm`, and
//! `GET /register.html` (static) posts to `/register` (this guest).
//!
//! | request | answer |
//! |---|---|
//! | `POST /register`, a form body with `name` and `email` | 200, a page echoing every field, HTML-escaped; the password only as its length |
//! | a body that is not `application/x-www-form-urlencoded` | 415 |
//! | a malformed form body, or `name` / `email` missing | 400 |
//! | a body over [`MAX_BODY`] | 413 |
//! | another method | 405, `Allow: POST` |

pub mod form;

#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wasi:http/proxy@0.2.12",
        generate_all,
        features: ["clocks-timezone"],
    });
}

use bindings::exports::wasi::http::incoming_handler::Guest;
use bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use bindings::wasi::io::streams::StreamError;
use wasmhttpd_pages::escape;

/// The largest form body this guest reads: a registration form is a few
/// hundred bytes; 16 KiB leaves room for long names and notes.
pub const MAX_BODY: usize = 16 * 1024;

/// Fields a registration needs.
const REQUIRED: [&str; 2] = ["name", "email"];

struct Component;

// The generated export glue is `unsafe` FFI; the handler itself is safe code.
#[allow(unsafe_code)]
mod export {
    use super::{Component, bindings};
    bindings::export!(Component with_types_in bindings);
}

impl Guest for Component {
    fn handle(request: IncomingRequest, outparam: ResponseOutparam) {
        let (status, extra, page) = answer(request);
        send(outparam, status, extra, &page);
    }
}

/// The status, extra headers and page for a request.
fn answer(request: IncomingRequest) -> (u16, Option<(&'static str, &'static str)>, String) {
    if !matches!(request.method(), Method::Post) {
        let page = page("Method Not Allowed", "<p>Send the form with POST.</p>");
        return (405, Some(("allow", "POST")), page);
    }
    let content_type = request
        .headers()
        .get("content-type")
        .first()
        .map(|value| String::from_utf8_lossy(value).to_ascii_lowercase())
        .unwrap_or_default();
    if content_type.split(';').next().map(str::trim) != Some("application/x-www-form-urlencoded") {
        let detail = "<p>Expected a form body (application/x-www-form-urlencoded).</p>";
        return (415, None, page("Unsupported Media Type", detail));
    }
    let body = match read_body(request) {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let detail = format!("<p>A form body may be {MAX_BODY} bytes at most.</p>");
            return (413, None, page("Content Too Large", &detail));
        }
        Err(BodyError::Broken) => {
            let detail = "<p>The request body could not be read.</p>";
            return (400, None, page("Bad Request", detail));
        }
    };
    let fields = match form::parse(&body) {
        Ok(fields) => fields,
        Err(err) => {
            let detail = format!(
                "<p>The form body is malformed: {}.</p>",
                escape(&err.to_string())
            );
            return (400, None, page("Bad Request", &detail));
        }
    };
    let missing: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|name| {
            !fields
                .iter()
                .any(|(n, v)| n == name && !v.trim().is_empty())
        })
        .collect();
    if !missing.is_empty() {
        let detail = format!("<p>Missing: {}.</p>", missing.join(", "));
        return (400, None, page("Bad Request", &detail));
    }
    (200, None, welcome(&fields))
}

/// Why a request body was not read.
enum BodyError {
    /// Over [`MAX_BODY`].
    TooLarge,
    /// The stream failed.
    Broken,
}

fn read_body(request: IncomingRequest) -> Result<Vec<u8>, BodyError> {
    let declared = request
        .headers()
        .get("content-length")
        .first()
        .and_then(|value| std::str::from_utf8(value).ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY) {
        return Err(BodyError::TooLarge);
    }
    let incoming = request.consume().expect("the body is taken once");
    let stream = incoming.stream().expect("the stream is taken once");
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(4096) {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(BodyError::TooLarge);
                }
            }
            Err(StreamError::Closed) => return Ok(body),
            Err(StreamError::LastOperationFailed(_)) => return Err(BodyError::Broken),
        }
    }
}

/// The page after a registration: every field, escaped; a password only
/// as its length.
fn welcome(fields: &[(String, String)]) -> String {
    let name = fields
        .iter()
        .find(|(n, _)| n == "name")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let mut rows = String::new();
    for (field, value) in fields {
        let shown = if field == "password" {
            format!("({} characters, not shown)", value.chars().count())
        } else {
            escape(value)
        };
        rows.push_str(&format!(
            "<tr><th>{}</th><td>{shown}</td></tr>\n",
            escape(field)
        ));
    }
    page(
        "Registered",
        &format!(
            "<p>Welcome, {}! A guest component read this form; here is what it got:</p>\n\
             <table>\n{rows}</table>\n<p><a href=\"/\">Home</a></p>",
            escape(name)
        ),
    )
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <title>{title} — wasmhttpd</title>\
         <link rel=\"stylesheet\" href=\"/css/site.css\"></head>\n\
         <body>\n<main class=\"narrow\">\n<h1>{title}</h1>\n{body}\n</main>\n</body>\n</html>\n"
    )
}

fn send(
    outparam: ResponseOutparam,
    status: u16,
    extra: Option<(&'static str, &'static str)>,
    page: &str,
) {
    let mut headers = vec![
        (
            "content-type".to_owned(),
            b"text/html; charset=utf-8".to_vec(),
        ),
        (
            "content-length".to_owned(),
            page.len().to_string().into_bytes(),
        ),
        ("cache-control".to_owned(), b"no-store".to_vec()),
    ];
    if let Some((name, value)) = extra {
        headers.push((name.to_owned(), value.as_bytes().to_vec()));
    }
    let response = OutgoingResponse::new(Fields::from_list(&headers).expect("valid headers"));
    response.set_status_code(status).expect("valid status");
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(outparam, Ok(response));
    let stream = body.write().expect("the stream is taken once");
    for chunk in page.as_bytes().chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}
