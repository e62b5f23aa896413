//! The default wasmhttpd guest: serves static files from the web root.
//!
//! The host (or `wasmtime serve --dir www::/`) preopens the web root at `/`,
//! read-only. Each request is resolved by [`path::resolve`] and answered
//! with the file, a redirect to a directory's slash form, a directory
//! listing, or an error page. File bodies are spliced from the file's input
//! stream into the response body (or through a compressor), so a large
//! file never sits whole in guest memory.
//!
//! Layout:
//! - [`settings`]: configuration from `wasi:cli/environment`.
//! - [`path`]: request target → path below the root (decoding, `..`, NUL).
//! - [`conditional`]: ETag / Last-Modified and conditional requests.
//! - [`range`]: byte ranges.
//! - [`encoding`]: `Accept-Encoding`, precompressed files, gzip and brotli.
//! - [`html`]: error pages and directory listings.
//! - [`websocket`]: the WebSocket echo endpoint.
//! - `stream`: `std::io` over `wasi:io` streams.
//! - this file: the `wasi:http/incoming-handler` export and the responses.

pub mod conditional;
pub mod encoding;
pub mod html;
pub mod path;
pub mod range;
pub mod settings;
mod stream;
pub mod websocket;

#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "static-files",
        generate_all,
        features: ["clocks-timezone"],
    });
}

use std::io::BufWriter;

use bindings::exports::wasi::http::incoming_handler::Guest;
use bindings::wasi::cli::environment;
use bindings::wasi::filesystem::preopens;
use bindings::wasi::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, OpenFlags, PathFlags,
};
use bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use conditional::{Conditions, Outcome, Validators};
use encoding::{AcceptEncoding, Coding};
use settings::Settings;

/// The page that names a directory's index.
const INDEX: &str = "index.html";
/// The root's optional custom not-found page.
const NOT_FOUND_PAGE: &str = "404.html";
/// The one dot-directory served even when dotfiles are hidden: RFC 8615
/// well-known URIs.
const WELL_KNOWN: &str = ".well-known";
/// Files up to this size are compressed before the response starts, so it
/// carries an exact `Content-Length`; larger ones are compressed while they
/// stream, with chunked framing.
const BUFFERED_COMPRESSION_MAX: u64 = 1024 * 1024;
/// Output buffered between a streaming compressor and the response body.
const STREAM_BUFFER: usize = 64 * 1024;
/// The content type of generated pages.
const HTML: &str = wasmhttpd_pages::CONTENT_TYPE;

struct Component;

// The generated export glue is `unsafe` FFI; the handler itself is safe code.
#[allow(unsafe_code)]
mod export {
    use super::{Component, bindings};
    bindings::export!(Component with_types_in bindings);
}

impl Guest for Component {
    fn handle(request: IncomingRequest, outparam: ResponseOutparam) {
        let request = Request::read(request);
        let head_only = matches!(request.method, Method::Head);
        let reply = INSTANCE.with(|instance| match &instance.settings {
            Ok(settings) => respond(&request, settings, instance.root.as_ref()),
            Err(err) => {
                eprintln!("wasmhttpd-guest: {err}");
                error_reply(500, "Internal Server Error", "The server is misconfigured.")
            }
        });
        reply.send(outparam, head_only);
    }
}

/// What stays the same for as long as an instance lives, read from the
/// host at its first request: an instance that serves many (`--reuse`,
/// `wasmtime serve --max-instance-reuse-count`) asks once.
struct Instance {
    /// The settings from the environment, which is fixed at instantiation.
    settings: Result<Settings, settings::InvalidSetting>,
    /// The preopened web root.
    root: Option<Descriptor>,
}

thread_local! {
    static INSTANCE: Instance = Instance {
        settings: Settings::from_env(environment::get_environment()),
        root: web_root(),
    };
}

/// What the guest uses of a request, read from the host once: each call
/// across the component boundary costs more than a lookup here.
struct Request {
    method: Method,
    /// The path and query; `/` when the request had none.
    target: String,
    /// The header field lines.
    fields: Vec<(String, Vec<u8>)>,
}

impl Request {
    fn read(request: IncomingRequest) -> Request {
        Request {
            method: request.method(),
            // A request without a path (a host may pass one whose target is
            // not origin-form, such as `..`) resolves to nothing: 400.
            target: request.path_with_query().unwrap_or_default(),
            fields: request.headers().entries(),
        }
    }

    /// All field lines named `name`, joined with commas.
    fn header(&self, name: &str) -> Option<String> {
        let mut values = self
            .fields
            .iter()
            .filter(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| String::from_utf8_lossy(value));
        let first = values.next()?.into_owned();
        Some(values.fold(first, |mut joined, value| {
            joined.push_str(", ");
            joined.push_str(&value);
            joined
        }))
    }
}

/// What a request is answered with.
struct Reply {
    status: u16,
    /// Every header but `Content-Length`, which [`Body`] decides.
    headers: Vec<(&'static str, String)>,
    body: Body,
}

/// A response body.
enum Body {
    /// None at all: a 304.
    Empty,
    /// Generated bytes.
    Bytes(Vec<u8>),
    /// `length` bytes of a file from `offset`.
    File {
        file: Descriptor,
        offset: u64,
        length: u64,
    },
    /// A whole file compressed as it is sent; its length is known only at
    /// the end, so the host frames it chunked.
    Compressed { file: Descriptor, coding: Coding },
}

/// A regular file opened below the root.
struct File {
    descriptor: Descriptor,
    /// Its path relative to the root.
    path: String,
    size: u64,
    validators: Validators,
}

/// The form a file is sent in.
enum Representation {
    /// The bytes as they are on disk.
    Identity,
    /// A sibling file holding the bytes in this coding.
    Precompressed(Coding, File),
    /// The bytes compressed by the guest.
    OnTheFly(Coding),
}

fn respond(request: &Request, settings: &Settings, root: Option<&Descriptor>) -> Reply {
    if !matches!(request.method, Method::Get | Method::Head) {
        let mut reply = error_reply(405, "Method Not Allowed", wasmhttpd_pages::detail(405));
        reply.headers.push(("allow", "GET, HEAD".to_owned()));
        return reply;
    }
    let Some(root) = root else {
        return error_reply(500, "Internal Server Error", "No web root is mounted.");
    };
    let target = &request.target;
    let resolved = match path::resolve(target) {
        Ok(resolved) => resolved,
        Err(err) => return error_reply(400, "Bad Request", &err.to_string()),
    };
    // Dotfiles (.git/, .env, .htpasswd) are private to the site unless enabled.
    if !settings.dotfiles && resolved.segments.iter().any(|s| hidden(s)) {
        return not_found(root);
    }
    let relative = resolved.relative();
    // The root is a directory; only what lies below it needs a look.
    let found = if resolved.segments.is_empty() {
        Some(Found::Directory)
    } else {
        find(root, &relative)
    };
    match found {
        Some(Found::Directory) if !resolved.trailing_slash => {
            let mut location = resolved.directory_url();
            if let Some((_, query)) = target.split_once('?') {
                location.push('?');
                location.push_str(query);
            }
            let mut reply = error_reply(301, "Moved Permanently", "This directory has moved.");
            reply.headers.push(("location", location));
            reply
        }
        Some(Found::Directory) => match open_file(root, &format!("{relative}/{INDEX}")) {
            Some(index) => serve_file(request, settings, root, index),
            None if settings.directory_listing => {
                list_directory(root, &resolved, settings).unwrap_or_else(|| not_found(root))
            }
            None => not_found(root),
        },
        Some(Found::File(file)) => serve_file(request, settings, root, file),
        // Missing, a symlink that leaves the root, a FIFO, a device: none is served.
        None => not_found(root),
    }
}

/// A name that is private unless dotfiles are enabled.
fn hidden(name: &str) -> bool {
    name.starts_with('.') && name != WELL_KNOWN
}

/// Answers a GET or HEAD for `file`: negotiates the coding, evaluates the
/// preconditions against the chosen representation, then applies `Range`.
fn serve_file(request: &Request, settings: &Settings, root: &Descriptor, file: File) -> Reply {
    let content_type = content_type(&file.path);
    // Headers every response for this file carries, 304 included.
    let mut shared = Vec::new();
    if let Some(cache_control) = &settings.cache_control {
        shared.push(("cache-control", cache_control.clone()));
    }
    let negotiable =
        settings.precompressed || (settings.compression && encoding::compressible(&content_type));
    if negotiable {
        shared.push(("vary", "accept-encoding".to_owned()));
    }
    let representation = if negotiable {
        negotiate(request, settings, root, &file, &content_type)
    } else {
        Representation::Identity
    };
    let validators = match &representation {
        Representation::Identity => file.validators.clone(),
        Representation::Precompressed(coding, sibling) => {
            sibling.validators.encoded(coding.token(), false)
        }
        Representation::OnTheFly(coding) => file.validators.encoded(coding.token(), true),
    };
    let mut headers = validator_headers(&validators);
    headers.extend(shared);
    // Only GET and HEAD reach here: both are safe methods.
    match conditions(request).evaluate(&validators, true) {
        Outcome::Proceed => {}
        Outcome::NotModified => {
            return Reply {
                status: 304,
                headers,
                body: Body::Empty,
            };
        }
        Outcome::PreconditionFailed => {
            return error_reply(
                412,
                "Precondition Failed",
                "The resource does not match the request's preconditions.",
            );
        }
    }
    headers.push(("content-type", content_type));
    match representation {
        Representation::Identity => with_range(request, file, headers),
        Representation::Precompressed(coding, sibling) => {
            headers.push(("content-encoding", coding.token().to_owned()));
            Reply {
                status: 200,
                headers,
                body: Body::File {
                    length: sibling.size,
                    file: sibling.descriptor,
                    offset: 0,
                },
            }
        }
        Representation::OnTheFly(coding) => {
            headers.push(("content-encoding", coding.token().to_owned()));
            let body = if file.size <= BUFFERED_COMPRESSION_MAX {
                match compress_whole(&file.descriptor, coding) {
                    Ok(bytes) => Body::Bytes(bytes),
                    Err(err) => {
                        eprintln!("wasmhttpd-guest: compressing {}: {err}", file.path);
                        return error_reply(
                            500,
                            "Internal Server Error",
                            "The file could not be read.",
                        );
                    }
                }
            } else {
                Body::Compressed {
                    file: file.descriptor,
                    coding,
                }
            };
            Reply {
                status: 200,
                headers,
                body,
            }
        }
    }
}

/// Chooses how to send `file` from what the client accepts and what the
/// settings and the root offer: a precompressed sibling (as new as the
/// file) first, then
/// compression on the fly (brotli before gzip in each), else the file as it is.
fn negotiate(
    request: &Request,
    settings: &Settings,
    root: &Descriptor,
    file: &File,
    content_type: &str,
) -> Representation {
    // A range is always a range of the file as it is, never of an encoding.
    if request.header("range").is_some() {
        return Representation::Identity;
    }
    let accept = AcceptEncoding::parse(request.header("accept-encoding").as_deref());
    let mut offered = Vec::new();
    let mut siblings = Vec::new();
    if settings.precompressed {
        for coding in Coding::ALL {
            if accept.quality(coding) == 0 {
                continue;
            }
            // A sibling older than the file was not made from this version of it.
            let sibling = open_file(root, &format!("{}{}", file.path, coding.extension()))
                .filter(|sibling| sibling.validators.modified >= file.validators.modified);
            if let Some(sibling) = sibling {
                offered.push(coding);
                siblings.push(Some(sibling));
            }
        }
    }
    if settings.compression
        && encoding::compressible(content_type)
        && file.size >= encoding::MIN_COMPRESS_SIZE
    {
        for coding in Coding::ALL {
            offered.push(coding);
            siblings.push(None);
        }
    }
    match accept.choose(&offered) {
        None => Representation::Identity,
        Some(index) => match siblings.swap_remove(index) {
            Some(sibling) => Representation::Precompressed(offered[index], sibling),
            None => Representation::OnTheFly(offered[index]),
        },
    }
}

/// Compresses a whole (small) file in memory.
fn compress_whole(file: &Descriptor, coding: Coding) -> std::io::Result<Vec<u8>> {
    let input = file
        .read_via_stream(0)
        .map_err(|code| std::io::Error::other(format!("{code:?}")))?;
    let mut out = Vec::new();
    encoding::compress(coding, &mut stream::Reader(&input), &mut out)?;
    Ok(out)
}

/// Answers with the whole file, or the part its `Range` asks for (when its
/// `If-Range`, if any, still matches the file).
fn with_range(request: &Request, file: File, mut headers: Vec<(&'static str, String)>) -> Reply {
    headers.push(("accept-ranges", "bytes".to_owned()));
    let applies = request
        .header("if-range")
        .is_none_or(|tag| file.validators.matches_if_range(&tag));
    let ranged = match request.header("range") {
        Some(value) if applies => range::evaluate(&value, file.size),
        _ => range::Ranged::Full,
    };
    let (status, offset, length) = match ranged {
        range::Ranged::Full => (200, 0, file.size),
        range::Ranged::Partial { start, end } => {
            headers.push((
                "content-range",
                format!("bytes {start}-{end}/{}", file.size),
            ));
            (206, start, end - start + 1)
        }
        range::Ranged::Unsatisfiable => {
            let mut reply = error_reply(
                416,
                "Range Not Satisfiable",
                "The requested range is outside the file.",
            );
            reply
                .headers
                .push(("content-range", format!("bytes */{}", file.size)));
            return reply;
        }
    };
    Reply {
        status,
        headers,
        body: Body::File {
            file: file.descriptor,
            offset,
            length,
        },
    }
}

/// The listing of a directory that has no index page; `None` if it cannot be read.
fn list_directory(
    root: &Descriptor,
    resolved: &path::Resolved,
    settings: &Settings,
) -> Option<Reply> {
    let dir = root
        .open_at(
            PathFlags::SYMLINK_FOLLOW,
            &resolved.relative(),
            OpenFlags::DIRECTORY,
            DescriptorFlags::READ,
        )
        .ok()?;
    let entries = dir.read_directory().ok()?;
    let mut rows = Vec::new();
    // An entry that cannot be read (a name that is not UTF-8) ends the listing.
    while let Ok(Some(entry)) = entries.read_directory_entry() {
        if !settings.dotfiles && hidden(&entry.name) {
            continue;
        }
        // Followed like a request would be: a link out of the root fails
        // here and is left out, as are FIFOs and devices.
        let Ok(meta) = dir.stat_at(PathFlags::SYMLINK_FOLLOW, &entry.name) else {
            continue;
        };
        let directory = match meta.type_ {
            DescriptorType::Directory => true,
            DescriptorType::RegularFile => false,
            _ => continue,
        };
        rows.push(html::Entry {
            name: entry.name,
            directory,
            size: meta.size,
            modified: meta.data_modification_timestamp.map(|t| t.seconds),
        });
    }
    drop(entries);
    let mut url_path = String::from("/");
    for segment in &resolved.segments {
        url_path.push_str(segment);
        url_path.push('/');
    }
    Some(Reply {
        status: 200,
        headers: vec![
            ("content-type", HTML.to_owned()),
            // A listing changes with every file added: always revalidate.
            ("cache-control", "no-cache".to_owned()),
        ],
        body: Body::Bytes(html::listing(&url_path, rows)),
    })
}

/// The request's conditional headers.
fn conditions(request: &Request) -> Conditions {
    let field = |name: &str| request.header(name);
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

/// What a path below the root names.
enum Found {
    Directory,
    File(File),
}

/// Opens `relative` and tells what it is: a directory, a regular file
/// (kept open to be served), or `None` for anything else or nothing.
///
/// Opened first and looked at after, through the descriptor: wasmhttpd
/// opens only regular files and directories for a guest, so no open here
/// waits on a FIFO (under `wasmtime serve`, which opens whatever is named,
/// keep FIFOs and devices out of the root).
fn find(root: &Descriptor, relative: &str) -> Option<Found> {
    let descriptor = root
        .open_at(
            PathFlags::SYMLINK_FOLLOW,
            relative,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        )
        .ok()?;
    let meta = descriptor.stat().ok()?;
    match meta.type_ {
        DescriptorType::Directory => Some(Found::Directory),
        DescriptorType::RegularFile => {
            let modified = meta
                .data_modification_timestamp
                .map(|t| (t.seconds, t.nanoseconds));
            Some(Found::File(File {
                descriptor,
                path: relative.to_owned(),
                size: meta.size,
                validators: Validators::new(meta.size, modified),
            }))
        }
        _ => None,
    }
}

/// Opens `relative` if it is a regular file.
fn open_file(root: &Descriptor, relative: &str) -> Option<File> {
    match find(root, relative)? {
        Found::File(file) => Some(file),
        Found::Directory => None,
    }
}

/// 404, with the root's `404.html` when it has one.
fn not_found(root: &Descriptor) -> Reply {
    match open_file(root, NOT_FOUND_PAGE) {
        Some(page) => Reply {
            status: 404,
            headers: vec![("content-type", HTML.to_owned())],
            body: Body::File {
                length: page.size,
                file: page.descriptor,
                offset: 0,
            },
        },
        None => error_reply(404, "Not Found", wasmhttpd_pages::detail(404)),
    }
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
    Reply {
        status,
        headers: vec![("content-type", HTML.to_owned())],
        body: Body::Bytes(html::error_page(status, title, detail)),
    }
}

impl Reply {
    /// Sends the head, then (unless `head_only`) the body.
    fn send(self, outparam: ResponseOutparam, head_only: bool) {
        let Reply {
            status,
            mut headers,
            body,
        } = self;
        let length = match &body {
            Body::Empty | Body::Compressed { .. } => None,
            Body::Bytes(bytes) => Some(bytes.len() as u64),
            Body::File { length, .. } => Some(*length),
        };
        if let Some(length) = length {
            headers.push(("content-length", length.to_string()));
        }
        headers.extend(
            wasmhttpd_pages::SECURITY_HEADERS
                .iter()
                .map(|(name, value)| (*name, (*value).to_owned())),
        );
        let fields: Vec<(String, Vec<u8>)> = headers
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.into_bytes()))
            .collect();
        let fields = Fields::from_list(&fields).expect("response headers are valid");
        let response = OutgoingResponse::new(fields);
        // A new response is a 200 already: one call fewer for most.
        if status != 200 {
            response
                .set_status_code(status)
                .expect("status code is valid");
        }
        let outgoing = response.body().expect("response body is taken once");
        ResponseOutparam::set(outparam, Ok(response));
        if head_only {
            // A HEAD response has the GET response's headers and no body.
            drop(outgoing);
            return;
        }
        let stream = outgoing.write().expect("body stream is taken once");
        let written = match &body {
            Body::Empty => Ok(()),
            Body::Bytes(bytes) => stream::write_all(&stream, bytes),
            Body::File {
                file,
                offset,
                length,
            } if *length <= stream::ONE_WRITE => {
                stream::send_small(&stream, file, *offset, *length)
            }
            Body::File {
                file,
                offset,
                length,
            } => stream::splice_file(&stream, file, *offset, *length),
            Body::Compressed { file, coding } => compress_into(&stream, file, *coding),
        };
        drop(stream);
        if written.is_ok() {
            // Fails only when the length written differs from Content-Length;
            // the host then closes the connection.
            let _ = OutgoingBody::finish(outgoing, None);
        }
    }
}

/// Compresses `file` into the response body as it reads it.
fn compress_into(
    output: &bindings::wasi::io::streams::OutputStream,
    file: &Descriptor,
    coding: Coding,
) -> std::io::Result<()> {
    let input = file
        .read_via_stream(0)
        .map_err(|code| std::io::Error::other(format!("{code:?}")))?;
    let mut writer = BufWriter::with_capacity(STREAM_BUFFER, stream::Writer(output));
    encoding::compress(coding, &mut stream::Reader(&input), &mut writer)
}
