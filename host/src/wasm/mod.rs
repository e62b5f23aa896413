//! The WebAssembly side: the engine, loading a guest component, running
//! one request through a fresh instance of it, and WebSocket sessions in
//! an instance of their own.
//!
//! It meets the HTTP side at `http::Request` / `http::Response`, and at
//! whole WebSocket messages.

pub mod engine;
pub mod guest;
pub mod websocket;
