//! The cores the event loops run on: each loop pinned to a core of its
//! own, as nginx's workers with `worker_cpu_affinity`, so that its caches
//! stay warm and the scheduler never puts two loops on one core while
//! another idles; every other thread free to run on any core the process
//! may use.

use std::sync::OnceLock;

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// The cores the process may use (its affinity mask, which `taskset` or a
/// cgroup narrows), as they were before any loop was pinned; `None` if
/// the kernel would not say.
fn allowed() -> Option<&'static CpuSet> {
    static ALLOWED: OnceLock<Option<CpuSet>> = OnceLock::new();
    ALLOWED
        .get_or_init(|| sched_getaffinity(None).ok())
        .as_ref()
}

/// The core of event loop `index`: the `index`-th core the process may
/// use; `None` past the last (a loop beyond the cores is not pinned).
pub(crate) fn of_loop(index: usize) -> Option<usize> {
    let allowed = allowed()?;
    (0..CpuSet::MAX_CPU)
        .filter(|&cpu| allowed.is_set(cpu))
        .nth(index)
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin(cpu: usize) {
    let mut only = CpuSet::new();
    only.set(cpu);
    let _ = sched_setaffinity(None, &only);
}

/// Lets the calling thread run on every core the process may use again:
/// for the threads an event loop's runtime starts (its blocking pool),
/// which would otherwise inherit the loop's one core and compete with it.
pub fn unpin_thread() {
    if let Some(allowed) = allowed() {
        let _ = sched_setaffinity(None, allowed);
    }
}
