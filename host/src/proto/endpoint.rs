//! The host's own small HTTP/1.1 listeners, apart from the guests'
//! traffic: the metrics endpoint with the liveness and readiness probes,
//! and the redirect to HTTPS. Each answers
//! every request from its head alone (a request with a body, or a bad
//! head, ends the connection), on the same strict parser as the main
//! front end.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::{Instrument, debug, error, info_span};

use super::role::{self, BodyKind, Framing, RequestHead};
use crate::config::{DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_HEAD_BYTES, DEFAULT_WRITE_TIMEOUT};
use crate::metrics::{self, Metrics};

/// What an endpoint answers: status, header fields, body.
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// Header fields besides the framing and `Date`.
    pub headers: HeaderMap,
    /// The body (not sent for `HEAD`).
    pub body: String,
}

/// How an endpoint answers a request head.
pub type Handler = Arc<dyn Fn(&RequestHead) -> Reply + Send + Sync>;

/// Serves `handler` on `listener` until the future is dropped; `name`
/// names the endpoint's spans.
pub async fn serve(listener: TcpListener, name: &'static str, handler: Handler) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let handler = handler.clone();
                tokio::spawn(
                    async move {
                        if let Err(err) = answer(stream, &handler).await {
                            debug!(cause = %err, "endpoint connection ended");
                        }
                    }
                    .instrument(info_span!("endpoint", name, %peer)),
                );
            }
            Err(err) => {
                error!(name, cause = %err, "endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Answers the requests of one connection.
async fn answer(mut stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    let authority = stream.local_addr()?.to_string();
    let mut buf = Vec::with_capacity(1024);
    loop {
        let parsed = loop {
            match role::parse_request(&buf, DEFAULT_MAX_HEAD_BYTES, &authority) {
                Ok(Some(parsed)) => break Ok(parsed),
                Ok(None) => {}
                Err(err) => break Err(err),
            }
            let read = timeout(DEFAULT_HEADER_TIMEOUT, stream.read_buf(&mut buf)).await;
            match read {
                Ok(Ok(0)) | Err(_) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(err),
            }
        };
        let (head, len) = match parsed {
            Ok(parsed) => parsed,
            Err(err) => {
                let status = err.status().unwrap_or(StatusCode::BAD_REQUEST);
                let out = head_bytes(status, &HeaderMap::new(), 0, false, Version::HTTP_11);
                return write(&mut stream, &out).await;
            }
        };
        buf.drain(..len);
        // These endpoints take no bodies: one ends the connection.
        let keep_alive = head.keep_alive && head.body == BodyKind::Empty;
        let reply = handler(&head);
        let mut out = head_bytes(
            reply.status,
            &reply.headers,
            reply.body.len() as u64,
            keep_alive,
            head.version,
        );
        if head.method != http::Method::HEAD {
            out.extend_from_slice(reply.body.as_bytes());
        }
        write(&mut stream, &out).await?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// A response head with a `Content-Length` of `length`.
fn head_bytes(
    status: StatusCode,
    headers: &HeaderMap,
    length: u64,
    keep_alive: bool,
    version: Version,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    super::with_date(|date| {
        role::encode_response_head(
            &mut out,
            status,
            headers,
            Framing::Length(length),
            keep_alive,
            version,
            date,
        );
    });
    out
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    match timeout(DEFAULT_WRITE_TIMEOUT, stream.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// `--http-redirect`: every request answered `308` to the same host and
/// target on `https`, at `port` (left out when 443).
pub fn redirect_to_https(port: u16) -> Handler {
    Arc::new(move |head: &RequestHead| {
        let host = head.uri.host().unwrap_or("localhost");
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let authority = if port == 443 {
            host
        } else {
            format!("{host}:{port}")
        };
        let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{authority}{target}");
        let mut headers = HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_str(&location) {
            headers.insert(http::header::LOCATION, value);
        }
        Reply {
            status: StatusCode::PERMANENT_REDIRECT,
            headers,
            body: String::new(),
        }
    })
}

/// The metrics' path on the metrics endpoint.
pub const METRICS: &str = "/metrics";
/// The liveness probe's path: 200 while the process serves.
pub const HEALTHZ: &str = "/healthz";
/// The readiness probe's path: 200 while the server takes requests, 503
/// from the moment its shutdown begins.
pub const READYZ: &str = "/readyz";

/// Serves the metrics endpoint on `listener` until the future is dropped:
/// the metrics on `GET` (and `HEAD`) of [`METRICS`], the probes at
/// [`HEALTHZ`] and [`READYZ`] (`ready` says which), 404 elsewhere, 405
/// for other methods. The endpoint outlives the server's shutdown, so a
/// load balancer sees `/readyz` turn 503 while responses finish.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: impl Fn() -> bool + Send + Sync + 'static,
) {
    let handler = Arc::new(move |head: &RequestHead| {
        let mut headers = HeaderMap::new();
        let path = head.uri.path();
        let (status, body) = if ![METRICS, HEALTHZ, READYZ].contains(&path) {
            (StatusCode::NOT_FOUND, String::new())
        } else if head.method != Method::GET && head.method != Method::HEAD {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            (StatusCode::METHOD_NOT_ALLOWED, String::new())
        } else if path == HEALTHZ {
            (StatusCode::OK, "ok\n".to_owned())
        } else if path == READYZ {
            match ready() {
                true => (StatusCode::OK, "ready\n".to_owned()),
                false => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting down\n".to_owned(),
                ),
            }
        } else {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            (StatusCode::OK, metrics.encode())
        };
        Reply {
            status,
            headers,
            body,
        }
    });
    serve(listener, "metrics", handler).await;
}
