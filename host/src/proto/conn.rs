//! One client connection: read a request, hand it to the guest, write the
//! response, and repeat while keep-alive allows.
//!
//! Requests on a connection are answered strictly in order, so pipelined
//! requests need nothing special: the bytes of the next request simply wait
//! in the read buffer. A request body that arrived with its head goes to
//! the guest whole; one still arriving streams to it as it comes, up to
//! the body limit, and is read to its end before the response is written.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Version};
use http_body::Body;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, warn};

use super::encode::Encoder;
use super::error::Error;
use super::reader::{ReadLimits, RequestReader};
use super::role::{self, Framing, RequestHead};
use super::websocket;
use crate::config::Limits;
use crate::dispatch::websocket::Upgrade;
use crate::dispatch::{self, Connection, Dispatch, Exchange, Response};
use crate::wasm::guest::BodyError;

/// Read buffer reserved ahead of each read.
const READ_CHUNK: usize = 8 * 1024;
/// After answering a request whose body was not read (413, 400), the host
/// keeps reading and discarding for this long before closing, so the
/// client's unsent bytes do not turn the close into a reset that destroys
/// the response before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
/// At most this much is discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;
/// Time an idle keep-alive connection stays open once shutdown begins, so
/// that a request its client has already sent is answered (with
/// `Connection: close`) rather than met by a closed socket: what lets a
/// client under load move to the next process without a failed request.
/// Short, so a silent client does not hold the shutdown up.
const SHUTDOWN_IDLE: Duration = Duration::from_secs(1);

/// An idle connection's deadline once shutdown has begun:
/// [`SHUTDOWN_IDLE`] from now, or `deadline` if that is sooner.
fn draining(deadline: Instant) -> Instant {
    deadline.min(Instant::now() + SHUTDOWN_IDLE)
}

/// How a connection goes on after a request's exchange.
enum After {
    /// Read the next request.
    Next,
    /// Close it (FIN, then a moment's draining).
    Close,
    /// Drop it: the client has gone, or the connection cannot go on.
    Drop,
}

/// What was sent for one request, for the access log.
struct Sent {
    status: StatusCode,
    bytes: u64,
    keep_alive: bool,
}

/// A client connection's byte stream: TCP, or TLS over it.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket itself, when nothing is layered over it: between
    /// requests, the connection then waits on the socket with its buffers
    /// given back.
    fn tcp(&mut self) -> Option<&mut TcpStream>;
}

impl Transport for TcpStream {
    fn tcp(&mut self) -> Option<&mut TcpStream> {
        Some(self)
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    // TLS keeps its own buffers, and may hold a decrypted request already.
    fn tcp(&mut self) -> Option<&mut TcpStream> {
        None
    }
}

/// A client connection.
pub(crate) struct Conn<S> {
    io: S,
    buf: BytesMut,
    out: Vec<u8>,
    dispatch: Arc<Dispatch>,
    /// Turns the bytes in `buf` into request heads and bodies.
    reader: RequestReader,
    /// The client's and the server's addresses.
    conn: Connection,
    /// Requests answered so far.
    served: u64,
    /// Becomes true when the server shuts down: the connection then ends
    /// after the response in progress, or at once if idle.
    shutdown: watch::Receiver<bool>,
}

impl<S: Transport> Conn<S> {
    pub(crate) fn new(
        io: S,
        local: SocketAddr,
        peer: SocketAddr,
        tls: bool,
        dispatch: Arc<Dispatch>,
    ) -> Self {
        let limits = dispatch.limits();
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            shutdown: dispatch.shutdown_signal(),
            reader: RequestReader::new(
                ReadLimits {
                    max_head: limits.max_head,
                    max_body: limits.max_body,
                },
                local.to_string(),
            ),
            dispatch,
            conn: Connection { peer, local, tls },
            served: 0,
        }
    }

    fn limits(&self) -> &Limits {
        self.dispatch.limits()
    }

    /// Whether the server is shutting down.
    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Serves requests until the client leaves, asks to close, or errs.
    ///
    /// Between requests the connection's task holds little more than this
    /// `Conn`: each request's exchange (its body, the guest's call, the
    /// response being written) is a future of its own, boxed for as long
    /// as it runs, and a WebSocket session likewise. An idle keep-alive
    /// connection's task then takes about 2 KB, not the room an exchange
    /// needs.
    pub(crate) async fn serve(mut self) {
        loop {
            let head = match self.read_head().await {
                Ok(Some(head)) => head,
                Ok(None) => return self.end_idle().await,
                Err(err) => return Box::pin(self.refuse(err)).await,
            };
            let dispatch = self.dispatch.clone();
            let exchange = dispatch.begin(
                &head.method,
                &head.uri,
                head.version,
                &head.headers,
                self.conn,
            );
            if websocket::wants_upgrade(&head) && dispatch.websocket_guest(&exchange).is_some() {
                return Box::pin(self.websocket(head, exchange)).await;
            }
            match Box::pin(self.answer(head, exchange, &dispatch)).await {
                After::Next => {}
                After::Close => return self.close().await,
                After::Drop => return,
            }
        }
    }

    /// Reads the body of the request `head`, has the dispatch answer it
    /// and writes the response; says how the connection goes on.
    async fn answer(
        &mut self,
        head: RequestHead,
        exchange: Exchange,
        dispatch: &Dispatch,
    ) -> After {
        // Once shutdown has begun, or at the connection's request cap, the
        // response says it is the last.
        let last =
            self.shutting_down() || self.served + 1 >= self.limits().max_requests_per_connection;
        let (method, version) = (head.method.clone(), head.version);
        let keep_alive = head.keep_alive && !last;
        let trailers = accepts_trailers(&head.headers);
        // A body that came with its head goes to the guest whole; one that
        // has not arrived yet streams to it as it does.
        let answered = match self.reader.body(&mut self.buf) {
            Ok(Some(body)) => {
                let request = into_request(head, Full::new(body));
                self.unless_client_leaves(dispatch.respond(&exchange, request))
                    .await
                    .ok_or(None)
            }
            Ok(None) => self.stream_body(head, &exchange, dispatch).await,
            Err(err) => Err(Some(err)),
        };
        let response = match answered {
            Ok(response) => Some(response),
            Err(None) => None,
            Err(Some(err)) => {
                let Some(status) = err.status() else {
                    debug!(id = exchange.id, cause = %err, "closing connection");
                    return After::Drop;
                };
                warn!(id = exchange.id, cause = %err, status = status.as_u16(), "refused request body");
                return match self.write_page(status, &method, version).await {
                    Ok(sent) => {
                        exchange.finish(sent.status, sent.bytes);
                        After::Close
                    }
                    Err(_) => After::Drop,
                };
            }
        };
        let Some(response) = response else {
            // Dropping the guest's future stopped it.
            debug!(
                id = exchange.id,
                target = exchange.target(),
                "client went away before the response"
            );
            return After::Drop;
        };
        self.served += 1;
        let Ok(sent) = self
            .write_response(response, &method, version, keep_alive, trailers)
            .await
        else {
            debug!(id = exchange.id, "client went away while writing");
            return After::Drop;
        };
        exchange.finish(sent.status, sent.bytes);
        if sent.keep_alive {
            After::Next
        } else {
            After::Close
        }
    }

    /// Answers a WebSocket upgrade and, if the guest accepts it, hands the
    /// connection to the session, which ends with it.
    async fn websocket(mut self, head: RequestHead, exchange: Exchange) {
        let handshake = match websocket::check(&head) {
            Ok(handshake) => handshake,
            Err(err) => {
                match err {
                    websocket::HandshakeError::Malformed(why) => warn!(
                        id = exchange.id,
                        target = exchange.target(),
                        cause = why,
                        "bad WebSocket handshake"
                    ),
                    websocket::HandshakeError::Version => warn!(
                        id = exchange.id,
                        target = exchange.target(),
                        "unsupported WebSocket version"
                    ),
                }
                let (status, headers) = websocket::refusal(err);
                return self.reject(exchange, dispatch::page(status, headers)).await;
            }
        };
        let upgrade = Upgrade {
            path_with_query: exchange.target().to_owned(),
            protocols: handshake.protocols.clone(),
            headers: head
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
        };
        let dispatch = self.dispatch.clone();
        let switch = match dispatch.open_websocket(&exchange, upgrade).await {
            Ok(switch) => switch,
            Err(response) => return self.reject(exchange, response).await,
        };
        self.out.clear();
        super::with_date(|date| {
            websocket::encode_switch(&mut self.out, &handshake.accept, switch.protocol(), date);
        });
        let Ok(sent) = self.flush_out().await else {
            debug!(
                id = exchange.id,
                "client went away during the WebSocket handshake"
            );
            return;
        };
        let (io, unread) = self.into_parts();
        switch.run(exchange, io, unread, sent).await;
    }

    /// Answers an upgrade that does not become a session, then closes.
    async fn reject(mut self, exchange: Exchange, response: Response) {
        if let Ok(sent) = self
            .write_rejection(response, &Method::GET, Version::HTTP_11)
            .await
        {
            exchange.finish(sent.status, sent.bytes);
            self.close().await;
        }
    }

    /// Reads until a whole head is buffered. `Ok(None)`: the client closed,
    /// or stayed idle past the keep-alive timeout, between requests.
    async fn read_head(&mut self) -> Result<Option<RequestHead>, Error> {
        let header_timeout = self.limits().header_timeout;
        // The first request gets the header timeout to arrive; later ones the
        // (shorter) keep-alive timeout. Once a byte of the head has arrived,
        // the whole head must be in within the header timeout.
        let idle = if self.served == 0 {
            header_timeout
        } else {
            self.limits().keep_alive_timeout
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
            if !started {
                match self.wait_idle(deadline).await? {
                    true => continue,
                    false => return Ok(None),
                }
            }
            self.buf.reserve(READ_CHUNK);
            let read = timeout_at(deadline, self.io.read_buf(&mut self.buf)).await;
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
    /// client sends more (`Ok(true)`), or closes or stays idle past
    /// `deadline` (`Ok(false)`); once the server shuts down, for
    /// [`SHUTDOWN_IDLE`] at most. Ten thousand idle keep-alive connections
    /// then cost little more than their sockets.
    async fn wait_idle(&mut self, mut deadline: Instant) -> Result<bool, Error> {
        let mut shutting_down = self.shutting_down();
        if shutting_down {
            deadline = draining(deadline);
        }
        let Some(tcp) = self.io.tcp() else {
            return self.read_idle(deadline, shutting_down).await;
        };
        loop {
            self.buf.reserve(READ_CHUNK);
            match tcp.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err.into()),
            }
            self.buf = BytesMut::new();
            self.out = Vec::new();
            let ready = tokio::select! {
                ready = timeout_at(deadline, tcp.readable()) => ready,
                _ = self.shutdown.changed(), if !shutting_down => {
                    shutting_down = true;
                    deadline = draining(deadline);
                    continue;
                }
            };
            match ready {
                Err(_) => return Ok(false),
                Ok(Err(err)) => return Err(err.into()),
                // Readable may be spurious: try again.
                Ok(Ok(())) => {}
            }
        }
    }

    /// [`Conn::wait_idle`] over TLS: reads whatever comes next.
    async fn read_idle(
        &mut self,
        mut deadline: Instant,
        shutting_down: bool,
    ) -> Result<bool, Error> {
        self.buf.reserve(READ_CHUNK);
        if !shutting_down {
            let read = tokio::select! {
                read = timeout_at(deadline, self.io.read_buf(&mut self.buf)) => Some(read),
                _ = self.shutdown.changed() => None,
            };
            match read {
                Some(read) => return Self::idle_read(read),
                None => deadline = draining(deadline),
            }
        }
        Self::idle_read(timeout_at(deadline, self.io.read_buf(&mut self.buf)).await)
    }

    /// What one read between requests says: more bytes, or the end.
    fn idle_read(
        read: Result<std::io::Result<usize>, tokio::time::error::Elapsed>,
    ) -> Result<bool, Error> {
        match read {
            Err(_) | Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(err)) => Err(err.into()),
        }
    }

    /// Has the dispatch answer `head` while its body streams to the guest
    /// as it arrives (`Expect: 100-continue` answered first). The body is
    /// read to its end, within the body timeout for each read and the
    /// body limit, even when the response head comes first: the rest goes
    /// to the guest's body unread, as a whole body would have. `Err(None)`:
    /// the client left; `Err(Some(err))`: the body was refused, and the
    /// guest stopped.
    async fn stream_body(
        &mut self,
        head: RequestHead,
        exchange: &Exchange,
        dispatch: &Dispatch,
    ) -> Result<Response, Option<Error>> {
        self.continue_if_expected(&head)
            .await
            .map_err(|_| None::<Error>)?;
        let (sender, body) = Streamed::channel();
        let respond = dispatch.respond(exchange, into_request(head, body));
        tokio::pin!(respond);
        // Reading the body is cancel-safe: a part taken from the buffer is
        // sent at once, and a read either lands in the buffer or not.
        let response = tokio::select! {
            response = &mut respond => Some(response),
            fed = self.feed_body(&sender) => {
                fed.map_err(|err| sender.cut(err))?;
                None
            }
        };
        match response {
            Some(response) => {
                self.feed_body(&sender)
                    .await
                    .map_err(|err| sender.cut(err))?;
                Ok(response)
            }
            None => {
                drop(sender);
                self.unless_client_leaves(respond).await.ok_or(None)
            }
        }
    }

    /// Sends the body of the request being read to `sender` as it arrives,
    /// until its end.
    async fn feed_body(&mut self, sender: &BodySender) -> Result<(), Error> {
        loop {
            let (part, done) = self.reader.body_part(&mut self.buf)?;
            sender.send(part);
            if done {
                return Ok(());
            }
            let wanted = self.reader.body_bytes_wanted(&self.buf);
            self.buf.reserve(wanted.clamp(READ_CHUNK, READ_CHUNK * 8));
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
        let limit = self.limits().body_timeout;
        match timeout(limit, self.io.read_buf(&mut self.buf)).await {
            Err(_) => Err(Error::BodyTimeout),
            Ok(Ok(0)) => Err(Error::Incomplete),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.into()),
        }
    }

    /// Writes a response, streaming its body as the guest writes it; a
    /// chunked body ends with the guest's trailers if the client said it
    /// takes them (`TE: trailers`, as hyper's server decides too).
    async fn write_response(
        &mut self,
        response: Response,
        method: &Method,
        version: Version,
        keep_alive: bool,
        trailers: bool,
    ) -> std::io::Result<Sent> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        // The dispatch has checked it.
        let declared = dispatch::declared_length(&parts.headers).flatten();
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
        super::with_date(|date| {
            role::encode_response_head(
                &mut self.out,
                status,
                &parts.headers,
                framing,
                keep_alive,
                version,
                date,
            );
        });
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
                    // The body keeps the guest's deadline for each piece.
                    let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
                    let cap = self.limits().max_head;
                    if encoder.is_full() {
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
                Some(Err(BodyError::Stalled)) => {
                    warn!(%status, "guest stalled while writing its body");
                    break false;
                }
                Some(Err(err)) => {
                    warn!(%status, cause = %err, "guest body failed");
                    break false;
                }
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => {
                            if let Some(fields) = frame.trailers_ref()
                                && trailers
                            {
                                encoder.trailers(fields);
                            }
                            continue;
                        }
                    };
                    if let Err(err) = encoder.encode(&data, &mut self.out) {
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
        let cap = self.limits().max_head;
        tokio::select! {
            done = work => Some(done),
            () = client_gone(&mut self.io, &mut self.buf, cap) => None,
        }
    }

    /// Writes the host's page for `status`, then the connection closes.
    async fn write_page(
        &mut self,
        status: StatusCode,
        method: &Method,
        version: Version,
    ) -> std::io::Result<Sent> {
        self.write_rejection(dispatch::page(status, HeaderMap::new()), method, version)
            .await
    }

    /// Writes a response that ends the connection.
    async fn write_rejection(
        &mut self,
        response: Response,
        method: &Method,
        version: Version,
    ) -> std::io::Result<Sent> {
        // HTTP/1.0 and 1.1 are the versions answered in kind.
        let version = if version == Version::HTTP_10 {
            version
        } else {
            Version::HTTP_11
        };
        self.write_response(response, method, version, false, false)
            .await
    }

    /// Answers a request the front end refused before its head was whole
    /// (if an answer is owed), then closes.
    async fn refuse(mut self, err: Error) {
        let Some(status) = err.status() else {
            return debug!(cause = %err, "closing connection");
        };
        warn!(cause = %err, status = status.as_u16(), "refused request");
        if let Ok(sent) = self
            .write_page(status, &Method::GET, Version::HTTP_11)
            .await
        {
            self.dispatch.refused(self.conn, sent.status, sent.bytes);
            self.close().await;
        }
    }

    /// Ends a connection that is idle between requests, its client gone or
    /// silent past the keep-alive timeout: over TLS with a `close_notify`
    /// first, so the client can tell a clean close from a cut one.
    async fn end_idle(mut self) {
        let _ = timeout(self.limits().write_timeout, self.io.shutdown()).await;
    }

    /// Closes the connection: sends FIN, then drains what the client still
    /// sends for a moment, so unread request bytes do not turn the close
    /// into a reset that destroys the response before the client reads it.
    async fn close(mut self) {
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
    fn into_parts(self) -> (S, Vec<u8>) {
        (self.io, self.buf.to_vec())
    }

    /// Writes out the pending output buffer; returns how many bytes went out.
    async fn flush_out(&mut self) -> std::io::Result<u64> {
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
        match timeout(self.limits().write_timeout, self.io.write_all(bytes)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// Completes once the client has closed the connection (or it failed)
/// while the host waits on a guest: a long poll whose client left ends
/// then, not at the guest's deadline. Bytes of pipelined requests that
/// arrive meanwhile are kept in `buf`; past `cap` of them it stops reading.
async fn client_gone(io: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut, cap: usize) {
    while buf.len() < cap {
        buf.reserve(READ_CHUNK);
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

/// Whether a request's `TE` field lists `trailers`: its client takes
/// trailer fields after a chunked body (RFC 9110 §10.1.4).
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| coding.trim().eq_ignore_ascii_case("trailers"))
}

/// A request body that streams from the connection as it arrives.
struct Streamed {
    parts: tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, BodyCut>>,
}

/// The connection's end of a [`Streamed`] body.
struct BodySender(tokio::sync::mpsc::UnboundedSender<Result<Bytes, BodyCut>>);

/// Why a streamed request body ended before its end.
#[derive(Debug, thiserror::Error)]
#[error("the request body was cut short: {0}")]
struct BodyCut(String);

impl Streamed {
    fn channel() -> (BodySender, Streamed) {
        let (sender, parts) = tokio::sync::mpsc::unbounded_channel();
        (BodySender(sender), Streamed { parts })
    }
}

impl BodySender {
    /// Passes `part` on; a guest that stopped reading has it dropped (the
    /// body limit bounds what is held for one that never reads).
    fn send(&self, part: Bytes) {
        if !part.is_empty() {
            let _ = self.0.send(Ok(part));
        }
    }

    /// Ends the body with `err`, which is given back for the client's
    /// answer; `None` when the client left.
    fn cut(&self, err: Error) -> Option<Error> {
        let _ = self.0.send(Err(BodyCut(err.to_string())));
        err.status().is_some().then_some(err)
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = BodyCut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyCut>>> {
        self.parts
            .poll_recv(cx)
            .map(|part| part.map(|part| part.map(http_body::Frame::data)))
    }
}

fn into_request<B>(head: RequestHead, body: B) -> http::Request<B> {
    let mut request = http::Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;
    request
}
