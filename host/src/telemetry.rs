//! OpenTelemetry traces, set up the standard way: from the `OTEL_*`
//! environment variables, off unless they name an OTLP endpoint.
//!
//! The rest of the server only opens `tracing` spans, through the
//! functions here, under the [`SPANS`] target; `tracing-opentelemetry`
//! makes them OpenTelemetry spans, the SDK samples them
//! (`OTEL_TRACES_SAMPLER`), and a thread of their own exports them over
//! OTLP/HTTP in protobuf. The event loops only hand a finished span to a
//! bounded queue: when the queue is full, or the collector does not take a
//! batch, the spans are dropped and counted
//! (`wasmhttpd_trace_spans_dropped_total`), and no request waits.
//!
//! Without tracing, no layer takes the [`SPANS`] target: every span
//! opened here is disabled at its call site, and costs the check of a
//! cached flag.
//!
//! The attribute names are OpenTelemetry's semantic conventions for HTTP
//! servers and clients and for database clients; the server's own are
//! under `wasmhttpd.`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::Thread;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri, Version};
use http_body_util::{BodyExt, Full};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span the server opens: the layer that exports
/// them takes this target alone, and the log takes everything else.
pub const SPANS: &str = "wasmhttpd::span";

/// Spans finished but never exported: the queue was full, or the
/// collector did not take their batch. One count for the process, as its
/// tracer is.
pub static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The exporter's defaults where the variables say nothing: the
/// OpenTelemetry specification's.
const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
const DEFAULT_QUEUE: usize = 2048;
const DEFAULT_BATCH: usize = 512;
const DEFAULT_DELAY: Duration = Duration::from_millis(5000);
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(10_000);
/// How long the server waits at its end for the spans still queued.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

/// What `OTEL_*` asked for, when it asked for traces.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where spans are posted: the traces endpoint, whole.
    pub endpoint: String,
    /// Spans waiting for export at most (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub queue: usize,
    /// Spans in one export at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub batch: usize,
    /// How long a span waits for others to fill its batch
    /// (`OTEL_BSP_SCHEDULE_DELAY`).
    pub delay: Duration,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
}

impl Settings {
    /// The settings `var` gives (the process environment, or a test's),
    /// `None` when tracing is not asked for: no OTLP endpoint given,
    /// `OTEL_TRACES_EXPORTER=none`, or `OTEL_SDK_DISABLED=true`.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Option<Settings>, String> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let exporter = var("OTEL_TRACES_EXPORTER");
        match exporter.as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other}: wasmhttpd exports traces over OTLP only; give \
                     otlp or none"
                ));
            }
        }
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(traces), _) => traces,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            // Asked for by name, at the default address.
            (None, None) if exporter.is_some() => format!("{DEFAULT_ENDPOINT}/v1/traces"),
            (None, None) => return Ok(None),
        };
        match endpoint.parse::<Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => {
                return Err(format!(
                    "the OTLP endpoint {endpoint:?} is not an http:// or https:// URL: give \
                     OTEL_EXPORTER_OTLP_ENDPOINT as http://HOST:4318"
                ));
            }
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = var(name) {
                if protocol.trim() != "http/protobuf" {
                    return Err(format!(
                        "{name}={protocol}: wasmhttpd sends traces as http/protobuf (a \
                         collector's port 4318); give http/protobuf"
                    ));
                }
                break;
            }
        }
        let number = |name: &str, default: usize| -> Result<usize, String> {
            match var(name) {
                None => Ok(default),
                Some(value) => value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}={value}: give a whole number")),
            }
        };
        let millis = |names: &[&str], default: Duration| -> Result<Duration, String> {
            for name in names {
                if var(name).is_some() {
                    return number(name, 0).map(|ms| Duration::from_millis(ms as u64));
                }
            }
            Ok(default)
        };
        let queue = number("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE)?.max(1);
        Ok(Some(Settings {
            endpoint,
            queue,
            batch: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH)?.clamp(1, queue),
            delay: millis(&["OTEL_BSP_SCHEDULE_DELAY"], DEFAULT_DELAY)?,
            timeout: millis(
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                    "OTEL_EXPORTER_OTLP_TIMEOUT",
                ],
                DEFAULT_TIMEOUT,
            )?
            .max(Duration::from_millis(1)),
        }))
    }
}

/// Tracing, once set up: the tracer's provider, and the thread that
/// exports its spans.
pub struct Tracing {
    provider: SdkTracerProvider,
    endpoint: String,
    /// What the event loops and the export thread share.
    shared: Arc<Shared>,
    /// The export thread, woken to send what is queued at the end.
    worker: Thread,
    /// Tells when the export thread has sent what was queued.
    exported: Receiver<()>,
}

/// The queue's state, beside its spans: how many wait, and whether the
/// server is ending.
#[derive(Debug)]
struct Shared {
    /// Spans in the queue: the event loops wake the export thread when a
    /// batch's worth wait.
    queued: AtomicUsize,
    /// Set at the server's end: the thread sends what is queued and stops.
    ending: AtomicBool,
    /// Spans in one export at most.
    batch: usize,
}

impl Tracing {
    /// Tracing as the process environment asks for it; `None` when it does
    /// not. An `OTEL_*` value that cannot be served is an error naming it.
    pub fn from_env() -> anyhow::Result<Option<Tracing>> {
        let Some(settings) =
            Settings::read(|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?
        else {
            return Ok(None);
        };
        Tracing::start(settings).map(Some)
    }

    /// Builds the exporter and starts its thread.
    fn start(settings: Settings) -> anyhow::Result<Tracing> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.timeout)
            .with_http_client(Client::new(settings.timeout))
            .build()
            .map_err(|err| anyhow::anyhow!("cannot export traces over OTLP: {err}"))?;
        let (queue, spans) = std::sync::mpsc::sync_channel(settings.queue);
        let (done, exported) = std::sync::mpsc::sync_channel(1);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            ending: AtomicBool::new(false),
            batch: settings.batch,
        });
        let endpoint = settings.endpoint.clone();
        let mut resource = Resource::builder().build();
        let unnamed = resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_none_or(|name| name.as_str().starts_with("unknown_service"));
        if unnamed {
            resource = Resource::builder()
                .with_service_name(env!("CARGO_PKG_NAME"))
                .build();
        }
        let resource = Resource::builder_empty()
            .with_attributes(
                resource
                    .iter()
                    .map(|(key, value)| opentelemetry::KeyValue::new(key.clone(), value.clone())),
            )
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let mut exporter = exporter;
        exporter.set_resource(&resource);
        let exporting = shared.clone();
        let worker = std::thread::Builder::new()
            .name("otlp-export".to_owned())
            .spawn(move || export(spans, &exporting, exporter, settings, done))
            .map_err(|err| anyhow::anyhow!("cannot start the trace export thread: {err}"))?
            .thread()
            .clone();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(Queue {
                queue,
                shared: shared.clone(),
                worker: worker.clone(),
            })
            .build();
        Ok(Tracing {
            provider,
            endpoint,
            shared,
            worker,
            exported,
        })
    }

    /// Where the spans go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The layer that makes the server's spans OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        use tracing_subscriber::Layer;
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer(env!("CARGO_PKG_NAME")))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            .with_filter(
                tracing_subscriber::filter::Targets::new().with_target(SPANS, tracing::Level::INFO),
            )
    }

    /// Sends the spans still queued, waiting for them a few seconds at
    /// most: the server's last act.
    pub fn flush(self) {
        self.shared.ending.store(true, Ordering::Release);
        self.worker.unpark();
        let _ = self.exported.recv_timeout(FLUSH_AT_EXIT);
        drop(self.provider);
    }
}

/// The span processor: hands each finished span to the export thread,
/// or counts it dropped when the thread is that far behind. The thread
/// is woken once a batch's worth waits, not for each span: a wake-up is a
/// system call on the event loop's thread and a switch on the other core.
#[derive(Debug)]
struct Queue {
    queue: SyncSender<SpanData>,
    shared: Arc<Shared>,
    worker: Thread,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        // Counted before it is sent, so that the thread never takes away
        // more than was counted.
        let queued = self.shared.queued.fetch_add(1, Ordering::Relaxed) + 1;
        match self.queue.try_send(span) {
            // Waking a thread that is not asleep costs one atomic swap.
            Ok(()) if queued >= self.shared.batch => self.worker.unpark(),
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                SPANS_DROPPED.inc();
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The export thread: wakes when a batch's worth of spans waits, or
/// after `delay`, and sends what the queue holds in batches of up to
/// `batch`; a batch the collector does not take is dropped and counted.
/// Says once when exports begin to fail and once when they succeed
/// again; signals `done` once the server is ending and what was queued
/// is sent.
fn export(
    spans: Receiver<SpanData>,
    shared: &Shared,
    exporter: opentelemetry_otlp::SpanExporter,
    settings: Settings,
    done: SyncSender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(cause = %err, "cannot start the trace exporter: no spans are sent");
            return;
        }
    };
    let mut failing = false;
    loop {
        let ending = shared.ending.load(Ordering::Acquire);
        let batch: Vec<SpanData> = spans.try_iter().take(settings.batch).collect();
        // A full batch may have more behind it; a partial one emptied the
        // queue.
        let full = batch.len() == settings.batch;
        if !batch.is_empty() {
            shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            failing = send(&runtime, &exporter, batch, &settings.endpoint, failing);
        }
        if full {
            continue;
        }
        if ending {
            break;
        }
        std::thread::park_timeout(settings.delay);
    }
    let _ = done.try_send(());
}

/// Exports `batch` to `endpoint`; a batch the collector does not take is
/// counted dropped. Whether exports are `failing` now, said in the log
/// when that changes.
fn send(
    runtime: &tokio::runtime::Runtime,
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    endpoint: &str,
    failing: bool,
) -> bool {
    let count = batch.len() as u64;
    match runtime.block_on(exporter.export(batch)) {
        Ok(()) => {
            if failing {
                tracing::info!(endpoint, "traces are exported again");
            }
            false
        }
        Err(err) => {
            SPANS_DROPPED.inc_by(count);
            if !failing {
                tracing::warn!(
                    endpoint,
                    cause = %err,
                    "cannot export traces: spans are dropped, and counted in \
                     wasmhttpd_trace_spans_dropped_total, until the collector takes them again \
                     (OTEL_EXPORTER_OTLP_ENDPOINT)"
                );
            }
            true
        }
    }
}

/// The exporter's HTTP client: hyper over TCP, or over rustls for an
/// `https` collector, one connection kept open between exports.
#[derive(Debug)]
struct Client {
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    idle: Mutex<Option<(String, hyper::client::conn::http1::SendRequest<Full<Bytes>>)>>,
}

impl Client {
    fn new(timeout: Duration) -> Client {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Client {
            timeout,
            tls: Arc::new(tls),
            idle: Mutex::new(None),
        }
    }

    /// A connection to `uri`'s authority: the idle one if it is still
    /// open, else a new one.
    async fn connect(
        &self,
        uri: &Uri,
    ) -> Result<(String, hyper::client::conn::http1::SendRequest<Full<Bytes>>), HttpError> {
        let authority = uri
            .authority()
            .ok_or("the endpoint has no host")?
            .to_string();
        let idle = self.idle.lock().expect("not poisoned").take();
        if let Some((to, mut sender)) = idle
            && to == authority
            && sender.ready().await.is_ok()
        {
            return Ok((to, sender));
        }
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("the endpoint has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let sender = if https {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await?;
            handshake(tls).await?
        } else {
            handshake(tcp).await?
        };
        Ok((authority, sender))
    }

    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let (to, mut sender) = self.connect(request.uri()).await?;
        let (mut parts, body) = request.into_parts();
        if let Some(authority) = parts.uri.authority() {
            let host = http::HeaderValue::from_str(authority.as_str())?;
            parts.headers.insert(http::header::HOST, host);
        }
        // HTTP/1.1 sends the path alone.
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |path| Uri::from(path.clone()));
        let response = sender
            .send_request(http::Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, 4 << 20)
            .collect()
            .await?
            .to_bytes();
        *self.idle.lock().expect("not poisoned") = Some((to, sender));
        Ok(http::Response::from_parts(parts, body))
    }
}

/// An HTTP/1.1 client connection over `io`, driven by a task of its own.
async fn handshake<I>(
    io: I,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, HttpError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        match tokio::time::timeout(self.timeout, self.send(request)).await {
            Ok(response) => response,
            Err(_) => Err(format!(
                "no answer within {} ms (OTEL_EXPORTER_OTLP_TIMEOUT)",
                self.timeout.as_millis()
            )
            .into()),
        }
    }
}

/// The propagator of W3C trace context: `traceparent` and `tracestate`.
static PROPAGATOR: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// The SERVER span of a request, joining the trace its `traceparent`
/// names (a malformed one is ignored: the span begins a trace).
#[allow(clippy::too_many_arguments)]
pub fn server_span(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    route: Option<&str>,
    id: u64,
) -> Span {
    let span = tracing::info_span!(
        target: SPANS,
        parent: None,
        "request",
        otel.name = %format_args!("{} {}", method, route.unwrap_or("")),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        url.path = uri.path(),
        url.query = uri.query().map(|query| tracing::field::display(Query(query))),
        url.scheme = if tls { "https" } else { "http" },
        http.route = route,
        network.protocol.name = "http",
        network.protocol.version = protocol_version(version),
        client.address = %peer.ip(),
        client.port = peer.port(),
        server.port = local.port(),
        user_agent.original = headers
            .get(http::header::USER_AGENT)
            .and_then(|agent| agent.to_str().ok()),
        http.response.status_code = Empty,
        http.response.body.size = Empty,
        wasmhttpd.request.id = id,
    );
    if !span.is_disabled() {
        let caller = PROPAGATOR.extract(&HeaderExtractor(headers));
        if caller.span().span_context().is_valid() {
            let _ = span.set_parent(caller);
        }
    }
    span
}

/// `network.protocol.version` of an HTTP version.
fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Records how a request's server span ended: its status (an error for
/// 5xx), and the body's bytes.
pub fn end_server_span(span: &Span, status: u16, bytes: u64) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", status);
    span.record("http.response.body.size", bytes);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The trace id of `span`, for the access log; `None` when it is not
/// traced.
pub fn trace_id(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The span of a request's wait for an instance, under `parent`.
pub fn wait_span(parent: &Span) -> Span {
    if !sampled(parent) {
        return Span::none();
    }
    tracing::info_span!(target: SPANS, parent: parent, "wait for an instance")
}

/// Whether spans under `span` are kept: it is traced, and its trace
/// sampled. A request the sampler drops has no spans under its own:
/// they would be made only to be dropped.
fn sampled(span: &Span) -> bool {
    !span.is_disabled() && span.context().span().span_context().is_sampled()
}

/// The trace context a guest's run for a request passes on to its
/// outgoing requests and store calls: its own span's (`guest`), or the
/// request's when the run has none (a trace the sampler dropped, whose
/// decision upstreams still hear of).
pub fn run_context(guest: &Span, request: &Span) -> Context {
    if !guest.is_disabled() {
        guest.context()
    } else {
        context(request)
    }
}

/// The span of a guest's run for a request, under the request's span
/// `parent`: its route, its code's digest, whether its instance is fresh
/// or reused, and its WASI; how it ended is recorded by
/// [`end_guest_span`].
pub fn guest_span(parent: &Span, route: &str, digest: &dyn std::fmt::Display, wasi: &str) -> Span {
    if !sampled(parent) {
        return Span::none();
    }
    tracing::info_span!(
        target: SPANS,
        parent: parent,
        "guest",
        http.route = route,
        wasmhttpd.guest.digest = %digest,
        wasmhttpd.guest.wasi = wasi,
        wasmhttpd.guest.instance = Empty,
        wasmhttpd.guest.outcome = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Records whether the guest's instance was fresh or reused.
pub fn guest_instance(span: &Span, reused: bool) {
    span.record(
        "wasmhttpd.guest.instance",
        if reused { "reused" } else { "fresh" },
    );
}

/// Records how the guest's run ended: `answered`, or why it did not
/// (`timed out`, `trapped`, `out of memory`...), an error then.
pub fn end_guest_span(span: &Span, outcome: &str, error: Option<&dyn std::fmt::Display>) {
    ended(span, "wasmhttpd.guest.outcome", outcome, error);
}

/// Records in `span` how its work ended: `result` under `field`, and, for
/// an `error`, the error status with its description.
fn ended(span: &Span, field: &str, result: &str, error: Option<&dyn std::fmt::Display>) {
    if span.is_disabled() {
        return;
    }
    span.record(field, result);
    if let Some(error) = error {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", tracing::field::display(error));
    }
}

/// The context spans go under when they are opened for `span` where it
/// is not current (a guest's outgoing requests and store calls, from
/// its instance's state); empty when traces are not exported.
pub fn context(span: &Span) -> Context {
    if span.is_disabled() {
        return Context::new();
    }
    span.context()
}

/// `span`, a child of `parent`'s span.
fn child_of(span: Span, parent: &Context) -> Span {
    if !span.is_disabled() && parent.has_active_span() {
        let _ = span.set_parent(parent.clone());
    }
    span
}

/// The CLIENT span of a guest's outgoing request, under the guest's run
/// (`parent`); `traceparent` and `tracestate` for it go into `headers`,
/// so that the upstream joins the trace.
pub fn client_span(parent: &Context, method: &Method, uri: &Uri, headers: &mut HeaderMap) -> Span {
    if !parent.span().span_context().is_sampled() {
        // Upstreams hear of the decision, and drop their part too.
        if parent.span().span_context().is_valid() {
            PROPAGATOR.inject_context(parent, &mut HeaderInjector(headers));
        }
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPANS,
        parent: None,
        "outgoing request",
        otel.name = %method,
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = %method,
        url.full = %Redacted(uri),
        server.address = uri.host(),
        server.port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 }),
        http.response.status_code = Empty,
        error.type = Empty,
    );
    let span = child_of(span, parent);
    if !span.is_disabled() {
        PROPAGATOR.inject_context(&span.context(), &mut HeaderInjector(headers));
    }
    span
}

/// A URL as `url.full` gives it: without user name or password.
struct Redacted<'a>(&'a Uri);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = self.0;
        if let Some(scheme) = uri.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(host) = uri.host() {
            f.write_str(host)?;
        }
        if let Some(port) = uri.port_u16() {
            write!(f, ":{port}")?;
        }
        f.write_str(uri.path())?;
        match uri.query() {
            Some(query) => write!(f, "?{}", Query(query)),
            None => Ok(()),
        }
    }
}

/// A query string as spans record it: the values of the parameters that
/// carry credentials in a URL (signed URLs' signatures and keys, as
/// OpenTelemetry's conventions list them) written `REDACTED`.
struct Query<'a>(&'a str);

/// The parameters whose values a span never holds.
const SECRET_PARAMETERS: [&str; 4] = ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"];

impl std::fmt::Display for Query<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (at, pair) in self.0.split('&').enumerate() {
            if at > 0 {
                f.write_str("&")?;
            }
            match pair.split_once('=') {
                Some((name, _)) if SECRET_PARAMETERS.contains(&name) => {
                    write!(f, "{name}=REDACTED")?
                }
                _ => f.write_str(pair)?,
            }
        }
        Ok(())
    }
}

/// Records the response an outgoing request got.
pub fn client_status(span: &Span, status: u16) {
    span.record("http.response.status_code", status);
    if status >= 400 {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status);
    }
}

/// Records why an outgoing request failed or was refused.
pub fn client_failed(span: &Span, kind: &str, why: &dyn std::fmt::Display) {
    ended(span, "error.type", kind, Some(why));
}

/// The span of one key-value operation on `store` (a backend `system`:
/// `sqlite`, `redis`, `memory`), under the guest's run (`parent`).
pub fn kv_span(parent: &Context, store: &str, system: &str, operation: &'static str) -> Span {
    if !parent.span().span_context().is_sampled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPANS,
        parent: None,
        "key-value",
        otel.name = %format_args!("{operation} {store}"),
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        db.system.name = system,
        db.namespace = store,
        db.operation.name = operation,
        wasmhttpd.kv.result = Empty,
    );
    child_of(span, parent)
}

/// Records a key-value operation's result: `ok`, or the error's kind (an
/// error then).
pub fn kv_result(span: &Span, result: &str, error: Option<&dyn std::fmt::Display>) {
    ended(span, "wasmhttpd.kv.result", result, error);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        Settings::read(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
    }

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_given() {
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&[("OTEL_SERVICE_NAME", "web")]), Ok(None));
        let on = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://collector:4318/v1/traces");
        assert_eq!((on.queue, on.batch), (DEFAULT_QUEUE, DEFAULT_BATCH));
        let traces = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://other:4318/traces",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(traces.endpoint, "http://other:4318/traces");
        let named = read(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap().unwrap();
        assert_eq!(named.endpoint, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn tracing_is_off_when_disabled() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(read(&[endpoint, ("OTEL_SDK_DISABLED", "true")]), Ok(None));
        assert_eq!(read(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]), Ok(None));
        assert_eq!(
            read(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(None)
        );
        assert!(matches!(
            read(&[endpoint, ("OTEL_SDK_DISABLED", "false")]),
            Ok(Some(_))
        ));
    }

    #[test]
    fn what_cannot_be_served_is_named() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let err = read(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc") && err.contains("http/protobuf"),
            "{err}"
        );
        let err = read(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(err.contains("OTEL_TRACES_EXPORTER=zipkin"), "{err}");
        let err = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).unwrap_err();
        assert!(err.contains("http://HOST:4318"), "{err}");
        let err = read(&[endpoint, ("OTEL_BSP_MAX_QUEUE_SIZE", "lots")]).unwrap_err();
        assert!(err.contains("OTEL_BSP_MAX_QUEUE_SIZE=lots"), "{err}");
        assert!(read(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).is_ok());
    }

    #[test]
    fn a_full_url_loses_its_credentials() {
        let uri: Uri = "https://user:secret@example.com:8443/a?b=c"
            .parse()
            .unwrap();
        assert_eq!(Redacted(&uri).to_string(), "https://example.com:8443/a?b=c");
    }
}
