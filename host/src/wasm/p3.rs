//! WASIp3 guests (`wasi:http/handler@0.3.x`): instances that serve several
//! requests at once, through wasmtime-wasi-http's `ProxyHandler`.
//!
//! Each guest version has one handler on each event loop, made when the
//! loop first serves it, so that a loop's requests share that loop's
//! instances and no request waits on another thread. A request goes to a
//! worker (one
//! instance in its own task, running the component model's event loop)
//! that takes it if the instance has fewer than `p3-concurrency` requests
//! in it, has taken fewer than `p3-reuse` in its life, and is not busy
//! computing (the guest's own backpressure keeps it from taking more, as
//! wasmtime's `poll_ready_for_concurrent_call` says); otherwise the handler
//! starts a worker with a new instance. An instance holds one of the
//! route's instances (`--max-instances`) from its instantiation until it
//! ends, and a request one of the version's request slots (the instances
//! times the concurrency) until its response body ends.
//!
//! Deadlines: a request that has no response head by the guest timeout
//! gets 504, and its instance takes no new requests; its neighbours run
//! on. The instance ends once every request in it has answered or expired
//! and it has nothing left to do, or once it has had no request for the
//! guest timeout while it still computes or blocks (a guest stuck in a
//! loop cannot be stopped on its own: the whole instance is dropped, with
//! whatever requests are still in it). A trap ends the instance: the
//! request that trapped gets 500, and so do the others in it that had no
//! response head yet; a body being streamed is cut short. An instance with
//! no request is dropped after [`IDLE_INSTANCE`].
//!
//! A response body in the host counts as work of its instance: an instance
//! whose guest has answered but still writes a body is not ended for it,
//! however long the body takes to reach a slow client (each piece still
//! has the guest timeout, as for WASIp2).
//!
//! CPU time: an instance's is counted as it runs (see `cpu`), in its
//! route's counter; its requests share it and are not told apart. The
//! route's CPU budget holds an instance with requests in it to that much
//! CPU time since it last took one (whichever request spent it): past it,
//! the instance is dropped as at a deadline, and its requests without a
//! response head get 504 and the budget's log line. It is looked at as
//! the instance's task gives its thread back, which a guest that computes
//! does after each slice.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::{Instant, Sleep};
use wasmtime::component::GuestTaskId;
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, ProxyHandler, ProxyPre,
    ShouldAccept, TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

use super::cpu::{CpuTime, Meter};
use super::instance::{
    GuestContext, GuestError, GuestState, Metering, RequestBody, admit, classify, within,
};
use super::reuse::IDLE_INSTANCE;
use crate::metrics::{Fault, Metrics, RouteCounters};
use tracing::{Span, warn};

/// An event loop's handler of one guest version: the version's
/// [`Handler::id`], whether the version is still alive, and the handler.
type LoopHandler = (u64, Weak<()>, ProxyHandler<Instances>);

thread_local! {
    /// This event loop's handler of each WASIp3 guest version it has
    /// served; a version no longer alive is dropped from it at the next
    /// look-up.
    static LOOP_HANDLERS: RefCell<Vec<LoopHandler>> = const { RefCell::new(Vec::new()) };
}

/// Tells the versions' handlers apart.
static NEXT_HANDLER: AtomicU64 = AtomicU64::new(0);

/// The instances of one WASIp3 guest version.
pub(super) struct Handler {
    /// Its handlers' key on each event loop.
    id: u64,
    /// Dropped with the version, which tells the loops to drop theirs.
    alive: Arc<()>,
    /// What each loop's handler makes its instances with.
    instances: Instances,
    /// Requests in this version's instances, or waiting for one.
    requests: Arc<Semaphore>,
}

/// A WASIp3 response as the handler gives it: the head, and a body that
/// streams from the instance, with what it holds while it does.
pub(super) struct Answered {
    pub(super) response: http::Response<RequestBody>,
    pub(super) held: Held,
}

/// What a WASIp3 response body holds until it ends: its request's slot,
/// and its instance's count of bodies being written.
pub(super) struct Held {
    _request: OwnedSemaphorePermit,
    _body: Option<OpenBody>,
}

impl Handler {
    /// The handler of a guest version whose pre-instance is `pre`,
    /// compiled by `engine`, in `ctx`, counting in its route's `counters`.
    pub(super) fn new(
        pre: ServicePre<GuestState>,
        engine: Engine,
        ctx: Arc<GuestContext>,
        counters: RouteCounters,
    ) -> Self {
        let slots = ctx.max_instances.saturating_mul(ctx.p3_concurrency);
        Handler {
            id: NEXT_HANDLER.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            requests: Arc::new(Semaphore::new(slots.min(Semaphore::MAX_PERMITS))),
            instances: Instances {
                pre,
                engine,
                ctx,
                counters,
            },
        }
    }

    /// This event loop's handler of the version, made on first use.
    fn on_this_loop(&self) -> ProxyHandler<Instances> {
        LOOP_HANDLERS.with(|handlers| {
            let mut handlers = handlers.borrow_mut();
            handlers.retain(|(_, alive, _)| alive.strong_count() > 0);
            if let Some((_, _, handler)) = handlers.iter().find(|(id, _, _)| *id == self.id) {
                return handler.clone();
            }
            let handler = ProxyHandler::new(self.instances.clone());
            handlers.push((self.id, Arc::downgrade(&self.alive), handler.clone()));
            handler
        })
    }

    /// Runs `request` (id `id`) in one of this version's instances, until
    /// its response head; a wait for a slot shows as a span under the
    /// request's span `trace`, and the instance's outgoing requests and
    /// store calls go under `run`.
    pub(super) async fn handle(
        &self,
        request: http::Request<RequestBody>,
        id: u64,
        trace: &Span,
        run: &opentelemetry::Context,
    ) -> Result<Answered, GuestError> {
        let ctx = &self.instances.ctx;
        let slot = admit(&self.requests, ctx.queue_timeout, trace).await?;
        let (body_sender, body) = oneshot::channel();
        // The instance gives up on the request no sooner than this, so a
        // request it drops with its instance at the deadline reads as the
        // timeout it is.
        let deadline = Instant::now() + ctx.timeout;
        let cpu_spent = Arc::new(AtomicBool::new(false));
        let taken = Request {
            id,
            trace: run.clone(),
            body_sender,
            cpu_spent: cpu_spent.clone(),
        };
        let response = within(deadline, async {
            self.on_this_loop()
                .handle(taken, request)
                .await
                .map_err(explain)
        })
        .await;
        let response = match (response, ctx.cpu_budget) {
            // Its instance was dropped at the budget.
            (Err(_), Some(budget)) if cpu_spent.load(Ordering::Relaxed) => {
                return Err(GuestError::CpuTime(budget));
            }
            (response, _) => response?,
        };
        Ok(Answered {
            response,
            held: Held {
                _request: slot,
                // Sent when the instance took the request, which it has.
                _body: body.await.ok(),
            },
        })
    }
}

/// What a request failed with, as a [`GuestError`].
fn explain(err: wasmtime::Error) -> GuestError {
    if err.is::<ExpirationError>() {
        return GuestError::Timeout;
    }
    if err.is::<TrapOrPanicError>() {
        return GuestError::Lost;
    }
    if let Some(failed) = err.downcast_ref::<InstantiationError<Request>>() {
        return match failed.error.downcast_ref::<GuestError>() {
            Some(GuestError::Busy) => GuestError::Busy,
            Some(GuestError::Timeout) => GuestError::Timeout,
            _ => GuestError::Setup(wasmtime::format_err!("{:#}", failed.error)),
        };
    }
    if let Some(code) = err.downcast_ref::<ErrorCode>() {
        return GuestError::ErrorCode(format!("{code:?}"));
    }
    classify(err)
}

/// What the handler passes with a request to the instance that takes it.
struct Request {
    /// The request's id, which the instance's output is logged with.
    id: u64,
    /// The trace context of its run: the instance's outgoing requests
    /// and store calls go under the run of the request it took last.
    trace: opentelemetry::Context,
    /// Where the instance sends its count of open bodies.
    body_sender: oneshot::Sender<OpenBody>,
    /// Set when its instance is dropped at the CPU budget.
    cpu_spent: Arc<AtomicBool>,
}

/// Makes the instances of one guest version.
#[derive(Clone)]
struct Instances {
    pre: ServicePre<GuestState>,
    engine: Engine,
    ctx: Arc<GuestContext>,
    counters: RouteCounters,
}

impl HandlerState for Instances {
    type StoreData = GuestState;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<GuestState, Expiry, Worker>> {
        let ctx = &self.ctx;
        let instance = ctx
            .admit(&Span::none())
            .await
            .map_err(wasmtime::Error::new)?;
        let deadline = Instant::now() + ctx.timeout;
        // The epoch callback only yields: a request's deadline is kept by
        // the worker, and an instance past it is dropped whole.
        let meter = Meter::new(Arc::new(CpuTime::default()), &self.counters);
        let mut store = ctx.new_store(
            &self.engine,
            deadline,
            Arc::new(AtomicBool::new(true)),
            0,
            meter.clone(),
            Metering::Hooks,
        )?;
        let pre = ProxyPre::P3(self.pre.clone());
        let proxy = match tokio::time::timeout_at(deadline, pre.instantiate_async(&mut store)).await
        {
            Ok(proxy) => proxy.map_err(|err| store.data().explain(err))?,
            Err(_) => return Err(wasmtime::Error::new(GuestError::Timeout)),
        };
        let bodies = Arc::new(Bodies::default());
        let expired = Arc::new(AtomicBool::new(false));
        let budget = ctx.cpu_budget.map(|limit| {
            Arc::new(Budget {
                limit,
                spent: AtomicBool::new(false),
                requests: Mutex::new(Vec::new()),
            })
        });
        Ok(Instance {
            store,
            proxy,
            view: GuestState::http,
            expiration: Expiry {
                timeout: ctx.timeout,
                bodies: bodies.clone(),
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                armed: None,
                expired: expired.clone(),
                meter,
                budget: budget.clone(),
                cpu_at_arm: Duration::ZERO,
            },
            state: Worker {
                concurrency: ctx.p3_concurrency,
                lifetime: ctx.p3_reuse,
                timeout: ctx.timeout,
                budget,
                bodies,
                expired,
                metrics: ctx.metrics.clone(),
                _instance: instance,
            },
        })
    }
}

/// One instance's limits, and its admission.
struct Worker {
    /// Requests it may have in it at once.
    concurrency: usize,
    /// Requests it may take in its life.
    lifetime: usize,
    /// Time a request has for its response head.
    timeout: Duration,
    /// The route's CPU budget, if it has one.
    budget: Option<Arc<Budget>>,
    bodies: Arc<Bodies>,
    /// Set when the instance is dropped at a deadline, not for a trap.
    expired: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    _instance: OwnedSemaphorePermit,
}

impl WorkerState for Worker {
    type StoreData = GuestState;
    type RequestData = Request;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.lifetime {
            ShouldAccept::Never
        } else if concurrent >= self.concurrency {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, GuestState>,
        request: Request,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        store
            .data_mut()
            .request
            .store(request.id, Ordering::Relaxed);
        store.data_mut().trace(&request.trace);
        // A request that has gone already closes its body at once.
        let _ = request.body_sender.send(OpenBody::new(&self.bodies));
        if let Some(budget) = &self.budget {
            budget.took(request.cpu_spent);
        }
        Box::pin(tokio::time::sleep(self.timeout))
    }

    fn drop(&self, store: Store<GuestState>, result: wasmtime::Result<()>) {
        store.data().cpu.stop();
        let Err(err) = result else {
            return;
        };
        if self.expired.load(Ordering::Relaxed) {
            // Each request in it was counted, at its deadline or its budget.
            match self.budget.as_ref().and_then(|budget| budget.spent()) {
                Some(limit) => warn!(cause = %GuestError::CpuTime(limit),
                                     "a WASIp3 guest instance was dropped at its CPU budget"),
                None => warn!("a WASIp3 guest instance was dropped at its deadline"),
            }
            return;
        }
        // Its requests without a response head get 500 as `Lost`: the
        // trap is counted here, once.
        self.metrics.guest_fault(Fault::Trap);
        let err = store.data().explain(err);
        warn!(cause = %format!("{err:#}"), "a WASIp3 guest instance trapped");
    }
}

/// An instance's CPU budget, and its requests', which learn that it was
/// spent.
struct Budget {
    /// CPU time the instance may run for since it last took a request.
    limit: Duration,
    /// Set when the instance is dropped at the budget.
    spent: AtomicBool,
    /// The flags of the requests it took, set with `spent`.
    requests: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Budget {
    /// Remembers a request the instance took.
    fn took(&self, flag: Arc<AtomicBool>) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        // An instance takes at most `p3-reuse` requests in its life.
        requests.push(flag);
    }

    /// Tells the instance's requests that it is dropped at the budget.
    fn spend(&self) {
        self.spent.store(true, Ordering::Relaxed);
        for flag in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// The budget, if the instance was dropped at it.
    fn spent(&self) -> Option<Duration> {
        self.spent.load(Ordering::Relaxed).then_some(self.limit)
    }
}

/// The response bodies of one instance's requests that the host has not
/// finished with (and those that have not reached the host yet).
#[derive(Default)]
struct Bodies {
    open: AtomicUsize,
    /// Woken when the last one closes.
    closed: AtomicWaker,
}

/// One of an instance's [`Bodies`], closed when dropped.
pub(super) struct OpenBody(Arc<Bodies>);

impl OpenBody {
    fn new(bodies: &Arc<Bodies>) -> OpenBody {
        bodies.open.fetch_add(1, Ordering::AcqRel);
        OpenBody(bodies.clone())
    }
}

impl Drop for OpenBody {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.wake();
        }
    }
}

/// When an instance is done: idle for [`IDLE_INSTANCE`]; or, with requests
/// in it or work after them, no new request for the guest timeout and no
/// response body of it still being written.
struct Expiry {
    timeout: Duration,
    bodies: Arc<Bodies>,
    sleep: Pin<Box<Sleep>>,
    /// The status and start the sleep was set for.
    armed: Option<(WorkerStatus, std::time::Instant)>,
    /// Set when it ends an instance that still had work.
    expired: Arc<AtomicBool>,
    /// The instance's CPU meter, stopped as its task's poll ends.
    meter: Meter,
    /// The route's CPU budget, if it has one.
    budget: Option<Arc<Budget>>,
    /// The instance's CPU time when the sleep was last set: when it last
    /// took a request, or began its work after them.
    cpu_at_arm: Duration,
}

impl WorkerExpiration for Expiry {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: std::time::Instant,
    ) -> Poll<()> {
        let me = &mut *self;
        // Polled as the worker's poll ends with the instance waiting: the
        // thread goes to other tasks.
        me.meter.stop();
        if status == WorkerStatus::PostReturn {
            me.bodies.closed.register(cx.waker());
            if me.bodies.open.load(Ordering::Acquire) > 0 {
                me.armed = None;
                return Poll::Pending;
            }
        }
        if me.armed != Some((status, start)) {
            let limit = match status {
                WorkerStatus::Idle => IDLE_INSTANCE,
                WorkerStatus::Requests | WorkerStatus::PostReturn => me.timeout,
            };
            // Counted from now when a body has just closed after `start`.
            let start_at = Instant::from_std(start);
            let from = if status == WorkerStatus::PostReturn && me.armed.is_none() {
                start_at.max(Instant::now())
            } else {
                start_at
            };
            me.sleep.as_mut().reset(from + limit);
            me.armed = Some((status, start));
            me.cpu_at_arm = me.meter.used();
        }
        if let Some(budget) = &me.budget
            && status != WorkerStatus::Idle
            && me.meter.used().saturating_sub(me.cpu_at_arm) >= budget.limit
        {
            budget.spend();
            me.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(());
        }
        std::task::ready!(me.sleep.as_mut().poll(cx));
        if status != WorkerStatus::Idle {
            me.expired.store(true, Ordering::Relaxed);
        }
        Poll::Ready(())
    }
}
