//! Server configuration: the web root, the guests and their routes, and
//! every limit; [`file`] reads the optional configuration file.

use std::path::PathBuf;
use std::time::Duration;

pub mod file;

/// Address the server listens on when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
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

/// Which component handles requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestSource {
    /// The static-file guest compiled into the host.
    Default,
    /// A `wasi:http/incoming-handler` component read from this file.
    File(PathBuf),
}

/// A component mounted at a path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `/` or `/seg[/seg…]`: the route takes this path and everything below
    /// it (`/api` takes `/api` and `/api/x`, not `/apix`).
    pub prefix: String,
    /// The component.
    pub guest: GuestSource,
    /// Limits of this route that differ from the server's.
    pub limits: RouteLimits,
}

/// A route's own limits; each one unset takes the server's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteLimits {
    /// Time its guest has for a response head, and for each body chunk.
    pub guest_timeout: Option<Duration>,
    /// Linear memory cap per instance, in bytes.
    pub guest_memory: Option<usize>,
    /// Its own share of instances running requests at once (reserved in
    /// the pool in addition to the server's `max_instances`).
    pub max_instances: Option<u32>,
    /// Requests one of its instances serves.
    pub reuse: Option<usize>,
}

impl RouteLimits {
    /// Parses `key=value` settings (`guest-timeout=5`, `guest-memory=16`
    /// in MiB, `max-instances=50`, `reuse=8`), as `--route` takes them
    /// after the file name.
    pub fn parse<'a>(settings: impl IntoIterator<Item = &'a str>) -> Result<RouteLimits, String> {
        let mut limits = RouteLimits::default();
        for setting in settings {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("route setting {setting:?} is not key=value"))?;
            let number =
                || {
                    value.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("{key} takes a positive whole number, not {value:?}")
                    })
                };
            match key {
                "guest-timeout" => {
                    let secs = value
                        .parse::<f64>()
                        .ok()
                        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                        .filter(|secs| !secs.is_zero())
                        .ok_or_else(|| format!("guest-timeout takes seconds, not {value:?}"))?;
                    limits.guest_timeout = Some(secs);
                }
                "guest-memory" => {
                    let mib = usize::try_from(number()?).map_err(|err| err.to_string())?;
                    let bytes = mib
                        .checked_mul(1 << 20)
                        .ok_or("guest-memory is too large")?;
                    limits.guest_memory = Some(bytes);
                }
                "max-instances" => {
                    limits.max_instances =
                        Some(u32::try_from(number()?).map_err(|err| err.to_string())?);
                }
                "reuse" => {
                    limits.reuse = Some(usize::try_from(number()?).map_err(|err| err.to_string())?);
                }
                _ => {
                    return Err(format!(
                        "unknown route setting {key:?}: expected guest-timeout, guest-memory, \
                         max-instances or reuse"
                    ));
                }
            }
        }
        Ok(limits)
    }
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

/// Protocol and resource limits; see the `DEFAULT_*` constants for why each
/// default is what it is.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest request line plus headers, in bytes.
    pub max_head_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: u64,
    /// Time to send a request head once started.
    pub header_timeout: Duration,
    /// Time a client may pause while sending a request body.
    pub body_timeout: Duration,
    /// Time an idle keep-alive connection waits for its next request.
    pub keep_alive_timeout: Duration,
    /// Time one write to the client may take.
    pub write_timeout: Duration,
    /// Time a guest has for its response head, and for each body chunk.
    pub guest_timeout: Duration,
    /// Linear memory cap per guest instance, in bytes.
    pub guest_memory: usize,
    /// Open client connections.
    pub max_connections: usize,
    /// Guest instances alive at once for requests.
    pub max_instances: u32,
    /// Largest WebSocket message from a client, in bytes.
    pub ws_max_message: usize,
    /// Time a WebSocket session may go without a client message.
    pub ws_idle_timeout: Duration,
    /// WebSocket sessions open at once (each with its own instance).
    pub max_websockets: u32,
    /// Requests one instance serves, one at a time.
    pub reuse: usize,
    /// Time in-flight responses get to finish once shutdown begins.
    pub shutdown_grace: Duration,
    /// Time a request waits for an instance before a 503.
    pub queue_timeout: Duration,
    /// Requests on one connection before it is closed.
    pub max_requests_per_connection: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            guest_timeout: DEFAULT_GUEST_TIMEOUT,
            guest_memory: DEFAULT_GUEST_MEMORY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_instances: DEFAULT_MAX_INSTANCES,
            ws_max_message: DEFAULT_WS_MAX_MESSAGE,
            ws_idle_timeout: DEFAULT_WS_IDLE_TIMEOUT,
            max_websockets: DEFAULT_MAX_WEBSOCKETS,
            reuse: DEFAULT_REUSE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            max_requests_per_connection: DEFAULT_MAX_REQUESTS_PER_CONNECTION,
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
            "guest-memory=16",
            "max-instances=50",
            "reuse=8",
        ])
        .unwrap();
        assert_eq!(limits.guest_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(limits.guest_memory, Some(16 << 20));
        assert_eq!(limits.max_instances, Some(50));
        assert_eq!(limits.reuse, Some(8));
        assert_eq!(RouteLimits::parse([]).unwrap(), RouteLimits::default());
        for bad in [
            "reuse=0",
            "guest-timeout=-1",
            "max-instances=x",
            "speed=9",
            "reuse",
        ] {
            assert!(RouteLimits::parse([bad]).is_err(), "{bad}");
        }
    }
}
