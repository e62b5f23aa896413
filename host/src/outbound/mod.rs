//! The requests guests send (`wasi:http/outgoing-handler`), sent by the
//! host for them under the operator's policy.
//!
//! wasmtime-wasi-http builds the request from the guest's resources and
//! hands it to [`Hooks::send_request`]; everything after that is here:
//!
//! 1. The URL's scheme, host and port are checked against the route's
//!    [`AllowList`]. With no entry (the default) every request is refused
//!    with `HttpRequestDenied`, before any lookup or connection.
//! 2. A name is resolved by the host, and *every* address it resolves to
//!    is checked ([`Candidates::admit`]): an address that is not public
//!    ([`policy::is_public`], or one of this machine's own, which takes in
//!    the server's own listener) needs an entry naming it.
//! 3. The host connects to the addresses it checked, never looking the
//!    name up again, so a DNS answer that changes in between (rebinding)
//!    cannot slip past; https goes through rustls with the webpki roots
//!    and the authorities of `--outbound-ca`.
//! 4. The response body streams to the guest as it arrives. A response
//!    whose connection ends right after it (`Connection: close`,
//!    HTTP/1.0, a body read to the end of the connection) is whole; only
//!    a connection that ends before the response head, or before the end
//!    of a body of known length, fails the guest's request
//!    (`HttpResponseIncomplete`).
//!
//! The connect, first-byte and between-bytes timeouts are the server's
//! (`--outbound-*-timeout`); a guest's `request-options` may shorten them,
//! never lengthen them. One instance may have `--max-outbound` requests
//! open at once. All of it runs inside the guest's own deadline: an
//! instance stopped at its deadline drops its requests with it.
//!
//! Each request is logged (target `wasmhttpd::outbound`) with the id of
//! the incoming request that sent it, and counted in the metrics.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Scheme as UriScheme;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tracing::{Span, info, warn};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, TlsAlertReceivedPayload};
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, Error, ForbiddenHeaderFilter, RequestOptions, WasiBody,
    WasiHttpHooks, WasiHttpView,
};

use crate::config::Limits;
use crate::metrics::{Metrics, Outgoing};
use crate::telemetry;
use crate::tls::TlsError;
use policy::{AllowList, Candidates, Denial, Host, Scheme};

pub mod policy;

/// What the host does for the guests of one route: its allow-list and the
/// server's caps.
pub struct Outbound {
    allow: AllowList,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    between_bytes_timeout: Duration,
    /// Requests one instance may have open at once.
    max_open: usize,
    /// The TLS client of https requests, with the roots they trust.
    tls: Arc<rustls::ClientConfig>,
    metrics: Arc<Metrics>,
}

impl Outbound {
    /// The policy of a route allowing `allow`, under the server's `limits`;
    /// fails when `--outbound-ca` cannot be used.
    pub fn new(
        allow: AllowList,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Outbound, TlsError> {
        Ok(Outbound {
            allow,
            connect_timeout: limits.outbound_connect_timeout,
            first_byte_timeout: limits.outbound_first_byte_timeout,
            between_bytes_timeout: limits.outbound_between_bytes_timeout,
            max_open: limits.max_outbound as usize,
            tls: crate::tls::outbound_client(limits.outbound_ca.as_deref())?,
            metrics,
        })
    }

    /// The same caps with another route's `allow` list.
    pub fn with_list(&self, allow: AllowList) -> Outbound {
        Outbound {
            allow,
            tls: self.tls.clone(),
            metrics: self.metrics.clone(),
            ..*self
        }
    }

    /// The hooks of one instance, whose requests are logged with the id
    /// `request` holds at the time.
    pub fn hooks(self: &Arc<Self>, request: Arc<AtomicU64>) -> Hooks {
        Hooks {
            outbound: self.clone(),
            request,
            open: Arc::new(Semaphore::new(self.max_open)),
            trace: opentelemetry::Context::new(),
        }
    }
}

/// The `wasi:http` hooks of one guest instance.
pub struct Hooks {
    outbound: Arc<Outbound>,
    /// The id of the incoming request the instance serves now.
    request: Arc<AtomicU64>,
    /// This instance's share of open outgoing requests.
    open: Arc<Semaphore>,
    /// The trace context of the guest's run for that request: each
    /// outgoing request's span goes under it.
    trace: opentelemetry::Context,
}

impl Hooks {
    /// Opens the spans of outgoing requests under `cx` from now on.
    pub fn trace(&mut self, cx: &opentelemetry::Context) {
        self.trace = cx.clone();
    }
}

/// What [`WasiHttpHooks::send_request`] gives back: the response, and the
/// connection's I/O to be driven while its body is read.
type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// The headers a guest may not set (hop-by-hop fields and `Host`), as
/// one filter made once: wasmtime-wasi-http's default makes a new one for
/// every header it checks.
static FORBIDDEN_HEADERS: LazyLock<ForbiddenHeaderFilter> =
    LazyLock::new(|| Arc::new(|name| DEFAULT_FORBIDDEN_HEADERS.contains(name)));

impl WasiHttpHooks for Hooks {
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        DEFAULT_FORBIDDEN_HEADERS.contains(name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        FORBIDDEN_HEADERS.clone()
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<Sent, Error>> + Send> {
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let span = telemetry::client_span(&self.trace, &method, &uri, request.headers_mut());
        let call = Call {
            span,
            outbound: self.outbound.clone(),
            id: self.request.load(Ordering::Relaxed),
            method: request.method().clone(),
            url: request.uri().to_string(),
            started: Instant::now(),
            logged: false,
        };
        let open = self.open.clone();
        Box::new(async move { call.send(request, options, open).await })
    }

    // The host logs every outgoing request itself: these only map errors.
    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        match err.kind() {
            std::io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
            std::io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                ErrorCode::ConnectionTerminated
            }
            _ => ErrorCode::DestinationUnavailable,
        }
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        match err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(_)) => ErrorCode::TlsCertificateError,
            Some(rustls::Error::AlertReceived(alert)) => {
                ErrorCode::TlsAlertReceived(TlsAlertReceivedPayload {
                    alert_id: Some(u8::from(*alert)),
                    alert_message: Some(format!("{alert:?}")),
                })
            }
            _ => ErrorCode::TlsProtocolError,
        }
    }

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> ErrorCode {
        if err.is_timeout() {
            ErrorCode::ConnectionReadTimeout
        } else if err.is_incomplete_message() {
            ErrorCode::HttpResponseIncomplete
        } else {
            ErrorCode::HttpProtocolError
        }
    }
}

/// One outgoing request, for its log line, its count and its span.
struct Call {
    /// Its CLIENT span, ended with the call.
    span: Span,
    outbound: Arc<Outbound>,
    id: u64,
    method: http::Method,
    url: String,
    started: Instant,
    /// Whether its log line is written.
    logged: bool,
}

impl Drop for Call {
    /// A request whose guest went away before it was over (the instance
    /// stopped at its deadline, or dropped the request) is logged too.
    fn drop(&mut self) {
        if self.logged {
            return;
        }
        warn!(
            target: "wasmhttpd::outbound",
            id = self.id,
            method = %self.method,
            url = %self.url,
            ms = self.started.elapsed().as_secs_f64() * 1e3,
            "outgoing request abandoned by its guest"
        );
        telemetry::client_failed(&self.span, "abandoned", &"abandoned by its guest");
        self.outbound
            .metrics
            .outgoing(Outgoing::Failed, self.started.elapsed());
    }
}

impl Call {
    /// Checks, connects and sends; a refusal or a failure is logged and
    /// counted here, a response once its body ends.
    async fn send(
        mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        open: Arc<Semaphore>,
    ) -> Result<Sent, Error> {
        let permit = match open.try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let reason = format!(
                    "more than {} outgoing requests of one instance at once (--max-outbound)",
                    self.outbound.max_open
                );
                return Err(self.denied(&reason, Error::ConnectionLimitReached));
            }
        };
        let timeouts = Timeouts::new(&self.outbound, options);
        match self.connect(request, &timeouts).await {
            Ok((response, io, rule)) => {
                let status = response.status();
                telemetry::client_status(&self.span, status.as_u16());
                let body = response.map(|incoming| {
                    ResponseBody {
                        incoming,
                        between_bytes: timeouts.between_bytes,
                        stall: None,
                        bytes: 0,
                        done: Some(Done {
                            call: self,
                            status,
                            rule,
                            _permit: permit,
                        }),
                    }
                    .boxed_unsync()
                });
                Ok((body, Box::new(io)))
            }
            Err(Refused::Denied(denial)) => {
                Err(self.denied(&denial.to_string(), Error::HttpRequestDenied))
            }
            Err(Refused::Failed(err)) => {
                self.failed(&err, None, 0);
                Err(err)
            }
        }
    }

    /// The request checked, its host resolved and its addresses checked,
    /// connected and sent: the response head, the connection's I/O, and
    /// the entry that allowed it.
    async fn connect(
        &self,
        mut request: http::Request<WasiBody>,
        timeouts: &Timeouts,
    ) -> Result<
        (
            http::Response<hyper::body::Incoming>,
            impl Future<Output = Result<(), Error>> + Send + use<>,
            String,
        ),
        Refused,
    > {
        let uri = request.uri();
        let scheme = match uri.scheme() {
            Some(scheme) if *scheme == UriScheme::HTTP => Scheme::Http,
            Some(scheme) if *scheme == UriScheme::HTTPS => Scheme::Https,
            _ => return Err(Refused::Failed(Error::HttpRequestUriInvalid)),
        };
        let Some(authority) = uri.authority() else {
            return Err(Refused::Failed(Error::HttpRequestUriInvalid));
        };
        let port = authority.port_u16().unwrap_or(scheme.default_port());
        let host = Host::parse(authority.host());
        let candidates = self.outbound.allow.candidates(scheme, &host, port)?;

        let deadline = tokio::time::Instant::now() + timeouts.connect;
        let addrs = tokio::time::timeout_at(deadline, resolve(&host, port))
            .await
            .map_err(|_| Refused::Failed(Error::DnsTimeout))??;
        let rule = admit(&candidates, &addrs)?.to_string();

        let stream = tokio::time::timeout_at(deadline, connect_any(&addrs, port))
            .await
            .map_err(|_| Refused::Failed(Error::ConnectionTimeout))?
            .map_err(|err| Refused::Failed(Error::Connect(err)))?;
        let io: Box<dyn Stream> = match scheme {
            Scheme::Http => Box::new(stream),
            Scheme::Https => {
                let name = match &host {
                    Host::Name(name) => rustls::pki_types::ServerName::try_from(name.clone())
                        .map_err(|err| Refused::Failed(Error::InvalidDnsNameError(err)))?,
                    Host::Addr(addr) => rustls::pki_types::ServerName::from(*addr),
                };
                let tls = tokio_rustls::TlsConnector::from(self.outbound.tls.clone())
                    .connect(name, stream);
                Box::new(
                    tokio::time::timeout_at(deadline, tls)
                        .await
                        .map_err(|_| Refused::Failed(Error::ConnectionTimeout))?
                        .map_err(|err| Refused::Failed(Error::Tls(err)))?,
                )
            }
        };
        let (mut sender, conn) = tokio::time::timeout_at(
            deadline,
            hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(io)),
        )
        .await
        .map_err(|_| Refused::Failed(Error::ConnectionTimeout))?
        .map_err(|err| Refused::Failed(Error::Hyper(err)))?;

        // The request line carries the path only; the Host header says the
        // rest.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .parse()
            .map_err(|_| Refused::Failed(Error::HttpRequestUriInvalid))?;
        *request.uri_mut() = path;

        // The connection's I/O runs with the send until the head arrives,
        // and then with the body, driven by wasmtime-wasi-http.
        let mut conn = Box::pin(conn);
        let send = tokio::time::timeout(timeouts.first_byte, sender.send_request(request));
        let mut send = std::pin::pin!(send);
        let mut ended = None;
        let sent = tokio::select! {
            biased;
            sent = &mut send => sent,
            end = &mut conn => {
                // A response that ends with its connection (`Connection:
                // close`, HTTP/1.0, read to EOF) reaches the sender in the
                // very poll in which the connection ends: the sender has
                // it now, or says that none came.
                ended = Some(end);
                send.await
            }
        };
        let running = ended.is_none();
        let response = match (sent, ended) {
            (Ok(Ok(response)), _) => Ok(response),
            (_, Some(Err(err))) => Err(Error::Hyper(err)),
            // Ended normally without a response head.
            (_, Some(Ok(()))) => Err(Error::HttpResponseIncomplete),
            (Ok(Err(err)), None) => Err(Error::Hyper(err)),
            (Err(_), None) => Err(Error::ConnectionReadTimeout),
        }
        .map_err(Refused::Failed)?;
        let io = async move {
            if running {
                conn.await.map_err(Error::Hyper)
            } else {
                Ok(())
            }
        };
        Ok((response, io, rule))
    }

    /// Logs and counts a request refused by the policy or a limit; the
    /// guest gets `error`.
    fn denied(&mut self, reason: &str, error: Error) -> Error {
        self.logged = true;
        warn!(
            target: "wasmhttpd::outbound",
            id = self.id,
            method = %self.method,
            url = %self.url,
            denied = reason,
            "outgoing request denied"
        );
        telemetry::client_failed(&self.span, "denied", &reason);
        self.outbound
            .metrics
            .outgoing(Outgoing::Denied, self.started.elapsed());
        error
    }

    /// Logs and counts a request that was allowed and then failed.
    fn failed(&mut self, err: &Error, status: Option<http::StatusCode>, bytes: u64) {
        self.logged = true;
        warn!(
            target: "wasmhttpd::outbound",
            id = self.id,
            method = %self.method,
            url = %self.url,
            status = status.map(|status| status.as_u16()),
            bytes,
            ms = self.started.elapsed().as_secs_f64() * 1e3,
            error = %err,
            "outgoing request failed"
        );
        let kind = format!("{err:?}");
        let kind = kind.split(['(', ' ', '{']).next().unwrap_or_default();
        telemetry::client_failed(&self.span, kind, err);
        self.outbound
            .metrics
            .outgoing(Outgoing::Failed, self.started.elapsed());
    }
}

/// Why a request got no response.
enum Refused {
    /// The policy refused it: nothing was sent.
    Denied(Denial),
    /// It was allowed and failed.
    Failed(Error),
}

impl From<Denial> for Refused {
    fn from(denial: Denial) -> Refused {
        Refused::Denied(denial)
    }
}

/// A connection's byte stream, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// The timeouts of one request: the server's, or the guest's where
/// shorter.
struct Timeouts {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl Timeouts {
    fn new(outbound: &Outbound, options: Option<RequestOptions>) -> Timeouts {
        let options = options.unwrap_or_default();
        let pick =
            |cap: Duration, asked: Option<Duration>| asked.map_or(cap, |asked| asked.min(cap));
        Timeouts {
            connect: pick(outbound.connect_timeout, options.connect_timeout),
            first_byte: pick(outbound.first_byte_timeout, options.first_byte_timeout),
            between_bytes: pick(
                outbound.between_bytes_timeout,
                options.between_bytes_timeout,
            ),
        }
    }
}

/// The addresses `host` stands for: itself, or what a lookup gives.
async fn resolve(host: &Host, port: u16) -> Result<Vec<IpAddr>, Refused> {
    let name = match host {
        Host::Addr(addr) => return Ok(vec![*addr]),
        Host::Name(name) => name,
    };
    let found = tokio::net::lookup_host((name.as_str(), port))
        .await
        .map_err(|err| {
            Refused::Failed(Error::DnsError {
                rcode: Some(err.to_string()),
                info_code: None,
            })
        })?;
    let mut addrs: Vec<IpAddr> = Vec::new();
    for addr in found {
        let ip = policy::canonical(addr.ip());
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    if addrs.is_empty() {
        return Err(Refused::Failed(Error::DestinationNotFound));
    }
    Ok(addrs)
}

/// The entry that allows every one of `addrs`, or why one is refused.
fn admit<'a>(
    candidates: &'a Candidates<'_>,
    addrs: &[IpAddr],
) -> Result<&'a policy::Pattern, Denial> {
    let mut rule = None;
    for addr in addrs {
        let public = policy::is_public(*addr) && !is_own(*addr);
        rule = Some(candidates.admit(*addr, public)?);
    }
    Ok(rule.expect("resolve gives at least one address"))
}

/// Whether `addr` is one of this machine's own: the kernel lets a socket
/// bind only to those. A request to one reaches the machine's own services
/// (the server's listener among them) as loopback would.
fn is_own(addr: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(addr, 0)).is_ok()
}

/// A connection to the first of `addrs` that takes one.
async fn connect_any(addrs: &[IpAddr], port: u16) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(SocketAddr::new(*addr, port)).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into()))
}

/// A response body as the guest reads it: streamed, each piece within the
/// between-bytes timeout, and logged once it ends or is dropped.
struct ResponseBody {
    incoming: hyper::body::Incoming,
    between_bytes: Duration,
    /// The wait for the next piece, once the guest asked for it.
    stall: Option<Pin<Box<Sleep>>>,
    bytes: u64,
    /// The log line and the count, until written.
    done: Option<Done>,
}

/// What the log line of a response says once its body is over; holds the
/// request's share of its instance's open requests until then.
struct Done {
    call: Call,
    status: http::StatusCode,
    rule: String,
    _permit: OwnedSemaphorePermit,
}

impl ResponseBody {
    /// Logs and counts the request: `error` if its body failed, or
    /// whether the guest read it to the end.
    fn finish(&mut self, error: Option<&Error>, complete: bool) {
        let Some(mut done) = self.done.take() else {
            return;
        };
        let call = &mut done.call;
        if let Some(err) = error {
            call.failed(err, Some(done.status), self.bytes);
            return;
        }
        info!(
            target: "wasmhttpd::outbound",
            id = call.id,
            method = %call.method,
            url = %call.url,
            status = done.status.as_u16(),
            bytes = self.bytes,
            ms = call.started.elapsed().as_secs_f64() * 1e3,
            allowed = %done.rule,
            complete,
            "outgoing request"
        );
        call.logged = true;
        call.outbound
            .metrics
            .outgoing(Outgoing::Sent, call.started.elapsed());
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall = None;
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                let err = body_error(&err);
                this.finish(Some(&err), false);
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                this.finish(None, true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = this.between_bytes;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(stall.as_mut().poll(cx));
                let err = Error::ConnectionReadTimeout;
                this.finish(Some(&err), false);
                Poll::Ready(Some(Err(err)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// What a broken response body is, in the terms the guest reads it in
/// (see [`add_to_linker`]).
fn body_error(err: &hyper::Error) -> Error {
    if err.is_timeout() {
        Error::HttpResponseTimeout
    } else if ended_early(err) {
        // The connection ended before the length the head declared.
        Error::HttpResponseIncomplete
    } else {
        Error::HttpProtocolError
    }
}

/// Whether `err` is the connection's end before the body's: hyper reads
/// it as an unexpected end of file.
fn ended_early(err: &hyper::Error) -> bool {
    err.is_incomplete_message()
        || std::error::Error::source(err)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
}

/// The interface whose `http-error-code` [`add_to_linker`] answers.
const TYPES: &str = "wasi:http/types@0.2.12";

/// Defines `wasi:http/types`'s `http-error-code` again in `linker`, so
/// that the error of a response body the host streams for a guest (one of
/// [`body_error`]'s, or the between-bytes timeout) reaches the guest as
/// its `error-code`. wasmtime-wasi-http passes a body's error to the guest
/// as an `io-error` whose code only an `error-code` value gives, so
/// without this a guest would see an upstream that closed mid-body only
/// as text.
pub fn add_to_linker<T: WasiHttpView + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker.instance(TYPES)?.func_wrap(
        "http-error-code",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (err,): (wasmtime::component::Resource<wasmtime_wasi::p2::IoError>,)| {
            let err = store.data_mut().http().table.get(&err)?;
            Ok((error_code(err),))
        },
    );
    linker.allow_shadowing(false);
    defined
}

/// The `error-code` an `io-error` stands for, if any.
fn error_code(err: &wasmtime::Error) -> Option<ErrorCode> {
    if let Some(code) = err.downcast_ref::<ErrorCode>() {
        return Some(code.clone());
    }
    match err.downcast_ref::<Error>()? {
        Error::HttpResponseIncomplete => Some(ErrorCode::HttpResponseIncomplete),
        Error::HttpResponseTimeout => Some(ErrorCode::HttpResponseTimeout),
        Error::ConnectionReadTimeout => Some(ErrorCode::ConnectionReadTimeout),
        Error::HttpProtocolError => Some(ErrorCode::HttpProtocolError),
        _ => None,
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let complete = self.incoming.is_end_stream();
        self.finish(None, complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machines_own_addresses_count_as_its_own() {
        assert!(is_own("127.0.0.1".parse().unwrap()));
        assert!(is_own("127.0.0.2".parse().unwrap()));
        // Not an address of any test machine: the kernel refuses to bind it.
        assert!(!is_own("93.184.215.14".parse().unwrap()));
        // A connected UDP socket names the address outgoing traffic leaves
        // from, without sending anything; where there is a route out, that
        // address is the machine's own.
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        if probe.connect("192.0.2.1:9").is_ok() {
            let local = probe.local_addr().unwrap().ip();
            assert!(is_own(local), "{local}");
        }
    }

    #[test]
    fn a_guest_shortens_timeouts_and_never_lengthens_them() {
        let limits = Limits {
            outbound_connect_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let outbound =
            Outbound::new(AllowList::default(), &limits, Arc::new(Metrics::new())).unwrap();
        let asked = |connect| RequestOptions {
            connect_timeout: Some(connect),
            ..RequestOptions::default()
        };
        let shorter = Timeouts::new(&outbound, Some(asked(Duration::from_secs(1))));
        assert_eq!(shorter.connect, Duration::from_secs(1));
        let longer = Timeouts::new(&outbound, Some(asked(Duration::from_secs(60))));
        assert_eq!(longer.connect, Duration::from_secs(5));
        let none = Timeouts::new(&outbound, None);
        assert_eq!(none.first_byte, limits.outbound_first_byte_timeout);
    }
}
