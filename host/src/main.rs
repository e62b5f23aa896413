//! The `wasmhttpd` binary: parse the command line, bind, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use wasmhttpd::config::file::FileConfig;
use wasmhttpd::config::{self, Config, GuestSource, Limits, Route, RouteLimits};
use wasmhttpd::wasm::cache::CompiledCache;

/// A web server whose request handlers are sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML file whose keys are these flags' long names (`listen`,
    /// `route = [...]`, `guest-timeout`, ...); flags given here win.
    #[arg(long, value_name = "FILE", env = "WASMHTTPD_CONFIG")]
    config: Option<PathBuf>,

    /// Log lines as human-readable text or as JSON objects, one per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "WASMHTTPD_LOG_FORMAT")]
    log_format: LogFormat,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "WASMHTTPD_LISTEN", default_value = config::DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// Serve Prometheus metrics at http://ADDR/metrics, on a listener of
    /// their own (keep it off the public interface).
    #[arg(long, value_name = "ADDR", env = "WASMHTTPD_METRICS")]
    metrics: Option<SocketAddr>,

    /// Web root, preopened read-only for the guest at `/`.
    #[arg(long, env = "WASMHTTPD_ROOT", default_value = config::DEFAULT_ROOT)]
    root: PathBuf,

    /// A wasi:http component (`.wasm`) to handle requests on `/` instead
    /// of the built-in static-file guest. Reloaded when the file changes.
    #[arg(long, env = "WASMHTTPD_GUEST")]
    guest: Option<PathBuf>,

    /// Mount a component at a path prefix: `/api=api.wasm`. Repeatable; the
    /// longest matching prefix serves a request. Reloaded when the file
    /// changes. Limits of the route's own may follow the file:
    /// `/api=api.wasm,guest-timeout=5,guest-memory=16,max-instances=50,reuse=8`.
    #[arg(long = "route", value_name = "PREFIX=FILE[,LIMIT=N...]", value_parser = route)]
    routes: Vec<Route>,

    /// Serve only the `--route` components: no guest on `/` unless a route
    /// names it, and paths outside every route get 404.
    #[arg(long)]
    no_default_guest: bool,

    /// Do not watch guest files; reload them on SIGHUP only.
    #[arg(long)]
    no_watch: bool,

    /// Directory for compiled components [default: the user's cache
    /// directory, e.g. ~/.cache/wasmhttpd].
    #[arg(long, value_name = "DIR", env = "WASMHTTPD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile every component at start, without a cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,

    /// Set an environment variable for the guest, as `wasmtime serve --env`
    /// does: `NAME=VALUE`, or `NAME` alone to pass on this process's
    /// value. Repeatable. The built-in guest's variables are listed in the
    /// README.
    #[arg(long = "env", value_name = "NAME[=VALUE]", value_parser = guest_env)]
    env: Vec<(String, String)>,

    /// Seconds a guest has to produce its response head (then 504), and
    /// each piece of its body.
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_GUEST_TIMEOUT.as_secs_f64())]
    guest_timeout: f64,

    /// Linear memory cap per guest instance, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = config::DEFAULT_GUEST_MEMORY >> 20)]
    guest_memory: usize,

    /// Largest request body accepted, in bytes (then 413).
    #[arg(long, value_name = "BYTES", default_value_t = config::DEFAULT_MAX_BODY_BYTES)]
    max_body: u64,

    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_KEEP_ALIVE_TIMEOUT.as_secs_f64())]
    keep_alive_timeout: f64,

    /// Seconds a client has to send a request head once it started.
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_HEADER_TIMEOUT.as_secs_f64())]
    header_timeout: f64,

    /// Seconds a client may pause while sending a request body (then 408).
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_BODY_TIMEOUT.as_secs_f64())]
    body_timeout: f64,

    /// Seconds one write to a client may take; a client that stopped
    /// reading is disconnected after it.
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_WRITE_TIMEOUT.as_secs_f64())]
    write_timeout: f64,

    /// Open client connections at most; more wait in the accept backlog.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// Guest instances alive at once; more requests wait.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_INSTANCES)]
    max_instances: u32,

    /// Largest WebSocket message accepted, in bytes (then close 1009).
    #[arg(long, value_name = "BYTES", default_value_t = config::DEFAULT_WS_MAX_MESSAGE)]
    ws_max_message: usize,

    /// Seconds a WebSocket session may stay silent (then close 1001).
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_WS_IDLE_TIMEOUT.as_secs_f64())]
    ws_idle_timeout: f64,

    /// Requests one guest instance serves, one after another, before it is
    /// dropped. 1 (a fresh instance per request) isolates requests from each
    /// other; more is faster, and state a guest keeps is seen by the next
    /// request on the same instance.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_REUSE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    reuse: usize,

    /// Seconds a request waits for a free guest instance before a 503
    /// with Retry-After.
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_QUEUE_TIMEOUT.as_secs_f64())]
    queue_timeout: f64,

    /// Requests one connection may carry; the last says `Connection: close`.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_REQUESTS_PER_CONNECTION)]
    max_requests_per_connection: u64,

    /// Seconds responses in progress get to finish after SIGTERM or SIGINT
    /// (a second signal exits at once).
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_SHUTDOWN_GRACE.as_secs_f64())]
    shutdown_grace: f64,

    /// WebSocket sessions open at once; more upgrades get 503.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_WEBSOCKETS)]
    max_websockets: u32,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `2026-11-22T03:00:00Z INFO wasmhttpd::access: id=1 peer=… status=200 …`.
    Text,
    /// `{"timestamp":…,"level":"INFO","fields":{…},"target":"wasmhttpd::access"}`.
    Json,
}

impl Args {
    /// The command line, with the configuration file's values for every
    /// flag the command line left at its default.
    fn parse_with_file() -> anyhow::Result<Args> {
        let matches = Args::command().get_matches();
        let mut args = Args::from_arg_matches(&matches)?;
        let Some(path) = args.config.clone() else {
            return Ok(args);
        };
        let file = FileConfig::load(&path)?;
        let unset = |id: &str| {
            matches!(
                matches.value_source(id),
                None | Some(ValueSource::DefaultValue)
            )
        };
        macro_rules! take {
            ($($field:ident),*) => {$(
                if unset(stringify!($field)) && let Some(value) = file.$field {
                    args.$field = value;
                }
            )*};
        }
        take!(
            listen,
            root,
            guest_timeout,
            guest_memory,
            max_body,
            keep_alive_timeout,
            header_timeout,
            body_timeout,
            write_timeout,
            max_connections,
            max_instances,
            ws_max_message,
            ws_idle_timeout,
            max_websockets,
            reuse,
            shutdown_grace,
            queue_timeout,
            max_requests_per_connection,
            no_default_guest,
            no_watch,
            no_cache
        );
        macro_rules! take_some {
            ($($field:ident),*) => {$(
                if unset(stringify!($field)) && file.$field.is_some() {
                    args.$field = file.$field;
                }
            )*};
        }
        take_some!(guest, cache_dir, metrics);
        let invalid = |what: &str, err: String| {
            anyhow::anyhow!("invalid {what} in {}: {err}", path.display())
        };
        let mut routes = file
            .route
            .iter()
            .map(|arg| route(arg).map_err(|err| invalid("route", err)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        routes.append(&mut args.routes);
        args.routes = routes;
        let mut env = file
            .env
            .iter()
            .map(|arg| guest_env(arg).map_err(|err| invalid("env", err)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        env.append(&mut args.env);
        args.env = env;
        Ok(args)
    }

    fn into_config(self) -> anyhow::Result<Config> {
        let secs = |name: &str, value: f64| {
            Duration::try_from_secs_f64(value).with_context(|| format!("invalid --{name} {value}"))
        };
        let mut routes = Vec::new();
        if let Some(guest) = self.guest {
            routes.push(Route::new("/", GuestSource::File(guest)).expect("/ is a valid prefix"));
        } else if !self.no_default_guest {
            routes.push(Route::new("/", GuestSource::Default).expect("/ is a valid prefix"));
        }
        for route in self.routes {
            routes.retain(|existing| existing.prefix != route.prefix || route.prefix != "/");
            routes.push(route);
        }
        if routes.is_empty() {
            anyhow::bail!("no guest to serve: give --guest or --route");
        }
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir.or_else(CompiledCache::default_dir)
        };
        Ok(Config {
            root: self.root,
            routes,
            cache_dir,
            watch: !self.no_watch,
            env: self.env,
            limits: Limits {
                guest_timeout: secs("guest-timeout", self.guest_timeout)?,
                guest_memory: self
                    .guest_memory
                    .checked_mul(1 << 20)
                    .context("--guest-memory is too large")?,
                max_body_bytes: self.max_body,
                keep_alive_timeout: secs("keep-alive-timeout", self.keep_alive_timeout)?,
                header_timeout: secs("header-timeout", self.header_timeout)?,
                body_timeout: secs("body-timeout", self.body_timeout)?,
                write_timeout: secs("write-timeout", self.write_timeout)?,
                max_connections: self.max_connections,
                max_instances: self.max_instances,
                ws_max_message: self.ws_max_message,
                ws_idle_timeout: secs("ws-idle-timeout", self.ws_idle_timeout)?,
                max_websockets: self.max_websockets,
                reuse: self.reuse,
                shutdown_grace: secs("shutdown-grace", self.shutdown_grace)?,
                queue_timeout: secs("queue-timeout", self.queue_timeout)?,
                max_requests_per_connection: self.max_requests_per_connection,
                ..Limits::default()
            },
        })
    }
}

/// Parses one `--route` argument: `PREFIX=FILE[,key=value...]`.
fn route(arg: &str) -> Result<Route, String> {
    let (prefix, rest) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected PREFIX=FILE, got {arg:?}"))?;
    let mut parts = rest.split(',');
    let file = parts.next().unwrap_or_default();
    if file.is_empty() {
        return Err(format!("no component file in {arg:?}"));
    }
    let limits = RouteLimits::parse(parts)?;
    Ok(Route::new(prefix, GuestSource::File(file.into()))?.with_limits(limits))
}

/// Parses one `--env` argument.
fn guest_env(arg: &str) -> Result<(String, String), String> {
    let (name, value) = match arg.split_once('=') {
        Some((name, value)) => (name, value.to_owned()),
        None => (
            arg,
            std::env::var(arg).map_err(|_| format!("{arg} is not set in this environment"))?,
        ),
    };
    if name.is_empty() {
        return Err("the variable name is empty".to_owned());
    }
    Ok((name.to_owned(), value))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse_with_file()?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        // Colours for a terminal only: not for journald, files or pipes.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }

    let (listen, metrics) = (args.listen, args.metrics);
    let config = args.into_config()?;
    let server = wasmhttpd::Server::new(config)?;
    let listener = wasmhttpd::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    if let Some(metrics) = metrics {
        let metrics_listener = wasmhttpd::bind(metrics)
            .with_context(|| format!("cannot listen for metrics on {metrics}"))?;
        let metrics_addr = metrics_listener.local_addr()?;
        tokio::spawn(wasmhttpd::metrics::serve(
            metrics_listener,
            server.metrics(),
        ));
        eprintln!(
            "metrics on http://{metrics_addr}{}",
            wasmhttpd::metrics::PATH
        );
    }
    // Signal handlers are in place before the address is announced.
    tokio::spawn(reload_on_sighup(server.reloader()));
    let shutdown = shutdown_signal();
    eprintln!("listening on http://{addr}/");
    server.run(listener, shutdown).await;
    Ok(())
}

/// Installs the SIGHUP handler now; the future reloads every guest file on
/// each SIGHUP.
fn reload_on_sighup(reloader: wasmhttpd::Reloader) -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).expect("install the SIGHUP handler");
    async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading guests");
            reloader.reload_all().await;
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now; the future completes on
/// the first of them, and a second one exits the process at once.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        });
    }
}
