//! A WASIp3 guest (`wasi:http/handler@0.3.0`) for the integration tests.
//!
//! | path                  | behaviour                                                   |
//! |-----------------------|-------------------------------------------------------------|
//! | `/ok`                 | 200 `ok`                                                    |
//! | `/echo`               | 200, the request body streamed back as it arrives, with     |
//! |                       | `x-method`; trailers `x-echoed: BYTES`                      |
//! | `/stream?n=N&ms=D`    | N chunks `chunk i\n`, D ms apart, without Content-Length;   |
//! |                       | trailers `x-chunks: N`                                      |
//! | `/sleep?ms=D`         | waits D ms (forever without `ms`), then 200 `slept`         |
//! | `/hold?ms=D`          | turns on the component model's backpressure (the instance  |
//! |                       | takes no new request), waits D ms, turns it off; `held`     |
//! | `/count`              | after 1 ms, `served S running R peak P`: requests this      |
//! |                       | instance has taken, those in it now (this one included),    |
//! |                       | the most at once                                            |
//! | `/loop`               | spins forever before answering; under any route prefix      |
//! | `/trap`               | panics (a wasm trap) before answering                       |
//! | `/alloc`              | allocates until memory runs out                             |
//! | `/env?name=N`         | the value of the environment variable N, or 404             |
//! | `/read?path=P`        | the file P read through the preopened root, or 404          |
//! | `/open?path=P`        | opens P for reading through WASIp3's `wasi:filesystem`;     |
//! |                       | `opened`, or `error CODE`                                   |
//! | `/write`              | tries to create `/p3-written`; answers `written` or         |
//! |                       | `refused ERROR`                                             |
//! | `/fetch?url=URL`      | sends `GET URL` (`http://HOST[:PORT]/PATH`) through the     |
//! |                       | host; 200 `status N` and the body, or `error CODE`          |
//! | `/first-part?url=URL` | reads the first part of the request body to arrive, then    |
//! |                       | sends `GET URL`, then reads the rest; `first N total M`     |
//! | `/print`              | writes a line to stdout and one to stderr, then `ok`        |
//! | `/error`              | returns the wasi:http error `internal-error` instead of a   |
//! |                       | response                                                    |
//! | anything else         | 404 `not found`                                             |

use std::cell::Cell;

use wasip3::clocks::monotonic_clock;
use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Scheme};
use wasip3::wit_bindgen::{self, StreamResult};
use wasip3::{wit_future, wit_stream};

/// `wasi:keyvalue@0.2.0-draft`, as `wasmtime serve -S keyvalue` links it.
#[allow(missing_docs, unsafe_code)]
mod keyvalue {
    wasip3::wit_bindgen::generate!({
        path: "../../../wit",
        world: "wasmhttpd:guest/keyvalue-draft",
        runtime_path: "wasip3::wit_bindgen::rt",
        generate_all,
    });
}

struct Component;

// The generated export glue is `unsafe` FFI; the handler itself is safe code.
#[allow(unsafe_code)]
mod export {
    use super::Component;
    wasip3::http::service::export!(Component);
}

thread_local! {
    static SERVED: Cell<u64> = const { Cell::new(0) };
    static RUNNING: Cell<u64> = const { Cell::new(0) };
    static PEAK: Cell<u64> = const { Cell::new(0) };
}

/// Counts a request as in the instance while it lives.
struct Running;

impl Running {
    fn enter() -> Running {
        SERVED.set(SERVED.get() + 1);
        let running = RUNNING.get() + 1;
        RUNNING.set(running);
        PEAK.set(PEAK.get().max(running));
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.set(RUNNING.get() - 1);
    }
}

impl wasip3::exports::http::handler::Guest for Component {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let _running = Running::enter();
        let target = request.get_path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        match path {
            "/ok" => Ok(text(200, "ok")),
            "/echo" => Ok(echo(request)),
            "/stream" => Ok(stream(param(query, "n", 3), param(query, "ms", 100))),
            "/sleep" => {
                match query_value(query, "ms").and_then(|ms| ms.parse::<u64>().ok()) {
                    Some(ms) => monotonic_clock::wait_for(ms * 1_000_000).await,
                    None => loop {
                        monotonic_clock::wait_for(u64::MAX).await;
                    },
                }
                Ok(text(200, "slept"))
            }
            "/hold" => {
                wit_bindgen::backpressure_inc();
                monitor_wait(param(query, "ms", 1000)).await;
                wit_bindgen::backpressure_dec();
                Ok(text(200, "held"))
            }
            "/count" => {
                // Answered after a wait, so the instance has gone back to
                // waiting (and can take another request) by the time the
                // client has the answer.
                monitor_wait(1).await;
                Ok(text(
                    200,
                    &format!(
                        "served {} running {} peak {}",
                        SERVED.get(),
                        RUNNING.get(),
                        PEAK.get()
                    ),
                ))
            }
            // Under any route prefix.
            path if path.ends_with("/loop") => loop {
                std::hint::spin_loop();
            },
            "/trap" => panic!("trap requested"),
            "/alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                }
            }
            "/env" => Ok(
                match query_value(query, "name").and_then(|name| std::env::var(name).ok()) {
                    Some(value) => text(200, &value),
                    None => text(404, "no such variable"),
                },
            ),
            "/read" => Ok(
                match std::fs::read(query_value(query, "path").unwrap_or_default()) {
                    Ok(bytes) => body(200, bytes),
                    Err(err) => text(404, &format!("cannot read: {err}")),
                },
            ),
            "/open" => Ok(text(
                200,
                &open(query_value(query, "path").unwrap_or_default()).await,
            )),
            "/write" => Ok(match std::fs::write("/p3-written", b"x") {
                Ok(()) => text(200, "written"),
                Err(err) => text(200, &format!("refused {err}")),
            }),
            "/print" => {
                println!("p3 guest line on stdout");
                eprintln!("p3 guest line on stderr");
                Ok(text(200, "ok"))
            }
            "/error" => Err(ErrorCode::InternalError(Some("asked for".to_owned()))),
            "/kv-incr" => {
                use keyvalue::wasi::keyvalue0_2_0_draft::{atomics, store};
                let key = query_value(query, "key").unwrap_or("count");
                let answer = store::open("")
                    .and_then(|bucket| atomics::increment(&bucket, key, 1))
                    .map_or_else(|err| format!("error {err:?}"), |n| format!("value {n}"));
                Ok(text(200, &answer))
            }
            "/fetch" => Ok(fetch(query_value(query, "url").unwrap_or_default()).await),
            "/first-part" => {
                let url = query_value(query, "url").unwrap_or_default().to_owned();
                let (_done_writer, done) = wit_future::new(|| Ok(()));
                let (mut incoming, _trailers) = Request::consume_body(request, done);
                let (_, first) = incoming.read(Vec::with_capacity(64 * 1024)).await;
                fetch(&url).await;
                let rest = incoming.collect().await;
                Ok(text(
                    200,
                    &format!("first {} total {}", first.len(), first.len() + rest.len()),
                ))
            }
            _ => Ok(text(404, "not found")),
        }
    }
}

/// Opens `path` beneath the root preopened at `/` through WASIp3's
/// `wasi:filesystem`; says how it went.
async fn open(path: &str) -> String {
    use wasip3::filesystem::preopens;
    use wasip3::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};
    let Some((root, _)) = preopens::get_directories()
        .into_iter()
        .find(|(_, name)| name == "/")
    else {
        return "error no root".to_owned();
    };
    match root
        .open_at(
            PathFlags::SYMLINK_FOLLOW,
            path.to_owned(),
            OpenFlags::empty(),
            DescriptorFlags::READ,
        )
        .await
    {
        Ok(_) => "opened".to_owned(),
        Err(code) => format!("error {code:?}"),
    }
}

/// Waits `ms` milliseconds.
async fn monitor_wait(ms: u64) {
    monotonic_clock::wait_for(ms * 1_000_000).await;
}

/// A response of `status` whose body is `text` and a newline.
fn text(status: u16, text: &str) -> Response {
    body(status, format!("{text}\n").into_bytes())
}

/// A response of `status` with `bytes` as its body and its length.
fn body(status: u16, bytes: Vec<u8>) -> Response {
    let fields = Fields::from_list(&[
        ("content-type".to_owned(), b"text/plain".to_vec()),
        (
            "content-length".to_owned(),
            bytes.len().to_string().into_bytes(),
        ),
    ])
    .expect("valid fields");
    let (mut writer, reader) = wit_stream::new();
    let (trailers_writer, trailers) = wit_future::new(|| Ok(None));
    drop(trailers_writer);
    let (response, _sent) = Response::new(fields, Some(reader), trailers);
    response.set_status_code(status).expect("valid status");
    wit_bindgen::spawn_local(async move {
        writer.write_all(bytes).await;
    });
    response
}

/// Streams the request's body back as it arrives; the trailers count it.
fn echo(request: Request) -> Response {
    let method = match request.get_method() {
        Method::Get => "GET".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        other => format!("{other:?}"),
    };
    let (_done_writer, done) = wit_future::new(|| Ok(()));
    let (mut incoming, _incoming_trailers) = Request::consume_body(request, done);
    let fields =
        Fields::from_list(&[("x-method".to_owned(), method.into_bytes())]).expect("valid fields");
    let (mut writer, reader) = wit_stream::new();
    let (trailers_writer, trailers) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(fields, Some(reader), trailers);
    wit_bindgen::spawn_local(async move {
        let mut echoed = 0_usize;
        loop {
            let (result, piece) = incoming.read(Vec::with_capacity(64 * 1024)).await;
            match result {
                StreamResult::Complete(_) => {
                    echoed += piece.len();
                    if !writer.write_all(piece).await.is_empty() {
                        return;
                    }
                }
                StreamResult::Dropped | StreamResult::Cancelled => break,
            }
        }
        drop(writer);
        let _ = trailers_writer
            .write(Ok(Some(trailer("x-echoed", &echoed.to_string()))))
            .await;
    });
    response
}

/// Sends `GET url` and says what came back.
async fn fetch(url: &str) -> Response {
    let Some(rest) = url.strip_prefix("http://") else {
        return text(400, "give an http:// URL");
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (_trailers_writer, trailers) = wit_future::new(|| Ok(None));
    let (request, _sent) = Request::new(Fields::new(), None, trailers, None);
    let set = request
        .set_scheme(Some(&Scheme::Http))
        .and(request.set_authority(Some(authority)))
        .and(request.set_path_with_query(Some(if path.is_empty() { "/" } else { path })));
    if set.is_err() {
        return text(400, "not a URL the guest can send");
    }
    match client::send(request).await {
        Ok(response) => {
            let status = response.get_status_code();
            let (_done_writer, done) = wit_future::new(|| Ok(()));
            let (body, _trailers) = Response::consume_body(response, done);
            let body = String::from_utf8_lossy(&body.collect().await).into_owned();
            text(200, &format!("status {status}\n{body}"))
        }
        Err(code) => text(200, &format!("error {code:?}")),
    }
}

/// `n` chunks, `ms` milliseconds apart, then trailers saying how many.
fn stream(n: u64, ms: u64) -> Response {
    let (mut writer, reader) = wit_stream::new();
    let (trailers_writer, trailers) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(Fields::new(), Some(reader), trailers);
    wit_bindgen::spawn_local(async move {
        for i in 0..n {
            if i > 0 {
                monotonic_clock::wait_for(ms * 1_000_000).await;
            }
            if !writer
                .write_all(format!("chunk {i}\n").into_bytes())
                .await
                .is_empty()
            {
                return;
            }
        }
        drop(writer);
        let _ = trailers_writer
            .write(Ok(Some(trailer("x-chunks", &n.to_string()))))
            .await;
    });
    response
}

/// Trailers of one field.
fn trailer(name: &str, value: &str) -> Fields {
    Fields::from_list(&[(name.to_owned(), value.as_bytes().to_vec())]).expect("valid trailer")
}

/// The value of `name` in `query`, if there.
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The number `name` in `query`, or `default`.
fn param(query: &str, name: &str, default: u64) -> u64 {
    query_value(query, name)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}
