//! What every kind of guest instance shares: a WASIp2 request's, a
//! WASIp3 worker's and a WebSocket session's. The context that admits
//! requests and makes stores ([`GuestContext`]), the state a store holds
//! ([`GuestState`]: WASI, the memory cap, the outgoing-request hooks, the
//! CPU meter), the one deadline of every call into a guest ([`within`]),
//! how a running guest gives its thread back (the epoch callback), and
//! how a fault is told and counted ([`GuestError`], [`classify`],
//! [`FaultOnce`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{Instrument, Span};
use wasmtime::component::ResourceTable;
use wasmtime::{
    CallHook, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::cache::CompiledCache;
use super::cpu::Meter;
use super::engine::{self, Engines, SLICE};
use super::files;
use super::inspect;
use super::output::{GuestOutput, Stream};
use crate::config::{Limits, RouteLimits};
use crate::metrics::{Fault, Metrics, Open};
use crate::outbound::{Hooks, Outbound};
use crate::state::keyvalue::{KvCtx, KvView};
use crate::state::{ConfigValues, Granted, Stores};
use crate::telemetry;
use prometheus_client::metrics::counter::Counter;
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

/// A request's body as a guest reads it.
pub type RequestBody = WasiBody;

/// Why a request got no response from the guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The guest trapped (panic, `unreachable`, memory exhausted, ...).
    #[error("guest trapped: {0:#}")]
    Trap(wasmtime::Error),
    /// The guest did not produce a response head in time.
    #[error("guest timed out")]
    Timeout,
    /// The guest ran for its CPU budget.
    #[error(
        "the guest used its CPU time budget of {} ms: raise --guest-cpu-time (or its \
         route's guest-cpu-time) if it needs more",
        .0.as_millis()
    )]
    CpuTime(Duration),
    /// The guest returned without setting a response.
    #[error("guest returned without a response")]
    NoResponse,
    /// The guest answered with a `wasi:http` error code instead of a response.
    #[error("guest answered with error {0}")]
    ErrorCode(String),
    /// The WASIp3 instance serving the request ended (it trapped on
    /// another request, or was dropped at its deadline) before answering.
    #[error("the guest instance ended before answering (its trap is logged as the instance's)")]
    Lost,
    /// The host could not set up the request for the guest.
    #[error("setting up the guest failed: {0:#}")]
    Setup(wasmtime::Error),
    /// Every instance (or WebSocket session slot) stayed taken.
    #[error("every guest instance is busy")]
    Busy,
}

impl GuestError {
    /// How a guest's run ended, in a word or two, for its trace span.
    pub fn outcome(&self) -> &'static str {
        match self {
            GuestError::Trap(err) if err.is::<OutOfMemory>() => "out of memory",
            GuestError::Trap(_) => "trapped",
            GuestError::Timeout => "timed out",
            GuestError::CpuTime(_) => "cpu budget spent",
            GuestError::NoResponse => "no response",
            GuestError::ErrorCode(_) => "error code",
            GuestError::Lost => "instance lost",
            GuestError::Setup(_) => "setup failed",
            GuestError::Busy => "busy",
        }
    }

    /// The guest's own fault in this error, if it was one.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            GuestError::Trap(_) => Some(Fault::Trap),
            GuestError::Timeout => Some(Fault::Timeout),
            GuestError::CpuTime(_) => Some(Fault::CpuTime),
            _ => None,
        }
    }

    /// The status the client gets: 504 for a timeout or a spent CPU
    /// budget, 503 when busy, 500 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            GuestError::Timeout | GuestError::CpuTime(_) => http::StatusCode::GATEWAY_TIMEOUT,
            GuestError::Busy => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What every guest of a server shares, across routes and reloads: the
/// engines, what an instance sees (web root, environment), its deadline,
/// the compiled-component cache, and the instance pool's admission.
pub struct GuestContext {
    pub(super) engines: Arc<Engines>,
    root: PathBuf,
    env: Vec<(String, String)>,
    pub(super) timeout: Duration,
    /// CPU time a request's guest may run for, if limited.
    pub(super) cpu_budget: Option<Duration>,
    /// Time a request waits for a free instance.
    pub(super) queue_timeout: Duration,
    /// Requests one instance serves; 1 for a fresh instance per request.
    pub(super) reuse: usize,
    /// Requests one WASIp3 instance serves at once.
    pub(super) p3_concurrency: usize,
    /// Requests one WASIp3 instance serves in its life.
    pub(super) p3_reuse: usize,
    pub(super) cache: CompiledCache,
    /// Linear memory one instance may grow to.
    pub(super) memory: usize,
    instances: Arc<Semaphore>,
    pub(super) max_instances: usize,
    /// Whether `instances` is a route's own, not the server's.
    own_instances: bool,
    /// Open WebSocket sessions' share of the instance pool.
    websocket_slots: Arc<Semaphore>,
    max_websockets: usize,
    /// Where the guests may send requests, and the host's limits on them.
    outbound: Arc<Outbound>,
    /// Every key-value store, for a route's own grants.
    stores: Arc<Stores>,
    /// The key-value stores the guests may open.
    kv: Arc<Granted>,
    /// What the guests read through `wasi:config/store`.
    config: Arc<WasiConfigVariables>,
    /// The server's metrics.
    pub(crate) metrics: Arc<Metrics>,
}

impl GuestContext {
    /// A context whose instances get `root` preopened read-only at `/`,
    /// `env` as their environment and the `stores` the limits grant; fails
    /// when the authorities of `--outbound-ca` cannot be used.
    pub fn new(
        engines: Arc<Engines>,
        root: PathBuf,
        env: Vec<(String, String)>,
        limits: &Limits,
        cache: CompiledCache,
        stores: Arc<Stores>,
    ) -> Result<Self, crate::tls::TlsError> {
        let metrics = stores.metrics().clone();
        Ok(GuestContext {
            kv: stores.granted(&limits.allow_kv),
            config: Arc::new(config_values(&limits.config_var)),
            stores,
            engines,
            root,
            env,
            timeout: limits.guest_timeout,
            cpu_budget: limits.guest_cpu_time,
            queue_timeout: limits.queue_timeout,
            reuse: limits.reuse.max(1),
            p3_concurrency: limits.p3_concurrency.max(1),
            p3_reuse: limits.p3_reuse.max(1),
            cache,
            memory: limits.guest_memory,
            instances: Arc::new(Semaphore::new(limits.max_instances as usize)),
            max_instances: limits.max_instances as usize,
            own_instances: false,
            websocket_slots: Arc::new(Semaphore::new(limits.max_websockets as usize)),
            max_websockets: limits.max_websockets as usize,
            outbound: Arc::new(Outbound::new(
                limits.allow_outbound.clone(),
                limits,
                metrics.clone(),
            )?),
            metrics,
        })
    }

    /// The context of a route with its own `limits`: the rest is shared.
    pub fn for_route(&self, limits: &RouteLimits) -> GuestContext {
        let (instances, max_instances, own_instances) = match limits.max_instances {
            Some(max) => (Arc::new(Semaphore::new(max as usize)), max as usize, true),
            None => (self.instances.clone(), self.max_instances, false),
        };
        GuestContext {
            engines: self.engines.clone(),
            root: self.root.clone(),
            env: self.env.clone(),
            timeout: limits.guest_timeout.unwrap_or(self.timeout),
            cpu_budget: limits.guest_cpu_time.unwrap_or(self.cpu_budget),
            queue_timeout: self.queue_timeout,
            reuse: limits.reuse.unwrap_or(self.reuse).max(1),
            p3_concurrency: limits.p3_concurrency.unwrap_or(self.p3_concurrency).max(1),
            p3_reuse: limits.p3_reuse.unwrap_or(self.p3_reuse).max(1),
            cache: self.cache.clone(),
            memory: limits.guest_memory.unwrap_or(self.memory),
            instances,
            max_instances,
            own_instances,
            websocket_slots: self.websocket_slots.clone(),
            max_websockets: self.max_websockets,
            outbound: match &limits.allow_outbound {
                Some(allow) => Arc::new(self.outbound.with_list(allow.clone())),
                None => self.outbound.clone(),
            },
            kv: match &limits.allow_kv {
                Some(grants) => self.stores.granted(grants),
                None => self.kv.clone(),
            },
            config: match &limits.config_var {
                Some(values) => Arc::new(config_values(values)),
                None => self.config.clone(),
            },
            stores: self.stores.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Waits, up to the queue timeout, for one of the instances this
    /// context may run at once: the one admission of every request. A
    /// wait shows as a span under `trace`.
    pub(super) async fn admit(&self, trace: &Span) -> Result<OwnedSemaphorePermit, GuestError> {
        admit(&self.instances, self.queue_timeout, trace).await
    }

    /// One of the WebSocket sessions this context may hold open, at once
    /// or not at all: a session holds its instance for as long as the
    /// client stays, so an upgrade past the limit gets 503 rather than a
    /// wait.
    pub(super) fn admit_session(&self) -> Result<OwnedSemaphorePermit, GuestError> {
        self.websocket_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| GuestError::Busy)
    }

    /// Instances running a request now, from instantiation until the
    /// response body is done or abandoned.
    pub fn requests_running(&self) -> usize {
        self.max_instances - self.instances.available_permits()
    }

    /// Whether this context admits requests through a route's own share
    /// of instances rather than the server's.
    pub fn has_own_instances(&self) -> bool {
        self.own_instances
    }

    /// WebSocket sessions open now.
    pub fn websocket_sessions(&self) -> usize {
        self.max_websockets - self.websocket_slots.available_permits()
    }
}

/// One of `permits`, at once or within `queue_timeout`; a wait for it
/// shows as a span under `trace`.
pub(super) async fn admit(
    permits: &Arc<Semaphore>,
    queue_timeout: Duration,
    trace: &Span,
) -> Result<OwnedSemaphorePermit, GuestError> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Ok(permit);
    }
    let queued = Instant::now() + queue_timeout;
    let wait = tokio::time::timeout_at(queued, permits.clone().acquire_owned());
    let waited = if trace.is_disabled() {
        wait.await
    } else {
        wait.instrument(telemetry::wait_span(trace)).await
    };
    waited
        .map_err(|_| GuestError::Busy)?
        .map_err(|_| GuestError::Busy)
}

/// How a store's CPU time is read (see `cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metering {
    /// Around each poll of the host's future that runs the guest: a
    /// WASIp2 request, a WebSocket call. The request's own budget applies.
    Polls,
    /// From the guest's entries into wasm and the host: a WASIp3 instance,
    /// polled in a task of wasmtime-wasi-http's.
    Hooks,
}

impl GuestContext {
    /// A store for one instance: the guest's WASI context, an epoch
    /// callback that gives the thread back once the guest has run for a
    /// [`SLICE`] (so that its event loop serves its sockets and timers
    /// before the guest runs on) and interrupts the guest once it is past
    /// its deadline, unless `lifted` is set by then, or past its CPU
    /// budget, and a count of the guest's calls into the host. Its output
    /// is logged under the request id `id`; its CPU time counts in
    /// `meter`, read as `metering` says.
    pub(crate) fn new_store(
        &self,
        engine: &Engine,
        deadline: Instant,
        lifted: Arc<AtomicBool>,
        id: u64,
        meter: Meter,
        metering: Metering,
    ) -> wasmtime::Result<Store<GuestState>> {
        let state = GuestState::new(self, deadline, lifted, id, meter, metering)?;
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut store| {
            let state = store.data_mut();
            if !state.lifted.load(Ordering::Relaxed) && Instant::now() >= state.deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            if let Some(budget) = state.cpu_budget
                && state.cpu.used().saturating_sub(state.cpu_from) >= budget
            {
                state.cpu_spent = Some(budget);
                return Ok(UpdateDeadline::Interrupt);
            }
            // A guest that has run for less than a slice in this go (most
            // requests, whole) runs on; one that has run for more gives
            // its loop back.
            if state.cpu.this_run().is_some_and(|run| run < SLICE) {
                return Ok(UpdateDeadline::Continue(1));
            }
            engine::ran_long();
            Ok(UpdateDeadline::YieldCustom(1, state.give_back()))
        });
        store.call_hook(|mut store, hook| {
            let state = store.data_mut();
            if let CallHook::CallingHost = hook {
                state.host_calls += 1;
            }
            if state.metering == Metering::Hooks {
                state.metered(hook);
            }
            Ok(())
        });
        Ok(store)
    }
}

/// A trap that followed a refused `memory.grow`: the guest ran out of
/// memory; says what to raise.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct OutOfMemory(String);

/// The epoch callback stopped the guest at its CPU budget.
#[derive(Debug, thiserror::Error)]
#[error("the guest used its CPU time budget of {} ms", .0.as_millis())]
pub(crate) struct CpuSpent(pub(crate) Duration);

/// A trap raised by the epoch deadline is a timeout, or a spent CPU
/// budget when the store says so ([`GuestState::explain`]); anything else
/// a fault.
pub(crate) fn classify(err: wasmtime::Error) -> GuestError {
    if let Some(CpuSpent(budget)) = err.downcast_ref::<CpuSpent>() {
        GuestError::CpuTime(*budget)
    } else if is_interrupt(&err) {
        GuestError::Timeout
    } else {
        GuestError::Trap(err)
    }
}

/// How a guest's run that ended in `err` (as [`GuestState::explain`]
/// gives it) ended, as [`GuestError::outcome`] says it.
pub(crate) fn outcome(err: &wasmtime::Error) -> &'static str {
    if err.is::<CpuSpent>() {
        "cpu budget spent"
    } else if is_interrupt(err) {
        "timed out"
    } else if err.is::<OutOfMemory>() {
        "out of memory"
    } else {
        "trapped"
    }
}

impl From<wasmtime::Error> for GuestError {
    fn from(err: wasmtime::Error) -> GuestError {
        classify(err)
    }
}

/// Runs `work`, a call into a guest (a request's head, a WebSocket
/// session's call), until `deadline`: the one place a guest's deadline is
/// kept while the host waits on it. The epoch callback interrupts a guest
/// that computes past its deadline; this stops waiting on one that is
/// blocked past it.
pub(crate) async fn within<T, E: Into<GuestError>>(
    deadline: Instant,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, GuestError> {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(done)) => Ok(done),
        // Work that fails at its deadline failed because of it: a reused
        // instance is ended at the same deadline, and its request may hear
        // of that first, as a lost instance.
        Ok(Err(_)) if Instant::now() >= deadline => Err(GuestError::Timeout),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(GuestError::Timeout),
    }
}

fn is_interrupt(err: &wasmtime::Error) -> bool {
    matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt))
}

/// Counts a request's guest fault in the metrics once, whether the host
/// sees it first (a deadline) or the guest's task does (a trap, maybe
/// after the response head was sent).
#[derive(Clone)]
pub(crate) struct FaultOnce {
    reported: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl FaultOnce {
    pub(crate) fn new(metrics: &Arc<Metrics>) -> Self {
        FaultOnce {
            reported: Arc::new(AtomicBool::new(false)),
            metrics: metrics.clone(),
        }
    }

    /// Counts `err` unless a fault of this request was counted already.
    pub(crate) fn report(&self, err: &GuestError) {
        if let Some(fault) = err.fault()
            && !self.reported.swap(true, Ordering::Relaxed)
        {
            self.metrics.guest_fault(fault);
        }
    }

    /// Counts an error the guest's own call ended with.
    pub(super) fn report_trap(&self, err: &wasmtime::Error) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            self.metrics.guest_fault(if err.is::<CpuSpent>() {
                Fault::CpuTime
            } else if is_interrupt(err) {
                Fault::Timeout
            } else {
                Fault::Trap
            });
        }
    }
}

/// What a guest's store holds for one request or WebSocket session.
pub(crate) struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    /// When the guest is interrupted: the response head's deadline for a
    /// request, the current call's for a WebSocket session.
    pub(crate) deadline: Instant,
    /// Set by the host once a request's head arrived; the deadline then no
    /// longer applies.
    lifted: Arc<AtomicBool>,
    /// The route's memory cap (the pool's may be higher, for other routes).
    limits: MemoryCap,
    /// The id of the request (or WebSocket session) the instance serves,
    /// which its output is logged with.
    pub(crate) request: Arc<AtomicU64>,
    /// What the host does for the guest's outgoing requests.
    hooks: Hooks,
    /// The key-value stores the guest may open.
    kv: KvCtx,
    /// What the guest reads through `wasi:config/store`.
    config: Arc<WasiConfigVariables>,
    /// Calls into the host since the request began.
    pub(crate) host_calls: u32,
    /// The guest's CPU time: its request's, or its WASIp3 instance's.
    pub(crate) cpu: Meter,
    /// How `cpu` is read.
    metering: Metering,
    /// Activations of the guest's wasm under way, read with `Hooks`.
    in_wasm: u32,
    /// CPU time a request may run for: the route's budget for a request's
    /// or a WebSocket session's store; `None` for a WASIp3 instance, whose
    /// requests are held to it by the worker.
    cpu_budget: Option<Duration>,
    /// `cpu`'s time when the budget's count began: at the request's
    /// start, or at a WebSocket call's.
    cpu_from: Duration,
    /// The budget the guest was stopped at, once it was.
    pub(crate) cpu_spent: Option<Duration>,
    /// Counts opens the host refuses (see `files`).
    pub(super) refused_opens: Counter,
    /// Counts the instance as live while its store exists.
    _live: Open,
}

impl GuestState {
    /// The state of an instance of `ctx` serving request `id`.
    fn new(
        ctx: &GuestContext,
        deadline: Instant,
        lifted: Arc<AtomicBool>,
        id: u64,
        cpu: Meter,
        metering: Metering,
    ) -> wasmtime::Result<Self> {
        let request = Arc::new(AtomicU64::new(id));
        let mut wasi = WasiCtx::builder();
        wasi.stdout(GuestOutput::new(Stream::Stdout, request.clone()))
            .stderr(GuestOutput::new(Stream::Stderr, request.clone()))
            .envs(&ctx.env)
            // File operations run on the event loop's thread instead of a
            // hop to tokio's blocking pool and back: a web root is read from
            // the page cache in microseconds, and the hop (two thread
            // wake-ups per open, stat and read) costs more than the work.
            // What could block, a FIFO or a device, is never opened
            // (`files`).
            .allow_blocking_current_thread(files::ON_THE_GUESTS_THREAD)
            .preopened_dir(&ctx.root, "/", FsPerms::ReadOnly)?;
        Ok(GuestState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            deadline,
            lifted,
            limits: MemoryCap::new(ctx.memory),
            hooks: ctx.outbound.hooks(request.clone()),
            kv: KvCtx::new(ctx.kv.clone(), request.clone()),
            config: ctx.config.clone(),
            request,
            host_calls: 0,
            cpu,
            metering,
            in_wasm: 0,
            cpu_budget: ctx.cpu_budget.filter(|_| metering == Metering::Polls),
            cpu_from: Duration::ZERO,
            cpu_spent: None,
            refused_opens: ctx.metrics.refused_opens(),
            _live: ctx.metrics.instance(),
        })
    }

    /// What the epoch callback's yield awaits: tokio's `yield_now`, which
    /// wakes the guest's task only after its event loop has looked at its
    /// sockets and timers, so that a guest computing for long takes one
    /// slice at a time. A store metered by hooks stops its clock for the
    /// wait and starts it again as the guest resumes.
    fn give_back(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        if self.metering == Metering::Polls {
            return Box::pin(tokio::task::yield_now());
        }
        self.cpu.stop();
        let cpu = self.cpu.clone();
        Box::pin(async move {
            tokio::task::yield_now().await;
            cpu.start();
        })
    }

    /// Reads the CPU clock of a store metered by hooks at `hook`: started
    /// at the first sign of the guest running, stopped when its last wasm
    /// activation returns (its task's poll may go on with other work).
    fn metered(&mut self, hook: CallHook) {
        match hook {
            CallHook::CallingWasm => self.in_wasm += 1,
            CallHook::ReturningFromWasm => {
                self.in_wasm = self.in_wasm.saturating_sub(1);
                if self.in_wasm == 0 {
                    self.cpu.stop();
                }
                return;
            }
            CallHook::CallingHost | CallHook::ReturningFromHost => {}
        }
        if !self.cpu.is_running() {
            self.cpu.start();
        }
    }

    /// The view the key-value bindings call into.
    pub(super) fn kv(&mut self) -> KvView<'_> {
        KvView::new(&self.kv, &mut self.table)
    }

    /// The view the `wasi:config` bindings call into.
    pub(super) fn config(&mut self) -> WasiConfig<'_> {
        WasiConfig::new(&self.config)
    }
}

/// The values of `--config-var` as `wasi:config` serves them; a key given
/// twice has its last value.
fn config_values(values: &ConfigValues) -> WasiConfigVariables {
    values.0.iter().cloned().collect()
}

impl GuestState {
    /// Readies a reused instance's state for request `id`: its output is
    /// logged with that id, it is interrupted past `deadline` until
    /// `lifted` is set, and its CPU time counts in `cpu`.
    pub(super) fn arm(&mut self, id: u64, deadline: Instant, lifted: Arc<AtomicBool>, cpu: Meter) {
        self.request.store(id, Ordering::Relaxed);
        self.deadline = deadline;
        self.lifted = lifted;
        self.cpu = cpu;
        self.cpu_from = Duration::ZERO;
        self.cpu_spent = None;
    }

    /// Opens the spans of the guest's outgoing requests and key-value
    /// calls under `cx`: its run for the request it serves now.
    pub(crate) fn trace(&mut self, cx: &opentelemetry::Context) {
        self.hooks.trace(cx);
        self.kv.trace(cx);
    }

    /// Begins a WebSocket call: the CPU budget counts from here, so each
    /// message is held to it as a request is.
    pub(super) fn begin_call(&mut self) {
        self.cpu_from = self.cpu.used();
    }
}

impl GuestState {
    /// `err`, a trap of this instance, with what to do about it when the
    /// guest ran out of memory before it: a refused `memory.grow` shows
    /// to the guest as a failed allocation, and most guests trap on that;
    /// or as a spent CPU budget when that is what stopped it.
    pub(crate) fn explain(&self, err: wasmtime::Error) -> wasmtime::Error {
        if let Some(budget) = self.cpu_spent
            && is_interrupt(&err)
        {
            return err.context(CpuSpent(budget));
        }
        match self.limits.refused {
            Some(desired) => err.context(OutOfMemory(format!(
                "the guest ran out of memory: it asked for {} MiB of linear memory, past \
                 --guest-memory {} MiB; raise --guest-memory (or its route's guest-memory)",
                inspect::mib_to_hold(desired as u64),
                self.limits.cap >> 20
            ))),
            None => err,
        }
    }
}

/// A store's memory cap, which remembers the last growth it refused.
pub(crate) struct MemoryCap {
    limits: StoreLimits,
    /// Bytes of linear memory one instance may have.
    cap: usize,
    /// The size a refused `memory.grow` asked for.
    refused: Option<usize>,
}

impl MemoryCap {
    fn new(cap: usize) -> MemoryCap {
        MemoryCap {
            limits: StoreLimitsBuilder::new().memory_size(cap).build(),
            cap,
            refused: None,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.refused = Some(desired);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}
