//! Instance reuse (`--reuse N`): one instance serves up to N requests, one
//! at a time.
//!
//! Each guest version keeps its idle instances (a store and the bindings
//! of its instance) in a [`Pool`]. A request takes the one used last, or a
//! new one when none is idle, and runs in its connection's task exactly as
//! a fresh instance does: the same admission, the same deadlines. When its
//! call returns after a response, the instance goes back, unless it has
//! served N requests; a request it failed in any way (a trap, its deadline,
//! no response, an error code) retires it, so the next request gets a new
//! one. An instance idle for [`IDLE_INSTANCE`] is dropped and its slot in
//! the pooling allocator freed.
//!
//! Some guests cannot answer a second request on one instance: a
//! componentize-js fetch-event guest returns without a response to every
//! request after its first. A guest version whose reused instance returns
//! without a response before any reused instance of it has answered is
//! served with a fresh instance per request from then on
//! ([`Pool::stop_reuse`]).
//!
//! Each event loop takes and gives back instances in a share of the pool
//! of its own ([`on_event_loop`]), so an instance stays on the core whose
//! caches hold it and no two loops wait on one lock.
//!
//! Reuse trades isolation for speed: a guest that keeps state between
//! requests (a global, a cache) shows it to the next request on the same
//! instance.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// How long an idle instance is kept for the next request before it is
/// dropped and its pool slot freed.
pub(super) const IDLE_INSTANCE: Duration = Duration::from_secs(1);

thread_local! {
    /// The index of the event loop this thread runs; 0 on any other.
    static EVENT_LOOP: Cell<usize> = const { Cell::new(0) };
}

/// Marks this thread as the event loop `index`: its requests take and give
/// back instances in their own share of each pool.
pub(crate) fn on_event_loop(index: usize) {
    EVENT_LOOP.with(|event_loop| event_loop.set(index));
}

/// An instance between requests (its store and the bindings of its
/// exports), and how many requests it has served.
pub(super) struct Idle<T> {
    pub(super) instance: T,
    pub(super) served: usize,
    since: Instant,
}

/// The idle instances of one guest version.
pub(super) struct Pool<T> {
    /// One share per core, each with the one used last at its end; event
    /// loop `i` uses share `i` (modulo their number).
    idle: Box<[Mutex<Vec<Idle<T>>>]>,
    /// Requests one instance serves.
    reuse: usize,
    /// Whether an instance has answered a request after its first.
    reused: AtomicBool,
    /// Whether this version gets a fresh instance per request from now on.
    stopped: AtomicBool,
}

impl<T: Send + 'static> Pool<T> {
    /// A pool whose instances serve `reuse` requests each; on a runtime,
    /// a task drops the instances idle too long until the pool is gone.
    pub(super) fn new(reuse: usize) -> Arc<Pool<T>> {
        let shares = std::thread::available_parallelism().map_or(1, usize::from);
        let pool = Arc::new(Pool {
            idle: (0..shares).map(|_| Mutex::new(Vec::new())).collect(),
            reuse,
            reused: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// The instance this event loop used last, if one is idle.
    pub(super) fn take(&self) -> Option<Idle<T>> {
        self.lock(self.share()).pop()
    }

    /// Gives back an instance that has served `served` requests and answered
    /// the last one; dropped instead once it has served its share.
    pub(super) fn give_back(&self, instance: T, served: usize) {
        if served >= self.reuse || self.stopped.load(Ordering::Relaxed) {
            return;
        }
        self.lock(self.share()).push(Idle {
            instance,
            served,
            since: Instant::now(),
        });
    }

    /// Notes that an instance answered a request after its first: the
    /// guest can be reused.
    pub(super) fn answered_again(&self) {
        self.reused.store(true, Ordering::Relaxed);
    }

    /// Stops reusing this version's instances after a reused one returned
    /// without a response, unless one has answered a second request
    /// before; true the one time it stops.
    pub(super) fn stop_reuse(&self) -> bool {
        if self.reused.load(Ordering::Relaxed) || self.stopped.swap(true, Ordering::Relaxed) {
            return false;
        }
        for share in 0..self.idle.len() {
            let idle = std::mem::take(&mut *self.lock(share));
            drop(idle);
        }
        true
    }

    /// Drops the instances idle since before `cutoff`.
    fn drop_idle_since(&self, cutoff: Instant) {
        for share in 0..self.idle.len() {
            let stale: Vec<Idle<T>> = {
                let mut idle = self.lock(share);
                let stale = idle
                    .iter()
                    .position(|instance| instance.since >= cutoff)
                    .unwrap_or(idle.len());
                idle.drain(..stale).collect()
            };
            // Dropped outside the lock: ending an instance resets its slot.
            drop(stale);
        }
    }

    /// The share of the event loop running this thread.
    fn share(&self) -> usize {
        EVENT_LOOP.with(Cell::get) % self.idle.len()
    }

    fn lock(&self, share: usize) -> std::sync::MutexGuard<'_, Vec<Idle<T>>> {
        self.idle[share]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Drops a pool's instances once they have been idle for
/// [`IDLE_INSTANCE`], until the pool is gone.
async fn sweep<T: Send + 'static>(pool: Weak<Pool<T>>) {
    let mut ticks = tokio::time::interval(IDLE_INSTANCE / 2);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if let Some(cutoff) = Instant::now().checked_sub(IDLE_INSTANCE) {
            pool.drop_idle_since(cutoff);
        }
    }
}
