//! Proves the per-request routing path allocates nothing after warm-up: `backend_label`, the
//! route lookup (hit and miss) and the activity guard, counted by a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::net::SocketAddr;

use plane_dataplane::{backend_label, RouteTable};

thread_local! {
    /// Allocations made by this thread: other test-harness threads cannot disturb the count.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct CountingAllocator;

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn routing_and_counting_do_not_allocate() {
    let table = RouteTable::new("plane.localhost");
    let names: Vec<String> = (0..1000).map(|i| format!("backend-{i}")).collect();
    let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
    table.set_ready_many(names.iter().map(|n| (n.as_str(), addr)));
    let hosts = [
        "BACKEND-500.Plane.Localhost:9090",
        "backend-1.plane.localhost",
        "missing.plane.localhost",
        "a.b.plane.localhost",
        "backend-1.example.com",
    ];
    let route_once = |host: &str| {
        let route = backend_label(host, table.cluster())
            .ok()
            .and_then(|label| table.lookup(label));
        if let Some(route) = &route {
            drop(black_box(route.track()));
        }
        route.is_some()
    };
    // Warm-up: arc-swap registers this thread's debt slots on first use.
    for host in hosts {
        route_once(host);
    }

    let probe = allocations();
    drop(black_box(Box::new(1u8)));
    assert_eq!(allocations(), probe + 1, "the counting allocator counts");

    let before = allocations();
    let mut hits = 0;
    for _ in 0..1000 {
        for host in hosts {
            hits += usize::from(route_once(black_box(host)));
        }
    }
    let allocated = allocations() - before;
    assert_eq!(hits, 2000);
    assert_eq!(
        allocated, 0,
        "routing allocated {allocated} times in 5000 lookups"
    );
}
