//! Per-route activity counts that drive idle shutdown.
//!
//! One `AtomicU64` of in-flight work and one of "last became inactive", both shared in-process
//! with the agent's sweeper. Work is counted by an RAII [`ActiveGuard`], so every exit path
//! (response body finished or dropped, relay closed, task cancelled) decrements exactly once,
//! with no lock and no allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::route_table::Route;

/// The instant that `last_inactive` nanos count from; fixed at first use in the process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    // u64 nanoseconds last 584 years of uptime.
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// The counters of one route.
#[derive(Debug)]
pub(crate) struct Activity {
    active: AtomicU64,
    /// Nanoseconds since [`epoch`] when the count last dropped to zero (or the route was reset).
    last_inactive: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            active: AtomicU64::new(0),
            last_inactive: AtomicU64::new(nanos_since_epoch(Instant::now())),
        }
    }

    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) != 0 {
            return None;
        }
        let nanos = self.last_inactive.load(Ordering::Acquire);
        Some(epoch() + Duration::from_nanos(nanos))
    }

    /// Marks the route idle from now, whatever happened before (a backend that just became ready).
    pub(crate) fn reset_idle(&self) {
        self.last_inactive
            .fetch_max(nanos_since_epoch(Instant::now()), Ordering::AcqRel);
    }

    fn enter(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    fn leave(&self, touch: bool) {
        if touch {
            // Record the time *before* decrementing: whoever sees the count at zero must also see
            // a `last_inactive` at least this recent, or a sweeper could stop a backend that was
            // busy a moment ago. `fetch_max` keeps it monotonic when guards race.
            self.last_inactive
                .fetch_max(nanos_since_epoch(Instant::now()), Ordering::AcqRel);
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one unit of work (a request until its response body ends, or an upgraded connection)
/// against a route for as long as it lives.
#[derive(Debug)]
#[must_use = "the work is counted only while the guard lives"]
pub struct ActiveGuard {
    route: Arc<Route>,
    touch_on_drop: bool,
}

impl ActiveGuard {
    pub(crate) fn new(route: Arc<Route>) -> ActiveGuard {
        route.activity().enter();
        ActiveGuard {
            route,
            touch_on_drop: true,
        }
    }

    /// The route this guard counts against.
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }

    /// Ends the count without marking the route as recently active: for work the backend never
    /// saw (a refused dial must not keep the backend alive).
    pub fn cancel(mut self) {
        self.touch_on_drop = false;
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.route.activity().leave(self.touch_on_drop);
    }
}

#[cfg(test)]
mod tests {
    use crate::RouteTable;

    #[test]
    fn guard_counts_while_alive() {
        let table = RouteTable::new("c");
        let route = table.set_ready("b", "127.0.0.1:1".parse().expect("addr"));
        let ready_at = route.idle_since().expect("idle when made ready");
        assert_eq!(route.active(), 0);

        let first = route.track();
        let second = route.track();
        assert_eq!(route.active(), 2);
        assert_eq!(route.idle_since(), None);

        drop(first);
        assert_eq!(route.active(), 1);
        assert_eq!(route.idle_since(), None);

        drop(second);
        assert_eq!(route.active(), 0);
        let idle = route.idle_since().expect("idle after the last guard");
        assert!(idle >= ready_at);
    }

    #[test]
    fn cancelled_guard_leaves_idle_time_alone() {
        let table = RouteTable::new("c");
        let route = table.set_ready("b", "127.0.0.1:1".parse().expect("addr"));
        let before = route.idle_since();
        route.track().cancel();
        assert_eq!(route.active(), 0);
        assert_eq!(route.idle_since(), before);
    }

    #[test]
    fn guards_from_many_threads_balance() {
        let table = RouteTable::new("c");
        let route = table.set_ready("b", "127.0.0.1:1".parse().expect("addr"));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let guard = route.track();
                        drop(guard);
                    }
                });
            }
        });
        assert_eq!(route.active(), 0);
        assert!(route.idle_since().is_some());
    }
}
