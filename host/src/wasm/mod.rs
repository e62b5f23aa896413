//! The WebAssembly side: the engine, loading a guest component, and running
//! one request through a fresh instance of it.
//!
//! It meets the HTTP side at `http::Request` / `http::Response`.

pub mod engine;
pub mod guest;
