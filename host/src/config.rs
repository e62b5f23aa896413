//! Server configuration: the web root, the guests and their routes, and
//! every limit. Each setting is declared once, in [`Startup`] or
//! [`Limits`] (and, when a route may set it for itself, [`RouteLimits`]),
//! by `setting::settings!`; its flag, environment variable, file key and
//! route option all come from that declaration. [`file`](mod@file) reads the
//! optional configuration file.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use setting::{Addr, Bytes, Count, FsPath, Maybe, Mib, Millis, Secs, Switch, settings};

use crate::clients::{Rate, TrustedProxies};
use crate::outbound::policy::{AllowList, Patterns};
use crate::state::{ConfigValues, ConfigVars, Grants, KvLimits, StoreList, StoreNames, StoreSpec};
use crate::tls::TlsFiles;

pub mod file;
pub mod setting;

/// Address the server listens on when none is given: loopback, so a server
/// started to try it out is not reachable from the network.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Web root served when none is given, relative to the working directory.
pub const DEFAULT_ROOT: &str = "www";

/// Longest request line plus header section. 16 KiB holds long URLs and
/// cookie headers (nginx's `large_client_header_buffers` allows 8 KiB a
/// line) while bounding what one connection can make the server buffer.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
pub use wasmhttpd_h1::role::MAX_HEADERS;
/// Largest request body the host buffers for a guest (8 MiB): enough for
/// forms and uploads of documents, small enough that a few hundred
/// concurrent uploads cannot exhaust memory.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
/// Time a client has to send a whole request head once it has started:
/// slow-loris clients are cut off after this.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client may pause between two reads of a request body (then
/// 408), as nginx's `client_body_timeout`: an upload over a slow link keeps
/// going, a client that stopped sending does not hold its connection.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an idle keep-alive connection is kept open waiting for the next
/// request, as in nginx's `keepalive_timeout`-style defaults.
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one write to a client may take before the client is considered
/// gone (it stopped reading) and the connection is closed, as nginx's
/// `send_timeout`.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Wall-clock time a guest has to produce its response head, and then
/// each piece of its body. A guest past it gets a 504 (or, once the head
/// is out, its connection closed) and its instance is dropped.
pub const DEFAULT_GUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Linear memory one guest instance may grow to. A static-file guest needs
/// about 2 MiB; 64 MiB leaves room for real applications.
pub const DEFAULT_GUEST_MEMORY: usize = 64 * 1024 * 1024;
/// Open client connections; past it, new connections wait in the kernel's
/// accept backlog rather than being refused.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Guest instances alive at once (slots in the pooling allocator). Each
/// slot reserves address space, not memory; requests past it wait.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// Largest WebSocket message (and frame) accepted from a client; a bigger
/// one closes the session with 1009. 16 MiB covers file uploads over a
/// socket while bounding what one session can make the host buffer.
pub const DEFAULT_WS_MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// A WebSocket session with no message from the client for this long is
/// closed with 1001. Long enough for chat clients that send a heartbeat a
/// minute; short enough that abandoned sessions do not pile up.
pub const DEFAULT_WS_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// WebSocket sessions open at once, each holding a guest instance; past
/// it, upgrades get 503.
pub const DEFAULT_MAX_WEBSOCKETS: u32 = 1000;

/// Time a request waits for a free guest instance when all are busy;
/// then it gets 503 with `Retry-After`. Short: a queue that grows for
/// longer only adds latency to an overload.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests one connection may carry before the server closes it, as
/// nginx's `keepalive_requests`: bounds what one client holds.
pub const DEFAULT_MAX_REQUESTS_PER_CONNECTION: u64 = 1000;
/// Time responses in progress get to finish after a shutdown signal
/// before the server exits anyway: long enough for a large download on a
/// decent link, short enough for a deploy to proceed.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Requests one guest instance serves before it is dropped: 1, a fresh
/// instance per request, is the strongest isolation (no state survives
/// from one request to the next).
pub const DEFAULT_REUSE: usize = 1;
/// Requests one WASIp3 instance serves at once. As `wasmtime serve`'s
/// default; an instance takes another only while the ones in it wait.
pub const DEFAULT_P3_CONCURRENCY: usize = 16;
/// Requests one WASIp3 instance serves in its life, as `wasmtime serve`'s
/// default: a guest that leaks memory or keeps state starts afresh now
/// and then.
pub const DEFAULT_P3_REUSE: usize = 128;

/// Time the host has to connect (name lookup, TCP and TLS handshakes) for
/// a guest's outgoing request: a reachable service answers in well under
/// a second; one that does not should fail the guest's request while the
/// guest still has time to answer its own.
pub const DEFAULT_OUTBOUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time an outgoing request waits for its response head once sent, as
/// the guest's own deadline does for its response.
pub const DEFAULT_OUTBOUND_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time an outgoing response body may pause between two pieces.
pub const DEFAULT_OUTBOUND_BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);
/// Outgoing requests one guest instance may have open at once: room for a
/// gateway that fans out to a few services, not for one instance to flood
/// them.
pub const DEFAULT_MAX_OUTBOUND: u32 = 16;
/// HTTP/2 streams one connection may have open at once, as nginx's
/// `http2_max_concurrent_streams`; more are refused, not queued.
pub const DEFAULT_H2_MAX_STREAMS: u32 = 128;
/// Longest key of a key-value store, in bytes: room for a namespaced key
/// (`session:` and a 64-character token), bounded so keys stay cheap to
/// index and log.
pub const DEFAULT_KV_MAX_KEY: usize = 256;
/// Largest value of a key-value store, in bytes: a session or a small
/// document; larger data belongs in a file or an object store.
pub const DEFAULT_KV_MAX_VALUE: usize = 1024 * 1024;
/// Keys one key-value store may hold, so that a guest filling a store in
/// a loop fills it only so far.
pub const DEFAULT_KV_MAX_KEYS: u64 = 1_000_000;
/// Keys one `list-keys` call gives (and one batch takes) at most.
pub const DEFAULT_KV_PAGE: usize = 1000;
/// Time one key-value operation may take before the guest gets an error:
/// a store that does not answer in this long is down for the guest's
/// purposes, and the guest still has time to answer its own request.
pub const DEFAULT_KV_TIMEOUT: Duration = Duration::from_secs(5);

/// Clients each route's rate limit keeps track of at once (a few dozen
/// bytes each): far more than the clients that send within a burst's
/// time on one server, and few enough that a flood of addresses costs a
/// few MiB.
pub const DEFAULT_RATE_CLIENTS: usize = 100_000;
/// Connections one client may hold open at once: a tenth of
/// `--max-connections`, so that one client cannot take them all, and far
/// more than a browser opens (six over HTTP/1.1, one over HTTP/2), even for
/// an office of them behind one address.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 1000;

/// Which component handles requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestSource {
    /// The static-file guest compiled into the host (`builtin:static`).
    Default,
    /// The demo's accounts guest compiled into the host
    /// (`builtin:accounts`): register, sign in and out, kept in the
    /// route's first granted key-value store.
    Accounts,
    /// A `wasi:http/incoming-handler` component read from this file.
    File(PathBuf),
}

impl GuestSource {
    /// The source a route names: `builtin:static`, `builtin:accounts`, or
    /// a component file.
    pub fn parse(text: &str) -> Result<GuestSource, String> {
        match text.strip_prefix("builtin:") {
            Some("static") => Ok(GuestSource::Default),
            Some("accounts") => Ok(GuestSource::Accounts),
            Some(other) => Err(format!(
                "no built-in guest {other:?}: expected builtin:static or builtin:accounts"
            )),
            None => Ok(GuestSource::File(PathBuf::from(text))),
        }
    }

    /// Its name in logs.
    pub fn name(&self) -> String {
        match self {
            GuestSource::Default => "default guest".to_owned(),
            GuestSource::Accounts => "accounts guest".to_owned(),
            GuestSource::File(path) => path.display().to_string(),
        }
    }
}

/// A component mounted at a path prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `/` or `/seg[/seg…]`: the route takes this path and everything below
    /// it (`/api` takes `/api` and `/api/x`, not `/apix`).
    pub prefix: String,
    /// The component.
    pub guest: GuestSource,
    /// Limits of this route that differ from the server's.
    pub limits: RouteLimits,
}

impl Route {
    /// A route, its prefix checked and written without a trailing slash.
    pub fn new(prefix: &str, guest: GuestSource) -> Result<Route, String> {
        if !prefix.starts_with('/') || prefix.contains(['?', '#', ' ']) || prefix.contains("//") {
            return Err(format!(
                "route prefix {prefix:?} must be a path like /api, without query or spaces"
            ));
        }
        let trimmed = prefix.trim_end_matches('/');
        Ok(Route {
            prefix: if trimmed.is_empty() { "/" } else { trimmed }.to_owned(),
            guest,
            limits: RouteLimits::default(),
        })
    }

    /// The same route with its own limits.
    pub fn with_limits(mut self, limits: RouteLimits) -> Route {
        self.limits = limits;
        self
    }
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory preopened read-only for every guest at `/`.
    pub root: PathBuf,
    /// Components by path prefix; the longest matching prefix serves a
    /// request, and a path outside every route is a 404.
    pub routes: Vec<Route>,
    /// Environment variables the guest sees through `wasi:cli/environment`,
    /// as `wasmtime serve --env` passes them; the host's own environment is
    /// not inherited.
    pub env: Vec<(String, String)>,
    /// Protocol and resource limits.
    pub limits: Limits,
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Reload a guest when its file changes.
    pub watch: bool,
    /// Serve HTTPS with this certificate and key instead of cleartext.
    pub tls: Option<TlsFiles>,
    /// The key-value stores declared besides `default`.
    pub stores: Vec<StoreSpec>,
    /// Event loops that accept and serve connections, each on a thread of
    /// its own with a single-threaded runtime, the caller's being the
    /// first; 1 serves on the caller's runtime alone.
    pub event_loops: usize,
    /// Where SQLite stores without a file of their own live; `None` is the
    /// user's data directory.
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// A configuration with default limits serving `root` with the default
    /// guest on `/`, watching nothing and caching nothing.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Config {
            root: root.into(),
            routes: vec![Route {
                prefix: "/".to_owned(),
                guest: GuestSource::Default,
                limits: RouteLimits::default(),
            }],
            env: Vec::new(),
            limits: Limits::default(),
            cache_dir: None,
            watch: false,
            tls: None,
            stores: Vec::new(),
            data_dir: None,
            event_loops: 1,
        }
    }

    /// The same configuration with `guest` on `/`.
    pub fn with_guest(mut self, guest: GuestSource) -> Self {
        self.routes.retain(|route| route.prefix != "/");
        self.routes.push(Route {
            prefix: "/".to_owned(),
            guest,
            limits: RouteLimits::default(),
        });
        self
    }
}

settings! {
    /// What the binary starts with besides the limits: where it listens,
    /// what it serves and how it finds its guests.
    pub struct Startup {
        /// Address to listen on; port 0 picks a free port. A listener
        /// passed by socket activation (LISTEN_FDS) is used instead.
        listen: Addr = DEFAULT_LISTEN,
        /// Listen with SO_REUSEPORT, so several wasmhttpd processes share
        /// --listen and the kernel spreads new connections among them: to
        /// hand over, start the new one, wait for its /readyz, then send
        /// SIGTERM to the old one.
        reuse_port: Switch = false,
        /// Serve Prometheus metrics at http://ADDR/metrics, on a listener of
        /// their own (keep it off the public interface).
        metrics: Maybe<Addr> = None,
        /// Web root, preopened read-only for the guest at `/`.
        root: FsPath = PathBuf::from(DEFAULT_ROOT),
        /// A wasi:http component (`.wasm`) to handle requests on `/` instead
        /// of the built-in static-file guest. Reloaded when the file changes.
        guest: Maybe<FsPath> = None,
        /// Serve only the `--route` components: no guest on `/` unless a
        /// route names it, and paths outside every route get 404.
        no_default_guest: Switch = false,
        /// Do not watch guest files; reload them on SIGHUP only.
        no_watch: Switch = false,
        /// Directory for compiled components [default: the user's cache
        /// directory, e.g. ~/.cache/wasmhttpd].
        cache_dir: Maybe<FsPath> = None,
        /// Compile every component at start, without a cache.
        no_cache: Switch = false,
        /// Serve HTTPS with this certificate chain (PEM, the server's own
        /// certificate first); needs --tls-key. Reloaded when it changes.
        tls_cert: Maybe<FsPath> = None,
        /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC).
        tls_key: Maybe<FsPath> = None,
        /// Also listen on ADDR in cleartext, answering every request with
        /// 308 to the same URL on https; needs --tls-cert.
        http_redirect: Maybe<Addr> = None,
        /// Declare a key-value store guests may be granted: NAME=sqlite (a
        /// database in --data-dir), NAME=sqlite:FILE,
        /// NAME=redis://HOST[:PORT][/DB] (shared by replicas) or
        /// NAME=memory (gone when the server stops). Repeatable. A store
        /// named default, SQLite, is declared unless given here.
        kv_store: StoreList = Vec::new(),
        /// Directory of the SQLite key-value stores [default: the user's
        /// data directory, e.g. ~/.local/share/wasmhttpd].
        data_dir: Maybe<FsPath> = None,
        /// Event loops that accept and serve connections, each a thread with
        /// a single-threaded runtime; a connection, its requests and its
        /// guest calls stay on the loop that accepted it [default: the
        /// cores available].
        event_loops: Maybe<Count<usize>> = None,
        /// Serve on tokio's work-stealing runtime instead of one event loop
        /// per core, as wasmhttpd did before, to measure the two against
        /// each other.
        work_stealing: Switch = false,
    }
}

settings! {
    /// Protocol and resource limits; see the `DEFAULT_*` constants for why
    /// each default is what it is.
    pub struct Limits {
        /// Longest request line plus header section, in bytes (then 414 or
        /// 431).
        max_head: Bytes<usize> = DEFAULT_MAX_HEAD_BYTES,
        /// Largest request body accepted, in bytes (then 413).
        max_body: Bytes<u64> = DEFAULT_MAX_BODY_BYTES,
        /// Seconds a client has to send a request head once it started.
        header_timeout: Secs = DEFAULT_HEADER_TIMEOUT,
        /// Seconds a client may pause while sending a request body (then
        /// 408).
        body_timeout: Secs = DEFAULT_BODY_TIMEOUT,
        /// Seconds an idle keep-alive connection is kept open.
        keep_alive_timeout: Secs = DEFAULT_KEEP_ALIVE_TIMEOUT,
        /// Seconds one write to a client may take; a client that stopped
        /// reading is disconnected after it.
        write_timeout: Secs = DEFAULT_WRITE_TIMEOUT,
        /// Open client connections at most; more wait in the accept backlog.
        max_connections: Count<usize> = DEFAULT_MAX_CONNECTIONS,
        /// Largest WebSocket message accepted, in bytes (then close 1009).
        ws_max_message: Bytes<usize> = DEFAULT_WS_MAX_MESSAGE,
        /// Seconds a WebSocket session may stay silent (then close 1001).
        ws_idle_timeout: Secs = DEFAULT_WS_IDLE_TIMEOUT,
        /// WebSocket sessions open at once; more upgrades get 503.
        max_websockets: Count<u32> = DEFAULT_MAX_WEBSOCKETS,
        /// Seconds responses in progress get to finish after SIGTERM or
        /// SIGINT (a second signal exits at once).
        shutdown_grace: Secs = DEFAULT_SHUTDOWN_GRACE,
        /// Seconds a request waits for a free guest instance before a 503
        /// with Retry-After.
        queue_timeout: Secs = DEFAULT_QUEUE_TIMEOUT,
        /// Requests one connection may carry; the last says `Connection:
        /// close`.
        max_requests_per_connection: Count<u64> = DEFAULT_MAX_REQUESTS_PER_CONNECTION,
        /// HTTP/2 streams one connection may have open at once; more are
        /// refused (REFUSED_STREAM).
        h2_max_streams: Count<u32> = DEFAULT_H2_MAX_STREAMS,
        /// Seconds the host has to connect for a guest's outgoing request
        /// (lookup, TCP, TLS); a guest's request-options may shorten it.
        outbound_connect_timeout: Secs = DEFAULT_OUTBOUND_CONNECT_TIMEOUT,
        /// Seconds an outgoing request waits for its response head; a
        /// guest's request-options may shorten it.
        outbound_first_byte_timeout: Secs = DEFAULT_OUTBOUND_FIRST_BYTE_TIMEOUT,
        /// Seconds an outgoing response body may pause; a guest's
        /// request-options may shorten it.
        outbound_between_bytes_timeout: Secs = DEFAULT_OUTBOUND_BETWEEN_BYTES_TIMEOUT,
        /// Outgoing requests one guest instance may have open at once; more
        /// fail in the guest.
        max_outbound: Count<u32> = DEFAULT_MAX_OUTBOUND,
        /// Certificate authorities (PEM) that guests' https requests trust
        /// besides the public webpki roots: for services whose certificates
        /// a private authority issued.
        outbound_ca: Maybe<FsPath> = None,
        /// Longest key of a key-value store, in bytes; a longer one is the
        /// guest's error.
        kv_max_key: Bytes<usize> = DEFAULT_KV_MAX_KEY,
        /// Largest value of a key-value store, in bytes.
        kv_max_value: Bytes<usize> = DEFAULT_KV_MAX_VALUE,
        /// Keys one key-value store may hold; a new key past it is the
        /// guest's error.
        kv_max_keys: Count<u64> = DEFAULT_KV_MAX_KEYS,
        /// Keys one list-keys call gives, and one batch takes, at most.
        kv_page: Count<usize> = DEFAULT_KV_PAGE,
        /// Seconds one key-value operation may take before the guest gets
        /// an error.
        kv_timeout: Secs = DEFAULT_KV_TIMEOUT,
        /// A proxy in front of the server (an address, or a range such as
        /// 10.0.0.0/8) whose Forwarded or X-Forwarded-For header names the
        /// client for --rate and --max-client-connections; from any other
        /// peer those headers are ignored. Repeatable.
        trusted_proxy: Proxies = TrustedProxies::default(),
        /// Clients each route's rate limit keeps track of at once; while
        /// that many are, the ones past them share one budget.
        rate_clients: Count<usize> = DEFAULT_RATE_CLIENTS,
        /// Connections one client (an address; an IPv6 client by its /64)
        /// may hold open at once; a new one past it gets 503 and is closed.
        /// A --trusted-proxy is not held to it.
        max_client_connections: Count<usize> = DEFAULT_MAX_CLIENT_CONNECTIONS,
    }

    /// A route's own limits (`--route /api=api.wasm,guest-timeout=5`); each
    /// one unset takes the server's.
    pub struct RouteLimits {
        /// Seconds a guest has to produce its response head (then 504), and
        /// each piece of its body.
        guest_timeout: Secs = DEFAULT_GUEST_TIMEOUT,
        /// CPU time, in milliseconds, a guest may run for on one request
        /// or WebSocket message (its calls into the host included),
        /// however long it waits; past it the request gets 504 (or, once
        /// its head is sent, its connection closed) and a log line. Looked
        /// at every millisecond once the guest has run for 2 ms. Unset,
        /// the default: no limit but --guest-timeout.
        guest_cpu_time: Maybe<Millis> = None,
        /// Linear memory cap per guest instance, in MiB.
        guest_memory: Mib = DEFAULT_GUEST_MEMORY,
        /// Guest instances alive at once; more requests wait. A route's own
        /// is a share reserved for it besides the server's.
        max_instances: Count<u32> = DEFAULT_MAX_INSTANCES,
        /// Requests one guest instance serves, one after another, before it
        /// is dropped. 1 (a fresh instance per request) isolates requests
        /// from each other; more is faster, and state a guest keeps is seen
        /// by the next request on the same instance.
        reuse: Count<usize> = DEFAULT_REUSE,
        /// Requests one WASIp3 guest instance serves at the same time (a
        /// WASIp2 instance serves one at a time).
        p3_concurrency: Count<usize> = DEFAULT_P3_CONCURRENCY,
        /// Requests one WASIp3 guest instance serves in its life, before
        /// it is dropped.
        p3_reuse: Count<usize> = DEFAULT_P3_REUSE,
        /// Where guests may send HTTP requests: SCHEME://HOST[:PORT], such
        /// as https://api.example.com, https://*.example.com, http://*:*
        /// (any public address) or http://10.0.0.0/8:*. Repeatable. None
        /// (the default) denies every outgoing request; loopback, private
        /// and link-local addresses need an entry naming them. A route's
        /// own list replaces the server's.
        allow_outbound: Patterns = AllowList::default(),
        /// Key-value stores (--kv-store) guests may open, by name; the first
        /// is the one a guest opening the bucket "" gets. Repeatable. None
        /// (the default) denies every store. A route's own list replaces
        /// the server's.
        allow_kv: StoreNames = Grants::default(),
        /// A value guests read through wasi:config/store: KEY=VALUE.
        /// Repeatable. A route's own list replaces the server's.
        config_var: ConfigVars = ConfigValues::default(),
        /// Requests each client may send to a route, a second (10/s) or a
        /// minute (600/m), checked before any guest runs; more get 429 with
        /// Retry-After. off, or unset (the default): no limit.
        rate: Rates = None,
        /// Requests a client may send at once, above its --rate, before the
        /// limit holds it [default: the rate's count].
        burst: Maybe<Count<u32>> = None,
    }
}

/// The `--rate` setting: `N/s`, `N/m`, or `off`.
pub struct Rates;

impl setting::Unit for Rates {
    type Value = Option<Rate>;
    const VALUE_NAME: &'static str = "RATE";

    fn parse(text: &str) -> Result<Option<Rate>, String> {
        if text.trim() == "off" {
            return Ok(None);
        }
        Rate::parse(text).map(Some)
    }

    fn show(_: &Option<Rate>) -> Option<String> {
        None
    }
}

/// The `--trusted-proxy` setting: addresses and ranges, repeated or in
/// an array of the configuration file.
pub struct Proxies;

impl setting::Unit for Proxies {
    type Value = TrustedProxies;
    const VALUE_NAME: &'static str = "ADDR_OR_RANGE";

    fn parse(text: &str) -> Result<TrustedProxies, String> {
        TrustedProxies::parse(text).map(|net| TrustedProxies(vec![net]))
    }

    fn from_file(value: &toml::Value, _: &file::ConfigFile) -> Result<TrustedProxies, String> {
        setting::strings(value, "addresses or ranges")?
            .iter()
            .map(|text| TrustedProxies::parse(text))
            .collect::<Result<Vec<_>, String>>()
            .map(TrustedProxies)
    }

    fn show(_: &TrustedProxies) -> Option<String> {
        None
    }

    fn arg(arg: clap::Arg) -> clap::Arg {
        setting::list_arg(arg, Self::VALUE_NAME, Self::parse)
    }

    fn given(matches: &clap::ArgMatches, id: &str) -> Option<TrustedProxies> {
        matches
            .get_many::<TrustedProxies>(id)?
            .cloned()
            .reduce(Self::combine)
    }

    fn combine(mut earlier: TrustedProxies, later: TrustedProxies) -> TrustedProxies {
        earlier.0.extend(later.0);
        earlier
    }
}

impl Limits {
    /// The limits every key-value operation is held to.
    pub fn kv(&self) -> KvLimits {
        KvLimits {
            max_key: self.kv_max_key,
            max_value: self.kv_max_value,
            max_keys: self.kv_max_keys,
            page: self.kv_page,
            timeout: self.kv_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_settings() {
        let limits = RouteLimits::parse([
            "guest-timeout=2.5",
            "guest-cpu-time=40",
            "guest-memory=16",
            "max-instances=50",
            "reuse=8",
            "allow-outbound=https://api.example.com",
            "allow-outbound=http://10.0.0.0/8:*",
        ])
        .unwrap();
        assert_eq!(limits.guest_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(limits.guest_cpu_time, Some(Some(Duration::from_millis(40))));
        assert_eq!(limits.guest_memory, Some(16 << 20));
        assert_eq!(limits.max_instances, Some(50));
        assert_eq!(limits.reuse, Some(8));
        let allowed = limits.allow_outbound.as_ref().unwrap().patterns();
        let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        assert_eq!(allowed, ["https://api.example.com", "http://10.0.0.0/8:*"]);
        assert_eq!(RouteLimits::parse([]).unwrap(), RouteLimits::default());
        // An empty list of a route's own denies that route everything.
        let none = RouteLimits::parse(["allow-outbound="]).unwrap();
        assert_eq!(none.allow_outbound, Some(AllowList::default()));
        for bad in [
            "reuse=0",
            "guest-timeout=-1",
            "guest-cpu-time=0",
            "max-instances=x",
            "speed=9",
            "reuse",
            "allow-outbound=example.com",
        ] {
            assert!(RouteLimits::parse([bad]).is_err(), "{bad}");
        }
    }
}
