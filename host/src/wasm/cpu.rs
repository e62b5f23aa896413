//! A guest's CPU time, read from the CPU clock of the thread that runs it.
//!
//! A WASIp2 request's instance and a WebSocket session's calls run inside
//! a future of the host's: the clock is read around each poll of it, so
//! what is counted is the time the guest held the thread, its host calls
//! included, and none of the time it waited. A WASIp3 instance runs in a
//! task of wasmtime-wasi-http's; its clock starts at the first sign of it
//! running in a poll of that task (an entry into wasm, a call into the
//! host) and stops when the instance gives the thread back: its last
//! return from wasm, an epoch yield, the end of the task's poll.
//!
//! The time is counted per request (the access log's `cpu_us`) or, for a
//! WASIp3 instance, which serves several at once, per instance; and per
//! route, `wasmhttpd_guest_cpu_seconds_total`, as it is spent, so that a
//! guest still spinning shows there. The epoch callback holds it to the
//! route's `--guest-cpu-time`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics::RouteCounters;

/// The calling thread's CPU time so far, in nanoseconds (never 0 for a
/// thread that runs).
fn thread_cpu_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
        .max(1)
}

/// CPU time a guest has used: a request's, a WebSocket session's, or a
/// WASIp3 instance's.
#[derive(Debug, Default)]
pub struct CpuTime {
    /// Nanoseconds counted in runs that have ended.
    used: AtomicU64,
    /// The thread's CPU clock when the run under way began; 0 between runs.
    since: AtomicU64,
}

impl CpuTime {
    /// The time counted so far, the run under way included.
    pub fn used(&self) -> Duration {
        let mut used = self.used.load(Ordering::Relaxed);
        let since = self.since.load(Ordering::Relaxed);
        if since != 0 {
            used += thread_cpu_ns().saturating_sub(since);
        }
        Duration::from_nanos(used)
    }
}

/// Counts a guest's runs in its [`CpuTime`] and its route's counter.
#[derive(Clone)]
pub(crate) struct Meter {
    time: Arc<CpuTime>,
    route: RouteCounters,
}

impl Meter {
    /// A meter counting in `time` and the route's `counters`.
    pub(crate) fn new(time: Arc<CpuTime>, counters: &RouteCounters) -> Meter {
        Meter {
            time,
            route: counters.clone(),
        }
    }

    /// Whether a run is under way.
    pub(crate) fn is_running(&self) -> bool {
        self.time.since.load(Ordering::Relaxed) != 0
    }

    /// Begins a run on this thread.
    pub(crate) fn start(&self) {
        self.time.since.store(thread_cpu_ns(), Ordering::Relaxed);
    }

    /// Ends the run under way, if one is, and counts it.
    pub(crate) fn stop(&self) {
        let since = self.time.since.swap(0, Ordering::Relaxed);
        if since == 0 {
            return;
        }
        let spent = thread_cpu_ns().saturating_sub(since);
        self.time.used.fetch_add(spent, Ordering::Relaxed);
        self.route.cpu(spent);
    }

    /// The time counted so far, the run under way included.
    pub(crate) fn used(&self) -> Duration {
        self.time.used()
    }

    /// How long the run under way has gone on; `None` between runs.
    pub(crate) fn this_run(&self) -> Option<Duration> {
        let since = self.time.since.load(Ordering::Relaxed);
        (since != 0).then(|| Duration::from_nanos(thread_cpu_ns().saturating_sub(since)))
    }
}

/// `future`, with each of its polls counted by `meter` as a run.
pub(crate) async fn metered<F: Future>(meter: Meter, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        meter.start();
        let poll = future.as_mut().poll(cx);
        meter.stop();
        poll
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_counts_the_threads_cpu_and_waiting_counts_nothing() {
        let counters = RouteCounters::default();
        let time = Arc::new(CpuTime::default());
        let meter = Meter::new(time.clone(), &counters);
        meter.start();
        assert!(meter.is_running());
        // Spins until the thread's own clock has moved: however busy the
        // machine, the loop ends.
        while time.used() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        meter.stop();
        assert!(!meter.is_running());
        let spun = time.used();
        assert!(spun >= Duration::from_millis(5), "{spun:?}");
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(time.used(), spun, "time between runs is not counted");
        assert_eq!(counters.cpu_seconds(), spun.as_nanos() as f64 * 1e-9);
        // A stop without a run counts nothing more.
        meter.stop();
        assert_eq!(time.used(), spun);
    }
}
