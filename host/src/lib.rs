//! wasmhttpd: a web server whose request handlers are sandboxed
//! WebAssembly components.
//!
//! The host owns the TCP listener and speaks HTTP/1.1 itself; each request
//! is handed to a guest component through the standard
//! `wasi:http/incoming-handler` interface, in a fresh instance with the web
//! root preopened read-only.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let server = wasmhttpd::Server::new(wasmhttpd::Config::new("www"))?;
//! let listener = wasmhttpd::bind("127.0.0.1:8080".parse()?)?;
//! server.run(listener, std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - [`config`]: the configuration and every limit, with its default.
//! - [`clients`]: who a client is (its address, or the one a trusted
//!   proxy forwards), and its share: a route's rate limit, its open
//!   connections.
//! - [`server`]: binding, the event loops (one per core, each accepting
//!   and serving), the connection cap, the drain.
//! - [`telemetry`]: OpenTelemetry traces, from the `OTEL_*` variables:
//!   the spans the rest opens, their export off the event loops.
//! - [`tls`]: the certificate and key for HTTPS, checked and reloaded.
//! - [`routes`]: which guest serves which path prefix.
//! - [`dispatch`]: between the front ends and the guests, for every
//!   protocol: a request's id and route, the guest's call and its checked
//!   response or a page of the host's, WebSocket sessions, and the one
//!   place the access log and the metrics are written.
//! - [`outbound`]: the requests guests send, under the operator's
//!   allow-list: checked, resolved and connected by the host.
//! - [`metrics`]: counters and gauges, encoded for Prometheus
//!   (`allocations`, with `--features count-allocations`: the count of
//!   the host's allocations, for measuring a request's).
//! - [`state`]: what guests keep: key-value stores (SQLite, memory)
//!   granted by route, and `wasi:config` values.
//! - [`proto`]: the front ends (HTTP/1.1: parse, connection loop, bodies,
//!   WebSocket upgrades; HTTP/2 through hyper) and the host's own small
//!   endpoints (metrics and probes, the redirect to https).
//! - [`watch`]: the files the server watches (guests, the TLS
//!   certificate), reloaded when they change.
//! - [`wasm`]: the engines, the compiled-component cache, loading a guest
//!   and reloading it live, running a request (WASIp2 or WASIp3) or a
//!   WebSocket session through it; what every kind of instance shares
//!   lives in `wasm::instance`, which knows none of them.

#[cfg(feature = "count-allocations")]
pub mod allocations;
pub mod clients;
pub mod config;
mod cores;
pub mod dispatch;
pub mod metrics;
pub mod outbound;
pub mod proto;
pub mod routes;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod wasm;
pub mod watch;

pub use config::{Config, GuestSource, Limits, Route, RouteLimits, Startup};
pub use cores::unpin_thread;
pub use server::{
    Compiled, Monitor, Reloader, Server, StartError, bind, bind_shared, compile, inherited_listener,
};

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
