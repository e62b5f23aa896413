//! Instance reuse (`--reuse N`): one instance serves up to N requests, one
//! at a time, through wasmtime-wasi-http's [`ProxyHandler`], which keeps a
//! queue of requests and a set of workers, each owning a store and an
//! instance.
//!
//! Reuse trades isolation for speed: a guest that keeps state between
//! requests (a global, a cache) shows it to the next request on the same
//! instance. A trap still ends only the instance it happened in, and a
//! request past its deadline ends its instance.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::GuestTaskId;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    self, ExpirationError, HandlerState, InstantiationError, ProxyHandler, ShouldAccept,
    WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::guest::{FaultOnce, GuestContext, GuestError, GuestState, RequestBody, classify};

/// How long an idle instance is kept for the next request before it is
/// dropped and its pool slot freed.
const IDLE_INSTANCE: Duration = Duration::from_secs(1);

/// The reusing dispatcher of one guest version.
pub(super) struct Reuse {
    handler: ProxyHandler<Instances>,
}

impl Reuse {
    /// A dispatcher that lets each instance of `pre` serve `reuse` requests.
    pub(super) fn new(ctx: Arc<GuestContext>, pre: ProxyPre<GuestState>, reuse: usize) -> Self {
        Reuse {
            handler: ProxyHandler::new(Instances { ctx, pre, reuse }),
        }
    }

    /// Runs `request` on a free instance (or a new one); returns once the
    /// guest has set its response head.
    pub(super) async fn handle(
        &self,
        request: http::Request<RequestBody>,
        id: u64,
        fault: &FaultOnce,
    ) -> Result<handler::Response, GuestError> {
        match self.handler.handle((id, fault.clone()), request).await {
            Ok(response) => Ok(response),
            Err(err) if err.is::<ExpirationError>() => Err(GuestError::Timeout),
            Err(err) if err.is::<InstantiationError<RequestData>>() => Err(GuestError::Setup(err)),
            Err(err) => Err(classify(err)),
        }
    }
}

/// Makes instances for the handler's workers.
struct Instances {
    ctx: Arc<GuestContext>,
    pre: ProxyPre<GuestState>,
    reuse: usize,
}

impl HandlerState for Instances {
    type StoreData = GuestState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(
        &self,
    ) -> wasmtime::Result<handler::Instance<GuestState, Expiration, Worker>> {
        // Deadlines are the handler's (see `Worker::on_request_start` and
        // `Expiration`), so the epoch callback only makes the guest yield.
        let lifted = Arc::new(AtomicBool::new(true));
        let timeout = self.ctx.timeout;
        let mut store = self
            .ctx
            .new_store(tokio::time::Instant::now() + timeout, lifted, 0)?;
        let proxy = tokio::time::timeout(timeout, self.pre.instantiate_async(&mut store))
            .await
            .map_err(|_| wasmtime::Error::msg("instantiation timed out"))??;
        Ok(handler::Instance {
            store,
            proxy: handler::Proxy::P2(proxy),
            view: <GuestState as WasiHttpView>::http,
            expiration: Expiration {
                timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
            },
            state: Worker {
                reuse: self.reuse,
                timeout,
            },
        })
    }
}

/// When a worker's instance is dropped: idle for [`IDLE_INSTANCE`], or
/// busy with a request past the guest timeout.
struct Expiration {
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiration {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let limit = match status {
            WorkerStatus::Idle => IDLE_INSTANCE,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.timeout,
        };
        let Some(deadline) = start.checked_add(limit) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

/// What travels with a request to its worker: the request's id, which the
/// instance's output is logged with, and its fault count.
type RequestData = (u64, FaultOnce);

/// A worker: one request at a time, `reuse` in all.
struct Worker {
    reuse: usize,
    timeout: Duration,
}

impl WorkerState for Worker {
    type StoreData = GuestState;
    type RequestData = RequestData;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.reuse {
            ShouldAccept::Never
        } else if concurrent >= 1 {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, GuestState>,
        (id, fault): RequestData,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + 'static + Send + Sync>> {
        let state = store.data_mut();
        state.request.store(id, Ordering::Relaxed);
        state.fault = Some(fault);
        Box::pin(tokio::time::sleep(self.timeout))
    }

    fn drop(&self, store: wasmtime::Store<GuestState>, result: wasmtime::Result<()>) {
        if let Err(err) = result {
            tracing::debug!(cause = %err, "reused instance ended with an error");
            // A trap ends the instance during its last request: counted for
            // that request, once, whether the request saw it (before its
            // head) or not (after). The dispatcher's own errors (a deadline,
            // a host panic) are not the guest's traps.
            if err.downcast_ref::<wasmtime::Trap>().is_some()
                && let Some(fault) = &store.data().fault
            {
                fault.report_trap(&err);
            }
        }
        drop(store);
    }
}
