//! A counting allocator, built with `--features count-allocations` to
//! measure what a request allocates: it counts every allocation (and
//! reallocation) the process makes through Rust's global allocator, and
//! the metrics endpoint serves the count as `wasmhttpd_allocations_total`.
//! `bench/bench.py --only allocations` divides it by the requests served.
//!
//! A guest's own allocations live in its linear memory and are not
//! counted; the host's for it (its store, its resources, the bytes it
//! reads and writes) are. Every allocation pays a shared atomic add, so
//! this build measures counts, not speed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Allocations since the process started.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Allocations since the process started.
pub fn count() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// The system allocator, counting.
struct Counting;

// SAFETY: each method forwards its arguments unchanged to the system
// allocator, which upholds `GlobalAlloc`'s contract; counting touches
// no memory of the caller's.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
