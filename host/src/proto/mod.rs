//! The HTTP/1.1 front end, on httparse.
//!
//! - [`role`]: request heads in (with the strictness httparse leaves to
//!   us), response heads out.
//! - [`conn`]: the per-connection loop: keep-alive, pipelining, timeouts.
//! - [`decode`]: request bodies (`chunked`).
//! - [`encode`]: response bodies (length, chunked, close-delimited).
//! - [`error`]: what can go wrong, and the status each kind is answered with.
//! - `websocket`: upgrades to WebSocket and the sessions after them.

pub(crate) mod conn;
pub mod decode;
pub mod encode;
pub mod error;
pub mod role;
mod websocket;
