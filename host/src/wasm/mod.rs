//! The WebAssembly side: the engine, the compiled-component cache, loading
//! a guest component and swapping in new versions, running one request
//! through a fresh instance of it (or one from its pool, with reuse), and
//! WebSocket sessions in an instance of their own. Admission and the
//! guest's deadlines are kept in `instance`, for all of them, below the
//! modules of each kind (`guest`, `p3`, `websocket`); so are the time a
//! guest runs in one go (the slice) and its CPU time (`cpu`), and what it
//! may open (`files`: never what could block its thread). A guest's
//! stdout and stderr become log lines.
//!
//! It meets the HTTP side at `http::Request` / `http::Response`, and at
//! whole WebSocket messages.

pub mod cache;
pub mod cpu;
pub mod engine;
mod files;
pub mod guest;
pub mod inspect;
pub mod instance;
mod output;
mod p3;
pub mod reload;
mod reuse;
pub(crate) use reuse::on_event_loop;
pub mod websocket;
