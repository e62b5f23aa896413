//! The front ends: HTTP/1.1 on httparse, and HTTP/2 on hyper.
//!
//! What the bytes mean is decided in the `wasmhttpd-h1` crate, without
//! I/O (and fuzzed there); this module re-exports it and adds the I/O:
//!
//! - [`reader`]: request heads and bodies out of a connection's bytes.
//! - [`role`]: request heads in (with the strictness httparse leaves to
//!   us), response heads out.
//! - [`decode`]: request bodies (`chunked`).
//! - [`encode`]: response bodies (length, chunked, close-delimited).
//! - [`error`]: what can go wrong, and the status each kind is answered with.
//! - `conn`: the per-connection loop: keep-alive, pipelining, timeouts,
//!   and the framing of the responses the dispatch gives it.
//! - `websocket`: the HTTP/1.1 opening handshake and its `101`; the
//!   session after it is the dispatch's.
//!
//! - [`h2`]: the HTTP/2 front end, hyper's server on the same dispatch.
//! - [`endpoint`]: the host's own small listeners (metrics and probes, the redirect
//!   to HTTPS), answering from a request's head.
//!
//! Each request goes to [`crate::dispatch`]; nothing here calls a guest.

pub use wasmhttpd_h1::{decode, encode, error, reader, role};

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) mod conn;
pub mod endpoint;
pub mod h2;
mod websocket;

thread_local! {
    /// This thread's `Date`, and the second it was formatted for.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Calls `f` with the `Date` of a response sent now (RFC 9110 §6.6.1),
/// formatted once a second on each thread, as nginx keeps its time: not
/// once per response.
pub(crate) fn with_date<R>(f: impl FnOnce(&str) -> R) -> R {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(formatted_at, date)| {
        if *formatted_at != second || date.is_empty() {
            *formatted_at = second;
            *date = httpdate::fmt_http_date(now);
        }
        f(date)
    })
}
