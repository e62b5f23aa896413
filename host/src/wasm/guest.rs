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

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::{Instant, Sleep};
use wasmtime::component::Linker;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use super::cache::{Digest, Origin};
use super::cpu::{CpuTime, Meter, metered};
use super::inspect::{self, NotComponent, Wasi};
use super::instance::{
    CpuSpent, FaultOnce, GuestContext, GuestError, GuestState, Metering, RequestBody, classify,
    outcome, within,
};
use super::p3;
use super::reuse::Pool;
use super::websocket::{self, WebsocketHandlerPre};
use crate::config::GuestSource;
use crate::metrics::RouteCounters;
use crate::telemetry;
use tracing::{Span, warn};

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

/// A response whose body the guest may still be writing.
pub type GuestResponse = http::Response<GuestBody>;

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

/// A loaded, linked, pre-instantiated guest component: one version of one
/// route's guest.
pub struct Guest {
    serve: Serve,
    /// The WebSocket export, when the component has one.
    websocket: Option<WebsocketHandlerPre<GuestState>>,
    /// The engine its code was compiled by.
    engine: Engine,
    ctx: Arc<GuestContext>,
    /// Its route's counts: host calls per request, CPU time.
    counters: RouteCounters,
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
            GuestSource::Default => Ok((self.name(), crate::DEFAULT_GUEST.to_vec())),
            GuestSource::Accounts => Ok((self.name(), crate::ACCOUNTS_GUEST.to_vec())),
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
    /// named `name` in errors, whose requests' host calls and CPU time
    /// count in its route's `counters`.
    pub(crate) fn load(
        ctx: &Arc<GuestContext>,
        name: &str,
        bytes: &[u8],
        counters: RouteCounters,
    ) -> Result<Loaded, LoadError> {
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
        super::files::add_to_linker(&mut linker).map_err(invalid)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(invalid)?;
        crate::outbound::add_to_linker(&mut linker).map_err(invalid)?;
        crate::state::keyvalue::add_to_linker(&mut linker, GuestState::kv).map_err(invalid)?;
        wasmtime_wasi_config::add_to_linker(&mut linker, GuestState::config).map_err(invalid)?;
        if wasi == Wasi::P3 {
            wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(invalid)?;
            super::files::add_to_linker_p3(&mut linker).map_err(invalid)?;
            wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(invalid)?;
        }
        let instance_pre = linker.instantiate_pre(&component).map_err(invalid)?;
        let websocket = websocket::find(&component, &instance_pre).map_err(invalid)?;
        let serve = match wasi {
            Wasi::P3 => Serve::P3(p3::Handler::new(
                ServicePre::new(instance_pre).map_err(invalid)?,
                engine.clone(),
                ctx.clone(),
                counters.clone(),
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
                counters,
                digest,
            },
            origin,
            elapsed: started.elapsed(),
        })
    }

    /// Runs `request`, whose id is `id` in the logs, through a fresh
    /// instance (or, with reuse, a free one); a WASIp2 guest's CPU time
    /// counts in `cpu` (a WASIp3 instance's, shared by its requests, in the
    /// route's counter alone).
    ///
    /// Returns once the guest has set its response head; the body streams
    /// from the guest as the caller polls it.
    ///
    /// The run shows as a span under the request's span `trace`, with the
    /// `route` the request took; a wait for an instance as one beside it.
    pub async fn handle(
        &self,
        request: http::Request<RequestBody>,
        id: u64,
        cpu: &Arc<CpuTime>,
        trace: &Span,
        route: &str,
    ) -> Result<GuestResponse, GuestError> {
        let fault = FaultOnce::new(&self.ctx.metrics);
        let result = self.dispatch(request, id, cpu, &fault, trace, route).await;
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

    /// Whether upgrades go to this guest's WebSocket export.
    pub fn has_websocket(&self) -> bool {
        self.websocket.is_some()
    }

    /// Instantiates the guest for a WebSocket session (`id` in the logs)
    /// and asks it to `open`; the session's CPU time counts in `cpu`.
    pub async fn open_websocket(
        &self,
        upgrade: websocket::Upgrade,
        id: u64,
        cpu: &Arc<CpuTime>,
    ) -> Result<websocket::Opened, GuestError> {
        let pre = self.websocket.as_ref().ok_or(GuestError::NoResponse)?;
        let meter = Meter::new(cpu.clone(), &self.counters);
        websocket::open(pre, &self.engine, &self.ctx, upgrade, id, meter).await
    }

    async fn dispatch(
        &self,
        request: http::Request<RequestBody>,
        id: u64,
        cpu: &Arc<CpuTime>,
        fault: &FaultOnce,
        trace: &Span,
        route: &str,
    ) -> Result<GuestResponse, GuestError> {
        let stall = Stall::new(self.ctx.timeout, fault);
        let (pre, pool) = match &self.serve {
            Serve::P2 { pre, pool } => (pre, pool),
            Serve::P3(handler) => {
                let span = telemetry::guest_span(trace, route, &self.digest, Wasi::P3.as_str());
                let answered = handler
                    .handle(request, id, trace, &telemetry::run_context(&span, trace))
                    .await;
                ended(&span, answered.as_ref().err());
                let answered = answered?;
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
        let permit = self.ctx.admit(trace).await?;
        let deadline = Instant::now() + self.ctx.timeout;
        let span = telemetry::guest_span(trace, route, &self.digest, Wasi::P2.as_str());
        // The one deadline of a response head, fresh instance or reused.
        let meter = Meter::new(cpu.clone(), &self.counters);
        let started = within(
            deadline,
            self.start(
                pre,
                pool,
                request,
                id,
                meter,
                fault,
                deadline,
                permit,
                &span,
                &telemetry::run_context(&span, trace),
            ),
        )
        .await;
        ended(&span, started.as_ref().err());
        let (response, run) = started?;
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
    /// Each poll of the instance counts its CPU time in `meter`.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        pre: &ProxyPre<GuestState>,
        pool: &Option<Arc<Instances>>,
        request: http::Request<RequestBody>,
        id: u64,
        meter: Meter,
        fault: &FaultOnce,
        deadline: Instant,
        permit: OwnedSemaphorePermit,
        span: &Span,
        trace: &opentelemetry::Context,
    ) -> Result<(http::Response<HyperOutgoingBody>, Option<RunningGuest>), GuestError> {
        let answered = Arc::new(AtomicBool::new(false));
        let (mut store, proxy, served) = match pool.as_ref().and_then(|pool| pool.take()) {
            Some(idle) => {
                let (mut store, proxy) = idle.instance;
                store
                    .data_mut()
                    .arm(id, deadline, answered.clone(), meter.clone());
                // A whole slice for this request: the ticks while the
                // instance sat idle are no time it ran.
                store.set_epoch_deadline(1);
                (store, Some(proxy), idle.served)
            }
            None => {
                let store = self
                    .ctx
                    .new_store(
                        &self.engine,
                        deadline,
                        answered.clone(),
                        id,
                        meter.clone(),
                        Metering::Polls,
                    )
                    .map_err(GuestError::Setup)?;
                (store, None, 0)
            }
        };
        telemetry::guest_instance(span, served > 0);
        store.data_mut().trace(trace);

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
        let counters = self.counters.clone();
        let pooled = pool.is_some();
        let head_sent = answered.clone();
        // The run's span lasts as long as the run.
        let span = span.clone();
        // The instance runs inside the connection's task, polled with the
        // response's body: no task of its own, and no wake-up across
        // threads for each piece of the body.
        let mut run: RunningGuest = Box::pin(metered(meter, async move {
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
            counters.host_calls(std::mem::take(&mut store.data_mut().host_calls));
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
                    if head_sent.load(Ordering::Relaxed) {
                        telemetry::end_guest_span(&span, outcome(&err), Some(&err));
                    }
                    // Its request's client sees a body cut short.
                    if head_sent.load(Ordering::Relaxed)
                        && let Some(CpuSpent(budget)) = err.downcast_ref::<CpuSpent>()
                    {
                        warn!(id, cause = %GuestError::CpuTime(*budget),
                              "guest stopped after its response head");
                    }
                    Err(err)
                }
            }
        }));

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

/// Records in a run's span whether it answered, or why not.
fn ended(span: &Span, failed: Option<&GuestError>) {
    match failed {
        None => telemetry::end_guest_span(span, "answered", None),
        Some(err) => telemetry::end_guest_span(span, err.outcome(), Some(err)),
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
