//! WebSocket on a connection (RFC 6455): the opening handshake's checks,
//! the `101`, then the session, with tungstenite doing the framing and the
//! guest's `websocket` export handling whole messages.
//!
//! Close codes the host sends: 1001 when the client stayed silent past the
//! idle timeout, 1002 on a protocol violation, 1007 on text that is not
//! UTF-8, 1009 for a message over the size limit, 1011 when the guest
//! traps or runs past its deadline.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, handshake::derive_accept_key};
use tracing::{debug, info, warn};

use super::conn::Conn;
use super::role::{self, BodyKind, RequestHead};
use std::sync::Arc;

use crate::config::Limits;
use crate::wasm::guest::Guest;
use crate::wasm::websocket::{Message, Opened, Session, Upgrade};

/// The one protocol version this server speaks (RFC 6455 §4.4).
const VERSION: &str = "13";
/// After sending a close frame, time the client has to answer it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read and dropped after an aborted session, besides the rest of
/// the message that caused it.
const LINGER_SLACK: usize = 64 * 1024;

/// Whether the request asks to switch to WebSocket.
pub(crate) fn wants_upgrade(head: &RequestHead) -> bool {
    role::has_token(&head.headers, header::UPGRADE, "websocket")
}

/// Why an upgrade request was refused before the guest saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeError {
    /// Not a well-formed opening handshake: 400.
    Malformed(&'static str),
    /// A `Sec-WebSocket-Version` other than 13: 426.
    Version,
}

/// A checked opening handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handshake {
    /// `Sec-WebSocket-Accept` for the response.
    pub(crate) accept: String,
    /// The subprotocols offered, in the client's order.
    pub(crate) protocols: Vec<String>,
}

/// Checks an opening handshake (RFC 6455 §4.2.1).
pub(crate) fn check(head: &RequestHead) -> Result<Handshake, HandshakeError> {
    use HandshakeError::Malformed;
    if head.method != Method::GET {
        return Err(Malformed("a WebSocket handshake must be a GET"));
    }
    if head.version != Version::HTTP_11 {
        return Err(Malformed("a WebSocket handshake needs HTTP/1.1"));
    }
    if !role::has_token(&head.headers, header::CONNECTION, "upgrade") {
        return Err(Malformed("Upgrade without Connection: upgrade"));
    }
    if !matches!(head.body, BodyKind::Empty | BodyKind::Length(0)) {
        return Err(Malformed("a WebSocket handshake has no body"));
    }
    if single(&head.headers, header::SEC_WEBSOCKET_VERSION) != Some(VERSION) {
        return Err(HandshakeError::Version);
    }
    let key = single(&head.headers, header::SEC_WEBSOCKET_KEY)
        .filter(|key| is_nonce(key))
        .ok_or(Malformed("missing or invalid Sec-WebSocket-Key"))?;
    let mut protocols = Vec::new();
    for value in head.headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value
            .to_str()
            .map_err(|_| Malformed("invalid Sec-WebSocket-Protocol"))?;
        protocols.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        );
    }
    Ok(Handshake {
        accept: derive_accept_key(key.as_bytes()),
        protocols,
    })
}

/// The value of a field that must appear exactly once.
fn single(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values.next().is_none().then(|| value.to_str().ok())?
}

/// Whether `key` is base64 for 16 bytes: 22 digits, the last with its low
/// four bits clear, then `==`.
fn is_nonce(key: &str) -> bool {
    let key = key.as_bytes();
    let is_digit = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[..22].iter().all(is_digit)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

/// `101 Switching Protocols`.
fn encode_switch(out: &mut Vec<u8>, accept: &str, protocol: Option<&str>, date: &str) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    out.extend_from_slice(b"upgrade: websocket\r\nconnection: upgrade\r\n");
    for (name, value) in [
        ("sec-websocket-accept", Some(accept)),
        ("sec-websocket-protocol", protocol),
        ("date", Some(date)),
        ("server", Some("wasmhttpd")),
    ] {
        if let Some(value) = value {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

impl Conn {
    /// Answers a WebSocket upgrade and, if the guest accepts it, runs the
    /// session until it closes. The connection ends with it.
    pub(super) async fn websocket(
        mut self,
        head: RequestHead,
        id: u64,
        target: String,
        guest: Arc<Guest>,
    ) {
        let handshake = match check(&head) {
            Ok(handshake) => handshake,
            Err(err) => {
                let (status, headers) = match err {
                    HandshakeError::Malformed(why) => {
                        warn!(id, %target, cause = why, "bad WebSocket handshake");
                        (StatusCode::BAD_REQUEST, HeaderMap::new())
                    }
                    HandshakeError::Version => {
                        warn!(id, %target, "unsupported WebSocket version");
                        let mut headers = HeaderMap::new();
                        headers.insert(
                            header::SEC_WEBSOCKET_VERSION,
                            HeaderValue::from_static(VERSION),
                        );
                        (StatusCode::UPGRADE_REQUIRED, headers)
                    }
                };
                return self.reject(id, &target, status, headers).await;
            }
        };
        let upgrade = Upgrade {
            path_with_query: target.clone(),
            protocols: handshake.protocols.clone(),
            headers: head
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
        };
        let (session, protocol) = match guest.open_websocket(upgrade, id).await {
            Ok(Opened::Accepted(session, protocol)) => (session, protocol),
            Ok(Opened::Refused) => {
                return self
                    .reject(id, &target, StatusCode::NOT_FOUND, HeaderMap::new())
                    .await;
            }
            Err(err) => {
                warn!(id, %target, cause = %err, "guest failed to open a WebSocket session");
                return self
                    .reject(id, &target, err.status(), HeaderMap::new())
                    .await;
            }
        };
        if let Some(chosen) = &protocol
            && !handshake.protocols.contains(chosen)
        {
            warn!(id, %target, protocol = %chosen, "guest chose a subprotocol the client did not offer");
            let status = StatusCode::INTERNAL_SERVER_ERROR;
            return self.reject(id, &target, status, HeaderMap::new()).await;
        }
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        self.out.clear();
        encode_switch(&mut self.out, &handshake.accept, protocol.as_deref(), &date);
        if self.flush_out().await.is_err() {
            debug!(id, "client went away during the WebSocket handshake");
            return;
        }
        info!(target: "wasmhttpd::access", id, method = "GET", %target, status = 101, "WebSocket session opened");
        self.shared
            .metrics
            .response(StatusCode::SWITCHING_PROTOCOLS, None);
        let limits = self.shared.limits.clone();
        let shutdown = self.shutdown_receiver();
        let (io, unread) = self.into_parts();
        let config = WebSocketConfig::default()
            .max_message_size(Some(limits.ws_max_message))
            .max_frame_size(Some(limits.ws_max_message));
        let ws = WebSocketStream::from_partially_read(io, unread, Role::Server, Some(config)).await;
        let (code, reason, messages) = run(ws, session, &limits, shutdown, id).await;
        info!(target: "wasmhttpd::access", id, %target, code, reason = %reason, messages, "WebSocket session closed");
    }

    /// Answers an upgrade that does not become a session, then closes.
    async fn reject(mut self, id: u64, target: &str, status: StatusCode, headers: HeaderMap) {
        if self
            .write_plain(status, headers, Version::HTTP_11, false)
            .await
            .is_ok()
        {
            info!(target: "wasmhttpd::access", id, method = "GET", %target, status = status.as_u16(), "WebSocket upgrade refused");
            self.shared.metrics.response(status, None);
            self.close().await;
        }
    }
}

/// Runs a session: each client message to the guest, its replies back.
/// Returns the close code and reason the session ended with, and how many
/// messages the guest handled.
async fn run(
    mut ws: WebSocketStream<TcpStream>,
    mut session: Session,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
    id: u64,
) -> (u16, String, u64) {
    let mut handled = 0;
    let (code, reason) = loop {
        if *shutdown.borrow() {
            break close(&mut ws, CloseCode::Away, "server shutting down").await;
        }
        let next = tokio::select! {
            next = timeout(limits.ws_idle_timeout, ws.next()) => next,
            changed = shutdown.changed() => {
                if changed.is_err() {
                    // The server is gone.
                    break close(&mut ws, CloseCode::Away, "server shutting down").await;
                }
                continue;
            }
        };
        let frame = match next {
            Err(_) => break close(&mut ws, CloseCode::Away, "idle timeout").await,
            Ok(None) => break (1006, String::new()),
            Ok(Some(Err(err))) => match err {
                tungstenite::Error::Capacity(_) => {
                    let limit = limits.ws_max_message;
                    break abort(&mut ws, CloseCode::Size, "message too big", limit).await;
                }
                tungstenite::Error::Utf8(_) => {
                    break abort(&mut ws, CloseCode::Invalid, "text is not UTF-8", 0).await;
                }
                // The client dropped the connection without a close frame.
                tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                    break (1006, String::new());
                }
                tungstenite::Error::Protocol(err) => {
                    debug!(id, cause = %err, "WebSocket protocol error");
                    break abort(&mut ws, CloseCode::Protocol, "protocol error", 0).await;
                }
                _ => break (1006, String::new()),
            },
            Ok(Some(Ok(frame))) => frame,
        };
        let message = match frame {
            tungstenite::Message::Text(text) => Message::Text(text.as_str().to_owned()),
            tungstenite::Message::Binary(data) => Message::Binary(data.to_vec()),
            tungstenite::Message::Close(frame) => {
                // tungstenite has queued the echo of the client's close;
                // reading on sends it and sees the end of the stream.
                let (code, reason) = frame.map_or((1005, String::new()), |frame| {
                    (u16::from(frame.code), frame.reason.as_str().to_owned())
                });
                drain(&mut ws).await;
                break (code, reason);
            }
            // Pings are answered by tungstenite; pongs need nothing.
            tungstenite::Message::Ping(_)
            | tungstenite::Message::Pong(_)
            | tungstenite::Message::Frame(_) => continue,
        };
        handled += 1;
        let replies = match session.on_message(&message).await {
            Ok(replies) => replies,
            Err(err) => {
                warn!(id, cause = %err, "WebSocket guest failed");
                let (code, reason) = close(&mut ws, CloseCode::Error, "handler failed").await;
                // The instance is not called again after a fault.
                return (code, reason, handled);
            }
        };
        if send(&mut ws, replies, limits.write_timeout).await.is_err() {
            break (1006, String::new());
        }
    };
    if let Err(err) = session.on_close(code, &reason).await {
        warn!(id, cause = %err, "WebSocket guest failed in on-close");
    }
    (code, reason, handled)
}

/// Sends the guest's replies, in order, and flushes them.
async fn send(
    ws: &mut WebSocketStream<TcpStream>,
    replies: Vec<Message>,
    write_timeout: Duration,
) -> Result<(), ()> {
    let sending = async {
        for reply in replies {
            let frame = match reply {
                Message::Text(text) => tungstenite::Message::text(text),
                Message::Binary(data) => tungstenite::Message::binary(data),
            };
            ws.feed(frame).await?;
        }
        ws.flush().await
    };
    match timeout(write_timeout, sending).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Starts the closing handshake with `code`, waits briefly for the
/// client's answer, and returns what the session ended with.
async fn close(
    ws: &mut WebSocketStream<TcpStream>,
    code: CloseCode,
    reason: &str,
) -> (u16, String) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if let Ok(Ok(())) = timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await {
        drain(ws).await;
    }
    (u16::from(code), reason.to_owned())
}

/// Closes after a frame the host could not take: the stream is out of step
/// with the client's framing, so after the close frame the client's bytes
/// are read raw and dropped (at most `unread` plus a little, for at most
/// [`CLOSE_TIMEOUT`]). The client, still sending the rest of an oversized
/// message, then reads the close instead of a reset.
async fn abort(
    ws: &mut WebSocketStream<TcpStream>,
    code: CloseCode,
    reason: &str,
    unread: usize,
) -> (u16, String) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if let Ok(Ok(())) = timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await {
        let io = ws.get_mut();
        let _ = io.shutdown().await;
        let mut sink = vec![0; 64 * 1024];
        let mut left = unread.saturating_add(LINGER_SLACK);
        let _ = timeout(CLOSE_TIMEOUT, async {
            while left > 0 {
                match io.read(&mut sink).await {
                    Ok(n) if n > 0 => left = left.saturating_sub(n),
                    _ => break,
                }
            }
        })
        .await;
    }
    (u16::from(code), reason.to_owned())
}

/// Reads until the client's side of the close arrives, the stream ends, or
/// [`CLOSE_TIMEOUT`] passes.
async fn drain(ws: &mut WebSocketStream<TcpStream>) {
    let _ = timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        role::parse_request(raw.as_bytes(), 16 * 1024, "localhost")
            .unwrap()
            .unwrap()
            .0
    }

    const GOOD: &str = "GET /ws/echo HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
                        Connection: keep-alive, Upgrade\r\n\
                        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                        Sec-WebSocket-Version: 13\r\n";

    #[test]
    fn accepts_the_rfc_example() {
        let handshake = check(&head(&format!(
            "{GOOD}Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Protocol: v2\r\n\r\n"
        )))
        .unwrap();
        // RFC 6455 §1.3.
        assert_eq!(handshake.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(handshake.protocols, ["chat", "superchat", "v2"]);
    }

    #[test]
    fn refuses_malformed_handshakes() {
        let bad = [
            GOOD.replace("GET", "POST"),
            GOOD.replace("HTTP/1.1", "HTTP/1.0"),
            GOOD.replace("keep-alive, Upgrade", "keep-alive"),
            GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
            GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="),
            GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            format!("{GOOD}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            format!("{GOOD}Content-Length: 3\r\n"),
        ];
        for raw in bad {
            let result = check(&head(&format!("{raw}\r\n")));
            assert!(matches!(result, Err(HandshakeError::Malformed(_))), "{raw}");
        }
    }

    #[test]
    fn other_versions_get_426() {
        for version in ["8", "12", "14", "13, 8"] {
            let raw = GOOD.replace("Version: 13", &format!("Version: {version}"));
            assert_eq!(
                check(&head(&format!("{raw}\r\n"))),
                Err(HandshakeError::Version)
            );
        }
        let missing = GOOD.replace("Sec-WebSocket-Version: 13\r\n", "");
        assert_eq!(
            check(&head(&format!("{missing}\r\n"))),
            Err(HandshakeError::Version)
        );
    }

    #[test]
    fn only_upgrade_websocket_is_an_upgrade() {
        assert!(wants_upgrade(&head(&format!("{GOOD}\r\n"))));
        let h2c = GOOD.replace("Upgrade: websocket", "Upgrade: h2c");
        assert!(!wants_upgrade(&head(&format!("{h2c}\r\n"))));
        let plain = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(!wants_upgrade(&head(plain)));
    }
}
