//! Binding, the accept loop and the connection cap; one task per connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::clients::{RateLimit, RateLimits};
use crate::config::{Config, GuestSource, Limits, Route, RouteLimits};
use crate::cores;
use crate::dispatch::{Connection, Dispatch};
use crate::metrics::{Metrics, RouteCounters};
use crate::proto::conn::Conn;
use crate::proto::h2;
use crate::routes::{Mount, Routes};
use crate::state::{StateError, Stores};
use crate::tls::{Certificates, TlsError};
use crate::wasm::cache::{CompiledCache, Digest, Origin};
use crate::wasm::engine::Engines;
use crate::wasm::guest::{Guest, LoadError};
use crate::wasm::inspect::Wasi;
use crate::wasm::instance::GuestContext;
use crate::wasm::reload::GuestSlot;
use crate::watch::{Reload, Watching};

/// Pending connections the kernel queues while all are busy.
const LISTEN_BACKLOG: u32 = 1024;
/// Pause after a failed `accept` (out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The web root is missing or not a directory.
    #[error(
        "web root {} is not a readable directory ({reason}): give the web root with --root DIR \
         (default ./{}, relative to the current directory)",
        with_absolute(path),
        crate::config::DEFAULT_ROOT
    )]
    Root {
        /// The configured root.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The wasmtime engine could not be configured.
    #[error("cannot configure the WebAssembly engine: {0:#}")]
    Engine(wasmtime::Error),
    /// The guest component could not be loaded.
    #[error(transparent)]
    Guest(#[from] LoadError),
    /// Two routes have the same prefix.
    #[error("two routes have the prefix {0}")]
    DuplicateRoute(String),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(TlsError),
    /// A key-value store could not be opened, or a grant names none.
    #[error(transparent)]
    State(StateError),
    /// `wasmhttpd compile` was given no cache to fill.
    #[error("compiling ahead fills the compiled-component cache: give --cache-dir, not --no-cache")]
    NoCache,
    /// `wasmhttpd compile` could not store a guest's compiled code.
    #[error(
        "could not store the compiled code of {name} in {dir}: give a --cache-dir this user can \
         write"
    )]
    NotStored {
        /// The guest file, or "default guest".
        name: String,
        /// The cache directory.
        dir: PathBuf,
    },
}

/// `path`, and where it is when it was given relative to the current
/// directory.
fn with_absolute(path: &Path) -> String {
    match std::path::absolute(path) {
        Ok(absolute) if absolute != path => format!("{} ({})", path.display(), absolute.display()),
        _ => path.display().to_string(),
    }
}

/// A guest that [`compile`] has put in the compiled-component cache.
#[derive(Debug)]
pub struct Compiled {
    /// The route it serves.
    pub prefix: String,
    /// The guest file, or "default guest".
    pub name: String,
    /// The component's SHA-256.
    pub digest: Digest,
    /// Whether it was compiled now or already in the cache.
    pub origin: Origin,
}

/// Compiles every route's guest of `config` into its compiled-component
/// cache with the engine the server would build for the same settings,
/// and links it as the server would, without serving; the web root need
/// not exist yet. A server started with the same settings and cache then
/// starts without compiling (`wasmhttpd compile`).
pub fn compile(config: Config) -> Result<Vec<Compiled>, StartError> {
    let Some(dir) = config.cache_dir.clone() else {
        return Err(StartError::NoCache);
    };
    let engines = Engines::new(&config.limits, &config.routes).map_err(StartError::Engine)?;
    let cache = CompiledCache::new(Some(dir.clone()));
    let guests = Arc::new(
        GuestContext::new(
            Arc::new(engines),
            config.root,
            config.env,
            &config.limits,
            cache.clone(),
            // Compiling opens no store: nothing is written but the cache.
            Arc::new(Stores::closed(Arc::new(Metrics::new()))),
        )
        .map_err(StartError::Tls)?,
    );
    let mut compiled = Vec::new();
    for route in config.routes {
        let ctx = if route.limits == RouteLimits::default() {
            guests.clone()
        } else {
            Arc::new(guests.for_route(&route.limits))
        };
        let (name, bytes) = route.guest.read()?;
        let loaded = Guest::load(&ctx, &name, &bytes, RouteCounters::default())?;
        let digest = loaded.guest.digest;
        if !cache.has(loaded.guest.engine(), &digest) {
            return Err(StartError::NotStored { name, dir });
        }
        compiled.push(Compiled {
            prefix: route.prefix,
            name,
            digest,
            origin: loaded.origin,
        });
    }
    Ok(compiled)
}

/// Binds `addr` with `SO_REUSEADDR`, so a restarted server gets its port
/// back at once even while old connections sit in `TIME_WAIT`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_socket(addr, false)
}

/// Binds `addr` as [`bind`] does and with `SO_REUSEPORT` too, so that
/// several processes listen on it at once and the kernel spreads new
/// connections among them: the way a new process takes over from an old
/// one without a moment in which the port is closed.
pub fn bind_shared(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_socket(addr, true)
}

fn bind_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The socket another event loop accepts from: with `SO_REUSEPORT` on
/// `listener` (`--reuse-port`), a socket of its own bound to the same
/// address, so that the kernel spreads new connections among the loops'
/// sockets by their addresses (as nginx's `reuseport` does); otherwise a handle of its
/// own to the same socket, whose connections go to whichever loop accepts
/// first. A port is not shared unless the operator asked for it: without
/// `SO_REUSEPORT`, a second server on the same port fails to start.
fn listener_of_loop(listener: &TcpListener) -> io::Result<std::net::TcpListener> {
    if socket2::SockRef::from(listener).reuse_port()? {
        return bind_shared(listener.local_addr()?)?.into_std();
    }
    Ok(std::net::TcpListener::from(
        listener.as_fd().try_clone_to_owned()?,
    ))
}

/// The listening socket this process inherited by socket activation
/// (`LISTEN_FDS` and `LISTEN_PID`, as systemd and `systemfd` pass it), or
/// `None` when it was given none. The socket outlives any one process, so
/// a restart never closes the port.
pub fn inherited_listener() -> io::Result<Option<TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 1 {
        return Err(io::Error::other(format!(
            "LISTEN_FDS passes {} sockets; wasmhttpd takes one, its HTTP listener",
            fds.len()
        )));
    }
    let Some(listener) = fds.take_tcp_listener(0)? else {
        return Ok(None);
    };
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener).map(Some)
}

/// What a running server holds.
struct Shared {
    /// What every connection calls.
    dispatch: Arc<Dispatch>,
    /// Set to true when the server starts shutting down.
    shutdown: watch::Sender<bool>,
    guests: Arc<GuestContext>,
    /// The certificate for HTTPS; `None` serves cleartext.
    tls: Option<Arc<Certificates>>,
}

impl Shared {
    fn routes(&self) -> &Routes {
        self.dispatch.routes()
    }
}

/// A configured server, ready to run on a listener.
pub struct Server {
    shared: Arc<Shared>,
    /// The guest files, watched from the start when `Config::watch` is set.
    watching: Option<Watching>,
    /// Event loops that accept and serve connections, this one included.
    event_loops: usize,
    /// The open connections of the event loop this handle runs on.
    loop_connections: Gauge,
}

/// A view of a server's load while it runs.
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<Shared>,
}

impl Monitor {
    /// Guest instances running a request now, on every route.
    pub fn requests_running(&self) -> usize {
        let own: usize = self
            .shared
            .routes()
            .slots()
            .map(|slot| slot.context())
            .filter(|ctx| ctx.has_own_instances())
            .map(|ctx| ctx.requests_running())
            .sum();
        self.shared.guests.requests_running() + own
    }

    /// Whether the server's shutdown has begun: it takes no new
    /// connections and finishes the responses in progress.
    pub fn shutting_down(&self) -> bool {
        *self.shared.shutdown.borrow()
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        usize::try_from(self.shared.dispatch.metrics().open_connections()).unwrap_or(0)
    }

    /// Guest instances alive now, for requests (running or idle between
    /// them) and WebSocket sessions, on every route.
    pub fn guest_instances(&self) -> usize {
        usize::try_from(self.shared.dispatch.metrics().guest_instances()).unwrap_or(0)
    }

    /// Which `wasi:http` the guest that serves `path` now exports.
    pub fn guest_wasi(&self, path: &str) -> Option<Wasi> {
        self.shared
            .routes()
            .find(path)
            .map(|slot| slot.current().wasi())
    }

    /// WebSocket sessions open now.
    pub fn websocket_sessions(&self) -> usize {
        self.shared.guests.websocket_sessions()
    }

    /// For the route that takes `path`: reloads that swapped a new guest
    /// in, and reloads that failed and kept the running one.
    pub fn reloads(&self, path: &str) -> Option<(u64, u64)> {
        self.shared.routes().find(path).map(|slot| slot.reloads())
    }

    /// The digest of the guest that serves `path` now.
    pub fn guest_digest(&self, path: &str) -> Option<Digest> {
        self.shared
            .routes()
            .find(path)
            .map(|slot| slot.current().digest)
    }
}

/// Reloads a running server's guests on demand (SIGHUP in the binary).
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    /// Reloads every route whose guest comes from a file, and the TLS
    /// certificate; logs each outcome.
    pub async fn reload_all(&self) {
        for slot in self.shared.routes().slots() {
            if matches!(slot.source(), GuestSource::File(_)) {
                slot.reload_and_log().await;
            }
        }
        if let Some(tls) = &self.shared.tls {
            tls.reload_and_log();
        }
    }
}

impl Server {
    /// A handle that reports this server's load.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            shared: self.shared.clone(),
        }
    }

    /// Checks the web root and compiles the guest: every configuration
    /// error surfaces here, before the server binds or takes a request.
    pub fn new(config: Config) -> Result<Server, StartError> {
        let root = config.root.canonicalize().map_err(|err| StartError::Root {
            path: config.root.clone(),
            reason: err.to_string(),
        })?;
        if !root.is_dir() {
            return Err(StartError::Root {
                path: config.root,
                reason: "not a directory".into(),
            });
        }
        let engines = Engines::new(&config.limits, &config.routes).map_err(StartError::Engine)?;
        let metrics = Arc::new(Metrics::new());
        let tls = match config.tls {
            Some(files) => Some(Arc::new(
                Certificates::load(files, metrics.clone()).map_err(StartError::Tls)?,
            )),
            None => None,
        };
        let grants = std::iter::once(&config.limits.allow_kv).chain(
            config
                .routes
                .iter()
                .filter_map(|route| route.limits.allow_kv.as_ref()),
        );
        let stores = Stores::open(
            &config.stores,
            grants,
            config.data_dir.as_deref(),
            config.limits.kv(),
            metrics.clone(),
        )
        .map_err(StartError::State)?;
        let guests = Arc::new(
            GuestContext::new(
                Arc::new(engines),
                root,
                config.env,
                &config.limits,
                CompiledCache::new(config.cache_dir),
                Arc::new(stores),
            )
            .map_err(StartError::Tls)?,
        );
        let rate_limits = Arc::new(RateLimits::default());
        let mut table: Vec<Mount> = Vec::new();
        for route in config.routes {
            if table.iter().any(|mount| *mount.prefix == route.prefix) {
                return Err(StartError::DuplicateRoute(route.prefix));
            }
            let ctx = if route.limits == RouteLimits::default() {
                guests.clone()
            } else {
                Arc::new(guests.for_route(&route.limits))
            };
            let rate = rate_limit(&route, &config.limits, &metrics);
            if let Some(rate) = &rate {
                rate_limits.add(rate);
            }
            let slot = GuestSlot::load(ctx, &route.prefix, route.guest)?;
            table.push(Mount {
                prefix: route.prefix.into(),
                slot: Arc::new(slot),
                rate,
            });
        }
        // Watching starts here, so that a file replaced as soon as the
        // server is up is seen.
        let watching = if config.watch {
            let mut targets: Vec<Arc<dyn Reload>> = table
                .iter()
                .map(|mount| mount.slot.clone() as Arc<dyn Reload>)
                .collect();
            targets.extend(tls.clone().map(|tls| tls as Arc<dyn Reload>));
            crate::watch::watch(targets)
                .inspect_err(
                    |err| error!(cause = %err, "cannot watch the guest and certificate files; reload with SIGHUP"),
                )
                .ok()
        } else {
            None
        };
        let shutdown = watch::Sender::new(false);
        // Every loop's series is there from the start, at 0.
        let event_loops = config.event_loops.max(1);
        for index in 1..event_loops {
            metrics.event_loop(index);
        }
        let loop_connections = metrics.event_loop(0);
        let dispatch = Dispatch::new(
            Routes::new(table),
            rate_limits,
            config.limits,
            metrics,
            shutdown.subscribe(),
        );
        Ok(Server {
            shared: Arc::new(Shared {
                dispatch: Arc::new(dispatch),
                shutdown,
                guests,
                tls,
            }),
            watching,
            event_loops,
            loop_connections,
        })
    }

    /// The server's metrics, for [`crate::proto::endpoint::serve_metrics`].
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.dispatch.metrics().clone()
    }

    /// A handle that reloads this server's guests.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
        }
    }

    /// Accepts and serves connections until `shutdown` completes, then
    /// shuts down gracefully: the listener closes (new connections are
    /// refused, or go to the other processes on a shared port), the
    /// connections the kernel had already queued are served, idle
    /// connections close, and responses in progress get up to
    /// [`Limits::shutdown_grace`](crate::Limits::shutdown_grace) to
    /// finish, each the last on its connection. Returns when they have,
    /// or when the grace period is over.
    ///
    /// With [`Config::event_loops`](crate::Config::event_loops) above 1,
    /// as many event loops accept from the listener, each on a thread of
    /// its own with a single-threaded runtime (this one, the caller's,
    /// being the first): a connection, its requests, its guest calls and
    /// its body stay on the loop that accepted it. Each loop is pinned to a
    /// core of its own, the caller's thread too while this runs: a runtime
    /// that calls this starts its own threads with
    /// `on_thread_start(wasmhttpd::unpin_thread)`, so that they do not
    /// inherit the first loop's core.
    pub async fn run(mut self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        // Stops, with the watching, when the server stops.
        let _reloads = self
            .watching
            .take()
            .map(|watching| AbortOnDrop(tokio::spawn(watching.reload_on_change())));
        let _sweep = AbortOnDrop(tokio::spawn(
            self.shared.dispatch.rate_limits().clone().sweep(),
        ));
        let limits = self.shared.dispatch.limits();
        let max_connections = limits.max_connections;
        let connections = Arc::new(Semaphore::new(max_connections));
        let (stop_accepting, stopped) = watch::channel(false);
        let (release, released) = watch::channel(false);
        // The first loop is pinned as the others are, once they have
        // started (threads this one starts later unpin themselves, see
        // `unpin_thread`).
        let first_core = cores::of_loop(0).filter(|_| self.event_loops > 1);
        let (loops, closing) = self.start_event_loops(&listener, &connections, &stopped, &released);
        if let Some(cpu) = first_core {
            cores::pin(cpu);
        }
        self.accept(&listener, &connections, shutdown).await;
        stop_accepting.send_replace(true);
        let mut queued = self.close_listener(listener, &connections);
        // The port is closed once every loop has closed its listener.
        for closed in closing {
            queued += closed.await.unwrap_or(0);
        }
        self.shared.shutdown.send_replace(true);
        let open = max_connections - connections.available_permits();
        let grace = limits.shutdown_grace;
        info!(
            open,
            queued,
            grace_secs = grace.as_secs_f64(),
            "shutting down"
        );
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(grace, connections.acquire_many(all)).await {
            Ok(_) => info!("every connection finished; stopped"),
            Err(_) => {
                let left = max_connections - connections.available_permits();
                warn!(left, "grace period over; stopping with connections open");
            }
        }
        // The other loops end with their runtimes, and what is left on them.
        release.send_replace(true);
        let _ = tokio::task::spawn_blocking(move || {
            for event_loop in loops {
                let _ = event_loop.join();
            }
        })
        .await;
        if first_core.is_some() {
            cores::unpin_thread();
        }
    }

    /// Starts the event loops past the first (this one): each a thread with
    /// a single-threaded runtime that accepts from `listener` (or a socket
    /// of its own on the same address, see [`listener_of_loop`]) until
    /// `stopped`, and serves what it accepted until `released`. Each loop's
    /// receiver tells how many queued connections it took as it closed its
    /// listener (or that it has none).
    fn start_event_loops(
        &self,
        listener: &TcpListener,
        connections: &Arc<Semaphore>,
        stopped: &watch::Receiver<bool>,
        released: &watch::Receiver<bool>,
    ) -> (
        Vec<std::thread::JoinHandle<()>>,
        Vec<tokio::sync::oneshot::Receiver<usize>>,
    ) {
        let mut loops = Vec::new();
        let mut closing = Vec::new();
        for index in 1..self.event_loops {
            let socket = match listener_of_loop(listener) {
                Ok(socket) => socket,
                Err(err) => {
                    error!(cause = %err, "cannot share the listener with another event loop");
                    break;
                }
            };
            let server = self.for_event_loop(index);
            let (connections, mut stopped, mut released) =
                (connections.clone(), stopped.clone(), released.clone());
            let core = cores::of_loop(index);
            let (closed, closed_rx) = tokio::sync::oneshot::channel();
            closing.push(closed_rx);
            let spawned = std::thread::Builder::new()
                .name(format!("wasmhttpd-{index}"))
                .spawn(move || {
                    if let Some(cpu) = core {
                        cores::pin(cpu);
                    }
                    crate::wasm::on_event_loop(index);
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .on_thread_start(cores::unpin_thread)
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            error!(cause = %err, "cannot start an event loop's runtime");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let listener = match TcpListener::from_std(socket) {
                            Ok(listener) => listener,
                            Err(err) => {
                                error!(cause = %err, "cannot listen on an event loop");
                                return;
                            }
                        };
                        let stop = async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        };
                        server.accept(&listener, &connections, stop).await;
                        // Its own socket's queue is served as the first
                        // loop's is.
                        let _ = closed.send(server.close_listener(listener, &connections));
                        let _ = released.wait_for(|release| *release).await;
                    });
                });
            match spawned {
                Ok(event_loop) => loops.push(event_loop),
                Err(err) => error!(cause = %err, "cannot start an event loop's thread"),
            }
        }
        (loops, closing)
    }

    /// This server as event loop `index` serves it: the same shared state,
    /// nothing that only the first loop runs.
    fn for_event_loop(&self, index: usize) -> Server {
        Server {
            shared: self.shared.clone(),
            watching: None,
            event_loops: 1,
            loop_connections: self.shared.dispatch.metrics().event_loop(index),
        }
    }

    /// The accept loop, until `shutdown` completes.
    async fn accept(
        &self,
        listener: &TcpListener,
        connections: &Arc<Semaphore>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            // At the connection cap, stop accepting: new clients wait in the
            // kernel's backlog instead of being refused.
            let permit = tokio::select! {
                () = &mut shutdown => return,
                permit = connections.clone().acquire_owned() => {
                    permit.expect("the connection semaphore is never closed")
                }
            };
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => self.spawn_connection(stream, peer, permit),
                Err(err) => {
                    error!(cause = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    /// Closes the listener once it has handed over the connections the
    /// kernel completed and queued on it, which closing it would reset;
    /// returns how many there were. (A connection that completes between
    /// the last accept and the close is still reset, unless the kernel
    /// moves it to another listener of the port:
    /// `net.ipv4.tcp_migrate_req`.)
    fn close_listener(&self, listener: TcpListener, connections: &Arc<Semaphore>) -> usize {
        // The std listener stays non-blocking: accept says WouldBlock once
        // the queue is empty.
        let Ok(listener) = listener.into_std() else {
            return 0;
        };
        let mut taken = 0;
        while let Ok(permit) = connections.clone().try_acquire_owned() {
            let Ok((stream, peer)) = listener.accept() else {
                break;
            };
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream));
            if let Ok(stream) = stream {
                self.spawn_connection(stream, peer, permit);
                taken += 1;
            }
        }
        taken
    }

    /// Serves an accepted connection in a task of its own, which holds
    /// `permit` (its place under the connection cap) until it ends.
    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let dispatch = self.shared.dispatch.clone();
        let Some(client) = dispatch.connections().open(peer.ip()) else {
            // Its client holds as many as it may: a cleartext client is
            // told so; a TLS one, before its handshake, is only closed.
            if self.shared.tls.is_none() {
                tokio::spawn(refuse(stream));
            }
            return;
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let open = dispatch.metrics().connection(&self.loop_connections);
        let tls = self.shared.tls.as_ref().map(|tls| tls.acceptor());
        tokio::spawn(
            async move {
                serve_connection(stream, local, peer, tls, dispatch).await;
                drop((open, permit, client));
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
}

/// Serves one accepted connection with the front end it speaks: HTTP/2
/// when TLS chose `h2` by ALPN or a cleartext connection opens with the
/// HTTP/2 preface, HTTP/1.1 otherwise. A TLS handshake gets the time a
/// request head does. Each front end's future is boxed, so a connection's
/// task is the size of the stage it is in, not of the largest.
async fn serve_connection(
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    dispatch: Arc<Dispatch>,
) {
    let deadline = tokio::time::Instant::now() + dispatch.limits().header_timeout;
    let Some(acceptor) = tls else {
        let conn = Connection {
            peer,
            local,
            tls: false,
        };
        let mut shutdown = dispatch.shutdown_signal();
        if h2::prior_knowledge(&stream, deadline, &mut shutdown).await {
            return Box::pin(h2::serve(stream, conn, dispatch)).await;
        }
        return Box::pin(Conn::new(stream, local, peer, false, dispatch).serve()).await;
    };
    Box::pin(serve_tls(stream, local, peer, acceptor, deadline, dispatch)).await;
}

/// [`serve_connection`] over TLS: the handshake, by `deadline`, then the
/// front end ALPN chose.
async fn serve_tls(
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    deadline: tokio::time::Instant,
    dispatch: Arc<Dispatch>,
) {
    let stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return debug!(cause = %err, "TLS handshake failed"),
        Err(_) => return debug!("TLS handshake timed out"),
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        let conn = Connection {
            peer,
            local,
            tls: true,
        };
        return h2::serve(stream, conn, dispatch).await;
    }
    Conn::new(stream, local, peer, true, dispatch).serve().await;
}

/// What a cleartext client past `--max-client-connections` gets before
/// its new connection closes.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
    Content-Length: 0\r\nConnection: close\r\n\r\n";
/// How long a refused connection's request is read and dropped after the
/// answer, so that closing with it unread (a reset) does not destroy the
/// answer on its way.
const REFUSED_LINGER: Duration = Duration::from_millis(200);

/// Answers a connection its client may not open with 503, then closes it.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(TOO_MANY_CONNECTIONS).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut unread = [0; 4096];
    let _ = tokio::time::timeout(REFUSED_LINGER, async {
        while stream.read(&mut unread).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

/// The rate limit of `route`, under the server's `limits`, if it has one.
fn rate_limit(route: &Route, limits: &Limits, metrics: &Metrics) -> Option<Arc<RateLimit>> {
    let limits = route.limits.apply(limits);
    let rate = limits.rate?;
    let (refused, tracked) = metrics.rate_limit(&route.prefix);
    Some(Arc::new(RateLimit::new(
        rate,
        limits.burst,
        limits.rate_clients,
        refused,
        tracked,
    )))
}

/// Aborts a task when dropped: a server's background work when it stops.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
