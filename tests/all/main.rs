//! The integration tests: one binary, a module per area, each talking to a
//! real server over loopback sockets with raw bytes or real clients.
//!
//! One binary links wasmtime once, and the fixtures in [`support`] (the
//! compiled guests' cache, shared test servers) are made once per run.

mod process;
mod support;

mod accounts;
mod bench;
mod browser;
mod build_check;
mod cli;
mod client_limits;
mod compression;
mod docs;
mod examples;
mod guest_faults;
mod guest_settings;
mod guest_time;
pub(crate) mod h2;
mod http1;
pub(crate) mod kv;
mod long_connections;
pub(crate) mod many;
pub(crate) mod metrics;
pub(crate) mod outbound;
mod p3;
mod static_files;
mod swap_and_routes;
mod tls;
mod traces;
