//! One client connection: read a request, hand it to the guest, write the
//! response, and repeat while keep-alive allows.
//!
//! Requests on a connection are answered strictly in order, so pipelined
//! requests need nothing special: the bytes of the next request simply wait
//! in the read buffer. Request bodies are read whole (up to the body limit)
//! before the guest runs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, Version, header};
use http_body::Body;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::encode::Encoder;
use super::error::Error;
use super::reader::{ReadLimits, RequestReader};
use super::role::{self, Framing, RequestHead};
use super::websocket;
use crate::server::Shared;
use crate::wasm::guest::GuestResponse;

/// Read buffer reserved ahead of each read.
const READ_CHUNK: usize = 8 * 1024;
/// After answering a request whose body was not read (413, 400), the host
/// keeps reading and discarding for this long before closing, so the
/// client's unsent bytes do not turn the close into a reset that destroys
/// the response before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
/// At most this much is discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// What was sent for one request, for the access log.
pub(super) struct Sent {
    status: StatusCode,
    bytes: u64,
    keep_alive: bool,
}

/// A client connection.
pub(crate) struct Conn {
    io: TcpStream,
    buf: BytesMut,
    pub(super) out: Vec<u8>,
    pub(super) shared: Arc<Shared>,
    /// Turns the bytes in `buf` into request heads and bodies.
    reader: RequestReader,
    /// The client's address.
    peer: SocketAddr,
    /// Requests answered so far.
    served: u64,
    /// Becomes true when the server shuts down: the connection then ends
    /// after the response in progress, or at once if idle.
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    pub(crate) fn new(
        io: TcpStream,
        local: SocketAddr,
        peer: SocketAddr,
        shared: Arc<Shared>,
    ) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            shutdown: shared.shutdown_signal(),
            reader: RequestReader::new(
                ReadLimits {
                    max_head: shared.limits.max_head_bytes,
                    max_body: shared.limits.max_body_bytes,
                },
                local.to_string(),
            ),
            shared,
            peer,
            served: 0,
        }
    }

    /// A receiver of the server's shutdown, for a protocol that takes the
    /// connection over.
    pub(super) fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Whether the server is shutting down.
    pub(super) fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Serves requests until the client leaves, asks to close, or errs.
    pub(crate) async fn serve(mut self) {
        loop {
            let head = match self.read_head().await {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(err) => return self.refuse(err).await,
            };
            let started = Instant::now();
            let id = self.shared.next_request_id();
            let method = head.method.clone();
            let target = head.uri.path_and_query().map(|pq| pq.to_string());
            let target = target.unwrap_or_else(|| "/".to_owned());
            // The version running now serves this whole request.
            let route = self.shared.routes.route(head.uri.path());
            let route_prefix = route.map_or("-", |(prefix, _)| prefix).to_owned();
            let guest = route.map(|(_, slot)| slot.current());
            if let Some(guest) = &guest
                && websocket::wants_upgrade(&head)
                && guest.has_websocket()
            {
                return self.websocket(head, id, target, guest.clone()).await;
            }
            // Once shutdown has begun, or at the connection's request cap,
            // the response says it is the last.
            let last = self.shutting_down()
                || self.served + 1 >= self.shared.limits.max_requests_per_connection;
            let (version, keep_alive) = (head.version, head.keep_alive && !last);
            let request = match self.read_body(&head).await {
                Ok(body) => into_request(head, body),
                Err(err) => return self.refuse(err).await,
            };
            let sent = match guest {
                None => {
                    self.write_error(StatusCode::NOT_FOUND, version, keep_alive)
                        .await
                }
                Some(guest) => match self.unless_client_leaves(guest.handle(request, id)).await {
                    // Dropping the guest's future stopped it.
                    None => {
                        debug!(id, %method, %target, "client went away before the response");
                        return;
                    }
                    Some(Ok(response)) => {
                        self.write_response(response, &method, version, keep_alive)
                            .await
                    }
                    Some(Err(err)) => {
                        warn!(id, %method, %target, cause = %err, "guest failed");
                        self.write_error(err.status(), version, keep_alive).await
                    }
                },
            };
            self.served += 1;
            let Ok(sent) = sent else {
                debug!(id, "client went away while writing");
                return;
            };
            self.shared
                .metrics
                .response(sent.status, Some(started.elapsed()));
            info!(
                target: "wasmhttpd::access",
                id,
                peer = %self.peer,
                %method,
                %target,
                route = %route_prefix,
                status = sent.status.as_u16(),
                bytes = sent.bytes,
                ms = started.elapsed().as_secs_f64() * 1e3,
            );
            if !sent.keep_alive {
                return self.close().await;
            }
        }
    }

    /// Reads until a whole head is buffered. `Ok(None)`: the client closed,
    /// or stayed idle past the keep-alive timeout, between requests.
    async fn read_head(&mut self) -> Result<Option<RequestHead>, Error> {
        let header_timeout = self.shared.limits.header_timeout;
        // The first request gets the header timeout to arrive; later ones the
        // (shorter) keep-alive timeout. Once a byte of the head has arrived,
        // the whole head must be in within the header timeout.
        let idle = if self.served == 0 {
            header_timeout
        } else {
            self.shared.limits.keep_alive_timeout
        };
        let mut deadline = Instant::now() + idle;
        let mut started = false;
        loop {
            if !self.buf.is_empty() {
                if !started {
                    started = true;
                    deadline = Instant::now() + header_timeout;
                }
                if let Some(head) = self.reader.head(&mut self.buf)? {
                    return Ok(Some(head));
                }
            }
            if !started && self.shutting_down() {
                return Ok(None);
            }
            if !started {
                match self.wait_idle(deadline).await? {
                    true => continue,
                    false => return Ok(None),
                }
            }
            self.buf.reserve(READ_CHUNK);
            let read = timeout_at(deadline, self.io.read_buf(&mut self.buf));
            let read = tokio::select! {
                read = read => read,
                // Between requests, shutdown closes the connection at once.
                _ = self.shutdown.changed(), if !started => return Ok(None),
            };
            match read {
                Err(_) if !started => return Ok(None),
                Err(_) => return Err(Error::Timeout),
                Ok(Ok(0)) if !started => return Ok(None),
                Ok(Ok(0)) => return Err(Error::Incomplete),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(err.into()),
            }
        }
    }

    /// Between requests: takes bytes already there, or else gives the
    /// buffers back and waits, holding no memory but the socket, until the
    /// client sends more (`Ok(true)`), or closes, stays idle past
    /// `deadline`, or the server shuts down (`Ok(false)`). Ten thousand
    /// idle keep-alive connections then cost little more than their sockets.
    async fn wait_idle(&mut self, deadline: Instant) -> Result<bool, Error> {
        loop {
            self.buf.reserve(READ_CHUNK);
            match self.io.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err.into()),
            }
            self.buf = BytesMut::new();
            self.out = Vec::new();
            let ready = tokio::select! {
                ready = timeout_at(deadline, self.io.readable()) => ready,
                _ = self.shutdown.changed() => return Ok(false),
            };
            match ready {
                Err(_) => return Ok(false),
                Ok(Err(err)) => return Err(err.into()),
                // Readable may be spurious: try again.
                Ok(Ok(())) => {}
            }
        }
    }

    /// Reads the request body per its framing, answering
    /// `Expect: 100-continue` before waiting for it.
    async fn read_body(&mut self, head: &RequestHead) -> Result<Bytes, Error> {
        let mut asked = false;
        loop {
            if let Some(body) = self.reader.body(&mut self.buf)? {
                return Ok(body);
            }
            if !asked {
                self.continue_if_expected(head).await?;
                asked = true;
            }
            let wanted = self.reader.body_bytes_wanted(&self.buf);
            self.buf.reserve(wanted.max(READ_CHUNK));
            self.read_more().await?;
        }
    }

    async fn continue_if_expected(&mut self, head: &RequestHead) -> Result<(), Error> {
        if head.expect_continue && self.buf.is_empty() {
            self.write_all_buf(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        Ok(())
    }

    /// One read of body bytes, within the body timeout.
    async fn read_more(&mut self) -> Result<(), Error> {
        let limit = self.shared.limits.body_timeout;
        match timeout(limit, self.io.read_buf(&mut self.buf)).await {
            Err(_) => Err(Error::BodyTimeout),
            Ok(Ok(0)) => Err(Error::Incomplete),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.into()),
        }
    }

    /// Writes a guest's response, streaming its body as the guest writes it.
    async fn write_response(
        &mut self,
        response: GuestResponse,
        method: &Method,
        version: Version,
        keep_alive: bool,
    ) -> std::io::Result<Sent> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let declared = match declared_length(&parts.headers) {
            // wasi:http takes any status of three digits; HTTP has 100-599,
            // and a final response cannot be informational.
            Some(declared) if (200..=599).contains(&status.as_u16()) => declared,
            _ => {
                warn!(%status, "guest response has an informational or invalid status, or an invalid Content-Length");
                drop(body);
                return self
                    .write_error(StatusCode::INTERNAL_SERVER_ERROR, version, keep_alive)
                    .await;
            }
        };
        let head_only = method == Method::HEAD;
        // A HEAD response announces the framing a GET would get (RFC 9112
        // §6.1, §6.3), then sends no body.
        let framing = match declared {
            _ if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED => {
                Framing::None
            }
            Some(n) => Framing::Length(n),
            None if version == Version::HTTP_11 => Framing::Chunked,
            None if head_only => Framing::None,
            None => Framing::Close,
        };
        let mut keep_alive = keep_alive && framing != Framing::Close;
        self.out.clear();
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        role::encode_response_head(
            &mut self.out,
            status,
            &parts.headers,
            framing,
            keep_alive,
            version,
            &date,
        );
        let head_len = self.out.len() as u64;
        if head_only || framing == Framing::None {
            drop(body);
            self.flush_out().await?;
            return Ok(Sent {
                status,
                bytes: head_len,
                keep_alive,
            });
        }

        let guest_timeout = self.shared.limits.guest_timeout;
        let mut encoder = Encoder::new(framing);
        let mut sent = head_len;
        let complete = loop {
            // Take a frame that is already there without waiting, so a small
            // body goes out in the same write as the head.
            let ready = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)));
            let frame = match ready.await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    sent += self.flush_out().await?;
                    let next = timeout(
                        guest_timeout,
                        std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)),
                    );
                    let cap = self.shared.limits.max_head_bytes;
                    let next = if encoder.is_full() {
                        // The client has the whole body and may well close
                        // now; the guest only has to end it.
                        next.await
                    } else {
                        tokio::select! {
                            next = next => next,
                            () = client_gone(&mut self.io, &mut self.buf, cap) => {
                                // Dropping the body stops the guest.
                                return Err(std::io::ErrorKind::ConnectionAborted.into());
                            }
                        }
                    };
                    match next {
                        Ok(frame) => frame,
                        Err(_) => {
                            warn!(%status, "guest stalled while writing its body");
                            self.shared.metrics.guest_timed_out();
                            break false;
                        }
                    }
                }
            };
            match frame {
                None => match encoder.finish(&mut self.out) {
                    Ok(()) => break true,
                    Err(err) => {
                        warn!(%status, cause = %err, "guest body fell short of its Content-Length");
                        break false;
                    }
                },
                Some(Err(err)) => {
                    warn!(%status, cause = ?err, "guest body failed");
                    break false;
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && let Err(err) = encoder.encode(&data, &mut self.out)
                    {
                        warn!(%status, cause = %err, "guest body overran its Content-Length");
                        break false;
                    }
                    if self.out.len() >= READ_CHUNK * 8 {
                        sent += self.flush_out().await?;
                    }
                }
            }
        };
        drop(body);
        sent += self.flush_out().await?;
        if !complete {
            // The client cannot tell where this body ends: the connection
            // cannot carry another response.
            keep_alive = false;
        }
        Ok(Sent {
            status,
            bytes: sent,
            keep_alive,
        })
    }

    /// Runs `work` (a guest producing a response head) unless the client
    /// closes the connection first; then `None`, and `work` is dropped.
    async fn unless_client_leaves<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let cap = self.shared.limits.max_head_bytes;
        tokio::select! {
            done = work => Some(done),
            () = client_gone(&mut self.io, &mut self.buf, cap) => None,
        }
    }

    /// Writes a small plain-text error response generated by the host.
    async fn write_error(
        &mut self,
        status: StatusCode,
        version: Version,
        keep_alive: bool,
    ) -> std::io::Result<Sent> {
        self.write_plain(status, http::HeaderMap::new(), version, keep_alive)
            .await
    }

    /// Writes a small plain-text response generated by the host, with
    /// `headers` besides the ones it always has.
    pub(super) async fn write_plain(
        &mut self,
        status: StatusCode,
        mut headers: http::HeaderMap,
        version: Version,
        keep_alive: bool,
    ) -> std::io::Result<Sent> {
        let body = format!(
            "{} {}\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("Error")
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Overload is brief: try again in a second.
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        self.out.clear();
        role::encode_response_head(
            &mut self.out,
            status,
            &headers,
            Framing::Length(body.len() as u64),
            keep_alive,
            version,
            &date,
        );
        self.out.extend_from_slice(body.as_bytes());
        let bytes = self.flush_out().await?;
        Ok(Sent {
            status,
            bytes,
            keep_alive,
        })
    }

    /// Answers a request the front end refused (if an answer is owed), then closes.
    async fn refuse(mut self, err: Error) {
        match err.status() {
            Some(status) => {
                warn!(cause = %err, status = status.as_u16(), "refused request");
                self.shared.metrics.response(status, None);
                if self
                    .write_error(status, Version::HTTP_11, false)
                    .await
                    .is_ok()
                {
                    self.close().await;
                }
            }
            None => debug!(cause = %err, "closing connection"),
        }
    }

    /// Closes the connection: sends FIN, then drains what the client still
    /// sends for a moment, so unread request bytes do not turn the close
    /// into a reset that destroys the response before the client reads it.
    pub(super) async fn close(mut self) {
        let _ = self.io.shutdown().await;
        let mut sink = vec![0; READ_CHUNK];
        let mut drained = 0;
        let deadline = Instant::now() + LINGER;
        while drained < LINGER_BYTES {
            match timeout_at(deadline, self.io.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }

    /// The socket and the bytes read from it but not yet consumed, for a
    /// protocol that takes the connection over.
    pub(super) fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.io, self.buf.to_vec())
    }

    /// Writes out the pending output buffer; returns how many bytes went out.
    pub(super) async fn flush_out(&mut self) -> std::io::Result<u64> {
        let out = std::mem::take(&mut self.out);
        let result = self.write_all_buf(&out).await;
        let written = out.len() as u64;
        self.out = out;
        self.out.clear();
        result.map(|()| written)
    }

    /// Writes `bytes` within the write timeout.
    async fn write_all_buf(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        match timeout(self.shared.limits.write_timeout, self.io.write_all(bytes)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// Completes once the client has closed the connection (or it failed)
/// while the host waits on a guest: a long poll whose client left ends
/// then, not at the guest's deadline. Bytes of pipelined requests that
/// arrive meanwhile are kept in `buf`; past `cap` of them it stops reading.
async fn client_gone(io: &mut TcpStream, buf: &mut BytesMut, cap: usize) {
    while buf.len() < cap {
        buf.reserve(READ_CHUNK);
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

/// The guest's `Content-Length`: `Some(None)` when absent, `None` when invalid.
fn declared_length(headers: &http::HeaderMap) -> Option<Option<u64>> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Some(None);
    };
    if values.next().is_some() {
        return None;
    }
    let text = first.to_str().ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(Some)
}

fn into_request(head: RequestHead, body: Bytes) -> http::Request<Full<Bytes>> {
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;
    request
}
