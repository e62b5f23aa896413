//! The `wasmhttpd` binary: parse the command line, bind, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use wasmhttpd::config::file::ConfigFile;
use wasmhttpd::config::{Config, GuestSource, Limits, Route, RouteLimits, Startup};
use wasmhttpd::tls::TlsFiles;
use wasmhttpd::wasm::cache::CompiledCache;

/// A web server whose request handlers are sandboxed WebAssembly components.
///
/// Every setting is also an environment variable (`--guest-timeout` is
/// `WASMHTTPD_GUEST_TIMEOUT`) and a key of the `--config` file
/// (`guest-timeout = 5`); the command line wins over the environment, and
/// both over the file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML file whose keys are these flags' long names (`listen`,
    /// `route = [...]`, `guest-timeout`, ...); flags given here win.
    /// Without it, `wasmhttpd.toml` in the current directory is read when
    /// there is one.
    #[arg(long, value_name = "FILE", env = "WASMHTTPD_CONFIG")]
    config: Option<PathBuf>,

    /// Log lines as human-readable text or as JSON objects, one per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "WASMHTTPD_LOG_FORMAT")]
    log_format: LogFormat,

    /// Mount a component at a path prefix: `/api=api.wasm`. Repeatable; the
    /// longest matching prefix serves a request. Reloaded when the file
    /// changes.
    #[arg(long = "route", value_name = "PREFIX=FILE[,LIMIT=N...]", value_parser = route,
          long_help = route_help())]
    routes: Vec<Route>,

    /// Set an environment variable for the guest, as `wasmtime serve --env`
    /// does: `NAME=VALUE`, or `NAME` alone to pass on this process's
    /// value. Repeatable. The built-in guest's variables are listed in
    /// docs/static-files.md.
    #[arg(long = "env", value_name = "NAME[=VALUE]", value_parser = guest_env)]
    env: Vec<(String, String)>,
}

/// `--route`'s long help, naming the limits a route may set for itself.
fn route_help() -> String {
    format!(
        "Mount a component at a path prefix: `/api=api.wasm`. Repeatable; the longest \
         matching prefix serves a request. Reloaded when the file changes. Instead of a file, \
         `builtin:static` (the static-file guest) or `builtin:accounts` (the demo's accounts, \
         kept in the route's first granted key-value store). Limits of the route's own may \
         follow the file, as the flags of the same names take them: \
         `/api=api.wasm,guest-timeout=5,reuse=8` ({}).",
        RouteLimits::keys().join(", ")
    )
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `2026-11-22T03:00:00Z INFO wasmhttpd::access: id=1 peer=… status=200 …`.
    Text,
    /// `{"timestamp":…,"level":"INFO","fields":{…},"target":"wasmhttpd::access"}`.
    Json,
}

/// The configuration file read from the current directory when
/// `--config` is not given.
const DEFAULT_CONFIG: &str = "wasmhttpd.toml";

/// Everything the command line, the environment and the configuration
/// file say, merged.
struct Settings {
    /// The configuration file read, if any.
    config: Option<PathBuf>,
    /// `wasmhttpd compile`: fill the cache and exit.
    compile: bool,
    log_format: LogFormat,
    startup: Startup,
    limits: Limits,
    routes: Vec<Route>,
    env: Vec<(String, String)>,
}

impl Settings {
    /// The defaults, then the configuration file's values, then the
    /// environment's and the command line's.
    fn parse() -> anyhow::Result<Settings> {
        let with_settings = |command: clap::Command| {
            command
                .args(Startup::args())
                .next_help_heading("Limits")
                .args(Limits::args())
        };
        let compile = with_settings(Args::command())
            .name("compile")
            .about(
                "Compile the guests into the compiled-component cache and exit, so that a \
                 server with the same settings starts without compiling (an image built with \
                 it, replicas sharing a read-only cache)",
            )
            .long_about(None);
        let mut matches = with_settings(Args::command())
            .subcommand(compile)
            .get_matches();
        let (compile, matches) = match matches.remove_subcommand() {
            Some((_, compile)) => (true, compile),
            None => (false, matches),
        };
        let args = Args::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
        let mut settings = Settings {
            config: None,
            compile,
            log_format: args.log_format,
            startup: Startup::default(),
            limits: Limits::default(),
            routes: Vec::new(),
            env: Vec::new(),
        };
        let config = args.config.clone().or_else(|| {
            let here = PathBuf::from(DEFAULT_CONFIG);
            here.is_file().then_some(here)
        });
        if let Some(path) = &config {
            settings.read_file(&ConfigFile::load(path)?)?;
            settings.config = Some(path.clone());
        }
        settings.startup.read_flags(&matches);
        settings.limits.read_flags(&matches);
        settings.routes.extend(args.routes);
        settings.env.extend(args.env);
        Ok(settings)
    }

    fn read_file(&mut self, file: &ConfigFile) -> anyhow::Result<()> {
        self.startup.read_file(file).map_err(anyhow::Error::msg)?;
        self.limits.read_file(file).map_err(anyhow::Error::msg)?;
        let invalid = |what: &str, err: String| {
            anyhow::anyhow!("invalid {what} in {}: {err}", file.path().display())
        };
        for arg in file.take_list("route").map_err(anyhow::Error::msg)? {
            let mut route = self::route(&arg).map_err(|err| invalid("route", err))?;
            if let GuestSource::File(path) = &route.guest {
                route.guest = GuestSource::File(file.resolve(path));
            }
            self.routes.push(route);
        }
        for arg in file.take_list("env").map_err(anyhow::Error::msg)? {
            self.env
                .push(guest_env(&arg).map_err(|err| invalid("env", err))?);
        }
        Ok(file.finish()?)
    }

    fn into_config(self) -> anyhow::Result<Config> {
        let Settings {
            startup,
            limits,
            routes: added,
            env,
            ..
        } = self;
        let mut routes = Vec::new();
        if let Some(guest) = startup.guest {
            routes.push(Route::new("/", GuestSource::File(guest)).expect("/ is a valid prefix"));
        } else if !startup.no_default_guest {
            routes.push(Route::new("/", GuestSource::Default).expect("/ is a valid prefix"));
        }
        for route in added {
            routes.retain(|existing| existing.prefix != route.prefix || route.prefix != "/");
            routes.push(route);
        }
        if routes.is_empty() {
            anyhow::bail!("no guest to serve: give --guest or --route");
        }
        let cache_dir = match (startup.no_cache, startup.cache_dir) {
            (true, Some(_)) => anyhow::bail!("give --cache-dir or --no-cache, not both"),
            (true, None) => None,
            (false, Some(dir)) => Some(dir),
            (false, None) => CompiledCache::default_dir(),
        };
        let tls = match (startup.tls_cert, startup.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                anyhow::bail!("--tls-cert needs --tls-key: give the certificate's private key")
            }
            (None, Some(_)) => {
                anyhow::bail!("--tls-key needs --tls-cert: give the certificate chain")
            }
        };
        Ok(Config {
            root: startup.root,
            routes,
            cache_dir,
            watch: !startup.no_watch,
            env,
            limits,
            tls,
            stores: startup.kv_store,
            data_dir: startup.data_dir,
            // One event loop per core unless told otherwise; tokio's
            // work-stealing runtime is one loop of several threads.
            event_loops: match (startup.work_stealing, startup.event_loops) {
                (true, _) => 1,
                (false, Some(loops)) => loops,
                (false, None) => std::thread::available_parallelism().map_or(1, usize::from),
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
    Ok(Route::new(prefix, GuestSource::parse(file)?)?.with_limits(limits))
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

/// Why the process stops before serving, and so its exit status: the
/// usage errors clap reports with 2, start-up failures with 1.
enum Failure {
    /// What the command line, the environment or the configuration file
    /// says cannot be served as it stands.
    Usage(anyhow::Error),
    /// The settings are sound, but the server could not start with them: a
    /// missing web root, a port in use, a guest that does not load.
    Start(anyhow::Error),
}

impl Failure {
    /// Prints the error and each of its causes on a line of its own, never
    /// a backtrace (whatever `RUST_BACKTRACE` says: the user's mistake is
    /// not a bug), and gives the exit status.
    fn report(self) -> ExitCode {
        let (err, code) = match self {
            Failure::Usage(err) => (err, 2),
            Failure::Start(err) => (err, 1),
        };
        let mut causes = err.chain();
        let mut text = format!(
            "error: {}\n",
            causes.next().expect("an error is its own first cause")
        );
        for cause in causes {
            text.push_str(&format!("  caused by: {cause}\n"));
        }
        if code == 2 {
            text.push_str("\nFor more information, try '--help'.\n");
        }
        eprint!("{text}");
        ExitCode::from(code)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn run() -> Result<(), Failure> {
    let settings = Settings::parse().map_err(Failure::Usage)?;
    let tracing = wasmhttpd::telemetry::Tracing::from_env().map_err(Failure::Usage)?;
    init_logs(settings.log_format, tracing.as_ref());
    if let Some(tracing) = &tracing {
        tracing::info!(endpoint = %tracing.endpoint(), "exporting traces over OTLP");
    }
    if let Some(path) = &settings.config {
        tracing::info!(config = %path.display(), "read the configuration file");
    }

    let listeners = Listeners {
        listen: settings.startup.listen,
        metrics: settings.startup.metrics,
        redirect: settings.startup.http_redirect,
        reuse_port: settings.startup.reuse_port,
    };
    let compiling = settings.compile;
    let work_stealing = settings.startup.work_stealing;
    let config = settings.into_config().map_err(Failure::Usage)?;
    if listeners.redirect.is_some() && config.tls.is_none() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--http-redirect sends clients to https: give --tls-cert and --tls-key"
        )));
    }
    // One event loop per core: this thread's runtime is the first, and the
    // server starts the others, each single-threaded too.
    let runtime = if work_stealing {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .on_thread_start(wasmhttpd::unpin_thread)
    .build()
    .context("cannot start the async runtime")
    .map_err(Failure::Start)?;
    let done = if compiling {
        runtime.block_on(async { compile(config) })
    } else {
        runtime.block_on(serve(config, listeners))
    };
    if let Some(tracing) = tracing {
        tracing.flush();
    }
    done.map_err(Failure::Start)
}

/// Log lines to stderr, as `RUST_LOG` filters them (`info` without it);
/// the spans of requests to `tracing`'s exporter alone, when there is
/// one. Without one the filter is the subscriber's own, as cheap as
/// filtering gets: a disabled span or event costs a cached flag.
fn init_logs(format: LogFormat, tracing: Option<&wasmhttpd::telemetry::Tracing>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let levels = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            format!("{}=off", wasmhttpd::telemetry::SPANS)
                .parse()
                .expect("a valid directive"),
        );
    match tracing {
        None => tracing_subscriber::registry()
            .with(levels)
            .with(log_lines(format))
            .init(),
        Some(tracing) => tracing_subscriber::registry()
            .with(log_lines(format).with_filter(levels))
            .with(tracing.layer())
            .init(),
    }
}

/// The layer that writes log lines to stderr in `format`.
fn log_lines<S>(format: LogFormat) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::Layer;
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().boxed(),
        // Colours for a terminal only: not for journald, files or pipes.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    }
}

/// Where the server listens, as the start-up settings say.
struct Listeners {
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    redirect: Option<SocketAddr>,
    reuse_port: bool,
}

/// Binds the listeners and serves until a shutdown signal.
async fn serve(config: Config, listeners: Listeners) -> anyhow::Result<()> {
    let Listeners {
        listen,
        metrics,
        redirect,
        reuse_port,
    } = listeners;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let server = wasmhttpd::Server::new(config)?;
    let inherited = wasmhttpd::inherited_listener()
        .context("cannot use the listener passed by socket activation (LISTEN_FDS)")?;
    let listener = match inherited {
        Some(listener) => {
            tracing::info!("serving on the listener passed by LISTEN_FDS; --listen is not used");
            Ok(listener)
        }
        None if reuse_port => wasmhttpd::bind_shared(listen),
        None => wasmhttpd::bind(listen),
    };
    let listener = listener.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    if let Some(metrics) = metrics {
        let metrics_listener = wasmhttpd::bind(metrics)
            .with_context(|| format!("cannot listen for metrics on {metrics}"))?;
        let metrics_addr = metrics_listener.local_addr()?;
        let monitor = server.monitor();
        tokio::spawn(wasmhttpd::proto::endpoint::serve_metrics(
            metrics_listener,
            server.metrics(),
            move || !monitor.shutting_down(),
        ));
        eprintln!(
            "metrics on http://{metrics_addr}{}",
            wasmhttpd::proto::endpoint::METRICS
        );
    }
    if let Some(redirect) = redirect {
        let redirect_listener = wasmhttpd::bind(redirect)
            .with_context(|| format!("cannot listen for --http-redirect on {redirect}"))?;
        let redirect_addr = redirect_listener.local_addr()?;
        tokio::spawn(wasmhttpd::proto::endpoint::serve(
            redirect_listener,
            "redirect",
            wasmhttpd::proto::endpoint::redirect_to_https(addr.port()),
        ));
        eprintln!("redirecting to https: http://{redirect_addr}/");
    }
    // Signal handlers are in place before the address is announced.
    tokio::spawn(reload_on_sighup(server.reloader()));
    let shutdown = shutdown_signal();
    eprintln!("listening on {scheme}://{addr}/");
    server.run(listener, shutdown).await;
    Ok(())
}

/// `wasmhttpd compile`: fills the cache, saying on stdout what each
/// guest's code was.
fn compile(config: Config) -> anyhow::Result<()> {
    let dir = config.cache_dir.clone();
    for guest in wasmhttpd::compile(config)? {
        println!(
            "{} {} ({}): {}",
            guest.prefix,
            guest.name,
            guest.digest,
            match guest.origin {
                wasmhttpd::wasm::cache::Origin::Compiled => "compiled",
                wasmhttpd::wasm::cache::Origin::Cache => "already in the cache",
            }
        );
    }
    if let Some(dir) = dir {
        println!("cache: {}", dir.display());
    }
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
