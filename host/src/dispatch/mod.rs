//! The dispatch: what a request means, whatever protocol brought it.
//!
//! A front end (the HTTP/1.1 one in [`crate::proto`]) owns the bytes on
//! the wire: framing, keep-alive, its own timeouts. For each request it
//! calls the dispatch, which:
//!
//! 1. [`Dispatch::begin`]s an [`Exchange`]: the request's id, its route and
//!    the version of that route's guest that will serve it;
//! 2. [`Dispatch::respond`]s with an `http::Response`: from the guest, its
//!    head checked (status, `Content-Length`), or a page of the host's own
//!    (no route, a client past the route's rate limit, a body over the
//!    limit, a guest that failed) that reads and carries the same headers
//!    as the default guest's;
//! 3. [`Exchange::finish`]es once the front end has sent it, which writes
//!    the access log line and counts the response in the metrics: the one
//!    place either is written.
//!
//! An upgrade to WebSocket goes through [`websocket`]: the dispatch asks
//! the guest to open a session and, once the front end has switched
//! protocols, runs the session on the connection the front end hands over.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::clients::{Connections, RateLimit, RateLimits};
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::routes::Routes;
use crate::telemetry;
use crate::wasm::cpu::CpuTime;
use crate::wasm::guest::{BodyError, Guest, GuestBody};
use crate::wasm::inspect::Wasi;
use crate::wasm::instance::RequestBody;

pub mod websocket;

/// What a front end knows of the connection a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Routes requests to guests and records what each got; one per server,
/// shared by every connection.
pub struct Dispatch {
    routes: Routes,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Every route's rate limit, for their sweep.
    rate_limits: Arc<RateLimits>,
    /// The connections each client holds.
    connections: Arc<Connections>,
    /// Becomes true when the server starts shutting down.
    shutdown: watch::Receiver<bool>,
    next_id: AtomicU64,
}

impl Dispatch {
    /// A dispatch over `routes` (whose rate limits `rate_limits` sweeps),
    /// under `limits`, counting in `metrics`.
    pub(crate) fn new(
        routes: Routes,
        rate_limits: Arc<RateLimits>,
        limits: Limits,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Dispatch {
        let connections = Arc::new(Connections::new(
            limits.max_client_connections,
            limits.trusted_proxy.clone(),
            metrics.client_connections_refused(),
        ));
        Dispatch {
            routes,
            rate_limits,
            connections,
            limits,
            metrics,
            shutdown,
            next_id: AtomicU64::new(1),
        }
    }

    /// The route table.
    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The server's limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The server's metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The routes' rate limits.
    pub(crate) fn rate_limits(&self) -> &Arc<RateLimits> {
        &self.rate_limits
    }

    /// The connections each client holds.
    pub(crate) fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// A receiver that sees the server begin to shut down.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Begins a request whose head has arrived: gives it an id, the
    /// route that takes its path, and its span (in the trace its
    /// `traceparent` header names, if it has one). The guest version
    /// running now serves the whole request, even if a new one is swapped
    /// in meanwhile.
    pub fn begin(
        &self,
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        conn: Connection,
    ) -> Exchange {
        let route = self.routes.route(uri.path());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let span = telemetry::server_span(
            method,
            uri,
            version,
            headers,
            conn.peer,
            conn.local,
            conn.tls,
            route.map(|mount| &*mount.prefix),
            id,
        );
        Exchange {
            id,
            span,
            started: Instant::now(),
            method: Some(method.clone()),
            target: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |target| target.to_string()),
            version,
            route: route.map(|mount| (mount.prefix.clone(), mount.slot.current())),
            rate: route.and_then(|mount| mount.rate.clone()),
            cpu: Arc::default(),
            conn,
            metrics: self.metrics.clone(),
        }
    }

    /// Records a request that the front end refused before its head was
    /// whole (a malformed or oversized head): it gets `status`, an access
    /// log line and a count, and an id no guest saw.
    pub fn refused(&self, conn: Connection, status: StatusCode, bytes: u64) {
        let exchange = Exchange {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            span: tracing::Span::none(),
            started: Instant::now(),
            method: None,
            target: "-".to_owned(),
            version: Version::HTTP_11,
            route: None,
            rate: None,
            cpu: Arc::default(),
            conn,
            metrics: self.metrics.clone(),
        };
        exchange.record(status, bytes, false, None);
    }

    /// The response to `request`: the guest's, once it has set its head
    /// (its body streams as the front end polls it), or a page of the
    /// host's own; without a body for `HEAD`, `204` and `304`, whose
    /// fields it keeps. Dropping the future stops the guest.
    pub async fn respond<B>(&self, exchange: &Exchange, request: http::Request<B>) -> Response
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let head_only = request.method() == Method::HEAD;
        let response = self.answer(exchange, request).await;
        let status = response.status();
        if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            // Dropping a guest's body stops the guest.
            return response.map(|_| ResponseBody::Page(None));
        }
        response
    }

    /// [`Dispatch::respond`], before bodies that must not be sent are
    /// taken off.
    async fn answer<B>(&self, exchange: &Exchange, request: http::Request<B>) -> Response
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some((prefix, guest)) = &exchange.route else {
            return page(StatusCode::NOT_FOUND, HeaderMap::new());
        };
        if let Some(refused) = self.rate_limited(exchange, request.headers()) {
            return refused;
        }
        // A front end that reads bodies whole refuses these before reading;
        // one that streams hands them on.
        let limit = self.limits.max_body;
        match declared_length(request.headers()) {
            None => return page(StatusCode::BAD_REQUEST, HeaderMap::new()),
            Some(Some(length)) if length > limit => {
                return page(StatusCode::PAYLOAD_TOO_LARGE, HeaderMap::new());
            }
            Some(_) => {}
        }
        let mut request = request.map(|body| limited(body, limit));
        if exchange.conn.tls {
            let mut parts = request.uri().clone().into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTPS);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
        match guest
            .handle(request, exchange.id, &exchange.cpu, &exchange.span, prefix)
            .await
        {
            Ok(response) => checked(exchange, response),
            Err(err) => {
                warn!(id = exchange.id, method = %exchange.method(), target = %exchange.target,
                      cause = %err, "guest failed");
                page(err.status(), HeaderMap::new())
            }
        }
    }

    /// `429` with `Retry-After` for a request whose client is past its
    /// route's rate limit, the client told by the request's `headers` when
    /// it came through a trusted proxy; `None` for one that may go on.
    fn rate_limited(&self, exchange: &Exchange, headers: &HeaderMap) -> Option<Response> {
        let rate = exchange.rate.as_ref()?;
        let client = self
            .limits
            .trusted_proxy
            .client(exchange.conn.peer.ip(), headers);
        let prefix = exchange.route.as_ref().map_or("-", |(prefix, _)| prefix);
        let wait = rate.check(client, prefix).err()?;
        let mut headers = HeaderMap::new();
        // Whole seconds, rounded up: a client that waits that long passes.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        Some(page(StatusCode::TOO_MANY_REQUESTS, headers))
    }

    /// The guest that takes upgrades to WebSocket for this request, if its
    /// route's guest has the export.
    pub fn websocket_guest(&self, exchange: &Exchange) -> Option<Arc<Guest>> {
        exchange
            .route
            .as_ref()
            .map(|(_, guest)| guest)
            .filter(|guest| guest.has_websocket())
            .cloned()
    }
}

/// One request, from its head to the end of its response.
pub struct Exchange {
    /// The request's id in the logs, the guest's output included.
    pub id: u64,
    /// Its SERVER span; disabled when traces are not exported.
    span: tracing::Span,
    started: Instant,
    /// `None` for a request refused before its head was read.
    method: Option<Method>,
    /// The request target as sent (path and query).
    target: String,
    version: Version,
    /// The route's prefix and the guest version that serves the request.
    route: Option<(Arc<str>, Arc<Guest>)>,
    /// The route's rate limit, if it has one.
    rate: Option<Arc<RateLimit>>,
    /// The CPU time the request's guest ran for (a WASIp2 guest's, or a
    /// WebSocket session's).
    cpu: Arc<CpuTime>,
    conn: Connection,
    metrics: Arc<Metrics>,
}

impl Exchange {
    /// The request's method, `-` when unknown.
    fn method(&self) -> &str {
        self.method.as_ref().map_or("-", Method::as_str)
    }

    /// The request target as sent.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Records the response the front end sent: `status`, in `bytes` on
    /// the wire.
    pub fn finish(self, status: StatusCode, bytes: u64) {
        self.record(status, bytes, true, None);
    }

    /// The access log line and the metrics of a response: the one place
    /// each is written. Only a `timed` response's duration goes into the
    /// latency histogram: not a refused request's or a WebSocket
    /// session's, which say nothing of the server's speed. A session's
    /// line says how it ended.
    fn record(
        self,
        status: StatusCode,
        bytes: u64,
        timed: bool,
        session: Option<websocket::Ended>,
    ) {
        let elapsed = self.started.elapsed();
        self.metrics.response(status, timed.then_some(elapsed));
        telemetry::end_server_span(&self.span, status.as_u16(), bytes);
        let trace_id = telemetry::trace_id(&self.span);
        // Which kind of guest the request went to, if it had a route; the
        // CPU time of a guest that ran for this request alone.
        let (wasi, cpu_us) = match &self.route {
            Some((_, guest)) => {
                let wasi = guest.wasi();
                self.metrics.guest_request(wasi);
                let own = wasi == Wasi::P2 || session.is_some();
                let cpu_us = own.then(|| self.cpu.used().as_micros() as u64);
                (wasi.as_str(), cpu_us)
            }
            None => ("-", None),
        };
        let protocol = match self.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        };
        info!(
            target: "wasmhttpd::access",
            id = self.id,
            peer = %self.conn.peer,
            method = %self.method(),
            target = %self.target,
            protocol = %protocol,
            tls = self.conn.tls,
            route = %self.route.as_ref().map_or("-", |(prefix, _)| &**prefix),
            wasi = %wasi,
            status = status.as_u16(),
            bytes,
            ms = elapsed.as_secs_f64() * 1e3,
            cpu_us,
            close_code = session.as_ref().map(|ended| ended.code),
            messages = session.as_ref().map(|ended| ended.messages),
            trace_id = trace_id.as_ref().map(tracing::field::display),
        );
    }
}

/// A response as the dispatch gives it to a front end.
pub type Response = http::Response<ResponseBody>;

/// The body of a response: a guest's, streamed as the guest writes it, or
/// one of the host's pages.
pub enum ResponseBody {
    /// Written by the guest; dropping it stops the guest.
    Guest(GuestBody),
    /// Whole; `None` once sent.
    Page(Option<Bytes>),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Guest(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::Page(page) => Poll::Ready(page.take().map(|page| Ok(Frame::data(page)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Guest(body) => body.is_end_stream(),
            ResponseBody::Page(page) => page.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Guest(body) => body.size_hint(),
            ResponseBody::Page(page) => {
                SizeHint::with_exact(page.as_ref().map_or(0, |page| page.len() as u64))
            }
        }
    }
}

/// The host's own response for `status`: the page the default guest
/// would write for it, with its headers and `headers` besides.
pub fn page(status: StatusCode, mut headers: HeaderMap) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = wasmhttpd_pages::error_page(
        status.as_u16(),
        title,
        wasmhttpd_pages::detail(status.as_u16()),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(wasmhttpd_pages::CONTENT_TYPE),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    for (name, value) in wasmhttpd_pages::SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Overload is brief: try again in a second.
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    let mut response = http::Response::new(ResponseBody::Page(Some(Bytes::from(body))));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The guest's response, or a 500 in its place when its head is not one
/// HTTP can carry: wasi:http takes any status of three digits, and a
/// final response cannot be informational; a `Content-Length` must be one
/// number.
fn checked(exchange: &Exchange, response: http::Response<GuestBody>) -> Response {
    let status = response.status();
    if (200..=599).contains(&status.as_u16()) && declared_length(response.headers()).is_some() {
        return response.map(ResponseBody::Guest);
    }
    warn!(id = exchange.id, %status,
          "guest response has an informational or invalid status, or an invalid Content-Length");
    page(StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new())
}

/// The `Content-Length` of `headers`: `Some(None)` when absent, `None`
/// when invalid (not digits, or several).
pub fn declared_length(headers: &HeaderMap) -> Option<Option<u64>> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Some(None);
    };
    if values.next().is_some() {
        return None;
    }
    let text = first.to_str().ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(Some)
}

/// `body` as the guest reads it, ending in an error past `limit` bytes.
fn limited<B>(body: B, limit: u64) -> RequestBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    http_body_util::Limited::new(body, max)
        .map_err(move |err| {
            warn!(cause = %err, "request body refused");
            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
        })
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[test]
    fn lengths_are_one_number_or_none() {
        let headers = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(
                    header::CONTENT_LENGTH,
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            headers
        };
        assert_eq!(declared_length(&headers(&[])), Some(None));
        assert_eq!(declared_length(&headers(&["42"])), Some(Some(42)));
        for bad in [
            &["4 2"][..],
            &["-1"],
            &["+1"],
            &["1", "1"],
            &[""],
            &["0x10"],
        ] {
            assert_eq!(declared_length(&headers(bad)), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_streamed_body_past_the_limit_ends_in_an_error() {
        let within = limited(Full::new(Bytes::from_static(b"12345678")), 8);
        assert_eq!(within.collect().await.unwrap().to_bytes(), "12345678");
        let past = limited(Full::new(Bytes::from_static(b"123456789")), 8);
        let err = past.collect().await.unwrap_err();
        assert!(
            matches!(err, wasmtime_wasi_http::Error::HttpRequestBodySize(Some(8))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn pages_have_the_guests_headers_and_a_length() {
        let response = page(StatusCode::SERVICE_UNAVAILABLE, HeaderMap::new());
        let headers = response.headers().clone();
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers[header::CONTENT_TYPE], wasmhttpd_pages::CONTENT_TYPE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            headers[header::CONTENT_LENGTH],
            body.len().to_string().as_str()
        );
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("<h1>503 Service Unavailable</h1>"), "{text}");
    }
}
