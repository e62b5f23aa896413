//! WebSocket over HTTP/1.1 (RFC 6455) and HTTP/2 (RFC 8441): the opening
//! handshake's checks and the `101`, without I/O; the connection loop answers with them, and the
//! session after the `101` is the dispatch's
//! ([`crate::dispatch::websocket`]), on the connection handed over.

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Version};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::role::{self, BodyKind, RequestHead};

/// The one protocol version this server speaks (RFC 6455 §4.4).
pub(crate) const VERSION: &str = "13";

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
    Ok(Handshake {
        accept: derive_accept_key(key.as_bytes()),
        protocols: offered(&head.headers)?,
    })
}

/// Checks a WebSocket opening over HTTP/2 (RFC 8441 §5): an extended
/// CONNECT with `:protocol websocket`, which carries the version and the
/// subprotocols as HTTP/1.1 does, and no key. Returns the subprotocols.
pub(crate) fn check_extended_connect(headers: &HeaderMap) -> Result<Vec<String>, HandshakeError> {
    if single(headers, header::SEC_WEBSOCKET_VERSION) != Some(VERSION) {
        return Err(HandshakeError::Version);
    }
    offered(headers)
}

/// The subprotocols `headers` offer, in the client's order.
fn offered(headers: &HeaderMap) -> Result<Vec<String>, HandshakeError> {
    let mut protocols = Vec::new();
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value
            .to_str()
            .map_err(|_| HandshakeError::Malformed("invalid Sec-WebSocket-Protocol"))?;
        protocols.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        );
    }
    Ok(protocols)
}

/// The page an opening refused before the guest saw it gets: 400, or
/// 426 naming the version this server speaks.
pub(crate) fn refusal(err: HandshakeError) -> (http::StatusCode, HeaderMap) {
    match err {
        HandshakeError::Malformed(_) => (http::StatusCode::BAD_REQUEST, HeaderMap::new()),
        HandshakeError::Version => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                http::HeaderValue::from_static(VERSION),
            );
            (http::StatusCode::UPGRADE_REQUIRED, headers)
        }
    }
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
pub(crate) fn encode_switch(out: &mut Vec<u8>, accept: &str, protocol: Option<&str>, date: &str) {
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
