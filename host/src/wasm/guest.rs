//! Loading a guest component and running one request through it.
//!
//! Every request is admitted (`GuestContext::admit`: one of the
//! instances the route may run at once, within the queue timeout), then
//! gets a fresh instance from the pre-instantiated component (pooling
//! allocator: a slot reuse, not an allocation) or, with reuse, an idle one
//! from its version's pool, with the web root preopened read-only at `/`.
//! The guest has [`Limits::guest_timeout`] to produce its response head
//! (`within`, the one deadline of every call into a guest) and then
//! each piece of its body ([`GuestBody`]). Faults are mapped to a
//! [`GuestError`] for that request only.
//!
//! That is how a WASIp2 guest is served. A WASIp3 guest's instances each
//! serve several requests at once, in tasks of their own (`p3`); their
//! responses come back as the same [`GuestBody`], with the same timeout
//! for each piece.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::{Instant, Sleep};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{
    Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::cache::{CompiledCache, Digest, Origin};
use super::engine::{Engines, Wasi};
use super::inspect::{self, NotComponent};
use super::output::{GuestOutput, Stream};
use super::p3;
use super::reuse::Pool;
use super::websocket::{self, WebsocketHandlerPre};
use crate::config::{GuestSource, Limits, RouteLimits};
use crate::metrics::{Fault, Metrics, Open};
use crate::outbound::{Hooks, Outbound};
use tracing::warn;

/// A guest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component file could not be read.
    #[error("cannot read guest component {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a component at all.
    #[error("invalid guest component {name}: {why}")]
    NotComponent {
        /// The file.
        name: String,
        /// What it is instead.
        why: NotComponent,
    },
    /// A module of the component needs more linear memory at start than
    /// the route's cap allows.
    #[error(
        "guest component {name} needs {needs_mib} MiB of linear memory at start, more than \
         --guest-memory {cap_mib} MiB allows: start with --guest-memory {needs_mib} or more \
         (for one route, guest-memory={needs_mib} after its file)",
        needs_mib = inspect::mib_to_hold(*.needs),
        cap_mib = .cap >> 20
    )]
    Memory {
        /// The file, or "default guest".
        name: String,
        /// Bytes its largest memory has at start.
        needs: u64,
        /// The cap, in bytes.
        cap: usize,
    },
    /// The bytes are not a valid component, or it does not export
    /// `wasi:http/incoming-handler`, or it imports what the host lacks.
    #[error("invalid guest component {name}: {source:#}")]
    Invalid {
        /// The file, or "default guest".
        name: String,
        /// What wasmtime said.
        source: wasmtime::Error,
    },
}

/// Why a request got no response from the guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The guest trapped (panic, `unreachable`, memory exhausted, ...).
    #[error("guest trapped: {0:#}")]
    Trap(wasmtime::Error),
    /// The guest did not produce a response head in time.
    #[error("guest timed out")]
    Timeout,
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
    /// The guest's own fault in this error, if it was one.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            GuestError::Trap(_) => Some(Fault::Trap),
            GuestError::Timeout => Some(Fault::Timeout),
            _ => None,
        }
    }

    /// The status the client gets: 504 for a timeout, 503 when busy, 500
    /// otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            GuestError::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            GuestError::Busy => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A response whose body the guest may still be writing.
pub type GuestResponse = http::Response<GuestBody>;

/// A request's body as a guest reads it.
pub type RequestBody = WasiBody;

/// Why a guest's response body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The guest ended it with an error, or trapped while writing it.
    #[error("guest body failed: {0:?}")]
    Guest(wasmtime_wasi_http::Error),
    /// The guest wrote nothing for the guest timeout.
    #[error("guest stalled while writing its body")]
    Stalled,
}

/// What every guest of a server shares, across routes and reloads: the
/// engines, what an instance sees (web root, environment), its deadline,
/// the compiled-component cache, and the instance pool's admission.
pub struct GuestContext {
    engines: Arc<Engines>,
    root: PathBuf,
    env: Vec<(String, String)>,
    pub(super) timeout: Duration,
    /// Time a request waits for a free instance.
    pub(super) queue_timeout: Duration,
    /// Requests one instance serves; 1 for a fresh instance per request.
    reuse: usize,
    /// Requests one WASIp3 instance serves at once.
    pub(super) p3_concurrency: usize,
    /// Requests one WASIp3 instance serves in its life.
    pub(super) p3_reuse: usize,
    cache: CompiledCache,
    /// Linear memory one instance may grow to.
    memory: usize,
    instances: Arc<Semaphore>,
    pub(super) max_instances: usize,
    /// Whether `instances` is a route's own, not the server's.
    own_instances: bool,
    /// Open WebSocket sessions' share of the instance pool.
    websocket_slots: Arc<Semaphore>,
    max_websockets: usize,
    /// Where the guests may send requests, and the host's limits on them.
    outbound: Arc<Outbound>,
    /// The server's metrics.
    pub(crate) metrics: Arc<Metrics>,
}

impl GuestContext {
    /// A context whose instances get `root` preopened read-only at `/`
    /// and `env` as their environment.
    pub fn new(
        engines: Arc<Engines>,
        root: PathBuf,
        env: Vec<(String, String)>,
        limits: &Limits,
        cache: CompiledCache,
        metrics: Arc<Metrics>,
    ) -> Self {
        GuestContext {
            engines,
            root,
            env,
            timeout: limits.guest_timeout,
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
            )),
            metrics,
        }
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
            metrics: self.metrics.clone(),
        }
    }

    /// Waits, up to the queue timeout, for one of the instances this
    /// context may run at once: the one admission of every request.
    pub(super) async fn admit(&self) -> Result<OwnedSemaphorePermit, GuestError> {
        let queued = Instant::now() + self.queue_timeout;
        tokio::time::timeout_at(queued, self.instances.clone().acquire_owned())
            .await
            .map_err(|_| GuestError::Busy)?
            .map_err(|_| GuestError::Busy)
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

/// A loaded, linked, pre-instantiated guest component: one version of one
/// route's guest.
pub struct Guest {
    serve: Serve,
    /// The WebSocket export, when the component has one.
    pub(super) websocket: Option<WebsocketHandlerPre<GuestState>>,
    /// The engine its code was compiled by.
    pub(super) engine: Engine,
    pub(super) ctx: Arc<GuestContext>,
    /// The component's SHA-256.
    pub digest: Digest,
}

/// How a guest's requests are served, by the `wasi:http` it exports.
enum Serve {
    /// One request at a time per instance, in the request's own task.
    P2 {
        pre: ProxyPre<GuestState>,
        /// The idle instances of this version, with `--reuse` above 1.
        pool: Option<Arc<Instances>>,
    },
    /// Several requests at once per instance, each instance in a task of
    /// its own.
    P3(p3::Handler),
}

/// A guest just loaded, and how.
pub struct Loaded {
    /// The guest.
    pub guest: Guest,
    /// Whether its code came from the cache.
    pub origin: Origin,
    /// Time taken to compile (or read) and link it.
    pub elapsed: Duration,
}

impl GuestSource {
    /// A name for logs, and the component's bytes.
    pub fn read(&self) -> Result<(String, Vec<u8>), LoadError> {
        match self {
            GuestSource::Default => Ok(("default guest".to_owned(), crate::DEFAULT_GUEST.to_vec())),
            GuestSource::File(path) => Ok((
                path.display().to_string(),
                std::fs::read(path).map_err(|source| LoadError::Read {
                    path: path.clone(),
                    source,
                })?,
            )),
        }
    }
}

impl Guest {
    /// Compiles (or reads from the cache) and links the component `bytes`,
    /// named `name` in errors.
    pub fn load(ctx: &Arc<GuestContext>, name: &str, bytes: &[u8]) -> Result<Loaded, LoadError> {
        let started = std::time::Instant::now();
        let invalid = |source| LoadError::Invalid {
            name: name.to_owned(),
            source,
        };
        inspect::check_component(bytes).map_err(|why| LoadError::NotComponent {
            name: name.to_owned(),
            why,
        })?;
        // Checked before compiling: a compiled component would be refused
        // for it anyway, at its first instance.
        if let Some(needs) = inspect::initial_memory(bytes)
            && needs > ctx.memory as u64
        {
            return Err(LoadError::Memory {
                name: name.to_owned(),
                needs,
                cap: ctx.memory,
            });
        }
        let digest = Digest::of(bytes);
        let wasi = inspect::wasi_export(bytes);
        let engine = ctx.engines.get(wasi).map_err(invalid)?;
        let (component, origin) = ctx.cache.load(&engine, bytes, &digest).map_err(invalid)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(invalid)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(invalid)?;
        if wasi == Wasi::P3 {
            wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(invalid)?;
            wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(invalid)?;
        }
        let instance_pre = linker.instantiate_pre(&component).map_err(invalid)?;
        let websocket = websocket::find(&component, &instance_pre).map_err(invalid)?;
        let serve = match wasi {
            Wasi::P3 => Serve::P3(p3::Handler::new(
                ServicePre::new(instance_pre).map_err(invalid)?,
                engine.clone(),
                ctx.clone(),
            )),
            Wasi::P2 => Serve::P2 {
                pre: ProxyPre::new(instance_pre).map_err(invalid)?,
                pool: (ctx.reuse > 1).then(|| Pool::new(ctx.reuse)),
            },
        };
        Ok(Loaded {
            guest: Guest {
                serve,
                websocket,
                engine,
                ctx: ctx.clone(),
                digest,
            },
            origin,
            elapsed: started.elapsed(),
        })
    }

    /// Runs `request`, whose id is `id` in the logs, through a fresh
    /// instance (or, with reuse, a free one).
    ///
    /// Returns once the guest has set its response head; the body streams
    /// from the guest as the caller polls it.
    pub async fn handle(
        &self,
        request: http::Request<RequestBody>,
        id: u64,
    ) -> Result<GuestResponse, GuestError> {
        let fault = FaultOnce::new(&self.ctx.metrics);
        let result = self.dispatch(request, id, &fault).await;
        if let Err(err) = &result {
            fault.report(err);
        }
        result
    }

    /// Which `wasi:http` this guest exports.
    pub fn wasi(&self) -> Wasi {
        match self.serve {
            Serve::P2 { .. } => Wasi::P2,
            Serve::P3(_) => Wasi::P3,
        }
    }

    /// The engine its code was compiled by.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    async fn dispatch(
        &self,
        request: http::Request<RequestBody>,
        id: u64,
        fault: &FaultOnce,
    ) -> Result<GuestResponse, GuestError> {
        let stall = Stall::new(self.ctx.timeout, fault);
        let (pre, pool) = match &self.serve {
            Serve::P2 { pre, pool } => (pre, pool),
            Serve::P3(handler) => {
                let answered = handler.handle(request, id).await?;
                return Ok(answered.response.map(|body| GuestBody {
                    body,
                    run: None,
                    stall,
                    pool: None,
                    held: Some(answered.held),
                    ended: false,
                }));
            }
        };
        let permit = self.ctx.admit().await?;
        let deadline = Instant::now() + self.ctx.timeout;
        // The one deadline of a response head, fresh instance or reused.
        let (response, run) = within(
            deadline,
            self.start(pre, pool, request, id, fault, deadline, permit),
        )
        .await?;
        Ok(response.map(|body| GuestBody {
            body,
            run,
            stall,
            pool: pool.clone(),
            held: None,
            ended: false,
        }))
    }

    /// Runs `request` in an instance, a fresh one or one from the pool,
    /// until the guest sets its response head; the instance, if still
    /// running, comes back with the response to be polled with its body.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        pre: &ProxyPre<GuestState>,
        pool: &Option<Arc<Instances>>,
        request: http::Request<RequestBody>,
        id: u64,
        fault: &FaultOnce,
        deadline: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Result<(http::Response<HyperOutgoingBody>, Option<RunningGuest>), GuestError> {
        let answered = Arc::new(AtomicBool::new(false));
        let (mut store, proxy, served) = match pool.as_ref().and_then(|pool| pool.take()) {
            Some(idle) => {
                let (mut store, proxy) = idle.instance;
                store.data_mut().arm(id, deadline, answered.clone());
                (store, Some(proxy), idle.served)
            }
            None => {
                let store = self
                    .ctx
                    .new_store(&self.engine, deadline, answered.clone(), id)
                    .map_err(GuestError::Setup)?;
                (store, None, 0)
            }
        };

        let (sender, mut receiver) = oneshot::channel();
        let scheme = match request.uri().scheme() {
            Some(scheme) if *scheme == http::uri::Scheme::HTTPS => Scheme::Https,
            _ => Scheme::Http,
        };
        let setup = |store: &mut Store<GuestState>| {
            let mut http = store.data_mut().http();
            let request = http.new_incoming_request(scheme, request)?;
            let outparam = http.new_response_outparam(sender)?;
            wasmtime::Result::Ok((request, outparam))
        };
        let (request, outparam) = setup(&mut store).map_err(GuestError::Setup)?;
        let pre = pre.clone();
        let fault = fault.clone();
        let pooled = pool.is_some();
        // The instance runs inside the connection's task, polled with the
        // response's body: no task of its own, and no wake-up across
        // threads for each piece of the body.
        let mut run: RunningGuest = Box::pin(async move {
            let result = async {
                let proxy = match proxy {
                    Some(proxy) => proxy,
                    None => pre.instantiate_async(&mut store).await?,
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, outparam)
                    .await
                    .map(|()| proxy)
            }
            .await;
            match result {
                Ok(proxy) => Ok(pooled.then(|| Finished {
                    store,
                    proxy,
                    served: served + 1,
                    _permit: permit,
                })),
                // A fault after the response head has no other witness.
                Err(err) => {
                    let err = store.data().explain(err);
                    fault.report_trap(&err);
                    Err(err)
                }
            }
        });

        let first = tokio::select! {
            biased;
            head = &mut receiver => Ok(head),
            done = &mut run => Err(done),
        };
        let (head, run) = match first {
            Ok(Ok(head)) => (head, Some(run)),
            // The outparam was dropped unset: the guest is returning or
            // trapping.
            Ok(Err(_)) => return Err(self.unanswered(pool, run.await, served)),
            // The guest returned (or trapped); it may have set its response
            // first.
            Err(done) => match receiver.try_recv() {
                Ok(head) => {
                    // A fault after the head was reported by the run, and
                    // shows as a body cut short.
                    if let Ok(finished) = done {
                        settle(pool.as_deref(), finished, head.is_ok());
                    }
                    (head, None)
                }
                Err(_) => return Err(self.unanswered(pool, done, served)),
            },
        };
        match head {
            Ok(response) => {
                answered.store(true, Ordering::Relaxed);
                if let (Some(pool), 1..) = (pool, served) {
                    pool.answered_again();
                }
                Ok((response, run))
            }
            Err(code) => Err(GuestError::ErrorCode(format!("{code:?}"))),
        }
    }
}

impl Guest {
    /// Why an instance that had served `served` requests left this one
    /// unanswered; a guest that cannot answer twice on one instance stops
    /// being reused.
    fn unanswered<T>(
        &self,
        pool: &Option<Arc<Instances>>,
        done: wasmtime::Result<T>,
        served: usize,
    ) -> GuestError {
        let err = unanswered(done);
        if let (GuestError::NoResponse, 1.., Some(pool)) = (&err, served, pool)
            && pool.stop_reuse()
        {
            warn!(
                digest = %self.digest,
                "a reused instance returned without a response, and none has answered a \
                 second request: this guest cannot serve two requests on one instance (as \
                 componentize-js fetch-event guests cannot), so each request gets a fresh \
                 instance from now on; give its route reuse=1 (or --reuse 1)"
            );
        }
        err
    }
}

/// Gives `finished` back to `pool` if it answered its request; its
/// admission ends after that, so a request admitted next can have it.
fn settle(pool: Option<&Instances>, finished: Option<Finished>, answered: bool) {
    if let (Some(pool), Some(finished), true) = (pool, finished, answered) {
        pool.give_back((finished.store, finished.proxy), finished.served);
    }
}

/// A pool of idle instances: each a store and its instance's bindings.
type Instances = Pool<(Store<GuestState>, Proxy)>;

/// A reused instance whose call returned, the requests it has served, and
/// its request's admission.
struct Finished {
    store: Store<GuestState>,
    proxy: Proxy,
    served: usize,
    _permit: OwnedSemaphorePermit,
}

/// Why a guest whose call ended with `done` left its request unanswered.
fn unanswered<T>(done: wasmtime::Result<T>) -> GuestError {
    match done {
        Ok(_) => GuestError::NoResponse,
        Err(err) => classify(err),
    }
}

impl GuestContext {
    /// A store for one instance: the guest's WASI context, and an epoch
    /// callback that yields every tick and interrupts the guest once it is
    /// past its deadline, unless `lifted` is set by then. Its output is
    /// logged under the request id `id`.
    pub(crate) fn new_store(
        &self,
        engine: &Engine,
        deadline: Instant,
        lifted: Arc<AtomicBool>,
        id: u64,
    ) -> wasmtime::Result<Store<GuestState>> {
        let live = self.metrics.instance();
        let request = Arc::new(AtomicU64::new(id));
        let hooks = self.outbound.hooks(request.clone());
        let mut state = GuestState::new(
            &self.root, &self.env, deadline, lifted, request, hooks, live,
        )?;
        state.limits = MemoryCap::new(self.memory);
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            let state = store.data();
            if !state.lifted.load(Ordering::Relaxed) && Instant::now() >= state.deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok(store)
    }
}

/// A trap raised by the epoch deadline is a timeout; anything else a fault.
pub(crate) fn classify(err: wasmtime::Error) -> GuestError {
    if is_interrupt(&err) {
        GuestError::Timeout
    } else {
        GuestError::Trap(err)
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
            self.metrics.guest_fault(if is_interrupt(err) {
                Fault::Timeout
            } else {
                Fault::Trap
            });
        }
    }
}

/// An instance handling one request, until its call returns; then a
/// reused instance comes back to be given to the pool.
type RunningGuest = Pin<Box<dyn Future<Output = wasmtime::Result<Option<Finished>>> + Send>>;

/// The body of a guest response; dropping it stops the guest, unless
/// the body has ended and only the guest's return is left.
pub struct GuestBody {
    body: HyperOutgoingBody,
    /// The instance still running, polled with the body; `None` once its
    /// call has returned.
    run: Option<RunningGuest>,
    /// The deadline of the piece of body being waited for.
    stall: Stall,
    /// Where a reused instance goes back once its call returns.
    pool: Option<Arc<Instances>>,
    /// A WASIp3 body's hold on its request slot and instance.
    held: Option<p3::Held>,
    /// Whether the body has ended.
    ended: bool,
}

impl GuestBody {
    /// Polls the instance's call, giving a reused instance back to its
    /// pool when it returns.
    fn poll_run(&mut self, cx: &mut Context<'_>) {
        if let Some(run) = &mut self.run
            && let Poll::Ready(done) = run.as_mut().poll(cx)
        {
            self.run = None;
            // A fault it ended with was reported by the run itself, and
            // shows in the body as an end cut short.
            settle(self.pool.as_deref(), done.ok().flatten(), true);
        }
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        // A reused instance whose body has ended is left to return from its
        // call, within its timeout, and then goes back to the pool.
        let (Some(run), Some(pool), true) = (self.run.take(), self.pool.take(), self.ended) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let timeout = self.stall.timeout;
        runtime.spawn(async move {
            if let Ok(Ok(finished)) = tokio::time::timeout(timeout, run).await {
                settle(Some(&pool), finished, true);
            }
        });
    }
}

/// The guest timeout for each piece of a response body: counted from the
/// first time the host asks for a piece the guest has not written yet.
struct Stall {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    fault: FaultOnce,
}

impl Stall {
    fn new(timeout: Duration, fault: &FaultOnce) -> Stall {
        Stall {
            timeout,
            sleep: None,
            fault: fault.clone(),
        }
    }

    /// Ready, with the fault counted, once the guest has written nothing
    /// for its timeout since the host began to wait.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        std::task::ready!(sleep.as_mut().poll(cx));
        self.fault.report(&GuestError::Timeout);
        Poll::Ready(())
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // The guest writes the body as it runs.
        self.poll_run(cx);
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.stall.sleep = None;
                if frame.is_none() {
                    self.ended = true;
                    // A WASIp3 instance's work for this body is done.
                    self.held = None;
                    // Most guests return as they end their body.
                    self.poll_run(cx);
                }
                Poll::Ready(frame.map(|frame| frame.map_err(BodyError::Guest)))
            }
            Poll::Pending => {
                std::task::ready!(self.stall.poll_expired(cx));
                Poll::Ready(Some(Err(BodyError::Stalled)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
    /// Counts the instance as live while its store exists.
    _live: Open,
}

impl GuestState {
    fn new(
        root: &Path,
        env: &[(String, String)],
        deadline: Instant,
        lifted: Arc<AtomicBool>,
        request: Arc<AtomicU64>,
        hooks: Hooks,
        live: Open,
    ) -> wasmtime::Result<Self> {
        let mut wasi = WasiCtx::builder();
        wasi.stdout(GuestOutput::new(Stream::Stdout, request.clone()))
            .stderr(GuestOutput::new(Stream::Stderr, request.clone()))
            .envs(env)
            // File operations run on the worker thread instead of a hop to
            // tokio's blocking pool and back: a web root is read from the
            // page cache in microseconds, and the hop (two thread wake-ups
            // per open, stat and read) cost more than the work.
            .allow_blocking_current_thread(true)
            .preopened_dir(root, "/", FsPerms::ReadOnly)?;
        Ok(GuestState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            deadline,
            lifted,
            limits: MemoryCap::new(usize::MAX),
            request,
            hooks,
            _live: live,
        })
    }
}

impl GuestState {
    /// Readies a reused instance's state for request `id`: its output is
    /// logged with that id, and it is interrupted past `deadline` until
    /// `lifted` is set.
    fn arm(&mut self, id: u64, deadline: Instant, lifted: Arc<AtomicBool>) {
        self.request.store(id, Ordering::Relaxed);
        self.deadline = deadline;
        self.lifted = lifted;
    }
}

impl GuestState {
    /// `err`, a trap of this instance, with what to do about it when the
    /// guest ran out of memory before it: a refused `memory.grow` shows
    /// to the guest as a failed allocation, and most guests trap on that.
    pub(crate) fn explain(&self, err: wasmtime::Error) -> wasmtime::Error {
        match self.limits.refused {
            Some(desired) => err.context(format!(
                "the guest ran out of memory: it asked for {} MiB of linear memory, past \
                 --guest-memory {} MiB; raise --guest-memory (or its route's guest-memory)",
                inspect::mib_to_hold(desired as u64),
                self.limits.cap >> 20
            )),
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
