//! WebSocket sessions in a guest, through the project's own
//! `wasmhttpd:guest/websocket` export (`wit/websocket.wit`).
//!
//! A session owns one instance for its whole life, drawn from the same
//! pool and under the same memory cap as request instances. Every call
//! into it (`open`, each `on-message`, `on-close`) has the guest timeout:
//! the epoch callback interrupts a guest that computes past it, and the
//! host stops waiting on one that blocks past it. The session's CPU time
//! is counted over all its calls, and the CPU budget (`--guest-cpu-time`)
//! holds for each call, as for a request.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use wasmtime::component::{Component, InstancePre};
use wasmtime::{Engine, Store};

use super::cpu::{Meter, metered};
use super::instance::{GuestContext, GuestError, GuestState, Metering, within};
use crate::metrics::{Metrics, Open};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmhttpd:guest/websocket-handler",
        exports: { default: async },
    });
}

use bindings::WebsocketHandler;
pub(crate) use bindings::WebsocketHandlerPre;
pub use bindings::exports::wasmhttpd::guest::websocket::{Decision, Message, Upgrade};

/// The export's name in a component.
const EXPORT: &str = "wasmhttpd:guest/websocket@0.1.0";

/// The component's WebSocket export, pre-instantiated; `None` when the
/// component has no such export (upgrades then go to it as requests).
pub(super) fn find(
    component: &Component,
    instance_pre: &InstancePre<GuestState>,
) -> wasmtime::Result<Option<WebsocketHandlerPre<GuestState>>> {
    if component.get_export_index(None, EXPORT).is_none() {
        return Ok(None);
    }
    WebsocketHandlerPre::new(instance_pre.clone()).map(Some)
}

/// What a guest said to an upgrade.
pub enum Opened {
    /// A session, with the subprotocol the guest picked.
    Accepted(Session, Option<String>),
    /// Not a WebSocket endpoint.
    Refused,
}

/// A WebSocket session's instance.
pub struct Session {
    store: Store<GuestState>,
    handler: WebsocketHandler,
    timeout: std::time::Duration,
    _slot: OwnedSemaphorePermit,
    /// Counts the session as open while it lasts.
    _open: Open,
    metrics: Arc<Metrics>,
    /// Counts the session's CPU time, call by call.
    meter: Meter,
}

/// Instantiates `pre`, compiled by `engine`, in `ctx` for a session (`id`
/// in the logs, its CPU time in `meter`) and asks it to `open`; a fault is
/// counted.
pub(super) async fn open(
    pre: &WebsocketHandlerPre<GuestState>,
    engine: &Engine,
    ctx: &GuestContext,
    upgrade: Upgrade,
    id: u64,
    meter: Meter,
) -> Result<Opened, GuestError> {
    let opened = open_session(pre, engine, ctx, upgrade, id, meter).await;
    if let Some(fault) = opened.as_ref().err().and_then(GuestError::fault) {
        ctx.metrics.guest_fault(fault);
    }
    opened
}

async fn open_session(
    pre: &WebsocketHandlerPre<GuestState>,
    engine: &Engine,
    ctx: &GuestContext,
    upgrade: Upgrade,
    id: u64,
    meter: Meter,
) -> Result<Opened, GuestError> {
    let slot = ctx.admit_session()?;
    let deadline = Instant::now() + ctx.timeout;
    let mut store = ctx
        .new_store(
            engine,
            deadline,
            Arc::new(AtomicBool::new(false)),
            id,
            meter.clone(),
            Metering::Polls,
        )
        .map_err(GuestError::Setup)?;
    let instantiated = within(
        deadline,
        metered(meter.clone(), pre.instantiate_async(&mut store)),
    )
    .await;
    let handler = cpu_spent(&store, instantiated)?;
    let mut session = Session {
        store,
        handler,
        timeout: ctx.timeout,
        _slot: slot,
        _open: ctx.metrics.websocket_session(),
        metrics: ctx.metrics.clone(),
        meter,
    };
    let deadline = session.arm();
    let call = session
        .handler
        .wasmhttpd_guest_websocket()
        .call_open(&mut session.store, &upgrade);
    let opened = within(deadline, metered(session.meter.clone(), call)).await;
    match cpu_spent(&session.store, opened)? {
        Decision::Accept(protocol) => Ok(Opened::Accepted(session, protocol)),
        Decision::Refuse => Ok(Opened::Refused),
    }
}

/// `result`, a call's, as a spent CPU budget when that is what ended it.
fn cpu_spent<T>(store: &Store<GuestState>, result: Result<T, GuestError>) -> Result<T, GuestError> {
    match (result, store.data().cpu_spent) {
        (Err(_), Some(budget)) => Err(GuestError::CpuTime(budget)),
        (result, _) => result,
    }
}

impl Session {
    /// Starts the clock for one call; returns its deadline.
    fn arm(&mut self) -> Instant {
        let deadline = Instant::now() + self.timeout;
        let state = self.store.data_mut();
        state.deadline = deadline;
        state.begin_call();
        // A whole epoch slice for this call.
        self.store.set_epoch_deadline(1);
        deadline
    }

    /// Hands one client message to the guest; returns its replies. After
    /// an error the instance is unusable and the session must end.
    pub async fn on_message(&mut self, message: &Message) -> Result<Vec<Message>, GuestError> {
        let deadline = self.arm();
        let call = self
            .handler
            .wasmhttpd_guest_websocket()
            .call_on_message(&mut self.store, message);
        let result = within(deadline, metered(self.meter.clone(), call)).await;
        self.count(result)
    }

    /// Tells the guest the session ended, then drops the instance.
    pub async fn on_close(mut self, code: u16, reason: &str) -> Result<(), GuestError> {
        let deadline = self.arm();
        let call =
            self.handler
                .wasmhttpd_guest_websocket()
                .call_on_close(&mut self.store, code, reason);
        let result = within(deadline, metered(self.meter.clone(), call)).await;
        self.count(result)
    }

    /// Counts a failed call in the metrics.
    fn count<T>(&self, result: Result<T, GuestError>) -> Result<T, GuestError> {
        let result = cpu_spent(&self.store, result).map_err(|err| match err {
            GuestError::Trap(err) => GuestError::Trap(self.store.data().explain(err)),
            other => other,
        });
        if let Some(fault) = result.as_ref().err().and_then(GuestError::fault) {
            self.metrics.guest_fault(fault);
        }
        result
    }
}
