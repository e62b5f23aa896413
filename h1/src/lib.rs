//! wasmhttpd's HTTP/1.1 front end without I/O: request heads and bodies
//! read strictly out of a connection's bytes, response heads and bodies
//! framed for the wire. The server's connection loop does the reading,
//! writing and timing; everything that decides what the bytes mean is
//! here, where it can be tested and fuzzed on its own.
//!
//! Layout:
//! - [`reader`]: the read side of a connection: heads, then bodies, in
//!   order, however the bytes were split across reads.
//! - [`role`]: one request head in (with the strictness httparse leaves
//!   to its callers), one response head out.
//! - [`decode`]: `chunked` request bodies.
//! - [`encode`]: response bodies (length, chunked, close-delimited).
//! - [`error`]: what can go wrong, and the status each kind is answered with.

pub mod decode;
pub mod encode;
pub mod error;
pub mod reader;
pub mod role;

pub use error::Error;
pub use reader::RequestReader;
