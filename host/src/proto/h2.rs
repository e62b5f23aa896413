//! The HTTP/2 front end: hyper's server (`hyper::server::conn::http2`,
//! the `h2` crate underneath) on a TLS connection that chose `h2` by ALPN,
//! or a cleartext one that opened with the HTTP/2 preface (prior
//! knowledge; no `Upgrade: h2c`).
//!
//! Each stream is one request for the dispatch, exactly as an HTTP/1.1
//! request is: its body streams to the guest (the dispatch applies the
//! body limit), the guest's response streams back, and the access log line
//! is written when the response body is done. The limits:
//!
//! - `--h2-max-streams` streams open at once per connection (more are
//!   refused with `REFUSED_STREAM`, not queued);
//! - the header list at most `--max-head` bytes;
//! - flow-control windows of [`STREAM_WINDOW`] per stream and
//!   [`CONNECTION_WINDOW`] per connection;
//! - a connection with no stream open for `--keep-alive-timeout` is closed
//!   with GOAWAY, and one whose peer stops answering pings is dropped;
//! - rapid reset (CVE-2023-44487) and floods of bad frames: at most
//!   [`MAX_PENDING_RESETS`] streams reset before the server saw them, and
//!   [`MAX_LOCAL_RESETS`] streams the server had to reset, before the
//!   connection ends with GOAWAY; CONTINUATION floods end at the header
//!   list limit.
//!
//! A WebSocket opens on a stream by extended CONNECT (RFC 8441,
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL`) into the same guest export as over
//! HTTP/1.1, so a browser on an `h2` connection needs no second one.
//!
//! On shutdown the connection sends GOAWAY and its streams in flight have
//! `--shutdown-grace` to finish.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::websocket;
use crate::dispatch::websocket::Upgrade;
use crate::dispatch::{Connection, Dispatch, Exchange, Response, ResponseBody, page};
use crate::wasm::guest::BodyError;

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Flow-control window of each stream: as much of a request body as a
/// client may send before the guest reads it.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// Flow-control window of a connection, across its streams.
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams a client may reset before the server accepted them, at once:
/// past it, the connection ends (the rapid-reset attack).
pub const MAX_PENDING_RESETS: usize = 20;
/// Streams the server may have to reset for a client's errors before the
/// connection ends.
pub const MAX_LOCAL_RESETS: usize = 100;
/// Interval of keep-alive pings on a connection with streams open; a peer
/// that does not answer one within the same time is gone.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);

/// Whether the cleartext connection `stream` opens with the HTTP/2
/// preface: looked at without reading, so either front end gets every
/// byte. Waits while what came is the start of the preface; false at
/// `deadline` or when the server shuts down.
pub(crate) async fn prior_knowledge(
    stream: &tokio::net::TcpStream,
    deadline: tokio::time::Instant,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let mut first = [0_u8; PREFACE.len()];
    loop {
        let peeked = tokio::select! {
            peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => peeked,
            _ = shutdown.changed() => return false,
        };
        let n = match peeked {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        if first[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // A part of the preface: the rest is on its way.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves the HTTP/2 connection `io` until the client closes it, it stays
/// idle past the keep-alive timeout, or the server shuts down.
pub(crate) async fn serve<S>(io: S, conn: Connection, dispatch: Arc<Dispatch>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = dispatch.limits();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_head).unwrap_or(u32::MAX))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_RESETS)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_INTERVAL)
        // WebSocket over HTTP/2 (RFC 8441).
        .enable_connect_protocol();
    let open = Arc::new(AtomicUsize::new(0));
    let service = {
        let (dispatch, open) = (dispatch.clone(), open.clone());
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let (dispatch, open) = (dispatch.clone(), open.clone());
            async move { Ok::<_, Infallible>(stream(&dispatch, conn, request, open).await) }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut shutdown = dispatch.shutdown_signal();
    let idle = limits.keep_alive_timeout;
    let mut closing = false;
    loop {
        let idle_check = tokio::time::sleep(idle);
        tokio::select! {
            done = connection.as_mut() => {
                if let Err(err) = done {
                    debug!(cause = %err, "HTTP/2 connection ended");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = idle_check, if !closing => {
                if open.load(Ordering::Relaxed) == 0 {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// One stream: its exchange with the dispatch, and its response with the
/// access log line to be written when the body is done.
async fn stream(
    dispatch: &Dispatch,
    conn: Connection,
    request: http::Request<Incoming>,
    open: Arc<AtomicUsize>,
) -> http::Response<Logged> {
    let exchange = dispatch.begin(
        request.method(),
        request.uri(),
        Version::HTTP_2,
        request.headers(),
        conn,
    );
    let is_websocket = request.method() == Method::CONNECT
        && request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|protocol| protocol.as_str() == "websocket");
    if is_websocket {
        return open_websocket(dispatch, exchange, request, open).await;
    }
    let streams = Streams::open(open);
    let response = dispatch.respond(&exchange, request).await;
    let status = response.status();
    response.map(|body| Logged {
        body,
        done: Some((exchange, status)),
        bytes: 0,
        _streams: streams,
    })
}

/// A WebSocket opening on a stream (an extended CONNECT): if the guest
/// accepts, `200` and the session on the stream, in a task of its own;
/// else the refusal, as over HTTP/1.1.
async fn open_websocket(
    dispatch: &Dispatch,
    exchange: Exchange,
    mut request: http::Request<Incoming>,
    open: Arc<AtomicUsize>,
) -> http::Response<Logged> {
    let refused = |exchange, response: Response| {
        let status = response.status();
        response.map(|body| Logged {
            body,
            done: Some((exchange, status)),
            bytes: 0,
            _streams: Streams::open(open.clone()),
        })
    };
    let protocols = match websocket::check_extended_connect(request.headers()) {
        Ok(protocols) => protocols,
        Err(err) => {
            debug!(id = exchange.id, ?err, "bad WebSocket opening over HTTP/2");
            let (status, headers) = websocket::refusal(err);
            return refused(exchange, page(status, headers));
        }
    };
    let upgrade = Upgrade {
        path_with_query: exchange.target().to_owned(),
        protocols,
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
    };
    let switch = match dispatch.open_websocket(&exchange, upgrade).await {
        Ok(switch) => switch,
        Err(response) => return refused(exchange, response),
    };
    let mut response = http::Response::new(ResponseBody::Page(None));
    if let Some(protocol) = switch
        .protocol()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    let upgraded = hyper::upgrade::on(&mut request);
    let session = Streams::open(open.clone());
    tokio::spawn(async move {
        match upgraded.await {
            Ok(stream) => {
                switch
                    .run(exchange, TokioIo::new(stream), Vec::new(), 0)
                    .await
            }
            Err(err) => debug!(id = exchange.id, cause = %err, "WebSocket stream never opened"),
        }
        drop(session);
    });
    response.map(|body| Logged {
        body,
        done: None,
        bytes: 0,
        _streams: Streams::open(open),
    })
}

/// Counts a connection's open streams, for its idle timeout.
struct Streams(Arc<AtomicUsize>);

impl Streams {
    fn open(count: Arc<AtomicUsize>) -> Streams {
        count.fetch_add(1, Ordering::Relaxed);
        Streams(count)
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that writes its exchange's access log line when it
/// ends, fails or is dropped (the client reset the stream).
struct Logged {
    body: ResponseBody,
    done: Option<(Exchange, StatusCode)>,
    bytes: u64,
    _streams: Streams,
}

impl Logged {
    fn finish(&mut self) {
        if let Some((exchange, status)) = self.done.take() {
            exchange.finish(status, self.bytes);
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.body.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None | Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}
