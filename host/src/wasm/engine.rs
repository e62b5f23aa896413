//! The wasmtime engines, one for WASIp2 components and one for WASIp3:
//! pooling instance allocator sized by the limits, and epoch interruption
//! driven by a ticker thread, which ticks faster while a guest computes
//! for long.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use wasmtime::{Enabled, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::inspect::Wasi;
use crate::config::{Limits, Route};

/// Epoch period: how often a running guest's deadline, CPU budget and
/// slice are looked at, while no guest has run past its slice lately. A
/// server that only answers short requests wakes its ticker no more than
/// this often, idle or loaded.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Epoch period while guests run past their slice, and for [`FAST_FOR`]
/// after: a guest that spins gives its loop back within a slice and a
/// tick, and its deadline and budget hold to within a millisecond.
const FAST_TICK: Duration = Duration::from_millis(1);

/// How long the ticker keeps [`FAST_TICK`] after a guest last ran past
/// its slice.
const FAST_FOR: Duration = Duration::from_millis(100);

/// CPU time a guest runs in one go before it gives its event loop back
/// (the loop serves its sockets and timers, then the guest runs on). A
/// request that computes for less never yields, so under load requests
/// are not put behind their neighbours mid-way; a loop shared with guests
/// that spin answers a light request within a slice or two of each.
pub const SLICE: Duration = Duration::from_millis(2);

/// When a guest last ran past its slice, in nanoseconds since [`BASE`].
static RAN_LONG_AT: AtomicU64 = AtomicU64::new(0);
/// What [`RAN_LONG_AT`] counts from.
static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Tells the tickers a guest has run past its slice: they tick at
/// [`FAST_TICK`] for a while.
pub(crate) fn ran_long() {
    let at = BASE.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
    RAN_LONG_AT.store(at, Ordering::Relaxed);
}

/// The period of the next tick.
fn next_tick() -> Duration {
    let last = Duration::from_nanos(RAN_LONG_AT.load(Ordering::Relaxed));
    if last > Duration::ZERO && BASE.elapsed().saturating_sub(last) < FAST_FOR {
        FAST_TICK
    } else {
        EPOCH_TICK
    }
}

/// Core instances a component may create. A Rust wasip2 component uses
/// the main module, the WASI adapter and a few shims.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
/// Linear memories per component (the main module's, the adapter's).
const MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables per component.
const TABLES_PER_COMPONENT: u32 = 8;

/// Bytes of each linear memory and table whose written pages are reset in
/// place when an instance ends, instead of being handed back to the kernel.
const KEEP_RESIDENT: usize = 4 << 20;

/// The engines shared by every guest of this server: one for WASIp2
/// components, built without the component model's concurrency support,
/// and one for WASIp3 components, which need it, made when the first one
/// is loaded.
///
/// A small-file request to a WASIp2 guest costs about 8% more CPU on an
/// engine with concurrency support (a task record made and deleted around
/// every call into the host), so the two kinds do not share one.
pub struct Engines {
    p2: Engine,
    p3_config: wasmtime::Config,
    p3: Mutex<Option<Engine>>,
}

impl Engines {
    /// The engines for a server with `limits` and `routes`.
    pub fn new(limits: &Limits, routes: &[Route]) -> wasmtime::Result<Engines> {
        let mut config = config(limits, routes);
        let mut p3_config = config.clone();
        p3_config.concurrency_support(true);
        // Requests run one call at a time per instance, fresh or reused:
        // the component model's concurrent event loop, and its bookkeeping
        // around every call into the host, is left out of the engine.
        config.concurrency_support(false);
        let p2 = Engine::new(&config)?;
        spawn_epoch_ticker(p2.weak());
        Ok(Engines {
            p2,
            p3_config,
            p3: Mutex::new(None),
        })
    }

    /// The engine for components of kind `wasi`.
    pub fn get(&self, wasi: Wasi) -> wasmtime::Result<Engine> {
        if wasi == Wasi::P2 {
            return Ok(self.p2.clone());
        }
        let mut p3 = self
            .p3
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(engine) = &*p3 {
            return Ok(engine.clone());
        }
        let engine = Engine::new(&self.p3_config)?;
        spawn_epoch_ticker(engine.weak());
        *p3 = Some(engine.clone());
        Ok(engine)
    }
}

/// The configuration both engines share.
///
/// Requests and WebSocket sessions draw instances from one pool, sized for
/// the server's limits plus the routes' own shares; its memory cap is the
/// largest any route allows (each store enforces its route's own).
fn config(limits: &Limits, routes: &[Route]) -> wasmtime::Config {
    let instances = routes
        .iter()
        .filter_map(|route| route.limits.max_instances)
        .fold(
            limits.max_instances.saturating_add(limits.max_websockets),
            u32::saturating_add,
        );
    let memory = routes
        .iter()
        .filter_map(|route| route.limits.guest_memory)
        .fold(limits.guest_memory, usize::max);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .total_stacks(instances)
        .max_memory_size(memory);
    // An instance's slot is reset for the next one when it ends. By default
    // that is an madvise of the slot, whose TLB shootdown interrupts every
    // other core, and page faults when the next instance touches the pages
    // again. Where the kernel tells which pages were written (PAGEMAP_SCAN,
    // Linux 6.7), only those are reset, in place, and stay resident. Without
    // it, keeping pages resident would mean resetting all of them by hand.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
    }

    let mut config = wasmtime::Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] (or [`FAST_TICK`]
/// while guests run long) until the engine is dropped.
fn spawn_epoch_ticker(engine: EngineWeak) {
    LazyLock::force(&BASE);
    thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(next_tick());
            }
        })
        .expect("spawn the epoch ticker thread");
}
