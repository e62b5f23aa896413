//! The guest's WebSocket endpoint: an echo at [`ECHO_PATH`].

use crate::Component;
use crate::bindings::exports::wasmhttpd::guest::websocket::{Decision, Guest, Message, Upgrade};

/// Where the echo endpoint is.
pub const ECHO_PATH: &str = "/ws/echo";

impl Guest for Component {
    fn open(upgrade: Upgrade) -> Decision {
        let path = upgrade
            .path_with_query
            .split('?')
            .next()
            .unwrap_or_default();
        if path == ECHO_PATH {
            Decision::Accept(None)
        } else {
            Decision::Refuse
        }
    }

    /// Sends every message back as it came, text as text, binary as binary.
    fn on_message(message: Message) -> Vec<Message> {
        vec![message]
    }

    fn on_close(_code: u16, _reason: String) {}
}
