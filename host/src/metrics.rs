//! What the server counts, encoded as Prometheus metrics (OpenMetrics
//! text); [`crate::proto::endpoint::serve_metrics`] serves them on a
//! listener of their own (`--metrics ADDR`).
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `wasmhttpd_requests_total{class}` | counter | responses by status class (`1xx` … `5xx`) |
//! | `wasmhttpd_guest_requests_total{wasi}` | counter | requests routed to a guest, by the `wasi:http` it exports (`p2`, `p3`) |
//! | `wasmhttpd_request_duration_seconds` | histogram | from the request head to the response's last byte |
//! | `wasmhttpd_open_connections` | gauge | client connections open now |
//! | `wasmhttpd_event_loop_connections{event_loop}` | gauge | client connections open now on each event loop (`0` …), which shows how evenly the kernel spreads them |
//! | `wasmhttpd_guest_instances` | gauge | guest instances alive now (requests, reused, WebSocket) |
//! | `wasmhttpd_websocket_sessions` | gauge | WebSocket sessions open now |
//! | `wasmhttpd_guest_traps_total` | counter | guests that trapped (panic, `unreachable`, out of memory) |
//! | `wasmhttpd_guest_timeouts_total` | counter | guests stopped at their deadline |
//! | `wasmhttpd_guest_cpu_exhausted_total` | counter | guests stopped at their CPU budget (`--guest-cpu-time`) |
//! | `wasmhttpd_guest_cpu_seconds_total{route}` | counter | CPU time guests ran for, by route, counted as it is spent |
//! | `wasmhttpd_guest_opens_refused_total` | counter | guests' opens of what is neither a regular file nor a directory (a FIFO, a socket, a device), refused |
//! | `wasmhttpd_rate_limited_total{route}` | counter | requests a route's rate limit answered with 429 |
//! | `wasmhttpd_rate_limit_clients{route}` | gauge | clients a route's rate limit keeps track of now |
//! | `wasmhttpd_client_connections_refused_total` | counter | connections refused because their client held `--max-client-connections` |
//! | `wasmhttpd_trace_spans_dropped_total` | counter | trace spans never exported: the export queue was full, or the collector did not take their batch |
//! | `wasmhttpd_reloads_total{result}` | counter | guest reloads, `swapped` or `failed` |
//! | `wasmhttpd_tls_reloads_total{result}` | counter | TLS certificate reloads, `loaded` or `failed` |
//! | `wasmhttpd_outgoing_requests_total{result}` | counter | guests' outgoing requests: `sent` (a response came), `denied` (by the allow-list or `--max-outbound`), `failed` |
//! | `wasmhttpd_outgoing_request_duration_seconds` | histogram | from an outgoing request's start to its response body's end (or its refusal or failure) |
//! | `wasmhttpd_kv_operations_total{store,op,result}` | counter | guests' key-value operations: `ok`, `limit`, `unavailable`, `invalid`, and opens `denied` or `no-such-store` |
//! | `wasmhttpd_kv_operation_duration_seconds{store,op}` | histogram | how long each key-value operation took |
//! | `wasmhttpd_guest_host_calls{route}` | histogram | calls a WASIp2 guest made into the host for one request (each crosses the component boundary) |

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::wasm::inspect::Wasi;

/// The content type of the OpenMetrics text format, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Latency buckets: 0.5 ms doubling to about 16 s, which spans a file from
/// the page cache to a guest at its default deadline.
const LATENCY_BUCKETS: (f64, f64, u16) = (0.0005, 2.0, 16);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WasiLabel {
    wasi: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KvLabel {
    store: String,
    op: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLoopLabel {
    event_loop: usize,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KvOpLabel {
    store: String,
    op: &'static str,
}

/// The status classes responses are counted by.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Key-value latency buckets: 50 µs doubling to about 1.6 s, from a read
/// of SQLite's page cache to an operation at its timeout.
fn kv_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Host-call buckets: 4 doubling to 8192, from a guest that answers
/// without looking at its request to one that streams a large body in
/// small writes.
fn host_call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(4.0, 2.0, 12))
}

/// A fault of a guest's own, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It trapped: a panic, `unreachable`, memory exhausted.
    Trap,
    /// It ran past its deadline.
    Timeout,
    /// It used its CPU budget.
    CpuTime,
}

/// How a guest's outgoing request ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// A response came back (whatever its status).
    Sent,
    /// The allow-list or a limit refused it; nothing was sent.
    Denied,
    /// It was allowed and failed: no connection, a timeout, a broken body.
    Failed,
}

/// The server's counters and gauges.
pub struct Metrics {
    registry: Registry,
    /// Responses by status class, `1xx` to `5xx`, each made at start so
    /// that counting one takes no lock.
    requests: [Counter; 5],
    /// Guest requests, by `p2` and `p3`, likewise.
    guest_requests: [Counter; 2],
    latency: Histogram,
    connections: Gauge,
    event_loop_connections: Family<EventLoopLabel, Gauge>,
    instances: Gauge,
    websocket_sessions: Gauge,
    traps: Counter,
    timeouts: Counter,
    cpu_exhausted: Counter,
    refused_opens: Counter,
    guest_cpu: Family<RouteLabel, Counter<f64, AtomicU64>>,
    rate_limited: Family<RouteLabel, Counter>,
    rate_clients: Family<RouteLabel, Gauge>,
    client_connections_refused: Counter,
    reloads: Family<ResultLabel, Counter>,
    tls_reloads: Family<ResultLabel, Counter>,
    outgoing: Family<ResultLabel, Counter>,
    outgoing_latency: Histogram,
    kv: Family<KvLabel, Counter>,
    kv_latency: Family<KvOpLabel, Histogram, fn() -> Histogram>,
    host_calls: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered for encoding.
    pub fn new() -> Self {
        let (start, factor, count) = LATENCY_BUCKETS;
        let requests_family = Family::<ClassLabel, Counter>::default();
        let requests =
            CLASSES.map(|class| requests_family.get_or_create(&ClassLabel { class }).clone());
        let guest_requests_family = Family::<WasiLabel, Counter>::default();
        let guest_requests = [Wasi::P2, Wasi::P3].map(|wasi| {
            guest_requests_family
                .get_or_create(&WasiLabel {
                    wasi: wasi.as_str(),
                })
                .clone()
        });
        let latency = Histogram::new(exponential_buckets(start, factor, count));
        let [connections, instances, websocket_sessions] = [(); 3].map(|()| Gauge::default());
        let event_loop_connections = Family::<EventLoopLabel, Gauge>::default();
        let [
            traps,
            timeouts,
            cpu_exhausted,
            refused_opens,
            client_connections_refused,
        ] = [(); 5].map(|()| Counter::default());
        let guest_cpu = Family::<RouteLabel, Counter<f64, AtomicU64>>::default();
        let rate_limited = Family::<RouteLabel, Counter>::default();
        let rate_clients = Family::<RouteLabel, Gauge>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let outgoing = Family::<ResultLabel, Counter>::default();
        let tls_reloads = Family::<ResultLabel, Counter>::default();
        let outgoing_latency = Histogram::new(exponential_buckets(start, factor, count));
        let kv = Family::<KvLabel, Counter>::default();
        let kv_latency =
            Family::<KvOpLabel, Histogram, fn() -> Histogram>::new_with_constructor(kv_histogram);
        let host_calls = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            host_call_histogram,
        );
        let mut registry = Registry::with_prefix("wasmhttpd");
        registry.register(
            "requests",
            "Responses sent, by status class",
            requests_family,
        );
        registry.register(
            "guest_requests",
            "Requests routed to a guest, by the wasi:http it exports",
            guest_requests_family,
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's head to its response's last byte",
            latency.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            connections.clone(),
        );
        registry.register(
            "event_loop_connections",
            "Client connections open now, by the event loop that serves them",
            event_loop_connections.clone(),
        );
        registry.register(
            "guest_instances",
            "Guest instances alive now",
            instances.clone(),
        );
        registry.register(
            "websocket_sessions",
            "WebSocket sessions open now",
            websocket_sessions.clone(),
        );
        registry.register("guest_traps", "Guests that trapped", traps.clone());
        registry.register(
            "trace_spans_dropped",
            "Trace spans never exported: the export queue was full, or the collector did not \
             take their batch",
            crate::telemetry::SPANS_DROPPED.clone(),
        );
        registry.register(
            "guest_timeouts",
            "Guests stopped at their deadline",
            timeouts.clone(),
        );
        registry.register(
            "guest_cpu_exhausted",
            "Guests stopped at their CPU budget",
            cpu_exhausted.clone(),
        );
        registry.register(
            "guest_cpu_seconds",
            "CPU time guests ran for, by route",
            guest_cpu.clone(),
        );
        registry.register(
            "guest_opens_refused",
            "Guests' opens of what is neither a regular file nor a directory, refused",
            refused_opens.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests a route's rate limit answered with 429, by route",
            rate_limited.clone(),
        );
        registry.register(
            "rate_limit_clients",
            "Clients a route's rate limit keeps track of now, by route",
            rate_clients.clone(),
        );
        registry.register(
            "client_connections_refused",
            "Connections refused because their client held as many as it may",
            client_connections_refused.clone(),
        );
        registry.register(
            "reloads",
            "Guest reloads, swapped in or failed",
            reloads.clone(),
        );
        registry.register(
            "tls_reloads",
            "TLS certificate reloads, loaded or failed",
            tls_reloads.clone(),
        );
        registry.register(
            "outgoing_requests",
            "Outgoing requests of guests, sent, denied or failed",
            outgoing.clone(),
        );
        registry.register(
            "outgoing_request_duration_seconds",
            "Time from an outgoing request's start to its response body's end",
            outgoing_latency.clone(),
        );
        registry.register(
            "kv_operations",
            "Key-value operations of guests, by store, operation and result",
            kv.clone(),
        );
        registry.register(
            "kv_operation_duration_seconds",
            "Time a key-value operation took, by store and operation",
            kv_latency.clone(),
        );
        registry.register(
            "guest_host_calls",
            "Calls a WASIp2 guest made into the host for one request, by route",
            host_calls.clone(),
        );
        #[cfg(feature = "count-allocations")]
        registry.register(
            "allocations",
            "Allocations the process has made (a build with --features count-allocations)",
            Allocations,
        );
        Metrics {
            registry,
            requests,
            guest_requests,
            latency,
            connections,
            event_loop_connections,
            instances,
            websocket_sessions,
            traps,
            timeouts,
            cpu_exhausted,
            refused_opens,
            guest_cpu,
            rate_limited,
            rate_clients,
            client_connections_refused,
            reloads,
            tls_reloads,
            outgoing,
            outgoing_latency,
            kv,
            kv_latency,
            host_calls,
        }
    }

    /// The counters of the route at `prefix`, made now so that a
    /// request's counts take no lock.
    pub(crate) fn route(&self, prefix: &str) -> RouteCounters {
        let label = RouteLabel {
            route: prefix.to_owned(),
        };
        RouteCounters {
            host_calls: self.host_calls.get_or_create(&label).clone(),
            cpu: self.guest_cpu.get_or_create(&label).clone(),
        }
    }

    /// The counter of guests' refused opens.
    pub(crate) fn refused_opens(&self) -> Counter {
        self.refused_opens.clone()
    }

    /// The rate limit's counter of refused requests and gauge of clients
    /// of the route at `prefix`.
    pub(crate) fn rate_limit(&self, prefix: &str) -> (Counter, Gauge) {
        let label = RouteLabel {
            route: prefix.to_owned(),
        };
        (
            self.rate_limited.get_or_create(&label).clone(),
            self.rate_clients.get_or_create(&label).clone(),
        )
    }

    /// The counter of connections refused for their client's share.
    pub(crate) fn client_connections_refused(&self) -> Counter {
        self.client_connections_refused.clone()
    }

    /// Counts a refused open of the store `store` (`""`: a name no store
    /// has) by its `result`, `denied` or `no-such-store`.
    pub(crate) fn kv_open(&self, store: &str, result: &'static str) {
        self.kv
            .get_or_create(&KvLabel {
                store: store.to_owned(),
                op: "open",
                result,
            })
            .inc();
    }

    /// The counters of the store `store`'s operations `ops` by each of
    /// `results`, and their latencies, made now so that counting one
    /// takes no lock and no allocation.
    pub(crate) fn kv_counted<const OPS: usize, const RESULTS: usize>(
        &self,
        store: &str,
        ops: [&'static str; OPS],
        results: [&'static str; RESULTS],
    ) -> KvCounted {
        let counters = ops
            .iter()
            .flat_map(|op| results.iter().map(move |result| (*op, *result)))
            .map(|(op, result)| {
                self.kv
                    .get_or_create(&KvLabel {
                        store: store.to_owned(),
                        op,
                        result,
                    })
                    .clone()
            })
            .collect();
        let latency = ops
            .iter()
            .map(|op| {
                self.kv_latency
                    .get_or_create(&KvOpLabel {
                        store: store.to_owned(),
                        op,
                    })
                    .clone()
            })
            .collect();
        KvCounted {
            counters,
            latency,
            results: RESULTS,
        }
    }

    /// Counts a response and how long it took (`None` for a request refused
    /// before it was whole, which has no meaningful duration).
    pub(crate) fn response(&self, status: StatusCode, elapsed: Option<Duration>) {
        let class = match status.as_u16() {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.requests[class].inc();
        if let Some(elapsed) = elapsed {
            self.latency.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts a request routed to a guest that exports `wasi`.
    pub(crate) fn guest_request(&self, wasi: Wasi) {
        self.guest_requests[wasi as usize].inc();
    }

    /// Counts a guest's fault.
    pub(crate) fn guest_fault(&self, fault: Fault) {
        match fault {
            Fault::Trap => self.traps.inc(),
            Fault::Timeout => self.timeouts.inc(),
            Fault::CpuTime => self.cpu_exhausted.inc(),
        };
    }

    /// Counts a reload.
    pub(crate) fn reload(&self, swapped: bool) {
        let result = if swapped { "swapped" } else { "failed" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a reload of the TLS certificate.
    pub(crate) fn tls_reload(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "failed" };
        self.tls_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts a guest's outgoing request and how long it took.
    pub(crate) fn outgoing(&self, outcome: Outgoing, elapsed: Duration) {
        let result = match outcome {
            Outgoing::Sent => "sent",
            Outgoing::Denied => "denied",
            Outgoing::Failed => "failed",
        };
        self.outgoing.get_or_create(&ResultLabel { result }).inc();
        self.outgoing_latency.observe(elapsed.as_secs_f64());
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> i64 {
        self.connections.get()
    }

    /// Guest instances alive now.
    pub fn guest_instances(&self) -> i64 {
        self.instances.get()
    }

    /// Counts an open connection, in all and on the event loop whose gauge
    /// is `event_loop`, until the guards are dropped.
    pub(crate) fn connection(&self, event_loop: &Gauge) -> [Open; 2] {
        [Open::new(&self.connections), Open::new(event_loop)]
    }

    /// The open-connections gauge of event loop `index`, made now so that
    /// counting a connection on it takes no lock.
    pub(crate) fn event_loop(&self, index: usize) -> Gauge {
        self.event_loop_connections
            .get_or_create(&EventLoopLabel { event_loop: index })
            .clone()
    }

    /// Counts a live guest instance until the guard is dropped.
    pub(crate) fn instance(&self) -> Open {
        Open::new(&self.instances)
    }

    /// Counts an open WebSocket session until the guard is dropped.
    pub(crate) fn websocket_session(&self) -> Open {
        Open::new(&self.websocket_sessions)
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The count of the counting allocator, read as the metrics are encoded.
#[cfg(feature = "count-allocations")]
#[derive(Debug)]
struct Allocations;

#[cfg(feature = "count-allocations")]
impl prometheus_client::encoding::EncodeMetric for Allocations {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
            &crate::allocations::count(),
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

/// One route's counters: host calls per request and CPU time; default
/// ones count for nobody (a guest compiled but not served).
#[derive(Clone)]
pub(crate) struct RouteCounters {
    host_calls: Histogram,
    cpu: Counter<f64, AtomicU64>,
}

impl Default for RouteCounters {
    fn default() -> Self {
        RouteCounters {
            host_calls: host_call_histogram(),
            cpu: Counter::default(),
        }
    }
}

impl RouteCounters {
    /// Counts a request that made `calls` calls into the host.
    pub(crate) fn host_calls(&self, calls: u32) {
        self.host_calls.observe(f64::from(calls));
    }

    /// Counts `nanos` nanoseconds of a guest's CPU time.
    pub(crate) fn cpu(&self, nanos: u64) {
        self.cpu.inc_by(nanos as f64 * 1e-9);
    }

    /// The CPU time counted, in seconds.
    #[cfg(test)]
    pub(crate) fn cpu_seconds(&self) -> f64 {
        self.cpu.get()
    }
}

/// One key-value store's counters, by operation and result, and
/// latencies, by operation.
pub(crate) struct KvCounted {
    counters: Vec<Counter>,
    latency: Vec<Histogram>,
    results: usize,
}

impl KvCounted {
    /// Counts the operation at index `op` ending with the result at index
    /// `result`, after `took`.
    pub(crate) fn count(&self, op: usize, result: usize, took: Duration) {
        self.counters[op * self.results + result].inc();
        self.latency[op].observe(took.as_secs_f64());
    }
}

/// Holds one unit of a gauge while something is open.
pub(crate) struct Open(Gauge);

impl Open {
    fn new(gauge: &Gauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}
