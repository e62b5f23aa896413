//! WebSocket sessions, on whatever connection a front end switched to the
//! WebSocket protocol: the guest asked to open one ([`Dispatch::open_websocket`]),
//! then the session itself ([`Switch::run`]), with tungstenite doing the
//! framing and the guest's `websocket` export handling whole messages.
//!
//! Close codes the host sends: 1001 when the client stayed silent past the
//! idle timeout or the server shuts down, 1002 on a protocol violation,
//! 1007 on text that is not UTF-8, 1009 for a message over the size limit,
//! 1011 when the guest traps or runs past its deadline.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::{debug, warn};

use super::{Dispatch, Exchange, Response, page};
use crate::config::Limits;
use crate::wasm::websocket::{Message, Opened, Session};

pub use crate::wasm::websocket::Upgrade;

/// After sending a close frame, time the client has to answer it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read and dropped after an aborted session, besides the rest of
/// the message that caused it.
const LINGER_SLACK: usize = 64 * 1024;

/// A connection a session can run on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How a session ended, for its access log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The close code (1005: the client sent none; 1006: it dropped the
    /// connection).
    pub code: u16,
    /// Messages the guest handled.
    pub messages: u64,
}

/// A session the guest accepted: the front end switches protocols (with
/// [`Switch::protocol`] as the subprotocol), then hands the connection to
/// [`Switch::run`].
pub struct Switch {
    session: Session,
    protocol: Option<String>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
}

impl Dispatch {
    /// Asks the guest of `exchange`'s route to open a WebSocket session for
    /// `upgrade`; on refusal, the response to send instead: 404 when the
    /// guest does not take that path (or has no WebSocket export), 503 past
    /// `--max-websockets`, 500 or 504 when it fails.
    pub async fn open_websocket(
        &self,
        exchange: &Exchange,
        upgrade: Upgrade,
    ) -> Result<Switch, Response> {
        let Some(guest) = self.websocket_guest(exchange) else {
            return Err(page(StatusCode::NOT_FOUND, HeaderMap::new()));
        };
        // The headers that can name a client behind a proxy.
        let forwarding: HeaderMap = upgrade
            .headers
            .iter()
            .filter(|(name, _)| {
                name.eq_ignore_ascii_case("forwarded")
                    || name.eq_ignore_ascii_case("x-forwarded-for")
            })
            .filter_map(|(name, value)| {
                Some((
                    http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                    http::HeaderValue::from_bytes(value).ok()?,
                ))
            })
            .collect();
        if let Some(refused) = self.rate_limited(exchange, &forwarding) {
            return Err(refused);
        }
        let offered = upgrade.protocols.clone();
        let (session, protocol) = match guest
            .open_websocket(upgrade, exchange.id, &exchange.cpu)
            .await
        {
            Ok(Opened::Accepted(session, protocol)) => (session, protocol),
            Ok(Opened::Refused) => return Err(page(StatusCode::NOT_FOUND, HeaderMap::new())),
            Err(err) => {
                warn!(id = exchange.id, target = %exchange.target, cause = %err,
                      "guest failed to open a WebSocket session");
                return Err(page(err.status(), HeaderMap::new()));
            }
        };
        if let Some(chosen) = &protocol
            && !offered.contains(chosen)
        {
            warn!(id = exchange.id, target = %exchange.target, protocol = %chosen,
                  "guest chose a subprotocol the client did not offer");
            return Err(page(StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new()));
        }
        Ok(Switch {
            session,
            protocol,
            limits: self.limits.clone(),
            shutdown: self.shutdown_signal(),
        })
    }
}

impl Switch {
    /// The subprotocol the guest chose, for the switching response.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Runs the session on `io` (after `unread`, bytes the front end read
    /// past the handshake) until it closes, then records `exchange`, whose
    /// switching response took `sent` bytes.
    pub async fn run<S: Io>(self, exchange: Exchange, io: S, unread: Vec<u8>, sent: u64) {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.limits.ws_max_message))
            .max_frame_size(Some(self.limits.ws_max_message));
        let ws = WebSocketStream::from_partially_read(io, unread, Role::Server, Some(config)).await;
        let id = exchange.id;
        let (code, reason, messages) = run(ws, self.session, &self.limits, self.shutdown, id).await;
        debug!(id, code, reason = %reason, messages, "WebSocket session closed");
        // The answer that opened the session: 101 over HTTP/1.1, 200 to an
        // extended CONNECT over HTTP/2.
        let status = if exchange.version == http::Version::HTTP_2 {
            StatusCode::OK
        } else {
            StatusCode::SWITCHING_PROTOCOLS
        };
        exchange.record(status, sent, false, Some(Ended { code, messages }));
    }
}

/// Runs a session: each client message to the guest, its replies back.
/// Returns the close code and reason the session ended with, and how many
/// messages the guest handled.
async fn run<S: Io>(
    mut ws: WebSocketStream<S>,
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
async fn send<S: Io>(
    ws: &mut WebSocketStream<S>,
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
async fn close<S: Io>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str) -> (u16, String) {
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
async fn abort<S: Io>(
    ws: &mut WebSocketStream<S>,
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
async fn drain<S: Io>(ws: &mut WebSocketStream<S>) {
    let _ = timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
